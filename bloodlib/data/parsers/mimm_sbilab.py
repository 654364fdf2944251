"""MiMM_SBILab (SBILab, TCIA): 85 bone-marrow aspirate images of multiple myeloma.

Paper 3's description: Jenner-Giemsa stain, Nikon Eclipse-200 at 1000x, raw BMP images of
2560x1920 pixels, stain-normalised by SBILab and "ready for cell segmentation". The TCIA
collection is the images themselves: ``mimm_sbilab/**/*.bmp`` (any depth; e.g.
``MiMM_SBILab Dataset/1.bmp``).

Plasma-cell instance annotations for images of this kind were published by the same
group as SegPC-2021, in the layout ``x/<id>.bmp`` (image) and ``y/<id>_<k>.bmp`` (one
mask per cell; 0 background, 20 cytoplasm, 40 nucleus). When ``y/`` folders are present
next to ``x/`` they are read as instance masks; otherwise the images come without
annotations (``info["annotated"]`` is False) — enough for inference, FCM or GAN training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ...errors import DatasetNotFoundError, MaskError
from ...io import image_size, read_mask
from ..convert import IMAGE_EXTENSIONS, mask_to_rle
from ..records import new_coco
from ._common import _root

MIMM_TARGETS = ("cell", "nucleus")
CYTOPLASM_VALUE, NUCLEUS_VALUE = 20, 40


def _is_mask_path(path: Path, root: Path) -> bool:
    parts = [p.lower() for p in path.relative_to(root).parts[:-1]]
    return "y" in parts or any("mask" in p or "ground" in p for p in parts)


def instance_masks(image_path: Path, hw: tuple[int, int]) -> list[tuple[Path, np.ndarray]]:
    """``[(mask file, raw values (H, W))]`` of the SegPC-style ``y/<stem>_<k>.*`` masks of
    an image stored in an ``x/`` folder (empty when there is no ``y/`` folder)."""
    y_dir = image_path.parent.parent / "y"
    if image_path.parent.name.lower() != "x" or not y_dir.is_dir():
        return []
    files = sorted(p for p in y_dir.glob(f"{image_path.stem}_*")
                   if p.suffix.lower() in IMAGE_EXTENSIONS)
    return [(p, read_mask(p, expected_hw=hw)) for p in files]


def _annotate(coco: dict, image_id: int, masks: list[tuple[Path, np.ndarray]], target: str) -> None:
    threshold = CYTOPLASM_VALUE if target == "cell" else NUCLEUS_VALUE
    for path, raw in masks:
        m = raw >= threshold
        if not m.any():
            raise MaskError(f"{path}: no {target} pixels (values >= {threshold}); is it a "
                            "SegPC-style mask (20 cytoplasm, 40 nucleus)?")
        ys, xs = np.nonzero(m)
        x0, y0 = float(xs.min()), float(ys.min())
        coco["annotations"].append({
            "id": len(coco["annotations"]) + 1, "image_id": image_id, "category_id": 1,
            "bbox": [x0, y0, float(xs.max()) + 1 - x0, float(ys.max()) + 1 - y0],
            "area": float(m.sum()), "segmentation": mask_to_rle(m), "iscrowd": 0,
            "mask_file": str(path)})


def load_mimm_sbilab(root: Path | str | None = None, target: str = "cell") -> dict[str, Any]:
    """MiMM_SBILab as a COCO dict (category ``target``: ``"cell"`` or ``"nucleus"``), with
    instance annotations when SegPC-style ``y/`` masks are present (module docstring)."""
    if target not in MIMM_TARGETS:
        raise ValueError(f"target must be one of {MIMM_TARGETS}, got {target!r}.")
    root = _root("mimm_sbilab", root)
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")
                   and p.suffix.lower() in IMAGE_EXTENSIONS and not _is_mask_path(p, root))
    if not files:
        raise DatasetNotFoundError(
            f"No MiMM_SBILab images (BMP) under {root}; unpack the TCIA collection there "
            "unchanged. See bloodlib.data.catalogue.get_info('mimm_sbilab').")
    coco = new_coco([target], dataset="mimm_sbilab", split="all")
    annotated = False
    for p in files:
        w, h = image_size(p)
        image_id = len(coco["images"]) + 1
        coco["images"].append({"id": image_id, "file_name": p.name, "width": w, "height": h,
                               "path": str(p.resolve())})
        masks = instance_masks(p, (h, w))
        annotated |= bool(masks)
        _annotate(coco, image_id, masks, target)
    coco["info"]["annotated"] = annotated
    return coco
