"""Paper 3 (DeepBCSDnet): RENS-GAN augmentation, R-Mask R-CNN segmentation and a
DenseNet-121 ("DCNN") classifier on segmented cells — the helpers behind notebook 03.

What runs on which data (paper 3 used SN-AM, MiMM_SBILab and C-NMC 2019, none of which
is available here; loaders for their layouts are in :mod:`bloodlib.data.parsers`):

* **Segmentation** (Table I, the ablation, Figure 11): SegPC-2021, plasma cells of
  multiple myeloma from SBILab, the group behind MiMM_SBILab — it stands in for
  MiMM_SBILab. Task: instance segmentation of the annotated plasma cells ("cell"
  polygons). Train on the SegPC train split, evaluate on its validation split. Images
  are the local 512 px letterboxed copies, resized to ``image_size``; metrics are
  computed in that frame. Without SegPC on disk, synthetic smears (WBCs as "cells") are
  used and the notebook says so.
* **Classification** (Tables II-III, Figure 14): paper 3 separates ALL from MM images.
  With no ALL data here, the stand-in task is *plasma cell vs other segmented object*
  on SegPC: positives are crops of annotated plasma cells, negatives are crops of
  objects that fuzzy c-means segments but that are not annotated plasma cells (other
  cells, RBC clumps, debris). Crops come from train images for training and from
  validation images for testing. It is a two-class problem like the paper's, but an
  easier and different one: the numbers are not comparable.

Metrics (paper 3, eqs. 2-4): IoU of the cell class and pixel accuracy from one pixel
confusion matrix pooled over the evaluation images (the union of the predicted cell
masks vs the union of the annotated ones), RMSE = sqrt(fraction of pixels whose
cell/background call is wrong); plus our instance metrics — the mean IoU of predicted
and annotated cells matched one-to-one (Hungarian, IoU >= 0.5, ``cell_iou``) and COCO
``segm`` AP/AP50 (pycocotools). FCM and U-Net give a foreground mask; their instances
are its connected components (score 1), which is how a semantic method would count cells.

Choices the paper leaves open are in the knobs below; CPU profiles train from scratch
(no ImageNet weights are available offline), with AdamW instead of the paper's SGD
(lr 0.001, momentum 0.7, weight decay 1e-4, batch 1 — kept in ``full``).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..config import register
from .configs import BloodCancerConfig
from ..results import compare_with_paper, finite_metrics, paper_table, reference_table as table
from ..data.splits import subset_coco  # noqa: F401  (also notebooks' mc./bc.subset_coco)
from ..engine import distributed as ddp
from ..engine.checkpoint import resolve_resume, run_checkpoint, save_checkpoint
from ..engine.device import device_plan
from ..engine.loop import CheckpointHook, LossDictStep, SchedulerHook, TrainLoop
from ..data.synthetic import write_detection_set
from ..data.parsers import load_segpc
from ..errors import DatasetNotFoundError, ModelFormatError
from ..data.parsers.segpc import letterbox_transform
from ..data.convert import mask_to_rle
from ..data.records import new_coco
from ..metrics import coco_evaluate, matched_instance_iou, SegmentationMeter
from ..models.rmaskrcnn import (attention_maps, build_plain_maskrcnn, build_rmaskrcnn,
                                variant_name)
from ..runtime import seed_everything
from ..classical import connected_instances, fcm_segment
from ..losses import CEDiceLoss
from ..models import UNet
from ..io import read_image
from ..models.rens_gan import augment_with_gan, degrade, random_crops
from ..data.datasets import decode_segmentation, DetectionDataset
from ..models.classifiers import build_classifier
from ..models.attention import attention_modules, ChannelAttention, gate
from ..viz import finish_figure, overlay_mask
from ..inference.store import read_task_checkpoint, rebuild_model
import warnings
import hashlib
import json
import re
import cv2
from PIL import Image
from datetime import date
from torchvision.transforms import v2

EXPERIMENT = "blood_cancer"
PAPER = "paper3"
CELL = "cell"
CLS_CLASSES = ("plasma_cell", "other")
MAIN_VARIANT = {"attention": "ca_sa", "bottom_up": True, "multiscale_mask_head": True}
TABLE1_LABELS = {"fcm": "FCM", "maskrcnn": "Mask R-CNN", "unet": "UNet-INV2",
                 "rmaskrcnn": "R-Mask R-CNN"}
MODEL_LABELS = {"fcm": "FCM", "maskrcnn": "Mask R-CNN", "unet": "U-Net",
                "rmaskrcnn": "R-Mask R-CNN", "rmaskrcnn_gan": "R-Mask R-CNN + RENS-GAN"}

_COMMON = {"score_threshold": 0.5, "mask_threshold": 0.5, "fcm_clusters": 3, "fcm_min_size": 30,
           "min_instance_size": 30, "grad_clip": 10.0, "weight_decay": 1e-4, "num_workers": 0,
           "gan_crop": 64, "gan_batch": 8, "gan_noise_std": 0.04, "gan_channels": 32,
           "gan_blocks": 3, "cls_margin": 0.15, "cls_batch": 16, "cls_small_input": None,
           "qualitative_n": 3,
           "detections_per_img": 50, "synthetic_images": 24, "lr_schedule": "constant",
           # R-Mask R-CNN's attention multiplier: (1 + n * softmax) / 2, or the plain
           # n * softmax (False), which zeroed all but one channel at N4/N5 in bench_cpu runs
           "residual_attention": True,
           # caps the attention logits at b * tanh(logits / b) (None: unbounded)
           "attention_logit_bound": None,
           # multi-scale mask head: pool every level ("roi") or fuse the maps first ("map")
           "mask_fusion": "roi",
           # 3x3 convolutions at RoI resolution on each side of the mask head's
           # encoder-decoder (1: four convolutions in all, two at 14x14)
           "mask_head_depth": 1,
           # an R-Mask R-CNN variant for bloodlib train/bench, e.g. {"attention": "sa"}
           # (keys of MAIN_VARIANT; None: the main model)
           "architecture": None}
_QUICK = {**_COMMON,
          "image_size": 256, "backbone": "mobilenet_v3_large", "fpn_channels": 128,
          "mask_channels": 128, "pretrained_backbone": False,
          "max_train_images": 24, "max_val_images": 10, "batch_size": 2,
          "optimizer": "adamw", "lr": 1e-3, "momentum": 0.9, "warmup_steps": 5,
          "train_steps": 30, "time_budget_s": 25,
          "ablation_variants": [{"attention": "sa", "bottom_up": True},
                                {"attention": "ca_sa", "bottom_up": False}],
          "ablation_steps": 30, "ablation_time_budget_s": 25, "gan_augment": True,
          "gan_steps": 40, "gan_time_budget_s": 10, "unet_base_channels": 8, "unet_steps": 30,
          "unet_batch": 4, "unet_time_budget_s": 10, "cls_size": 64, "cls_small_input": False,
          "cls_epochs": 3, "cls_max_per_class": 80, "cls_time_budget_s": 12}
_ALL_ABLATIONS = [{"attention": a, "bottom_up": True} for a in ("none", "ca", "sa", "sa_ca")] \
    + [{"attention": "ca_sa", "bottom_up": False},
       {"attention": "ca_sa", "bottom_up": True, "multiscale_mask_head": False}]
register(EXPERIMENT, schema=BloodCancerConfig, profiles={
    # ~2.5 min on 2 idle cores: 24 train / 10 validation images at 256 px, 30 steps per
    # model (5 detectors); every training also stops at its time budget on a busy machine
    "quick": _QUICK,
    # the benchmark: SegPC train -> validation, 60 min per main model on 2 cores
    "bench_cpu": {**_QUICK, "image_size": 384, "max_train_images": None, "max_val_images": None,
                  "warmup_steps": 100, "lr_schedule": "cosine", "train_steps": 1_000_000,
                  "time_budget_s": 3600,
                  "ablation_variants": _ALL_ABLATIONS, "ablation_steps": 1_000_000,
                  "ablation_time_budget_s": 480, "gan_steps": 600, "gan_time_budget_s": 300,
                  "unet_base_channels": 16,
                  "unet_steps": 1_000_000, "unet_time_budget_s": 900, "cls_size": 96,
                  "cls_small_input": None,
                  "cls_epochs": 20, "cls_max_per_class": 1500, "cls_time_budget_s": 600,
                  "qualitative_n": 4},
    # the paper's protocol on a GPU: 512 px, ResNet-50, SGD lr 0.001 momentum 0.7, batch 1
    "full": {**_COMMON, "image_size": 512, "backbone": "resnet50", "fpn_channels": 256,
             "mask_channels": 256, "pretrained_backbone": False, "max_train_images": None,
             "max_val_images": None, "batch_size": 1, "optimizer": "sgd", "lr": 1e-3,
             "momentum": 0.7, "warmup_steps": 500, "lr_schedule": "cosine", "train_steps": 60_000,
             "time_budget_s": None,
             "ablation_variants": _ALL_ABLATIONS, "ablation_steps": 20_000,
             "ablation_time_budget_s": None, "gan_augment": True, "gan_steps": 5000,
             "gan_time_budget_s": None,
             "unet_base_channels": 64, "unet_steps": 20_000, "unet_batch": 4,
             "unet_time_budget_s": None, "cls_size": 224, "cls_epochs": 50,
             "cls_max_per_class": None, "cls_time_budget_s": None, "qualitative_n": 4},
})


# ============================================================================ data


def synthetic_cells(out_dir: Any, n_images: int, seed: int, split: str,
                    size: int = 256) -> dict:
    """Synthetic smears (:mod:`bloodlib.data.synthetic`) with their WBCs as the "cell"
    class — the fallback when SegPC-2021 is not on disk."""
    coco = write_detection_set(Path(out_dir) / f"synthetic_cells_{split}", n_images, seed,
                               height=size, width=size, split=split, n_wbc=(2, 4))
    wbc = next(c["id"] for c in coco["categories"] if c["name"].lower() == "wbc")
    anns = [dict(a, category_id=1) for a in coco["annotations"] if a["category_id"] == wbc]
    return {**coco, "categories": [{"id": 1, "name": CELL}], "annotations": anns}


def load_data(knobs: Mapping[str, Any], out_dir: Any, seed: int = 0) -> dict[str, Any]:
    """``{"train", "val": COCO dicts, "source": "segpc2021" | "synthetic"}``: SegPC-2021
    train and validation cells (subsets per the profile), or synthetic smears."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SegPC valid lacks one annotated image (610)
            train, val = load_segpc("train", CELL), load_segpc("valid", CELL)
        source = "segpc2021"
    except DatasetNotFoundError:
        n = int(knobs["synthetic_images"])
        train = synthetic_cells(out_dir, n, seed, "train")
        val = synthetic_cells(out_dir, max(4, n // 2), seed + 1, "val")
        source = "synthetic"
    return {"train": subset_coco(train, knobs["max_train_images"], seed),
            "val": subset_coco(val, knobs["max_val_images"], seed), "source": source}


def letterbox_valid(image_entry: Mapping[str, Any], height: int, width: int) -> np.ndarray:
    """Bool (height, width) mask of the picture inside a letterboxed SegPC image (the
    padding bands are False); all True for images without ``orig_width``."""
    valid = np.ones((height, width), bool)
    if "orig_width" not in image_entry:
        return valid
    s, dx, dy = letterbox_transform(image_entry["orig_width"], image_entry["orig_height"],
                                    width, height)
    y0, y1 = int(round(dy)), int(round(dy + image_entry["orig_height"] * s))
    x0, x1 = int(round(dx)), int(round(dx + image_entry["orig_width"] * s))
    valid[:, :] = False
    valid[y0:y1, x0:x1] = True
    return valid


def _plain(t: Any) -> Any:
    return t.as_subclass(torch.Tensor) if isinstance(t, torch.Tensor) else t


class CellDataset(Dataset):
    """SegPC-style COCO -> ``(image float (3, S, S), target)`` for Mask R-CNN at ``size``;
    random horizontal/vertical flips when ``train``. Targets hold plain tensors."""

    def __init__(self, coco: dict, size: int, train: bool = False) -> None:
        steps = [v2.Resize((size, size), antialias=True)]
        if train:
            steps += [v2.RandomHorizontalFlip(), v2.RandomVerticalFlip()]
        self.coco, self.size = coco, int(size)
        self.inner = DetectionDataset(coco, transforms=v2.Compose(steps), with_masks=True)

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, Any]]:
        image, target = self.inner[i]
        return _plain(image), {k: _plain(v) for k, v in target.items()}


