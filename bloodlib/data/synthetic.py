"""Procedural blood smears: images with exact instance masks, boxes and WBC nuclei.

Everything is deterministic by ``seed`` (one :class:`numpy.random.Generator` per call),
so notebooks can run end to end without downloading data. Objects are painted in order
(RBCs, then WBCs, then platelets); masks are *visible-pixel* masks, so a later object
occludes earlier ones, and instances left with too few visible pixels are dropped.

* :func:`make_smear` - a field of view like BCCD (classes ``SMEAR_CLASSES``).
* :func:`make_cell_crop` - one centred cell like PBC (types ``CROP_TYPES``).
* ``write_*_set`` - the same data written to disk as the common record types
  (COCO dict, :class:`LabelledImage`, :class:`MaskedImage` with Zheng-format masks).

Semantic masks use 0 background, 1 cytoplasm, 2 nucleus. Platelets are anucleate:
their crops have cytoplasm (1) only.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import cv2
import numpy as np
from PIL import Image

from .records import LabelledImage, MaskedImage, new_coco
from pycocotools import mask as mask_utils

SMEAR_CLASSES = ("WBC", "RBC", "Platelets")
WBC_TYPES = ("neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil")
CROP_TYPES = ("basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte",
              "neutrophil", "platelet")  # PBC class names, sorted like its folders
GENERATOR_VERSION = 1  # bump when the look changes, so cached sets on disk are rewritten

PathLike = Union[str, Path]
_RADIUS = {  # cell radius range (pixels) at scale 1 (a 256x320 smear or a 64 px crop)
    "rbc": (14.0, 19.0), "platelet": (3.0, 5.0), "neutrophil": (19.0, 23.0),
    "lymphocyte": (13.0, 16.0), "monocyte": (23.0, 27.0), "eosinophil": (19.0, 23.0),
    "basophil": (16.0, 19.0), "erythroblast": (12.0, 15.0), "ig": (20.0, 24.0),
}
# RGB colours (cytoplasm, nucleus, granules) for a Romanowsky-stained smear.
_COLOURS: dict[str, tuple[tuple[int, int, int], Optional[tuple], Optional[tuple]]] = {
    "rbc": ((214, 116, 128), None, None),
    "platelet": ((176, 128, 196), None, (104, 46, 136)),
    "neutrophil": ((228, 206, 218), (100, 44, 136), (190, 140, 186)),
    "lymphocyte": ((156, 182, 228), (72, 34, 124), None),
    "monocyte": ((188, 186, 212), (136, 92, 170), None),
    "eosinophil": ((238, 186, 160), (104, 46, 128), (222, 98, 58)),
    "basophil": ((188, 150, 206), (66, 22, 92), (70, 22, 100)),
    "erythroblast": ((200, 156, 186), (46, 16, 60), None),
    "ig": ((192, 180, 224), (146, 96, 184), (150, 90, 170)),
}
# granules: (dots per 100 px^2, dot radius, opacity, cover the nucleus too)
_GRANULES = {
    "neutrophil": (10.0, 0.7, 0.45, False), "eosinophil": (16.0, 1.3, 0.85, False),
    "basophil": (12.0, 1.4, 0.9, True), "ig": (4.0, 0.9, 0.6, False),
    "platelet": (30.0, 0.6, 0.8, False),
}


@dataclass
class Smear:
    """A synthetic field of view with per-instance visible masks.

    ``semantic`` covers annotated WBCs only: 0 background/other, 1 cytoplasm, 2 nucleus.
    """

    image: np.ndarray  # (H, W, 3) uint8 RGB
    masks: np.ndarray  # (N, H, W) bool, visible pixels
    boxes: np.ndarray  # (N, 4) float32 xyxy, tight around masks (x2 = last column + 1)
    labels: list[str]  # names in SMEAR_CLASSES
    wbc_types: list[Optional[str]]  # WBC type, or None for RBCs and platelets
    semantic: np.ndarray  # (H, W) uint8

    @property
    def nucleus_mask(self) -> np.ndarray:
        """(H, W) bool: visible WBC nucleus pixels."""
        return self.semantic == 2

    @property
    def category_ids(self) -> list[int]:
        """COCO category ids (1..3, ``SMEAR_CLASSES`` order)."""
        return [SMEAR_CLASSES.index(n) + 1 for n in self.labels]


def _pt(v: float) -> int:
    """Fixed-point coordinate for OpenCV drawing with ``shift=4``."""
    return int(round(v * 16))


def _noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Smooth zero-mean noise with features about ``cell`` pixels wide (std ~1)."""
    gh, gw = max(2, int(h / cell) + 2), max(2, int(w / cell) + 2)
    return cv2.resize(rng.standard_normal((gh, gw)).astype(np.float32), (w, h),
                      interpolation=cv2.INTER_CUBIC)


