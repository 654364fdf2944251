"""Paper 1 (MCNet): blood-cell detection on BCCD and TXL-PBC, and the PBC experiment.

Four detectors are trained on the same splits and scored by the same COCO evaluator
(:func:`bloodlib.metrics.coco_evaluate`): Faster R-CNN, Mask R-CNN and MCNet
(:mod:`bloodlib.models.mcnet`, Mask R-CNN + a mask-IoU head) from
:func:`bloodlib.models.detection.build_detector`, and YOLOv9 through ultralytics
(:mod:`bloodlib.yolo`), whose predictions are converted to COCO results first.

Choices made here (the paper does not say, or cannot be followed on a CPU):

* **Splits.** BCCD: the official train / val / test lists (205 / 87 / 72). TXL-PBC: the
  local copy has no test split, so its ``val`` (288) is the test set and 10 % of
  ``train`` is carved out for validation. PBC (Table 1): 80 / 20 per class as paper 1.
* **Masks.** BCCD and TXL-PBC have boxes only; Mask R-CNN and MCNet are trained on
  instance masks made inside the boxes by :func:`bloodlib.autolabel.autolabel_boxes`
  (paper 1 section 3.2 auto-annotates too). PBC masks and boxes come from
  :func:`bloodlib.autolabel.autolabel_pbc` (one centred cell per image). Mask metrics are
  therefore measured against automatic masks.
* **Metrics** (Table 2). ``precision`` / ``recall``: macro averages over the classes at
  score >= ``score_threshold`` (0.5) and IoU 0.5 (the paper gives no threshold);
  ``mAP50`` = COCO AP at IoU 0.5 and ``mAP50_95`` = COCO AP@[.5:.95] (the paper's "mAP",
  undefined there), both box-based for every model.
* **Preprocessing.** Paper 1 enhances contrast (CLAHE) and normalises stain before
  training; ``preprocessing`` in the profile applies :mod:`bloodlib.transforms.preprocess`
  to every image once (files written under the run's output folder), so all four models
  see the same pixels. The paper does not name its stain method (it cites [3]); ``full``
  uses Reinhard: Macenko rescales each stain so that its 99th-percentile concentration
  matches the PBC reference, and on BCCD (RBCs fill the field, little eosin-dense
  material) that multiplies the eosin concentration about 4x and turns the RBCs purple.
* **Training.** SGD, momentum 0.9, weight decay 1e-4 (section 4.1). The staged schedule
  (heads 50k, from stage 4 80k at 1e-3, all 40k at 1e-4) is used in ``full`` when the
  ImageNet backbone weights are in the torch hub cache; from random weights a frozen
  backbone makes no sense, so all layers train. ``quick`` fine-tunes an ImageNet
  EfficientNet-Lite0 (packaged weights, offline), ``bench_cpu`` a MobileNetV3; both use
  smaller heads and images and a time budget per model. YOLO starts from ultralytics'
  COCO weights only when they are on disk (``yolo_pretrained``).
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from ..config import get_profile, register
from .configs import McnetConfig
from ..data.splits import subset_coco  # noqa: F401  (also notebooks' mc./bc.subset_coco)
from ..engine import distributed as ddp
from ..metrics.detection import detection_roc  # noqa: F401  (notebook 01 calls mc.detection_roc)
from ..data.synthetic import write_detection_set
from ..errors import DatasetNotFoundError
from ..autolabel import autolabel_boxes, autolabel_pbc
from ..inference.common import build_preprocess
from ..io import read_image
from ..data.parsers.pbc import load_pbc, PBC_CLASSES
from ..data.splits import per_class_split, stratified_split
from ..data.records import category_names
from ..data.datasets import collate_detection, decode_segmentation, DetectionDataset
from ..engine.detection import (detection_transforms, evaluate_detector, LOSS_LABELS,
                                PAPER1_STAGES, predict_coco, scale_stages, Stage,
                                train_detector)
from ..models.detection import build_detector
from ..runtime import seed_everything
from ..inference.detection import detector_meta
from .. import yolo
from ..metrics.detection import detection_confusion_matrix, precision_recall_f1
from ..yolo import predict_coco_yolo, save_yolo_checkpoint
from ..data.convert import mask_to_rle, polygons_to_mask, rle_to_mask
from ..inference.store import _store, normalize_meta, save_model
from ..results import compare_with_paper, paper_table, reference_table as table
from ..models.segmentation_zoo import count_parameters
from ..viz import (class_color, confusion_panels, detection_grid, finish_figure,
                   plot_roc_curves)
import resource
import sys
from PIL import Image
from pycocotools import mask as mask_utils

EXPERIMENT = "mcnet"
PAPER = "paper1"
MODELS = ("faster_rcnn", "mask_rcnn", "mcnet", "yolov9")
TORCHVISION_MODELS = ("faster_rcnn", "mask_rcnn", "mcnet")
MASK_MODELS = ("mask_rcnn", "mcnet")
MODEL_LABELS = {"faster_rcnn": "Faster R-CNN", "mask_rcnn": "Mask R-CNN", "mcnet": "MCNet",
                "yolov9": "YOLOv9"}
DATASET_LABELS = {"bccd": "BCCD", "txl_pbc": "TXL-PBC", "pbc": "PBC", "synthetic": "synthetic"}
TABLE_METRICS = ("recall", "precision", "mAP50", "mAP50_95")

#: Smaller heads and fewer proposals than torchvision's defaults, for CPU runs.
LIGHT_HEADS = {"fpn_channels": 128, "representation_size": 256, "mask_head_layers": [128, 128],
               "mask_iou_channels": 64, "mask_iou_fc": 256, "rpn_pre_nms_top_n_train": 1000,
               "rpn_post_nms_top_n_train": 500, "rpn_pre_nms_top_n_test": 500,
               "rpn_post_nms_top_n_test": 300, "box_batch_size_per_image": 128,
               "box_detections_per_img": 100}
_COMMON = {"models": list(MODELS), "aspect_ratios": [0.5, 1.0, 2.0], "anchor_sizes": None,
           "momentum": 0.9, "weight_decay": 1e-4, "grad_clip": 10.0, "score_threshold": 0.5,
           "iou_threshold": 0.5, "num_workers": 0, "hflip": 0.5, "vflip": 0.5,
           "txl_val_fraction": 0.1, "yolo_model": "yolov9t", "samples_per_grid": 3,
           # ultralytics' COCO weights: "auto" uses them when on disk, else from scratch
           "yolo_pretrained": "auto",
           "store_model": False,
           # ultralytics' own multi-GPU training: e.g. [0, 1] or "0,1" (None: the run's device)
           "yolo_devices": None}
register(EXPERIMENT, schema=McnetConfig, profiles={
    # a few minutes on 2 cores: BCCD subset, fine-tuning an ImageNet EfficientNet-Lite0
    # (packaged weights, offline) at 256 px for half a minute per model
    "quick": {**_COMMON, "datasets": ["bccd"], "backbone": "efficientnet_lite0",
              "pretrained": True, "min_size": 256, "max_size": 352, "heads": LIGHT_HEADS,
              "preprocessing": {"clahe": True, "stain": None}, "batch_size": 2,
              "iterations": 200, "lr": 0.01, "warmup_iters": 10, "lr_steps": [],
              "stages": None, "time_budget_s": 30, "eval_every_epochs": None,
              "max_train_images": 24, "max_val_images": 6, "max_test_images": 10,
              "yolo_imgsz": 256, "yolo_epochs": 3, "yolo_batch": 4, "yolo_time_budget_s": 12,
              "yolo_overrides": {"mosaic": 0.0, "warmup_epochs": 0.0},
              "pbc": True, "pbc_models": list(MODELS), "pbc_per_class": {"train": 4, "test": 2},
              "pbc_min_size": 128, "pbc_iterations": 60, "pbc_time_budget_s": 15,
              "pbc_yolo_epochs": 2, "pbc_yolo_time_budget_s": 6, "synthetic_images": 24},
    # the benchmark: each model 60 min on 2 CPU cores on the full BCCD train split (probe:
    # ~1.5 s CPU per step of 2 images at 480x640 for Faster R-CNN / MCNet, single thread;
    # YOLOv9t ~0.25 s CPU per training image): ~3200 steps (~30 epochs) / ~100 YOLO epochs
    "bench_cpu": {**_COMMON, "models": ["faster_rcnn", "mcnet", "yolov9"], "datasets": ["bccd"],
                  "backbone": "mobilenet_v3_large", "pretrained": "auto", "min_size": 480,
                  "max_size": 640, "heads": LIGHT_HEADS,
                  "preprocessing": {"clahe": True, "stain": None}, "batch_size": 2,
                  "iterations": 3200, "lr": 0.01, "warmup_iters": 200, "lr_steps": [0.75, 0.92],
                  "stages": None, "time_budget_s": 3600, "eval_every_epochs": 8,
                  "max_train_images": None, "max_val_images": None, "max_test_images": None,
                  "yolo_imgsz": 480, "yolo_epochs": 300, "yolo_batch": 8,
                  "yolo_time_budget_s": 3600, "yolo_overrides": {"close_mosaic": 5},
                  "pbc": False, "pbc_models": [], "pbc_per_class": {"train": 0, "test": 0},
                  "pbc_min_size": 256, "pbc_iterations": 0, "pbc_time_budget_s": 0,
                  "pbc_yolo_epochs": 0, "pbc_yolo_time_budget_s": 0, "synthetic_images": 100,
                  "store_model": True},
    # the paper's protocol (GPU): ResNet50-FPN, staged schedule, YOLOv9 with its settings
    "full": {**_COMMON, "datasets": ["bccd", "txl_pbc"], "backbone": "resnet50",
             "pretrained": "auto", "min_size": 480, "max_size": 640, "heads": {},
             "preprocessing": {"clahe": True, "stain": "reinhard"}, "batch_size": 2,
             "iterations": 170_000, "lr": 1e-3, "warmup_iters": 1000, "lr_steps": [],
             "stages": "paper1", "time_budget_s": None, "eval_every_epochs": 10,
             "max_train_images": None, "max_val_images": None, "max_test_images": None,
             "yolo_model": "yolov9s", "yolo_imgsz": 640, "yolo_epochs": 100, "yolo_batch": 16,
             "yolo_time_budget_s": None,
             "yolo_overrides": {"optimizer": "SGD", "lr0": 0.01, "lrf": 0.01, "momentum": 0.937,
                                "weight_decay": 0.0005, "warmup_epochs": 3.0,
                                "warmup_momentum": 0.8, "warmup_bias_lr": 0.1, "box": 7.5},
             "pbc": True, "pbc_models": list(MODELS), "pbc_per_class": None,
             "pbc_min_size": 363, "pbc_iterations": 40_000, "pbc_time_budget_s": None,
             "pbc_yolo_epochs": 100, "pbc_yolo_time_budget_s": None, "synthetic_images": 200,
             "store_model": True},
})


# ----------------------------------------------------------------------------- data


def split_coco(coco: dict, fraction: float, seed: int = 0) -> tuple[dict, dict]:
    """``(rest, part)``: a seeded ``fraction`` of the images (at least one) and the rest."""
    n = len(coco["images"])
    k = max(1, int(round(n * fraction)))
    part = subset_coco(coco, k, seed)
    ids = {im["id"] for im in part["images"]}
    rest = {**coco, "images": [im for im in coco["images"] if im["id"] not in ids],
            "annotations": [a for a in coco["annotations"] if a["image_id"] not in ids]}
    return rest, part


def _synthetic_splits(knobs: Mapping[str, Any], work_dir: Path, seed: int) -> dict[str, dict]:
    n = int(knobs.get("synthetic_images", 24))
    sizes = {"train": n, "val": max(2, n // 4), "test": max(4, n // 3)}
    return {s: write_detection_set(work_dir / "synthetic_smears" / s, k, seed + i, split=s)
            for i, (s, k) in enumerate(sizes.items())}


def load_splits(dataset: str, knobs: Mapping[str, Any], work_dir: Any, seed: int = 0
                ) -> tuple[dict[str, dict], str]:
    """``({"train", "val", "test"}: COCO dict), source)`` for ``dataset`` ("bccd",
    "txl_pbc"), subset to the profile's ``max_*_images``; synthetic smears (source
    "synthetic") when the dataset is not on disk."""
    work_dir = Path(work_dir)
    try:
        if dataset == "bccd":
            from ..data.parsers.bccd import load_bccd
            splits = {s: load_bccd(s) for s in ("train", "val", "test")}
        elif dataset == "txl_pbc":
            from ..data.parsers.txl_pbc import load_txl_pbc
            train, val = split_coco(load_txl_pbc("train"), float(knobs["txl_val_fraction"]), seed)
            splits = {"train": train, "val": val, "test": load_txl_pbc("val")}
        else:
            raise ValueError(f"Unknown detection dataset {dataset!r}; use 'bccd' or 'txl_pbc'.")
        source = dataset
    except DatasetNotFoundError as exc:
        warnings.warn(f"{dataset}: {exc} Using synthetic smears instead.", stacklevel=2)
        splits, source = _synthetic_splits(knobs, work_dir, seed), "synthetic"
    out = {}
    for i, s in enumerate(("train", "val", "test")):
        n = knobs.get(f"max_{s}_images")
        out[s] = subset_coco(splits[s], None if n is None else int(n), seed + i)
    return out, source


def add_masks(coco: dict) -> dict:
    """``coco`` with an instance mask per box: kept when every annotation already has one
    (synthetic smears), else made by :func:`bloodlib.autolabel.autolabel_boxes`."""
    if coco["annotations"] and all(a.get("segmentation") for a in coco["annotations"]):
        return coco
    return autolabel_boxes(copy.deepcopy(coco))


def preprocess_images(splits: Mapping[str, dict], preprocessing: Optional[Mapping[str, Any]],
                      out_dir: Any) -> dict[str, dict]:
    """The splits with every image passed once through CLAHE / stain normalisation
    (``{"clahe": bool, "stain": name|None}``) and written as PNG under ``out_dir``; the
    same splits when both are off. Files already written are reused."""
    pre = dict(preprocessing or {})
    if not pre.get("clahe") and not pre.get("stain"):
        return dict(splits)
    fn = build_preprocess(bool(pre.get("clahe")), pre.get("stain"))
    tag = "_".join(filter(None, ["clahe" if pre.get("clahe") else "", pre.get("stain") or ""]))
    out: dict[str, dict] = {}
    for split, coco in splits.items():
        folder = Path(out_dir) / tag / split
        folder.mkdir(parents=True, exist_ok=True)
        new = copy.deepcopy(coco)
        for im in new["images"]:
            dst = folder / (Path(im["path"]).stem + ".png")
            if not dst.is_file():
                Image.fromarray(fn(read_image(im["path"]))).save(dst)
            im["path"], im["file_name"] = str(dst), dst.name
        out[split] = new
    return out


def load_pbc_splits(knobs: Mapping[str, Any], work_dir: Any, seed: int = 0,
                    per_class: Optional[Mapping[str, int]] = None) -> tuple[dict[str, dict], str]:
    """Paper 1's PBC experiment: per-class splits (``per_class``, default the profile's
    ``pbc_per_class``, e.g. ``{"train": 300, "val": 100, "test": 100}``; None = 80/20 of
    every image) auto-annotated by :func:`bloodlib.autolabel.autolabel_pbc`. Synthetic
    single-cell crops when PBC is not on disk."""
    per_class = per_class if per_class is not None else knobs.get("pbc_per_class")
    try:
        need = None if per_class is None else sum(int(v) for v in per_class.values())
        records, source = load_pbc(classes=PBC_CLASSES, max_per_class=need, seed=seed), "pbc"
    except DatasetNotFoundError as exc:
        from ..data.synthetic import write_classification_set
        warnings.warn(f"PBC: {exc} Using synthetic cell crops instead.", stacklevel=2)
        n = max(2, sum(int(v) for v in (per_class or {"train": 8, "test": 2}).values()))
        records = write_classification_set(Path(work_dir) / "synthetic_pbc", n, seed, size=96)
        source = "synthetic"
    labels = [r.label for r in records]
    parts = per_class_split(labels, per_class, seed=seed, scale_down=True) if per_class \
        else stratified_split(labels, {"train": 0.8, "test": 0.2}, seed=seed)
    classes = sorted(set(labels), key=list(PBC_CLASSES).index) \
        if set(labels) <= set(PBC_CLASSES) else sorted(set(labels))
    out = {}
    for split, idx in parts.items():
        coco = autolabel_pbc([records[i] for i in idx], classes)
        coco.setdefault("info", {}).update(dataset="pbc" if source == "pbc" else "synthetic",
                                           split=split)
        out[split] = coco
    return out, source


def class_names(coco: dict) -> list[str]:
    return category_names(coco)


def make_loader(coco: dict, knobs: Mapping[str, Any], train: bool, with_masks: bool,
                seed: int = 0, batch_size: Optional[int] = None) -> DataLoader:
    """A DataLoader of :class:`DetectionDataset` (flips when ``train``)."""
    tf = detection_transforms(train, float(knobs.get("hflip", 0.5)),
                              float(knobs.get("vflip", 0.5))) if train else None
    ds = DetectionDataset(coco, tf, with_masks=with_masks)
    g = torch.Generator().manual_seed(seed)
    return DataLoader(ds, batch_size=int(batch_size or knobs["batch_size"]), shuffle=train,
                      generator=g, collate_fn=collate_detection,
                      num_workers=int(knobs.get("num_workers", 0)))


# ----------------------------------------------------------------------------- models
def build_model(kind: str, knobs: Mapping[str, Any], num_classes: int,
                min_size: Optional[int] = None, **overrides: Any) -> torch.nn.Module:
    """``build_detector(kind, ...)`` with the profile's backbone, sizes, anchors and heads;
    ``num_classes`` excludes the background."""
    kw = dict(knobs.get("heads") or {})
    if knobs.get("anchor_sizes"):
        kw["anchor_sizes"] = knobs["anchor_sizes"]
    kw.update(overrides)
    size = int(min_size or knobs["min_size"])
    max_size = int(knobs["max_size"]) if min_size is None else int(round(size * 4 / 3))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="No ImageNet weights")
        return build_detector(kind, knobs["backbone"], num_classes + 1, min_size=size,
                              max_size=max_size, aspect_ratios=knobs["aspect_ratios"],
                              pretrained_backbone=knobs.get("pretrained", False), **kw)


def _stages(knobs: Mapping[str, Any], model: torch.nn.Module, iterations: int):
    if knobs.get("stages") != "paper1":
        return None
    stages = scale_stages(PAPER1_STAGES, iterations)
    if not getattr(model, "backbone_pretrained", False):  # nothing to fine-tune: train all
        stages = [Stage(s.name, s.iterations, s.lr, "all") for s in stages]
    return stages


def train_model(kind: str, splits: Mapping[str, dict], knobs: Mapping[str, Any],
                device: Any = "cpu", seed: int = 0, *, checkpoint_path: Any = None,
                min_size: Optional[int] = None, iterations: Optional[int] = None,
                time_budget_s: Optional[float] = None, progress: bool = False):
    """Train detector ``kind`` on ``splits["train"]``; returns ``(model, DetectionTraining)``.

    With ``eval_every_epochs`` and a non-empty ``val`` split, box AP50 on val is
    measured every so many epochs and the best weights are kept."""
    seed_everything(seed)
    train = splits["train"]
    with_masks = kind in MASK_MODELS
    model = build_model(kind, knobs, len(train["categories"]), min_size=min_size)
    loader = make_loader(train, knobs, True, with_masks, seed)
    iters = int(iterations or knobs["iterations"])
    val = splits.get("val")
    evaluate, every = None, None
    if knobs.get("eval_every_epochs") and val and val["images"]:
        val_loader = make_loader(val, knobs, False, False, seed)
        every = max(1, int(knobs["eval_every_epochs"]) * ddp.batches_per_rank(loader))

        def evaluate(m):
            return {"AP50": evaluate_detector(m, val_loader, val, "bbox", device=device).AP50}
    budget = time_budget_s if time_budget_s is not None else knobs.get("time_budget_s")
    resume = None
    if checkpoint_path is None:
        from ..engine.checkpoint import run_checkpoint
        label = (f"{kind}_{knobs.get('backbone', '')}_{train.get('info', {}).get('dataset', '')}"
                 f"_{len(train['images'])}img_{min_size or knobs.get('min_size')}px_{iters}it_s{seed}")
        checkpoint_path, resume = run_checkpoint(knobs, label)
    result = train_detector(
        model, loader, iterations=iters, stages=_stages(knobs, model, iters), lr=float(knobs["lr"]),
        momentum=float(knobs["momentum"]), weight_decay=float(knobs["weight_decay"]),
        warmup_iters=int(knobs["warmup_iters"]),
        lr_steps=[int(f * iters) for f in knobs.get("lr_steps") or []],
        grad_clip=knobs.get("grad_clip"), device=device, checkpoint_path=checkpoint_path,
        checkpoint_meta=_meta(model, train, knobs) if checkpoint_path else None,
        time_budget_s=budget, evaluate=evaluate, eval_every=every, progress=progress,
        resume_from=resume)
    return model, result


def _meta(model: torch.nn.Module, train: dict, knobs: Mapping[str, Any],
          metrics: Optional[Mapping[str, float]] = None) -> dict[str, Any]:
    info = train.get("info", {})
    return detector_meta(model, class_names(train), input_size=int(knobs["min_size"]),
                         preprocessing={**(knobs.get("preprocessing") or {}), "normalize": "unit"},
                         training_data={"dataset": info.get("dataset", ""),
                                        "split": info.get("split", "train"),
                                        "images": len(train["images"])},
                         metrics=metrics)


def train_yolo_model(splits: Mapping[str, dict], knobs: Mapping[str, Any], device: Any = "cpu",
                     seed: int = 0, work_dir: Any = ".", *, epochs: Optional[int] = None,
                     time_budget_s: Optional[float] = None, imgsz: Optional[int] = None,
                     run_name: str = "yolo"):
    """Export the splits to YOLO format and train ultralytics YOLOv9 on them; returns the
    :class:`bloodlib.yolo.YoloTraining` (its ``model`` holds the best weights)."""
    work = Path(work_dir)
    parts = {"train": splits["train"]}
    parts["val"] = splits["val"] if splits.get("val") and splits["val"]["images"] else splits["test"]
    data_yaml = yolo.export_yolo_dataset(parts, work / f"{run_name}_data")
    budget = time_budget_s if time_budget_s is not None else knobs.get("yolo_time_budget_s")
    return yolo.train_yolo(data_yaml, knobs.get("yolo_model", "yolov9t"),
                           epochs=int(epochs or knobs["yolo_epochs"]),
                           imgsz=int(imgsz or knobs["yolo_imgsz"]), batch=int(knobs["yolo_batch"]),
                           device=knobs.get("yolo_devices") or device, seed=seed,
                           time_budget_s=budget,
                           pretrained=knobs.get("yolo_pretrained", "auto"), project=work / "yolo_runs",
                           run_name=run_name, n_train_images=len(splits["train"]["images"]),
                           resume=bool(knobs.get("resume")),
                           **dict(knobs.get("yolo_overrides") or {}))


# ----------------------------------------------------------------------------- evaluation
@dataclass
class Evaluation:
    """One model on one test set: COCO results, box (and mask) reports, fixed-threshold
    precision/recall/F1, the detection confusion matrix, inference speed."""

    predictions: list[dict]
    bbox: Any
    segm: Any = None
    segm_class_scores: Any = None
    prf: dict = field(default_factory=dict)
    confusion: Any = None
    confusion_labels: list = field(default_factory=list)
    seconds: float = float("nan")
    images: int = 0

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds and self.seconds > 0 else float("nan")

    def metrics(self) -> dict[str, float]:
        """Flat metrics for the results JSON and the paper tables (fractions)."""
        out = {"precision": self.prf["macro_precision"], "recall": self.prf["macro_recall"],
               "f1": self.prf["macro_f1"], "micro_precision": self.prf["precision"],
               "micro_recall": self.prf["recall"], "mAP50": self.bbox.AP50,
               "mAP50_95": self.bbox.AP, "AP75": self.bbox.AP75, "AR": self.bbox.AR}
        out.update({f"AP50/{k}": v for k, v in self.bbox.per_class_AP50.items()})
        out.update({f"AP/{k}": v for k, v in self.bbox.per_class_AP.items()})
        if self.segm is not None:
            out.update(segm_mAP50=self.segm.AP50, segm_mAP50_95=self.segm.AP,
                       segm_AP75=self.segm.AP75)
        if self.segm_class_scores is not None:
            out.update(segm_mAP50_95_class_scores=self.segm_class_scores.AP,
                       segm_mAP50_class_scores=self.segm_class_scores.AP50)
        if math.isfinite(self.images_per_second):
            out["inference_images_per_s"] = self.images_per_second
        return {k: float(v) for k, v in out.items()}


def evaluation_from_predictions(gt: dict, predictions: Sequence[dict], knobs: Mapping[str, Any],
                                seconds: float = float("nan")) -> Evaluation:
    """Score COCO ``predictions`` against ``gt`` (box; masks too when present)."""
    preds = list(predictions)
    bbox = evaluate_detector(None, None, gt, "bbox", predictions=preds)
    segm = segm_cls = None
    has_masks = bool(preds) and "segmentation" in preds[0] and \
        all(a.get("segmentation") for a in gt["annotations"])
    if has_masks:
        segm = evaluate_detector(None, None, gt, "segm", predictions=preds)
        if any("mask_iou" in p for p in preds):
            segm_cls = evaluate_detector(None, None, gt, "segm", predictions=preds,
                                         use_mask_scores=False)
    thr, iou = float(knobs.get("score_threshold", 0.5)), float(knobs.get("iou_threshold", 0.5))
    prf = precision_recall_f1(gt, preds, thr, iou)
    cm, labels = detection_confusion_matrix(gt, preds, thr, iou)
    return Evaluation(preds, bbox, segm, segm_cls, prf, cm, labels, seconds, len(gt["images"]))


def evaluate_model(model: torch.nn.Module, gt: dict, knobs: Mapping[str, Any],
                   device: Any = "cpu") -> Evaluation:
    """Predict ``gt``'s images with a torchvision detector and score them."""
    loader = make_loader(gt, knobs, False, False, batch_size=1)
    t0 = time.perf_counter()
    preds = predict_coco(model, loader, device)
    seconds = time.perf_counter() - t0
    _attach_mask_iou(model, preds)
    return evaluation_from_predictions(gt, preds, knobs, seconds)


