"""The prediction demo, headless: set widget values, run, read the outputs, export."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pytest

from bloodlib.errors import BloodlibError, ImageReadError, InvalidImageError
from bloodlib.inference.common import preprocessing_available
from bloodlib.widgets import NO_CLASSIFIER, PredictionDemo, decode_image
from stub_predictors import StubClassifier, StubDetector, png_bytes, smear, store_tiny_segmenter


def test_segmentation_run_outputs_and_export(store, tmp_path):
    demo = PredictionDemo(export_dir=tmp_path / "exports", auto_run=False)
    assert demo.task.value == "segment" and demo.model.value == "tiny-seg"
    assert demo.train_button.layout.display == "none"
    demo.load_image(png_bytes(smear(0)), "upload.png")
    demo.load_image(smear(1), "array")
    preds = demo.run()
    assert len(preds) == 2 and "Processed 2 image(s)" in demo.message
    assert [o.shape for o in demo.overlays()] == [(96, 128, 3)] * 2
    assert len(demo.gallery.children) == 2
    assert "<table" in demo.counts_html.value and "<table" in demo.cells_html.value
    counts = demo.counts_frame()
    assert list(counts.columns) == ["class", "count", "percent"]
    assert list(counts["class"]) == ["neutrophil", "lymphocyte", "basophil"]
    rows = demo.results_frame()
    assert len(rows) == 2 * 4 and rows.groupby("image")["pixels"].sum().eq(96 * 128).all()
    csv, counts_csv = demo.export(tmp_path / "out.csv")
    assert pd.read_csv(csv).shape[0] == 8 and pd.read_csv(counts_csv).shape[0] == 2
    (js,) = demo.export(tmp_path / "out.json")
    doc = json.loads(js.read_text())
    assert doc["task"] == "segment" and len(doc["images"]) == 2 and doc["counts"]
    demo._export_clicked()  # the button: CSV + JSON into export_dir
    assert sorted(p.name for p in (tmp_path / "exports").iterdir()) == [
        "results.csv", "results.json", "results_counts.csv"]


def test_upload_widget_triggers_a_run(store):
    demo = PredictionDemo()
    demo.upload.value = ({"name": "smear.png", "type": "image/png", "size": 1,
                          "content": memoryview(png_bytes(smear(3))),
                          "last_modified": datetime.now(timezone.utc)},)
    assert [p.name for p in demo.predictions] == ["smear.png"]
    assert "smear.png" in demo.status.value
    assert demo.upload.value == ()  # cleared, so the same file can be uploaded again


def test_examples_and_task_switch(store):
    demo = PredictionDemo()
    assert any(name.startswith("Synthetic smear") for name in demo.example.options)
    demo.load_example("Synthetic neutrophil crop")
    assert demo.predictions and demo.predictions[0].name == "Synthetic neutrophil crop"
    demo.task.value = "detect"  # no detector in this store
    assert demo.model.value is None and demo.train_button.layout.display is None
    assert "No trained 'detect' model" in demo.message
    assert demo.example.value.startswith(("BCCD", "Synthetic smear"))
    with pytest.raises(BloodlibError, match="No 'detect' model selected"):
        demo.run()


def test_detection_counts_table_is_cbc_style(store):
    demo = PredictionDemo(auto_run=False)
    demo.task.value = "detect"
    demo.model.options, demo.classifier.options = ["stub"], [NO_CLASSIFIER, "stub-cls"]
    demo.model.value, demo.classifier.value = "stub", "stub-cls"
    demo._predictors[("detect", "stub")] = StubDetector()
    demo._predictors[("classify", "stub-cls")] = StubClassifier()
    demo.load_image(smear(0), "a")
    demo.score.value = 0.3
    demo.run()
    counts = demo.counts_frame().set_index("class")
    assert counts.loc[["WBC", "RBC", "Platelets"], "count"].tolist() == [1, 2, 1]
    assert counts.loc["RBC", "percent"] == pytest.approx(50.0)
    typed = [c for c in counts.index if c.startswith("WBC/")]
    assert len(typed) == 1 and counts.loc[typed[0], "percent"] == pytest.approx(100.0)
    cells = demo.results_frame()
    assert len(cells) == 4 and cells.loc[cells["class"] == "WBC", "p_neutrophil"].notna().all()
    demo.score.value = 0.75
    demo.run()
    assert len(demo.results_frame()) == 2


def test_no_model_offers_a_quick_model(tmp_path, monkeypatch):
    folder = tmp_path / "empty"
    monkeypatch.setenv("BLOODLIB_MODELS", str(folder))
    import bloodlib.inference.quick_models as qm
    monkeypatch.setattr(qm, "train_quick_model",
                        lambda task, folder=None, **kw: store_tiny_segmenter(folder or tmp_path / "empty",
                                                                             "quick-segment"))
    demo = PredictionDemo(task="segment")
    assert "No trained 'segment' model" in demo.status.value
    assert demo.train_button.layout.display is None
    demo.load_image(smear(0), "a")
    demo.train_button.click()
    assert demo.model.value == "quick-segment" and demo.predictions  # trained, then ran


def test_preprocessing_toggles(store):
    demo = PredictionDemo()
    demo.load_image(smear(0), "a")
    demo.clahe.value = True
    if preprocessing_available():
        assert "Processed 1 image(s)" in demo.message
    else:
        assert demo.clahe.disabled and "not available" in demo.message


def test_bad_upload_is_a_clear_error():
    with pytest.raises(ImageReadError, match="Cannot decode the uploaded file"):
        decode_image(b"definitely not an image")
    assert decode_image(np.zeros((10, 10, 3), np.uint8)).shape == (10, 10, 3)


def test_failed_upload_clears_the_previous_result(store, tmp_path):
    """Issue 24 item 17: after a bad upload nothing old stays on screen or in export()."""
    from bloodlib.errors import BloodlibError
    demo = PredictionDemo(export_dir=tmp_path / "exports")
    upload = {"type": "image/png", "size": 1, "last_modified": datetime.now(timezone.utc)}
    demo.upload.value = ({**upload, "name": "good.png", "content": memoryview(png_bytes(smear(3)))},)
    assert demo.predictions and demo.gallery.children
    demo.upload.value = ({**upload, "name": "broken.png", "content": memoryview(b"junk")},)
    assert not demo.predictions and not demo.gallery.children and not demo.images
    assert "broken.png" in demo.message and "BytesIO" not in demo.message
    with pytest.raises(BloodlibError, match="Nothing to export"):
        demo.export(tmp_path / "out.csv")


def test_uploaded_decompression_bomb_gets_a_clear_message():
    import io

    from PIL import Image
    buf = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buf, format="PNG")
    with pytest.raises(ImageReadError, match="'bomb.png'.*too large to decode safely"):
        decode_image(buf.getvalue(), "bomb.png")
    with pytest.raises(ImageReadError, match="'junk.bin'") as err:
        decode_image(b"junk", "junk.bin")
    assert "BytesIO" not in str(err.value)
    with pytest.raises(InvalidImageError, match="'one.png'.*too small"):
        decode_image(png_bytes(np.zeros((1, 1, 3), np.uint8)), "one.png")
