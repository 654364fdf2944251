"""One training loop for every track.

The shape is detectron2's ``engine/train_loop.py``: a :class:`TrainLoop` draws batches
and calls a :class:`TrainStep`, the only part that differs between tracks
(:class:`SupervisedStep` for classification and segmentation, :class:`LossDictStep` for
torchvision detectors and other models that return named losses, the RENS-GAN's
two-optimiser step in :mod:`bloodlib.engine.gan`). :class:`Hook` objects do the rest
at fixed points: evaluation with keep-best (:class:`PeriodicEval`, ``fit``'s per-epoch
validation), learning-rate schedules (:class:`SchedulerHook`, torch's own schedulers) and
checkpoints (:class:`CheckpointHook`: first write after the first step or epoch, then by
interval, and on Ctrl-C).

The loop itself owns what every run needs: step, epoch and time budgets; resume (weights,
optimisers, schedulers, hooks, the position in the epoch and every random generator, so a
resumed run draws the batches of an uninterrupted one); the device plan (AMP and
channels-last on CUDA, :mod:`bloodlib.engine.device`); DistributedDataParallel under
``torchrun`` (:mod:`bloodlib.engine.distributed`); one history row per step; a tqdm bar.
"""

from __future__ import annotations

import math
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence

import torch
from torch import nn

from . import distributed as ddp
from .checkpoint import load_checkpoint, save_checkpoint
from .device import DevicePlan, device_plan
from .rng import rng_state, set_rng_state
from tqdm.auto import tqdm
from torch.optim.lr_scheduler import ChainedScheduler, LinearLR

__all__ = ["LoopState", "Hook", "TrainStep", "SupervisedStep", "LossDictStep", "TrainLoop",
           "SchedulerHook", "CheckpointHook", "PeriodicEval", "warmup_scheduler", "RUN_LISTENERS",
           "move_to_device", "unpack_batch", "progress_bar", "targets_to_device",
           "images_to_device", "eval_mode", "cpu_state"]


#: Called with each :class:`TrainLoop` when its ``run`` ends (also after an error);
#: filled from above, e.g. by the GPU check, which reads the steps and seconds.
RUN_LISTENERS: list[Callable[["TrainLoop"], None]] = []


@dataclass
class LoopState:
    """Where a run is; saved in its checkpoints."""

    step: int = 0  # optimisation steps done
    epoch: int = 0  # epochs completed (the 0-based index of the current one)
    position: int = 0  # batches used of the current epoch
    images: int = 0  # samples seen (over all ranks)
    seconds: float = 0.0  # training wall time, summed over resumes
    rows: list[dict[str, Any]] = field(default_factory=list)  # one per step
    stop_reason: str = "completed"


class Hook:
    """Called by :class:`TrainLoop` at fixed points; override what you need.
    ``after_train`` runs also when training raised (``loop.error`` is then set)."""

    def before_train(self, loop: "TrainLoop") -> None: ...
    def before_step(self, loop: "TrainLoop") -> None: ...
    def after_step(self, loop: "TrainLoop") -> None: ...
    def after_epoch(self, loop: "TrainLoop") -> None: ...
    def after_train(self, loop: "TrainLoop") -> None: ...

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs of this hook (tensors and primitives)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


# ----------------------------------------------------------------------------- batches
def unpack_batch(batch: Any) -> tuple[Any, Any]:
    """``(inputs, target)`` of a pair or of a dict with ``image`` and ``mask``/``label``."""
    if isinstance(batch, Mapping):
        target = next((batch[k] for k in ("mask", "label", "target") if k in batch), None)
        return batch["image"], target
    return batch[0], batch[1]


def move_to_device(x: Any, device: torch.device, channels_last: bool = False) -> Any:
    """A tensor (or list of equal tensors, stacked) on ``device``; 4-D float inputs in
    channels-last memory when asked."""
    if isinstance(x, (list, tuple)):
        x = torch.stack(list(x)) if x and isinstance(x[0], torch.Tensor) else torch.as_tensor(x)
    x = x.to(device, non_blocking=True)
    if channels_last and x.ndim == 4 and x.is_floating_point():
        x = x.contiguous(memory_format=torch.channels_last)
    return x


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode inside the block; the previous mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of ``model``'s weights (the best epoch's, kept in memory)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def progress_bar(iterable: Optional[Iterable], total: Optional[int], desc: str, progress: bool,
                 leave: bool) -> Any:
    """A tqdm bar (notebook or terminal), or a silent one."""
    return tqdm(iterable, total=total, desc=desc, leave=leave, disable=not progress,
                dynamic_ncols=True)