def _attach_mask_iou(model: torch.nn.Module, preds: list[dict]) -> None:
    """MCNet's predicted IoU = mask score / class score, kept on each result."""
    heads = getattr(model, "roi_heads", None)
    if getattr(heads, "use_mask_iou", False):
        for p in preds:
            if "mask_score" in p and p["score"] > 0:
                p["mask_iou"] = float(min(1.0, p["mask_score"] / p["score"]))


def evaluate_yolo_model(yolo_model: Any, gt: dict, knobs: Mapping[str, Any], device: Any = "cpu",
                        imgsz: Optional[int] = None) -> Evaluation:
    """Predict ``gt``'s images with a YOLO model, convert to COCO results, score them."""
    t0 = time.perf_counter()
    preds = predict_coco_yolo(yolo_model, gt, imgsz=int(imgsz or knobs["yolo_imgsz"]),
                              device=device)
    return evaluation_from_predictions(gt, preds, knobs, time.perf_counter() - t0)


def mask_iou_calibration(gt: dict, predictions: Sequence[dict], score_threshold: float = 0.3
                         ) -> pd.DataFrame:
    """For every MCNet detection above ``score_threshold``: its predicted mask IoU and its
    actual mask IoU with the best ground-truth mask of the same class (pycocotools)."""
    size = {im["id"]: (im["height"], im["width"]) for im in gt["images"]}
    gts: dict[Any, list[dict]] = {}
    for a in gt["annotations"]:
        gts.setdefault(a["image_id"], []).append(a)
    rows = []
    for p in predictions:
        if "mask_iou" not in p or p["score"] < score_threshold:
            continue
        cands = [a for a in gts.get(p["image_id"], []) if a["category_id"] == p["category_id"]]
        if not cands:
            rows.append({"predicted_iou": p["mask_iou"], "actual_iou": 0.0, "score": p["score"]})
            continue
        h, w = size[p["image_id"]]
        rles = [a["segmentation"] if isinstance(a["segmentation"], dict)
                else mask_to_rle(polygons_to_mask(a["segmentation"], h, w)) for a in cands]
        rles = [{"size": r["size"], "counts": r["counts"].encode() if isinstance(r["counts"], str)
                 else r["counts"]} for r in rles]
        seg = dict(p["segmentation"])
        seg["counts"] = seg["counts"].encode() if isinstance(seg["counts"], str) else seg["counts"]
        iou = np.asarray(mask_utils.iou([seg], rles, [0] * len(rles))).max()
        rows.append({"predicted_iou": p["mask_iou"], "actual_iou": float(iou), "score": p["score"]})
    return pd.DataFrame(rows, columns=["predicted_iou", "actual_iou", "score"])


