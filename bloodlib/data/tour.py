"""A tour of the course's datasets: load every part, summarise it, draw samples.

Notebook 00 calls :func:`overview` and :func:`sample_figure` for each dataset;
a dataset that is not on disk yields an overview saying how to get it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import pandas as pd

from ..errors import DatasetNotFoundError
from ..io import read_image
from . import parsers
from .records import LabelledImage, MaskedImage, category_names
from .stats import coco_stats, duplicate_report, label_stats

# dataset -> {part name: loader}; parts are the official splits where they exist.
_PARTS: dict[str, dict[str, Callable[[], Any]]] = {
    "bccd": {s: (lambda s=s: parsers.load_bccd(s)) for s in ("train", "val", "test")},
    "txl_pbc": {s: (lambda s=s: parsers.load_txl_pbc(s)) for s in ("train", "val")},
    "pbc": {"all": lambda: parsers.load_pbc()},
    "wbc_seg_zheng": {w: (lambda w=w: parsers.load_zheng(w)) for w in ("jiangxi", "cellavision")},
    "bccd_wbc_masks": {"all": lambda: parsers.load_bccd_wbc_masks()},
    "segpc2021": {s: (lambda s=s: parsers.load_segpc(s, "cell")) for s in ("train", "valid")},
}
TOUR_DATASETS = tuple(_PARTS)


@dataclass
class DatasetOverview:
    """What notebook 00 shows about one dataset."""

    name: str
    available: bool
    parts: dict[str, Any] = field(default_factory=dict)
    summary: pd.DataFrame = field(default_factory=pd.DataFrame)
    class_counts: pd.DataFrame = field(default_factory=pd.DataFrame)
    duplicates: Optional[dict[str, Any]] = None
    message: str = ""


def _image_paths(part: Any) -> list[Path]:
    if isinstance(part, dict):
        return [Path(im["path"]) for im in part["images"]]
    return [Path(getattr(r, "image_path", None) or r.path) for r in part]


def _part_row(part_name: str, part: Any) -> tuple[dict, dict]:
    if isinstance(part, dict):
        st = coco_stats(part)
        row = {"part": part_name, "images": st["images"], "instances": st["instances"],
               "image sizes": ", ".join(list(st["image_sizes"])[:3])}
        return row, st["instances_per_class"]
    counts = label_stats(part)["count"].to_dict() if part else {}
    return {"part": part_name, "images": len(part), "instances": len(part), "image sizes": ""}, counts


def overview(name: str, hash_duplicates: bool = True, max_images: Optional[int] = None) -> DatasetOverview:
    """Load every part of ``name`` and summarise it (images, class counts, duplicates).

    ``max_images`` limits the duplicate check to a random, seeded sample per part
    (the overview then says so); counts always cover the whole dataset.
    """
    if name not in _PARTS:
        raise ValueError(f"No tour for {name!r}; choose from {TOUR_DATASETS}.")
    try:
        parts = {p: load() for p, load in _PARTS[name].items()}
    except DatasetNotFoundError as exc:
        return DatasetOverview(name, False, message=str(exc))
    rows, counts = zip(*(_part_row(p, part) for p, part in parts.items()))
    class_counts = pd.DataFrame(dict(zip(parts, counts))).fillna(0).astype(int)
    ov = DatasetOverview(name, True, parts, pd.DataFrame(rows).set_index("part"), class_counts)
    if hash_duplicates:
        rng = random.Random(0)
        paths = {p: _image_paths(part) for p, part in parts.items()}
        if max_images:
            paths = {p: sorted(rng.sample(v, min(len(v), max_images))) for p, v in paths.items()}
        ov.duplicates = duplicate_report(name, paths)
        if max_images:
            ov.message = f"duplicate check on a sample of at most {max_images} images per part"
    return ov


def _coco_sample(coco: dict, image: dict) -> dict[str, Any]:
    """Arguments of :func:`bloodlib.viz.draw_detections` for one COCO image."""
    from .datasets import decode_segmentation

    anns = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
    names = category_names(coco)
    masks = [decode_segmentation(a["segmentation"], image["height"], image["width"])
             for a in anns if a.get("segmentation")]
    return {"image": read_image(image["path"]),
            "boxes": [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)],
            "labels": [names[a["category_id"] - 1] for a in anns],
            "masks": masks if masks and len(masks) == len(anns) else None,
            "title": f"{Path(image['path']).name} ({len(anns)} cells)"}


def sample_figure(ov: DatasetOverview, n: int = 8, seed: int = 0):
    """A grid of annotated samples: boxes/masks for COCO parts, masks or labels otherwise."""
    from .. import viz
    from .masks import read_label_mask

    part = next(iter(ov.parts.values()))
    items = part["images"] if isinstance(part, dict) else part
    picks = random.Random(seed).sample(list(items), min(n, len(items)))
    if isinstance(part, dict):
        return viz.detection_grid([_coco_sample(part, item) for item in picks[: min(n, 6)]])
    images, titles = [], []
    for item in picks:
        if isinstance(item, MaskedImage):
            images.append(viz.overlay_mask(read_image(item.image_path), read_label_mask(item, allow_empty=True)))
            titles.append(f"{item.label or Path(item.image_path).name}")
        else:
            assert isinstance(item, LabelledImage)
            images.append(read_image(item.path))
            titles.append(item.label)
    return viz.sample_grid(images, titles, ncols=4, size=2.6)
