"""Paper 3's training: Mask R-CNN / R-Mask R-CNN, the U-Net and FCM baselines, one model end
to end, the ablations."""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ...engine.checkpoint import Checkpoints, resolve_resume
from ...engine.device import device_plan
from ...engine.loop import CheckpointHook, LossDictStep, SchedulerHook, TrainLoop
from ...models.rmaskrcnn import build_plain_maskrcnn, build_rmaskrcnn, variant_name
from ...runtime import seed_everything
from ...classical import connected_instances, fcm_segment
from ...losses import CEDiceLoss
from ...models import UNet
from .data import CellDataset, collate, EvalSet, to_uint8
from ..configs import BloodCancerConfig
from .settings import MAIN_VARIANT
from .evaluate import evaluate_predictions, Prediction


# ============================================================================ models
def build_model(kind: str, settings: BloodCancerConfig, variant: Optional[Mapping[str, Any]] = None
                ) -> nn.Module:
    """``"maskrcnn"`` (plain) or ``"rmaskrcnn"`` (``variant`` overrides
    :data:`MAIN_VARIANT`) with the profile's backbone, image size and channels."""
    common = dict(backbone=settings.backbone, pretrained_backbone=settings.pretrained_backbone,
                  image_size=int(settings.image_size), fpn_channels=int(settings.fpn_channels),
                  mask_channels=int(settings.mask_channels),
                  box_detections_per_img=int(settings.detections_per_img),
                  rpn_pre_nms_top_n_train=1000, rpn_post_nms_top_n_train=500,
                  rpn_pre_nms_top_n_test=500, rpn_post_nms_top_n_test=250,
                  box_batch_size_per_image=128)
    if kind == "maskrcnn":
        return build_plain_maskrcnn(1, **common)
    if kind == "rmaskrcnn":
        return build_rmaskrcnn(1, **{**MAIN_VARIANT, **dict(variant or {})},
                               residual_attention=bool(settings.residual_attention),
                               attention_logit_bound=settings.attention_logit_bound,
                               mask_fusion=str(settings.mask_fusion),
                               mask_head_depth=int(settings.mask_head_depth), **common)
    raise ValueError(f"Unknown model kind {kind!r}; choose 'maskrcnn' or 'rmaskrcnn'.")


@dataclass
class TrainLog:
    """Per-step training losses, wall time and why training stopped."""

    rows: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    stop_reason: str = "steps"

    @property
    def steps(self) -> int:
        return len(self.rows)

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)


@dataclass(frozen=True)
class Optimization:
    """How :func:`train_steps` optimises: ``optimizer`` ("sgd" or "adamw"), its rate and
    decay, a linear warm-up over ``warmup_steps``, ``lr_schedule`` ("constant" or
    "cosine") and gradient-norm clipping at ``grad_clip``."""

    optimizer: str = "adamw"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_steps: int = 1
    lr_schedule: str = "constant"
    grad_clip: float = 10.0

    @classmethod
    def of(cls, settings: BloodCancerConfig, **changes: Any) -> "Optimization":
        """The profile's optimisation settings, with ``changes``."""
        return replace(cls(settings.optimizer, settings.lr, settings.momentum,
                           settings.weight_decay, settings.warmup_steps, settings.lr_schedule,
                           settings.grad_clip), **changes)


def _optimizer(params: Sequence[torch.Tensor], optim: Optimization) -> torch.optim.Optimizer:
    if optim.optimizer == "sgd":
        return torch.optim.SGD(params, lr=float(optim.lr), momentum=float(optim.momentum),
                               weight_decay=float(optim.weight_decay))
    if optim.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=float(optim.lr),
                                 weight_decay=float(optim.weight_decay))
    raise ValueError(f"optimizer must be 'sgd' or 'adamw', not {optim.optimizer!r}.")