@dataclass
class Outcome:
    """A trained model and how it did: ``evaluation`` on the test split, the training
    ``log`` (per step; per epoch for YOLO), seconds, steps/epochs, images seen."""

    name: str
    model: Any
    evaluation: Evaluation
    log: Any
    seconds: float
    iterations: int
    images: int
    stop_reason: str = ""
    pretrained: bool = False

    @property
    def train_images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("nan")

    def result_metrics(self) -> dict[str, float]:
        """Finite metrics for ``run.finish``: the evaluation's plus training time and speed."""
        m = {**self.evaluation.metrics(), "train_seconds": self.seconds,
             "train_images_per_s": self.train_images_per_second,
             "train_iterations": float(self.iterations)}
        return {k: float(v) for k, v in m.items() if v is not None and math.isfinite(v)}


def train_and_evaluate(name: str, splits: Mapping[str, dict], masked: Mapping[str, dict],
                       knobs: Mapping[str, Any], device: Any = "cpu", seed: int = 0,
                       work_dir: Any = ".", *, min_size: Optional[int] = None,
                       iterations: Optional[int] = None, time_budget_s: Optional[float] = None,
                       yolo_epochs: Optional[int] = None, tag: str = "",
                       detections_per_img: Optional[int] = None) -> Outcome:
    """Train model ``name`` (one of :data:`MODELS`) on the train split (``masked`` splits
    for Mask R-CNN and MCNet) and evaluate it on the test split."""
    if name == "yolov9":
        tr = train_yolo_model(splits, knobs, device, seed, work_dir, epochs=yolo_epochs,
                              time_budget_s=time_budget_s, imgsz=min_size,
                              run_name=f"yolo{('_' + tag) if tag else ''}")
        ev = evaluate_yolo_model(tr.model, splits["test"], knobs, device, imgsz=min_size)
        return Outcome(name, tr.model, ev, tr.history, tr.seconds, tr.epochs, tr.images,
                       "", tr.pretrained is not None)
    if name not in TORCHVISION_MODELS:
        raise ValueError(f"Unknown model {name!r}; choose from {list(MODELS)}.")
    data = masked if name in MASK_MODELS else splits
    k = dict(knobs)
    if detections_per_img is not None:
        k["heads"] = {**(k.get("heads") or {}), "box_detections_per_img": int(detections_per_img)}
    model, tr = train_model(name, data, k, device, seed, min_size=min_size,
                            iterations=iterations, time_budget_s=time_budget_s)
    ev = evaluate_model(model, data["test"], k, device)
    return Outcome(name, model, ev, tr.log, tr.seconds, tr.iterations, tr.images, tr.stop_reason,
                   bool(getattr(model, "backbone_pretrained", False)))


