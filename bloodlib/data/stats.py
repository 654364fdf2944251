"""Dataset statistics: sizes, class balance, box and mask statistics, duplicates."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

import numpy as np
import pandas as pd

from .masks import CLASS_NAMES, read_label_mask
from .records import LabelledImage, MaskedImage, category_names
from .splits import check_no_leakage, find_duplicates, hash_images

PathLike = Union[str, Path]


def coco_boxes(coco: dict) -> pd.DataFrame:
    """One row per annotation: image_id, category, x, y, w, h, area (box area)."""
    names = {c["id"]: c["name"] for c in coco["categories"]}
    rows = [(a["image_id"], names[a["category_id"]], *a["bbox"]) for a in coco["annotations"]]
    df = pd.DataFrame(rows, columns=["image_id", "category", "x", "y", "w", "h"])
    df["area"] = df["w"] * df["h"]
    return df


def coco_stats(coco: dict) -> dict[str, Any]:
    """Summary of a COCO dict: images, instances (per class, per image), image sizes,
    images per class, images without boxes and the box size distribution (pixels)."""
    boxes = coco_boxes(coco)
    per_image = boxes.groupby("image_id").size().reindex([im["id"] for im in coco["images"]], fill_value=0)
    order = category_names(coco)
    return {
        "dataset": coco.get("info", {}).get("dataset", ""),
        "split": coco.get("info", {}).get("split", ""),
        "images": len(coco["images"]),
        "instances": len(boxes),
        "instances_per_class": {c: int((boxes["category"] == c).sum()) for c in order},
        "images_per_class": {c: int(boxes.loc[boxes["category"] == c, "image_id"].nunique()) for c in order},
        "images_without_instances": int((per_image == 0).sum()),
        "instances_per_image": per_image.describe().round(2).to_dict(),
        "image_sizes": dict(Counter(f"{im['width']}x{im['height']}" for im in coco["images"]).most_common()),
        "box_size": boxes.groupby("category")[["w", "h"]].describe().round(1)
                         .reindex([c for c in order if c in set(boxes["category"])]),
    }


def label_stats(records: Sequence[LabelledImage | MaskedImage]) -> pd.DataFrame:
    """Images per class (count, fraction), most frequent first; ``imbalance`` is
    max count / this class's count. Records without a label count as "unlabelled"."""
    counts = pd.Series(Counter("unlabelled" if r.label is None else str(r.label) for r in records),
                       name="count", dtype=int)
    df = counts.sort_values(ascending=False).to_frame()
    df["fraction"] = (df["count"] / max(len(records), 1)).round(4)
    df["imbalance"] = (df["count"].max() / df["count"]).round(2)
    df.index.name = "class"
    return df


def mask_stats(records: Sequence[MaskedImage]) -> pd.DataFrame:
    """One row per mask: image name, label, height, width, fraction of each class, is_empty."""
    rows = []
    for r in records:
        labels = read_label_mask(r, allow_empty=True)
        frac = np.bincount(labels.ravel(), minlength=len(CLASS_NAMES))[: len(CLASS_NAMES)] / labels.size
        rows.append({"image": Path(r.image_path).name, "label": r.label, "height": labels.shape[0],
                     "width": labels.shape[1], **{f"frac_{n}": round(float(f), 4) for n, f in zip(CLASS_NAMES, frac)},
                     "is_empty": bool(frac[0] == 1.0)})
    return pd.DataFrame(rows)


def duplicate_report(name: str, paths: Sequence[PathLike] | Mapping[str, Sequence[PathLike]],
                     hashes: Mapping[Path, str] | None = None) -> dict[str, Any]:
    """Pixel-identical duplicates in a dataset; given ``{split: paths}`` it also lists
    groups that cross splits (leakage). Pass ``hashes`` to reuse :func:`hash_images`."""
    splits = dict(paths) if isinstance(paths, Mapping) else None
    flat = [p for ps in splits.values() for p in ps] if splits else list(paths)
    hashes = hashes if hashes is not None else hash_images(flat)
    groups = find_duplicates(flat, hashes)
    report: dict[str, Any] = {"dataset": name, "images": len(flat), "duplicate_groups": len(groups),
                              "images_in_groups": sum(map(len, groups)),
                              "groups": [[str(p) for p in g] for g in groups]}
    if splits:
        leaks = check_no_leakage(splits, hashes)
        report["cross_split_groups"] = len(leaks)
        report["cross_split"] = [{k: [str(p) for p in v] for k, v in g.items()} for g in leaks]
    return report
