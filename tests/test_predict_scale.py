"""Prediction at scale: batches equal single images, resume after a kill, shards merged
equal one run, torchrun, thread defaults, ONNX parity."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bloodlib.cli import main
from bloodlib.errors import BloodlibError
from bloodlib.inference import folder as folder_mod
from bloodlib.inference.folder import collect_inputs, parse_shard, shard_files
from bloodlib.inference.store import load_predictor
from bloodlib.inference.batch import predict_files
from stub_predictors import (StubClassifier, StubDetector, png_bytes, smear,
                             store_tiny_classifier, store_tiny_detector)

HERE = Path(__file__).parent


@pytest.fixture
def many(tmp_path):
    """24 smears of two sizes in two sub-folders, plus a corrupt file and a text file."""
    d = tmp_path / "images"
    for i in range(24):
        sub = d / ("a" if i % 2 else "b")
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(smear(i, 96 if i % 3 else 80, 128)).save(sub / f"img_{i:02d}.png")
    (d / "a" / "corrupt.png").write_bytes(png_bytes(smear(99))[:200])
    (d / "b" / "readme.txt").write_text("not an image")
    return d


def _frame(folder: Path, name: str) -> pd.DataFrame:
    df = pd.read_csv(folder / name)
    keys = [c for c in ("image", "cell", "class") if c in df.columns]
    return df.sort_values(keys, ignore_index=True)


def test_batches_give_the_same_predictions_as_single_images(store, many, tmp_path):
    store_tiny_classifier(store)
    files, _ = collect_inputs([many])
    clf = load_predictor("tiny-cls")
    one = predict_files(files, clf, tmp_path / "one", batch_size=1, overlays=False,
                        progress=False, tta="none")
    batched = predict_files(files, clf, tmp_path / "many", batch_size=8, workers=2,
                            overlays=False, progress=False, tta="none")
    a, b = _frame(tmp_path / "one", "classifications.csv"), _frame(tmp_path / "many",
                                                                    "classifications.csv")
    assert len(a) == 24 and a["label"].tolist() == b["label"].tolist()
    p = [c for c in a.columns if c.startswith("p_")]
    np.testing.assert_allclose(a[p].to_numpy(), b[p].to_numpy(), atol=1e-5)
    assert len(one.skipped) == len(batched.skipped) == 2


def test_detector_batches_match_single_images(store, many, tmp_path):
    store_tiny_detector(store)
    det = load_predictor("tiny-det")
    images = [smear(i) for i in range(3)]
    singles = [det.predict(im, 0.05) for im in images]
    for s, b in zip(singles, det.predict_batch(images, 0.05)):
        assert s.labels == b.labels
        np.testing.assert_allclose(s.boxes, b.boxes, atol=1e-3)


def test_a_bad_image_inside_a_batch_costs_no_other(many, tmp_path):
    class Fussy(StubDetector):
        def predict_batch(self, images, **kw):
            if any(im.shape[0] == 80 for im in images):
                raise RuntimeError("model failed on an 80-px image")
            return [self.predict(im, **kw) for im in images]
    files, _ = collect_inputs([many])
    rep = predict_files(files, Fussy(), tmp_path / "out", batch_size=8, overlays=False,
                        progress=False)
    failed = [p for p, r in rep.skipped if "80-px" in r]
    assert len(failed) == 8 and len(rep.processed) == 16  # every 3rd image is 80 px high


def test_rows_are_written_batch_by_batch_and_resume_after_a_kill(many, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(HERE)}
    proc = subprocess.Popen([sys.executable, str(HERE / "predict_kill_worker.py"), str(many),
                             str(out)], env=env)
    counts = out / "counts.csv"
    deadline = time.time() + 60
    while time.time() < deadline and (not counts.is_file()
                                      or len(counts.read_text().splitlines()) < 7):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(pd.read_csv(counts))
    assert 6 <= done_before < 24, "the kill should land mid-run"
    with counts.open("a") as f:  # a half-written line, as a kill during a write leaves
        f.write(str(many / "a" / "img_99.png") + ",1,")
    subprocess.run([sys.executable, str(HERE / "predict_kill_worker.py"), str(many), str(out),
                    "--resume"], env=env, check=True)
    clean = tmp_path / "clean"
    files, _ = collect_inputs([many])
    predict_files(files, StubDetector(), clean, overlays=False, progress=False)
    for name in ("detections.csv", "counts.csv", "skipped.csv"):
        pd.testing.assert_frame_equal(_frame(out, name), _frame(clean, name))
    import json
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed"] >= done_before and summary["processed"] == 24


def test_resume_with_another_model_is_refused(many, tmp_path):
    files, _ = collect_inputs([many])
    predict_files(files[:3], StubDetector(), tmp_path / "out", progress=False)
    with pytest.raises(BloodlibError, match="same model and task"):
        predict_files(files, StubDetector(), tmp_path / "out", progress=False, resume=True,
                      classifier=StubClassifier())


def test_two_shards_merged_equal_one_run(store, many, tmp_path, capsys):
    store_tiny_classifier(store)
    common = ["--task", "classify", "--model", "tiny-cls", "--quiet", "--workers", "0"]
    assert main(["predict", str(many), "--out", str(tmp_path / "one"), *common]) == 0
    for part in ("0/2", "1/2"):
        assert main(["predict", str(many), "--out", str(tmp_path / "two"), "--shard", part,
                     *common]) == 0
    assert main(["predict", "--merge", "--out", str(tmp_path / "two"), "--task",
                 "classify"]) == 0
    for name in ("classifications.csv", "counts.csv", "skipped.csv"):
        pd.testing.assert_frame_equal(_frame(tmp_path / "one", name),
                                      _frame(tmp_path / "two", name))
    assert "merged 2 shards" in capsys.readouterr().out


def test_merge_names_missing_shards(store, many, tmp_path, capsys):
    store_tiny_classifier(store)
    main(["predict", str(many), "--out", str(tmp_path / "o"), "--shard", "1/3", "--task",
          "classify", "--model", "tiny-cls", "--quiet"])
    assert main(["predict", "--merge", "--out", str(tmp_path / "o"), "--task", "classify"]) == 2
    assert "shards [0, 2] missing" in capsys.readouterr().err


def test_shards_are_disjoint_and_cover_everything():
    files = [Path(f"f{i}") for i in range(11)]
    parts = [shard_files(files, i, 3) for i in range(3)]
    assert sorted(sum(parts, []), key=str) == sorted(files, key=str)
    assert parse_shard("2/3") == (2, 3)
    for bad in ("3/3", "x", "1/0", "-1/2"):
        with pytest.raises(BloodlibError, match="--shard"):
            parse_shard(bad)


def test_torchrun_two_processes_write_the_merged_outputs(store, many, tmp_path):
    store_tiny_classifier(store)
    out = tmp_path / "ddp"
    env = {**os.environ, "BLOODLIB_MODELS": str(store), "OMP_NUM_THREADS": "1"}
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node",
                           "2", "--master-port", str(port), "-m", "bloodlib", "predict", str(many),
                           "--task", "classify", "--model", "tiny-cls", "--out", str(out),
                           "--quiet", "--workers", "0", "--threads", "1"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["0-of-2", "1-of-2"]
    table = pd.read_csv(out / "classifications.csv")
    assert len(table) == 24 and table["image"].is_unique
    assert len(pd.read_csv(out / "skipped.csv")) == 2


def test_default_threads_leave_the_busy_cores_alone(monkeypatch):
    assert folder_mod.busy_cpus(samples=2, interval_s=0.0) >= 0
    monkeypatch.setattr(folder_mod, "usable_cpus", lambda: 2)
    monkeypatch.setattr(folder_mod, "busy_cpus", lambda: 1.0)
    assert folder_mod.default_threads() == 1
    monkeypatch.setattr(folder_mod, "busy_cpus", lambda: 0.0)
    assert folder_mod.default_threads() == 2
    monkeypatch.setattr(folder_mod, "busy_cpus", lambda: 5.0)
    assert folder_mod.default_threads() == 1


def test_folders_get_no_overlays_and_no_tta_unless_asked(store, many, tmp_path):
    store_tiny_classifier(store)
    out = tmp_path / "out"
    assert main(["predict", str(many), "--task", "classify", "--model", "tiny-cls",
                 "--out", str(out), "--quiet"]) == 0
    assert not list((out / "overlays").glob("*.png")) if (out / "overlays").exists() else True
    import json
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["tta"] == "none" and summary["overlays_written"] == 0
    assert main(["predict", str(many), "--task", "classify", "--model", "tiny-cls",
                 "--out", str(tmp_path / "o2"), "--quiet", "--overlays", "5"]) == 0
    assert len(list((tmp_path / "o2" / "overlays").glob("*.png"))) == 5


@pytest.mark.parametrize("maker", [store_tiny_classifier, store_tiny_detector, "segment"])
def test_onnx_export_matches_pytorch_on_smears(store, tmp_path, maker):
    from bloodlib.inference.benchmark import smear_images
    from bloodlib.inference.onnx_export import TOLERANCE, onnx_meta, parity
    name = "tiny-seg" if maker == "segment" else maker(store).stem
    assert main(["export", name, "--format", "onnx"]) == 0
    onnx_file = store / f"{name}.onnx"
    assert onnx_meta(onnx_file)["classes"] == load_predictor(name).classes
    images = [im for _, im in smear_images(3)[0]]  # BCCD test smears when present
    diffs = parity(load_predictor(name), load_predictor(name, runtime="onnxruntime"), images)
    for key, tol in TOLERANCE.items():
        assert diffs.get(key, 0.0) <= tol, diffs
    assert diffs.get("same_labels", 1.0) == 1.0 and diffs.get("same_counts", 1.0) == 1.0


def test_predict_runs_with_onnxruntime(store, many, tmp_path):
    store_tiny_classifier(store)
    for runtime in ("torch", "onnxruntime"):
        assert main(["predict", str(many), "--task", "classify", "--model", "tiny-cls",
                     "--out", str(tmp_path / runtime), "--quiet", "--runtime", runtime]) == 0
    a, b = (_frame(tmp_path / r, "classifications.csv") for r in ("torch", "onnxruntime"))
    assert a["label"].tolist() == b["label"].tolist()


def test_yolo_export_points_to_ultralytics():
    from bloodlib.inference.onnx_export import _example

    class Yolo:
        task, architecture = "detect", "yolo"
    with pytest.raises(BloodlibError, match="ultralytics"):
        _example(Yolo())


@pytest.mark.realdata
def test_scale_benchmark_runs_and_writes_its_results(data_root, store, tmp_path, capsys):
    """``bloodlib bench predict`` in the quick profile with tiny models: every part runs
    and the results JSON holds the figures (the numbers themselves are for bench_cpu)."""
    import json
    store_tiny_classifier(store)
    store_tiny_detector(store)
    assert main(["bench", "predict", "--profile", "quick", "--classifier", "tiny-cls",
                 "--detector", "tiny-det", "--out", str(tmp_path / "out"),
                 "--reference-dir", str(tmp_path / "ref")]) == 0
    result = json.loads(next((tmp_path / "ref").glob("predict_scale__*.json")).read_text())
    m = result["metrics"]
    assert m["classify_identical_labels"] == 1.0 and m["classify_new_images_per_s"] > 0
    assert m["peak_rss_mb_10n"] > 0 and m["latency_onnxruntime_mean_ms"] > 0
    assert result["run"]["runner"] == "bloodlib bench predict"


def test_resuming_a_finished_run_predicts_nothing_and_succeeds(store, many, tmp_path, capsys):
    store_tiny_classifier(store)
    args = ["predict", str(many), "--task", "classify", "--model", "tiny-cls", "--out",
            str(tmp_path / "out"), "--quiet", "--workers", "0"]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args + ["--resume"]) == 0
    assert "0 image(s) processed, 0 skipped (26 done by an earlier run)" in capsys.readouterr().out
    assert len(pd.read_csv(tmp_path / "out" / "classifications.csv")) == 24
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.png").write_bytes(b"nope")
    bad_args = ["predict", str(bad), "--task", "classify", "--model", "tiny-cls", "--out",
                str(tmp_path / "o2"), "--quiet"]
    assert main(bad_args) == 1 and main(bad_args + ["--resume"]) == 1
