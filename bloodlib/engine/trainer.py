"""A reusable supervised training loop (segmentation and classification).

:func:`fit` trains for a number of epochs, validates after each, keeps the best
checkpoint (by ``monitor``), stops early or on a time budget, and can resume.
Batches are ``(inputs, targets)`` pairs (or dicts with ``image`` and ``mask``/``label``).
On CUDA it uses autocast (bf16 where supported, else fp16 with a GradScaler) and
channels-last memory; on CPU/MPS it runs plain float32.
"""

from __future__ import annotations

import math
import time
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence

import torch
from torch import nn

from .checkpoint import _unwrap, load_checkpoint, resolve_resume, save_checkpoint
from .device import amp_dtype as resolve_amp_dtype, device_plan
from .rng import rng_state, set_rng_state

__all__ = ["History", "fit", "train_one_epoch", "mean_loss", "evaluate_segmentation",
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
        import pandas as pd
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


def _unpack(batch: Any) -> tuple[Any, Any]:
    if isinstance(batch, Mapping):
        target = next((batch[k] for k in ("mask", "label", "target") if k in batch), None)
        return batch["image"], target
    inputs, target = batch[0], batch[1]
    return inputs, target


def _move(x: Any, device: torch.device, channels_last: bool = False) -> Any:
    if isinstance(x, (list, tuple)):
        x = torch.stack(list(x)) if x and isinstance(x[0], torch.Tensor) else torch.as_tensor(x)
    x = x.to(device, non_blocking=True)
    if channels_last and x.ndim == 4 and x.is_floating_point():
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def _limited(loader: Iterable, max_batches: Optional[int]) -> tuple[Iterable, Optional[int]]:
    try:
        total = len(loader)  # type: ignore[arg-type]
    except TypeError:
        total = None
    if max_batches is not None:
        total = max_batches if total is None else min(total, max_batches)
        return (b for i, b in zip(range(max_batches), loader)), total
    return loader, total


def _bar(iterable: Iterable, total: Optional[int], desc: str, progress: bool, leave: bool):
    from tqdm.auto import tqdm
    return tqdm(iterable, total=total, desc=desc, leave=leave, disable=not progress,
                dynamic_ncols=True)


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode inside the block; the previous mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def _check_finite(value: float, where: str) -> None:
    if not math.isfinite(value):
        raise FloatingPointError(f"Loss became {value} {where}; lower the learning rate, "
                                 "check the inputs/targets, or disable mixed precision.")


def last_checkpoint_path(checkpoint_path: str | Path) -> Path:
    """Where :func:`fit` keeps the latest epoch: ``best.pt`` -> ``best_last.pt``."""
    p = Path(checkpoint_path)
    return p.with_name(f"{p.stem}_last{p.suffix or '.pt'}")


# ----------------------------------------------------------------------------- epochs
def train_one_epoch(model: nn.Module, loader: Iterable, loss_fn: Callable,
                    optimizer: torch.optim.Optimizer, device: torch.device, *,
                    amp_dtype: Optional[torch.dtype] = None, scaler: Any = None,
                    channels_last: bool = False, max_batches: Optional[int] = None,
                    deadline: Optional[float] = None, batch_scheduler: Any = None,
                    progress: bool = False, desc: str = "train") -> dict[str, Any]:
    """One pass over ``loader``; returns ``train_loss`` (per-sample mean), ``batches``
    and ``out_of_time`` (the deadline, a ``time.monotonic()`` value, was passed)."""
    model.train()
    batches, total = _limited(loader, max_batches)
    loss_sum, seen, n_batches, out_of_time = torch.zeros((), device=device), 0, 0, False
    bar = _bar(batches, total, desc, progress, leave=False)
    for batch in bar:
        inputs, target = _unpack(batch)
        inputs, target = _move(inputs, device, channels_last), _move(target, device)
        with _autocast(device, amp_dtype):
            loss = loss_fn(model(inputs), target)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        if batch_scheduler is not None:
            batch_scheduler.step()
        loss_sum += loss.detach().float() * len(target)
        seen, n_batches = seen + len(target), n_batches + 1
        if n_batches % 10 == 1:
            running = (loss_sum / seen).item()
            _check_finite(running, f"in batch {n_batches}")
            bar.set_postfix(loss=f"{running:.4f}")
        if deadline is not None and time.monotonic() > deadline:
            out_of_time = True
            break
    bar.close()
    mean = (loss_sum / seen).item() if seen else float("nan")
    if seen:
        _check_finite(mean, "in this epoch")
    return {"train_loss": mean, "batches": n_batches, "out_of_time": out_of_time}


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


def _resume(resume_from: str | Path, model: nn.Module, optimizer: Any, scheduler: Any,
            history: History, loader: Any) -> tuple[int, dict[str, Any]]:
    """Restore states, history and random-number state (so the next epoch draws the same
    data order) from a checkpoint; returns (next epoch, its meta)."""
    ckpt = load_checkpoint(resume_from, model, optimizer=optimizer, scheduler=scheduler)
    history.rows = list(ckpt.get("history") or [])
    state = ckpt.get("extra", {}).get("history", {})
    history.best_epoch, history.best_score = state.get("best_epoch"), state.get("best_score")
    if ckpt.get("rng_state") is not None:
        set_rng_state(ckpt["rng_state"], [loader])
    return int(ckpt.get("epoch") or history.last_epoch) + 1, dict(ckpt.get("meta") or {})


def _step_epoch_scheduler(scheduler: Any, score: Optional[float]) -> None:
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        if score is not None and not math.isnan(score):
            scheduler.step(score)
    else:
        scheduler.step()


def _resolve_device(device: Any) -> torch.device:
    if device in (None, "auto"):
        from bloodlib.runtime import get_device
        return get_device("auto")
    return torch.device(device)


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
        checkpoint_every_s: Optional[float] = 60.0) -> History:
    """Train ``model`` up to epoch ``epochs`` (1-based, counted over resumes).

    After each epoch: ``val_loss`` (or ``evaluate``'s ``loss``) and ``evaluate(model,
    val_loader, device)``'s metrics, prefixed ``val_``, go into the epoch's row. The best
    epoch by ``monitor``/``mode`` (falling back to ``val_loss`` with a warning when the
    key is absent) is saved to ``checkpoint_path`` with ``checkpoint_meta``; the latest
    epoch to :func:`last_checkpoint_path`, from which ``resume_from`` continues (model,
    optimizer, scheduler, epoch, history and the random-number state, so the data order
    is that of an uninterrupted run; its meta unless ``checkpoint_meta`` is given);
    ``resume_from="auto"`` continues that file when it exists and starts afresh otherwise.
    ``early_stopping_patience`` epochs without improvement (> ``min_delta``) stop
    training; so does ``time_budget_s``, counted from the call (the current batch finishes,
    the partial epoch is validated and recorded). With ``restore_best`` and a checkpoint,
    the model ends with the best weights. With a ``checkpoint_path`` the best weights are
    copied to memory when they improve, and both files are written after the first epoch,
    then at most every ``checkpoint_every_s`` seconds (0 or None: after every epoch) and
    after the last epoch, so that a large model's checkpoints (a full-width WCSegNet with its Adam state:
    0.8 GB, about 4 s a file) do not cost more than its epochs; an interrupted run still
    writes its best weights. ``max_train_batches`` caps batches per epoch (quick
    profiling). ``amp`` ("auto", True, False, "bf16", "fp16")
    only takes effect on CUDA; ``channels_last`` "auto" means on CUDA only, True on any
    device (about 30 % faster for convolutional nets on a CPU, too).
    """
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
    device = _resolve_device(device)
    plan = device_plan(device, amp, channels_last)
    amp_dtype, use_cl, scaler = plan.amp_dtype, plan.channels_last, plan.grad_scaler()
    model.to(device)
    if use_cl:
        model.to(memory_format=torch.channels_last)
    if isinstance(loss_fn, nn.Module):
        loss_fn.to(device)
    history = History(monitor=monitor, mode=mode)
    start = 1
    resume_from = resolve_resume(resume_from, last_checkpoint_path(checkpoint_path)
                                 if checkpoint_path is not None else None)
    if resume_from is not None:
        start, old_meta = _resume(resume_from, model, optimizer, scheduler, history, train_loader)
        checkpoint_meta = old_meta if checkpoint_meta is None else checkpoint_meta
    deadline = time.monotonic() + time_budget_s if time_budget_s is not None else None
    batch_sched = scheduler if scheduler_interval == "batch" else None
    writer = _CheckpointWriter(checkpoint_path, checkpoint_meta, optimizer, scheduler,
                               checkpoint_every_s, train_loader)
    epoch_bar = _bar(range(start, epochs + 1), epochs - start + 1, "epochs", progress, True)
    try:
        for epoch in epoch_bar:
            t0, lr = time.monotonic(), optimizer.param_groups[0]["lr"]
            train = train_one_epoch(model, train_loader, loss_fn, optimizer, device,
                                    amp_dtype=amp_dtype, scaler=scaler, channels_last=use_cl,
                                    max_batches=max_train_batches, deadline=deadline,
                                    batch_scheduler=batch_sched, progress=progress,
                                    desc=f"epoch {epoch}/{epochs}")
            row = {"epoch": epoch, "train_loss": train["train_loss"],
                   **_validate(model, val_loader, loss_fn, device, evaluate, amp_dtype, use_cl),
                   "lr": lr, "seconds": time.monotonic() - t0, "train_batches": train["batches"]}
            history.rows.append(row)
            if len(history.rows) == 1 or history.monitor not in row:
                _resolve_monitor(history, row)
            score = float(row[history.monitor])
            improved = history.is_better(score, min_delta)
            if improved:
                history.best_epoch, history.best_score = epoch, score
            if scheduler is not None and batch_sched is None:
                _step_epoch_scheduler(scheduler, score)
            writer.epoch_done(model, history, improved)
            epoch_bar.set_postfix({"train_loss": f"{row['train_loss']:.4f}",
                                   history.monitor: f"{score:.4f}"})
            if train["out_of_time"] or (deadline is not None and time.monotonic() > deadline):
                history.stop_reason = "time_budget"
                break
            if early_stopping_patience is not None \
                    and history.epochs_since_best() >= early_stopping_patience:
                history.stop_reason = "early_stopping"
                break
        writer.write_latest(model, history)
    finally:
        writer.write_best()
        epoch_bar.close()
    if restore_best and writer.best_state is not None:
        _unwrap(model).load_state_dict(writer.best_state)
    elif restore_best and checkpoint_path is not None and Path(checkpoint_path).is_file():
        load_checkpoint(checkpoint_path, model, map_location=device)
    return history


