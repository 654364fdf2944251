"""TXL-PBC (Gan & Li, 2024): re-annotated BCCD/BCD/PBC/Raabin images, YOLO boxes.

Layout: ``txl_pbc/TXL_PBC/{images,labels}/{train,val,test}`` and ``data.yaml`` (class
order WBC, RBC, Platelets). Official sizes 1008/288/144; the 144-image test split is
not in every copy. ``labels/*/classes.txt`` (which says "PC" for platelets) is ignored:
``data.yaml`` is authoritative. Exact duplicate label lines (2 in train) are dropped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ...errors import AnnotationError, DatasetNotFoundError
from ..convert import IMAGE_EXTENSIONS, drop_duplicate_boxes, validate_coco, yolo_to_coco
from ._common import _inner, _root

TXL_SPLITS = ("train", "val", "test")


def txl_pbc_classes(root: Path | str | None = None) -> list[str]:
    """Class names from ``data.yaml`` in index order."""
    base = _inner(_root("txl_pbc", root), "TXL_PBC", "data.yaml")
    cfg = yaml.safe_load((base / "data.yaml").read_text())
    names = cfg.get("names")
    if isinstance(names, dict):
        names = [names[k] for k in sorted(names)]
    if not names:
        raise AnnotationError(f"{base / 'data.yaml'} has no 'names' list.")
    return [str(n) for n in names]


def load_txl_pbc(split: str = "train", root: Path | str | None = None) -> dict[str, Any]:
    """TXL-PBC split as a COCO dict (categories from data.yaml)."""
    if split not in TXL_SPLITS:
        raise ValueError(f"split must be one of {TXL_SPLITS}, got {split!r}.")
    base = _inner(_root("txl_pbc", root), "TXL_PBC", "data.yaml")
    img_dir, lbl_dir = base / "images" / split, base / "labels" / split
    if not img_dir.is_dir() or not lbl_dir.is_dir():
        hint = (" The local copy ships only train (1008) and val (288); the 144-image test "
                "split is in github.com/lugan113/TXL-PBC_Dataset." if split == "test" else "")
        raise DatasetNotFoundError(f"TXL-PBC split {split!r} not found ({img_dir}).{hint}")
    images = sorted(p for p in img_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    coco = yolo_to_coco(images, lbl_dir, txl_pbc_classes(base), dataset="txl_pbc", split=split)
    coco["info"]["validation"] = validate_coco(coco, clip=True, drop_invalid=True)
    coco["info"]["dropped_duplicates"] = len(drop_duplicate_boxes(coco, tol=0.0))
    return coco
