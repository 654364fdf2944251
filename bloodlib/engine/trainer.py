"""Supervised training by epochs (segmentation and classification) and its evaluation.

:func:`fit` runs the one training loop (:class:`bloodlib.engine.loop.TrainLoop`) with a
:class:`~bloodlib.engine.loop.SupervisedStep` and an end-of-epoch hook
(:class:`EpochValidation`): it validates after each epoch, keeps the best checkpoint (by
``monitor``), stops early or on a time budget, and can resume. Batches are
``(inputs, targets)`` pairs (or dicts with ``image`` and ``mask``/``label``). On CUDA it
uses autocast (bf16 where supported, else fp16 with a GradScaler) and channels-last
memory; on CPU/MPS it runs plain float32.
"""

from __future__ import annotations

import math
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import torch
from torch import nn

from ..metrics.segmentation import SegmentationMeter
from ..runtime import get_device
from . import distributed as ddp
from .checkpoint import _unwrap, load_checkpoint, resolve_resume, save_checkpoint
from .device import amp_dtype as resolve_amp_dtype, device_plan
from .loop import (CheckpointHook, Hook, SchedulerHook, SupervisedStep, TrainLoop, cpu_state,
                   eval_mode as _eval_mode, move_to_device as _move, unpack_batch as _unpack)
import pandas as pd

__all__ = ["History", "fit", "EpochValidation", "mean_loss", "evaluate_segmentation",
           "segmentation_evaluator", "predict_segmentation", "last_checkpoint_path",
           "resolve_resume"]

Evaluator = Callable[[nn.Module, Iterable, torch.device], Mapping[str, float]]


