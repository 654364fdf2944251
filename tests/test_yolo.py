"""YOLOv9 through ultralytics, offline: configuration, YOLO export and COCO re-scoring,
a one-epoch training with every network access blocked (conftest), checkpoints."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from bloodlib import yolo
from bloodlib.data.convert import yolo_to_coco
from bloodlib.data.synthetic import write_detection_set
from bloodlib.errors import WeightsNotFoundError
from bloodlib.metrics.detection import coco_evaluate


@pytest.fixture
def network_attempts(monkeypatch):
    """Every DNS lookup or non-loopback connection attempted during the test (the conftest
    already makes connections fail; this also catches attempts a library swallows)."""
    import socket
    attempts: list = []
    real_gai, real_connect = socket.getaddrinfo, socket.socket.connect

    def gai(host, *a, **k):
        if host not in (None, "localhost", "127.0.0.1", "::1"):
            attempts.append(("dns", host))
        return real_gai(host, *a, **k)

    def connect(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and not (host.startswith("127.") or host in ("localhost", "::1")
                                          or host.startswith("/")):
            attempts.append(("connect", address))
        return real_connect(self, address)

    monkeypatch.setattr(socket, "getaddrinfo", gai)
    monkeypatch.setattr(socket.socket, "connect", connect)
    return attempts


@pytest.fixture(scope="module")
def smears(tmp_path_factory):
    root = tmp_path_factory.mktemp("yolo_smears")
    return {"train": write_detection_set(root / "train", 4, 0, height=96, width=128, split="train"),
            "val": write_detection_set(root / "val", 2, 1, height=96, width=128, split="val")}


def test_offline_configuration():
    work = yolo.configure_offline()
    import ultralytics.utils as uu
    assert os.environ["YOLO_OFFLINE"] == "True"
    assert uu.ONLINE is False and uu.SETTINGS["sync"] is False
    assert (Path(uu.USER_CONFIG_DIR) / "Arial.ttf").is_file()  # no font download
    assert Path(uu.SETTINGS["weights_dir"]) == work / "weights"


def test_export_round_trip_and_coco_rescoring(smears, tmp_path):
    data_yaml = yolo.export_yolo_dataset(smears, tmp_path / "yolo")
    text = data_yaml.read_text()
    assert "train: images/train" in text and "val: images/val" in text and "nc: 3" in text
    gt = smears["val"]
    paths = [tmp_path / "yolo" / "images" / "val" / Path(im["path"]).name for im in gt["images"]]
    back = yolo_to_coco(paths, tmp_path / "yolo" / "labels" / "val", ["WBC", "RBC", "Platelets"])
    a = np.array([x["bbox"] for x in gt["annotations"]])
    b = np.array([x["bbox"] for x in back["annotations"]])
    assert np.allclose(a, b, atol=1e-3)
    assert [x["category_id"] for x in back["annotations"]] == \
        [x["category_id"] for x in gt["annotations"]]

    # a stand-in "model" answering with the ground truth as YOLO would (class indices 0..)
    by_path = {str(im["path"]): [x for x in gt["annotations"] if x["image_id"] == im["id"]]
               for im in gt["images"]}

    class Perfect:
        def predict(self, source, **kw):
            out = []
            for path in source:
                anns = by_path[path]
                xyxy = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in
                                     (a["bbox"] for a in anns)]).reshape(-1, 4)
                cls = torch.tensor([float(a["category_id"] - 1) for a in anns])
                out.append(SimpleNamespace(boxes=SimpleNamespace(
                    xyxy=xyxy, cls=cls, conf=torch.full((len(anns),), 0.9))))
            return out

    preds = yolo.predict_coco_yolo(Perfect(), gt, imgsz=128)
    assert len(preds) == len(gt["annotations"])
    assert {p["category_id"] for p in preds} <= {1, 2, 3}
    report = yolo.evaluate_yolo(None, gt, predictions=preds)
    assert report.AP50 == pytest.approx(1.0) and report.AP == pytest.approx(1.0)


def test_missing_pretrained_weights_are_not_downloaded(tmp_path):
    assert yolo.find_local_weights("yolov9t", search=[tmp_path]) is None or \
        yolo.find_local_weights("yolov9t", search=[tmp_path]).is_file()
    if yolo.find_local_weights("yolov9t") is None:
        with pytest.raises(WeightsNotFoundError, match="yolov9t.pt"):
            yolo.build_yolo("yolov9t", pretrained=True)
    with pytest.raises(ValueError, match="Unknown YOLO"):
        yolo.build_yolo("yolov42")


def test_one_epoch_offline_training_scored_by_our_evaluator(smears, tmp_path, network_attempts):
    data_yaml = yolo.export_yolo_dataset(smears, tmp_path / "yolo")
    result = yolo.train_yolo(data_yaml, "yolov9t", epochs=1, imgsz=64, batch=2, device="cpu",
                             pretrained=False, project=tmp_path / "runs", mosaic=0.0,
                             warmup_epochs=0.0)
    assert result.epochs == 1 and result.best is not None and result.best.is_file()
    assert {"train/box_loss", "train/cls_loss"} <= set(result.history.columns)
    gt = smears["val"]
    preds = yolo.predict_coco_yolo(result.model, gt, imgsz=64, max_det=50)
    assert all(p["image_id"] in {im["id"] for im in gt["images"]} for p in preds)
    report = coco_evaluate(gt, preds)
    assert 0.0 <= report.AP50 <= 1.0

    path = yolo.save_yolo_checkpoint(result.model, tmp_path / "y.pt", ["WBC", "RBC", "Platelets"],
                                     imgsz=64)
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["meta"]["architecture"] == "yolo" and ckpt["meta"]["architecture_kwargs"]["nc"] == 3
    model, meta = yolo.load_yolo_checkpoint(path)
    again = yolo.predict_coco_yolo(model, gt, imgsz=64, max_det=50)
    assert len(again) == len(preds)
    if preds:
        assert np.allclose([p["score"] for p in again], [p["score"] for p in preds], atol=1e-4)

    # the benchmark's path into the model store, and back as a predictor
    from types import SimpleNamespace
    from bloodlib.experiments import mcnet_detection as mc
    from bloodlib.inference import load_predictor
    from bloodlib.io import read_image
    ev = SimpleNamespace(metrics=lambda: {"mAP50": report.AP50, "mAP50_95": report.AP})
    out = mc.Outcome("yolov9", result.model, ev, result.history, 1.0, 1, 4)
    from bloodlib.config import get_config
    settings = get_config("mcnet", "quick", **{"yolo.imgsz": 64, "preprocessing": None})
    stored = mc.store_outcome(out, smears["train"], settings,
                              "yolov9-synthetic-quick", folder=tmp_path / "store")
    detector = load_predictor(stored, task="detect")
    assert detector.classes == mc.class_names(smears["train"])
    assert detector.meta["input_size"] == 64 and detector.meta["architecture"] == "yolo"
    res = detector.predict(read_image(gt["images"][0]["path"]), score_threshold=0.0)
    assert res.boxes.shape[1] == 4 and set(res.labels) <= set(detector.classes)
    assert network_attempts == []  # nothing tried to download (weights, fonts, AMP check)


def test_interrupted_yolo_run_resumes_and_a_finished_one_is_reused(smears, tmp_path, monkeypatch,
                                                                   network_attempts):
    """Issue 24 item 15: resume=True continues ultralytics' last.pt (its own resume);
    a finished run is used as it is."""
    data_yaml = yolo.export_yolo_dataset(smears, tmp_path / "yolo")
    kw = dict(epochs=2, imgsz=64, batch=2, device="cpu", pretrained=False,
              project=tmp_path / "runs", mosaic=0.0, warmup_epochs=0.0)
    real_build = yolo.build_yolo

    def interrupting(*a, **k):
        model = real_build(*a, **k)

        def stop(trainer):
            if trainer.epoch == 0:
                raise KeyboardInterrupt("simulated kill after epoch 1")
        model.add_callback("on_model_save", stop)
        return model
    monkeypatch.setattr(yolo, "build_yolo", interrupting)
    with pytest.raises(KeyboardInterrupt):
        yolo.train_yolo(data_yaml, "yolov9t", **kw)
    monkeypatch.setattr(yolo, "build_yolo", real_build)
    last = tmp_path / "runs" / "train" / "weights" / "last.pt"
    assert last.is_file() and not yolo._finished(last)
    resumed = yolo.train_yolo(data_yaml, "yolov9t", resume=True, **kw)
    assert resumed.epochs == 2 and yolo._finished(last)
    again = yolo.train_yolo(data_yaml, "yolov9t", resume=True, **kw)
    assert again.epochs == 2 and again.best == resumed.best
