"""SegPC-2021 multiple-myeloma plasma cells: instance polygons for cells and nuclei.

Layout: ``segpc2021/MultipleMyeloma-ImageMask-Dataset_V2/{train,valid}/images/NNN.jpg``
(resized to 512x512) and ``segpc2021/annotations/{train,val}_{cell,nu}_t*.json`` (COCO
polygons at the original 2040x1536 or 2560x1920 resolution, matched by file stem).
The local 512 px images are *letterboxed*: the original is scaled uniformly by
512 / max(W, H) and centred on a 512x512 canvas (4:3 originals get ~64 px bands at the
top and bottom). Polygons and boxes get the same transform, ``x * s + dx, y * s + dy``
(:func:`letterbox_transform`); scaling x and y separately would stretch them into the
bands. Areas are recomputed from the transformed polygons. Images and annotations are renumbered from 1
(the originals start at 0, which COCOeval treats as "unmatched"); ``orig_id``,
``orig_width`` and ``orig_height`` are kept. The nucleus file calls its category
"cell"; it is renamed "nucleus". Annotated images missing from the image folder are
skipped and listed in ``info["missing_images"]`` (locally: valid 610.bmp, so 199 of 200).
Annotations whose polygons are malformed, not finite or far outside their image are
left out with a warning and listed in ``info["invalid_annotations"]`` (file, image,
annotation and problem), so one bad polygon never costs the rest of the split.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from pycocotools import mask as mask_utils

from ...errors import AnnotationError, DatasetNotFoundError
from ...io import image_size
from ..convert import check_polygons
from ..records import new_coco
from ._common import _root

SEGPC_SPLITS = {"train": ("train", "train"), "valid": ("valid", "val"), "val": ("valid", "val")}
SEGPC_TARGETS = {"cell": "cell", "nucleus": "nu"}


def letterbox_transform(orig_w: int, orig_h: int, w: int, h: int) -> tuple[float, float, float]:
    """(scale, dx, dy) mapping original pixel coordinates into a letterboxed ``w x h`` image."""
    scale = min(w / orig_w, h / orig_h)
    return scale, (w - orig_w * scale) / 2.0, (h - orig_h * scale) / 2.0


def _scaled_polygons(seg: Any, scale: float, dx: float, dy: float, im: dict,
                     where: str) -> list[list[float]]:
    """Checked polygons moved into the letterboxed frame; AnnotationError when a
    coordinate is malformed, not finite or far outside the image, or none has 3 points."""
    polys = check_polygons(seg, im["orig_height"], im["orig_width"], where)
    polys = [[v * scale + (dx if i % 2 == 0 else dy) for i, v in enumerate(p)] for p in polys]
    if not polys:
        raise AnnotationError(f"{where}: no polygon with 3 or more points.")
    return polys


def load_segpc(split: str = "train", target: str = "cell", root: Path | str | None = None) -> dict[str, Any]:
    """SegPC split (``train``/``valid``) and target (``cell``/``nucleus``) as a COCO dict
    in the 512 px frame of the local images."""
    if split not in SEGPC_SPLITS or target not in SEGPC_TARGETS:
        raise ValueError(f"split must be 'train' or 'valid', target 'cell' or 'nucleus'; got {split!r}, {target!r}.")
    root = _root("segpc2021", root)
    folder, prefix = SEGPC_SPLITS[split]
    found = sorted((root / "annotations").glob(f"{prefix}_{SEGPC_TARGETS[target]}_t*.json"))
    if not found:
        raise DatasetNotFoundError(f"No {prefix}_{SEGPC_TARGETS[target]}_t*.json in {root / 'annotations'}.")
    src = json.loads(found[0].read_text())
    img_dir = root / "MultipleMyeloma-ImageMask-Dataset_V2" / folder / "images"
    coco = new_coco([target], dataset="segpc2021", split=folder)
    coco["info"]["missing_images"] = []
    coco["info"]["invalid_annotations"] = []
    new_ids: dict[int, tuple[int, float, float, float]] = {}
    for im in src["images"]:
        stem = Path(im["file_name"]).stem
        path = next((p for p in (img_dir / f"{stem}{e}" for e in (".jpg", ".png", ".bmp")) if p.is_file()), None)
        if path is None:
            coco["info"]["missing_images"].append(im["file_name"])
            continue
        w, h = image_size(path)
        new_ids[im["id"]] = (len(coco["images"]) + 1, *letterbox_transform(im["width"], im["height"], w, h))
        coco["images"].append({"id": len(coco["images"]) + 1, "file_name": path.name, "width": w,
                               "height": h, "path": str(path.resolve()), "orig_id": im["id"],
                               "orig_width": im["width"], "orig_height": im["height"]})
    if not coco["images"]:
        raise DatasetNotFoundError(f"None of the annotated images of {found[0].name} are in {img_dir}.")
    for ann in src["annotations"]:
        if ann["image_id"] not in new_ids:
            continue
        image_id, scale, dx, dy = new_ids[ann["image_id"]]
        im = coco["images"][image_id - 1]
        where = f"{found[0]}: image {im['file_name']} (id {ann['image_id']}), annotation {ann['id']}"
        try:
            polys = _scaled_polygons(ann["segmentation"], scale, dx, dy, im, where)
        except AnnotationError as exc:
            coco["info"]["invalid_annotations"].append({"annotation": ann["id"],
                                                        "image": im["file_name"], "problem": str(exc)})
            continue
        rle = mask_utils.merge(mask_utils.frPyObjects(polys, im["height"], im["width"]))
        x, y, bw, bh = ann["bbox"]
        coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": image_id,
                                    "category_id": 1,
                                    "bbox": [x * scale + dx, y * scale + dy, bw * scale, bh * scale],
                                    "area": float(mask_utils.area(rle)), "segmentation": polys,
                                    "iscrowd": 0})
    if coco["info"]["invalid_annotations"]:
        warnings.warn(f"SegPC {folder}: {len(coco['info']['invalid_annotations'])} annotations with "
                      "bad polygons were left out (listed in info['invalid_annotations']): "
                      f"{coco['info']['invalid_annotations'][0]['problem']}", stacklevel=2)
    if coco["info"]["missing_images"]:
        warnings.warn(f"SegPC {folder}: {len(coco['info']['missing_images'])} annotated images are not in "
                      f"{img_dir}: {coco['info']['missing_images']} (skipped)", stacklevel=2)
    return coco
