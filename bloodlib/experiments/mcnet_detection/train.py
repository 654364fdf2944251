"""Paper 1's training: the torchvision detectors and YOLOv9, one model end to end, the store."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from ...config import get_profile
from ...engine import distributed as ddp
from ...engine.detection import (evaluate_detector, PAPER1_STAGES, scale_stages, Stage,
                                 train_detector)
from ...models.detection import build_detector
from ...runtime import seed_everything
from ...inference.detection import detector_meta
from ... import yolo
from ...yolo import save_yolo_checkpoint
from ...inference.store import _store, normalize_meta, save_model
from .settings import EXPERIMENT, MASK_MODELS, MODELS, TORCHVISION_MODELS
from .evaluate import evaluate_model, evaluate_yolo_model, Evaluation
from .data import class_names, load_splits, make_loader


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
    val_ap50, every = None, None
    if knobs.get("eval_every_epochs") and val and val["images"]:
        val_loader = make_loader(val, knobs, False, False, seed)
        every = max(1, int(knobs["eval_every_epochs"]) * ddp.batches_per_rank(loader))

        def val_ap50(m):
            return {"AP50": evaluate_detector(m, val_loader, val, "bbox", device=device).AP50}
    budget = time_budget_s if time_budget_s is not None else knobs.get("time_budget_s")
    resume = None
    if checkpoint_path is None:
        from ...engine.checkpoint import run_checkpoint
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
        time_budget_s=budget, evaluate=val_ap50, eval_every=every, progress=progress,
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