def store_outcome(outcome: Outcome, train: dict, knobs: Mapping[str, Any], name: str,
                  folder: Any = None) -> Path:
    """Save a trained detector (torchvision or YOLO) into the model store as ``name`` with
    its metadata (classes, input size, preprocessing, training data, test metrics), where
    ``bloodlib predict``, the demo and ``bloodlib bench latency`` find it."""
    m = outcome.evaluation.metrics()
    metrics = {"test_mAP50": m.get("mAP50"), "test_mAP50_95": m.get("mAP50_95"),
               "train_seconds": outcome.seconds}
    if outcome.name != "yolov9":
        meta = _meta(outcome.model, train, knobs, metrics=metrics)
        return save_model(outcome.model, name, meta, folder=folder)
    info = train.get("info", {})
    meta = normalize_meta({
        "task": "detect", "architecture": "yolo", "classes": class_names(train),
        "input_size": int(knobs["yolo_imgsz"]),
        "preprocessing": {**(knobs.get("preprocessing") or {}), "normalize": "unit"},
        "training_data": {"dataset": info.get("dataset", ""), "split": info.get("split", "train"),
                          "images": len(train["images"])},
        "metrics": {k: float(v) for k, v in metrics.items()
                    if isinstance(v, (int, float)) and math.isfinite(v)}})
    return save_yolo_checkpoint(outcome.model, _store(folder) / f"{name}.pt", meta["classes"],
                                meta, name=knobs.get("yolo_model", "yolov9t"),
                                imgsz=int(knobs["yolo_imgsz"]))