def collate(batch: Sequence[Any]) -> tuple[list, list]:
    images, targets = zip(*batch)
    return list(images), list(targets)


@dataclass
class EvalSet:
    """Validation images at the model's size: images (float CHW), ground-truth instance
    masks (N, S, S) bool, valid regions, and the COCO dict of that frame."""

    images: list[torch.Tensor]
    masks: list[np.ndarray]
    valid: list[np.ndarray]
    coco: dict
    image_ids: list[int]


def make_eval_set(coco: dict, size: int) -> EvalSet:
    """Resize the validation images and their masks to ``size`` and build the matching
    COCO ground truth (RLE masks) for pycocotools."""
    ds = CellDataset(coco, size, train=False)
    gt = new_coco([CELL], dataset=coco["info"].get("dataset", ""), split="eval")
    images, masks, valid, ids = [], [], [], []
    for i, entry in enumerate(coco["images"]):
        image, target = ds[i]
        m = target["masks"].numpy().astype(bool)
        images.append(image)
        masks.append(m)
        valid.append(letterbox_valid(entry, size, size))
        ids.append(entry["id"])
        gt["images"].append({"id": entry["id"], "file_name": entry["file_name"], "width": size,
                             "height": size})
        for k, inst in enumerate(m):
            if not inst.any():
                continue
            ys, xs = np.nonzero(inst)
            gt["annotations"].append({
                "id": len(gt["annotations"]) + 1, "image_id": entry["id"], "category_id": 1,
                "bbox": [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1),
                         float(ys.max() - ys.min() + 1)],
                "area": float(inst.sum()), "segmentation": mask_to_rle(inst), "iscrowd": 0})
    return EvalSet(images, masks, valid, gt, ids)


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """Float (3, H, W) in [0, 1] -> RGB uint8 (H, W, 3)."""
    return (image.permute(1, 2, 0).numpy() * 255).round().clip(0, 255).astype(np.uint8)


