"""Paper 1's data: BCCD / TXL-PBC / PBC splits, automatic masks, preprocessing, loaders."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from PIL import Image
from torch.utils.data import DataLoader

from ...data.splits import per_class_split, stratified_split, subset_coco
from ...data.synthetic import write_classification_set, write_detection_set
from ...errors import DatasetNotFoundError
from ...autolabel import autolabel_boxes, autolabel_pbc
from ...inference.common import build_preprocess
from ...io import read_image
from ...data.parsers.bccd import load_bccd
from ...data.parsers.pbc import load_pbc, PBC_CLASSES
from ...data.parsers.txl_pbc import load_txl_pbc
from ...data.records import category_names
from ...data.datasets import collate_detection, DetectionDataset
from ...engine.detection import detection_transforms
from ..configs import McnetConfig, part_caps
from .recipe import DetectorRecipe


def split_coco(coco: dict, fraction: float, seed: int = 0) -> tuple[dict, dict]:
    """``(rest, part)``: a seeded ``fraction`` of the images (at least one) and the rest."""
    n = len(coco["images"])
    k = max(1, int(round(n * fraction)))
    part = subset_coco(coco, k, seed)
    ids = {im["id"] for im in part["images"]}
    rest = {**coco, "images": [im for im in coco["images"] if im["id"] not in ids],
            "annotations": [a for a in coco["annotations"] if a["image_id"] not in ids]}
    return rest, part


def _synthetic_splits(settings: McnetConfig, work_dir: Path, seed: int) -> dict[str, dict]:
    n = int(settings.synthetic_images)
    sizes = {"train": n, "val": max(2, n // 4), "test": max(4, n // 3)}
    return {s: write_detection_set(work_dir / "synthetic_smears" / s, k, seed + i, split=s)
            for i, (s, k) in enumerate(sizes.items())}


def load_splits(dataset: str, settings: McnetConfig, work_dir: Any, seed: int = 0
                ) -> tuple[dict[str, dict], str]:
    """``({"train", "val", "test"}: COCO dict), source)`` for ``dataset`` ("bccd",
    "txl_pbc"), subset to the profile's ``max_*_images``; synthetic smears (source
    "synthetic") when the dataset is not on disk."""
    work_dir = Path(work_dir)
    try:
        if dataset == "bccd":
            splits = {s: load_bccd(s) for s in ("train", "val", "test")}
        elif dataset == "txl_pbc":
            train, val = split_coco(load_txl_pbc("train"), float(settings.txl_val_fraction), seed)
            splits = {"train": train, "val": val, "test": load_txl_pbc("val")}
        else:
            raise ValueError(f"Unknown detection dataset {dataset!r}; use 'bccd' or 'txl_pbc'.")
        source = dataset
    except DatasetNotFoundError as exc:
        warnings.warn(f"{dataset}: {exc} Using synthetic smears instead.", stacklevel=2)
        splits, source = _synthetic_splits(settings, work_dir, seed), "synthetic"
    out = {}
    for i, (s, n) in enumerate(part_caps(settings).items()):
        out[s] = subset_coco(splits[s], None if n is None else int(n), seed + i)
    return out, source


def add_masks(coco: dict) -> dict:
    """``coco`` with an instance mask per box: kept when every annotation already has one
    (synthetic smears), else made by :func:`bloodlib.autolabel.autolabel_boxes`."""
    if coco["annotations"] and all(a.get("segmentation") for a in coco["annotations"]):
        return coco
    return autolabel_boxes(copy.deepcopy(coco))


def preprocess_images(splits: Mapping[str, dict], preprocessing: Optional[Mapping[str, Any]],
                      out_dir: Any) -> dict[str, dict]:
    """The splits with every image passed once through CLAHE / stain normalisation
    (``{"clahe": bool, "stain": name|None}``) and written as PNG under ``out_dir``; the
    same splits when both are off. Files already written are reused."""
    pre = dict(preprocessing or {})
    if not pre.get("clahe") and not pre.get("stain"):
        return dict(splits)
    fn = build_preprocess(bool(pre.get("clahe")), pre.get("stain"))
    tag = "_".join(filter(None, ["clahe" if pre.get("clahe") else "", pre.get("stain") or ""]))
    out: dict[str, dict] = {}
    for split, coco in splits.items():
        folder = Path(out_dir) / tag / split
        folder.mkdir(parents=True, exist_ok=True)
        new = copy.deepcopy(coco)
        for im in new["images"]:
            dst = folder / (Path(im["path"]).stem + ".png")
            if not dst.is_file():
                Image.fromarray(fn(read_image(im["path"]))).save(dst)
            im["path"], im["file_name"] = str(dst), dst.name
        out[split] = new
    return out


def load_pbc_splits(per_class: Optional[Mapping[str, int]], work_dir: Any, seed: int = 0
                    ) -> tuple[dict[str, dict], str]:
    """Paper 1's PBC experiment: per-class splits (``per_class``, e.g. the profile's
    ``pbc.per_class`` or ``{"train": 300, "val": 100, "test": 100}``; None = 80/20 of
    every image) auto-annotated by :func:`bloodlib.autolabel.autolabel_pbc`. Synthetic
    single-cell crops in ``work_dir`` when PBC is not on disk."""
    try:
        need = None if per_class is None else sum(int(v) for v in per_class.values())
        records, source = load_pbc(classes=PBC_CLASSES, max_per_class=need, seed=seed), "pbc"
    except DatasetNotFoundError as exc:
        warnings.warn(f"PBC: {exc} Using synthetic cell crops instead.", stacklevel=2)
        n = max(2, sum(int(v) for v in (per_class or {"train": 8, "test": 2}).values()))
        records = write_classification_set(Path(work_dir) / "synthetic_pbc", n, seed, size=96)
        source = "synthetic"
    labels = [r.label for r in records]
    parts = per_class_split(labels, per_class, seed=seed, scale_down=True) if per_class \
        else stratified_split(labels, {"train": 0.8, "test": 0.2}, seed=seed)
    classes = sorted(set(labels), key=list(PBC_CLASSES).index) \
        if set(labels) <= set(PBC_CLASSES) else sorted(set(labels))
    out = {}
    for split, idx in parts.items():
        coco = autolabel_pbc([records[i] for i in idx], classes)
        coco.setdefault("info", {}).update(dataset="pbc" if source == "pbc" else "synthetic",
                                           split=split)
        out[split] = coco
    return out, source


def class_names(coco: dict) -> list[str]:
    return category_names(coco)


def make_loader(coco: dict, recipe: DetectorRecipe, train: bool, with_masks: bool,
                seed: int = 0, batch_size: Optional[int] = None) -> DataLoader:
    """A DataLoader of :class:`DetectionDataset` (flips when ``train``)."""
    tf = detection_transforms(train, float(recipe.hflip),
                              float(recipe.vflip)) if train else None
    ds = DetectionDataset(coco, tf, with_masks=with_masks)
    g = torch.Generator().manual_seed(seed)
    return DataLoader(ds, batch_size=int(batch_size or recipe.batch_size), shuffle=train,
                      generator=g, collate_fn=collate_detection,
                      num_workers=int(recipe.num_workers))
