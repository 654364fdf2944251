"""The same start and end for every notebook.

```python
run = bloodlib.session.start("wcsegnet", profile=PROFILE, device=DEVICE, seed=SEED,
                             output_dir=OUTPUT_DIR, data_dir=DATA_DIR)
...
run.save_figure(fig, "training_curves")
run.finish(paper="paper5", dataset="jiangxi", split="test", metrics={...})
```
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping, Optional

import torch

from . import config, runtime
from .engine import distributed as ddp
from .engine.checkpoint import Checkpoints
from .results import make_result, result_filename, write_result


@dataclass
class NotebookRun:
    """State of one notebook run: knobs, device, seed, output folders, timer."""

    experiment: str
    profile: str
    knobs: Mapping[str, Any]
    device: torch.device
    seed: int
    output_dir: Path
    started: float = field(default_factory=time.perf_counter)
    figures: list[Path] = field(default_factory=list)
    results: list[Path] = field(default_factory=list)

    @cached_property
    def settings(self) -> Any:
        """The knobs as the experiment's typed settings (``run.settings.yolo.epochs``),
        built once."""
        return config.typed(self.experiment, self.knobs)

    @cached_property
    def checkpoints(self) -> Checkpoints:
        """Where this run's trainings keep checkpoints, and whether ``resume`` continues
        them."""
        return Checkpoints.from_knobs(self.knobs)

    @property
    def figure_dir(self) -> Path:
        return self.output_dir / "figures" / self.experiment

    @property
    def results_dir(self) -> Path:
        return self.output_dir / "results"

    @property
    def elapsed_s(self) -> float:
        return time.perf_counter() - self.started

    def save_figure(self, fig: Any, name: str, dpi: int = 110) -> Path:
        """Save a matplotlib figure as PNG under ``figures/<experiment>/`` and return its path."""
        self.figure_dir.mkdir(parents=True, exist_ok=True)
        path = self.figure_dir / f"{name}.png"
        fig.savefig(path, dpi=dpi, bbox_inches="tight")
        self.figures.append(path)
        return path

    def finish(self, *, paper: str, dataset: str, split: str, metrics: Mapping[str, float],
               experiment: Optional[str] = None, config: Optional[Mapping[str, Any]] = None,
               notes: str = "", model: Optional[str] = None,
               extra: Optional[Mapping[str, Any]] = None) -> Path:
        """Write a results JSON for this run (one call per result table row group); under
        torchrun only rank 0 writes (the others return the path it writes)."""
        cfg = {k: v for k, v in self.knobs.items() if k != "checkpoint_dir"}  # a local path
        cfg.update(config or {})
        result = make_result(experiment or self.experiment, paper, dataset, split,
                             {k: float(v) for k, v in metrics.items()}, cfg, self.seed,
                             self.profile, round(self.elapsed_s, 2), device=str(self.device),
                             notes=notes, model=model, extra=dict(extra or {}))
        if not ddp.is_main():
            return self.results_dir / result_filename(result)
        path = write_result(result, self.results_dir)
        self.results.append(path)
        return path


def start(experiment: str, profile: str = "quick", device: str = "auto", seed: int = 0,
          output_dir: str | os.PathLike = "outputs/interactive",
          data_dir: str | os.PathLike | None = None, verbose: bool = True,
          resume: bool = False, **overrides: Any) -> NotebookRun:
    """Seed, choose the device, resolve the profile's knobs and prepare output folders.

    ``data_dir`` (when given) sets ``BLOODLIB_DATA`` for this process so every loader
    finds the datasets there. Trainings keep checkpoints in
    ``<output_dir>/checkpoints/<experiment>/`` (``knobs["checkpoint_dir"]``); with
    ``resume`` (a notebook's ``RESUME`` parameter) each continues its checkpoint there,
    so a run that was interrupted picks up where it stopped. Under torchrun it joins the
    process group and each rank takes its own GPU.
    """
    knobs = config.get_profile(experiment, profile, **overrides)
    if data_dir:
        os.environ["BLOODLIB_DATA"] = str(Path(data_dir).expanduser().resolve())
    runtime.seed_everything(seed)
    dev = ddp.local_device(device) if ddp.init_from_env() else runtime.get_device(device)
    out = Path(output_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    knobs = MappingProxyType({**knobs, "checkpoint_dir": str(out / "checkpoints" / experiment),
                              "resume": bool(resume)})
    run = NotebookRun(experiment, profile, knobs, dev, seed, out)
    if verbose and ddp.is_main():
        info = runtime.environment_info(dev)
        versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items())
        print(f"experiment={experiment} profile={profile} device={dev} seed={seed}")
        print(f"cpu={info['cpu_model'] or '?'} ({info['cpu_capability']}, native bf16: "
              f"{'yes' if info['cpu_bf16'] else 'no'})")
        print(f"cpus={info['cpu_count']} torch threads={info['torch_threads']} "
              f"memory={info['memory_gb']} GiB")
        print(f"versions: {versions}")
        print(f"outputs -> {out}" + (" (resuming interrupted trainings)" if resume else ""))
    return run


def pop_flag(argv: list[str], flag: str = "--resume") -> bool:
    """Remove ``flag`` from a script's ``argv`` (in place); True when it was there. The
    benchmark scripts take ``--resume`` this way and pass it to :func:`start`."""
    found = flag in argv
    argv[:] = [a for a in argv if a != flag]
    return found
