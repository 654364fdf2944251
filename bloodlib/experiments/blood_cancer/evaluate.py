"""Paper 3's evaluation: IoU, pixel accuracy, RMSE, matched cells and COCO segm AP of a
prediction."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ...results import finite_metrics
from ...data.convert import mask_to_rle
from ...metrics import coco_evaluate, matched_instance_iou, SegmentationMeter
from .settings import CELL
from .data import EvalSet


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
