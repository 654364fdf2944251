"""Model store: save / list / load with weights_only, clear errors, legacy WCSegNet
checkpoints, the segmentation predictor, input checks and quick models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bloodlib.engine.checkpoint import save_checkpoint
from bloodlib.errors import BloodlibError, WeightsNotFoundError
from bloodlib.inference import store
from bloodlib.inference.common import InvalidImageError, check_image
from bloodlib.inference.segmentation import PAPER5_CLASSES, SegmenterPredictor
from bloodlib.models import build_segmentation_model
from stub_predictors import smear, store_tiny_segmenter


@pytest.fixture
def models(tmp_path, monkeypatch):
    folder = tmp_path / "models"
    monkeypatch.setenv("BLOODLIB_MODELS", str(folder))
    return folder


def test_save_list_load_roundtrip(models):
    path = store_tiny_segmenter(models)
    assert path == models / "tiny-seg.pt" and store.models_dir() == models.resolve()
    df = store.list_models()
    assert list(df["name"]) == ["tiny-seg"]
    row = df.iloc[0]
    assert row["task"] == "segment" and row["architecture"] == "wcsegnet"
    assert row["input_size"] == "32x32" and "neutrophil" in row["classes"]
    assert "dice=0.5" in row["metrics"] and row["created"][:2] == "20"
    assert store.default_model("segment") == "tiny-seg" and store.default_model("detect") is None
    predictor = store.load_predictor("tiny-seg", task="segment")
    assert isinstance(predictor, SegmenterPredictor) and predictor.classes[0] == "background"
    result = predictor.predict(smear())
    assert result.class_map.shape == (96, 128) and result.class_map.dtype == np.int64
    assert sum(result.areas().values()) == 96 * 128
    assert set(result.counts()) == {"neutrophil", "lymphocyte", "basophil"}
    # by path too, and the task is checked
    assert store.load_predictor(path).classes == predictor.classes
    with pytest.raises(BloodlibError, match="is a 'segment' model, not 'detect'"):
        store.load_predictor("tiny-seg", task="detect")


def test_unknown_model_lists_the_store(models):
    with pytest.raises(store.ModelNotFoundError, match="holds no model yet"):
        store.load_predictor("nope")
    store_tiny_segmenter(models)
    with pytest.raises(WeightsNotFoundError, match="models in .*: tiny-seg"):
        store.load_predictor("nope")


def test_incomplete_meta_and_bad_names_are_refused(models):
    model = build_segmentation_model("wcsegnet", 4, width=1 / 16)
    with pytest.raises(store.ModelFormatError, match="lacks \\['architecture', 'classes'\\]"):
        store.save_model(model, "x", {"task": "segment"})
    with pytest.raises(store.ModelFormatError, match="Unknown task 'count'"):
        store.save_model(model, "x", {"task": "count", "architecture": "a", "classes": ["c"]})
    with pytest.raises(BloodlibError, match="not valid"):
        store.save_model(model, "../evil", {"task": "segment", "architecture": "wcsegnet",
                                            "classes": list(PAPER5_CLASSES)})


class Evil:  # any pickled object: weights_only=True must refuse to build it
    pass


def test_pickled_objects_are_not_loaded(models):
    models.mkdir(parents=True)
    torch.save({"model_state": {}, "meta": {"task": "segment"}, "x": Evil()}, models / "evil.pt")
    with pytest.raises(store.ModelFormatError, match="weights_only=True"):
        store.load_predictor("evil")
    (models / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(store.ModelFormatError):
        store.load_predictor("junk")
    with pytest.warns(UserWarning, match="Skipping"):
        assert store.list_models().empty


def test_missing_task_module_gives_a_clear_error(models, monkeypatch):
    model = build_segmentation_model("wcsegnet", 4, width=1 / 16)
    store.save_model(model, "det", {"task": "detect", "architecture": "x", "classes": ["WBC"]})
    monkeypatch.setitem(store.PREDICTORS, "detect", ("bloodlib.inference.not_there", "Nope"))
    with pytest.raises(BloodlibError, match="not part of this version"):
        store.load_predictor("det")


def test_legacy_wcsegnet_checkpoint_loads(tmp_path):
    model = build_segmentation_model("wcsegnet", 4, width=1 / 16)
    path = save_checkpoint(tmp_path / "wcsegnet_jiangxi.pt", model,
                           meta={"model": "wcsegnet", "knobs": {"width": 1 / 16, "num_classes": 4,
                                                                "image_size": 32,
                                                                "datasets": ["jiangxi"]}})
    meta = store.read_meta(path)
    assert meta["task"] == "segment" and meta["input_size"] == [32, 32]
    assert meta["classes"] == list(PAPER5_CLASSES)
    predictor = store.load_predictor(path)
    assert predictor.predict(smear(1, 40, 40)).class_map.shape == (40, 40)


def test_train_model_checkpoint_is_a_store_model(tmp_path):
    """The checkpoint wbc_segmentation.train_model writes loads as a predictor."""
    from bloodlib.config import get_profile
    from bloodlib.data.synthetic import write_segmentation_set
    from bloodlib.experiments import wbc_segmentation as wcs
    recs, _ = wcs.filter_paper5(write_segmentation_set(tmp_path / "syn", 12, 0, size=32))
    knobs = dict(get_profile("wcsegnet", "quick"), image_size=32, width=1 / 16, epochs=1,
                 batch_size=4, max_train_batches=1, time_budget_s=None)
    wcs.train_model("wcsegnet", recs[:8], recs[8:], knobs, "cpu", 0,
                    checkpoint_dir=tmp_path / "ckpt")
    ckpt = next((tmp_path / "ckpt").glob("wcsegnet*.pt"))
    predictor = store.load_predictor(ckpt)
    assert predictor.input_size == (32, 32) and predictor.classes == list(wcs.CLASS_NAMES)


@pytest.mark.parametrize("bad, match", [
    (np.zeros((20, 20, 3), np.float32), "dtype uint8"),
    (np.zeros((20, 20), np.uint8), "shape \\(H, W, 3\\)"),
    (np.zeros((4, 20, 3), np.uint8), "too small"),
    ([[0]], "numpy array"),
])
def test_check_image_errors(bad, match):
    with pytest.raises(InvalidImageError, match=match):
        check_image(bad)


def test_quick_segment_model_trains_and_is_stored(models, tmp_path, monkeypatch):
    from bloodlib.inference.quick_models import train_quick_model
    monkeypatch.setenv("BLOODLIB_DATA", str(tmp_path / "no-data"))  # synthetic crops
    path = train_quick_model("segment", time_budget_s=3)
    meta = store.read_meta(path)
    assert path.stem == "quick-segment" and meta["training_data"]["profile"] == "quick-model"
    assert meta["training_data"]["source"] == "synthetic" and "dice" in meta["metrics"]
    assert store.load_predictor("quick-segment").predict(smear()).class_map.shape == (96, 128)


def test_quick_model_of_a_missing_experiment_says_so(tmp_path):
    from bloodlib.inference import quick_models
    with pytest.raises(BloodlibError, match="not part of this version"):
        quick_models._from_experiment("bloodlib.experiments.not_there", "detect", tmp_path, 0, 1)
    with pytest.raises(BloodlibError, match="No quick model for task 'count'"):
        quick_models.train_quick_model("count", tmp_path)
    assert {"segment", "classify", "detect"} <= set(quick_models.quick_model_tasks())
