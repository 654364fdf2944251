"""Common record types every parser returns and every Dataset/metric consumes.

* Boxes and instance masks: a COCO-style ``dict`` (see :func:`new_coco`). Category ids
  start at 1 (0 is background in torchvision). Each image entry carries an absolute
  ``path`` besides ``file_name``; boxes are ``[x, y, w, h]`` in pixels; an optional
  ``segmentation`` is polygons or RLE in the image's pixel frame.
* Semantic masks: :class:`MaskedImage` (image path, mask path, optional per-image label).
* Classes: :class:`LabelledImage` (image path, class name).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence


@dataclass(frozen=True)
class LabelledImage:
    """One image with one class (classification)."""

    path: Path
    label: str
    meta: dict = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class MaskedImage:
    """One image with a pixel-aligned label mask (semantic segmentation).

    The mask file holds the dataset's raw values; the parser's documented mapping
    (e.g. Zheng: 0 background, 128 cytoplasm, 255 nucleus) turns them into classes.
    """

    image_path: Path
    mask_path: Path
    label: Optional[str] = None
    meta: dict = field(default_factory=dict, compare=False, hash=False)


def new_coco(categories: Sequence[str], dataset: str = "", split: str = "") -> dict[str, Any]:
    """An empty COCO dict with categories numbered 1..N in the given order."""
    return {
        "info": {"dataset": dataset, "split": split},
        "images": [],
        "annotations": [],
        "categories": [{"id": i + 1, "name": n} for i, n in enumerate(categories)],
    }


def category_names(coco: dict) -> list[str]:
    """Category names ordered by id."""
    return [c["name"] for c in sorted(coco["categories"], key=lambda c: c["id"])]
