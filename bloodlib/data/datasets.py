"""Torch Datasets over the common records, for torchvision.transforms.v2 pipelines.

Images are read with :func:`bloodlib.io.read_image` and returned as float32 tensors in
[0, 1], shape (C, H, W). Any v2 transform (or callable with the same signature) can be
passed; boxes and masks are wrapped as ``tv_tensors`` so geometric transforms move them
together with the image.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from ..errors import AnnotationError, MaskError, UnknownClassError
from ..io import read_image
from .convert import segmentation_to_mask
from .records import LabelledImage, MaskedImage

Size = Union[int, tuple[int, int]]
Transform = Callable[..., Any]


def to_image_tensor(arr: np.ndarray) -> tv_tensors.Image:
    """RGB uint8 (H, W, 3) -> ``tv_tensors.Image`` float32 (3, H, W) in [0, 1]."""
    chw = np.ascontiguousarray(arr.transpose(2, 0, 1), dtype=np.float32)  # a writable copy
    return tv_tensors.Image(torch.from_numpy(chw).div_(255.0))


def _hw(size: Size) -> list[int]:
    """``size`` as [height, width]; an int means a square."""
    return [size, size] if isinstance(size, int) else [int(size[0]), int(size[1])]


def decode_segmentation(seg: Any, height: int, width: int, where: str = "segmentation") -> np.ndarray:
    """A COCO ``segmentation`` (polygons, RLE or uncompressed RLE) -> (H, W) uint8 0/1;
    malformed or far-out-of-image coordinates raise :class:`AnnotationError`."""
    with warnings.catch_warnings():  # pycocotools vs NumPy 2 "copy keyword" notice
        warnings.simplefilter("ignore", DeprecationWarning)
        return segmentation_to_mask(seg, height, width, where)


class DetectionDataset(Dataset):
    """COCO dict -> ``(image, target)`` for torchvision detection models.

    ``target`` holds ``boxes`` (``BoundingBoxes``, XYXY), ``labels`` (int64 category
    ids 1..K), ``image_id`` (int), ``area`` and ``iscrowd`` (from the annotations), and
    ``masks`` (``tv_tensors.Mask`` uint8 (N, H, W)) when ``with_masks``. Boxes that a
    transform shrinks below one pixel are dropped together with their other fields.
    """

    def __init__(self, coco: dict, transforms: Optional[Transform] = None,
                 with_masks: bool = False) -> None:
        self.images = list(coco["images"])
        self.transforms, self.with_masks = transforms, with_masks
        self.anns: dict[int, list[dict]] = defaultdict(list)
        for ann in coco.get("annotations", []):
            self.anns[ann["image_id"]].append(ann)
        bad = [a for anns in self.anns.values() for a in anns
               if len(a["bbox"]) != 4 or a["bbox"][2] <= 0 or a["bbox"][3] <= 0]
        if bad:
            raise AnnotationError(
                f"{len(bad)} annotation(s) have empty or malformed boxes, e.g. id {bad[0].get('id')} "
                f"bbox {bad[0]['bbox']}; fix or drop them (see bloodlib.data.convert) first.")
        if with_masks:
            missing = [a.get("id") for anns in self.anns.values() for a in anns
                       if not a.get("segmentation")]
            if missing:
                raise AnnotationError(f"with_masks=True but {len(missing)} annotation(s) have no "
                                      f"segmentation (e.g. id {missing[0]}); use with_masks=False.")

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, idx: int) -> tuple[tv_tensors.Image, dict[str, Any]]:
        info = self.images[idx]
        arr = read_image(info["path"])
        h, w = arr.shape[:2]
        anns = self.anns.get(info["id"], [])
        xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        xywh[:, 2:] += xywh[:, :2]
        target: dict[str, Any] = {
            "boxes": tv_tensors.BoundingBoxes(xywh, format="XYXY", canvas_size=(h, w)),
            "labels": torch.tensor([a["category_id"] for a in anns], dtype=torch.int64),
            "image_id": int(info["id"]),
            "area": torch.tensor([float(a.get("area", a["bbox"][2] * a["bbox"][3]))
                                  for a in anns], dtype=torch.float32),
            "iscrowd": torch.tensor([int(a.get("iscrowd", 0)) for a in anns], dtype=torch.int64),
        }
        if self.with_masks:
            masks = np.zeros((len(anns), h, w), np.uint8)
            for i, a in enumerate(anns):
                masks[i] = decode_segmentation(a["segmentation"], h, w)
            target["masks"] = tv_tensors.Mask(torch.from_numpy(masks))
        image = to_image_tensor(arr)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
            b = target["boxes"]
            keep = ((b[:, 2] - b[:, 0]) >= 1) & ((b[:, 3] - b[:, 1]) >= 1)
            if not bool(keep.all()):
                for k in ("boxes", "labels", "area", "iscrowd", "masks"):
                    if k in target:
                        v = target[k]
                        target[k] = (tv_tensors.wrap(v[keep], like=v)
                                     if isinstance(v, tv_tensors.TVTensor) else v[keep])
        return image, target


def collate_detection(batch: Sequence[tuple[Any, Any]]) -> tuple[list, list]:
    """Batch of ``(image, target)`` -> ``(list of images, list of targets)``."""
    images, targets = zip(*batch) if batch else ((), ())
    return list(images), list(targets)


def _finish(image: torch.Tensor, size: Optional[Size]) -> torch.Tensor:
    if size is not None:
        image = F.resize(image, _hw(size), interpolation=InterpolationMode.BILINEAR, antialias=True)
    return image.as_subclass(torch.Tensor)


class SegmentationDataset(Dataset):
    """:class:`MaskedImage` records -> ``(image float (3, H, W), mask int64 (H, W))``.

    ``decode(record)`` returns class indices (0 background, 1 cytoplasm, 2 nucleus);
    the default is :func:`bloodlib.data.masks.read_label_mask`. ``size`` (int = square,
    or (H, W)) resizes after ``transforms``: image bilinear, mask nearest.
    """

    def __init__(self, records: Sequence[MaskedImage],
                 decode: Optional[Callable[[MaskedImage], np.ndarray]] = None,
                 transforms: Optional[Transform] = None, size: Optional[Size] = None) -> None:
        if decode is None:
            from .masks import read_label_mask  # imported lazily: optional at import time
            decode = read_label_mask
        self.records, self.decode = list(records), decode
        self.transforms, self.size = transforms, size

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        rec = self.records[idx]
        arr = read_image(rec.image_path)
        m = np.asarray(self.decode(rec))
        if m.shape != arr.shape[:2]:
            raise MaskError(f"Mask of {rec.mask_path} has shape {m.shape} but its image "
                            f"{rec.image_path} is {arr.shape[:2]}; masks must be pixel-aligned.")
        image = to_image_tensor(arr)
        mask = tv_tensors.Mask(torch.from_numpy(m.astype(np.int64)))
        if self.transforms is not None:
            image, mask = self.transforms(image, mask)
        if self.size is not None:
            mask = F.resize(mask, _hw(self.size), interpolation=InterpolationMode.NEAREST)
        return _finish(image, self.size), mask.as_subclass(torch.Tensor).long()


class ClassificationDataset(Dataset):
    """:class:`LabelledImage` records -> ``(image float (3, H, W), class index)``.

    Class indices follow ``classes``; a record whose label is not among them raises
    :class:`UnknownClassError` here, at construction. ``size`` resizes after ``transforms``.
    """

    def __init__(self, records: Sequence[LabelledImage], classes: Sequence[str],
                 transforms: Optional[Transform] = None, size: Optional[Size] = None) -> None:
        self.records, self.classes = list(records), list(classes)
        index = {c: i for i, c in enumerate(self.classes)}
        unknown = sorted({r.label for r in self.records} - index.keys())
        if unknown:
            raise UnknownClassError(f"Unknown class label(s) {unknown}; known classes are "
                                    f"{self.classes}. Fix the labels or pass the full class list.")
        self.targets = [index[r.label] for r in self.records]  # e.g. for weighted sampling
        self.transforms, self.size = transforms, size

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, int]:
        image = to_image_tensor(read_image(self.records[idx].path))
        if self.transforms is not None:
            image = self.transforms(image)
        return _finish(image, self.size), self.targets[idx]