def _lr_factor(step: int, elapsed: float, steps: int, budget: Optional[float],
               optim: Optimization) -> float:
    """Linear warm-up over ``warmup_steps``; then constant, or with ``lr_schedule="cosine"``
    a cosine decay to 5 % over the run — its progress is the larger of steps done / steps
    and time used / time budget, so a time-limited run still ends at the low rate."""
    warm = min(1.0, (step + 1) / max(1, int(optim.warmup_steps)))
    if optim.lr_schedule != "cosine":
        return warm
    progress = step / max(1, steps)
    if budget:
        progress = max(progress, elapsed / float(budget))
    return warm * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def train_steps(model: nn.Module, loader: DataLoader, loss_fn: Callable[[nn.Module, Any], dict],
                optim: Optimization, steps: int, time_budget_s: Optional[float],
                device: Any = "cpu", label: Optional[str] = None,
                checkpoints: Optional[Checkpoints] = None) -> TrainLog:
    """Train for ``steps`` batches (cycling over ``loader``) or until ``time_budget_s``
    on the one training loop; ``loss_fn(model, batch)`` returns named losses that are
    summed. Learning rate from :func:`_lr_factor` (a ``LambdaLR``); gradient-norm clipping
    at ``optim.grad_clip``. With a ``label`` and a ``checkpoints`` folder (notebook runs:
    ``run.checkpoints``) the state is checkpointed after the first step and every 60 s, and
    ``checkpoints.resume`` continues it with the same batches (the time budget starts
    afresh)."""
    device = torch.device(device)
    model.to(device)
    opt = _optimizer([p for p in model.parameters() if p.requires_grad], optim)
    loop_ref: list[TrainLoop] = []
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: _lr_factor(
        step, loop_ref[0].elapsed() if loop_ref else 0.0, int(steps), time_budget_s, optim))
    hooks: list[Any] = [SchedulerHook(schedule, "step")]
    ckpt_path, resume = (checkpoints or Checkpoints()).for_label(label) if label else (None, None)
    if ckpt_path is not None:
        hooks.append(CheckpointHook(ckpt_path, None, every_s=60.0, at="step"))
    step = LossDictStep(opt, float(optim.grad_clip),
                        forward=lambda m, batch, _device: loss_fn(m, batch))
    loop = TrainLoop(model, step, loader, max_steps=int(steps), time_budget_s=time_budget_s,
                     hooks=hooks, device=device, plan=device_plan(device, False, False),
                     resume_from=resolve_resume(resume, ckpt_path), progress=False)
    loop_ref.append(loop)
    state = loop.run()
    model.eval()
    rows = [{k: v for k, v in r.items() if k not in ("epoch", "images")} for r in state.rows]
    return TrainLog(rows=rows, seconds=loop.elapsed(),
                    stop_reason="steps" if state.stop_reason == "completed" else state.stop_reason)


def _detection_loss(device: torch.device) -> Callable[[nn.Module, Any], dict]:
    def fn(model: nn.Module, batch: Any) -> dict:
        images, targets = batch
        return model([i.to(device) for i in images],
                     [{k: v.to(device) if isinstance(v, torch.Tensor) else v
                       for k, v in t.items()} for t in targets])
    return fn


def train_detector(model: nn.Module, coco: dict, settings: BloodCancerConfig, device: Any = "cpu",
                   seed: int = 0, steps: Optional[int] = None,
                   time_budget_s: Optional[float] = None,
                   checkpoints: Optional[Checkpoints] = None) -> TrainLog:
    """Train a torchvision Mask R-CNN on ``coco`` (flips, ``image_size``, batch size and
    optimiser from the profile) for ``steps`` (default ``train_steps``) or the time budget."""
    seed_everything(seed)
    loader = DataLoader(CellDataset(coco, int(settings.image_size), train=True),
                        batch_size=int(settings.batch_size), shuffle=True, collate_fn=collate,
                        num_workers=int(settings.num_workers),
                        generator=torch.Generator().manual_seed(seed))
    steps = int(settings.train_steps if steps is None else steps)
    budget = settings.time_budget_s if time_budget_s is None else time_budget_s
    label = (f"{getattr(model, 'bloodlib_config', {}).get('architecture', type(model).__name__)}_"
             f"{len(coco['images'])}img_{steps}steps_s{seed}_{_config_tag(model)}")
    return train_steps(model, loader, _detection_loss(torch.device(device)),
                       Optimization.of(settings), steps,
                       budget, device, label=label, checkpoints=checkpoints)


def _config_tag(model: nn.Module) -> str:
    """A short hash of a model's build configuration (variants get their own checkpoints)."""
    cfg = getattr(model, "bloodlib_config", None) or {"class": type(model).__name__}
    return hashlib.sha1(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:8]


@torch.no_grad()
def predict_detector(model: nn.Module, ev: EvalSet, device: Any = "cpu",
                     mask_threshold: float = 0.5) -> list[Prediction]:
    """Instance masks and scores of a Mask R-CNN on every evaluation image."""
    model.eval().to(device)
    out = []
    for image in ev.images:
        o = model([image.to(device)])[0]
        out.append(Prediction((o["masks"][:, 0] > mask_threshold).cpu().numpy(),
                              o["scores"].cpu().numpy()))
    return out


def _semantic_prediction(foreground: np.ndarray, min_size: int) -> Prediction:
    inst = connected_instances(foreground, min_size)
    return Prediction(inst, np.ones(len(inst), np.float32))


def predict_fcm(ev: EvalSet, settings: BloodCancerConfig, seed: int = 0
                ) -> tuple[list[Prediction], list[np.ndarray]]:
    """FCM on every evaluation image (inside its valid region): instance predictions
    (connected components) and the FCM label maps."""
    preds, labels = [], []
    for image, valid in zip(ev.images, ev.valid):
        r = fcm_segment(to_uint8(image), int(settings.fcm.clusters), valid=valid,
                        min_size=int(settings.fcm.min_size), seed=seed)
        preds.append(_semantic_prediction(r.foreground, int(settings.min_instance_size)))
        labels.append(r.labels)
    return preds, labels


class _SemanticView(Dataset):
    """(image, union-of-cells mask int64) pairs from a :class:`CellDataset`."""

    def __init__(self, ds: CellDataset) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, target = self.ds[i]
        m = target["masks"]
        union = m.any(dim=0) if len(m) else torch.zeros(image.shape[1:], dtype=torch.bool)
        return image, union.long()


