"""BCCD (Shenggan, 2017): 364 smear images 640x480 with VOC boxes for WBC, RBC, Platelets.

Layout: ``bccd/BCCD/{JPEGImages, Annotations, ImageSets/Main/{train,val,test,trainval}.txt}``;
official splits 205/87/72 (trainval 292).

Quirks handled (counts in ``coco["info"]``):

* 2 zero-size boxes (RBC in BloodImage_00338 and _00343, xmin == xmax) are dropped
  (``info["validation"]["dropped"]``);
* 7 RBC boxes are copies of another RBC box shifted by exactly (+2, +2) px (images
  00020, 00100, 00104, 00251, 00284, 00331, 00403); same-class boxes within 2 px of an
  earlier one are dropped when ``drop_duplicates`` (``info["dropped_duplicates"]``);
* class names are matched ignoring case and spaces; boxes touching the border are clipped;
* 6 images have no WBC and 14 have more than one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...errors import AnnotationError, DatasetNotFoundError
from ..convert import drop_duplicate_boxes, validate_coco, voc_to_coco
from ._common import _inner, _root

BCCD_CLASSES = ("WBC", "RBC", "Platelets")
BCCD_SPLITS = ("train", "val", "test", "trainval", "all")


def load_bccd(split: str = "trainval", root: Path | str | None = None,
              drop_duplicates: bool = True) -> dict[str, Any]:
    """BCCD split (``train``/``val``/``test``/``trainval`` or ``all``) as a COCO dict."""
    if split not in BCCD_SPLITS:
        raise ValueError(f"split must be one of {BCCD_SPLITS}, got {split!r}.")
    base = _inner(_root("bccd", root), "BCCD", "Annotations")
    ann_dir = base / "Annotations"
    if split == "all":
        stems = sorted(p.stem for p in ann_dir.glob("*.xml"))
    else:
        list_file = base / "ImageSets" / "Main" / f"{split}.txt"
        if not list_file.is_file():
            raise DatasetNotFoundError(f"Split file {list_file} not found.")
        stems = [s.strip() for s in list_file.read_text().split() if s.strip()]
    if not stems:
        raise AnnotationError(f"No annotations listed for BCCD split {split!r} in {base}.")
    coco = voc_to_coco([ann_dir / f"{s}.xml" for s in stems], base / "JPEGImages",
                       BCCD_CLASSES, dataset="bccd", split=split)
    coco["info"]["validation"] = validate_coco(coco, clip=True, drop_invalid=True)
    dups = drop_duplicate_boxes(coco, tol=2.0) if drop_duplicates else []
    coco["info"]["dropped_duplicates"] = len(dups)
    return coco
