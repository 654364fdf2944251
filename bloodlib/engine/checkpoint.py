"""Checkpoints that load with ``torch.load(..., weights_only=True)``.

A checkpoint is a plain dict of tensors and JSON-able primitives::

    {"format": 1, "model_state": ..., "meta": {...}, "epoch": int | None,
     "optimizer_state": ... | None, "scheduler_state": ... | None, "history": [...],
     "extra": {...}}

``meta`` describes how to use the weights (classes, input size, preprocessing, model
name and kwargs); it is checked to be JSON-able when saving, so a checkpoint never
needs pickled Python objects to load.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np
import torch
from torch import nn

__all__ = ["save_checkpoint", "load_checkpoint", "jsonable", "Checkpoints", "resolve_resume"]

FORMAT_VERSION = 1


def _default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (np.generic,)):
        return obj.item()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if isinstance(obj, torch.Size):
        return list(obj)
    raise TypeError(f"Checkpoint metadata must be JSON-able; {type(obj).__name__} "
                    f"({obj!r:.60}) is not. Store names/numbers/lists instead.")


def jsonable(value: Any) -> Any:
    """``value`` as JSON primitives (tuples -> lists, Paths -> str); TypeError otherwise."""
    return json.loads(json.dumps(value, default=_default))


def _unwrap(model: nn.Module) -> nn.Module:
    """The module inside DataParallel / DistributedDataParallel / torch.compile wrappers."""
    model = getattr(model, "_orig_mod", model)
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        return model.module
    return model


def save_checkpoint(path: str | Path, model: nn.Module | Mapping[str, torch.Tensor],
                    meta: Optional[Mapping[str, Any]] = None,
                    optimizer: Optional[torch.optim.Optimizer] = None,
                    epoch: Optional[int] = None, *, scheduler: Any = None,
                    history: Optional[list[dict]] = None,
                    extra: Optional[Mapping[str, Any]] = None,
                    rng: Optional[Mapping[str, Any]] = None,
                    states: Optional[Mapping[str, Any]] = None) -> Path:
    """Write model (a module, or its ``state_dict``) and optionally optimizer/scheduler
    state, epoch, history, the random-number state (``rng``, for an exact resume) and
    further state dicts (``states``, e.g. a GAN's second optimizer) to ``path``.

    The file is written to a temporary name and renamed, so an interrupted save never
    leaves a truncated checkpoint behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT_VERSION,
        "model_state": dict(model) if isinstance(model, Mapping) else _unwrap(model).state_dict(),
        "meta": jsonable(dict(meta or {})),
        "epoch": None if epoch is None else int(epoch),
        "optimizer_state": optimizer.state_dict() if optimizer is not None else None,
        "scheduler_state": scheduler.state_dict() if scheduler is not None else None,
        "history": jsonable(list(history or [])),
        "extra": jsonable(dict(extra or {})),
    }
    if rng is not None:  # tensors and numbers from bloodlib.engine.rng.rng_state
        payload["rng_state"] = dict(rng)
    if states is not None:  # further state dicts (a second optimizer ...)
        payload["states"] = dict(states)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path, model: Optional[nn.Module] = None,
                    map_location: Any = "cpu", *,
                    optimizer: Optional[torch.optim.Optimizer] = None,
                    scheduler: Any = None, strict: bool = True) -> dict[str, Any]:
    """Read a checkpoint (``weights_only=True``); load its states into the given objects.

    Returns the checkpoint dict (``meta``, ``epoch``, ``history``, states ...).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint at {path}; train first or fix the path.")
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(ckpt, dict) or "model_state" not in ckpt:
        raise ValueError(f"{path} is not a bloodlib checkpoint (no 'model_state').")
    if model is not None:
        _unwrap(model).load_state_dict(ckpt["model_state"], strict=strict)
    if optimizer is not None and ckpt.get("optimizer_state") is not None:
        optimizer.load_state_dict(ckpt["optimizer_state"])
    if scheduler is not None and ckpt.get("scheduler_state") is not None:
        scheduler.load_state_dict(ckpt["scheduler_state"])
    return ckpt


@dataclass(frozen=True)
class Checkpoints:
    """Where a notebook's or benchmark's trainings keep their checkpoints (``folder``, set by
    :func:`bloodlib.session.start`; None: no checkpoints) and whether to ``resume`` them."""

    folder: Optional[Path] = None
    resume: bool = False

    @classmethod
    def from_knobs(cls, knobs: Mapping[str, Any]) -> "Checkpoints":
        """The plan a run's flat knobs carry (``checkpoint_dir``, ``resume``)."""
        folder = knobs.get("checkpoint_dir")
        return cls(Path(folder) if folder else None, bool(knobs.get("resume")))

    def for_label(self, label: str) -> tuple[Optional[Path], Optional[str]]:
        """``(<folder>/<label>.pt, "auto" when resuming)``; ``(None, None)`` without a
        folder."""
        if self.folder is None:
            return None, None
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in label)
        return self.folder / f"{safe}.pt", ("auto" if self.resume else None)


def resolve_resume(resume_from: Any, latest: Optional[Path]) -> Optional[Path]:
    """The checkpoint to resume from: a path as given, or for ``"auto"`` / True the
    ``latest`` checkpoint when it exists (None: start from scratch)."""
    if resume_from in (None, False):
        return None
    if resume_from in ("auto", True):
        if latest is not None and latest.is_file():
            print(f"resuming from {latest}")
            return latest
        return None
    path = Path(resume_from)
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint at {path} to resume from; give the "
                                "'*_last.pt' file of an earlier run, or 'auto'.")
    return path
