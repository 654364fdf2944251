"""Training and evaluation of torchvision detectors (Faster R-CNN, Mask R-CNN, MCNet).

The importable, tested equivalent of torchvision's ``references/detection`` engine:

* :func:`train_detector` — SGD (momentum 0.9, weight decay 1e-4 as paper 1), a linear
  warm-up, optional step decay, a list of :class:`Stage` (paper 1 section 4.1: heads,
  then from ResNet stage 4, then all layers — :data:`PAPER1_STAGES`), gradient clipping,
  AMP on CUDA, a tqdm bar, a time budget, checkpoints (with the shared contract's
  ``meta``) and resume, an optional periodic evaluation keeping the best weights, and
  one logged row per step with every loss component (a DataFrame).
* :func:`predict_coco` / :func:`evaluate_detector` — COCO results of a model over a
  loader and their COCO metrics (pycocotools, through :func:`bloodlib.metrics.coco_evaluate`),
  ``bbox`` or ``segm``; for ``segm`` MCNet's mask scores rank the masks.
* :func:`detection_val_loss` — the loss components on held-out data (paper 2's
  validation loss).
* :func:`detection_transforms`, :class:`Preprocess` — flips (torchvision v2 moves the
  boxes and masks) and a uint8 image function (CLAHE, stain normalisation) as a
  dataset transform.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import nn

from . import distributed as ddp
from .checkpoint import resolve_resume
from .device import device_plan
from .loop import (CheckpointHook, Hook, LossDictStep, PeriodicEval, TrainLoop,
                   eval_mode as _eval_mode, images_to_device, progress_bar as _bar,
                   targets_to_device, warmup_scheduler)
from ..metrics.detection import coco_evaluate, torchvision_to_coco_results
import pandas as pd
from torchvision.transforms import v2
from torchvision import tv_tensors

__all__ = ["Stage", "PAPER1_STAGES", "LOSS_KEYS", "LOSS_LABELS", "DetectionTraining",
           "train_detector", "scale_stages", "predict_coco", "evaluate_detector",
           "detection_val_loss", "detection_transforms", "Preprocess", "targets_to_device",
           "StageSchedule",
           "loss_summary"]

#: torchvision's loss names plus MCNet's, in the order they are logged.
LOSS_KEYS = ("loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness",
             "loss_rpn_box_reg", "loss_mask_iou")
#: Short names (paper 2 Table 3 calls them class, frame (box) and masking losses).
LOSS_LABELS = {"loss": "total", "loss_classifier": "class", "loss_box_reg": "box",
               "loss_mask": "mask", "loss_objectness": "objectness",
               "loss_rpn_box_reg": "rpn box", "loss_mask_iou": "mask IoU"}


@dataclass(frozen=True)
class Stage:
    """A phase of training: ``iterations`` steps at learning rate ``lr`` with the layers
    ``trainable`` names trainable (see :func:`bloodlib.models.detection.set_trainable_stage`;
    None leaves the model as built)."""

    name: str
    iterations: int
    lr: float
    trainable: Optional[str] = None


#: Paper 1 section 4.1: heads 50k iterations at 1e-3, from stage 4 80k at 1e-3, all 40k at 1e-4.
PAPER1_STAGES = (Stage("heads", 50_000, 1e-3, "heads"), Stage("stage 4+", 80_000, 1e-3, "4+"),
                 Stage("all", 40_000, 1e-4, "all"))


def scale_stages(stages: Sequence[Stage], total_iterations: int) -> list[Stage]:
    """The same stages with their iteration counts scaled to ``total_iterations`` in all
    (each at least 1)."""
    total = sum(s.iterations for s in stages)
    return [Stage(s.name, max(1, round(s.iterations * total_iterations / total)), s.lr,
                  s.trainable) for s in stages]


@dataclass
class DetectionTraining:
    """What :func:`train_detector` did: ``log`` (one row per step: step, epoch, stage,
    lr, loss, the loss components, seconds), ``evals`` (one row per evaluation),
    why it stopped, wall time and throughput."""

    log: Any  # pandas DataFrame
    evals: Any  # pandas DataFrame
    stop_reason: str
    seconds: float
    iterations: int
    images: int
    best_step: Optional[int] = None
    best_score: Optional[float] = None
    checkpoint: Optional[Path] = None
    extra: dict = field(default_factory=dict)

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("nan")


# ----------------------------------------------------------------------------- data helpers
class Preprocess(nn.Module):
    """Apply ``fn`` (RGB uint8 (H, W, 3) -> same shape) to a float (3, H, W) image in a
    ``(image, target)`` transform pipeline; the target passes through."""

    def __init__(self, fn: Callable[[np.ndarray], np.ndarray]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, image: torch.Tensor, target: Any = None) -> Any:
        arr = (image.as_subclass(torch.Tensor).permute(1, 2, 0).clamp(0, 1) * 255).round()
        out = np.asarray(self.fn(arr.to(torch.uint8).numpy()))
        if out.shape != tuple(arr.shape) or out.dtype != np.uint8:
            raise ValueError(f"Preprocessing returned {out.dtype} {out.shape}; it must keep the "
                             f"image's shape {tuple(arr.shape)} and uint8 dtype.")
        new = tv_tensors.Image(torch.from_numpy(out.transpose(2, 0, 1).copy()).float() / 255.0)
        return new if target is None else (new, target)


def detection_transforms(train: bool = True, hflip: float = 0.5, vflip: float = 0.5,
                         preprocess: Optional[Callable[[np.ndarray], np.ndarray]] = None):
    """A torchvision v2 pipeline for :class:`bloodlib.data.datasets.DetectionDataset`:
    ``preprocess`` (e.g. CLAHE) first, then, when ``train``, random horizontal and vertical
    flips (smears have no up or left). None when there is nothing to do."""
    steps: list[Any] = [Preprocess(preprocess)] if preprocess is not None else []
    if train and hflip > 0:
        steps.append(v2.RandomHorizontalFlip(hflip))
    if train and vflip > 0:
        steps.append(v2.RandomVerticalFlip(vflip))
    return v2.Compose(steps) if steps else None


# ----------------------------------------------------------------------------- training
def _stage_at(stages: Sequence[Stage], step: int) -> int:
    """Index of the stage that global ``step`` (0-based) falls in."""
    start = 0
    for i, s in enumerate(stages):
        if step < start + s.iterations:
            return i
        start += s.iterations
    return len(stages) - 1


class StageSchedule(Hook):
    """The detector's learning rate and trainable layers: each :class:`Stage` in turn
    (its ``trainable`` layers, its learning rate), with torch's ``LinearLR`` warm-up and a
    decay by ``lr_gamma`` at each step count in ``lr_steps`` over the whole run. Under a
    time budget a drop also comes at the same fraction of the budget when that is reached
    first (milestone 750 of 1000 steps: at step 750 or at 75 % of the time), so a run that
    the clock stops still gets its low-rate steps. Writes the stage's name into each row."""

    def __init__(self, optimizer: torch.optim.Optimizer, stages: Sequence[Stage],
                 warmup_iters: int, warmup_factor: float, lr_steps: Sequence[int],
                 lr_gamma: float) -> None:
        self.optimizer, self.stages = optimizer, list(stages)
        for g in optimizer.param_groups:
            g["lr"] = g["initial_lr"] = self.stages[0].lr
        self.scheduler = warmup_scheduler(optimizer, warmup_iters, warmup_factor)
        self.lr_steps, self.lr_gamma = sorted(int(m) for m in lr_steps), float(lr_gamma)
        self.total_steps = sum(s.iterations for s in self.stages)
        self.drops: Optional[int] = 0  # decays applied so far (None: count them from the step)
        self.stage: int = -1  # index of the stage in force
        self._applied = False  # its trainable layers set in this process

    def before_train(self, loop: TrainLoop) -> None:
        if self.drops is None:  # a checkpoint of the step-only schedule: its drops are in the lr
            self.drops = self.drops_due(loop.state.step, 0.0)

    def before_step(self, loop: TrainLoop) -> None:
        i = _stage_at(self.stages, loop.state.step)
        if i == self.stage and self._applied:
            return
        if 0 <= self.stage != i:  # a new stage: its learning rate, the schedule kept
            for g in self.optimizer.param_groups:
                g["lr"] *= self.stages[i].lr / self.stages[self.stage].lr
        if self.stages[i].trainable is not None:
            from ..models.detection import set_trainable_stage
            set_trainable_stage(loop.module, self.stages[i].trainable)
        self.stage, self._applied = i, True

    def drops_due(self, step: int, time_fraction: float) -> int:
        """How many of ``lr_steps`` a run ``step`` steps and ``time_fraction`` of its time
        budget in has passed."""
        return sum(step >= m or time_fraction >= m / self.total_steps for m in self.lr_steps)

    def _drops_now(self, loop: TrainLoop) -> int:
        due = self.drops_due(loop.state.step, 0.0)
        budget = loop.time_budget_s
        if budget and due < len(self.lr_steps):
            by_time = self.drops_due(loop.state.step, loop.elapsed() / budget)
            if ddp.any_rank(by_time > due):  # under torchrun every rank drops at one step
                due += 1
        return due

    def after_step(self, loop: TrainLoop) -> None:
        loop.state.rows[-1]["stage"] = self.stages[self.stage].name
        if self.scheduler is not None:
            self.scheduler.step()
        due = self._drops_now(loop)
        if due > self.drops:
            for g in self.optimizer.param_groups:
                g["lr"] *= self.lr_gamma ** (due - self.drops)
            self.drops = due
        if loop.state.step % 10 == 1 and loop.bar is not None:
            loop.bar.set_postfix(loss=f"{loop.state.rows[-1]['loss']:.3f}",
                                 stage=self.stages[self.stage].name)

    def state_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "drops": self.drops,
                "scheduler": self.scheduler.state_dict() if self.scheduler else None}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.stage, self._applied = int(state["stage"]), False
        self.drops = state.get("drops")
        saved = state.get("scheduler")
        if saved is not None and "_schedulers" in saved:  # warm-up chained with MultiStepLR
            saved = saved["_schedulers"][0] if len(saved["_schedulers"]) > 1 else None
        if self.scheduler is not None and saved is not None and "start_factor" in saved:
            self.scheduler.load_state_dict(saved)


