"""Decoding each dataset's raw mask values into class indices.

Every decoder returns a uint8 array with 0 background, 1 cytoplasm, 2 nucleus.

* ``"zheng"`` (WBC Image Dataset, Zheng et al. 2018): 0 background (incl. RBCs),
  128 cytoplasm, 255 nucleus. Other values snap to the nearest level when they cover at
  most ``max_noise`` (1 %) of the pixels, else :class:`MaskError` names them. (5 of the
  100 CellaVision masks hold 3-179 stray pixels valued 2-50 beside the cytoplasm, at most
  0.2 % of a mask: they become background.)
* ``"bccd_wbc"`` (Banik et al. 2020 masks of BCCD): anti-aliased, ~0 background,
  ~155-162 cytoplasm, 255 nucleus. Thresholds at the midpoints between the levels:
  ``v < 78`` background, ``78 <= v < 208`` cytoplasm, ``v >= 208`` nucleus.

An all-background mask is treated as an error by :func:`read_label_mask` (a WBC
segmentation sample must contain a cell) unless ``allow_empty=True``.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..errors import MaskError
from ..io import image_size, read_mask
from .records import MaskedImage

BACKGROUND, CYTOPLASM, NUCLEUS = 0, 1, 2
CLASS_NAMES = ("background", "cytoplasm", "nucleus")
ZHENG_LEVELS = (0, 128, 255)
BCCD_WBC_THRESHOLDS = (78, 208)


def decode_zheng(raw: np.ndarray, max_noise: float = 0.01) -> np.ndarray:
    """Zheng masks (0/128/255) -> class indices; see the module docstring."""
    raw = np.asarray(raw)
    dist = np.abs(raw.astype(np.int16)[..., None] - np.array(ZHENG_LEVELS, np.int16))
    off = dist.min(axis=-1) > 0
    if off.mean() > max_noise:
        vals = np.unique(raw[off])
        raise MaskError(f"Zheng mask holds values {vals[:10].tolist()} on {off.mean():.1%} of its pixels "
                        f"(more than {max_noise:.0%} besides 0/128/255); is this the right mask_format?")
    return dist.argmin(axis=-1).astype(np.uint8)


def decode_bccd_wbc(raw: np.ndarray) -> np.ndarray:
    """BCCD WBC masks (anti-aliased ~0/~160/255) -> class indices by thresholds 78 and 208."""
    raw = np.asarray(raw)
    lo, hi = BCCD_WBC_THRESHOLDS
    return ((raw >= lo).astype(np.uint8) + (raw >= hi).astype(np.uint8))


DECODERS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "zheng": decode_zheng,
    "bccd_wbc": decode_bccd_wbc,
}


def decode_mask(raw: np.ndarray, mask_format: str) -> np.ndarray:
    """Decode raw mask values with the named decoder."""
    if mask_format not in DECODERS:
        raise MaskError(f"Unknown mask_format {mask_format!r}; known: {sorted(DECODERS)}.")
    return DECODERS[mask_format](raw)


def is_empty(labels: np.ndarray) -> bool:
    """True when a decoded mask holds background only."""
    return not np.any(labels)


def read_label_mask(rec: MaskedImage, allow_empty: bool = False) -> np.ndarray:
    """Read and decode ``rec``'s mask (format ``rec.meta["mask_format"]``) into class indices.

    Raises :class:`MaskError` when the mask's size differs from its image's, or when the
    mask is all background and ``allow_empty`` is False.
    """
    fmt = rec.meta.get("mask_format")
    if fmt is None:
        raise MaskError(f"Record for {rec.mask_path} has no meta['mask_format']; known: {sorted(DECODERS)}.")
    w, h = image_size(rec.image_path)
    labels = decode_mask(read_mask(rec.mask_path, expected_hw=(h, w)), fmt)
    if not allow_empty and is_empty(labels):
        raise MaskError(f"Mask {rec.mask_path} is all background; remove the sample or pass allow_empty=True.")
    return labels


def nucleus_mask(labels: np.ndarray) -> np.ndarray:
    """Boolean nucleus mask from class indices."""
    return np.asarray(labels) == NUCLEUS


def cell_mask(labels: np.ndarray) -> np.ndarray:
    """Boolean whole-cell mask (cytoplasm or nucleus) from class indices."""
    return np.asarray(labels) > BACKGROUND
