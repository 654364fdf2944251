"""DetectorPredictor: checkpoint round trip through the model store, thresholds, NMS,
counts, masks, and clear errors for bad images and checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bloodlib.engine.checkpoint import save_checkpoint
from bloodlib.inference.common import InvalidImageError
from bloodlib.inference.detection import DetectionResult, DetectorPredictor, detector_meta
from bloodlib.models.detection import build_detector

CLASSES = ["WBC", "RBC", "Platelets"]
TINY = dict(min_size=64, max_size=80, fpn_channels=16, representation_size=32,
            mask_head_layers=(16,), mask_iou_channels=8, mask_iou_fc=16,
            rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=30, box_detections_per_img=15,
            box_score_thresh=0.0)


@pytest.fixture(scope="module")
def smear():
    from bloodlib.data.synthetic import make_smear
    return make_smear(1, 96, 120).image


def _save(tmp_path, kind="faster_rcnn", **meta_kw):
    torch.manual_seed(0)
    model = build_detector(kind, "mobilenet_v3_large", len(CLASSES) + 1, **TINY)
    meta = detector_meta(model, CLASSES, training_data={"dataset": "synthetic"},
                         metrics={"AP50": 0.5, "bad": float("nan")}, **meta_kw)
    path = save_checkpoint(tmp_path / f"{kind}.pt", model, meta)
    return model, meta, path


def test_checkpoint_round_trip_and_store_dispatch(tmp_path, smear):
    from bloodlib.inference import load_predictor
    model, meta, path = _save(tmp_path)
    assert meta["task"] == "detect" and meta["classes"] == CLASSES
    assert meta["metrics"] == {"AP50": 0.5}  # non-finite metrics dropped
    pred = load_predictor(path)
    assert isinstance(pred, DetectorPredictor) and pred.classes == CLASSES
    res = pred.predict(smear, score_threshold=0.0, nms_threshold=1.0)
    model.eval()
    x = torch.from_numpy(smear.transpose(2, 0, 1).copy()).float() / 255
    with torch.no_grad():
        direct = model([x])[0]
    assert len(res) == len(direct["scores"])
    assert np.allclose(np.sort(res.scores), np.sort(direct["scores"].numpy()), atol=1e-5)
    assert res.boxes.shape == (len(res), 4) and res.boxes.dtype == np.float32
    assert set(res.labels) <= set(CLASSES)


def test_threshold_counts_and_masks(tmp_path, smear):
    _, _, path = _save(tmp_path, "mcnet")
    pred = DetectorPredictor.from_checkpoint(path)
    res = pred.predict(smear, score_threshold=0.0)
    assert res.masks is not None and res.masks.shape == (len(res), *smear.shape[:2])
    assert res.masks.dtype == bool
    counts = res.counts()
    assert set(counts) == set(CLASSES) and sum(counts.values()) == len(res)
    none = pred.predict(smear, score_threshold=1.0)
    assert len(none) == 0 and none.counts() == {c: 0 for c in CLASSES}


def test_class_wise_nms_removes_duplicates():
    class Fixed(torch.nn.Module):
        def forward(self, images):
            return [{"boxes": torch.tensor([[0.0, 0, 10, 10], [1, 1, 10, 10], [0, 0, 10, 10],
                                            [30, 30, 40, 40]]),
                     "scores": torch.tensor([0.9, 0.8, 0.7, 0.6]),
                     "labels": torch.tensor([1, 1, 2, 2])}]
    pred = DetectorPredictor(Fixed(), {"task": "detect", "classes": CLASSES})
    image = np.zeros((50, 50, 3), np.uint8)
    res = pred.predict(image, score_threshold=0.5, nms_threshold=0.5)
    # the second WBC overlaps the first (IoU 0.81): removed; the RBC at the same place stays
    assert res.labels == ["WBC", "RBC", "RBC"]
    assert res.scores.tolist() == pytest.approx([0.9, 0.7, 0.6])
    assert res.counts() == {"WBC": 1, "RBC": 2, "Platelets": 0}
    assert len(pred.predict(image, score_threshold=0.75)) == 1
    with pytest.raises(ValueError, match="nms_threshold"):
        pred.predict(image, nms_threshold=0.0)


@pytest.mark.parametrize("bad, message", [
    (np.zeros((40, 40, 3), np.float32), "uint8"),
    (np.zeros((40, 40), np.uint8), "RGB"),
    (np.zeros((4, 40, 3), np.uint8), "too small"),
    ([[0, 0, 0]], "numpy"),
])
def test_bad_images_raise_clear_errors(bad, message):
    pred = DetectorPredictor(torch.nn.Identity(), {"task": "detect", "classes": CLASSES})
    with pytest.raises(InvalidImageError, match=message):
        pred.predict(bad)


def test_wrong_checkpoints_are_refused(tmp_path):
    from bloodlib.inference.store import ModelFormatError
    model, meta, _ = _save(tmp_path)
    seg = save_checkpoint(tmp_path / "seg.pt", model, {**meta, "task": "segment"})
    with pytest.raises(ModelFormatError, match="not a detector"):
        DetectorPredictor.from_checkpoint(seg)
    odd = save_checkpoint(tmp_path / "odd.pt", model, {**meta, "architecture": "detr"})
    with pytest.raises(ModelFormatError, match="architecture"):
        DetectorPredictor.from_checkpoint(odd)
    with pytest.raises(ValueError, match="class names"):
        detector_meta(model, CLASSES[:2])


def test_result_counts_without_class_list():
    r = DetectionResult(np.zeros((2, 4), np.float32), ["RBC", "RBC"], np.ones(2, np.float32))
    assert r.counts() == {"RBC": 2}
