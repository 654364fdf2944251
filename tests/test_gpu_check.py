"""Issue 25: the GPU check script's code path, run on the CPU for a second per model."""

from __future__ import annotations

import json
import math


def test_gpu_check_writes_rates_memory_and_projections(tmp_path, monkeypatch):
    from bloodlib import gpu_check
    path = gpu_check.run_gpu_check(seconds=1, out=tmp_path, experiments=["wcsegnet"],
                                   device="cpu")
    [row] = json.loads(path.read_text())["rows"]
    assert row["experiment"] == "wcsegnet" and row["steps"] >= 1
    assert math.isfinite(row["steps_per_s"]) and row["steps_per_s"] > 0
    assert row["planned_steps"] > 1000 and row["projected_full_hours"] > 0
    assert not gpu_check.RUN_LISTENERS  # the listener is removed again


def test_a_failing_experiment_is_reported_not_fatal(tmp_path, monkeypatch):
    from bloodlib import gpu_check

    def boom(*a, **kw):
        raise RuntimeError("CUDA out of memory")
    monkeypatch.setattr(gpu_check, "train_experiment", boom)
    path = gpu_check.run_gpu_check(seconds=1, out=tmp_path, experiments=["wcsegnet"],
                                   device="cpu")
    assert "out of memory" in json.loads(path.read_text())["rows"][0]["error"]
