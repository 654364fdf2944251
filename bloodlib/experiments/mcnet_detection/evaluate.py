"""Paper 1's evaluation: one COCO evaluator for every model, mask-IoU calibration."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd
import torch
from pycocotools import mask as mask_utils

from ...engine.detection import evaluate_detector, predict_coco
from ...metrics.detection import detection_confusion_matrix, precision_recall_f1
from ...yolo import predict_coco_yolo
from ...data.convert import mask_to_rle, polygons_to_mask
from ..configs import McnetConfig
from .recipe import DetectorRecipe
from .data import make_loader


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


def evaluation_from_predictions(gt: dict, predictions: Sequence[dict],
                                score_threshold: float = 0.5, iou_threshold: float = 0.5,
                                seconds: float = float("nan")) -> Evaluation:
    """Score COCO ``predictions`` against ``gt`` (box; masks too when present); precision,
    recall and the confusion matrix count detections scoring >= ``score_threshold`` that
    overlap a box by IoU >= ``iou_threshold``."""
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
    thr, iou = float(score_threshold), float(iou_threshold)
    prf = precision_recall_f1(gt, preds, thr, iou)
    cm, labels = detection_confusion_matrix(gt, preds, thr, iou)
    return Evaluation(preds, bbox, segm, segm_cls, prf, cm, labels, seconds, len(gt["images"]))


def evaluate_model(model: torch.nn.Module, gt: dict, recipe: DetectorRecipe,
                   device: Any = "cpu") -> Evaluation:
    """Predict ``gt``'s images with a torchvision detector and score them."""
    loader = make_loader(gt, recipe, False, False, batch_size=1)
    t0 = time.perf_counter()
    preds = predict_coco(model, loader, device)
    seconds = time.perf_counter() - t0
    _attach_mask_iou(model, preds)
    return evaluation_from_predictions(gt, preds, recipe.score_threshold, recipe.iou_threshold,
                                       seconds)


def _attach_mask_iou(model: torch.nn.Module, preds: list[dict]) -> None:
    """MCNet's predicted IoU = mask score / class score, kept on each result."""
    heads = getattr(model, "roi_heads", None)
    if getattr(heads, "use_mask_iou", False):
        for p in preds:
            if "mask_score" in p and p["score"] > 0:
                p["mask_iou"] = float(min(1.0, p["mask_score"] / p["score"]))


def evaluate_yolo_model(yolo_model: Any, gt: dict, settings: McnetConfig, device: Any = "cpu",
                        imgsz: Optional[int] = None) -> Evaluation:
    """Predict ``gt``'s images with a YOLO model, convert to COCO results, score them."""
    t0 = time.perf_counter()
    preds = predict_coco_yolo(yolo_model, gt, imgsz=int(imgsz or settings.yolo.imgsz),
                              device=device)
    return evaluation_from_predictions(gt, preds, settings.score_threshold,
                                       settings.iou_threshold, time.perf_counter() - t0)


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
