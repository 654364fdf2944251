"""Annotation format conversion and COCO validation.

* :func:`voc_to_coco`, :func:`yolo_to_coco`: raw detection labels -> COCO dict
  (see :mod:`bloodlib.data.records`); :func:`coco_to_yolo` writes an ultralytics folder.
* :func:`polygons_to_mask`, :func:`mask_to_polygons`, :func:`mask_to_rle`,
  :func:`rle_to_mask`: instance masks, via pycocotools (and OpenCV contours).
* :func:`validate_coco`: checks ids, categories and boxes; clips boxes that stick out.

Box conventions: VOC ``xmin ymin xmax ymax`` become COCO ``[xmin, ymin, xmax - xmin,
ymax - ymin]`` unchanged (no +1); YOLO ``cx cy w h`` are normalised to the image size.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Iterable, Sequence, Union

import cv2
import numpy as np
import yaml
from pycocotools import mask as mask_utils

from ..errors import AnnotationError, UnknownClassError
from ..io import image_size
from .records import category_names, new_coco

PathLike = Union[str, Path]
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


# ---------------------------------------------------------------- categories
def category_id(categories: Sequence[str], name: str) -> int:
    """1-based id of ``name`` in ``categories``; matching ignores case and surrounding
    spaces. Raises :class:`UnknownClassError` listing the known classes."""
    key = name.strip().lower()
    for i, known in enumerate(categories):
        if known.lower() == key:
            return i + 1
    raise UnknownClassError(f"Unknown class name {name!r}; known classes: {list(categories)}. "
                            "Fix the label or pass the full category list.")


def _find_image(image_dir: Path, file_name: str | None, stem: str) -> Path:
    candidates = [image_dir / file_name] if file_name else []
    candidates += [image_dir / (stem + ext) for ext in IMAGE_EXTENSIONS]
    for cand in candidates:
        if cand.is_file():
            return cand.resolve()
    raise AnnotationError(f"No image for annotation {stem!r} in {image_dir} (tried "
                          f"{file_name or stem + '.*'}). Restore the image or drop the annotation.")


def _image_entry(image_id: int, path: Path) -> dict[str, Any]:
    w, h = image_size(path)
    return {"id": image_id, "file_name": path.name, "width": w, "height": h, "path": str(path)}


def _add_box(coco: dict, image_id: int, cat: int, box: Sequence[float]) -> None:
    x, y, w, h = (float(v) for v in box)
    coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": image_id,
                                "category_id": cat, "bbox": [x, y, w, h], "area": w * h,
                                "iscrowd": 0})


# ---------------------------------------------------------------- VOC / YOLO -> COCO
def voc_to_coco(xml_paths: Iterable[PathLike], image_dir: PathLike, categories: Sequence[str],
                dataset: str = "", split: str = "") -> dict[str, Any]:
    """Pascal VOC XML files -> COCO dict (images numbered 1.. in the given order).

    The image is ``image_dir/<filename>`` (or ``<xml stem>.<ext>``); its real size is
    used, and an XML ``<size>`` that disagrees (other than 0 x 0) raises AnnotationError.
    Boxes are copied as they are; run :func:`validate_coco` to clip or reject bad ones.
    """
    coco = new_coco(categories, dataset, split)
    image_dir = Path(image_dir)
    for image_id, xml_path in enumerate(map(Path, xml_paths), start=1):
        if not xml_path.is_file():
            raise AnnotationError(f"Annotation file not found: {xml_path}.")
        try:
            root = ET.parse(xml_path).getroot()
        except ET.ParseError as exc:
            raise AnnotationError(f"Malformed VOC XML {xml_path}: {exc}") from exc
        entry = _image_entry(image_id, _find_image(image_dir, root.findtext("filename"), xml_path.stem))
        xml_w, xml_h = (int(float(root.findtext(f"size/{k}") or 0)) for k in ("width", "height"))
        if (xml_w, xml_h) != (0, 0) and (xml_w, xml_h) != (entry["width"], entry["height"]):
            raise AnnotationError(f"{xml_path} says the image is {xml_w}x{xml_h} but "
                                  f"{entry['path']} is {entry['width']}x{entry['height']}.")
        coco["images"].append(entry)
        for obj in root.iter("object"):
            cat = category_id(categories, obj.findtext("name") or "")
            try:
                x0, y0, x1, y1 = (float(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax"))
            except (TypeError, ValueError) as exc:
                raise AnnotationError(f"Object without a numeric <bndbox> in {xml_path}.") from exc
            _add_box(coco, image_id, cat, (x0, y0, x1 - x0, y1 - y0))
    return coco


def yolo_to_coco(image_paths: Iterable[PathLike], label_dir: PathLike, categories: Sequence[str],
                 dataset: str = "", split: str = "", missing_ok: bool = False) -> dict[str, Any]:
    """YOLO txt labels (``class cx cy w h``, normalised) -> COCO dict.

    The label of ``images/x.jpg`` is ``label_dir/x.txt``. A missing label file raises
    AnnotationError unless ``missing_ok`` (then the image has no objects, as in ultralytics).
    A class index outside ``categories`` raises UnknownClassError.
    """
    coco = new_coco(categories, dataset, split)
    label_dir = Path(label_dir)
    for image_id, path in enumerate((Path(p).resolve() for p in image_paths), start=1):
        entry = _image_entry(image_id, path)
        coco["images"].append(entry)
        txt = label_dir / (path.stem + ".txt")
        if not txt.is_file():
            if missing_ok:
                continue
            raise AnnotationError(f"Label file not found: {txt} (for image {path}). Pass "
                                  "missing_ok=True if images without labels have no objects.")
        W, H = entry["width"], entry["height"]
        for n, line in enumerate(txt.read_text().splitlines(), start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 5:
                kind = " (a polygon: segmentation labels are not boxes)" if len(parts) > 5 \
                    and len(parts) % 2 == 1 else ""
                raise AnnotationError(f"{txt}:{n}: expected 5 columns 'class cx cy w h', got "
                                      f"{len(parts)}{kind}: {line[:80]!r}.")
            try:
                cls, (cx, cy, w, h) = int(parts[0]), map(float, parts[1:5])
            except ValueError as exc:
                raise AnnotationError(f"{txt}:{n}: expected 'class cx cy w h', got {line!r}.") from exc
            if not all(map(math.isfinite, (cx, cy, w, h))):
                raise AnnotationError(f"{txt}:{n}: non-finite number in {line!r}.")
            if not 0 <= cls < len(categories):
                raise UnknownClassError(f"{txt}:{n}: class index {cls} is outside 0..{len(categories) - 1}; "
                                        f"known classes: {list(categories)}.")
            _add_box(coco, image_id, cls + 1, ((cx - w / 2) * W, (cy - h / 2) * H, w * W, h * H))
    return coco


def coco_to_yolo(coco: dict, out_dir: PathLike, split_name: str, copy: bool = False) -> Path:
    """Write ``images/<split>`` (symlinks, or copies if ``copy``), ``labels/<split>/*.txt``
    and ``data.yaml`` (merged with an existing one) under ``out_dir``; return data.yaml.

    Class index = category order by id; lines are ``cls cx cy w h`` normalised, 8 decimals.
    """
    out = Path(out_dir).resolve()
    img_dir, lbl_dir = out / "images" / split_name, out / "labels" / split_name
    img_dir.mkdir(parents=True, exist_ok=True)
    lbl_dir.mkdir(parents=True, exist_ok=True)
    index = {c["id"]: i for i, c in enumerate(sorted(coco["categories"], key=lambda c: c["id"]))}
    by_image: dict[int, list[dict]] = {im["id"]: [] for im in coco["images"]}
    for ann in coco["annotations"]:
        by_image[ann["image_id"]].append(ann)
    seen: set[str] = set()
    for im in coco["images"]:
        src = Path(im["path"])
        if src.stem in seen:
            raise AnnotationError(f"Two images share the stem {src.stem!r}; YOLO labels are "
                                  "matched by stem, rename one of them.")
        seen.add(src.stem)
        dst = img_dir / src.name
        if dst.is_symlink() or dst.exists():
            dst.unlink()
        shutil.copy2(src, dst) if copy else os.symlink(src, dst)
        W, H = im["width"], im["height"]
        lines = [f"{index[a['category_id']]} {(a['bbox'][0] + a['bbox'][2] / 2) / W:.8f} "
                 f"{(a['bbox'][1] + a['bbox'][3] / 2) / H:.8f} {a['bbox'][2] / W:.8f} {a['bbox'][3] / H:.8f}"
                 for a in by_image[im["id"]]]
        (lbl_dir / (src.stem + ".txt")).write_text("\n".join(lines) + ("\n" if lines else ""))
    data_yaml = out / "data.yaml"
    data = yaml.safe_load(data_yaml.read_text()) if data_yaml.is_file() else {}
    data.update({"path": str(out), split_name: f"images/{split_name}",
                 "names": dict(enumerate(category_names(coco))), "nc": len(index)})
    data_yaml.write_text(yaml.safe_dump(data, sort_keys=False))
    return data_yaml


# ---------------------------------------------------------------- masks
POLYGON_MARGIN = 0.25  # polygon points may lie this fraction of the image's side outside it


def check_polygons(polys: Any, h: int, w: int, where: str = "polygon") -> list[list[float]]:
    """COCO polygons as lists of floats, or :class:`AnnotationError` naming ``where``.

    Each polygon is a flat list ``[x1, y1, x2, y2, ...]`` of an even length; every
    coordinate must be finite and within ``POLYGON_MARGIN`` of the image's side outside
    the ``w x h`` image (a NaN or 1e9 reaching pycocotools can exhaust the memory).
    Polygons with fewer than 3 points are left out.
    """
    if not isinstance(polys, (list, tuple)):
        raise AnnotationError(f"{where}: expected a list of polygons, got {type(polys).__name__}.")
    mx, my = POLYGON_MARGIN * w + 1, POLYGON_MARGIN * h + 1
    out = []
    for k, poly in enumerate(polys):
        if not isinstance(poly, (list, tuple)):
            raise AnnotationError(f"{where}: polygon {k} is a {type(poly).__name__}, not a list "
                                  "of coordinates (an RLE belongs in 'segmentation' alone).")
        try:
            pts = np.asarray(poly, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise AnnotationError(f"{where}: polygon {k} holds non-numeric values.") from exc
        if pts.ndim != 1 or pts.size % 2:
            raise AnnotationError(f"{where}: polygon {k} has {pts.size} numbers; a polygon is "
                                  "a flat list of x, y pairs.")
        if not np.all(np.isfinite(pts)):
            raise AnnotationError(f"{where}: polygon {k} has a non-finite coordinate (NaN or inf).")
        xs, ys = pts[0::2], pts[1::2]
        if xs.size and (xs.min() < -mx or xs.max() > w + mx or ys.min() < -my or ys.max() > h + my):
            raise AnnotationError(f"{where}: polygon {k} reaches ({xs.min():.4g}..{xs.max():.4g}, "
                                  f"{ys.min():.4g}..{ys.max():.4g}), far outside the {w}x{h} "
                                  "image; check the coordinate frame.")
        if pts.size >= 6:
            out.append(pts.tolist())
    return out


def segmentation_to_mask(seg: Any, h: int, w: int, where: str = "segmentation") -> np.ndarray:
    """A COCO ``segmentation`` (polygons, an RLE dict, or a list of RLE dicts) -> (h, w)
    uint8 0/1; :class:`AnnotationError` naming ``where`` for anything malformed."""
    if isinstance(seg, dict):
        return rle_to_mask(seg, h, w, where=where)
    if isinstance(seg, (list, tuple)) and seg and all(isinstance(s, dict) for s in seg):
        out = np.zeros((h, w), np.uint8)
        for s in seg:
            out |= rle_to_mask(s, h, w, where=where)
        return out
    polys = check_polygons(seg, h, w, where)
    if not polys:
        return np.zeros((h, w), np.uint8)
    return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polys, h, w))).astype(np.uint8)


def polygons_to_mask(polys: Sequence[Sequence[float]] | dict, h: int, w: int,
                     where: str = "segmentation") -> np.ndarray:
    """COCO polygons ``[[x1, y1, x2, y2, ...], ...]`` (or an RLE dict, or a list of them)
    -> (h, w) uint8 0/1; bad coordinates raise :class:`AnnotationError` naming ``where``."""
    return segmentation_to_mask(polys, h, w, where)


def _offset_outward(pts: np.ndarray, d: float = 0.5) -> np.ndarray:
    """Move every edge of a closed polygon ``d`` px outward (mitred vertices)."""
    edges = np.roll(pts, -1, axis=0) - pts
    length = np.linalg.norm(edges, axis=1, keepdims=True)
    normals = np.stack([edges[:, 1], -edges[:, 0]], axis=1) / np.maximum(length, 1e-12)
    x, y = pts[:, 0], pts[:, 1]
    if np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y) < 0:  # orientation: make normals point out
        normals = -normals
    n_in, n_out = np.roll(normals, 1, axis=0), normals  # edges before and after each vertex
    dot = np.sum(n_in * n_out, axis=1, keepdims=True)
    return pts + d * (n_in + n_out) / np.maximum(1 + dot, 0.5)


def mask_to_polygons(mask: np.ndarray, min_points: int = 3) -> list[list[float]]:
    """Outer contours of a binary mask as COCO polygons (holes are filled).

    OpenCV contours run through boundary pixels, whose centres in the COCO frame (pixel
    ``i`` spans ``[i, i + 1)``) are at ``i + 0.5``; each edge is then moved 0.5 px outward
    onto the pixel borders, so :func:`polygons_to_mask` gives back the same pixels.
    A contour of fewer than ``min_points`` points (a lone pixel, a one-pixel-wide line)
    becomes its pixel-border rectangle.
    """
    m = np.ascontiguousarray(np.asarray(mask) > 0, dtype=np.uint8)
    contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [_offset_outward(c.reshape(-1, 2).astype(np.float64) + 0.5).ravel().tolist()
            if len(c) >= min_points else _pixel_box(c.reshape(-1, 2)) for c in contours]


def _pixel_box(points: np.ndarray) -> list[float]:
    """The pixel-border rectangle around a contour too short to be a polygon (one pixel,
    or a one-pixel-wide line), so thin regions are not lost."""
    x0, y0 = points.min(axis=0).astype(float)
    x1, y1 = points.max(axis=0).astype(float) + 1.0
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def mask_to_rle(mask: np.ndarray) -> dict[str, Any]:
    """Binary mask -> compressed COCO RLE with a JSON-serialisable ``counts`` string."""
    rle = mask_utils.encode(np.asfortranarray(np.asarray(mask) > 0, dtype=np.uint8))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _rle_size(size: Any, where: str) -> tuple[int, int] | None:
    """An RLE's ``size`` as (h, w), None when absent; AnnotationError when malformed."""
    if size is None:
        return None
    if (not isinstance(size, (list, tuple)) or len(size) != 2
            or not all(isinstance(v, (int, np.integer)) and v >= 0 for v in size)):
        raise AnnotationError(f"{where}: RLE 'size' must be [height, width], got {size!r}.")
    return int(size[0]), int(size[1])


def rle_to_mask(rle: dict, h: int | None = None, w: int | None = None,
                where: str = "RLE") -> np.ndarray:
    """COCO RLE (compressed, or uncompressed with a list of counts) -> uint8 0/1 mask;
    :class:`AnnotationError` naming ``where`` when it is malformed or of another size."""
    if not isinstance(rle, dict) or "counts" not in rle:
        raise AnnotationError(f"{where}: an RLE needs 'size' and 'counts'; got {str(rle)[:80]}.")
    size = _rle_size(rle.get("size"), where)
    if size is None and (h is None or w is None):
        raise AnnotationError(f"{where}: the RLE has no 'size' and no image size was given.")
    h, w = (int(h), int(w)) if h is not None and w is not None else size
    if size is not None and size != (h, w):
        raise AnnotationError(f"{where}: the RLE is {size[1]}x{size[0]} but the image is {w}x{h}.")
    counts = rle["counts"]
    try:
        if isinstance(counts, list):
            if any(not isinstance(c, (int, np.integer)) or c < 0 for c in counts) or sum(counts) != h * w:
                raise AnnotationError(f"{where}: uncompressed RLE counts must be non-negative "
                                      f"integers summing to {h}x{w} = {h * w}.")
            rle = mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
        elif isinstance(counts, (str, bytes)):
            rle = {"size": [h, w], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
        else:
            raise AnnotationError(f"{where}: RLE counts must be a list or a string, "
                                  f"not {type(counts).__name__}.")
        return mask_utils.decode(rle).astype(np.uint8)
    except (TypeError, ValueError, UnicodeEncodeError) as exc:
        raise AnnotationError(f"{where}: malformed RLE ({exc}).") from exc


# ---------------------------------------------------------------- validation
def validate_coco(coco: dict, clip: bool = True, drop_invalid: bool = False) -> dict[str, Any]:
    """Check a COCO dict in place and return a report.

    * duplicate image/annotation ids, or an annotation of an unknown image -> AnnotationError;
    * an unknown ``category_id`` -> UnknownClassError listing the known classes;
    * a box that overlaps the image by > 0 px but sticks out is clipped to the image
      (``clip=True``), else AnnotationError; ``report["clipped"]`` counts boxes moved by
      more than 0.01 px (smaller overshoots are float rounding of normalised labels);
    * a box entirely outside the image, degenerate (w or h <= 0) or not finite is
      rejected: AnnotationError, or removed and listed in ``report["dropped"]`` when
      ``drop_invalid``.
    """
    images = {}
    for im in coco["images"]:
        if im["id"] in images:
            raise AnnotationError(f"Duplicate image id {im['id']}.")
        images[im["id"]] = im
    cats = {c["id"]: c["name"] for c in coco["categories"]}
    report: dict[str, Any] = {"images": len(images), "annotations": 0, "clipped": 0, "dropped": []}
    kept, ann_ids = [], set()
    for ann in coco["annotations"]:
        if ann["id"] in ann_ids:
            raise AnnotationError(f"Duplicate annotation id {ann['id']}.")
        ann_ids.add(ann["id"])
        im = images.get(ann["image_id"])
        if im is None:
            raise AnnotationError(f"Annotation {ann['id']} refers to unknown image {ann['image_id']}.")
        if ann["category_id"] not in cats:
            raise UnknownClassError(f"Annotation {ann['id']} has category_id {ann['category_id']}; "
                                    f"known classes: {cats}.")
        x, y, w, h = (float(v) for v in ann["bbox"])
        W, H = im["width"], im["height"]
        x0, y0, x1, y1 = max(x, 0.0), max(y, 0.0), min(x + w, W), min(y + h, H)
        problem = None
        if not all(map(math.isfinite, (x, y, w, h))) or w <= 0 or h <= 0:
            problem = f"degenerate box {ann['bbox']}"
        elif x1 <= x0 or y1 <= y0:
            problem = f"box {ann['bbox']} entirely outside the {W}x{H} image"
        elif (x0, y0, x1, y1) != (x, y, x + w, y + h):
            if not clip and max(x0 - x, y0 - y, x + w - x1, y + h - y1) > 0.01:
                problem = f"box {ann['bbox']} extends outside the {W}x{H} image"
            else:
                report["clipped"] += max(x0 - x, y0 - y, x + w - x1, y + h - y1) > 0.01
                ann["bbox"] = [x0, y0, x1 - x0, y1 - y0]
        if problem:
            where = f"annotation {ann['id']} of image {im.get('path', im['file_name'])}"
            if not drop_invalid:
                raise AnnotationError(f"{where}: {problem}. Fix or remove it (or pass drop_invalid=True).")
            report["dropped"].append({"annotation": ann["id"], "image": im["file_name"], "problem": problem})
            continue
        ann.setdefault("area", ann["bbox"][2] * ann["bbox"][3])
        ann.setdefault("iscrowd", 0)
        kept.append(ann)
    coco["annotations"] = kept
    report["annotations"] = len(kept)
    return report


def drop_duplicate_boxes(coco: dict, tol: float = 0.0) -> list[dict]:
    """Remove boxes of the same class and image whose coordinates all lie within ``tol``
    px of an earlier box (double-clicked annotations); return the removed annotations."""
    kept, dropped, seen = [], [], {}
    for ann in coco["annotations"]:
        prev = seen.setdefault((ann["image_id"], ann["category_id"]), [])
        b = np.asarray(ann["bbox"], float)
        if any(np.abs(b - p).max() <= tol for p in prev):
            dropped.append(ann)
            continue
        prev.append(b)
        kept.append(ann)
    coco["annotations"] = kept
    return dropped


def save_coco(coco: dict, path: PathLike) -> Path:
    """Write a COCO dict as JSON (paths as strings)."""
    path = Path(path)
    path.write_text(json.dumps(coco, default=str))
    return path
