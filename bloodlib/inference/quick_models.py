"""Quick models: a small model per task, trained in about a minute on a CPU, so that the
demo and ``bloodlib predict`` work before any notebook has trained a real one.

Quick models are *not* the papers' models: they train for seconds on a small subset (or
on synthetic data when the datasets are absent), and their metadata says so
(``training_data["profile"] == "quick-model"``).

A quick model trains for a fixed number of steps (epochs for the segmenter and the
classifier, iterations for the detector), never "until the clock runs out", so the same
seed gives the same model on any machine. ``time_budget_s`` is turned into that count
with the rate measured on a 2-core CPU (``SECONDS_PER_STEP``); a slower machine takes
longer but trains the same model.

Adding a task is one function: decorate ``f(work_dir, seed, steps) -> (model, meta)``
with ``@quick_trainer("task", seconds_per_step)``; ``meta`` follows the model-store
contract. The experiments plug in by exposing ``quick_model(work_dir, seed, steps) ->
(model, meta)`` (``wbc_segmentation``, ``wbc_classification``, ``mcnet_detection``); they
are looked up by name when a quick model is asked for, so this module imports nothing
above the inference layer.
"""

from __future__ import annotations

import importlib
import importlib.util
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from ..errors import BloodlibError
from .store import PathLike, save_model

QuickTrainer = Callable[[Path, int, int], tuple[torch.nn.Module, dict[str, Any]]]
QUICK_TRAINERS: dict[str, QuickTrainer] = {}
#: seconds per step (epoch or iteration, evaluation included) measured on a 2-core CPU
SECONDS_PER_STEP: dict[str, float] = {}
QUICK_PROFILE = "quick-model"


def quick_trainer(task: str, seconds_per_step: float) -> Callable[[QuickTrainer], QuickTrainer]:
    """Register ``f(work_dir, seed, steps) -> (model, meta)`` for ``task``."""
    def register(fn: QuickTrainer) -> QuickTrainer:
        QUICK_TRAINERS[task] = fn
        SECONDS_PER_STEP[task] = float(seconds_per_step)
        return fn
    return register


def quick_steps(task: str, time_budget_s: float) -> int:
    """The step count that takes about ``time_budget_s`` seconds on a 2-core CPU."""
    return max(1, round(0.85 * float(time_budget_s) / SECONDS_PER_STEP[task]))


def quick_model_tasks() -> list[str]:
    """Tasks with a quick trainer registered (whether or not it can run here)."""
    return sorted(QUICK_TRAINERS)


def train_quick_model(task: str, folder: Optional[PathLike] = None, *, name: Optional[str] = None,
                      seed: int = 0, time_budget_s: float = 45.0, steps: Optional[int] = None,
                      overwrite: bool = True) -> Path:
    """Train a quick model for ``task`` for ``steps`` steps (default: as many as take about
    ``time_budget_s`` on a 2-core CPU) and save it in the store (``folder`` or the
    default store) as ``name`` (default ``quick-<task>``); returns the checkpoint path.
    The same seed and step count give the same model."""
    if task not in QUICK_TRAINERS:
        raise BloodlibError(f"No quick model for task {task!r}; tasks: {quick_model_tasks()}.")
    steps = int(steps) if steps is not None else quick_steps(task, time_budget_s)
    with tempfile.TemporaryDirectory(prefix=f"bloodlib-quick-{task}-") as tmp:
        model, meta = QUICK_TRAINERS[task](Path(tmp), int(seed), steps)
    meta = dict(meta)
    data = meta.get("training_data")
    meta["training_data"] = dict(data if isinstance(data, dict) else {"dataset": str(data)},
                                 profile=QUICK_PROFILE, seed=int(seed), steps=steps)
    return save_model(model.cpu(), name or f"quick-{task}", meta, folder=folder,
                      overwrite=overwrite)


# ----------------------------------------------------------------------------- segment
@quick_trainer("segment", seconds_per_step=1.8)
def _quick_segmenter(work_dir: Path, seed: int, steps: int):
    """The WBC segmentation experiment's quick model (WCSegNet, ``steps`` epochs)."""
    return _from_experiment("bloodlib.experiments.wbc_segmentation", "segment",
                            work_dir, seed, steps)


# ----------------------------------------------------------------------------- classify, detect
def _from_experiment(module_name: str, task: str, work_dir: Path, seed: int, steps: int):
    """Call ``<module>.quick_model(work_dir, seed, steps)`` when that module exists."""
    if importlib.util.find_spec(module_name) is None:
        raise BloodlibError(f"No quick {task!r} model yet: {module_name} is not part of this "
                            "version of bloodlib. Train a model in its notebook and save it "
                            "with bloodlib.inference.save_model, or update bloodlib.")
    module = importlib.import_module(module_name)
    if not hasattr(module, "quick_model"):
        raise BloodlibError(f"No quick {task!r} model yet: {module_name} has no "
                            "quick_model(work_dir, seed, steps) function.")
    return module.quick_model(work_dir, seed, steps)


@quick_trainer("classify", seconds_per_step=4.1)
def _quick_classifier(work_dir: Path, seed: int, steps: int):
    """The WBC-type classification experiment's quick model (``steps`` epochs)."""
    return _from_experiment("bloodlib.experiments.wbc_classification", "classify",
                            work_dir, seed, steps)


@quick_trainer("detect", seconds_per_step=0.5)
def _quick_detector(work_dir: Path, seed: int, steps: int):
    """The blood-cell detection experiment's quick model (``steps`` iterations)."""
    return _from_experiment("bloodlib.experiments.mcnet_detection", "detect",
                            work_dir, seed, steps)
