"""Paper 5's evaluation: per-class Dice, IoU, precision, recall and accuracy."""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch

from ...results import finite_metrics
from ...data.records import MaskedImage
from ...engine.tta import tta_probabilities
from ...metrics.segmentation import SegmentationMeter
from ..configs import SegmentationSettings
from .settings import CLASS_NAMES
from .data import _loader


# ----------------------------------------------------------------------------- metrics
def paper5_metrics(multi: Mapping[str, float], nucleus: Mapping[str, float]) -> dict[str, float]:
    """Table 1's metrics from a 4-class and a nucleus-vs-rest meter (see module docstring)."""
    prec = np.array([multi[f"precision/{c}"] for c in CLASS_NAMES], float)
    prec_fg = prec[1:]
    out = {
        "accuracy": multi["pixel_accuracy"],
        "precision": float(np.nanmean(prec)) if np.isfinite(prec).any() else float("nan"),
        "dice": multi["mDice"], "mIoU": multi["mIoU"],
        "precision_fg": float(np.nanmean(prec_fg)) if np.isfinite(prec_fg).any() else float("nan"),
        "dice_fg": multi["mDice_fg"], "mIoU_fg": multi["mIoU_fg"],
        "nucleus_dice": nucleus["Dice/foreground"], "nucleus_iou": nucleus["IoU/foreground"],
    }
    for c in CLASS_NAMES[1:]:
        out[f"dice_{c}"] = multi[f"Dice/{c}"]
        out[f"iou_{c}"] = multi[f"IoU/{c}"]
    return {k: float(v) for k, v in out.items()}


finite = finite_metrics  # the notebooks call it by this name


@torch.no_grad()
def _evaluate_loader(model, loader, device, tta: Optional[str] = None) -> dict[str, float]:
    multi = SegmentationMeter(4, CLASS_NAMES)
    nuc = SegmentationMeter(4, binary_foreground=[1, 2, 3])
    was = model.training
    model.eval()
    try:
        for x, y in loader:
            pred = tta_probabilities(model, x.to(device), tta).argmax(1).cpu()
            multi.update(pred, y)
            nuc.update(pred, y)
    finally:
        model.train(was)
    return paper5_metrics(multi.compute(), nuc.compute())


def evaluate(model: torch.nn.Module, records: Sequence[MaskedImage], settings: SegmentationSettings,
             device: Any = "cpu", decode=None, evaluator=None) -> dict[str, float]:
    """Table 1's metrics (and extras) of ``model`` on ``records``, pooled over all pixels,
    with the profile's test-time augmentation ``settings.tta`` (another task: its mask
    ``decode`` and ``evaluator(model, loader, device, tta)``)."""
    device = torch.device(device)
    model.to(device)
    return (evaluator or _evaluate_loader)(model, _loader(records, settings, False, 0, decode), device,
                                           settings.tta)