# ----------------------------------------------------------------------------- steps
class TrainStep:
    """One optimisation step on a batch. Subclasses implement :meth:`run`, which returns
    the values to log (``loss`` and its parts, as numbers or 0-d tensors) and ``n``, the
    number of samples in the batch."""

    def __init__(self, optimizers: Mapping[str, torch.optim.Optimizer],
                 grad_clip: Optional[float] = None) -> None:
        self.optimizers = dict(optimizers)
        self.grad_clip = grad_clip

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The first (often the only) optimiser; its learning rate goes in the log."""
        return next(iter(self.optimizers.values()))

    def run(self, loop: "TrainLoop", batch: Any) -> dict[str, Any]:
        raise NotImplementedError

    def update(self, loop: "TrainLoop", loss: torch.Tensor,
               optimizer: Optional[torch.optim.Optimizer] = None) -> None:
        """Backward, gradient clipping (at ``grad_clip``) and the optimiser step, with the
        loop's gradient scaler when float16 AMP is on."""
        optimizer = optimizer or self.optimizer
        scaler = loop.scaler
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        if loop.average_gradients:
            ddp.average_gradients(p for g in optimizer.param_groups for p in g["params"])
        if self.grad_clip:
            params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()

    def state_dict(self) -> dict[str, Any]:
        return {f"optimizer/{k}": o.state_dict() for k, o in self.optimizers.items()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for k, o in self.optimizers.items():
            o.load_state_dict(state[f"optimizer/{k}"])


class SupervisedStep(TrainStep):
    """``loss_fn(model(inputs), target)`` for classification and segmentation batches
    (pairs, or dicts with ``image`` and ``mask``/``label``)."""

    def __init__(self, loss_fn: Callable, optimizer: torch.optim.Optimizer,
                 grad_clip: Optional[float] = None) -> None:
        super().__init__({"model": optimizer}, grad_clip)
        self.loss_fn = loss_fn

    def run(self, loop: "TrainLoop", batch: Any) -> dict[str, Any]:
        inputs, target = unpack_batch(batch)
        inputs = move_to_device(inputs, loop.device, loop.plan.channels_last)
        target = move_to_device(target, loop.device)
        with loop.plan.autocast():
            loss = self.loss_fn(loop.model(inputs), target)
        self.update(loop, loss)
        return {"loss": loss.detach(), "n": len(target)}


def targets_to_device(targets: Sequence[Mapping[str, Any]], device: torch.device
                      ) -> list[dict[str, torch.Tensor]]:
    """Plain tensors (boxes, labels, masks) on ``device``, as torchvision's models want."""
    out = []
    for t in targets:
        d = {k: torch.as_tensor(t[k]).as_subclass(torch.Tensor).to(device)
             for k in ("boxes", "labels", "masks") if k in t}
        d["boxes"] = d["boxes"].float().reshape(-1, 4)
        out.append(d)
    return out


def images_to_device(images: Sequence[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """A detection batch's images as plain tensors on ``device``."""
    return [torch.as_tensor(i).as_subclass(torch.Tensor).to(device, non_blocking=True)
            for i in images]


def _detection_forward(model: nn.Module, batch: Any, device: torch.device) -> Mapping[str, Any]:
    images, targets = batch
    return model(images_to_device(images, device), targets_to_device(targets, device))


class LossDictStep(TrainStep):
    """Models that return a dict of named losses (torchvision's detectors, MCNet,
    R-Mask R-CNN): the losses are summed. ``forward(model, batch, device)`` makes the
    dict; by default a detection batch ``(images, targets)`` goes in as torchvision
    wants it."""

    def __init__(self, optimizer: torch.optim.Optimizer, grad_clip: Optional[float] = 10.0,
                 forward: Optional[Callable[[nn.Module, Any, torch.device], Mapping]] = None
                 ) -> None:
        super().__init__({"model": optimizer}, grad_clip)
        self.forward = forward or _detection_forward

    def run(self, loop: "TrainLoop", batch: Any) -> dict[str, Any]:
        with loop.plan.autocast():
            losses = self.forward(loop.model, batch, loop.device)
        loss = sum(losses.values())
        value = float(loss.detach())
        if not math.isfinite(value):
            parts = {k: round(float(v.detach()), 4) for k, v in losses.items()}
            raise FloatingPointError(
                f"The loss became {value} at step {loop.state.step + 1} ({parts}); lower the "
                "learning rate, lengthen the warm-up or check the boxes.")
        self.update(loop, loss)
        first = batch[0] if isinstance(batch, (list, tuple)) else batch
        return {"loss": value, **{k: v.detach() for k, v in losses.items()},
                "n": len(first) if hasattr(first, "__len__") else 1}


# ----------------------------------------------------------------------------- hooks
def warmup_scheduler(optimizer: torch.optim.Optimizer, warmup_iters: int,
                     warmup_factor: float, main: Any = None) -> Any:
    """torch's ``LinearLR`` warm-up (from ``warmup_factor`` x lr over ``warmup_iters``
    steps) chained with a ``main`` scheduler (or alone; None when there is nothing)."""
    parts = []
    if warmup_iters > 0 and warmup_factor != 1.0:
        parts.append(LinearLR(optimizer, start_factor=warmup_factor, total_iters=warmup_iters))
    if main is not None:
        parts.append(main)
    if len(parts) > 1:
        return ChainedScheduler(parts, optimizer=optimizer)
    return parts[0] if parts else None


class SchedulerHook(Hook):
    """Steps a torch LR scheduler after every step (``interval="step"``) or epoch;
    ``ReduceLROnPlateau`` gets ``score()`` (NaN scores are skipped)."""

    def __init__(self, scheduler: Any, interval: str = "step",
                 score: Optional[Callable[[], Optional[float]]] = None) -> None:
        if interval not in ("step", "epoch"):
            raise ValueError(f"interval must be 'step' or 'epoch', not {interval!r}")
        self.scheduler, self.interval, self.score = scheduler, interval, score

    def _step(self) -> None:
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            value = self.score() if self.score is not None else None
            if value is not None and not math.isnan(value):
                self.scheduler.step(value)
        else:
            self.scheduler.step()

    def after_step(self, loop: "TrainLoop") -> None:
        if self.interval == "step":
            self._step()

    def after_epoch(self, loop: "TrainLoop") -> None:
        if self.interval == "epoch":
            self._step()

    def state_dict(self) -> dict[str, Any]:
        return {"scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.scheduler.load_state_dict(state["scheduler"])


class CheckpointHook(Hook):
    """Writes the resumable state to ``path`` (rank 0 only): after the first step (or
    epoch, ``at="epoch"``), then whenever ``every_steps`` divides the step or ``every_s``
    seconds have passed, at the end, and on Ctrl-C. ``on_write()`` runs after each write
    and at the end even after an error (``fit`` writes its best weights there)."""

    def __init__(self, path: Any, meta: Optional[Mapping[str, Any]] = None, *,
                 every_s: Optional[float] = 60.0, every_steps: Optional[int] = None,
                 at: str = "step", on_write: Optional[Callable[[], None]] = None) -> None:
        self.path, self.meta, self.at = path, meta, at
        self.every_s, self.every_steps, self.on_write = every_s, every_steps, on_write
        self.written_step: Optional[int] = None
        self._last_write = time.monotonic()

    def _due(self, loop: "TrainLoop") -> bool:
        if self.written_step is None:
            return True
        if self.every_steps and loop.state.step % self.every_steps == 0:
            return True
        return self.every_s is not None and time.monotonic() - self._last_write >= self.every_s

    def write(self, loop: "TrainLoop") -> None:
        if self.written_step != loop.state.step:
            self.written_step = loop.state.step  # before saving: the hook's state includes it
            loop.save(self.path, self.meta)
            self._last_write = time.monotonic()
        if self.on_write is not None:
            self.on_write()

    def after_step(self, loop: "TrainLoop") -> None:
        if self.at == "step" and self._due(loop):
            self.write(loop)

    def after_epoch(self, loop: "TrainLoop") -> None:
        if self.at == "epoch" and self._due(loop):
            self.write(loop)

    def after_train(self, loop: "TrainLoop") -> None:
        if loop.error is None or isinstance(loop.error, KeyboardInterrupt):
            if loop.state.rows:
                self.write(loop)
        elif self.on_write is not None:
            self.on_write()

    def state_dict(self) -> dict[str, Any]:
        return {"meta": dict(self.meta or {}), "written_step": self.written_step}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.meta = self.meta if self.meta is not None else dict(state.get("meta") or {})
        self.written_step = state.get("written_step")


class PeriodicEval(Hook):
    """``evaluate(model) -> {metric: value}`` every ``every_steps`` steps and at the end;
    the best weights by ``monitor`` (higher is better) are kept in memory and, with
    ``keep_best``, loaded into the model at the end."""

    def __init__(self, evaluate: Callable[[nn.Module], Mapping[str, float]],
                 every_steps: Optional[int] = None, monitor: str = "AP50",
                 keep_best: bool = True) -> None:
        self.evaluate, self.every_steps = evaluate, every_steps
        self.monitor, self.keep_best = monitor, keep_best
        self.evals: list[dict[str, Any]] = []
        self.best_score: Optional[float] = None
        self.best_step: Optional[int] = None
        self.best_state: Optional[dict[str, torch.Tensor]] = None

    def run(self, loop: "TrainLoop") -> None:
        model = loop.module
        with eval_mode(model):
            metrics = {k: float(v) for k, v in self.evaluate(model).items()}
        self.evals.append({"step": loop.state.step, **metrics})
        score = metrics.get(self.monitor)
        if score is not None and math.isfinite(score) and \
                (self.best_score is None or score > self.best_score):
            self.best_score, self.best_step = score, loop.state.step
            if self.keep_best:
                self.best_state = cpu_state(model)

    def after_step(self, loop: "TrainLoop") -> None:
        if self.every_steps and loop.state.step % self.every_steps == 0 \
                and not loop.finished_steps():
            self.run(loop)

    def after_train(self, loop: "TrainLoop") -> None:
        if loop.error is not None:
            return
        if not self.evals or self.evals[-1]["step"] != loop.state.step:
            self.run(loop)
        if self.keep_best and self.best_state is not None and self.best_step != loop.state.step:
            loop.module.load_state_dict(self.best_state)

    def state_dict(self) -> dict[str, Any]:
        return {"evals": self.evals, "best_score": self.best_score, "best_step": self.best_step}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.evals = list(state.get("evals") or [])
        self.best_score, self.best_step = state.get("best_score"), state.get("best_step")


# ----------------------------------------------------------------------------- the loop
def _number(v: Any) -> float:
    return float(v.detach()) if isinstance(v, torch.Tensor) else float(v)


def _batches_in(loader: Any) -> Optional[int]:
    try:
        return len(loader)
    except TypeError:
        return None


class TrainLoop:
    """Train ``model`` with ``step`` on ``loader`` until ``max_steps`` steps or
    ``max_epochs`` epochs (both counted over resumes) or ``time_budget_s`` seconds (of
    this call; the current step finishes), whichever comes first, or until a hook calls
    :meth:`request_stop`. ``batches_per_epoch`` caps each epoch. With
    ``partial_epoch=True`` a stop inside an epoch still ends it (its hooks run: ``fit``
    validates the partial epoch). ``resume_from`` is a checkpoint written by
    :meth:`save` (a :class:`CheckpointHook`). Under torchrun the model is wrapped in
    DDP (``sync_batchnorm``, by default from ``$BLOODLIB_SYNC_BATCHNORM``) and the loader
    gets a distributed sampler (and pinned memory where the device plan says so); with
    ``wrap_ddp=False`` (a step that calls sub-modules, as the GAN's) the gradients are
    averaged over the ranks after each backward instead."""

    def __init__(self, model: nn.Module, step: TrainStep, loader: Iterable, *,
                 max_steps: Optional[int] = None, max_epochs: Optional[int] = None,
                 batches_per_epoch: Optional[int] = None,
                 time_budget_s: Optional[float] = None, hooks: Sequence[Hook] = (),
                 device: Any = "cpu", plan: Optional[DevicePlan] = None,
                 resume_from: Any = None, progress: bool = True, desc: str = "train",
                 partial_epoch: bool = False, sync_batchnorm: Optional[bool] = None,
                 wrap_ddp: bool = True, seed: int = 0) -> None:
        if max_steps is None and max_epochs is None:
            raise ValueError("Give max_steps or max_epochs.")
        self.device = torch.device(device)
        self.plan = plan or device_plan(self.device, "auto", "auto")
        self.scaler = self.plan.grad_scaler()
        self.module = model.to(self.device)
        if self.plan.channels_last:
            self.module.to(memory_format=torch.channels_last)
        if sync_batchnorm is None:
            sync_batchnorm = os.environ.get("BLOODLIB_SYNC_BATCHNORM", "") not in ("", "0")
        self.model = (ddp.wrap_model(self.module, self.device, sync_batchnorm) if wrap_ddp
                      else self.module)
        #: Steps that call sub-modules (a GAN) average the gradients over the ranks themselves.
        self.average_gradients = ddp.is_distributed() and not wrap_ddp
        self.loader = ddp.distributed_loader(loader, seed, self.plan.pin_memory)
        self.step_fn, self.hooks = step, list(hooks)
        self.max_steps, self.max_epochs = max_steps, max_epochs
        self.batches_per_epoch, self.time_budget_s = batches_per_epoch, time_budget_s
        self.partial_epoch, self.progress, self.desc = partial_epoch, progress, desc
        self.state = LoopState()
        self.error: Optional[BaseException] = None
        self._stop: Optional[str] = None
        self._epoch_rng: Optional[dict[str, Any]] = None
        self._iterator: Optional[Iterator[Any]] = None
        self._t0 = time.monotonic()
        self._seconds0 = 0.0
        self.bar: Any = None
        if resume_from is not None:
            self._resume(resume_from)

    # -- budgets
    def request_stop(self, reason: str) -> None:
        """Stop after the current step (a hook's early stopping, say)."""
        self._stop = self._stop or reason

    def finished_steps(self) -> bool:
        return self.max_steps is not None and self.state.step >= self.max_steps

    def _finished(self) -> bool:
        return (self._stop is not None or self.finished_steps()
                or (self.max_epochs is not None and self.state.epoch >= self.max_epochs))

    def elapsed(self) -> float:
        """Seconds since this call started training."""
        return time.monotonic() - self._t0

    def _check_time(self) -> None:
        if self.time_budget_s is None:  # nothing to agree on: no all-reduce per step
            return
        over = self.elapsed() > self.time_budget_s
        if ddp.any_rank(over) and not self.finished_steps():
            self.request_stop("time_budget")

    # -- running
    def run(self) -> LoopState:
        """Train; returns the final :class:`LoopState` (``stop_reason``: "completed",
        "time_budget" or a hook's reason)."""
        self._t0, self._seconds0 = time.monotonic(), self.state.seconds
        self._start_step, self.steps_this_run = self.state.step, 0
        self.module.train()
        self.bar = progress_bar(None, self._total_steps(), self.desc,
                                self.progress and ddp.is_main(), leave=False)
        self.bar.update(self.state.step)
        try:
            for hook in self.hooks:
                hook.before_train(self)
            while not self._finished():
                self._run_epoch()
        except BaseException as exc:
            self.error = exc
            raise
        finally:
            self.state.seconds = self._seconds0 + self.elapsed()
            if self._stop is not None:
                self.state.stop_reason = self._stop
            self.steps_this_run = self.state.step - self._start_step
            for hook in self.hooks:
                hook.after_train(self)
            self.bar.close()
            for listener in RUN_LISTENERS:
                listener(self)
        return self.state

    def _total_steps(self) -> Optional[int]:
        per_epoch = _batches_in(self.loader)
        if per_epoch is not None and self.batches_per_epoch is not None:
            per_epoch = min(per_epoch, self.batches_per_epoch)
        by_epochs = self.max_epochs * per_epoch if self.max_epochs and per_epoch else None
        options = [n for n in (self.max_steps, by_epochs) if n is not None]
        return min(options) if options else None

    def _epoch_batches(self) -> Iterator[Any]:
        if self._iterator is None:  # a fresh epoch (else: resumed inside one)
            sampler = getattr(self.loader, "sampler", None)
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(self.state.epoch)
            self._epoch_rng = rng_state([self.loader])
            self._iterator, self.state.position = iter(self.loader), 0
        return self._iterator

    def _run_epoch(self) -> None:
        batches, ended = self._epoch_batches(), True
        for batch in batches:
            self._one_step(batch)
            self._check_time()
            if self._stop is not None or self.finished_steps():
                ended = False
                break
            if self.batches_per_epoch is not None and \
                    self.state.position >= self.batches_per_epoch:
                break
        if ended and self.state.position == 0:
            raise ValueError("The training loader gave no batches; check the dataset/split.")
        at_end = ended or self.partial_epoch or self._exhausted()
        if at_end:
            self._iterator = None
            self.state.epoch, self.state.position = self.state.epoch + 1, 0
            for hook in self.hooks:
                hook.after_epoch(self)
            self._check_time()

    def _exhausted(self) -> bool:
        n = _batches_in(self.loader)
        limit = self.batches_per_epoch if n is None else min(n, self.batches_per_epoch or n)
        return limit is not None and self.state.position >= limit

    def _one_step(self, batch: Any) -> None:
        for hook in self.hooks:
            hook.before_step(self)
        lr = self.step_fn.optimizer.param_groups[0]["lr"]
        values = self.step_fn.run(self, batch)
        if self.average_gradients:
            ddp.average_buffers(self.module)
        n = int(values.pop("n", 1))
        values = ddp.mean_over_ranks({k: _number(v) for k, v in values.items()})
        loss = values.get("loss")
        if loss is not None and not math.isfinite(loss):
            raise FloatingPointError(
                f"The loss became {loss} at step {self.state.step + 1}; lower the learning "
                "rate, check the inputs and targets, or switch mixed precision off.")
        self.state.step += 1
        self.state.position += 1
        self.state.images += n * ddp.world_size()
        self.state.rows.append({"step": self.state.step, "epoch": self.state.epoch + 1, "lr": lr,
                                **values, "images": n * ddp.world_size(),
                                "seconds": self._seconds0 + self.elapsed()})
        for hook in self.hooks:
            hook.after_step(self)
        self.bar.update(1)
        if self.state.step % 10 == 1 and loss is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}")

    # -- checkpoints
    def _hook_states(self) -> dict[str, Any]:
        return {f"{i}:{type(h).__name__}": h.state_dict() for i, h in enumerate(self.hooks)}

    def save(self, path: Any, meta: Optional[Mapping[str, Any]] = None) -> None:
        """The resumable state to ``path`` (rank 0 only; other ranks do nothing)."""
        if not ddp.is_main():
            return
        state = asdict(self.state)
        rows = state.pop("rows")
        state["seconds"] = self._seconds0 + self.elapsed()
        save_checkpoint(path, self.module, meta, None, self.state.epoch, history=rows,
                        extra={"step": self.state.step, "loop": state},
                        rng={"now": rng_state([self.loader]), "epoch_start": self._epoch_rng},
                        states={"step": self.step_fn.state_dict(), "hooks": self._hook_states(),
                                "scaler": self.scaler.state_dict() if self.scaler else None})

    def _resume(self, path: Any) -> None:
        ckpt = load_checkpoint(path, self.module, map_location=self.device)
        if "loop" not in (ckpt.get("extra") or {}) or "states" not in ckpt:
            raise ValueError(f"{path} was not written by this training loop (an older bloodlib "
                             "or another program); delete it to start afresh.")
        loop = ckpt["extra"]["loop"]
        self.state = LoopState(**{**loop, "rows": list(ckpt.get("history") or [])})
        self.step_fn.load_state_dict(ckpt["states"]["step"])
        saved_hooks = ckpt["states"]["hooks"]
        for key, hook in zip(self._hook_states(), self.hooks):
            if key in saved_hooks:
                hook.load_state_dict(saved_hooks[key])
        if self.scaler is not None and ckpt["states"].get("scaler"):
            self.scaler.load_state_dict(ckpt["states"]["scaler"])
        rng = ckpt.get("rng_state") or {}
        if self.state.position > 0 and rng.get("epoch_start") is not None:
            self._replay_epoch(rng["epoch_start"])
        if rng.get("now") is not None:
            set_rng_state(rng["now"], [self.loader])

    def _replay_epoch(self, epoch_rng: Mapping[str, Any]) -> None:
        """Start the interrupted epoch as it started then and skip the batches used."""
        sampler = getattr(self.loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(self.state.epoch)
        set_rng_state(epoch_rng, [self.loader])
        self._epoch_rng, self._iterator = dict(epoch_rng), iter(self.loader)
        for _ in range(self.state.position):
            next(self._iterator)