def train_detector(model: nn.Module, loader: Iterable, *, iterations: Optional[int] = None,
                   stages: Optional[Sequence[Stage]] = None, lr: float = 0.01,
                   momentum: float = 0.9, weight_decay: float = 1e-4, warmup_iters: int = 100,
                   warmup_factor: float = 1e-3, lr_steps: Sequence[int] = (),
                   lr_gamma: float = 0.1, grad_clip: Optional[float] = 10.0,
                   device: Any = "cpu", amp: Any = "auto",
                   checkpoint_path: Optional[str | Path] = None,
                   checkpoint_meta: Optional[Mapping[str, Any]] = None,
                   checkpoint_every: Optional[int] = None,
                   checkpoint_every_s: Optional[float] = 60.0,
                   resume_from: Any = None,
                   time_budget_s: Optional[float] = None,
                   evaluate: Optional[Callable[[nn.Module], Mapping[str, float]]] = None,
                   eval_every: Optional[int] = None, monitor: str = "AP50",
                   keep_best: bool = True, progress: bool = True) -> DetectionTraining:
    """Train a torchvision detector on ``loader`` (batches of ``(images, targets)`` as
    :func:`bloodlib.data.datasets.collate_detection` makes them) with the one training
    loop (:class:`~bloodlib.engine.loop.TrainLoop`, a :class:`LossDictStep`).

    Either ``iterations`` at ``lr`` (one stage, trainable layers as built) or ``stages``.
    SGD (``momentum``, ``weight_decay``); the learning rate rises linearly from
    ``warmup_factor * lr`` over ``warmup_iters`` steps and is multiplied by ``lr_gamma``
    at each step count in ``lr_steps``, or at that fraction of ``time_budget_s`` when it
    comes first (:class:`StageSchedule`). Gradients are clipped to
    norm ``grad_clip``. ``time_budget_s`` stops after the step that passes it.
    ``evaluate(model) -> {metric: value}`` runs every ``eval_every`` steps and at the end;
    with ``keep_best`` the model ends with the weights scoring best on ``monitor``.
    ``checkpoint_path`` gets the final weights with ``checkpoint_meta``, and the latest
    state after the first step, then every ``checkpoint_every`` steps and every
    ``checkpoint_every_s`` seconds, and on Ctrl-C; ``resume_from`` continues such a
    checkpoint (weights, optimizer, schedule, step, log, and the random-number state and
    position in the epoch, so the batches are those of an uninterrupted run); ``"auto"``
    continues ``checkpoint_path`` when it exists. Raises FloatingPointError when the loss
    stops being finite. Under torchrun the model trains with DistributedDataParallel.
    """
    if stages is None:
        if iterations is None or iterations < 1:
            raise ValueError("Give iterations >= 1 or a list of stages.")
        stages = [Stage("train", int(iterations), float(lr), None)]
    stages = list(stages)
    device = ddp.local_device(device) if ddp.is_distributed() else torch.device(device)
    model.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=stages[0].lr, momentum=momentum,
                                weight_decay=weight_decay)
    hooks: list[Hook] = [StageSchedule(optimizer, stages, warmup_iters, warmup_factor,
                                       lr_steps, lr_gamma)]
    evaluation = PeriodicEval(evaluate, eval_every, monitor, keep_best) if evaluate else None
    hooks += [evaluation] if evaluation is not None else []
    if checkpoint_path is not None:
        hooks.append(CheckpointHook(checkpoint_path, checkpoint_meta, every_s=checkpoint_every_s,
                                    every_steps=checkpoint_every, at="step"))
    resume = resolve_resume(resume_from, Path(checkpoint_path) if checkpoint_path else None)
    loop = TrainLoop(model, LossDictStep(optimizer, grad_clip), loader,
                     max_steps=sum(s.iterations for s in stages), time_budget_s=time_budget_s,
                     hooks=hooks, device=device, plan=device_plan(device, amp, False),
                     resume_from=resume, progress=progress, desc="train")
    state = loop.run()
    model.train()
    log = pd.DataFrame(state.rows).drop(columns="images", errors="ignore")
    return DetectionTraining(
        log=log, evals=pd.DataFrame(evaluation.evals if evaluation else []),
        stop_reason=state.stop_reason, seconds=state.seconds, iterations=state.step,
        images=state.images, best_step=evaluation.best_step if evaluation else None,
        best_score=evaluation.best_score if evaluation else None,
        checkpoint=Path(checkpoint_path) if checkpoint_path else None)