def reference_table(reference_dir: Any = None) -> pd.DataFrame:
    """The committed ``bench_cpu``/``full`` results of this experiment (``results/reference``):
    box mAP50, mAP50-95, per-class AP50, precision/recall, speed, minutes, peak memory."""
    return table(EXPERIMENT, ("mAP50", "mAP50_95", "AP50/WBC", "AP50/RBC", "AP50/Platelets",
                              "segm_mAP50", "precision", "recall", "train_images_per_s",
                              "inference_images_per_s"), reference_dir)


def split_counts(splits: Mapping[str, dict]) -> pd.DataFrame:
    """Images and boxes per class for each split (columns)."""
    rows = {}
    for s, coco in splits.items():
        names = {c["id"]: c["name"] for c in coco["categories"]}
        counts = pd.Series([names[a["category_id"]] for a in coco["annotations"]],
                           dtype=object).value_counts()
        rows[s] = {"images": len(coco["images"]),
                   **{n: int(counts.get(n, 0)) for n in names.values()}}
    return pd.DataFrame(rows)


def parameter_table(knobs: Mapping[str, Any], num_classes: int) -> pd.DataFrame:
    """Parameters of each torchvision model at the profile's settings (and YOLO's)."""
    rows = []
    for name in knobs["models"]:
        if name == "yolov9":
            from ..yolo import build_yolo
            net = build_yolo(knobs.get("yolo_model", "yolov9t"), pretrained=False).model
            rows.append({"model": MODEL_LABELS[name], "backbone": knobs.get("yolo_model"),
                         "parameters": count_parameters(net)})
        else:
            m = build_model(name, knobs, num_classes)
            rows.append({"model": MODEL_LABELS[name], "backbone": knobs["backbone"],
                         "parameters": count_parameters(m),
                         "ImageNet backbone": bool(getattr(m, "backbone_pretrained", False))})
    return pd.DataFrame(rows).set_index("model")


