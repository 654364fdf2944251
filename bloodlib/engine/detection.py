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

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import nn

from .checkpoint import load_checkpoint, save_checkpoint
from .rng import ResumableBatches, rng_state, set_rng_state
from .checkpoint import resolve_resume
from .device import device_plan
from .trainer import _autocast, _bar, _eval_mode

__all__ = ["Stage", "PAPER1_STAGES", "LOSS_KEYS", "LOSS_LABELS", "DetectionTraining",
           "train_detector", "scale_stages", "predict_coco", "evaluate_detector",
           "detection_val_loss", "detection_transforms", "Preprocess", "targets_to_device",
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
        from torchvision import tv_tensors
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
    from torchvision.transforms import v2
    steps: list[Any] = [Preprocess(preprocess)] if preprocess is not None else []
    if train and hflip > 0:
        steps.append(v2.RandomHorizontalFlip(hflip))
    if train and vflip > 0:
        steps.append(v2.RandomVerticalFlip(vflip))
    return v2.Compose(steps) if steps else None


def targets_to_device(targets: Sequence[Mapping[str, Any]], device: torch.device
                      ) -> list[dict[str, torch.Tensor]]:
    """Plain tensors (boxes, labels, masks) on ``device``, as torchvision's models want."""
    out = []
    for t in targets:
        d = {}
        for k in ("boxes", "labels", "masks"):
            if k in t:
                d[k] = torch.as_tensor(t[k]).as_subclass(torch.Tensor).to(device)
        d["boxes"] = d["boxes"].float().reshape(-1, 4)
        out.append(d)
    return out


def _images_to_device(images: Sequence[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    return [torch.as_tensor(i).as_subclass(torch.Tensor).to(device, non_blocking=True)
            for i in images]


# ----------------------------------------------------------------------------- training
def _stage_at(stages: Sequence[Stage], step: int) -> tuple[int, Stage, int]:
    """(index, stage, first step of the stage) of global ``step`` (0-based)."""
    start = 0
    for i, s in enumerate(stages):
        if step < start + s.iterations:
            return i, s, start
        start += s.iterations
    return len(stages) - 1, stages[-1], start - stages[-1].iterations


def _lr_at(stages: Sequence[Stage], step: int, warmup_iters: int, warmup_factor: float,
           lr_steps: Sequence[int], lr_gamma: float) -> float:
    _, stage, _ = _stage_at(stages, step)
    lr = stage.lr * lr_gamma ** sum(step >= m for m in lr_steps)
    if step < warmup_iters:
        alpha = step / max(1, warmup_iters)
        lr *= warmup_factor * (1 - alpha) + alpha
    return lr


def _apply_stage(model: nn.Module, stage: Stage) -> None:
    if stage.trainable is not None:
        from ..models.detection import set_trainable_stage
        set_trainable_stage(model, stage.trainable)


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
    :func:`bloodlib.data.datasets.collate_detection` makes them).

    Either ``iterations`` at ``lr`` (one stage, trainable layers as built) or ``stages``.
    The learning rate rises linearly from ``warmup_factor * lr`` over ``warmup_iters``
    steps and is multiplied by ``lr_gamma`` at each step count in ``lr_steps``. Gradients
    are clipped to norm ``grad_clip``. ``time_budget_s`` stops after the step that passes
    it. ``evaluate(model) -> {metric: value}`` runs every ``eval_every`` steps and at the
    end; with ``keep_best`` the model ends with the weights scoring best on ``monitor``.
    ``checkpoint_path`` gets the final weights with ``checkpoint_meta``, and the latest
    state after the first step, then every ``checkpoint_every`` steps and every
    ``checkpoint_every_s`` seconds; ``resume_from`` continues such a checkpoint (weights,
    optimizer, step, log, and the random-number state and position in the epoch, so the
    batches are those of an uninterrupted run); ``"auto"`` continues ``checkpoint_path``
    when it exists. Raises FloatingPointError when the loss stops being finite.
    """
    import pandas as pd
    if stages is None:
        if iterations is None or iterations < 1:
            raise ValueError("Give iterations >= 1 or a list of stages.")
        stages = [Stage("train", int(iterations), float(lr), None)]
    stages = list(stages)
    total = sum(s.iterations for s in stages)
    device = torch.device(device)
    plan = device_plan(device, amp, channels_last=False)
    amp_dtype, scaler = plan.amp_dtype, plan.grad_scaler()
    model.to(device)
    params = [p for p in model.parameters()]
    optimizer = torch.optim.SGD(params, lr=stages[0].lr, momentum=momentum,
                                weight_decay=weight_decay)
    rows: list[dict[str, Any]] = []
    evals: list[dict[str, Any]] = []
    step, images, elapsed0 = 0, 0, 0.0
    batches = ResumableBatches(loader)
    resume_from = resolve_resume(resume_from, Path(checkpoint_path) if checkpoint_path else None)
    if resume_from is not None:
        ckpt = load_checkpoint(resume_from, model, map_location=device, optimizer=optimizer)
        step = int(ckpt["extra"].get("step", 0))
        images = int(ckpt["extra"].get("images", 0))
        elapsed0 = float(ckpt["extra"].get("seconds", 0.0))
        rows = list(ckpt.get("history") or [])
        evals = list(ckpt["extra"].get("evals", []))
        checkpoint_meta = ckpt.get("meta") if checkpoint_meta is None else checkpoint_meta
        if ckpt.get("rng_state") is not None:
            batches.restore(ckpt["rng_state"]["batches"])
            set_rng_state(ckpt["rng_state"]["now"], [loader])
    best = {"score": None, "step": None, "state": None}
    stage_idx = -1
    t0 = time.monotonic()
    deadline = t0 + time_budget_s if time_budget_s is not None else None
    stop_reason = "completed"

    def run_eval() -> None:
        if evaluate is None:
            return
        with _eval_mode(model):
            metrics = {k: float(v) for k, v in evaluate(model).items()}
        evals.append({"step": step, **metrics})
        score = metrics.get(monitor)
        if score is not None and math.isfinite(score) and \
                (best["score"] is None or score > best["score"]):
            best.update(score=score, step=step)
            if keep_best:
                best["state"] = {k: v.detach().to("cpu", copy=True)
                                 for k, v in model.state_dict().items()}

    last_save = [time.monotonic(), None]

    def save() -> None:
        if checkpoint_path is not None:
            save_checkpoint(checkpoint_path, model, checkpoint_meta, optimizer, history=rows,
                            extra={"step": step, "images": images, "evals": evals,
                                   "seconds": elapsed0 + time.monotonic() - t0},
                            rng={"now": rng_state([loader]), "batches": batches.state()})
            last_save[:] = [time.monotonic(), step]

    def save_due() -> bool:
        return (last_save[1] is None or bool(checkpoint_every and step % checkpoint_every == 0)
                or (checkpoint_every_s is not None
                    and time.monotonic() - last_save[0] >= checkpoint_every_s))

    model.train()
    bar = _bar(range(step, total), total - step, "train", progress, leave=False)
    for _ in bar:
        i, stage, _ = _stage_at(stages, step)
        if i != stage_idx:
            _apply_stage(model, stage)
            stage_idx = i
        cur_lr = _lr_at(stages, step, warmup_iters, warmup_factor, lr_steps, lr_gamma)
        for g in optimizer.param_groups:
            g["lr"] = cur_lr
        epoch, (imgs, targets) = next(batches)
        imgs = _images_to_device(imgs, device)
        targets = targets_to_device(targets, device)
        with _autocast(device, amp_dtype):
            loss_dict = model(imgs, targets)
        loss = sum(loss_dict.values())
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(
                f"Detection loss became {value} at step {step} "
                f"({ {k: float(v.detach()) for k, v in loss_dict.items()} }); lower the learning rate, "
                "lengthen the warm-up or check the boxes.")
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], grad_clip)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        step += 1
        images += len(imgs)
        row = {"step": step, "epoch": epoch + 1, "stage": stage.name, "lr": cur_lr, "loss": value,
               **{k: float(loss_dict[k].detach()) if k in loss_dict else float("nan")
                  for k in LOSS_KEYS},
               "seconds": elapsed0 + time.monotonic() - t0}
        rows.append(row)
        if step % 10 == 1 or step == total:
            bar.set_postfix(loss=f"{value:.3f}", stage=stage.name)
        if eval_every and step % eval_every == 0 and step < total:
            run_eval()
            model.train()
        if save_due():
            save()
        if deadline is not None and time.monotonic() > deadline and step < total:
            stop_reason = "time_budget"
            break
    bar.close()
    seconds = time.monotonic() - t0
    if not evals or evals[-1]["step"] != step:
        run_eval()
    if keep_best and best["state"] is not None and best["step"] != step:
        model.load_state_dict(best["state"])
    model.train()
    save()
    log = pd.DataFrame(rows)
    for k in LOSS_KEYS:  # drop the components this model never produced
        if k in log and log[k].isna().all():
            log = log.drop(columns=k)
    return DetectionTraining(log=log, evals=pd.DataFrame(evals), stop_reason=stop_reason,
                             seconds=elapsed0 + seconds, iterations=step, images=images,
                             best_step=best["step"], best_score=best["score"],
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
            losses = model(_images_to_device(imgs, device), targets_to_device(targets, device))
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
    from ..metrics.detection import torchvision_to_coco_results
    device = torch.device(device)
    results: list[dict] = []
    with _eval_mode(model):
        model.to(device)
        for imgs, targets in _bar(loader, None, "predict", progress, leave=False):
            outs = model(_images_to_device(imgs, device))
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
    from ..metrics.detection import coco_evaluate
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