def loss_summary(log: Any, last: int = 20) -> dict[str, float]:
    """Mean of the last ``last`` steps of each loss column: ``total_loss``,
    ``class_loss``, ``box_loss``, ``mask_loss``, ... (paper 2 Table 3's names)."""
    names = {"loss": "total_loss", "loss_classifier": "class_loss", "loss_box_reg": "box_loss",
             "loss_mask": "mask_loss", "loss_objectness": "objectness_loss",
             "loss_rpn_box_reg": "rpn_box_loss", "loss_mask_iou": "mask_iou_loss"}
    tail = log.tail(last)
    return {new: float(tail[old].mean()) for old, new in names.items()
            if old in tail and tail[old].notna().any()}


# ----------------------------------------------------------------------------- evaluation
@torch.no_grad()
def detection_val_loss(model: nn.Module, loader: Iterable, device: Any = "cpu",
                       max_batches: Optional[int] = None) -> dict[str, float]:
    """Mean loss components (and ``loss``) over ``loader`` without updating anything.

    torchvision detectors return losses only in training mode, so the model runs in
    training mode with its batch norms (and dropout) switched to eval."""
    device = torch.device(device)
    was = model.training
    model.train()
    for m in model.modules():
        if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.Dropout)):
            m.eval()
    sums: dict[str, float] = {}
    n = 0
    try:
        for b, (imgs, targets) in enumerate(loader):
            if max_batches is not None and b >= max_batches:
                break
            losses = model(images_to_device(imgs, device), targets_to_device(targets, device))
            sums["loss"] = sums.get("loss", 0.0) + float(sum(losses.values()))
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            n += 1
    finally:
        model.train(was)
    return {k: v / n for k, v in sums.items()} if n else {"loss": float("nan")}