# ----------------------------------------------------------------------------- tables
def table_metrics(ev: Evaluation) -> dict[str, float]:
    """Table 1/2 metrics of one evaluation (fractions)."""
    m = ev.metrics()
    return {k: m[k] for k in TABLE_METRICS}


def table2(results: Mapping[str, Mapping[str, float]], dataset: str = "bccd") -> pd.DataFrame:
    """Paper 1's Table 2 (BCCD) beside ours: ``results[model] = metrics`` (fractions).
    Rows: model, metric, paper (percent), ours (percent), difference."""
    frames = []
    for name, metrics in results.items():
        ours = {k: metrics[k] for k in TABLE_METRICS if k in metrics}
        df = compare_with_paper(ours, PAPER, "table2", row_filter={"model": MODEL_LABELS[name]})
        frames.append(df.assign(dataset=DATASET_LABELS.get(dataset, dataset),
                                model=MODEL_LABELS[name]))
    return _stack(frames)


def table1(results: Mapping[str, Mapping[str, float]]) -> pd.DataFrame:
    """Paper 1's Table 1 (PBC) beside ours, in percent. The paper's "mAP" column mixes
    fractions and one percentage; its values are shown in percent (fractions x 100)."""
    ref = paper_table(PAPER, "table1").set_index("model")
    frames = []
    for name, metrics in results.items():
        label = MODEL_LABELS[name]
        ours = {k: metrics[k] for k in ("recall", "precision", "mAP50") if k in metrics}
        df = compare_with_paper(ours, PAPER, "table1", row_filter={"model": label},
                                metric_map={k: k for k in ours}, scale=100)
        paper_map = float(ref.loc[label, "mAP50_95"])
        paper_map = paper_map * 100 if paper_map <= 1 else paper_map
        if "mAP50_95" in metrics:
            mine = 100 * float(metrics["mAP50_95"])
            df = pd.concat([df, pd.DataFrame([{"metric": "mAP50_95", "label": "mAP",
                                               "paper": paper_map, "ours": mine,
                                               "difference": mine - paper_map,
                                               "unit": "percent"}])], ignore_index=True)
        frames.append(df.assign(dataset="PBC", model=label))
    return _stack(frames)


def _stack(frames: list[pd.DataFrame]) -> pd.DataFrame:
    if not frames:
        return pd.DataFrame(columns=["dataset", "model", "metric", "paper", "ours", "difference"])
    out = pd.concat(frames, ignore_index=True)
    return out[["dataset", "model", "metric", "paper", "ours", "difference"]]


def wide(table: pd.DataFrame) -> pd.DataFrame:
    """A paper-vs-ours table as one row per model, columns (paper|ours, metric)."""
    if table.empty:
        return table
    return table.pivot_table(index=["dataset", "model"], columns="metric",
                             values=["paper", "ours"], sort=False).round(2)


