"""`bloodlib predict`: folders with bad files, CSV columns per task, exit status, help."""

from __future__ import annotations

import pandas as pd
import pytest
from PIL import Image

from bloodlib.cli import main
from bloodlib.inference.batch import predict_files
from bloodlib.inference.folder import collect_inputs
from stub_predictors import StubClassifier, StubDetector, png_bytes, smear


@pytest.fixture
def folder(tmp_path):
    """Two good smears (one in a sub-folder), a truncated PNG and a text file."""
    d = tmp_path / "images"
    (d / "sub").mkdir(parents=True)
    Image.fromarray(smear(0)).save(d / "a.png")
    Image.fromarray(smear(1)).save(d / "sub" / "b.jpg")
    (d / "corrupt.png").write_bytes(png_bytes(smear(2))[:300])
    (d / "notes.txt").write_text("not an image")
    (d / ".hidden.png").write_bytes(b"ignored")
    return d


def test_folder_with_bad_files_is_processed_and_reported(store, folder, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["predict", str(folder), "--task", "segment", "--model", "tiny-seg",
               "--out", str(out), "--quiet", "--overlays", "all"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "2 image(s) processed, 2 skipped" in printed and "corrupt.png" in printed
    skipped = pd.read_csv(out / "skipped.csv")
    assert sorted(p.split("/")[-1] for p in skipped["image"]) == ["corrupt.png", "notes.txt"]
    assert skipped["reason"].str.contains("Cannot decode image").all()
    areas = pd.read_csv(out / "areas.csv")
    assert list(areas.columns) == ["image", "class", "pixels", "fraction", "objects"]
    assert len(areas) == 2 * 4 and areas.groupby("image")["pixels"].sum().eq(96 * 128).all()
    counts = pd.read_csv(out / "counts.csv")
    assert list(counts.columns) == ["image", "neutrophil", "lymphocyte", "basophil", "total"]
    assert len(counts) == 2
    overlays = sorted(p.name for p in (out / "overlays").glob("*.png"))
    assert overlays == ["a.png", "b.png"]
    assert Image.open(out / "overlays" / "a.png").size == (128, 96)
    assert (out / "summary.json").is_file()


def test_exit_status_is_1_when_nothing_could_be_read(store, folder, tmp_path, capsys):
    rc = main(["predict", str(folder / "corrupt.png"), str(tmp_path / "missing.png"),
               "--task", "segment", "--out", str(tmp_path / "out"), "--quiet"])
    assert rc == 1
    assert "no image could be processed" in capsys.readouterr().err


def test_unknown_model_and_wrong_task_are_clear_errors(store, folder, tmp_path, capsys):
    assert main(["predict", str(folder), "--task", "segment", "--model", "nope",
                 "--out", str(tmp_path / "o")]) == 2
    assert "No model 'nope'" in capsys.readouterr().err
    assert main(["predict", str(folder), "--task", "detect", "--model", "tiny-seg",
                 "--out", str(tmp_path / "o")]) == 2
    assert "is a 'segment' model, not 'detect'" in capsys.readouterr().err


def test_detection_csv_has_one_row_per_cell_and_counts(folder, tmp_path):
    files, missing = collect_inputs([folder])
    assert not missing and len(files) == 4  # hidden file left out
    rep = predict_files(files, StubDetector(), tmp_path / "out", classifier=StubClassifier(),
                        score_threshold=0.5, progress=False)
    cells = pd.read_csv(tmp_path / "out" / "detections.csv")
    assert list(cells.columns[:8]) == ["image", "cell", "class", "score", "x1", "y1", "x2", "y2"]
    assert {"wbc_type", "wbc_type_score", "p_neutrophil", "p_lymphocyte"} <= set(cells.columns)
    assert len(cells) == 2 * 3  # the 0.4-score RBC is below the threshold
    wbc = cells[cells["class"] == "WBC"]
    assert wbc["wbc_type"].notna().all() and cells.loc[cells["class"] != "WBC", "wbc_type"].isna().all()
    counts = pd.read_csv(tmp_path / "out" / "counts.csv")
    assert counts[["WBC", "RBC", "Platelets", "total"]].iloc[0].tolist() == [1, 1, 1, 3]
    assert any(c.startswith("WBC/") for c in counts.columns)
    assert rep.totals()["RBC"] == 2 and len(rep.skipped) == 2


def test_classification_csv_has_label_and_probabilities(folder, tmp_path):
    predict_files([folder / "a.png"], StubClassifier(), tmp_path / "out", progress=False)
    table = pd.read_csv(tmp_path / "out" / "classifications.csv")
    assert list(table.columns) == ["image", "label", "score", "p_neutrophil", "p_lymphocyte"]
    assert table["score"].iloc[0] == pytest.approx(table[["p_neutrophil", "p_lymphocyte"]].max(axis=1).iloc[0])


def test_help_documents_every_command(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for word in ("run", "bench", "fetch", "verify", "datasets", "predict", "models", "board",
                 "bloodlib bench 05 latency"):
        assert word in text
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    text = capsys.readouterr().out
    for opt in ("--task", "--model", "--out", "--score-threshold", "--nms-threshold", "--clahe",
                "--stain"):
        assert opt in text


def test_models_command_lists_the_store(store, capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "tiny-seg" in out and "segment" in out


# ----------------------------------------------------------------------------- issue 24, items 2-4
@pytest.fixture
def hostile(tmp_path):
    """Two good smears beside a 1x1 image, a 20000x20000 PNG (a decompression bomb of
    49 KB), a symbolic-link loop and a broken link."""
    import os
    d = tmp_path / "hostile"
    (d / "sub").mkdir(parents=True)
    Image.fromarray(smear(0)).save(d / "a.png")
    Image.fromarray(smear(1)).save(d / "sub" / "b.png")
    Image.new("RGB", (1, 1)).save(d / "tiny.png")
    Image.new("1", (20000, 20000)).save(d / "bomb.png")
    os.symlink("loop", d / "loop")                  # a link to itself
    os.symlink("..", d / "sub" / "up")              # a folder link back to its parent
    os.symlink("gone.png", d / "broken.png")
    return d


def test_bad_images_cost_no_good_one(store, hostile, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["predict", str(hostile), "--task", "segment", "--model", "tiny-seg",
               "--out", str(out), "--quiet"])
    assert rc == 0
    skipped = pd.read_csv(out / "skipped.csv")
    reasons = {p.split("/")[-1]: r for p, r in zip(skipped["image"], skipped["reason"])}
    assert "too small" in reasons["tiny.png"]
    assert "decompression bomb" in reasons["bomb.png"]
    assert reasons["loop"] == "symbolic link loop"
    assert "symbolic link loop" in reasons["up"]
    assert "broken symbolic link" in reasons["broken.png"]
    areas = pd.read_csv(out / "areas.csv")
    assert sorted({p.split("/")[-1] for p in areas["image"]}) == ["a.png", "b.png"]
    assert len(pd.read_csv(out / "counts.csv")) == 2
    assert "2 image(s) processed, 5 skipped" in capsys.readouterr().out


def test_a_model_error_on_one_image_skips_only_that_image(folder, tmp_path):
    class Fragile(StubDetector):
        def predict(self, image, **kw):
            if image.mean() > 0:  # every image; the message must reach skipped.csv
                raise RuntimeError("CUDA out of memory (simulated)")
    files, _ = collect_inputs([folder / "a.png"])
    rep = predict_files(files, Fragile(), tmp_path / "out", progress=False)
    assert not rep.processed and "out of memory" in rep.skipped[0][1]
    assert (tmp_path / "out" / "skipped.csv").is_file() and (tmp_path / "out" / "summary.json").is_file()


def test_images_over_the_pixel_limit_are_shrunk_and_reported_in_original_pixels(folder, tmp_path):
    import json
    files = [folder / "a.png"]  # 128 x 96
    small = predict_files(files, StubDetector(), tmp_path / "small", progress=False,
                          max_pixels=128 * 96 // 4, overlays=False)
    full = predict_files(files, StubDetector(), tmp_path / "full", progress=False, overlays=False)
    (path, factor), = small.downscaled
    assert factor == pytest.approx(2.0, rel=0.01)
    # the stub's fixed boxes are in the shrunk image's pixels, so they come back doubled
    small_rows = pd.read_csv(tmp_path / "small" / "detections.csv").iloc[0]
    full_rows = pd.read_csv(tmp_path / "full" / "detections.csv").iloc[0]
    assert small_rows["x2"] == pytest.approx(full_rows["x2"] * 2)
    assert small_rows["y2"] == pytest.approx(full_rows["y2"] * 2)
    summary = json.loads((tmp_path / "small" / "summary.json").read_text())
    assert summary["downscaled"][0]["factor"] == pytest.approx(factor)


def test_out_pointing_at_a_file_is_a_clear_error(store, folder, tmp_path, capsys):
    target = tmp_path / "results.csv"
    target.write_text("keep me")
    rc = main(["predict", str(folder), "--task", "segment", "--model", "tiny-seg",
               "--out", str(target), "--quiet"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "is an existing file" in err and "Traceback" not in err
    assert target.read_text() == "keep me"