# ----------------------------------------------------------------------------- history
@dataclass
class History:
    """Per-epoch rows (``epoch``, ``train_loss``, ``val_*``, ``lr``, ``seconds`` ...) and
    the best epoch by ``monitor`` (``mode`` "max" or "min")."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    monitor: str = "val_dice"
    mode: str = "max"
    best_epoch: Optional[int] = None
    best_score: Optional[float] = None
    stop_reason: Optional[str] = None

    def to_frame(self):
        """The rows as a pandas DataFrame indexed by epoch."""
        frame = pd.DataFrame(self.rows)
        return frame.set_index("epoch") if "epoch" in frame else frame

    @property
    def last_epoch(self) -> int:
        return int(self.rows[-1]["epoch"]) if self.rows else 0

    def is_better(self, score: float, min_delta: float = 0.0) -> bool:
        """Whether ``score`` beats the best so far (NaN never does)."""
        if score is None or math.isnan(score):
            return False
        if self.best_score is None:
            return True
        gain = score - self.best_score if self.mode == "max" else self.best_score - score
        return gain > min_delta

    def epochs_since_best(self) -> int:
        return self.last_epoch - (self.best_epoch or 0)

    def state(self) -> dict[str, Any]:
        """JSON-able summary kept inside checkpoints."""
        return {"monitor": self.monitor, "mode": self.mode, "best_epoch": self.best_epoch,
                "best_score": self.best_score}


# ----------------------------------------------------------------------------- helpers
def _amp_dtype(amp: Any, device: torch.device) -> Optional[torch.dtype]:
    """See :func:`bloodlib.engine.device.amp_dtype`."""
    return resolve_amp_dtype(amp, device)


def _autocast(device: torch.device, dtype: Optional[torch.dtype]):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def _limited(loader: Iterable, max_batches: Optional[int]) -> tuple[Iterable, Optional[int]]:
    try:
        total = len(loader)  # type: ignore[arg-type]
    except TypeError:
        total = None
    if max_batches is not None:
        total = max_batches if total is None else min(total, max_batches)
        return (b for i, b in zip(range(max_batches), loader)), total
    return loader, total




def last_checkpoint_path(checkpoint_path: str | Path) -> Path:
    """Where :func:`fit` keeps the latest epoch: ``best.pt`` -> ``best_last.pt``."""
    p = Path(checkpoint_path)
    return p.with_name(f"{p.stem}_last{p.suffix or '.pt'}")


# ----------------------------------------------------------------------------- validation
@torch.no_grad()
def mean_loss(model: nn.Module, loader: Iterable, loss_fn: Callable, device: torch.device, *,
              amp_dtype: Optional[torch.dtype] = None, channels_last: bool = False,
              max_batches: Optional[int] = None) -> float:
    """Per-sample mean of ``loss_fn`` over ``loader`` in eval mode."""
    batches, _ = _limited(loader, max_batches)
    total, seen = 0.0, 0
    with _eval_mode(model):
        for batch in batches:
            inputs, target = _unpack(batch)
            inputs, target = _move(inputs, device, channels_last), _move(target, device)
            with _autocast(device, amp_dtype):
                total += float(loss_fn(model(inputs), target)) * len(target)
            seen += len(target)
    return total / seen if seen else float("nan")


def _validate(model: nn.Module, loader: Optional[Iterable], loss_fn: Callable,
              device: torch.device, evaluate: Optional[Evaluator], amp_dtype: Any,
              channels_last: bool) -> dict[str, float]:
    """``val_``-prefixed metrics; ``val_loss`` from ``evaluate`` when it reports ``loss``."""
    if loader is None:
        return {}
    metrics = dict(evaluate(model, loader, device)) if evaluate is not None else {}
    if "loss" not in metrics:
        metrics["loss"] = mean_loss(model, loader, loss_fn, device, amp_dtype=amp_dtype,
                                    channels_last=channels_last)
    return {f"val_{k}": float(v) for k, v in metrics.items()}


# ----------------------------------------------------------------------------- fit
def _resolve_monitor(history: History, row: Mapping[str, Any]) -> None:
    if history.monitor in row:
        return
    fallback = "val_loss" if "val_loss" in row else "train_loss"
    warnings.warn(f"monitor {history.monitor!r} is not among the epoch's values "
                  f"{sorted(row)}; monitoring {fallback!r} (min) instead.", stacklevel=3)
    history.monitor, history.mode = fallback, "min"


def _resolve_device(device: Any) -> torch.device:
    if ddp.is_distributed():
        return ddp.local_device(device if device is not None else "auto")
    if device in (None, "auto"):
        return get_device("auto")
    return torch.device(device)


def _epoch_rows(rows: Sequence[Mapping[str, Any]], epoch: int) -> list[Mapping[str, Any]]:
    """The step rows of ``epoch`` (the last ones of ``rows``)."""
    out = []
    for r in reversed(rows):
        if r["epoch"] != epoch:
            break
        out.append(r)
    return out[::-1]


class EpochValidation(Hook):
    """``fit``'s end of epoch: one :class:`History` row (per-sample mean training loss,
    ``validate()``'s ``val_*`` values, the epoch's first learning rate, seconds,
    batches), the best epoch by the monitor (its weights copied to memory when
    ``best_path`` is set and written there by :meth:`write_best`), and early stopping."""

    def __init__(self, history: History, validate: Callable[[], dict[str, float]], *,
                 min_delta: float = 0.0, patience: Optional[int] = None,
                 best_path: Optional[Path] = None,
                 meta: Callable[[], Optional[Mapping[str, Any]]] = lambda: None) -> None:
        self.history, self.validate, self.min_delta, self.patience = history, validate, min_delta, patience
        self.best_path, self.meta = best_path, meta
        self.best_state: Optional[dict[str, torch.Tensor]] = None
        self._pending: Optional[dict[str, Any]] = None  # the best epoch's record, unwritten
        self._epoch_t0 = time.monotonic()

    @property
    def score(self) -> Optional[float]:
        """The last epoch's monitored value (for ReduceLROnPlateau)."""
        rows = self.history.rows
        return float(rows[-1][self.history.monitor]) if rows and self.history.monitor in rows[-1] else None

    def before_step(self, loop: TrainLoop) -> None:
        if loop.state.position == 0:
            self._epoch_t0 = time.monotonic()

    def after_epoch(self, loop: TrainLoop) -> None:
        epoch, history = loop.state.epoch, self.history
        steps = _epoch_rows(loop.state.rows, epoch)
        seen = sum(r["images"] for r in steps)
        row = {"epoch": epoch,
               "train_loss": sum(r["loss"] * r["images"] for r in steps) / seen if seen else float("nan"),
               **self.validate(), "lr": steps[0]["lr"] if steps else float("nan"),
               "seconds": time.monotonic() - self._epoch_t0, "train_batches": len(steps)}
        history.rows.append(row)
        if len(history.rows) == 1 or history.monitor not in row:
            _resolve_monitor(history, row)
        score = float(row[history.monitor])
        if history.is_better(score, self.min_delta):
            history.best_epoch, history.best_score = epoch, score
            if self.best_path is not None:
                self.best_state = cpu_state(loop.module)
                self._pending = {"epoch": epoch, "rows": list(history.rows),
                                 "state": history.state()}
        if loop.bar is not None:
            loop.bar.set_postfix({"epoch": epoch, "train_loss": f"{row['train_loss']:.4f}",
                                  history.monitor: f"{score:.4f}"})
        if self.patience is not None and history.epochs_since_best() >= self.patience:
            loop.request_stop("early_stopping")

    def write_best(self) -> None:
        """The best weights to ``best_path``, when they changed since the last write."""
        if self.best_path is None or self._pending is None or self.best_state is None:
            return
        if ddp.is_main():
            save_checkpoint(self.best_path, self.best_state, self.meta(), None,
                            self._pending["epoch"], history=self._pending["rows"],
                            extra={"history": self._pending["state"]})
        self._pending = None

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.history.rows, **self.history.state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        h = self.history
        h.rows = list(state.get("rows") or [])
        h.monitor, h.mode = state.get("monitor", h.monitor), state.get("mode", h.mode)
        h.best_epoch, h.best_score = state.get("best_epoch"), state.get("best_score")


