"""Auto-annotated COCO dicts: masks for boxed datasets (BCCD, TXL-PBC) and instances for
single-cell datasets (PBC)."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..data.convert import category_id, mask_to_rle
from ..data.records import LabelledImage, new_coco
from ..io import read_image
from .segment import AutolabelError, _hull, cell_kind, segment_in_box, segment_single_cell
from tqdm.auto import tqdm

__all__ = ["autolabel_boxes", "autolabel_pbc"]


def _meta(method: str, mask: np.ndarray) -> dict[str, Any]:
    """What made a mask, its area, and its solidity (area / convex hull area: blood cells
    are nearly convex, so a low value flags a mask that leaked into a neighbour)."""
    area = int(mask.sum())
    return {"method": method, "mask_area": area, "solidity": round(area / max(int(_hull(mask).sum()), 1), 4)}


def autolabel_boxes(coco: dict, method: str = "auto", progress: bool = False) -> dict:
    """A copy of ``coco`` whose annotations gain an RLE ``segmentation`` (and
    ``autolabel: {method, mask_area, solidity}``); boxes, classes and areas are left as
    they are.

    Each box is segmented by :func:`segment_in_box` with its category name as the cell
    class. ``info["autolabel"]`` counts the methods used; boxes that fell back to the
    inscribed ellipse are listed there under ``"fallbacks"``.
    """
    out = copy.deepcopy(coco)
    names = {c["id"]: c["name"] for c in out["categories"]}
    for name in names.values():
        cell_kind(name)  # fail early on a class we cannot segment
    by_image: dict[int, list[dict]] = {}
    for ann in out["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    counts: dict[str, int] = {}
    fallbacks = []
    images = [im for im in out["images"] if im["id"] in by_image]
    for im in _progress(images, progress, "autolabel boxes"):
        image = read_image(im["path"])
        for ann in by_image[im["id"]]:
            x, y, w, h = ann["bbox"]
            r = segment_in_box(image, (x, y, x + w, y + h), names[ann["category_id"]], method)
            ann["segmentation"] = mask_to_rle(r.mask)
            ann["autolabel"] = _meta(r.method, r.mask)
            counts[r.method] = counts.get(r.method, 0) + 1
            if r.method == "ellipse":
                fallbacks.append({"annotation": ann["id"], "image": im["file_name"]})
    out.setdefault("info", {})["autolabel"] = {"method": method, "counts": counts,
                                               "fallbacks": fallbacks}
    return out


def autolabel_pbc(records: Sequence[LabelledImage], classes: Sequence[str], method: str = "auto",
                  dataset: str = "pbc", split: str = "", progress: bool = False) -> dict:
    """COCO dict of single-cell images: one instance (mask, tight box, class) per image.

    Categories are ``classes`` in the given order. Images where segmentation fails are
    left out of ``images`` (an image without its cell would teach "background") and
    listed in ``info["autolabel"]["failed"]`` with the reason; a warning says how many.
    """
    classes = list(classes)
    coco = new_coco(classes, dataset, split)
    failed, counts = [], {}
    for rec in _progress(records, progress, "autolabel single cells"):
        cat = category_id(classes, rec.label)
        image = read_image(rec.path)
        try:
            r = segment_single_cell(image, rec.label, method)
        except AutolabelError as exc:
            failed.append({"path": str(rec.path), "label": rec.label, "reason": str(exc)})
            continue
        image_id = len(coco["images"]) + 1
        H, W = image.shape[:2]
        coco["images"].append({"id": image_id, "file_name": Path(rec.path).name, "width": W,
                               "height": H, "path": str(Path(rec.path).resolve())})
        x0, y0, x1, y1 = r.box
        coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": image_id,
                                    "category_id": cat, "bbox": [x0, y0, x1 - x0, y1 - y0],
                                    "area": float(r.mask.sum()), "iscrowd": 0,
                                    "segmentation": mask_to_rle(r.mask),
                                    "autolabel": _meta(r.method, r.mask)})
        counts[r.method] = counts.get(r.method, 0) + 1
    coco["info"]["autolabel"] = {"method": method, "counts": counts, "failed": failed}
    if failed:
        warnings.warn(f"Auto-annotation failed on {len(failed)} of {len(records)} images; they are "
                      "left out and listed in coco['info']['autolabel']['failed'].", stacklevel=2)
    return coco


def _progress(items: Sequence[Any], show: bool, desc: str):
    if not show:
        return items

    return tqdm(items, desc=desc)
