"""ClassifierPredictor: checkpoint round trip, predict(image) -> label, probabilities, bad input."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from bloodlib.engine.checkpoint import save_checkpoint
from bloodlib.inference.classification import (ClassificationResult, ClassifierPredictor,
                                               classifier_meta, images_to_tensor, predict_proba,
                                               prepare_crop, tta_views)
from bloodlib.inference.common import InvalidImageError
from bloodlib.models.classifiers import build_classifier

CLASSES = ["eosinophil", "lymphocyte", "neutrophil"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    kwargs = {"in_size": 32, "small_input": False, "dropout": 0.0, "width": 0.25}
    model = build_classifier("cnn", len(CLASSES), **kwargs)
    meta = classifier_meta("cnn", CLASSES, 32, architecture_kwargs=kwargs, tta="flip",
                           training_data={"dataset": "synthetic"}, metrics={"accuracy": 0.5})
    path = tmp_path_factory.mktemp("models") / "tiny-cnn.pt"
    save_checkpoint(path, model, meta)
    return path, model


def _image(h=50, w=70, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_predict_returns_label_and_probabilities(checkpoint):
    path, model = checkpoint
    pred = ClassifierPredictor.from_checkpoint(path)
    assert pred.task == "classify" and pred.classes == CLASSES and pred.input_size == 32
    res = pred.predict(_image())
    assert isinstance(res, ClassificationResult)
    assert res.label in CLASSES and list(res.probabilities) == CLASSES
    assert sum(res.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert res.label == max(res.probabilities, key=res.probabilities.get)
    assert str(res).startswith(f"Identified = {res.label.upper()}")
    assert res.top(2)[0][0] == res.label


def test_predictor_matches_the_model_on_the_prepared_crop(checkpoint):
    path, model = checkpoint
    pred = ClassifierPredictor.from_checkpoint(path)
    img = _image(60, 60, seed=1)
    x = images_to_tensor(prepare_crop(img, 32)[None])
    expected = predict_proba(model, x, "flip")[0]
    got = np.array(list(pred.predict(img).probabilities.values()))
    assert np.allclose(got, expected, atol=1e-5)


def test_predict_batch_handles_mixed_sizes(checkpoint):
    pred = ClassifierPredictor.from_checkpoint(checkpoint[0])
    images = [_image(40, 40, 2), _image(363, 360, 3), _image(9, 12, 4)]
    out = pred.predict_batch(images)
    assert len(out) == 3 and all(r.label in CLASSES for r in out)
    assert pred.predict_batch([]) == []
    assert out[1].probabilities == pytest.approx(pred.predict(images[1]).probabilities, abs=1e-5)


@pytest.mark.parametrize("bad, match", [
    (np.zeros((40, 40), np.uint8), "RGB"),                 # grayscale: wrong channel count
    (np.zeros((40, 40, 4), np.uint8), "RGB"),              # RGBA
    (np.zeros((40, 40, 3), np.float32), "uint8"),          # wrong dtype
    (np.zeros((4, 40, 3), np.uint8), "too small"),         # tiny
    (np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (9000, 9000, 3)), "MP"),  # huge
    ([[0, 0, 0]], "numpy array"),
])
def test_bad_input_raises_a_clear_error(checkpoint, bad, match):
    pred = ClassifierPredictor.from_checkpoint(checkpoint[0])
    with pytest.raises(InvalidImageError, match=match):
        pred.predict(bad)


def test_store_loads_the_classifier(checkpoint):
    from bloodlib.inference.store import load_predictor
    pred = load_predictor(checkpoint[0], task="classify")
    assert isinstance(pred, ClassifierPredictor)


def test_a_checkpoint_of_another_task_is_refused(tmp_path):
    from bloodlib.inference.store import ModelFormatError
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = build_classifier("cnn", 3, in_size=32)
    meta = classifier_meta("cnn", CLASSES, 32, architecture_kwargs={"in_size": 32})
    meta["task"] = "segment"
    save_checkpoint(tmp_path / "m.pt", model, meta)
    with pytest.raises(ModelFormatError, match="not a classifier"):
        ClassifierPredictor.from_checkpoint(tmp_path / "m.pt")
    meta["task"], meta["architecture"] = "classify", "resnet18"  # weights do not fit
    save_checkpoint(tmp_path / "m.pt", model, meta)
    with pytest.raises(ModelFormatError, match="cannot rebuild"):
        ClassifierPredictor.from_checkpoint(tmp_path / "m.pt")


def test_meta_follows_the_contract():
    meta = classifier_meta("resnet18", CLASSES, 64, architecture_kwargs={"in_size": 64},
                           crop_fraction=0.9, metrics={"accuracy": 0.9, "auc": float("nan")})
    assert meta["task"] == "classify" and meta["input_size"] == [64, 64]
    assert meta["preprocessing"]["normalize"] == "unit"
    assert meta["preprocessing"]["crop_fraction"] == 0.9
    assert meta["metrics"] == {"accuracy": 0.9} and "created" in meta


def test_prepare_crop_and_tta_views():
    img = np.zeros((100, 100, 3), np.uint8)
    img[25:75, 25:75] = 255
    assert prepare_crop(img, 50, crop_fraction=0.5).min() == 255  # only the centre is kept
    assert prepare_crop(img, 20).shape == (20, 20, 3)
    with pytest.raises(ValueError):
        prepare_crop(img, 20, crop_fraction=0)
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    views = tta_views(x, "dihedral")
    assert len(views) == 8 and len({v.numpy().tobytes() for v in views}) == 8
    assert len(tta_views(x, "flip")) == 2 and tta_views(x, "none")[0] is x
    with pytest.raises(ValueError, match="TTA"):
        tta_views(x, "tencrop")
