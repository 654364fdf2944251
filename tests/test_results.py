"""Results JSON round trip, validation, reference tables and paper comparisons."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from bloodlib import results as R
from bloodlib.errors import BloodlibError


def _result(**kw):
    args = dict(experiment="mcnet", paper="paper1", dataset="bccd", split="test",
                metrics={"AP50": 0.9, "AP": 0.6}, config={"epochs": 2, "size": (512, 512)},
                seed=0, profile="quick", wall_time_s=1.5, device="cpu")
    args.update(kw)
    return R.make_result(**args)


def test_make_result_fills_environment():
    res = _result(device=None)
    assert res["schema_version"] == R.SCHEMA_VERSION
    assert res["device"].startswith(("cpu (", "cuda:"))
    for key in ("python", "torch", "numpy", "bloodlib"):
        assert res["versions"][key]
    assert res["machine"]["cpu_count"] >= 1
    # what decides CPU training speed (AVX2 vs AMX machines differ ~3.5x): recorded
    assert res["machine"]["cpu_capability"] and isinstance(res["machine"]["cpu_bf16"], bool)
    assert "cpu_model" in res["machine"]
    assert res["peak_memory_mb"]["cpu_rss"] > 0
    assert res["created"].endswith("+00:00")
    assert res["config"]["size"] == [512, 512]  # JSON-ready
    json.dumps(res, allow_nan=False)


def test_write_load_roundtrip(tmp_path):
    res = _result(model="Faster R-CNN / r50")
    path = R.write_result(res, tmp_path / "results")
    assert path.name == "mcnet__bccd__quick__Faster-R-CNN-r50.json"
    (tmp_path / "results" / "runs.json").write_text("[1, 2]")  # not a result: skipped
    (tmp_path / "results" / "other.json").write_text('{"a": 1}')
    loaded = R.load_results(tmp_path)
    assert loaded == [json.loads(json.dumps(res))]
    df = R.results_frame(loaded)
    assert len(df) == 2 and set(df["metric"]) == {"AP50", "AP"}
    assert df.loc[df.metric == "AP50", "value"].item() == pytest.approx(0.9)


def test_filename_without_model_and_sanitised(tmp_path):
    path = R.write_result(_result(experiment="a b/c", dataset="x:y"), tmp_path)
    assert path.name == "a-b-c__x-y__quick.json"


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_rejected_names_key(bad):
    with pytest.raises(ValueError, match="'AP50'"):
        _result(metrics={"AP50": bad, "AP": 0.5})


def test_nan_allowed_stored_as_null(tmp_path):
    res = _result(metrics={"AP50": float("nan"), "AP": 0.5}, allow_nan=True)
    assert res["metrics"]["AP50"] is None
    loaded = R.load_results(R.write_result(res, tmp_path))
    assert math.isnan(R.results_frame(loaded).set_index("metric").loc["AP50", "value"])


@pytest.mark.parametrize("kw", [{"metrics": {}}, {"metrics": {"a": "x"}}, {"dataset": ""},
                                {"wall_time_s": -1}, {"seed": 1.5}])
def test_invalid_fields_rejected(kw):
    with pytest.raises(BloodlibError):
        _result(**kw)


def test_load_rejects_unknown_schema(tmp_path):
    res = dict(_result(), schema_version=99)
    (tmp_path / "r.json").write_text(json.dumps(res))
    with pytest.raises(R.ResultsError, match="schema_version"):
        R.load_results(tmp_path)


def test_summaries():
    res = [_result(), _result(dataset="pbc", metrics={"AP50": 0.8}),
           _result(experiment="wcsegnet", paper="paper5", metrics={"dice": 0.91})]
    md = R.summary_markdown(res)
    assert "### mcnet" in md and "### wcsegnet" in md and "| 0.91 |" in md
    html = R.summary_html(res)
    assert html.count("<table") == 2 and "wcsegnet" in html
    assert "No results" in R.summary_markdown([]) and "No results" in R.summary_html([])


# --------------------------------------------------------------------------- reference tables

def test_every_reference_table_is_well_formed():
    ref = json.loads(R.REFERENCE_FILE.read_text(encoding="utf-8"))["papers"]
    assert set(ref) == {f"paper{i}" for i in range(1, 6)}
    for pname, paper in ref.items():
        assert paper["title"] and paper["authors"] and paper["tables"]
        for tname, spec in paper["tables"].items():
            where = f"{pname}/{tname}"
            assert spec["unit"] in R.UNITS and spec["caption"] and spec["source"], where
            keys = [c["key"] for c in spec["columns"]]
            assert len(keys) == len(set(keys)) and all(c["label"] for c in spec["columns"]), where
            assert all(c.get("unit", spec["unit"]) in R.UNITS for c in spec["columns"]), where
            descriptors = None
            for row in spec["rows"]:
                assert set(keys) <= set(row), (where, row)
                values = [row[k] for k in keys]
                assert all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)
                                         and math.isfinite(v)) for v in values), (where, row)
                assert any(v is not None for v in values), (where, row)
                desc = {k for k in row if k not in keys}
                assert descriptors in (None, desc), (where, row)  # same descriptors per row
                descriptors = desc
                assert all(isinstance(row[k], (str, type(None))) for k in desc), (where, row)
            if spec["unit"] == "fraction":  # catch a percentage typed into a fraction table
                odd = [(r, k) for r in spec["rows"] for k in keys
                       if r[k] is not None and r[k] > 1.0]
                assert odd == [] or "kept as printed" in spec.get("notes", ""), (where, odd)


def test_spot_values_match_papers():
    t = R.paper_table("paper1", "table2").set_index("model")
    assert t.loc["MCNet", "mAP50"] == 96.76 and t.loc["MCNet", "recall"] == 97.23
    t = R.paper_table("paper2", "table4").set_index("backbone")
    assert t.loc["ResNet101", "mAP50"] == 0.9139 and t.loc["ResNet101", "mAR"] == 0.953
    t = R.paper_table(5, "table1").set_index(["model", "dataset"])
    assert t.loc[("WCSegNet", "CellaVision"), "dice"] == 0.9662
    assert math.isnan(t.loc[("Fan et al. [20]", "Jiangxi"), "accuracy"])
    assert R.paper_table("paper3", "table1").attrs["unit"] == "percent"


def test_list_paper_tables():
    df = R.list_paper_tables()
    assert {"paper", "table", "caption", "unit", "rows", "metrics"} <= set(df.columns)
    assert ("paper2", "table5") in set(zip(df.paper, df.table))


def test_compare_converts_fractions_to_percent():
    out = R.compare_with_paper({"AP50": 0.95, "recall": 0.9, "AP": 0.7, "extra": 1.0},
                               "paper1", "table2", {"model": "MCNet", "dataset": "BCCD"})
    assert list(out.columns) == ["metric", "label", "paper", "ours", "difference", "unit"]
    assert list(out.metric) == ["recall", "mAP50", "mAP50_95"]  # table order
    row = out.set_index("metric").loc["mAP50"]
    assert row.ours == pytest.approx(95.0) and row.paper == 96.76
    assert row.difference == pytest.approx(95.0 - 96.76)


def test_compare_fraction_table_and_metric_map():
    out = R.compare_with_paper({"box_ap50": 0.9}, "paper2", "table4", {"backbone": "ResNet101"},
                               metric_map={"box_ap50": "mAP50"})
    assert out.ours.item() == pytest.approx(0.9) and out.paper.item() == 0.9139


def test_compare_accepts_results_frame():
    frame = R.results_frame([_result(metrics={"dice": 0.95, "mIoU": 0.9})])
    out = R.compare_with_paper(frame, "paper5", "table1", {"model": "WCSegNet", "dataset": "Jiangxi"})
    assert set(out.metric) == {"dice", "mIoU"}


def test_compare_mixed_column_needs_explicit_scale():
    with pytest.raises(ValueError, match="scale"):
        R.compare_with_paper({"AP": 0.8}, "paper1", "table1", {"model": "MCNet"})
    out = R.compare_with_paper({"AP": 0.8}, "paper1", "table1", {"model": "MCNet"}, scale=1)
    assert out.ours.item() == pytest.approx(0.8) and out.paper.item() == 0.82


def test_compare_errors_list_valid_names():
    with pytest.raises(KeyError, match="paper1"):
        R.paper_table("paper9", "table1")
    with pytest.raises(KeyError, match="table2"):
        R.paper_table("paper1", "table9")
    with pytest.raises(BloodlibError, match="MCNet"):
        R.compare_with_paper({"AP50": 0.9}, "paper1", "table2", {"model": "nope"})
    with pytest.raises(BloodlibError, match="matches 8 rows"):
        R.compare_with_paper({"AP50": 0.9}, "paper1", "table2", {})
    with pytest.raises(BloodlibError, match="mAP50"):
        R.compare_with_paper({"x": 0.9}, "paper1", "table2", {"model": "MCNet"},
                             metric_map={"x": "mAP5"})
    with pytest.raises(BloodlibError, match="metric_map"):
        R.compare_with_paper({"x": 0.9}, "paper1", "table2", {"model": "MCNet"})
    assert isinstance(R.paper_table("paper1", "table2"), pd.DataFrame)


def test_summary_lists_many_metrics_as_rows():
    from bloodlib.results import make_result, summary_markdown

    metrics = {f"m{i}": float(i) for i in range(20)}
    res = make_result("wide", "none", "synthetic", "all", metrics, {}, 0, "quick", 1.0)
    second = {**res, "extra": {"variant": "(long)"}}
    text = summary_markdown([res, second])
    assert "| field | run 1 | run 2 |" in text and "| m19 | 19 | 19 |" in text
    assert "| variant | - | (long) |" in text                # the two runs can be told apart


def test_reference_table_keeps_benchmark_runs_and_reads_minutes_from_either_place(tmp_path):
    from bloodlib.experiments import mcnet_detection as mc
    from bloodlib.results import reference_table
    variants, tmp_path = tmp_path / "variants", tmp_path / "main"
    R.write_result(R.make_result("mcnet", "paper1", "bccd", "test",
                             {"mAP50": 0.91, "train_seconds": 600.0}, {}, 0, "bench_cpu", 1.0,
                             model="mcnet"), tmp_path)
    R.write_result(R.make_result("mcnet", "paper1", "bccd", "test", {"mAP50": 0.1}, {}, 0, "quick",
                             1.0, model="faster_rcnn"), tmp_path)
    variant = R.make_result("mcnet", "paper1", "bccd", "test", {"mAP50": 0.9}, {}, 0,
                            "bench_cpu", 1.0, model="mcnet", extra={"variant": "(long)"})
    R.write_result(variant, variants)
    assert list(mc.reference_table(variants).index) == [("bench_cpu", "bccd", "mcnet (long)")]
    table = mc.reference_table(tmp_path)
    assert list(table.index) == [("bench_cpu", "bccd", "mcnet")]
    assert table.iloc[0]["mAP50"] == 0.91 and table.iloc[0]["train_min"] == 10.0
    assert reference_table("other", ["mAP50"], tmp_path).empty


def test_a_variant_run_is_written_beside_its_main_run(tmp_path):
    main = R.make_result("mcnet", "paper1", "bccd", "test", {"mAP50": 0.91}, {}, 0,
                         "bench_cpu", 1.0, model="mcnet")
    variant = R.make_result("mcnet", "paper1", "bccd", "test", {"mAP50": 0.9}, {}, 0,
                            "bench_cpu", 1.0, model="mcnet", extra={"variant": "(long run)"})
    paths = {R.write_result(r, tmp_path).name for r in (main, variant)}
    assert paths == {"mcnet__bccd__bench_cpu__mcnet.json",
                     "mcnet__bccd__bench_cpu__mcnet__long-run.json"}
    assert R.result_variant(variant) == "(long run)" and R.result_variant(main) is None


def test_pretrained_vs_scratch_pairs_the_side_by_side_runs(tmp_path):
    from bloodlib.results import make_result, pretrained_vs_scratch, write_result

    def run(pre, acc, size=96, variant=""):
        r = make_result("wbc_classification", "paper1", "pbc_paper1_80_20", "test",
                        {"accuracy": acc}, {"image_size": size}, 0, "bench_cpu", 1.0,
                        model="efficientnet_lite0",
                        extra={"pretrained_loaded": pre, "variant": variant or f"{pre} {acc}"})
        write_result(r, tmp_path)
    run(True, 0.98, variant="Lite0 ImageNet"), run(True, 0.96, variant="Lite0 ImageNet, repeat 2")
    run(False, 0.95, variant="Lite0 scratch"), run(True, 0.9, size=128)
    run(True, 0.99, variant="Lite0 ImageNet, 2 x 50 min")  # another protocol: no scratch twin
    table = pretrained_vs_scratch("wbc_classification", "accuracy", tmp_path,
                                  paper={"pbc_paper1_80_20": 0.99})
    assert len(table) == 1  # 128 px and the longer run have no scratch run
    row = table.iloc[0]
    assert row["accuracy, ImageNet"] == pytest.approx(0.97) and row["runs"] == "2 + 1"
    assert row["gain"] == pytest.approx(0.02) and row["paper"] == 0.99
    assert row["variant"] == "Lite0"
    run(False, 0.97, variant="Lite0 scratch, 2 x 50 min")
    longer = pretrained_vs_scratch("wbc_classification", "accuracy", tmp_path).set_index("variant")
    assert longer.loc["Lite0, 2 x 50 min", "gain"] == pytest.approx(0.02)