def train_unet(coco: dict, settings: BloodCancerConfig, device: Any = "cpu", seed: int = 0,
               checkpoints: Optional[Checkpoints] = None) -> tuple[nn.Module, TrainLog]:
    """The segmentation track's U-Net (cell vs background, CE + Dice) on ``coco``."""
    seed_everything(seed)
    model = UNet(3, 2, base_channels=int(settings.unet.base_channels))
    loader = DataLoader(_SemanticView(CellDataset(coco, int(settings.image_size), train=True)),
                        batch_size=int(settings.unet.batch), shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    loss = CEDiceLoss()
    dev = torch.device(device)

    def fn(m: nn.Module, batch: Any) -> dict:
        x, y = batch
        return {"ce_dice": loss(m(x.to(dev)), y.to(dev))}
    log = train_steps(model, loader, fn, Optimization.of(settings, optimizer="adamw"),
                      int(settings.unet.steps), settings.unet.time_budget_s, device,
                      label=f"unet_{len(coco['images'])}img_s{seed}", checkpoints=checkpoints)
    return model, log


@torch.no_grad()
def predict_unet(model: nn.Module, ev: EvalSet, settings: BloodCancerConfig, device: Any = "cpu"
                 ) -> list[Prediction]:
    """U-Net foreground (inside the valid region) split into connected components."""
    model.eval().to(device)
    out = []
    for image, valid in zip(ev.images, ev.valid):
        fg = model(image[None].to(device)).argmax(1)[0].cpu().numpy().astype(bool) & valid
        out.append(_semantic_prediction(fg, int(settings.min_instance_size)))
    return out


def train_and_evaluate(kind: str, train_coco: dict, ev: EvalSet, settings: BloodCancerConfig,
                       device: Any = "cpu", seed: int = 0,
                       variant: Optional[Mapping[str, Any]] = None, ablation: bool = False,
                       checkpoints: Optional[Checkpoints] = None) -> dict[str, Any]:
    """Build, train (``train_steps``/``time_budget_s``, or the ``ablation_*`` ones) and
    evaluate one Mask R-CNN; ``{"model", "log", "metrics", "preds"}``."""
    seed_everything(seed)
    model = build_model(kind, settings, variant)
    steps = settings.ablation.steps if ablation else settings.train_steps
    budget = settings.ablation.time_budget_s if ablation else settings.time_budget_s
    log = train_detector(model, train_coco, settings, device, seed, steps, budget, checkpoints)
    preds = predict_detector(model, ev, device, float(settings.mask_threshold))
    metrics = evaluate_predictions(preds, ev, float(settings.score_threshold))
    metrics.update(train_seconds=log.seconds, train_steps=float(log.steps))
    return {"model": model, "log": log, "metrics": metrics, "preds": preds}


def slug(name: str) -> str:
    """``"FPN-CA + B-U"`` -> ``"fpn_ca_b_u"`` (for file and model names)."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def ablation_name(variant: Mapping[str, Any]) -> str:
    """Readable name of an R-Mask R-CNN variant
    (:func:`~bloodlib.models.rmaskrcnn.variant_name`)."""
    v = {**MAIN_VARIANT, **dict(variant)}
    return variant_name(v["attention"], v["bottom_up"], v["multiscale_mask_head"])


def run_ablation(train_coco: dict, ev: EvalSet, settings: BloodCancerConfig,
                 device: Any = "cpu", seed: int = 0,
                 trained: Optional[Mapping[str, Mapping[str, Any]]] = None,
                 checkpoints: Optional[Checkpoints] = None) -> dict[str, dict[str, Any]]:
    """Train and evaluate plain Mask R-CNN, every ``ablation_variants`` entry and the full
    R-Mask R-CNN with the ablation budget. ``trained`` (``{"maskrcnn": ..,
    "rmaskrcnn": ..}`` from :func:`train_and_evaluate`) is reused when the ablation budget
    equals the main one, so nothing is trained twice."""
    same = (settings.ablation.steps, settings.ablation.time_budget_s) == \
        (settings.train_steps, settings.time_budget_s)
    trained = dict(trained or {}) if same else {}
    out = {"Mask R-CNN (torchvision FPN)": trained.get("maskrcnn") or train_and_evaluate(
        "maskrcnn", train_coco, ev, settings, device, seed, ablation=True,
        checkpoints=checkpoints)}
    for v in settings.ablation.variants:
        out[ablation_name(v)] = train_and_evaluate("rmaskrcnn", train_coco, ev, settings,
                                                   device, seed, variant=v, ablation=True,
                                                   checkpoints=checkpoints)
    out[ablation_name(MAIN_VARIANT) + " (R-Mask R-CNN)"] = trained.get("rmaskrcnn") or \
        train_and_evaluate("rmaskrcnn", train_coco, ev, settings, device, seed, ablation=True,
                           checkpoints=checkpoints)
    return out
