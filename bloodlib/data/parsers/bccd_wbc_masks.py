"""WBC masks for BCCD images (Banik et al., 2020): one WBC per 640x480 image.

Layout: ``bccd_wbc_masks/masks/BloodImage_Mask_NNNNN.png`` paired with
``bccd/BCCD/JPEGImages/BloodImage_NNNNN.jpg``. Values ~0 / ~155-162 / 255 with
anti-aliased edges (decoder ``"bccd_wbc"``). The public copy has 367 masks for 364
images: masks 00096, 00280 and 00329 have no BCCD image.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

from ...errors import AnnotationError, DatasetNotFoundError
from ..records import MaskedImage
from ._common import _inner, _root

_MASK_RE = re.compile(r"BloodImage_Mask_(\d+)\.png$", re.IGNORECASE)


def load_bccd_wbc_masks(root: Path | str | None = None, bccd_root: Path | str | None = None,
                        on_missing: str = "warn") -> list[MaskedImage]:
    """Masks paired with their BCCD images, sorted by number.

    Masks without an image are skipped with a warning listing them (``on_missing="warn"``),
    silently (``"ignore"``), or raise AnnotationError (``"raise"``).
    """
    if on_missing not in ("warn", "ignore", "raise"):
        raise ValueError("on_missing must be 'warn', 'ignore' or 'raise'.")
    mask_dir = _root("bccd_wbc_masks", root) / "masks"
    image_dir = _inner(_root("bccd", bccd_root), "BCCD", "JPEGImages") / "JPEGImages"
    masks = sorted((m.group(1), p) for p in mask_dir.glob("*.png") if (m := _MASK_RE.match(p.name)))
    if not masks:
        raise DatasetNotFoundError(f"No BloodImage_Mask_NNNNN.png files in {mask_dir}.")
    records, orphans = [], []
    for num, mask in masks:
        image = image_dir / f"BloodImage_{num}.jpg"
        if not image.is_file():
            orphans.append(mask.name)
            continue
        records.append(MaskedImage(image.resolve(), mask.resolve(), None,
                                   {"mask_format": "bccd_wbc", "dataset": "bccd_wbc_masks", "id": int(num)}))
    if orphans and on_missing != "ignore":
        msg = f"{len(orphans)} BCCD WBC masks have no image in {image_dir}: {orphans}"
        if on_missing == "raise":
            raise AnnotationError(msg)
        warnings.warn(msg + " (skipped)", stacklevel=2)
    return records
