"""A tour of the course's datasets: load every part, summarise it, draw samples.

Notebook 00 calls :func:`overview` and :func:`sample_figure` for each dataset. A
dataset that is not on disk yields an overview that says how to get it, and
:func:`synthetic_standin` gives a synthetic set of the same task to look at instead.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import pandas as pd

from ..errors import DatasetNotFoundError
from ..io import read_image
from . import parsers, synthetic
from .records import LabelledImage, MaskedImage, category_names
from .splits import hash_images
from .stats import coco_stats, duplicate_report, label_stats
from .datasets import decode_segmentation
from .. import viz
from .masks import read_label_mask

# dataset -> {part name: loader}; parts are the official splits where they exist.
_PARTS: dict[str, dict[str, Callable[[], Any]]] = {
    "bccd": {s: (lambda s=s: parsers.load_bccd(s)) for s in ("train", "val", "test")},
    "txl_pbc": {s: (lambda s=s: parsers.load_txl_pbc(s)) for s in ("train", "val")},
    "pbc": {"all": lambda: parsers.load_pbc()},
    "wbc_seg_zheng": {w: (lambda w=w: parsers.load_zheng(w)) for w in ("jiangxi", "cellavision")},
    "bccd_wbc_masks": {"all": lambda: parsers.load_bccd_wbc_masks(on_missing="ignore")},
    "segpc2021": {s: (lambda s=s: parsers.load_segpc(s, "cell")) for s in ("train", "valid")},
}
TOUR_DATASETS = tuple(_PARTS)
# the synthetic writer standing in for each dataset's task
_STANDIN_KIND = {"bccd": "detection", "txl_pbc": "detection", "segpc2021": "detection",
                 "pbc": "classification", "wbc_seg_zheng": "segmentation",
                 "bccd_wbc_masks": "segmentation"}


@dataclass
class DatasetOverview:
    """What notebook 00 shows about one dataset."""

    name: str
    available: bool
    parts: dict[str, Any] = field(default_factory=dict)
    summary: pd.DataFrame = field(default_factory=pd.DataFrame)
    class_counts: pd.DataFrame = field(default_factory=pd.DataFrame)
    duplicates: Optional[dict[str, Any]] = None
    hashes: dict[Path, str] = field(default_factory=dict, repr=False)
    synthetic: bool = False
    message: str = ""


def image_paths(part: Any) -> list[Path]:
    """Image paths of a part: a COCO dict or a list of records."""
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


def summarise(name: str, parts: Mapping[str, Any], hash_duplicates: bool = True,
              synthetic_set: bool = False) -> DatasetOverview:
    """Statistics and (optionally) the pixel-hash duplicate check of loaded parts."""
    rows, counts = zip(*(_part_row(p, part) for p, part in parts.items()))
    class_counts = pd.DataFrame(dict(zip(parts, counts))).fillna(0).astype(int)
    ov = DatasetOverview(name, True, dict(parts), pd.DataFrame(rows).set_index("part"),
                         class_counts, synthetic=synthetic_set)
    if hash_duplicates:
        paths = {p: image_paths(part) for p, part in parts.items()}
        ov.hashes = hash_images([p for ps in paths.values() for p in ps])
        ov.duplicates = duplicate_report(name, paths, ov.hashes)
    return ov


def overview(name: str, hash_duplicates: bool = True) -> DatasetOverview:
    """Load every part of ``name`` and summarise it; unavailable -> ``available=False``
    with the catalogue's instructions in ``message``."""
    if name not in _PARTS:
        raise ValueError(f"No tour for {name!r}; choose from {TOUR_DATASETS}.")
    try:
        parts = {p: load() for p, load in _PARTS[name].items()}
    except DatasetNotFoundError as exc:
        return DatasetOverview(name, False, message=str(exc))
    return summarise(name, parts, hash_duplicates)


def synthetic_standin(name: str, out_dir: Path, n: int = 8, seed: int = 0) -> DatasetOverview:
    """A small synthetic set of the same task as ``name``, summarised like the real one."""
    kind = _STANDIN_KIND[name]
    out = Path(out_dir) / f"synthetic_{kind}"
    if kind == "detection":
        part = synthetic.write_detection_set(out, n, seed)
    elif kind == "classification":
        part = synthetic.write_classification_set(out, max(1, n // 4), seed)
    else:
        part = synthetic.write_segmentation_set(out, n, seed)
    ov = summarise(f"{name} (synthetic stand-in)", {"synthetic": part}, hash_duplicates=False,
                   synthetic_set=True)
    ov.message = f"{name} is not on disk: showing synthetic {kind} data instead."
    return ov


def cross_dataset_overlap(overviews: Mapping[str, DatasetOverview]) -> pd.DataFrame:
    """Pixel-identical images shared by two datasets, per pair of parts (non-zero rows only)."""
    by_part = {(ov.name, part): {ov.hashes[p] for p in image_paths(images) if p in ov.hashes}
               for ov in overviews.values() if ov.hashes for part, images in ov.parts.items()}
    rows = [{"dataset A": a[0], "part A": a[1], "dataset B": b[0], "part B": b[1],
             "shared images": len(by_part[a] & by_part[b])}
            for a, b in itertools.combinations(by_part, 2) if a[0] != b[0]]
    df = pd.DataFrame(rows, columns=["dataset A", "part A", "dataset B", "part B", "shared images"])
    return df[df["shared images"] > 0].reset_index(drop=True)


def _coco_sample(coco: dict, image: dict) -> dict[str, Any]:
    """Arguments of :func:`bloodlib.viz.draw_detections` for one COCO image."""
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

    if not ov.parts:
        raise ValueError(f"{ov.name} has no data to draw: {ov.message}")
    part = next(iter(ov.parts.values()))
    items = part["images"] if isinstance(part, dict) else part
    picks = random.Random(seed).sample(list(items), min(n, len(items)))
    if isinstance(part, dict):
        fig = viz.detection_grid([_coco_sample(part, item) for item in picks[:6]])
    else:
        images, titles = [], []
        for item in picks:
            if isinstance(item, MaskedImage):
                mask = read_label_mask(item, allow_empty=True)
                images.append(viz.overlay_mask(read_image(item.image_path), mask))
                titles.append(item.label or Path(item.image_path).stem)
            else:
                assert isinstance(item, LabelledImage)
                images.append(read_image(item.path))
                titles.append(item.label)
        fig = viz.sample_grid(images, titles, ncols=4, size=2.6)
    fig.suptitle(ov.name + (" — synthetic" if ov.synthetic else ""), y=1.01)
    return fig
