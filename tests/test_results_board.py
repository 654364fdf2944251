"""The results board: matching results to paper table rows, the report, the run hook;
and the latency benchmark's results JSON."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from bloodlib import board
from bloodlib.cli import main
from bloodlib.results import load_results, make_result, write_result
from stub_predictors import StubClassifier, StubDetector, smear


def _result(model, dataset, profile="quick", paper="paper5", experiment="wcsegnet", **metrics):
    metrics = metrics or {"accuracy": 0.9, "precision": 0.8, "dice": 0.7, "mIoU": 0.6,
                          "nucleus_dice": 0.75}
    return make_result(experiment, paper, dataset, "test", metrics, {}, 0, profile, 1.0,
                       model=model, device="cpu")


@pytest.fixture
def dirs(tmp_path):
    run, ref = tmp_path / "outputs" / "quick" / "results", tmp_path / "reference"
    for model in ("wcsegnet", "unet_leaky"):
        write_result(_result(model, "jiangxi"), run)
    write_result(_result("wcsegnet", "jiangxi", profile="bench_cpu",
                         accuracy=0.97, dice=0.95), ref)
    write_result(_result(None, "synthetic", paper="course", experiment="demo",
                         latency_mean_ms=80.0), run)
    write_result(_result("wcsegnet", "bccd_wbc_masks", nucleus_dice=0.6), run)
    return ref, run


def test_rows_are_matched_by_model_and_dataset():
    assert board.match_table_row(_result("wcsegnet", "jiangxi"), "table1") == {
        "dataset": "Jiangxi", "model": "WCSegNet"}
    assert board.match_table_row(_result("unet_leaky", "cellavision"), "table1") == {
        "dataset": "CellaVision", "model": "Unet (LeakyRelu)"}
    assert board.match_table_row(_result("wcsegnet", "jiangxi"), "table2") is None  # BCISC
    assert board.match_table_row(_result("unet", "jiangxi"), "table1") is None  # ambiguous
    explicit = _result("mine", "zheng-1")
    explicit["extra"] = {"paper_table": "table1", "paper_row": {"model": "WCSegNet",
                                                                "dataset": "Jiangxi"}}
    assert board.match_table_row(explicit, "table1") == {"model": "WCSegNet", "dataset": "Jiangxi"}


def test_the_main_run_gets_the_column_and_variants_and_repeats_the_appendix():
    first = _result("wcsegnet", "jiangxi", profile="bench_cpu", dice=0.95)
    second = _result("wcsegnet", "jiangxi", profile="bench_cpu", dice=0.96)
    second["extra"] = {"variant": "(long)"}
    third = _result("wcsegnet", "jiangxi", profile="bench_cpu", dice=0.93)
    third["extra"] = {"variant": "seed 1"}  # a repeat of the main run
    assert board.run_label(second) == "bench_cpu · (long)"
    cmp = board.comparisons([first, second, third])
    wide = board.wide_table(cmp)
    assert "Dice (bench_cpu)" in wide and not any("(long)" in c for c in wide.columns)
    appendix = board.appendix_table(cmp).set_index("configuration")
    assert appendix.loc["main run", "runs"] == 2 and "± " in appendix.loc["main run", "Dice"]
    assert appendix.loc["(long)", "Dice"] == "0.96" and "cores" in appendix.loc["(long)", "machines"]
    runs = board.runs_table([second, first])
    assert list(runs["variant"]) == ["-", "(long)"]             # the main run first
    assert "machine" in runs


def test_no_board_table_is_wider_than_the_limit(tmp_path):
    """The committed reference results (paper 3 alone has 17 runs of one table) and a
    table with many metrics make no table wider than MAX_TABLE_COLUMNS."""
    from bloodlib.results import MAX_TABLE_COLUMNS, split_columns
    md, _ = board.write_board(tmp_path / "board")
    lines = md.read_text().splitlines()
    heads = [line for i, line in enumerate(lines)
             if line.startswith("|") and (i == 0 or not lines[i - 1].startswith("|"))]
    assert heads and max(h.count("|") - 1 for h in heads) <= MAX_TABLE_COLUMNS
    wide = pd.DataFrame({f"c{i}": [i] for i in range(40)})
    parts = split_columns(wide)
    assert all(p.shape[1] <= MAX_TABLE_COLUMNS and p.columns[0] == "c0" for p in parts)
    assert sum(p.shape[1] - 1 for p in parts) == 39


def test_board_report(dirs, tmp_path):
    ref, run = dirs
    md, html = board.write_board(tmp_path / "board", [ref, run])
    text = md.read_text()
    assert "## Runs" in text and "| wcsegnet | paper5 | jiangxi | wcsegnet | - | bench_cpu | reference" in text
    assert "### table1:" in text and "WCSegNet, Jiangxi" in text and "Unet (LeakyRelu), Jiangxi" in text
    assert "0.9805" in text  # the paper's accuracy for WCSegNet on Jiangxi
    assert "quick · run quick" in text and "bench_cpu · reference" in text
    assert "### table2" not in text  # BCISC: nothing of ours
    others = text.split("## Other results")[1]
    assert "### demo" in others and "bccd_wbc_masks" in others
    cmp = pd.read_csv(tmp_path / "board" / "comparisons.csv")
    row = cmp[(cmp["row"] == "WCSegNet, Jiangxi") & (cmp["metric"] == "accuracy")]
    assert sorted(row["ours"]) == [0.9, 0.97] and set(row["profile"]) == {"quick", "bench_cpu"}
    assert "mixed" not in set(cmp["unit"])
    assert (tmp_path / "board" / "figures" / "paper5_table1.png").stat().st_size > 1000
    page = html.read_text()
    assert "<table" in page and "figures/paper5_table1.png" in page and "background:#f0ad4e" in page


def test_empty_board_still_writes_a_report(tmp_path):
    md, html = board.write_board(tmp_path / "b", [tmp_path / "nothing"])
    assert "_No results yet._" in md.read_text() and html.is_file()


def test_course_run_writes_the_board(dirs, tmp_path, capsys):
    from bloodlib.notebooks import write_results_board
    _, run = dirs
    md = write_results_board(run.parent)
    assert md == run.parent / "board" / "results_board.md" and "WCSegNet, Jiangxi" in md.read_text()
    assert main(["board", str(run), "--out", str(tmp_path / "cli_board")]) == 0
    assert (tmp_path / "cli_board" / "results_board.html").is_file()


def test_latency_benchmark_writes_a_valid_result(tmp_path):
    from bloodlib.inference.benchmark import latency_benchmark
    images = [smear(i) for i in range(2)]
    report = latency_benchmark(StubDetector(), StubClassifier(), images, folder_images=3,
                               warmup=1)
    m = report.metrics
    assert all(math.isfinite(v) for v in m.values())
    assert m["images_timed"] == 2 and m["folder_images"] == 3 and m["cells_per_image"] == 3
    assert m["wbc_classified_per_image"] == 1 and m["latency_mean_ms"] > 0
    assert report.info["with_classifier"] and report.info["main_task"] == "detect"
    path = report.write(tmp_path / "results", "quick")
    (res,) = load_results(path)
    assert res["experiment"] == "latency" and res["metrics"]["throughput_images_per_s"] > 0


def test_latency_command_uses_the_named_store_models(tmp_path, monkeypatch):
    """`bloodlib bench latency --detector NAME --classifier NAME` times those two models
    (not the newest ones) and records their names; an unknown name is a clear error."""
    import torch
    from bloodlib.engine.checkpoint import save_checkpoint
    from bloodlib.errors import BloodlibError
    from bloodlib.inference.benchmark import run_latency_benchmark
    from bloodlib.inference.classification import classifier_meta
    from bloodlib.inference.detection import detector_meta
    from bloodlib.models.classifiers import build_classifier
    from bloodlib.models.detection import build_detector
    store = tmp_path / "store"
    store.mkdir()
    monkeypatch.setenv("BLOODLIB_MODELS", str(store))
    torch.manual_seed(0)
    det = build_detector("faster_rcnn", "mobilenet_v3_large", 4, min_size=64, max_size=80,
                         fpn_channels=16, representation_size=32, box_detections_per_img=5)
    save_checkpoint(store / "tiny-det.pt", det, detector_meta(det, ["WBC", "RBC", "Platelets"]))
    kwargs = {"in_size": 32, "small_input": False, "dropout": 0.0, "width": 0.25}
    cls = build_classifier("cnn", 5, **kwargs)
    names = ["basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil"]
    save_checkpoint(store / "tiny-cls.pt", cls,
                    classifier_meta("cnn", names, 32, architecture_kwargs=kwargs))
    with pytest.raises(BloodlibError):
        run_latency_benchmark("quick", tmp_path / "out", detector_name="no-such-model",
                              classifier_name="tiny-cls")
    path = run_latency_benchmark("quick", tmp_path / "out", tmp_path / "ref",
                                 detector_name="tiny-det", classifier_name="tiny-cls")
    (res,) = load_results(path)
    assert res["config"]["detector_model"] == "tiny-det"
    assert res["config"]["classifier_model"] == "tiny-cls"
    # PyTorch and onnxruntime side by side (test-time views off in both)
    assert res["metrics"]["onnxruntime_latency_mean_ms"] > 0
    assert res["metrics"]["torch_no_tta_latency_mean_ms"] > 0
    assert (tmp_path / "ref" / path.name).is_file()


def test_paper2_backbones_fill_tables_3_to_5_including_rows_the_paper_lacks():
    from bloodlib.experiments import maskrcnn_backbones as mb
    metrics = {"total_loss": 0.5, "val_loss": 0.6, "box_loss": 0.1, "class_loss": 0.2,
               "mask_loss": 0.2, "val_mAP50": 0.8, "val_F1": 0.7, "F1": 0.9, "accuracy": 0.95}
    results = []
    for backbone, pretrained in (("resnet50", False), ("efficientnet_lite0", True)):
        r = make_result("maskrcnn_backbones", "paper2", "pbc", "test", metrics, {}, 0,
                        "bench_cpu", 1.0, model=f"mask_rcnn_{backbone}",
                        extra=mb.board_placement(backbone, pretrained))
        results.append(r)
    cmp = board.comparisons(results)
    assert set(cmp["table"]) == {"table3", "table4", "table5"}
    t4 = cmp[cmp["table"] == "table4"].set_index(["row", "metric"])
    assert t4.loc[("Mask R-CNN, ResNet50, PBC", "F1"), "ours"] == 0.7    # Table 4's F1 is val_F1
    assert cmp[(cmp["table"] == "table5") & (cmp["metric"] == "F1")]["ours"].tolist() == [0.9, 0.9]
    own = t4.loc[("Mask R-CNN, EfficientNet-Lite0 (ImageNet) (ours only)", "mAP50")]
    assert own["ours"] == 0.8 and np.isnan(own["paper"])


def test_a_table_with_rows_of_ours_only_lists_the_papers_rows_too():
    from bloodlib.experiments import maskrcnn_backbones as mb
    from bloodlib.results import paper_table
    r = make_result("maskrcnn_backbones", "paper2", "pbc", "test", {"val_mAP50": 0.5}, {}, 0,
                    "bench_cpu", 1.0, model="mask_rcnn_efficientnet_lite0",
                    extra=mb.board_placement("efficientnet_lite0", True))
    cmp = board.comparisons([r])
    wide = board.wide_table(cmp[cmp["table"] == "table4"], paper_table("paper2", "table4"))
    assert len(wide) == 1 + len(paper_table("paper2", "table4"))
    row = wide.set_index("row").loc["Mask R-CNN, ResNet50, PBC"]
    assert row["mAP (0.5) (paper)"] == 0.8902 and np.isnan(row.filter(like="bench_cpu").iloc[0])