class _CheckpointWriter:
    """:func:`fit`'s checkpoints: the best weights (a CPU copy taken when they improve)
    to ``path``, the latest epoch (with optimizer and scheduler) to ``*_last``; written at
    most every ``every_s`` seconds (the first one after the first epoch, so an early kill
    loses at most one epoch), and by :meth:`write_latest` / :meth:`write_best`."""

    def __init__(self, path: Optional[str | Path], meta: Optional[Mapping[str, Any]],
                 optimizer: Any, scheduler: Any, every_s: Optional[float],
                 loader: Any = None) -> None:
        self.path, self.meta = (Path(path) if path is not None else None), meta
        self.optimizer, self.scheduler, self.every_s = optimizer, scheduler, every_s or 0.0
        self.loader = loader
        self.best_state: Optional[dict[str, torch.Tensor]] = None
        self._best: Optional[dict[str, Any]] = None  # the best epoch's record, not yet written
        self._latest_written: Optional[int] = None
        self._last_write = time.monotonic()

    def epoch_done(self, model: nn.Module, history: History, improved: bool) -> None:
        """Record the epoch just finished; write both files when their time has come."""
        if self.path is None:
            return
        if improved:
            self.best_state = {k: v.detach().to("cpu", copy=True)
                               for k, v in _unwrap(model).state_dict().items()}
            self._best = {"epoch": history.last_epoch, "rows": list(history.rows),
                          "state": history.state()}
        if self._latest_written is None or time.monotonic() - self._last_write >= self.every_s:
            self.write_latest(model, history)

    def write_latest(self, model: nn.Module, history: History) -> None:
        """The latest epoch to ``*_last`` (resumable) and any pending best weights."""
        if self.path is None or not history.rows or self._latest_written == history.last_epoch:
            return
        save_checkpoint(last_checkpoint_path(self.path), model, self.meta, self.optimizer,
                        history.last_epoch, scheduler=self.scheduler, history=history.rows,
                        extra={"history": history.state()},
                        rng=rng_state([self.loader] if self.loader is not None else []))
        self._latest_written, self._last_write = history.last_epoch, time.monotonic()
        self.write_best()

    def write_best(self) -> None:
        """The best weights to ``path``, when they changed since the last write."""
        if self.path is None or self._best is None or self.best_state is None:
            return
        save_checkpoint(self.path, self.best_state, self.meta, None, self._best["epoch"],
                        history=self._best["rows"], extra={"history": self._best["state"]})
        self._best = None


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
    from bloodlib.metrics.segmentation import SegmentationMeter  # written alongside
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