def benchmark_row(name: str, ev: Evaluation, seconds: float, images_per_s: float,
                  peak_mb: Optional[float] = None) -> dict[str, Any]:
    """One row of the benchmark table (issue 5): mAP50, mAP50-95, per-class AP50,
    minutes, training and inference images per second, peak memory."""
    m = ev.metrics()
    row = {"model": MODEL_LABELS.get(name, name), "mAP50": m["mAP50"], "mAP50_95": m["mAP50_95"],
           **{k: v for k, v in m.items() if k.startswith("AP50/")},
           "train_minutes": seconds / 60, "train_images_per_s": images_per_s,
           "inference_images_per_s": ev.images_per_second}
    if peak_mb is not None:
        row["peak_memory_mb"] = peak_mb
    return row


def peak_memory_mb() -> float:
    """Peak resident memory of this process so far (MiB; CUDA peak when on a GPU)."""
    if torch.cuda.is_available() and torch.cuda.max_memory_allocated() > 0:
        return torch.cuda.max_memory_allocated() / 2 ** 20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2 ** 20 if sys.platform == "darwin" else rss / 1024


# ----------------------------------------------------------------------------- figures
def preprocessing_figure(images: Sequence[Any], titles: Sequence[str] = (),
                         stains: Sequence[str] = ("reinhard", "macenko")):
    """Each image (rows) as is, after CLAHE, and after each stain normalisation."""
    cols = [("original", None), ("CLAHE", build_preprocess(True, None))]
    for s in stains:
        try:
            cols.append((f"{s} stain", build_preprocess(False, s)))
        except Exception as exc:  # a method the preprocessing module lacks
            warnings.warn(f"stain method {s!r} unavailable: {exc}", stacklevel=2)
    fig, axes = plt.subplots(len(images), len(cols), figsize=(3.2 * len(cols), 2.6 * len(images)),
                             squeeze=False)
    for i, img in enumerate(images):
        arr = read_image(img) if isinstance(img, (str, Path)) else np.asarray(img)
        for j, (name, fn) in enumerate(cols):
            axes[i, j].imshow(arr if fn is None else fn(arr))
            axes[i, j].set_title(f"{titles[i] if i < len(titles) else ''} {name}".strip(),
                                 fontsize=9)
            axes[i, j].axis("off")
    return finish_figure(fig)


def _gt_sample(coco: dict, image_index: int, with_masks: bool = False) -> dict[str, Any]:
    im = coco["images"][image_index]
    anns = [a for a in coco["annotations"] if a["image_id"] == im["id"]]
    names = {c["id"]: c["name"] for c in coco["categories"]}
    boxes = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                       a["bbox"][1] + a["bbox"][3]] for a in anns]).reshape(-1, 4)
    sample = {"image": read_image(im["path"]), "boxes": boxes,
              "labels": [names[a["category_id"]] for a in anns]}
    if with_masks and anns and all(a.get("segmentation") for a in anns):
        sample["masks"] = np.stack([decode_segmentation(a["segmentation"], im["height"], im["width"])
                                    for a in anns]).astype(bool)
    return sample


def dataset_figure(coco: dict, n: int = 3, title: str = "", with_masks: bool = True, seed: int = 0):
    """``n`` images with their boxes (and masks)."""
    rng = np.random.default_rng(seed)
    idx = sorted(rng.choice(len(coco["images"]), size=min(n, len(coco["images"])), replace=False))
    samples = [{**_gt_sample(coco, int(i), with_masks), "title": Path(coco["images"][i]["path"]).name}
               for i in idx]
    fig = detection_grid(samples, ncols=n)
    return finish_figure(fig, title)