@torch.no_grad()
def predict_coco(model: nn.Module, loader: Iterable, device: Any = "cpu",
                 with_masks: Optional[bool] = None, mask_threshold: float = 0.5,
                 progress: bool = False) -> list[dict]:
    """COCO result dicts of ``model`` on every image of ``loader`` (targets must carry
    ``image_id``): ``bbox`` and ``score`` (the class score), plus ``segmentation`` (RLE
    of the mask > ``mask_threshold``) and ``mask_score`` (MCNet's class score x
    predicted IoU, else the class score) when the model predicts masks."""
    device = torch.device(device)
    results: list[dict] = []
    with _eval_mode(model):
        model.to(device)
        for imgs, targets in _bar(loader, None, "predict", progress, leave=False):
            outs = model(images_to_device(imgs, device))
            ids = [int(t["image_id"]) for t in targets]
            masks = ("masks" in outs[0]) if with_masks is None and outs else bool(with_masks)
            res = torchvision_to_coco_results(outs, ids, with_masks=masks,
                                              mask_threshold=mask_threshold)
            if masks:
                ms = torch.cat([o.get("mask_scores", o["scores"]).detach().cpu() for o in outs])
                for r, s in zip(res, ms.tolist()):
                    r["mask_score"] = float(s)
            results += res
    return results


def evaluate_detector(model: Optional[nn.Module], loader: Optional[Iterable], coco_gt: dict,
                      iou_type: str = "bbox", *, device: Any = "cpu",
                      predictions: Optional[Sequence[dict]] = None, max_dets: int = 100,
                      use_mask_scores: bool = True):
    """COCO metrics (:class:`bloodlib.metrics.DetectionReport`) of ``model`` on ``loader``
    against ``coco_gt``; ``iou_type`` "bbox" or "segm".

    Pass ``predictions`` (from :func:`predict_coco`) to score them without running the
    model again (``model`` and ``loader`` may then be None). For ``segm`` the masks are
    ranked by ``mask_score`` (MCNet's mask scoring) when ``use_mask_scores``.
    """
    if predictions is None:
        if model is None or loader is None:
            raise ValueError("Give a model and a loader, or predictions.")
        predictions = predict_coco(model, loader, device, with_masks=iou_type == "segm" or None)
    preds = list(predictions)
    if iou_type == "segm":
        if preds and "segmentation" not in preds[0]:
            raise ValueError("These predictions have no masks; use iou_type='bbox'.")
        if use_mask_scores:
            preds = [{**p, "score": p.get("mask_score", p["score"])} for p in preds]
    return coco_evaluate(coco_gt, preds, iou_type=iou_type, max_dets=max_dets)