def fit(model: nn.Module, train_loader: Iterable, val_loader: Optional[Iterable],
        loss_fn: Callable, optimizer: torch.optim.Optimizer, epochs: int, device: Any = "auto",
        *, scheduler: Any = None, scheduler_interval: str = "epoch",
        evaluate: Optional[Evaluator] = None, monitor: str = "val_dice", mode: str = "max",
        min_delta: float = 0.0, early_stopping_patience: Optional[int] = None,
        checkpoint_path: Optional[str | Path] = None,
        checkpoint_meta: Optional[Mapping[str, Any]] = None, restore_best: bool = True,
        amp: Any = "auto", channels_last: Any = "auto",
        resume_from: Any = None, max_train_batches: Optional[int] = None,
        progress: bool = True, time_budget_s: Optional[float] = None,
        checkpoint_every_s: Optional[float] = 60.0, grad_clip: Optional[float] = None
        ) -> History:
    """Train ``model`` up to epoch ``epochs`` (1-based, counted over resumes) on
    :class:`~bloodlib.engine.loop.TrainLoop` with a :class:`SupervisedStep`.

    After each epoch: ``val_loss`` (or ``evaluate``'s ``loss``) and ``evaluate(model,
    val_loader, device)``'s metrics, prefixed ``val_``, go into the epoch's row. The best
    epoch by ``monitor``/``mode`` (falling back to ``val_loss`` with a warning when the
    key is absent) is saved to ``checkpoint_path`` with ``checkpoint_meta``; the latest
    state to :func:`last_checkpoint_path`, from which ``resume_from`` continues (model,
    optimizer, scheduler, history and the random-number state, so the data order is that
    of an uninterrupted run; its meta unless ``checkpoint_meta`` is given);
    ``resume_from="auto"`` continues that file when it exists and starts afresh otherwise.
    ``early_stopping_patience`` epochs without improvement (> ``min_delta``) stop
    training; so does ``time_budget_s``, counted from the call (the current batch
    finishes, the partial epoch is validated and recorded). With ``restore_best`` and a
    checkpoint, the model ends with the best weights. Both files are written after the
    first epoch, then at most every ``checkpoint_every_s`` seconds (0 or None: after every
    epoch), after the last epoch and on Ctrl-C, so that a large model's checkpoints (a
    full-width WCSegNet with its Adam state: 0.8 GB, about 4 s a file) do not cost more
    than its epochs; after an error the best weights are still written.
    ``max_train_batches`` caps batches per epoch (quick profiling); ``grad_clip`` clips
    the gradient norm. ``amp`` ("auto", True, False, "bf16", "fp16") only takes effect on
    CUDA (and "bf16" on CPUs); ``channels_last`` "auto" means on CUDA only, True on any
    device (about 30 % faster for convolutional nets on a CPU, too). Under torchrun each
    rank trains on its share of every epoch (DistributedDataParallel).
    """
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
    device = _resolve_device(device)
    plan = device_plan(device, amp, channels_last)
    if isinstance(loss_fn, nn.Module):
        loss_fn.to(device)
    history = History(monitor=monitor, mode=mode)
    best_path = Path(checkpoint_path) if checkpoint_path is not None else None
    checkpoint = (CheckpointHook(last_checkpoint_path(best_path), checkpoint_meta,
                                 every_s=checkpoint_every_s or 0.0, at="epoch")
                  if best_path is not None else None)
    epoch_end = EpochValidation(
        history, lambda: _validate(model, val_loader, loss_fn, device, evaluate,
                                   plan.amp_dtype, plan.channels_last),
        min_delta=min_delta, patience=early_stopping_patience, best_path=best_path,
        meta=lambda: checkpoint.meta if checkpoint is not None else checkpoint_meta)
    hooks: list[Hook] = [epoch_end]
    if scheduler is not None:
        hooks.append(SchedulerHook(scheduler, "step" if scheduler_interval == "batch" else "epoch",
                                   score=lambda: epoch_end.score))
    if checkpoint is not None:
        checkpoint.on_write = epoch_end.write_best
        hooks.append(checkpoint)
    resume = resolve_resume(resume_from, last_checkpoint_path(best_path) if best_path else None)
    loop = TrainLoop(model, SupervisedStep(loss_fn, optimizer, grad_clip), train_loader,
                     max_epochs=epochs, batches_per_epoch=max_train_batches,
                     time_budget_s=time_budget_s, hooks=hooks, device=device, plan=plan,
                     resume_from=resume, progress=progress, desc="fit", partial_epoch=True)
    state = loop.run()
    history.stop_reason = None if state.stop_reason == "completed" else state.stop_reason
    if restore_best and epoch_end.best_state is not None:
        _unwrap(model).load_state_dict(epoch_end.best_state)
    elif restore_best and best_path is not None and best_path.is_file():
        load_checkpoint(best_path, model, map_location=device)
    return history