class _Canvas:
    """Float RGB image plus instance-id and semantic maps, painted object by object."""

    def __init__(self, rng: np.random.Generator, h: int, w: int, scale: float) -> None:
        self.rng, self.h, self.w, self.scale = rng, h, w, scale
        self.bg = np.array([236, 226, 220], np.float32) + rng.uniform(-10, 8, 3)
        self.stain = (1 + rng.normal(0, 0.04, 3)).astype(np.float32)  # per-smear stain tint
        blotch = 1 + 0.015 * _noise(rng, h, w, 40 * scale)[..., None]
        self.img = np.broadcast_to(self.bg, (h, w, 3)) * blotch
        self.ids = np.zeros((h, w), np.int32)
        self.sem = np.zeros((h, w), np.uint8)
        self.drawn: list[int] = []  # pixels each instance covered when painted

    def window(self, cx: float, cy: float, r: float):
        x0, y0 = max(0, int(cx - r - 3)), max(0, int(cy - r - 3))
        x1, y1 = min(self.w, int(cx + r + 4)), min(self.h, int(cy + r + 4))
        if x1 <= x0 or y1 <= y0:
            return None
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        return (slice(y0, y1), slice(x0, x1)), xx - cx, yy - cy, (x0, y0)

    def paint(self, kind: str, cx: float, cy: float, r: float, inst: int,
              semantic: bool = False) -> tuple[Any, np.ndarray, np.ndarray] | None:
        """Paint one cell; returns (window, cell mask, nucleus mask) in window coordinates."""
        rng, s = self.rng, self.scale
        win = self.window(cx, cy, r * 1.15)
        if win is None:
            self.drawn.append(0)
            return None
        sl, dx, dy, (x0, y0) = win
        # body: a slightly elliptical, slightly wobbly disc
        theta = rng.uniform(0, math.pi)
        ecc = rng.uniform(0.6, 1.0) if kind == "platelet" else rng.uniform(0.88, 1.0)
        c, si = math.cos(theta), math.sin(theta)
        u, v = dx * c + dy * si, -dx * si + dy * c
        ang = np.arctan2(v, u)
        wob_amp = 0.12 if kind == "platelet" else 0.025
        wob = 1 + sum(rng.uniform(0, wob_amp) * np.cos(k * ang + rng.uniform(0, 6.3))
                      for k in (2, 3, 4, 5))
        rho = np.sqrt(u**2 + (v / ecc) ** 2) / (r * wob)
        alpha = np.clip((1 - rho) * r + 0.5, 0, 1)
        cell = alpha >= 0.5
        if not cell.any():
            self.drawn.append(0)
            return None
        cyto_c, nuc_c, gran_c = _COLOURS[kind]
        tint = self.stain * (1 + rng.normal(0, 0.02, 3)).astype(np.float32)
        h, w = alpha.shape
        region = self.img[sl]
        if kind == "rbc":  # absorbing disc: overlaps darken, central pallor is paler
            pallor = rng.uniform(0.45, 0.7) * np.exp(-(rho / 0.45) ** 2)
            rim = 0.18 * np.exp(-(((rho - 0.85) / 0.13) ** 2))
            dens = (1 - pallor + rim) * (1 + 0.04 * _noise(rng, h, w, 6 * s))
            trans = np.clip(np.array(cyto_c, np.float32) * tint / self.bg, 0.05, 1.0)
            self.img[sl] = region * trans ** (dens * alpha)[..., None]
            nuc = np.zeros_like(cell)
        else:
            col = np.array(cyto_c, np.float32) * tint
            col = col * (1 + 0.03 * _noise(rng, h, w, 4 * s))[..., None]
            col = col * (1 - 0.08 * np.clip(rho - 0.8, 0, 1) / 0.2)[..., None]  # membrane
            nucl = self._nucleus(kind, h, w, cx - x0, cy - y0, r, theta)
            nucl *= np.clip((1 - rho) * r - 1.0, 0, 1)  # keep a rim of cytoplasm
            nuc = nucl >= 0.5
            if nuc_c is not None:
                chrom = 1 + 0.12 * _noise(rng, h, w, 2.5 * s) - 0.08 * (kind == "lymphocyte")
                ncol = np.array(nuc_c, np.float32) * tint * chrom[..., None]
                col = col * (1 - nucl[..., None]) + ncol * nucl[..., None]
            if kind in _GRANULES:
                density, gr, opac, over_nuc = _GRANULES[kind]
                area = float(cell.sum())
                dots = np.zeros((h, w), np.uint8)
                for _ in range(int(area * density / 100)):
                    gx, gy = rng.uniform(0, w), rng.uniform(0, h)
                    cv2.circle(dots, (_pt(gx), _pt(gy)), _pt(gr * s * rng.uniform(0.7, 1.3)),
                               255, -1, cv2.LINE_AA, 4)
                ga = dots.astype(np.float32) / 255 * opac * (1.0 if over_nuc else 1 - nucl)
                gcol = np.array(gran_c, np.float32) * tint
                col = col * (1 - ga[..., None]) + gcol * ga[..., None]
            a = (alpha * 0.97)[..., None]
            self.img[sl] = region * (1 - a) + col * a
        self.ids[sl][cell] = inst
        self.sem[sl][cell] = 1 if semantic else 0
        if semantic:
            self.sem[sl][nuc & cell] = 2
        self.drawn.append(int(cell.sum()))
        return sl, cell, nuc & cell

    def _nucleus(self, kind: str, h: int, w: int, cx: float, cy: float, r: float,
                 theta: float) -> np.ndarray:
        """Nucleus coverage in [0, 1] over the window (cell-local centre ``cx, cy``)."""
        rng = self.rng
        m = np.zeros((h, w), np.uint8)
        if kind in ("rbc", "platelet"):
            return m.astype(np.float32)
        rot = theta + rng.uniform(-0.5, 0.5)
        def ell(x: float, y: float, a: float, b: float, ang: float) -> None:
            cv2.ellipse(m, (_pt(x), _pt(y)), (_pt(a), _pt(b)), math.degrees(ang), 0, 360,
                        255, -1, cv2.LINE_AA, 4)
        def line(p: tuple[float, float], q: tuple[float, float], t: float) -> None:
            cv2.line(m, (_pt(p[0]), _pt(p[1])), (_pt(q[0]), _pt(q[1])), 255,
                     max(1, int(round(t))), cv2.LINE_AA, 4)
        if kind in ("neutrophil", "eosinophil"):
            n = 2 if kind == "eosinophil" else int(rng.integers(3, 6))
            span = math.radians(rng.uniform(150, 230)) if n > 2 else math.radians(rng.uniform(60, 100))
            arc_r = r * rng.uniform(0.42, 0.5)
            ox, oy = cx - arc_r * 0.45 * math.cos(rot), cy - arc_r * 0.45 * math.sin(rot)
            pts = []
            for i in range(n):
                a = rot - span / 2 + span * i / (n - 1)
                pts.append((ox + arc_r * math.cos(a), oy + arc_r * math.sin(a)))
            lobe = r * (0.31 if n == 2 else 0.24)
            for i, (x, y) in enumerate(pts):
                ell(x, y, lobe * rng.uniform(0.9, 1.15), lobe * rng.uniform(0.75, 1.0),
                    rng.uniform(0, math.pi))
                if i:
                    line(pts[i - 1], (x, y), r * 0.09)
        elif kind == "lymphocyte":
            off = r * rng.uniform(0, 0.12)
            ell(cx + off * math.cos(rot), cy + off * math.sin(rot), r * rng.uniform(0.78, 0.86),
                r * rng.uniform(0.72, 0.8), rot)
        elif kind == "monocyte":
            if rng.random() < 0.5:  # horseshoe
                start = math.degrees(rot) + rng.uniform(20, 60)
                cv2.ellipse(m, (_pt(cx), _pt(cy)), (_pt(r * 0.46), _pt(r * 0.4)), 0, start,
                            start + rng.uniform(210, 270), 255, max(1, int(r * 0.36)),
                            cv2.LINE_AA, 4)
            else:  # kidney: an ellipse with a bite out of one side
                ell(cx, cy, r * 0.62, r * 0.48, rot)
                bx, by = cx - r * 0.5 * math.sin(rot), cy + r * 0.5 * math.cos(rot)
                cv2.circle(m, (_pt(bx), _pt(by)), _pt(r * 0.3), 0, -1, cv2.LINE_AA, 4)
        elif kind == "basophil":
            for _ in range(3):
                ell(cx + rng.normal(0, r * 0.15), cy + rng.normal(0, r * 0.15), r * 0.4,
                    r * 0.3, rng.uniform(0, math.pi))
        elif kind == "erythroblast":
            off = r * rng.uniform(0, 0.18)
            ell(cx + off * math.cos(rot), cy + off * math.sin(rot), r * 0.52, r * 0.5, rot)
        elif kind == "ig":
            off = r * rng.uniform(0.15, 0.28)
            ell(cx + off * math.cos(rot), cy + off * math.sin(rot), r * 0.55, r * 0.45, rot)
        else:
            raise ValueError(f"Unknown cell kind {kind!r}.")
        return m.astype(np.float32) / 255

    def finish(self) -> np.ndarray:
        """Blur, illumination gradient and sensor noise; returns the uint8 image."""
        rng, h, w = self.rng, self.h, self.w
        img = cv2.GaussianBlur(self.img.astype(np.float32), (0, 0), 0.6)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        xx, yy = xx / w - 0.5, yy / h - 0.5
        gx, gy = rng.uniform(-0.12, 0.12, 2)
        illum = 1 + gx * xx + gy * yy - rng.uniform(0.0, 0.25) * (xx**2 + yy**2)
        img = img * illum[..., None] + rng.normal(0, rng.uniform(1.5, 4.0), img.shape)
        return np.clip(img, 0, 255).round().astype(np.uint8)


