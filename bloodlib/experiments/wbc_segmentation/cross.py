"""The cross-dataset check: a model trained on Zheng applied to BCCD's WBC crops."""

from __future__ import annotations

import random
from typing import Any, Optional, Sequence

import cv2
import numpy as np
import torch

from ...data.masks import NUCLEUS, read_label_mask
from ...data.records import MaskedImage
from ...engine.tta import tta_probabilities
from ...metrics.segmentation import SegmentationMeter
from ...io import read_image
from ...data.parsers import load_bccd_wbc_masks


# ----------------------------------------------------------------------------- cross-dataset check
def wbc_crop(image: np.ndarray, labels: np.ndarray, fill: float = 0.6
             ) -> tuple[np.ndarray, np.ndarray]:
    """A square crop centred on the WBC of a whole smear (``labels`` 0/1/2), sized so
    that the cell spans ``fill`` of it (Jiangxi ~0.7, CellaVision ~0.5); the image is
    edge-padded where the crop leaves it. Returns ``(image crop, label crop)``."""
    ys, xs = np.nonzero(labels > 0)
    if not len(ys):
        raise ValueError("The mask has no WBC pixels; cannot centre a crop on the cell.")
    side = int(round(max(np.ptp(ys), np.ptp(xs)) / fill))
    cy, cx = (ys.min() + ys.max()) // 2, (xs.min() + xs.max()) // 2
    top, left = cy - side // 2, cx - side // 2
    pad = max(0, -top, -left, top + side - labels.shape[0], left + side - labels.shape[1])
    img = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    lab = np.pad(labels, pad, mode="constant")
    return (img[top + pad:top + pad + side, left + pad:left + pad + side],
            lab[top + pad:top + pad + side, left + pad:left + pad + side])


@torch.no_grad()
def cross_dataset_check(model: torch.nn.Module, records: Sequence[MaskedImage], image_size: int,
                        device: Any = "cpu", fill: float = 0.6, batch_size: int = 16,
                        tta: Optional[str] = None) -> dict[str, float]:
    """Nucleus-vs-rest scores of a paper-5 model on other smears (e.g. the BCCD WBC
    masks), never trained on: each image is cropped around its annotated WBC
    (:func:`wbc_crop`, an oracle detector), resized to ``image_size``, and any predicted
    nucleus class counts as nucleus. Returns Dice, IoU, precision, recall, accuracy and
    ``n_images``."""
    meter = SegmentationMeter(2, ["rest", "nucleus"])
    model.to(device).eval()
    crops, targets = [], []

    def flush():
        x = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float().div(255)
        pred = tta_probabilities(model, x.to(device), tta).argmax(1).cpu().numpy() > 0
        meter.update(pred.astype(np.int64), np.stack(targets).astype(np.int64))
        crops.clear()
        targets.clear()

    for rec in records:
        img, lab = wbc_crop(read_image(rec.image_path), read_label_mask(rec), fill)
        crops.append(cv2.resize(img, (image_size, image_size), interpolation=cv2.INTER_AREA))
        targets.append(cv2.resize((lab == NUCLEUS).astype(np.uint8), (image_size, image_size),
                                  interpolation=cv2.INTER_NEAREST))
        if len(crops) == batch_size:
            flush()
    if crops:
        flush()
    m = meter.compute()
    return {"nucleus_dice": m["Dice/nucleus"], "nucleus_iou": m["IoU/nucleus"],
            "precision": m["precision/nucleus"], "recall": m["recall/nucleus"],
            "accuracy": m["pixel_accuracy"], "n_images": float(len(records))}


def bccd_wbc_records(n: Optional[int] = None, seed: int = 0) -> list[MaskedImage]:
    """The BCCD WBC masks (every WBC type, one cell per 640x480 smear) for
    :func:`cross_dataset_check`; ``n`` draws a deterministic subset. Raises
    DatasetNotFoundError when the BCCD images or masks are missing."""
    records = list(load_bccd_wbc_masks())
    if n is not None and n < len(records):
        records = sorted(random.Random(seed).sample(records, n), key=lambda r: str(r.image_path))
    return records