# ============================================================================ evaluation
@dataclass
class Prediction:
    """Instance predictions of one image: ``masks`` (N, S, S) bool, ``scores`` (N,)."""

    masks: np.ndarray
    scores: np.ndarray


def evaluate_predictions(preds: Sequence[Prediction], ev: EvalSet,
                         score_threshold: float = 0.5) -> dict[str, float]:
    """Paper 3's Table I metrics and our instance metrics (module docstring).

    Instances with ``score >= score_threshold`` make the masks scored by IoU, pixel
    accuracy, RMSE and ``cell_iou``; COCO AP uses every instance, ranked by score.
    """
    meter = SegmentationMeter(2, ["background", CELL])
    ious, n_gt, n_pred, results = [], 0, 0, []
    for p, gt, image_id in zip(preds, ev.masks, ev.image_ids):
        keep = p.masks[p.scores >= score_threshold] if len(p.masks) else p.masks
        m = matched_instance_iou(keep, gt) if len(keep) and len(gt) else {"pairs": []}
        ious += [x[2] for x in m["pairs"]]
        n_gt, n_pred = n_gt + len(gt), n_pred + len(keep)
        union_p = keep.any(axis=0) if len(keep) else np.zeros(gt.shape[1:], bool)
        union_g = gt.any(axis=0) if len(gt) else np.zeros_like(union_p)
        meter.update(union_p.astype(np.int64), union_g.astype(np.int64))
        for mask, score in zip(p.masks, p.scores):
            if mask.any():
                ys, xs = np.nonzero(mask)
                results.append({"image_id": image_id, "category_id": 1, "score": float(score),
                                "segmentation": mask_to_rle(mask),
                                "bbox": [float(xs.min()), float(ys.min()),
                                         float(xs.max() - xs.min() + 1),
                                         float(ys.max() - ys.min() + 1)]})
    px = meter.compute()
    segm = coco_evaluate(ev.coco, results, "segm")
    return {"IoU": px[f"IoU/{CELL}"], "pixel_accuracy": px["pixel_accuracy"], "rmse": px["rmse"],
            "dice": px[f"Dice/{CELL}"], "cell_iou": float(np.mean(ious)) if ious else 0.0,
            "matched_cells": float(len(ious)), "gt_cells": float(n_gt),
            "predicted_cells": float(n_pred),
            "cell_recall": len(ious) / n_gt if n_gt else float("nan"),
            "segm_AP": segm.AP, "segm_AP50": segm.AP50, "segm_AP75": segm.AP75}


finite = finite_metrics  # the notebooks call it by this name


# ============================================================================ models
def build_model(kind: str, knobs: Mapping[str, Any], variant: Optional[Mapping[str, Any]] = None
                ) -> nn.Module:
    """``"maskrcnn"`` (plain) or ``"rmaskrcnn"`` (``variant`` overrides
    :data:`MAIN_VARIANT`) with the profile's backbone, image size and channels."""
    common = dict(backbone=knobs["backbone"], pretrained_backbone=knobs["pretrained_backbone"],
                  image_size=int(knobs["image_size"]), fpn_channels=int(knobs["fpn_channels"]),
                  mask_channels=int(knobs["mask_channels"]),
                  box_detections_per_img=int(knobs["detections_per_img"]),
                  rpn_pre_nms_top_n_train=1000, rpn_post_nms_top_n_train=500,
                  rpn_pre_nms_top_n_test=500, rpn_post_nms_top_n_test=250,
                  box_batch_size_per_image=128)
    if kind == "maskrcnn":
        return build_plain_maskrcnn(1, **common)
    if kind == "rmaskrcnn":
        return build_rmaskrcnn(1, **{**MAIN_VARIANT, **dict(variant or {})},
                               residual_attention=bool(knobs["residual_attention"]),
                               attention_logit_bound=knobs["attention_logit_bound"],
                               mask_fusion=str(knobs["mask_fusion"]),
                               mask_head_depth=int(knobs["mask_head_depth"]), **common)
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


def _optimizer(params: Sequence[torch.Tensor], knobs: Mapping[str, Any]) -> torch.optim.Optimizer:
    if knobs["optimizer"] == "sgd":
        return torch.optim.SGD(params, lr=float(knobs["lr"]), momentum=float(knobs["momentum"]),
                               weight_decay=float(knobs["weight_decay"]))
    if knobs["optimizer"] == "adamw":
        return torch.optim.AdamW(params, lr=float(knobs["lr"]),
                                 weight_decay=float(knobs["weight_decay"]))
    raise ValueError(f"optimizer must be 'sgd' or 'adamw', not {knobs['optimizer']!r}.")