def _count(rng: np.random.Generator, rng_range: tuple[int, int]) -> int:
    return int(rng.integers(rng_range[0], rng_range[1] + 1))


def make_smear(seed: int, height: int = 256, width: int = 320, n_rbc: tuple[int, int] = (8, 20),
               n_wbc: tuple[int, int] = (1, 2), n_platelets: tuple[int, int] = (0, 4)) -> Smear:
    """A synthetic smear; the ``n_*`` ranges are inclusive (before occlusion drops)."""
    rng = np.random.default_rng(seed)
    cv = _Canvas(rng, height, width, 1.0)
    kinds: list[str] = []
    placed: list[tuple[float, float, float]] = []

    def place(r: float, margin: float, min_gap: float, tries: int = 30) -> tuple[float, float]:
        for _ in range(tries):
            x, y = rng.uniform(-margin, width + margin), rng.uniform(-margin, height + margin)
            if all(math.hypot(x - px, y - py) > min_gap * (r + pr) for px, py, pr in placed):
                break
        placed.append((x, y, r))
        return x, y

    for _ in range(_count(rng, n_rbc)):  # RBCs may overlap a little and leave the frame
        r = rng.uniform(*_RADIUS["rbc"])
        x, y = place(r, 0.4 * r, 0.75)
        kinds.append("rbc")
        cv.paint("rbc", x, y, r, len(kinds))
    rbcs = len(placed)
    for _ in range(_count(rng, n_wbc)):  # WBCs lie over RBCs but not over each other
        t = WBC_TYPES[int(rng.integers(len(WBC_TYPES)))]
        r = rng.uniform(*_RADIUS[t])
        for _ in range(30):
            x, y = rng.uniform(0.5 * r, width - 0.5 * r), rng.uniform(0.5 * r, height - 0.5 * r)
            if all(math.hypot(x - px, y - py) > px_r + r for px, py, px_r in placed[rbcs:]):
                break
        placed.append((x, y, r))
        kinds.append(t)
        cv.paint(t, x, y, r, len(kinds), semantic=True)
    for _ in range(_count(rng, n_platelets)):
        r = rng.uniform(*_RADIUS["platelet"])
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        kinds.append("platelet")
        cv.paint("platelet", x, y, r, len(kinds))
    image = cv.finish()

    masks, labels, types = [], [], []
    for inst, kind in enumerate(kinds, start=1):
        m = cv.ids == inst
        vis = int(m.sum())
        if vis < max(10, 0.3 * cv.drawn[inst - 1]):  # hidden or cut off: not annotated
            cv.sem[m] = 0
            continue
        masks.append(m)
        labels.append("RBC" if kind == "rbc" else "Platelets" if kind == "platelet" else "WBC")
        types.append(kind if kind in WBC_TYPES else None)
    mask_arr = np.stack(masks) if masks else np.zeros((0, height, width), bool)
    return Smear(image, mask_arr, masks_to_boxes(mask_arr), labels, types, cv.sem)


