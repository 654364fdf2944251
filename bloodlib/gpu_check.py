"""The GPU check: how fast each ``full`` model trains on this machine, and what that means
for the notebooks' ``full`` runs.

For every experiment in :data:`bloodlib.registry.TRAINERS` it trains the ``full``
profile's main model (AMP on, as the profile sets it) on the instant run's handful of
images for about ``seconds``, then records steps/s (from the median step time, so
start-up and validation do not count), images/s, the peak GPU memory and the projected
wall time of the notebook's ``full`` run (its planned optimisation steps at that rate;
YOLO's epochs are not counted). When a model manages a single step, the step time is the
run's mean. The rows go into one results JSON::

    scripts/gpu_check.sh                  # about 5 minutes on one GPU
    python -m bloodlib.gpu_check --seconds 5 --device cpu --experiments wcsegnet
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from .config import get_profile
from .engine.loop import RUN_LISTENERS, TrainLoop
from .registry import TRAINERS
from .runtime import environment_info
from .training_cli import train_experiment

__all__ = ["check_experiment", "run_gpu_check", "main"]


def _step_seconds(loop: TrainLoop) -> list[float]:
    """Durations of this run's steps that followed another step of the same epoch."""
    rows = loop.state.rows[-loop.steps_this_run:] if loop.steps_this_run else []
    return [b["seconds"] - a["seconds"] for a, b in zip(rows, rows[1:])
            if a["epoch"] == b["epoch"]]


def check_experiment(experiment: str, seconds: float, device: str, work_dir: Path
                     ) -> dict[str, Any]:
    """One row of the GPU check (see the module docstring)."""
    entry = TRAINERS.get(experiment)
    loops: list[TrainLoop] = []
    RUN_LISTENERS.append(loops.append)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    try:
        train_experiment(experiment, profile="full", instant=True, out=work_dir / experiment,
                         overrides=dict(entry.timed(seconds)), device=device)
    except Exception as exc:  # one failing experiment must not cost the others
        return {"experiment": experiment, "model": entry.default_model,
                "error": f"{type(exc).__name__}: {exc}"}
    finally:
        RUN_LISTENERS.remove(loops.append)
    loop = max(loops, key=lambda lp: lp.steps_this_run)  # the main training, not a side one
    durations = _step_seconds(loop)
    step_s = (statistics.median(durations) if durations  # else the run's mean (1 step)
              else loop.state.seconds / max(loop.steps_this_run, 1))
    per_step = loop.state.images / max(loop.state.step, 1)
    planned = int(entry.planned_steps(get_profile(experiment, "full")))
    return {"experiment": experiment, "model": entry.default_model,
            "steps": loop.steps_this_run, "steps_per_s": 1 / step_s,
            "images_per_s": per_step / step_s, "amp": str(loop.plan.amp_dtype),
            "peak_gpu_memory_mb": (torch.cuda.max_memory_allocated() / 2**20
                                   if torch.cuda.is_available() else None),
            "wall_s": time.perf_counter() - t0, "planned_steps": planned,
            "projected_full_hours": planned * step_s / 3600}


def run_gpu_check(seconds: float = 30.0, out: Any = "results/gpu_check",
                  experiments: Optional[Sequence[str]] = None, device: str = "auto") -> Path:
    """Check every experiment (or ``experiments``); write and return the results JSON."""
    names = list(experiments or TRAINERS.names())
    with tempfile.TemporaryDirectory() as tmp:
        rows = [check_experiment(name, seconds, device, Path(tmp)) for name in names]
    info = environment_info(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    result = {"kind": "gpu_check", "seconds_per_model": seconds,
              "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
              "environment": info, "rows": rows,
              "written": time.strftime("%Y-%m-%dT%H:%M:%S")}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"gpu_check_{result['device'].replace(' ', '_')}.json"
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return path


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bloodlib.gpu_check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0, help="training time per model")
    parser.add_argument("--out", default="results/gpu_check")
    parser.add_argument("--experiments", nargs="*", help="default: all")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    path = run_gpu_check(args.seconds, args.out, args.experiments, args.device)
    for row in json.loads(path.read_text())["rows"]:
        if "error" in row:
            print(f"{row['experiment']:20s} FAILED {row['error']}")
        else:
            print(f"{row['experiment']:20s} {row['steps_per_s']:7.2f} steps/s "
                  f"{row['images_per_s']:8.1f} img/s peak {row['peak_gpu_memory_mb'] or 0:8.0f} MB"
                  f" | full run ~{row['projected_full_hours']:.1f} h")
    print(f"written: {path}")
    return 0 if all("error" not in r for r in json.loads(path.read_text())["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
