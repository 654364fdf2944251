"""Paper 1's training: the torchvision detectors and YOLOv9, one model end to end, the store."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import torch

from ...config import get_config
from ...engine import distributed as ddp
from ...engine.checkpoint import Checkpoints
from ...engine.detection import (evaluate_detector, PAPER1_STAGES, scale_stages, Stage,
                                 train_detector)
from ...models.detection import build_detector
from ...runtime import seed_everything
from ...inference.detection import detector_meta
from ... import yolo
from ...yolo import save_yolo_checkpoint
from ...inference.store import _store, normalize_meta, save_model
from ..configs import McnetConfig
from .recipe import DetectorRecipe
from .settings import EXPERIMENT, MASK_MODELS, MODELS, TORCHVISION_MODELS
from .evaluate import evaluate_model, evaluate_yolo_model, Evaluation
from .data import class_names, load_splits, make_loader


# ----------------------------------------------------------------------------- models
def build_model(kind: str, recipe: DetectorRecipe, num_classes: int,
                min_size: Optional[int] = None, **overrides: Any) -> torch.nn.Module:
    """``build_detector(kind, ...)`` with the profile's backbone, sizes, anchors and heads;
    ``num_classes`` excludes the background."""
    kw = dict(recipe.heads or {})
    if recipe.anchor_sizes:
        kw["anchor_sizes"] = recipe.anchor_sizes
    kw.update(overrides)
    size = int(min_size or recipe.min_size)
    max_size = int(recipe.max_size) if min_size is None else int(round(size * 4 / 3))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="No ImageNet weights")
        return build_detector(kind, recipe.backbone, num_classes + 1, min_size=size,
                              max_size=max_size, aspect_ratios=recipe.aspect_ratios,
                              pretrained_backbone=recipe.pretrained, **kw)


def _stages(recipe: DetectorRecipe, model: torch.nn.Module, iterations: int):
    if recipe.stages != "paper1":
        return None
    stages = scale_stages(PAPER1_STAGES, iterations)
    if not getattr(model, "backbone_pretrained", False):  # nothing to fine-tune: train all
        stages = [Stage(s.name, s.iterations, s.lr, "all") for s in stages]
    return stages


def train_model(kind: str, splits: Mapping[str, dict], recipe: DetectorRecipe,
                device: Any = "cpu", seed: int = 0, *, checkpoint_path: Any = None,
                checkpoints: Optional[Checkpoints] = None,
                min_size: Optional[int] = None, iterations: Optional[int] = None,
                time_budget_s: Optional[float] = None, progress: bool = False):
    """Train detector ``kind`` on ``splits["train"]``; returns ``(model, DetectionTraining)``.

    With ``eval_every_epochs`` and a non-empty ``val`` split, box AP50 on val is
    measured every so many epochs and the best weights are kept. Without a
    ``checkpoint_path``, a ``checkpoints`` folder (``run.checkpoints``) keeps the training's
    checkpoint and ``checkpoints.resume`` continues it."""
    seed_everything(seed)
    train = splits["train"]
    with_masks = kind in MASK_MODELS
    model = build_model(kind, recipe, len(train["categories"]), min_size=min_size)
    loader = make_loader(train, recipe, True, with_masks, seed)
    iters = int(iterations or recipe.iterations)
    val_ap50, every = _val_ap50(recipe, splits.get("val"), loader, seed, device)
    budget = time_budget_s if time_budget_s is not None else recipe.time_budget_s
    resume = None
    if checkpoint_path is None:
        label = (f"{kind}_{recipe.backbone}_{train.get('info', {}).get('dataset', '')}"
                 f"_{len(train['images'])}img_{min_size or recipe.min_size}px_{iters}it_s{seed}")
        checkpoint_path, resume = (checkpoints or Checkpoints()).for_label(label)
    result = train_detector(
        model, loader, iterations=iters, stages=_stages(recipe, model, iters), lr=float(recipe.lr),
        momentum=float(recipe.momentum), weight_decay=float(recipe.weight_decay),
        warmup_iters=int(recipe.warmup_iters),
        lr_steps=[int(f * iters) for f in recipe.lr_steps or []],
        grad_clip=recipe.grad_clip, device=device, checkpoint_path=checkpoint_path,
        checkpoint_meta=_meta(model, train, recipe) if checkpoint_path else None,
        time_budget_s=budget, evaluate=val_ap50, eval_every=every, progress=progress,
        resume_from=resume)
    return model, result


def _val_ap50(recipe: DetectorRecipe, val: Optional[dict], loader: Any, seed: int,
              device: Any) -> tuple[Optional[Callable[[torch.nn.Module], dict]], Optional[int]]:
    """``(model -> {"AP50": box AP50 on val}, every so many steps)`` with
    ``eval_every_epochs`` and a non-empty ``val``; else ``(None, None)``."""
    if not (recipe.eval_every_epochs and val and val["images"]):
        return None, None
    val_loader = make_loader(val, recipe, False, False, seed)
    every = max(1, int(recipe.eval_every_epochs) * ddp.batches_per_rank(loader))
    return (lambda m: {"AP50": evaluate_detector(m, val_loader, val, "bbox",
                                                 device=device).AP50}), every


def _meta(model: torch.nn.Module, train: dict, recipe: DetectorRecipe,
          metrics: Optional[Mapping[str, float]] = None) -> dict[str, Any]:
    info = train.get("info", {})
    return detector_meta(model, class_names(train), input_size=int(recipe.min_size),
                         preprocessing={**(recipe.preprocessing or {}), "normalize": "unit"},
                         training_data={"dataset": info.get("dataset", ""),
                                        "split": info.get("split", "train"),
                                        "images": len(train["images"])},
                         metrics=metrics)


def train_yolo_model(splits: Mapping[str, dict], settings: McnetConfig, device: Any = "cpu",
                     seed: int = 0, work_dir: Any = ".", *, epochs: Optional[int] = None,
                     time_budget_s: Optional[float] = None, imgsz: Optional[int] = None,
                     run_name: str = "yolo", resume: bool = False):
    """Export the splits to YOLO format and train ultralytics YOLOv9 on them; returns the
    :class:`bloodlib.yolo.YoloTraining` (its ``model`` holds the best weights); ``resume``
    continues an interrupted run of the same name."""
    work = Path(work_dir)
    parts = {"train": splits["train"]}
    parts["val"] = splits["val"] if splits.get("val") and splits["val"]["images"] else splits["test"]
    data_yaml = yolo.export_yolo_dataset(parts, work / f"{run_name}_data")
    budget = time_budget_s if time_budget_s is not None else settings.yolo.time_budget_s
    return yolo.train_yolo(data_yaml, settings.yolo.model,
                           epochs=int(epochs or settings.yolo.epochs),
                           imgsz=int(imgsz or settings.yolo.imgsz), batch=int(settings.yolo.batch),
                           device=settings.yolo.devices or device, seed=seed,
                           time_budget_s=budget,
                           pretrained=settings.yolo.pretrained, project=work / "yolo_runs",
                           run_name=run_name, n_train_images=len(splits["train"]["images"]),
                           resume=bool(resume),
                           **dict(settings.yolo.overrides or {}))


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
                       settings: McnetConfig, device: Any = "cpu", seed: int = 0,
                       work_dir: Any = ".", *, min_size: Optional[int] = None,
                       iterations: Optional[int] = None, time_budget_s: Optional[float] = None,
                       yolo_epochs: Optional[int] = None, tag: str = "",
                       detections_per_img: Optional[int] = None,
                       checkpoints: Optional[Checkpoints] = None) -> Outcome:
    """Train model ``name`` (one of :data:`MODELS`) on the train split (``masked`` splits
    for Mask R-CNN and MCNet) and evaluate it on the test split; ``checkpoints``
    (``run.checkpoints``) keeps and resumes the training."""
    checkpoints = checkpoints or Checkpoints()
    if name == "yolov9":
        tr = train_yolo_model(splits, settings, device, seed, work_dir, epochs=yolo_epochs,
                              time_budget_s=time_budget_s, imgsz=min_size,
                              run_name=f"yolo{('_' + tag) if tag else ''}",
                              resume=checkpoints.resume)
        ev = evaluate_yolo_model(tr.model, splits["test"], settings, device, imgsz=min_size)
        return Outcome(name, tr.model, ev, tr.history, tr.seconds, tr.epochs, tr.images,
                       "", tr.pretrained is not None)
    if name not in TORCHVISION_MODELS:
        raise ValueError(f"Unknown model {name!r}; choose from {list(MODELS)}.")
    data = masked if name in MASK_MODELS else splits
    recipe = DetectorRecipe.of(settings)
    if detections_per_img is not None:
        recipe = replace(recipe, heads={**(recipe.heads or {}),
                                        "box_detections_per_img": int(detections_per_img)})
    model, tr = train_model(name, data, recipe, device, seed, min_size=min_size,
                            iterations=iterations, time_budget_s=time_budget_s,
                            checkpoints=checkpoints)
    ev = evaluate_model(model, data["test"], recipe, device)
    return Outcome(name, model, ev, tr.log, tr.seconds, tr.iterations, tr.images, tr.stop_reason,
                   bool(getattr(model, "backbone_pretrained", False)))


def store_outcome(outcome: Outcome, train: dict, settings: McnetConfig, name: str,
                  folder: Any = None) -> Path:
    """Save a trained detector (torchvision or YOLO) into the model store as ``name`` with
    its metadata (classes, input size, preprocessing, training data, test metrics), where
    ``bloodlib predict``, the demo and ``bloodlib bench latency`` find it."""
    m = outcome.evaluation.metrics()
    metrics = {"test_mAP50": m.get("mAP50"), "test_mAP50_95": m.get("mAP50_95"),
               "train_seconds": outcome.seconds}
    if outcome.name != "yolov9":
        meta = _meta(outcome.model, train, DetectorRecipe.of(settings), metrics=metrics)
        return save_model(outcome.model, name, meta, folder=folder)
    info = train.get("info", {})
    meta = normalize_meta({
        "task": "detect", "architecture": "yolo", "classes": class_names(train),
        "input_size": int(settings.yolo.imgsz),
        "preprocessing": {**(settings.preprocessing or {}), "normalize": "unit"},
        "training_data": {"dataset": info.get("dataset", ""), "split": info.get("split", "train"),
                          "images": len(train["images"])},
        "metrics": {k: float(v) for k, v in metrics.items()
                    if isinstance(v, (int, float)) and math.isfinite(v)}})
    return save_yolo_checkpoint(outcome.model, _store(folder) / f"{name}.pt", meta["classes"],
                                meta, name=settings.yolo.model,
                                imgsz=int(settings.yolo.imgsz))


# ----------------------------------------------------------------------------- demo model
def quick_model(work_dir: Any, seed: int = 0, steps: int = 75):
    """A small Faster R-CNN (ImageNet EfficientNet-Lite0-FPN, 256 px) fine-tuned ``steps`` iterations
    (no time budget, so the same seed gives the same model) on BCCD train (synthetic
    smears when absent), for the demo's model store; returns ``(model, meta)`` with box
    AP50 on 10 BCCD test images in ``meta["metrics"]``."""
    settings = get_config(EXPERIMENT, "quick", max_train_images=None, max_test_images=10,
                          preprocessing=None)
    recipe = DetectorRecipe.of(settings)
    splits, source = load_splits("bccd", settings, work_dir, seed)
    model, _ = train_model("faster_rcnn", splits, recipe, "cpu", seed, iterations=int(steps),
                           time_budget_s=None)
    ev = evaluate_model(model, splits["test"], recipe)
    meta = _meta(model, splits["train"], recipe, metrics={"AP50": ev.bbox.AP50, "AP": ev.bbox.AP})
    meta["training_data"]["source"] = source
    return model.cpu(), meta