def _lr_factor(step: int, elapsed: float, steps: int, budget: Optional[float],
               knobs: Mapping[str, Any]) -> float:
    """Linear warm-up over ``warmup_steps``; then constant, or with ``lr_schedule="cosine"``
    a cosine decay to 5 % over the run — its progress is the larger of steps done / steps
    and time used / time budget, so a time-limited run still ends at the low rate."""
    warm = min(1.0, (step + 1) / max(1, int(knobs.get("warmup_steps", 1))))
    if knobs.get("lr_schedule", "constant") != "cosine":
        return warm
    progress = step / max(1, steps)
    if budget:
        progress = max(progress, elapsed / float(budget))
    return warm * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def train_steps(model: nn.Module, loader: DataLoader, loss_fn: Callable[[nn.Module, Any], dict],
                knobs: Mapping[str, Any], steps: int, time_budget_s: Optional[float],
                device: Any = "cpu", label: Optional[str] = None) -> TrainLog:
    """Train for ``steps`` batches (cycling over ``loader``) or until ``time_budget_s``
    on the one training loop; ``loss_fn(model, batch)`` returns named losses that are
    summed. Learning rate from :func:`_lr_factor` (a ``LambdaLR``); gradient-norm clipping
    at ``knobs["grad_clip"]``. With a ``label`` and ``knobs["checkpoint_dir"]`` (notebook
    runs) the state is checkpointed after the first step and every 60 s, and
    ``knobs["resume"]`` continues it with the same batches (the time budget starts afresh)."""
    device = torch.device(device)
    model.to(device)
    opt = _optimizer([p for p in model.parameters() if p.requires_grad], knobs)
    loop_ref: list[TrainLoop] = []
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: _lr_factor(
        step, loop_ref[0].elapsed() if loop_ref else 0.0, int(steps), time_budget_s, knobs))
    hooks: list[Any] = [SchedulerHook(schedule, "step")]
    ckpt_path, resume = run_checkpoint(knobs, label) if label else (None, None)
    if ckpt_path is not None:
        hooks.append(CheckpointHook(ckpt_path, None, every_s=60.0, at="step"))
    step = LossDictStep(opt, float(knobs.get("grad_clip", 10.0)),
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


def train_detector(model: nn.Module, coco: dict, knobs: Mapping[str, Any], device: Any = "cpu",
                   seed: int = 0, steps: Optional[int] = None,
                   time_budget_s: Optional[float] = None) -> TrainLog:
    """Train a torchvision Mask R-CNN on ``coco`` (flips, ``image_size``, batch size and
    optimiser from the profile) for ``steps`` (default ``train_steps``) or the time budget."""
    seed_everything(seed)
    loader = DataLoader(CellDataset(coco, int(knobs["image_size"]), train=True),
                        batch_size=int(knobs["batch_size"]), shuffle=True, collate_fn=collate,
                        num_workers=int(knobs["num_workers"]),
                        generator=torch.Generator().manual_seed(seed))
    steps = int(knobs["train_steps"] if steps is None else steps)
    budget = knobs["time_budget_s"] if time_budget_s is None else time_budget_s
    label = (f"{getattr(model, 'bloodlib_config', {}).get('architecture', type(model).__name__)}_"
             f"{len(coco['images'])}img_{steps}steps_s{seed}_{_config_tag(model)}")
    return train_steps(model, loader, _detection_loss(torch.device(device)), knobs, steps,
                       budget, device, label=label)


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


def predict_fcm(ev: EvalSet, knobs: Mapping[str, Any], seed: int = 0
                ) -> tuple[list[Prediction], list[np.ndarray]]:
    """FCM on every evaluation image (inside its valid region): instance predictions
    (connected components) and the FCM label maps."""
    preds, labels = [], []
    for image, valid in zip(ev.images, ev.valid):
        r = fcm_segment(to_uint8(image), int(knobs["fcm_clusters"]), valid=valid,
                        min_size=int(knobs["fcm_min_size"]), seed=seed)
        preds.append(_semantic_prediction(r.foreground, int(knobs["min_instance_size"])))
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


def train_unet(coco: dict, knobs: Mapping[str, Any], device: Any = "cpu", seed: int = 0
               ) -> tuple[nn.Module, TrainLog]:
    """The segmentation track's U-Net (cell vs background, CE + Dice) on ``coco``."""
    seed_everything(seed)
    model = UNet(3, 2, base_channels=int(knobs["unet_base_channels"]))
    loader = DataLoader(_SemanticView(CellDataset(coco, int(knobs["image_size"]), train=True)),
                        batch_size=int(knobs["unet_batch"]), shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    loss = CEDiceLoss()
    dev = torch.device(device)

    def fn(m: nn.Module, batch: Any) -> dict:
        x, y = batch
        return {"ce_dice": loss(m(x.to(dev)), y.to(dev))}
    log = train_steps(model, loader, fn, {**knobs, "optimizer": "adamw"},
                      int(knobs["unet_steps"]), knobs["unet_time_budget_s"], device,
                      label=f"unet_{len(coco['images'])}img_s{seed}")
    return model, log


@torch.no_grad()
def predict_unet(model: nn.Module, ev: EvalSet, knobs: Mapping[str, Any], device: Any = "cpu"
                 ) -> list[Prediction]:
    """U-Net foreground (inside the valid region) split into connected components."""
    model.eval().to(device)
    out = []
    for image, valid in zip(ev.images, ev.valid):
        fg = model(image[None].to(device)).argmax(1)[0].cpu().numpy().astype(bool) & valid
        out.append(_semantic_prediction(fg, int(knobs["min_instance_size"])))
    return out


def train_and_evaluate(kind: str, train_coco: dict, ev: EvalSet, knobs: Mapping[str, Any],
                       device: Any = "cpu", seed: int = 0,
                       variant: Optional[Mapping[str, Any]] = None, ablation: bool = False
                       ) -> dict[str, Any]:
    """Build, train (``train_steps``/``time_budget_s``, or the ``ablation_*`` ones) and
    evaluate one Mask R-CNN; ``{"model", "log", "metrics", "preds"}``."""
    seed_everything(seed)
    model = build_model(kind, knobs, variant)
    steps = knobs["ablation_steps"] if ablation else knobs["train_steps"]
    budget = knobs["ablation_time_budget_s"] if ablation else knobs["time_budget_s"]
    log = train_detector(model, train_coco, knobs, device, seed, steps, budget)
    preds = predict_detector(model, ev, device, float(knobs["mask_threshold"]))
    metrics = evaluate_predictions(preds, ev, float(knobs["score_threshold"]))
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


def run_ablation(train_coco: dict, ev: EvalSet, knobs: Mapping[str, Any], device: Any = "cpu",
                 seed: int = 0, trained: Optional[Mapping[str, Mapping[str, Any]]] = None
                 ) -> dict[str, dict[str, Any]]:
    """Train and evaluate plain Mask R-CNN, every ``ablation_variants`` entry and the full
    R-Mask R-CNN with the ablation budget. ``trained`` (``{"maskrcnn": ..,
    "rmaskrcnn": ..}`` from :func:`train_and_evaluate`) is reused when the ablation budget
    equals the main one, so nothing is trained twice."""
    same = (knobs["ablation_steps"], knobs["ablation_time_budget_s"]) == \
        (knobs["train_steps"], knobs["time_budget_s"])
    trained = dict(trained or {}) if same else {}
    out = {"Mask R-CNN (torchvision FPN)": trained.get("maskrcnn") or train_and_evaluate(
        "maskrcnn", train_coco, ev, knobs, device, seed, ablation=True)}
    for v in knobs["ablation_variants"]:
        out[ablation_name(v)] = train_and_evaluate("rmaskrcnn", train_coco, ev, knobs, device,
                                                   seed, variant=v, ablation=True)
    out[ablation_name(MAIN_VARIANT) + " (R-Mask R-CNN)"] = trained.get("rmaskrcnn") or \
        train_and_evaluate("rmaskrcnn", train_coco, ev, knobs, device, seed, ablation=True)
    return out


# ============================================================================ RENS-GAN
def coco_images(coco: dict) -> list[np.ndarray]:
    """The RGB uint8 images of a COCO dict, in order."""
    return [read_image(im["path"]) for im in coco["images"]]


def gan_augmented_coco(coco: dict, gan: Any, out_dir: Any, knobs: Mapping[str, Any],
                       seed: int = 0) -> dict:
    """``coco`` plus a RENS-GAN copy of every image (written as PNG under ``out_dir``,
    same annotations — the generators keep the geometry)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    merged = copy.deepcopy(coco)
    next_img = max(im["id"] for im in coco["images"]) + 1
    next_ann = max((a["id"] for a in coco["annotations"]), default=0) + 1
    by_image: dict[int, list[dict]] = {}
    for a in coco["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    fakes = augment_with_gan(gan, coco_images(coco), float(knobs["gan_noise_std"]), seed)
    for k, (entry, fake) in enumerate(zip(coco["images"], fakes)):
        path = out / f"rens_{Path(entry['file_name']).stem}.png"
        Image.fromarray(fake).save(path)
        merged["images"].append({**entry, "id": next_img + k, "file_name": path.name,
                                 "path": str(path.resolve()), "rens_gan_of": entry["id"]})
        for a in by_image.get(entry["id"], []):
            merged["annotations"].append({**a, "id": next_ann, "image_id": next_img + k})
            next_ann += 1
    return merged


# ============================================================================ DCNN
def _crop(image: np.ndarray, box: Sequence[float], margin: float, size: int) -> np.ndarray:
    x, y, w, h = box
    cx, cy, half = x + w / 2, y + h / 2, max(w, h) * (1 + margin) / 2
    h_img, w_img = image.shape[:2]
    x0, y0 = int(max(0, cx - half)), int(max(0, cy - half))
    x1, y1 = int(min(w_img, cx + half)), int(min(h_img, cy + half))
    return cv2.resize(np.ascontiguousarray(image[y0:y1, x0:x1]), (size, size),
                      interpolation=cv2.INTER_AREA)


def cell_crops(coco: dict, knobs: Mapping[str, Any], seed: int = 0
               ) -> tuple[list[np.ndarray], list[str]]:
    """The classification stand-in (module docstring): crops of annotated plasma cells
    and of FCM-segmented objects that are not plasma cells, at most ``cls_max_per_class``
    of each, from the native-resolution images of ``coco``."""
    size, margin = int(knobs["cls_size"]), float(knobs["cls_margin"])
    cap = knobs["cls_max_per_class"]
    pos, neg = [], []
    areas = [a["area"] for a in coco["annotations"]] or [100.0]
    lo, hi = 0.25 * float(np.percentile(areas, 5)), 2.0 * float(np.percentile(areas, 95))
    by_image: dict[int, list[dict]] = {}
    for a in coco["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    for entry, image in zip(coco["images"], coco_images(coco)):
        anns = by_image.get(entry["id"], [])
        pos += [_crop(image, a["bbox"], margin, size) for a in anns]
        h, w = image.shape[:2]
        cells = np.zeros((h, w), bool)
        for a in anns:
            cells |= decode_segmentation(a["segmentation"], h, w).astype(bool)
        fg = fcm_segment(image, int(knobs["fcm_clusters"]), valid=letterbox_valid(entry, h, w),
                         min_size=int(knobs["fcm_min_size"]), seed=seed).foreground
        for inst in connected_instances(fg & ~cells, int(lo)):
            area = inst.sum()
            if area > hi or (inst & cells).sum() > 0.2 * area:
                continue
            ys, xs = np.nonzero(inst)
            neg.append(_crop(image, [xs.min(), ys.min(), np.ptp(xs) + 1, np.ptp(ys) + 1],
                             margin, size))
    rng = np.random.default_rng(seed)
    if cap is not None:
        pos = [pos[i] for i in sorted(rng.choice(len(pos), min(cap, len(pos)), replace=False))]
        neg = [neg[i] for i in sorted(rng.choice(len(neg), min(cap, len(neg)), replace=False))]
    return pos + neg, [CLS_CLASSES[0]] * len(pos) + [CLS_CLASSES[1]] * len(neg)


def build_dcnn(knobs: Mapping[str, Any], num_classes: int = 2) -> nn.Module:
    """DenseNet-121 (paper 3's "DCNN") from the classification track's registry
    (:func:`bloodlib.models.classifiers.build_classifier`), trained from scratch unless
    ImageNet weights are cached; it takes images in [0, 1] and normalises inside.
    ``cls_small_input`` keeps DenseNet's first pooling (False) or drops it (True; None =
    automatic below 128 px)."""
    return build_classifier("densenet121", num_classes, in_size=int(knobs["cls_size"]),
                            small_input=knobs.get("cls_small_input"))


def _crop_tensor(crops: Sequence[np.ndarray]) -> torch.Tensor:
    """RGB uint8 crops -> float (n, 3, s, s) in [0, 1]."""
    return torch.from_numpy(np.stack(crops).transpose(0, 3, 1, 2).copy()).float() / 255.0


def train_dcnn(crops: Sequence[np.ndarray], labels: Sequence[str], knobs: Mapping[str, Any],
               device: Any = "cpu", seed: int = 0) -> tuple[nn.Module, TrainLog]:
    """DenseNet-121 on the crops (flips and 90-degree rotations, cross-entropy, AdamW),
    ``cls_epochs`` epochs or ``cls_time_budget_s``."""
    seed_everything(seed)
    model = build_dcnn(knobs, len(CLS_CLASSES))
    x = _crop_tensor(crops)
    y = torch.tensor([CLS_CLASSES.index(c) for c in labels])
    loader = DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=int(knobs["cls_batch"]),
                        shuffle=True, generator=torch.Generator().manual_seed(seed))
    dev = torch.device(device)
    ce = nn.CrossEntropyLoss()

    def fn(m: nn.Module, batch: Any) -> dict:
        xb, yb = batch
        k = int(torch.randint(4, (1,)))
        xb = torch.rot90(xb, k, (2, 3))
        if torch.rand(1) < 0.5:
            xb = xb.flip(3)
        return {"cross_entropy": ce(m(xb.to(dev)), yb.to(dev))}
    steps = int(knobs["cls_epochs"]) * ddp.batches_per_rank(loader)
    log = train_steps(model, loader, fn, {**knobs, "optimizer": "adamw", "warmup_steps": 1},
                      steps, knobs["cls_time_budget_s"], device,
                      label=f"classifier_{len(x)}crops_s{seed}")
    return model, log


@torch.no_grad()
def predict_dcnn(model: nn.Module, crops: Sequence[np.ndarray], device: Any = "cpu",
                 batch_size: int = 64) -> np.ndarray:
    """Class probabilities (n, 2) of the crops."""
    model.eval().to(device)
    x = _crop_tensor(crops)
    return torch.cat([model(x[i:i + batch_size].to(device)).softmax(1).cpu()
                      for i in range(0, len(x), batch_size)]).numpy()


# ============================================================================ tables
def reference_table(reference_dir: Any = None) -> pd.DataFrame:
    """The committed ``bench_cpu``/``full`` results of this experiment (``results/reference``):
    cell IoU, pixel accuracy, RMSE, matched-cell IoU and recall, COCO segm AP, minutes,
    peak memory."""
    return table(EXPERIMENT, ("IoU", "pixel_accuracy", "rmse", "cell_iou", "cell_recall",
                              "segm_AP", "segm_AP50", "train_steps"), reference_dir)


def table1(results: Mapping[str, Mapping[str, float]]) -> pd.DataFrame:
    """Paper 3's Table I beside ours: one row per model and metric (percent). ``results``
    maps ``fcm`` / ``maskrcnn`` / ``unet`` / ``rmaskrcnn`` to our metrics (fractions)."""
    frames = []
    for key, metrics in results.items():
        if key not in TABLE1_LABELS:
            continue
        ours = {k: metrics[k] for k in ("IoU", "pixel_accuracy", "rmse") if k in metrics}
        df = compare_with_paper(ours, PAPER, "table1", row_filter={"model": TABLE1_LABELS[key]})
        frames.append(df.assign(model=MODEL_LABELS[key]))
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return out[["model", "metric", "paper", "ours", "difference"]] if frames else out


def instance_table(results: Mapping[str, Mapping[str, float]]) -> pd.DataFrame:
    """Our instance-level metrics per model (no paper counterpart)."""
    cols = ["cell_iou", "segm_AP50", "segm_AP", "cell_recall", "matched_cells", "gt_cells",
            "predicted_cells"]
    return pd.DataFrame({MODEL_LABELS.get(k, k): {c: v.get(c, np.nan) for c in cols}
                         for k, v in results.items()}).T


def classification_tables(report: Any) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(Table II-style confusion matrix, Table III-style per-class and average rows with
    the paper's DeepBCSDnet "Average" row for reference, in percent)."""
    cm = pd.DataFrame(report.confusion, index=[f"actual {c}" for c in report.classes],
                      columns=[f"predicted {c}" for c in report.classes])
    rows = {c: {"precision": report.precision[c], "recall": report.recall[c],
                "F1": report.f1[c]} for c in report.classes}
    rows["average (ours)"] = {"accuracy": report.accuracy, "precision": report.macro["precision"],
                              "recall": report.macro["recall"], "F1": report.macro["f1"]}
    ours = pd.DataFrame(rows).T * 100
    paper = paper_table(PAPER, "table3")
    ref = paper[(paper["model"] == "DeepBCSDnet") & (paper["class"] == "Average")]
    ref = ref.set_index(pd.Index(["paper DeepBCSDnet average (ALL vs MM)"]))[
        ["accuracy", "precision", "recall", "F1"]]
    return cm, pd.concat([ours, ref])[["accuracy", "precision", "recall", "F1"]]


# ============================================================================ figures
def pipeline_figure() -> Any:
    """Paper 3's Figure 1 as we run it: augmentation, segmentation, classification."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch
    steps = [("Bone-marrow image", "SegPC-2021\n(stand-in for\nMiMM_SBILab)"),
             ("RENS-GAN", "noise suppression\n+ 2x resolution\n(augmentation)"),
             ("R-Mask R-CNN", "backbone -> FPN-AM\n-> B-U-AM -> RPN/RoI\n-> multi-scale mask head"),
             ("Segmented cells", "instance masks\n-> cell crops"),
             ("DCNN", "DenseNet-121\nclassifier"),
             ("Class", "paper: ALL / MM\nhere: plasma cell /\nother")]
    fig, ax = plt.subplots(figsize=(13, 2.6))
    for i, (title, text) in enumerate(steps):
        x = i * 2.2
        ax.add_patch(FancyBboxPatch((x, 0), 1.8, 1.6, boxstyle="round,pad=0.05",
                                    fc="#e8eef7" if i % 2 else "#f7efe3", ec="0.3"))
        ax.text(x + 0.9, 1.3, title, ha="center", va="center", fontsize=10, weight="bold")
        ax.text(x + 0.9, 0.62, text, ha="center", va="center", fontsize=8)
        if i < len(steps) - 1:
            ax.annotate("", xy=(x + 2.17, 0.8), xytext=(x + 1.88, 0.8),
                        arrowprops=dict(arrowstyle="->", lw=1.5))
    ax.set_xlim(-0.2, len(steps) * 2.2 - 0.3)
    ax.set_ylim(-0.2, 1.8)
    ax.axis("off")
    ax.set_title("DeepBCSDnet pipeline (paper 3, Figure 1) as run in this notebook")
    return finish_figure(fig)


def _attention_place(name: str) -> str:
    """``"fpn.bu_attention.1.0"`` -> ``"B-U-AM N4"`` (F2..F5 after FPN merges, N3..N5)."""
    parts = name.split(".")
    level = int(parts[2])
    return f"FPN-AM F{level + 2}" if parts[1] == "fpn_attention" else f"B-U-AM N{level + 3}"


@torch.no_grad()
def attention_gate_table(model: nn.Module, images: Sequence[torch.Tensor],
                         off_below: float = 0.1) -> pd.DataFrame:
    """What each attention module of an R-Mask R-CNN does, averaged over ``images``: its
    softmax times the entry count ``n`` (1 = uniform) - median, maximum, and the share of
    channels (CA) or positions (SA) below ``off_below`` - and the smallest multiplier its
    features get (:func:`~bloodlib.models.attention.gate`). A collapsed softmax reads as a
    median near 0 and a maximum near ``n``; the plain multiplier then switches the other
    entries off (minimum ~0), the residual one halves them (minimum 0.5)."""
    modules = attention_modules(model.backbone)
    if not modules:
        raise ValueError("attention_gate_table needs an R-Mask R-CNN with attention modules.")
    stats: dict[str, list[tuple[float, ...]]] = {}
    for image in images:
        for name, w in attention_maps(model, image).items():
            n, scaled = w.numel(), w.flatten() * w.numel()
            floor = gate(w.flatten().min(), n, modules[name].residual)
            stats.setdefault(name, []).append((n, float(scaled.median()), float(scaled.max()),
                                               float((scaled < off_below).float().mean()),
                                               float(floor)))
    rows = []
    for name, values in stats.items():
        a = np.asarray(values)
        rows.append({"where": _attention_place(name),
                     "attention": "CA" if isinstance(modules[name], ChannelAttention) else "SA",
                     "entries": int(a[0, 0]), "residual": modules[name].residual,
                     "logit bound": modules[name].logit_bound,
                     "median n*softmax": a[:, 1].mean(), "max n*softmax": a[:, 2].mean(),
                     f"share < {off_below}": a[:, 3].mean(), "min multiplier": a[:, 4].mean()})
    return pd.DataFrame(rows)


@torch.no_grad()
def attention_figure(model: nn.Module, image: torch.Tensor, n_channels: int = 3) -> Any:
    """Paper 3's Figures 4-5 for a trained R-Mask R-CNN with CA-SA: the image, the spatial
    attention maps of F2 (FPN-AM) and N3 (B-U-AM), the channel weights of F2, and F2's
    most and least weighted channels."""
    import matplotlib.pyplot as plt
    maps = attention_maps(model, image)
    ca, sa = maps.get("fpn.fpn_attention.0.0"), maps.get("fpn.fpn_attention.0.1")
    sa_n3 = maps.get("fpn.bu_attention.0.1")
    if ca is None or sa is None:
        raise ValueError("attention_figure needs an R-Mask R-CNN with CA-SA attention.")
    batch, _ = model.transform([image])
    fpn = model.backbone.fpn
    f2 = fpn.top_down(list(model.backbone.body(batch.tensors).values()))[0][0]
    order = torch.argsort(ca, descending=True)
    chosen = [*order[:n_channels].tolist(), int(order[-1])]
    fig, axes = plt.subplots(2, 4, figsize=(13, 6.4))
    rgb = to_uint8(image)
    axes[0, 0].imshow(rgb)
    axes[0, 0].set_title("input")
    for ax, m, t in ((axes[0, 1], sa, "SA weights, F2 (FPN-AM)"),
                     (axes[0, 2], sa_n3, "SA weights, N3 (B-U-AM)")):
        ax.imshow(rgb)
        if m is not None:
            ax.imshow(torch.nn.functional.interpolate(m[None, None], size=rgb.shape[:2],
                                                      mode="bilinear")[0, 0].numpy(),
                      cmap="magma", alpha=0.55)
        ax.set_title(t, fontsize=9)
    axes[0, 3].bar(range(len(ca)), np.sort(ca.numpy())[::-1] * len(ca), color="tab:purple")
    axes[0, 3].axhline(1.0, color="0.4", ls=":", lw=1)
    axes[0, 3].set(title="CA weights x C, F2 (sorted)", xlabel="channel rank",
                   ylabel="weight (1 = uniform)")
    for ax, c in zip(axes[1], chosen):
        ax.imshow(f2[c].numpy(), cmap="viridis")
        rank = "lowest" if c == chosen[-1] else f"top {chosen.index(c) + 1}"
        ax.set_title(f"F2 channel {c} ({rank}, w x C = {float(ca[c]) * len(ca):.2f})", fontsize=9)
    for ax in [*axes[0, :3], *axes[1]]:
        ax.axis("off")
    fig.suptitle("Channel- and spatial-attention of the trained R-Mask R-CNN "
                 "(paper 3, Figures 4-5)")
    return finish_figure(fig)


@torch.no_grad()
def gan_figure(gan: Any, images: Sequence[np.ndarray], history: Any, knobs: Mapping[str, Any],
               seed: int = 0) -> Any:
    """RENS-GAN before/after on crops of ``images`` (original, degraded input, generated)
    and the training losses."""
    import matplotlib.pyplot as plt
    crop = 2 * int(knobs["gan_crop"])
    real = random_crops(images, 3, min(crop, *(min(i.shape[:2]) for i in images)),
                        np.random.default_rng(seed))
    noisy, _ = degrade(real, float(knobs["gan_noise_std"]), torch.Generator().manual_seed(seed))
    fake = gan(noisy.to(next(gan.parameters()).device)).cpu()
    fig, axes = plt.subplots(3, 4, figsize=(12, 9))
    for i in range(3):
        for ax, img, t in ((axes[i, 0], real[i], "original"),
                           (axes[i, 1], noisy[i], "degraded input (1/2 res + noise)"),
                           (axes[i, 2], fake[i], "RENS-GAN output (2x)")):
            ax.imshow(img.permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_title(t, fontsize=9)
            ax.axis("off")
    df = history.to_frame()
    gs = axes[0, 3].get_gridspec()
    for ax in axes[:, 3]:
        ax.remove()
    ax = fig.add_subplot(gs[:, 3])
    for col in ("pixel", "feature", "adversarial", "discriminator"):
        ax.plot(df["step"], df[col], label=col)
    ax.set(xlabel="step", ylabel="loss", yscale="log",
           title=f"GAN losses (VGG features: {history.feature_weights})")
    ax.legend(fontsize=8)
    return finish_figure(fig)


def training_figure(logs: Mapping[str, TrainLog]) -> Any:
    """Training loss per step (smoothed) of each model."""
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, log in logs.items():
        df = log.to_frame()
        if len(df):
            ax.plot(df["step"], df["loss"].rolling(5, min_periods=1).mean(), label=name)
    ax.set(xlabel="step", ylabel="total loss (5-step mean)", title="Training loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return finish_figure(fig)


def outcomes_figure(ev: EvalSet, preds: Mapping[str, Sequence[Prediction]], n: int = 3,
                    score_threshold: float = 0.5) -> Any:
    """Paper 3's Figure 11: image, ground truth and each method's cells on ``n`` images."""
    import matplotlib.pyplot as plt
    n = min(n, len(ev.images))
    cols = ["image", "ground truth", *preds]
    fig, axes = plt.subplots(n, len(cols), figsize=(2.4 * len(cols), 2.5 * n), squeeze=False)
    for i in range(n):
        rgb = to_uint8(ev.images[i])
        panels = [rgb, overlay_mask(rgb, ev.masks[i]) if len(ev.masks[i]) else rgb]
        for p in preds.values():
            keep = p[i].masks[p[i].scores >= score_threshold] if len(p[i].masks) else p[i].masks
            panels.append(overlay_mask(rgb, keep) if len(keep) else rgb)
        for ax, img, t in zip(axes[i], panels, cols):
            ax.imshow(img)
            ax.axis("off")
            if i == 0:
                ax.set_title(t, fontsize=9)
    fig.suptitle("Segmented outcomes on validation images (paper 3, Figure 11)")
    return finish_figure(fig)


def ablation_figure(df: pd.DataFrame) -> Any:
    """Bars of cell IoU and segm AP50 per variant."""
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.45 * len(df) + 1.8))
    for ax, col in zip(axes, ("cell_iou", "segm_AP50")):
        bars = ax.barh(df.index[::-1], df[col][::-1].astype(float), color="tab:blue")
        ax.bar_label(bars, [f"{v:.3f}" for v in df[col][::-1].astype(float)], fontsize=8,
                     padding=2)
        ax.set(xlabel=col, xlim=(0, 1.1))
        ax.grid(axis="x", alpha=0.3)
    axes[1].set_yticklabels([])
    fig.suptitle("Ablation: attention in FPN / bottom-up path / mask head")
    return finish_figure(fig)


def ablation_table(results: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """One row per variant: its parts and metrics (cell IoU, AP50, IoU, PA, RMSE, time)."""
    rows = {}
    for name, r in results.items():
        m = r["metrics"]
        rows[name] = {"steps": r["log"].steps, "train_s": r["log"].seconds,
                      **{k: m.get(k, np.nan) for k in ("cell_iou", "segm_AP50", "segm_AP", "IoU",
                                                       "pixel_accuracy", "rmse")}}
    return pd.DataFrame(rows).T


def table1_figure(df: pd.DataFrame) -> Any:
    """Table I as bars: paper vs ours for IoU, PA and RMSE, one group per model."""
    import matplotlib.pyplot as plt
    metrics = [("IoU", "IoU (%)"), ("pixel_accuracy", "PA (%)"), ("rmse", "RMSE (%)")]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for ax, (key, label) in zip(axes, metrics):
        sub = df[df["metric"] == key]
        x = np.arange(len(sub))
        for off, col, color in ((-0.2, "paper", "0.6"), (0.2, "ours", "tab:blue")):
            bars = ax.bar(x + off, sub[col], 0.4, label=col, color=color)
            ax.bar_label(bars, [f"{v:.1f}" for v in sub[col]], fontsize=7, padding=2)
        ax.set_xticks(x, sub["model"], rotation=20, ha="right")
        ax.set(title=label, ylim=(0, 110))
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Table I: paper 3 (SN-AM + MiMM_SBILab + C-NMC) vs ours (SegPC-2021 validation)")
    return finish_figure(fig)


def save_model(model: nn.Module, path: Any, knobs: Mapping[str, Any], metrics: Mapping[str, float],
               training_data: str) -> Path:
    """Save an R-Mask R-CNN / Mask R-CNN checkpoint with the course's model-store ``meta``
    (task "detect"; ``architecture_kwargs`` rebuild it, see :func:`load_model`)."""
    cfg = dict(getattr(model, "bloodlib_config", {}))
    return save_checkpoint(path, model, meta={
        "task": "detect", "architecture": cfg.get("architecture", "rmaskrcnn"),
        "architecture_kwargs": {k: v for k, v in cfg.items() if k != "architecture"},
        "classes": [CELL], "input_size": int(knobs["image_size"]),
        "preprocessing": {"clahe": False, "stain": None, "normalize": "imagenet"},
        "training_data": training_data, "metrics": finite(metrics),
        "created": date.today().isoformat()})


def load_model(path: Any) -> nn.Module:
    """A Mask R-CNN / R-Mask R-CNN saved by :func:`save_model`, rebuilt from its ``meta``
    (through the model store's checks) and in eval mode."""
    what = "a Mask R-CNN / R-Mask R-CNN"
    ckpt, meta = read_task_checkpoint(path, "detect", what)
    build = {"rmaskrcnn": build_rmaskrcnn, "maskrcnn": build_plain_maskrcnn}.get(
        meta["architecture"])
    if build is None:
        raise ModelFormatError(f"{path} holds a {meta['architecture']!r} detector, not {what} "
                               "saved by blood_cancer.save_model.")
    kwargs = dict(meta["architecture_kwargs"])
    num_classes = kwargs.pop("num_classes")
    return rebuild_model(path, lambda: build(num_classes, **kwargs), ckpt["model_state"],
                         what).eval()
