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
    from bloodlib.config import get_config
    from bloodlib.engine.checkpoint import Checkpoints
    from bloodlib.data.synthetic import write_segmentation_set
    from bloodlib.experiments import wbc_segmentation as wcs
    recs, _ = wcs.filter_paper5(write_segmentation_set(tmp_path / "syn", 12, 0, size=32))
    settings = get_config("wcsegnet", "quick", image_size=32, width=1 / 16, epochs=1,
                          batch_size=4, max_train_batches=1, time_budget_s=None)
    wcs.train_model("wcsegnet", recs[:8], recs[8:], settings, "cpu", 0,
                    Checkpoints(tmp_path / "ckpt"))
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


# ----------------------------------------------------------------------------- issue 24, items 5-8
def _save_raw(folder, name: str, meta) -> None:
    """A checkpoint written around the store's checks, as a hand-edited file would be."""
    folder.mkdir(parents=True, exist_ok=True)
    model = build_segmentation_model("wcsegnet", 4, width=1 / 16)
    torch.save({"format": 1, "model_state": model.state_dict(), "meta": meta},
               folder / f"{name}.pt")


GOOD = {"task": "segment", "architecture": "wcsegnet", "input_size": 32,
        "architecture_kwargs": {"width": 1 / 16},
        "classes": ["background", "neutrophil", "lymphocyte", "basophil"]}


@pytest.mark.parametrize("bad, reason", [
    ({**GOOD, "classes": 5}, "'classes' must be a list"),
    ([1, 2], "must be a mapping"),
    ({**GOOD, "architecture_kwargs": "width=1"}, "'architecture_kwargs' must be dict"),
    ({**GOOD, "input_size": "big"}, "'input_size'"),
    ({**GOOD, "metrics": [0.5]}, "'metrics' must be dict"),
])
def test_malformed_metadata_is_listed_as_unusable_and_the_store_keeps_working(
        models, bad, reason, capsys):
    """Item 5: `bloodlib models`, the default model of predict and the widget survive."""
    from bloodlib.cli import main
    from bloodlib.widgets import PredictionDemo
    store_tiny_segmenter(models)
    _save_raw(models, "broken", bad)
    (name, why), = store.unusable_models()
    assert name == "broken" and reason in why
    with pytest.warns(UserWarning, match="Skipping"):
        assert list(store.list_models()["name"]) == ["tiny-seg"]
    assert store.default_model("segment") == "tiny-seg"
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "tiny-seg" in out and "unusable (1" in out and "broken:" in out
    demo = PredictionDemo(task="segment", auto_run=False)
    assert demo.model.value == "tiny-seg"
    with pytest.raises(store.ModelFormatError, match=reason.split("'")[1] if "'" in reason else "mapping"):
        store.load_predictor("broken")


def test_class_names_that_do_not_match_the_head_are_refused(models):
    """Item 6: "WBC" is not three classes, and 2 names for a 4-way head are refused."""
    _save_raw(models, "letters", {**GOOD, "classes": "WBC"})
    with pytest.raises(store.ModelFormatError, match="letter by letter"):
        store.load_predictor("letters")
    _save_raw(models, "two", {**GOOD, "classes": ["background", "nucleus"],
                              "architecture_kwargs": {"width": 1 / 16, "num_classes": 4}})
    with pytest.raises(store.ModelFormatError, match="4 outputs but the metadata names 2"):
        store.load_predictor("two")
    _save_raw(models, "two-default", {**GOOD, "classes": ["background", "nucleus"]})
    with pytest.raises(store.ModelFormatError, match="one name per output"):
        store.load_predictor("two-default")  # the head is built from the names: weights differ


def test_detector_class_list_must_match_its_head(tmp_path):
    from bloodlib.inference.detection import DetectorPredictor, detector_meta
    from bloodlib.models.detection import build_detector
    model = build_detector("faster_rcnn", "mobilenet_v3_large", num_classes=4, min_size=64, max_size=64)
    meta = detector_meta(model, ["WBC", "RBC", "Platelets"])
    meta["classes"] = ["WBC", "RBC"]
    save_checkpoint(tmp_path / "det.pt", model, meta)
    with pytest.raises(store.ModelFormatError, match="3 outputs but the metadata names 2"):
        DetectorPredictor.from_checkpoint(tmp_path / "det.pt")


def test_names_resolve_inside_the_store_only(models, tmp_path, monkeypatch):
    """Item 7: '../x' must not reach store/../x.pt; a file elsewhere is named as a path."""
    path = store_tiny_segmenter(models)
    outside = tmp_path / "x.pt"
    outside.write_bytes(path.read_bytes())
    with pytest.raises(store.ModelNotFoundError, match="No model file at ../x"):
        store.resolve_model("../x")
    with pytest.raises(store.ModelNotFoundError, match="neither a model name"):
        store.resolve_model("..")
    assert store.resolve_model("tiny-seg") == path.resolve()
    assert store.resolve_model(outside) == outside.resolve()  # an explicit path works
    monkeypatch.chdir(models)
    assert store.resolve_model("../x.pt") == outside.resolve()


def test_empty_and_random_files_are_not_checkpoints(models):
    """Item 8: no confusing mmap message."""
    models.mkdir(parents=True)
    (models / "empty.pt").write_bytes(b"")
    (models / "random.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(store.ModelFormatError, match="empty \\(0 bytes\\), not a model checkpoint"):
        store.load_predictor("empty")
    with pytest.raises(store.ModelFormatError, match="not a model checkpoint \\(not a PyTorch file"):
        store.load_predictor("random")
    assert dict(store.unusable_models()).keys() == {"empty", "random"}


def test_quick_model_is_the_same_for_the_same_seed(models, tmp_path, monkeypatch):
    """Issue 24 item 16: quick models stop at a step count, not a clock, so one seed gives
    one model (with a 10-s budget the nucleus Dice was 0.61 one run, 0.75 the next)."""
    from bloodlib.inference.quick_models import quick_steps, train_quick_model
    monkeypatch.setenv("BLOODLIB_DATA", str(tmp_path / "no-data"))
    assert quick_steps("segment", 10) == quick_steps("segment", 10) >= 1
    a = train_quick_model("segment", name="a", seed=0, steps=2)
    b = train_quick_model("segment", name="b", seed=0, steps=2)
    c = train_quick_model("segment", name="c", seed=1, steps=2)
    state = {n: store.read_checkpoint(p)["model_state"] for n, p in (("a", a), ("b", b), ("c", c))}
    assert all(torch.equal(state["a"][k], state["b"][k]) for k in state["a"])
    assert not all(torch.equal(state["a"][k], state["c"][k]) for k in state["a"])
    meta = store.read_meta(a)
    assert meta["training_data"]["steps"] == 2 and meta["metrics"] == store.read_meta(b)["metrics"]