# ----------------------------------------------------------------------------- segmentation
@torch.no_grad()
def evaluate_segmentation(model: nn.Module, loader: Iterable, device: Any, num_classes: int,
                          class_names: Optional[Sequence[str]] = None, *,
                          ignore_index: Optional[int] = None, loss_fn: Optional[Callable] = None,
                          max_batches: Optional[int] = None, amp: Any = "auto"
                          ) -> dict[str, float]:
    """Pixel metrics of ``argmax(model(x))`` over ``loader`` (a
    :class:`~bloodlib.metrics.segmentation.SegmentationMeter`'s ``compute()``), plus
    ``dice``/``iou`` = mean Dice/IoU over the foreground classes (``mDice_fg``,
    ``mIoU_fg``) and ``loss`` when ``loss_fn`` is given (then :func:`fit` skips its own
    validation-loss pass)."""
    device = _resolve_device(device)
    amp_dtype = _amp_dtype(amp, device)
    meter = SegmentationMeter(num_classes, class_names=class_names, ignore_index=ignore_index)
    batches, _ = _limited(loader, max_batches)
    loss_total, seen = 0.0, 0
    with _eval_mode(model):
        for batch in batches:
            inputs, target = _unpack(batch)
            inputs, target = _move(inputs, device), _move(target, device)
            with _autocast(device, amp_dtype):
                logits = model(inputs)
                if loss_fn is not None:
                    loss_total += float(loss_fn(logits, target)) * len(target)
            meter.update(logits.argmax(1), target)
            seen += len(target)
    out = dict(meter.compute())
    out["dice"], out["iou"] = out.get("mDice_fg", out.get("mDice")), out.get("mIoU_fg")
    if loss_fn is not None:
        out["loss"] = loss_total / seen if seen else float("nan")
    return out


def segmentation_evaluator(num_classes: int, class_names: Optional[Sequence[str]] = None,
                           **kw: Any) -> Evaluator:
    """``evaluate`` callable for :func:`fit` bound to ``num_classes`` etc."""
    def evaluate(model: nn.Module, loader: Iterable, device: torch.device) -> dict[str, float]:
        return evaluate_segmentation(model, loader, device, num_classes, class_names, **kw)
    return evaluate


@torch.no_grad()
def predict_segmentation(model: nn.Module, images: Any, device: Any = None,
                         batch_size: int = 16, amp: Any = "auto") -> torch.Tensor:
    """Class-index masks (argmax of the softmax) on the CPU: ``(N, H, W)`` int64 for
    ``(N, C, H, W)`` images or a list of ``(C, H, W)``; ``(H, W)`` for one ``(C, H, W)``."""
    single = isinstance(images, torch.Tensor) and images.ndim == 3
    x = images.unsqueeze(0) if single else images
    x = torch.stack(list(x)) if isinstance(x, (list, tuple)) else x
    param = next(model.parameters(), None)
    device = torch.device(device) if device is not None else (
        param.device if param is not None else torch.device("cpu"))
    amp_dtype = _amp_dtype(amp, device)
    outs = []
    with _eval_mode(model):
        for chunk in x.split(batch_size):
            with _autocast(device, amp_dtype):
                outs.append(model(chunk.to(device)).argmax(1).cpu())
    masks = torch.cat(outs).long()
    return masks[0] if single else masks
