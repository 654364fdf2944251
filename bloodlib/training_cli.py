"""``bloodlib train``: one experiment's main training outside its notebook.

It looks the experiment up in :data:`bloodlib.registry.TRAINERS` (filled by
:mod:`bloodlib.experiments.mains`), starts a session with the profile and the
``KEY=VALUE`` overrides (``--instant`` adds the experiment's two-step overrides), and
calls it. Under ``torchrun`` the session joins the process group, the training loop
trains with DistributedDataParallel and only rank 0 writes results and models.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from . import session
from .config import parse_overrides
from .engine import distributed as ddp
from .errors import SettingError
from . import experiments as _experiments  # noqa: F401  (fills TRAINERS and the profiles)
from .registry import TRAINERS

__all__ = ["train_experiment", "bench_experiment"]


def train_experiment(experiment: str, *, model: Optional[str] = None, profile: str = "full",
                     out: Any = None, overrides: Sequence[str] | Mapping[str, Any] = (),
                     instant: bool = False, store_as: Optional[str] = None,
                     resume: bool = False, seed: int = 0, device: str = "auto"
                     ) -> Optional[dict[str, float]]:
    """Train ``experiment``'s ``model`` (its default when None) with ``profile`` and
    ``overrides`` (``KEY=VALUE`` strings or a dict); returns the test metrics (rank 0
    prints them). ``instant`` shrinks the run to a few steps on a few images."""
    entry = TRAINERS.get(experiment)
    knobs = dict(entry.instant) if instant else {}
    knobs.update(overrides if isinstance(overrides, Mapping) else parse_overrides(overrides))
    out = Path(out) if out else Path("outputs") / "train" / experiment
    run = session.start(experiment, profile, device=device, seed=seed, output_dir=out,
                        resume=resume, verbose=not instant, **knobs)
    model = model or (run.knobs[entry.model_knob] if entry.model_knob else entry.default_model)
    if model not in entry.models:
        raise SettingError(f"{experiment} has no model {model!r}; choose one of {entry.models}.")
    t0, main = time.perf_counter(), ddp.is_main()
    try:
        metrics = dict(entry.fn(run, model, store_as if main else None))
    finally:
        ddp.shutdown()
    if main:
        shown = {k: round(v, 4) for k, v in metrics.items() if "/" not in k}
        print(f"{experiment} {model} ({profile}{', instant' if instant else ''}): {shown}")
        print(f"{time.perf_counter() - t0:.0f} s; results in {run.results_dir}")
    return metrics


def variant_slug(variant: str) -> str:
    """A variant label as a file-name part: ``"Lite0 ImageNet"`` -> ``"Lite0-ImageNet"``."""
    return re.sub(r"[^A-Za-z0-9.]+", "-", variant).strip("-") or "variant"


def bench_experiment(experiment: str, *, model: Optional[str] = None, budget_s: Optional[float] = None,
                     overrides: Sequence[str] | Mapping[str, Any] = (), profile: str = "bench_cpu",
                     threads: Optional[int] = None, variant: str = "", out: Any = None,
                     reference_dir: Any = None, store_as: Optional[str] = None,
                     resume: bool = False, seed: int = 0, publish: bool = True
                     ) -> Optional[dict[str, float]]:
    """``bloodlib bench EXPERIMENT``: :func:`train_experiment` in a benchmark profile with
    a wall-time budget (``budget_s``, mapped onto the experiment's budget knobs) and
    ``threads`` torch threads; the results JSON gains ``variant`` (runs beside the main one
    on the board) and is published to ``reference_dir`` (``results/reference``) with the
    command that made it, and the board is rebuilt."""
    import json

    import torch

    from .notebooks import publish_reference, write_reference_board
    from .paths import PROJECT_ROOT, REFERENCE_DIR
    entry = TRAINERS.get(experiment)
    knobs = dict(entry.budget(float(budget_s))) if budget_s is not None else {}
    knobs.update(overrides if isinstance(overrides, Mapping) else parse_overrides(overrides))
    if threads:
        torch.set_num_threads(int(threads))
    out = Path(out) if out else PROJECT_ROOT / "outputs" / "bench" / experiment / (model or "main")
    for old in (out / "results").glob("*.json"):  # publish this run's results only
        old.unlink()
    metrics = train_experiment(experiment, model=model, profile=profile, out=out,
                               overrides=knobs, store_as=store_as, resume=resume, seed=seed)
    if not ddp.is_main():
        return metrics
    for path in (out / "results").glob("*.json"):
        data = json.loads(path.read_text())
        data.setdefault("extra", {}).update(
            {"torch_threads": torch.get_num_threads(), **({"variant": variant} if variant else {})})
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        if variant:  # beside the main run, not over it
            path.rename(path.with_name(f"{path.stem}__{variant_slug(variant)}.json"))
    if publish:
        reference = Path(reference_dir) if reference_dir else REFERENCE_DIR
        for path in publish_reference(out, reference, runner="bloodlib bench"):
            print(f"reference result: {path}")
        write_reference_board(reference)
    return metrics
