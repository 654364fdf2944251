"""Paper 3's data: SegPC-2021 (or synthetic cells), letterboxing, the torch datasets,
evaluation sets."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

from ...data.splits import subset_coco
from ...data.synthetic import write_detection_set
from ...data.parsers import load_segpc
from ...errors import DatasetNotFoundError
from ...data.parsers.segpc import letterbox_transform
from ...data.convert import mask_to_rle
from ...data.records import new_coco
from ...data.datasets import DetectionDataset
from ..configs import BloodCancerConfig
from .settings import CELL


def synthetic_cells(out_dir: Any, n_images: int, seed: int, split: str,
                    size: int = 256) -> dict:
    """Synthetic smears (:mod:`bloodlib.data.synthetic`) with their WBCs as the "cell"
    class — the fallback when SegPC-2021 is not on disk."""
    coco = write_detection_set(Path(out_dir) / f"synthetic_cells_{split}", n_images, seed,
                               height=size, width=size, split=split, n_wbc=(2, 4))
    wbc = next(c["id"] for c in coco["categories"] if c["name"].lower() == "wbc")
    anns = [dict(a, category_id=1) for a in coco["annotations"] if a["category_id"] == wbc]
    return {**coco, "categories": [{"id": 1, "name": CELL}], "annotations": anns}


def load_data(settings: BloodCancerConfig, out_dir: Any, seed: int = 0) -> dict[str, Any]:
    """``{"train", "val": COCO dicts, "source": "segpc2021" | "synthetic"}``: SegPC-2021
    train and validation cells (subsets per the profile), or synthetic smears."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SegPC valid lacks one annotated image (610)
            train, val = load_segpc("train", CELL), load_segpc("valid", CELL)
        source = "segpc2021"
    except DatasetNotFoundError:
        n = int(settings.synthetic_images)
        train = synthetic_cells(out_dir, n, seed, "train")
        val = synthetic_cells(out_dir, max(4, n // 2), seed + 1, "val")
        source = "synthetic"
    return {"train": subset_coco(train, settings.max_train_images, seed),
            "val": subset_coco(val, settings.max_val_images, seed), "source": source}


def letterbox_valid(image_entry: Mapping[str, Any], height: int, width: int) -> np.ndarray:
    """Bool (height, width) mask of the picture inside a letterboxed SegPC image (the
    padding bands are False); all True for images without ``orig_width``."""
    valid = np.ones((height, width), bool)
    if "orig_width" not in image_entry:
        return valid
    s, dx, dy = letterbox_transform(image_entry["orig_width"], image_entry["orig_height"],
                                    width, height)
    y0, y1 = int(round(dy)), int(round(dy + image_entry["orig_height"] * s))
    x0, x1 = int(round(dx)), int(round(dx + image_entry["orig_width"] * s))
    valid[:, :] = False
    valid[y0:y1, x0:x1] = True
    return valid


def _plain(t: Any) -> Any:
    return t.as_subclass(torch.Tensor) if isinstance(t, torch.Tensor) else t


class CellDataset(Dataset):
    """SegPC-style COCO -> ``(image float (3, S, S), target)`` for Mask R-CNN at ``size``;
    random horizontal/vertical flips when ``train``. Targets hold plain tensors."""

    def __init__(self, coco: dict, size: int, train: bool = False) -> None:
        steps = [v2.Resize((size, size), antialias=True)]
        if train:
            steps += [v2.RandomHorizontalFlip(), v2.RandomVerticalFlip()]
        self.coco, self.size = coco, int(size)
        self.inner = DetectionDataset(coco, transforms=v2.Compose(steps), with_masks=True)

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, Any]]:
        image, target = self.inner[i]
        return _plain(image), {k: _plain(v) for k, v in target.items()}


def collate(batch: Sequence[Any]) -> tuple[list, list]:
    images, targets = zip(*batch)
    return list(images), list(targets)


@dataclass
class EvalSet:
    """Validation images at the model's size: images (float CHW), ground-truth instance
    masks (N, S, S) bool, valid regions, and the COCO dict of that frame."""

    images: list[torch.Tensor]
    masks: list[np.ndarray]
    valid: list[np.ndarray]
    coco: dict
    image_ids: list[int]


def make_eval_set(coco: dict, size: int) -> EvalSet:
    """Resize the validation images and their masks to ``size`` and build the matching
    COCO ground truth (RLE masks) for pycocotools."""
    ds = CellDataset(coco, size, train=False)
    gt = new_coco([CELL], dataset=coco["info"].get("dataset", ""), split="eval")
    images, masks, valid, ids = [], [], [], []
    for i, entry in enumerate(coco["images"]):
        image, target = ds[i]
        m = target["masks"].numpy().astype(bool)
        images.append(image)
        masks.append(m)
        valid.append(letterbox_valid(entry, size, size))
        ids.append(entry["id"])
        gt["images"].append({"id": entry["id"], "file_name": entry["file_name"], "width": size,
                             "height": size})
        for k, inst in enumerate(m):
            if not inst.any():
                continue
            ys, xs = np.nonzero(inst)
            gt["annotations"].append({
                "id": len(gt["annotations"]) + 1, "image_id": entry["id"], "category_id": 1,
                "bbox": [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1),
                         float(ys.max() - ys.min() + 1)],
                "area": float(inst.sum()), "segmentation": mask_to_rle(inst), "iscrowd": 0})
    return EvalSet(images, masks, valid, gt, ids)


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """Float (3, H, W) in [0, 1] -> RGB uint8 (H, W, 3)."""
    return (image.permute(1, 2, 0).numpy() * 255).round().clip(0, 255).astype(np.uint8)