def loss_figure(logs: Mapping[str, Any], smooth: int = 5, title: str = ""):
    """Training loss per step (moving average over ``smooth`` steps), one panel per model
    with every component; YOLO's per-epoch losses (box, cls, dfl) for ultralytics runs."""
    n = len(logs)
    fig, axes = plt.subplots(1, max(1, n), figsize=(4.6 * max(1, n), 3.5), squeeze=False)
    for ax, (name, log) in zip(axes[0], logs.items()):
        if log is None or len(log) == 0:
            ax.set_axis_off()
            continue
        if "step" in log:
            for col in ["loss", *[c for c in log.columns if c.startswith("loss_")]]:
                y = log[col].rolling(smooth, min_periods=1).mean()
                ax.plot(log["step"], y, lw=2 if col == "loss" else 1,
                        label=LOSS_LABELS.get(col, col))
            ax.set_xlabel("step")
        else:  # ultralytics results.csv
            for col in [c for c in log.columns if c.startswith("train/")]:
                ax.plot(log["epoch"], log[col], marker="o", ms=3, label=col[6:])
            ax.set_xlabel("epoch")
        ax.set(title=MODEL_LABELS.get(name, name), ylabel="loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return finish_figure(fig, title)


def pr_figure(evals: Mapping[str, Evaluation], title: str = ""):
    """Per-class precision-recall curves at IoU 0.5 (paper 1 Figures 8, 9), a panel per model."""
    fig, axes = plt.subplots(1, len(evals), figsize=(4.3 * len(evals), 3.8), squeeze=False)
    for ax, (name, ev) in zip(axes[0], evals.items()):
        for cls, (r, p) in ev.bbox.pr_curves.items():
            ap = ev.bbox.per_class_AP50.get(cls, float("nan"))
            ax.plot(r, np.nan_to_num(p), color=class_color(cls), label=f"{cls} (AP50 {ap:.2f})")
        ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision",
               title=f"{MODEL_LABELS.get(name, name)} (mAP50 {ev.bbox.AP50:.2f})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    return finish_figure(fig, title)


def pr_comparison_figure(evals: Mapping[str, Evaluation], title: str = ""):
    """Class-averaged precision-recall curve of each model (paper 1 Figures 13, 14)."""
    fig, ax = plt.subplots(figsize=(5.2, 4.2))
    for name, ev in evals.items():
        curves = list(ev.bbox.pr_curves.values())
        if not curves:
            continue
        r = curves[0][0]
        p = np.nanmean(np.stack([np.nan_to_num(c[1]) for c in curves]), axis=0)
        ax.plot(r, p, lw=2, label=f"{MODEL_LABELS.get(name, name)} (mAP50 {ev.bbox.AP50:.2f})")
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision (mean over classes)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    return finish_figure(fig, title)


def confusion_figure(evals: Mapping[str, Evaluation], title: str = "", normalize: bool = False):
    """Detection confusion matrices (rows true class, columns predicted; "background" =
    missed / false alarm), a panel per model (paper 1 Figures 6, 7)."""
    return confusion_panels({MODEL_LABELS.get(n, n): (np.asarray(ev.confusion, float).T,
                                                      ev.confusion_labels, ev.confusion_labels)
                             for n, ev in evals.items()}, title, normalize=normalize)


def roc_figure(curves: Mapping[str, tuple[np.ndarray, np.ndarray, float]], title: str = "ROC"):
    """Per-class ROC of detection scores (paper 1 Figure 16)."""
    fig = plot_roc_curves(dict(curves), title=title)
    plt.close(fig)
    return fig


def side_by_side_figure(gt: dict, evals: Mapping[str, Evaluation], image_index: int = 0,
                        score_threshold: float = 0.5, title: str = ""):
    """Ground truth and each model's detections (score >= threshold) on one test image
    (paper 1 Figures 10-12)."""
    gt_s = _gt_sample(gt, image_index)
    im = gt["images"][image_index]
    names = {c["id"]: c["name"] for c in gt["categories"]}
    samples = [{**gt_s, "title": "ground truth"}]
    for name, ev in evals.items():
        preds = [p for p in ev.predictions if p["image_id"] == im["id"] and p["score"] >= score_threshold]
        boxes = np.array([[p["bbox"][0], p["bbox"][1], p["bbox"][0] + p["bbox"][2],
                           p["bbox"][1] + p["bbox"][3]] for p in preds]).reshape(-1, 4)
        s = {"image": gt_s["image"], "boxes": boxes, "labels": [names[p["category_id"]] for p in preds],
             "scores": [p["score"] for p in preds], "title": f"{MODEL_LABELS.get(name, name)} "
                                                             f"({len(preds)} cells)"}
        if preds and "segmentation" in preds[0]:
            s["masks"] = np.stack([rle_to_mask(p["segmentation"]) for p in preds]).astype(bool)
        samples.append(s)
    fig = detection_grid(samples, ncols=min(len(samples), 5), size=3.6)
    return finish_figure(fig, title)


def ablation_table(evals: Mapping[str, Evaluation]) -> pd.DataFrame:
    """Mask-IoU head ablation: mask AP of Mask R-CNN (no head), MCNet ranked by class
    score (head trained, not used), MCNet ranked by class score x predicted IoU."""
    rows = []
    if "mask_rcnn" in evals and evals["mask_rcnn"].segm is not None:
        s = evals["mask_rcnn"].segm
        rows.append({"variant": "Mask R-CNN (no mask-IoU head)", "mask AP": s.AP,
                     "mask AP50": s.AP50, "mask AP75": s.AP75, "box AP": evals["mask_rcnn"].bbox.AP})
    if "mcnet" in evals and evals["mcnet"].segm is not None:
        ev = evals["mcnet"]
        if ev.segm_class_scores is not None:
            s = ev.segm_class_scores
            rows.append({"variant": "MCNet, masks ranked by class score", "mask AP": s.AP,
                         "mask AP50": s.AP50, "mask AP75": s.AP75, "box AP": ev.bbox.AP})
        s = ev.segm
        rows.append({"variant": "MCNet, class score x predicted mask IoU", "mask AP": s.AP,
                     "mask AP50": s.AP50, "mask AP75": s.AP75, "box AP": ev.bbox.AP})
    return pd.DataFrame(rows).set_index("variant") if rows else pd.DataFrame()


def ablation_figure(table: pd.DataFrame, calibration: pd.DataFrame, title: str = ""):
    """Left: mask AP of the ablation variants; right: predicted vs actual mask IoU of
    MCNet's detections (with Pearson's r)."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.9))
    if not table.empty:
        table[["mask AP", "mask AP50", "mask AP75"]].plot.barh(ax=axes[0])
        axes[0].set(xlabel="COCO mask AP (auto-annotated ground truth)", ylabel="")
        axes[0].grid(alpha=0.3, axis="x")
    ax = axes[1]
    if len(calibration):
        ax.scatter(calibration["actual_iou"], calibration["predicted_iou"], s=10, alpha=0.6)
        r = calibration[["actual_iou", "predicted_iou"]].corr().iloc[0, 1] \
            if len(calibration) > 2 else float("nan")
        ax.set_title(f"MCNet: predicted vs actual mask IoU (r = {r:.2f}, n = {len(calibration)})",
                     fontsize=9)
    else:
        ax.set_title("no MCNet detections above the threshold", fontsize=9)
    ax.plot([0, 1], [0, 1], ls=":", color="0.5")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="actual mask IoU", ylabel="predicted mask IoU")
    ax.grid(alpha=0.3)
    return finish_figure(fig, title)


def comparison_figure(table: pd.DataFrame, title: str = ""):
    """Grouped bars paper vs ours per model and metric (percent)."""
    if table.empty:
        fig, ax = plt.subplots(figsize=(4, 2))
        ax.set_axis_off()
        return finish_figure(fig, title)
    models = list(dict.fromkeys(table["model"]))
    fig, axes = plt.subplots(1, len(models), figsize=(3.6 * len(models), 3.4), squeeze=False,
                             sharey=True)
    for ax, m in zip(axes[0], models):
        t = table[table["model"] == m]
        x = np.arange(len(t))
        ax.bar(x - 0.2, t["paper"], 0.4, label="paper", color="0.6")
        ax.bar(x + 0.2, t["ours"], 0.4, label="ours", color="tab:blue")
        ax.set_xticks(x, t["metric"], rotation=30, ha="right", fontsize=8)
        ax.set(title=m, ylim=(0, 105))
        ax.grid(alpha=0.3, axis="y")
    axes[0, 0].set_ylabel("percent")
    axes[0, 0].legend(fontsize=8)
    return finish_figure(fig, title)


# ----------------------------------------------------------------------------- demo model
def quick_model(work_dir: Any, seed: int = 0, steps: int = 75):
    """A small Faster R-CNN (ImageNet EfficientNet-Lite0-FPN, 256 px) fine-tuned ``steps`` iterations
    (no time budget, so the same seed gives the same model) on BCCD train (synthetic
    smears when absent), for the demo's model store; returns ``(model, meta)`` with box
    AP50 on 10 BCCD test images in ``meta["metrics"]``."""
    knobs = dict(get_profile(EXPERIMENT, "quick"))
    knobs.update(max_train_images=None, max_test_images=10, preprocessing=None)
    splits, source = load_splits("bccd", knobs, work_dir, seed)
    model, _ = train_model("faster_rcnn", splits, knobs, "cpu", seed, iterations=int(steps),
                           time_budget_s=None)
    ev = evaluate_model(model, splits["test"], knobs)
    meta = _meta(model, splits["train"], knobs, metrics={"AP50": ev.bbox.AP50, "AP": ev.bbox.AP})
    meta["training_data"]["source"] = source
    return model.cpu(), meta