def masks_to_boxes(masks: np.ndarray) -> np.ndarray:
    """(N, H, W) bool -> (N, 4) float32 xyxy boxes, x2/y2 one past the last pixel."""
    boxes = np.zeros((len(masks), 4), np.float32)
    for i, m in enumerate(masks):
        ys, xs = np.nonzero(m.any(axis=1))[0], np.nonzero(m.any(axis=0))[0]
        boxes[i] = (xs[0], ys[0], xs[-1] + 1, ys[-1] + 1)
    return boxes


def make_cell_crop(cell_type: str, seed: int, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """One centred cell among a few RBCs, like a PBC image.

    Returns ``(image (size, size, 3) uint8, mask (size, size) uint8)`` where the mask
    marks the centred cell only: 0 background, 1 cytoplasm, 2 nucleus.
    """
    if cell_type not in CROP_TYPES:
        raise ValueError(f"Unknown cell type {cell_type!r}; choose one of {CROP_TYPES}.")
    rng = np.random.default_rng(seed)
    s = size / 64
    cv = _Canvas(rng, size, size, s)
    c = size / 2
    main_r = rng.uniform(*_RADIUS[cell_type]) * s
    for _ in range(int(rng.integers(1, 5))):  # neighbouring RBCs, partly hidden
        r, a = rng.uniform(*_RADIUS["rbc"]) * s, rng.uniform(0, 2 * math.pi)
        d = main_r + r * rng.uniform(0.3, 1.0)
        cv.paint("rbc", c + d * math.cos(a), c + d * math.sin(a), r, 0)
    cv.sem[:] = 0
    jitter = rng.normal(0, 1.5 * s, 2)
    if cell_type == "platelet":  # a small clump of platelets
        for i in range(int(rng.integers(2, 5))):
            off = rng.normal(0, 4 * s, 2) if i else jitter
            cv.paint("platelet", c + off[0], c + off[1], rng.uniform(4.0, 6.0) * s, 1,
                     semantic=True)
    else:
        cv.paint(cell_type, c + jitter[0], c + jitter[1], main_r, 1, semantic=True)
    return cv.finish(), cv.sem.copy()


# --------------------------------------------------------------------------- writers
def _sub_seed(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


def _save_png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _cached(out_dir: Path, params: dict) -> Optional[dict]:
    """The manifest written with the same parameters, if its files are all still there."""
    f = out_dir / "synthetic.json"
    if not f.is_file():
        return None
    try:
        man = json.loads(f.read_text())
    except (OSError, ValueError):
        return None
    if man.get("params") != params or not all((out_dir / p).is_file() for p in man["files"]):
        return None
    return man


def _write_manifest(out_dir: Path, params: dict, files: list[str], **extra: Any) -> None:
    (out_dir / "synthetic.json").write_text(json.dumps({"params": params, "files": files, **extra}))


def write_detection_set(out_dir: PathLike, n_images: int, seed: int, height: int = 256,
                        width: int = 320, split: str = "train", **smear_kwargs: Any) -> dict:
    """Write ``n_images`` smears as PNGs plus ``annotations.json``; returns the COCO dict.

    Annotations carry ``bbox``, ``area``, ``iscrowd=0`` and an RLE ``segmentation``;
    categories 1..3 follow ``SMEAR_CLASSES``; images carry an absolute ``path``.
    Calling again with the same parameters reuses the files on disk.
    """
    out = Path(out_dir).resolve()
    params = {"kind": "detection", "version": GENERATOR_VERSION, "n": n_images, "seed": seed,
              "height": height, "width": width, "split": split,
              "kwargs": {k: list(v) for k, v in sorted(smear_kwargs.items())}}
    if _cached(out, params) is not None:
        coco = json.loads((out / "annotations.json").read_text())
        for im in coco["images"]:
            im["path"] = str(out / "images" / im["file_name"])
        return coco
    coco = new_coco(SMEAR_CLASSES, dataset="synthetic", split=split)
    files = []
    for i in range(n_images):
        sm = make_smear(_sub_seed(seed, i), height, width, **smear_kwargs)
        name = f"smear_{i:05d}.png"
        _save_png(out / "images" / name, sm.image)
        files.append(f"images/{name}")
        coco["images"].append({"id": i + 1, "file_name": name, "width": width,
                               "height": height, "path": str(out / "images" / name)})
        for m, box, cat in zip(sm.masks, sm.boxes, sm.category_ids):
            rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            x1, y1, x2, y2 = (float(v) for v in box)
            coco["annotations"].append({
                "id": len(coco["annotations"]) + 1, "image_id": i + 1, "category_id": cat,
                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": float(m.sum()), "iscrowd": 0,
                "segmentation": rle})
    out.mkdir(parents=True, exist_ok=True)
    (out / "annotations.json").write_text(json.dumps(coco))
    _write_manifest(out, params, files + ["annotations.json"])
    return coco


def write_classification_set(out_dir: PathLike, n_per_class: int, seed: int, size: int = 64,
                             classes: Sequence[str] = CROP_TYPES) -> list[LabelledImage]:
    """Write ``out_dir/<class>/<class>_NNNNN.png`` crops (PBC layout); returns the records."""
    out = Path(out_dir).resolve()
    classes = list(classes)
    params = {"kind": "classification", "version": GENERATOR_VERSION, "n": n_per_class,
              "seed": seed, "size": size, "classes": classes}
    if (man := _cached(out, params)) is None:
        files = []
        for cls in classes:
            k = CROP_TYPES.index(cls) if cls in CROP_TYPES else -1
            if k < 0:
                raise ValueError(f"Unknown cell type {cls!r}; choose from {CROP_TYPES}.")
            for i in range(n_per_class):
                img, _ = make_cell_crop(cls, _sub_seed(seed, k, i), size)
                files.append(f"{cls}/{cls}_{i:05d}.png")
                _save_png(out / files[-1], img)
        _write_manifest(out, params, files)
    else:
        files = man["files"]
    return [LabelledImage(out / f, f.split("/")[0]) for f in files]


def write_segmentation_set(out_dir: PathLike, n_images: int, seed: int,
                           size: int = 120) -> list[MaskedImage]:
    """Write single-WBC images and Zheng-format masks (0 bg, 128 cytoplasm, 255 nucleus).

    Types cycle through ``WBC_TYPES``; each record's ``label`` is its WBC type and
    ``meta["mask_format"] == "zheng"``.
    """
    out = Path(out_dir).resolve()
    params = {"kind": "segmentation", "version": GENERATOR_VERSION, "n": n_images,
              "seed": seed, "size": size}
    names = [(f"{i:05d}.png", WBC_TYPES[i % len(WBC_TYPES)]) for i in range(n_images)]
    if _cached(out, params) is None:
        lut = np.array([0, 128, 255], np.uint8)
        for i, (name, t) in enumerate(names):
            img, sem = make_cell_crop(t, _sub_seed(seed, i), size)
            _save_png(out / "images" / name, img)
            _save_png(out / "masks" / name, lut[sem])
        _write_manifest(out, params, [f"{d}/{n}" for n, _ in names for d in ("images", "masks")])
    return [MaskedImage(out / "images" / n, out / "masks" / n, t, {"mask_format": "zheng"})
            for n, t in names]
