"""Where WCSegNet's remaining errors lie: nucleus masks and the boundary error table."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import pandas as pd
import torch

from ...data.records import MaskedImage
from ...metrics.segmentation import boundary_band_errors
from ...engine.trainer import predict_segmentation
from ..configs import SegmentationSettings
from .settings import MODEL_LABELS
from .data import make_dataset


def _predict_records(model: torch.nn.Module, records: Sequence[MaskedImage],
                     settings: SegmentationSettings, device: Any = None):
    """(images, true class masks, predicted class masks) at the model's input size."""
    ds = make_dataset(records, settings, train=False)
    images, masks = zip(*(ds[i] for i in range(len(ds))))
    images = torch.stack(images)
    preds = predict_segmentation(model, images, device, int(settings.batch_size))
    return images, torch.stack(masks), preds


def nucleus_masks(model: torch.nn.Module, records: Sequence[MaskedImage],
                  settings: SegmentationSettings, device: Any = None):
    """(images, true nucleus masks, predicted nucleus masks): any nucleus class vs the rest."""
    images, masks, preds = _predict_records(model, records, settings, device)
    return images, masks > 0, preds > 0


def boundary_error_table(models: Mapping[str, torch.nn.Module], records: Sequence[MaskedImage],
                         settings: SegmentationSettings, device: Any = None,
                         bands: Sequence[int] = (1, 2)) -> pd.DataFrame:
    """Per model, where its nucleus-vs-rest errors on ``records`` lie: nucleus Dice, error
    pixels, the share of them within 1 and 2 px of the annotated nucleus boundary, and
    the Dice with that 1-px band ignored (:func:`bloodlib.metrics.segmentation.boundary_band_errors`).
    Predictions without test-time augmentation."""
    rows = {}
    for name, model in models.items():
        _, truth, pred = nucleus_masks(model, records, settings, device)
        rows[MODEL_LABELS.get(name, name)] = boundary_band_errors(pred, truth, bands)
    table = pd.DataFrame(rows).T.rename(columns={"dice": "nucleus_dice"})
    first = ["nucleus_dice", "error_pixels", *(f"within_{b}px" for b in sorted(bands))]
    return table[first + [c for c in table.columns if c not in first]]
