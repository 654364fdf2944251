"""Cell images: PBC and the external sets, duplicate-aware splits per protocol,
augmentation, loaders."""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

import albumentations as A
import cv2
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, default_collate
from torchvision.transforms import v2

from ...data.parsers.pbc import load_pbc
from ...errors import DatasetIntegrityError, DatasetNotFoundError
from ...inference.classification import prepare_crop
from ...io import read_image
from ...data import synthetic
from ...data.parsers.zheng import load_zheng
from ...data.splits import check_no_leakage, per_class_split, stratified_split
from ...transforms.augment import cell_classification_augmentation
from ..configs import WbcClassificationConfig
from .settings import PROTOCOLS


# ----------------------------------------------------------------------------- images
@dataclass
class CellImages:
    """Preloaded single-cell images: ``images`` (N, S, S, 3) uint8 at the model size, their
    labels, source paths and pixel hashes of the *original* files (as
    :func:`bloodlib.data.splits.pixel_hash`)."""

    images: np.ndarray
    labels: list[str]
    paths: list[Path]
    hashes: list[str]
    source: str = "pbc"

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx: Iterable[int]) -> "CellImages":
        idx = list(idx)
        return CellImages(self.images[idx], [self.labels[i] for i in idx],
                          [self.paths[i] for i in idx], [self.hashes[i] for i in idx], self.source)

    def only(self, classes: Sequence[str]) -> "CellImages":
        """The images whose label is in ``classes``."""
        keep = set(classes)
        return self.subset(i for i, lab in enumerate(self.labels) if lab in keep)

    def targets(self, classes: Sequence[str]) -> np.ndarray:
        """Class indices of the labels in ``classes`` order."""
        index = {c: i for i, c in enumerate(classes)}
        return np.array([index[lab] for lab in self.labels], dtype=np.int64)

    def counts(self) -> Counter:
        return Counter(self.labels)


def preload(records: Sequence[Any], size: int, crop_fraction: float = 1.0,
            source: str = "pbc") -> CellImages:
    """Read every record (``LabelledImage``, or ``MaskedImage`` with a ``label``) once,
    hash its pixels and keep it resized by :func:`prepare_crop`."""
    images, labels, paths, hashes = [], [], [], []
    for r in records:
        path = Path(getattr(r, "path", None) or r.image_path)
        arr = read_image(path)
        hashes.append(hashlib.sha1(str(arr.shape).encode() + arr.tobytes()).hexdigest())
        images.append(prepare_crop(arr, size, crop_fraction))
        labels.append(str(r.label))
        paths.append(path)
    stack = np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8)
    return CellImages(stack, labels, paths, hashes, source)


def load_pbc_images(settings: WbcClassificationConfig, out_dir: Any, seed: int = 0) -> CellImages:
    """PBC (``max_per_class`` per class, all when None) preloaded; when PBC is absent,
    synthetic PBC-like crops (:func:`bloodlib.data.synthetic.write_classification_set`,
    ``source == "synthetic"``)."""
    try:
        records, source = load_pbc(max_per_class=settings.max_per_class, seed=seed), "pbc"
    except DatasetNotFoundError:
        records = synthetic.write_classification_set(
            Path(out_dir) / "synthetic_pbc", int(settings.synthetic_per_class), seed, size=64)
        source = "synthetic"
    return preload(records, int(settings.image_size), float(settings.crop_fraction), source)


def load_external(which: str, settings: WbcClassificationConfig) -> Optional[CellImages]:
    """A Zheng set (``"cellavision"`` / ``"jiangxi"``) with its per-image WBC labels, or
    None when it is not on disk."""
    try:
        records = load_zheng(which)
    except DatasetNotFoundError:
        return None
    return preload(records, int(settings.image_size), float(settings.crop_fraction),
                   f"zheng_{which}")


# ----------------------------------------------------------------------------- duplicates, splits
def duplicate_groups(data: CellImages) -> list[list[int]]:
    """Index groups (2 or more) of pixel-identical images."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, h in enumerate(data.hashes):
        groups[h].append(i)
    return [g for g in groups.values() if len(g) > 1]


def duplicate_table(data: CellImages) -> pd.DataFrame:
    """One row per duplicate group: files, labels and whether the labels conflict."""
    rows = [{"files": ", ".join(data.paths[i].name for i in g),
             "labels": ", ".join(sorted({data.labels[i] for i in g})),
             "conflicting": len({data.labels[i] for i in g}) > 1}
            for g in duplicate_groups(data)]
    return pd.DataFrame(rows, columns=["files", "labels", "conflicting"])


def drop_conflicting(data: CellImages) -> tuple[CellImages, int]:
    """``data`` without the duplicate groups whose members carry different labels, and the
    number of images dropped."""
    bad = {i for g in duplicate_groups(data) if len({data.labels[j] for j in g}) > 1 for i in g}
    return data.subset(i for i in range(len(data)) if i not in bad), len(bad)


def group_split(labels: Sequence[str], hashes: Sequence[str], seed: int = 0,
                fractions: Optional[Mapping[str, float]] = None,
                counts: Optional[Mapping[str, int]] = None) -> dict[str, list[int]]:
    """A stratified (``fractions``) or per-class (``counts``, scaled down when a class is
    short) split of *unique* images; every duplicate follows its group's first image."""
    first: dict[str, int] = {}
    reps = [i for i, h in enumerate(hashes) if first.setdefault(h, i) == i]
    rep_labels = [labels[i] for i in reps]
    if counts is not None:
        parts = per_class_split(rep_labels, counts, seed=seed, scale_down=True)
    else:
        parts = stratified_split(rep_labels, fractions, seed=seed)
    members: dict[str, list[int]] = defaultdict(list)
    for i, h in enumerate(hashes):
        members[h].append(i)
    return {name: sorted(j for r in idx for j in members[hashes[reps[r]]])
            for name, idx in parts.items()}


def check_split(parts: Mapping[str, CellImages]) -> None:
    """Raise DatasetIntegrityError if a pixel-identical image is in two parts."""
    hashes = {p: h for d in parts.values() for p, h in zip(d.paths, d.hashes)}
    leaks = check_no_leakage({k: d.paths for k, d in parts.items()}, hashes)
    if leaks:
        example = {k: [p.name for p in v] for k, v in leaks[0].items()}
        raise DatasetIntegrityError(f"{len(leaks)} duplicate group(s) cross parts, e.g. {example}.")


def protocol_split(data: CellImages, protocol: str, settings: WbcClassificationConfig,
                   seed: int = 0) -> dict[str, CellImages]:
    """``{"train", "val", "test"}`` parts of ``data`` (restricted to the protocol's classes)
    under a protocol of :data:`PROTOCOLS`, checked for leakage. ``val`` is carved out of
    train (``val_fraction``) when the protocol has none."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"Unknown protocol {protocol!r}; choose one of {list(PROTOCOLS)}.")
    spec = PROTOCOLS[protocol]
    data = data.only(spec["classes"])
    idx = group_split(data.labels, data.hashes, seed, spec.get("fractions"), spec.get("counts"))
    parts = {k: data.subset(v) for k, v in idx.items()}
    vf = float(settings.val_fraction or 0)
    if "val" not in parts and vf > 0:
        tr = parts["train"]
        inner = group_split(tr.labels, tr.hashes, seed, {"train": 1 - vf, "val": vf})
        parts = {"train": tr.subset(inner["train"]), "val": tr.subset(inner["val"]),
                 "test": parts["test"]}
    check_split(parts)
    return parts


def split_counts(parts: Mapping[str, CellImages], classes: Sequence[str]) -> pd.DataFrame:
    """Images per class (rows) and part (columns), with a total row."""
    df = pd.DataFrame({k: pd.Series(d.counts()) for k, d in parts.items()}).reindex(
        list(classes)).fillna(0).astype(int)
    df.loc["total"] = df.sum()
    return df


# ----------------------------------------------------------------------------- torch data
def augmentation(settings: WbcClassificationConfig, seed: Optional[int] = None):
    """Flips, 90-degree rotations, colour jitter, and (``scale_jitter`` > 0) a small random
    scale and shift with reflected borders."""
    steps: list[Any] = [cell_classification_augmentation(float(settings.color_jitter))]
    s = float(settings.scale_jitter or 0)
    if s > 0:
        steps.append(A.Affine(scale=(1 - s, 1 + s), translate_percent=(-s / 2, s / 2),
                              border_mode=cv2.BORDER_REFLECT_101, p=0.5))
    aug = A.Compose(steps)
    if seed is not None:
        aug.set_random_seed(seed)
    return aug


class ArrayDataset(Dataset):
    """Preloaded uint8 images -> ``(float tensor (3, S, S) in [0, 1], class index)``."""

    def __init__(self, images: np.ndarray, targets: np.ndarray, transform: Any = None) -> None:
        self.images, self.targets, self.transform = images, np.asarray(targets), transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = self.images[i]
        if self.transform is not None:
            img = self.transform(image=img)["image"]
        x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float().div_(255.0)
        return x, int(self.targets[i])


MIXES = ("mixup", "cutmix")


class BatchMix:
    """A collate function that mixes each training batch with torchvision's
    ``v2.MixUp`` or ``v2.CutMix`` (mixing weight ~ Beta(``alpha``, ``alpha``)); the
    targets become class probabilities, which ``nn.CrossEntropyLoss`` accepts."""

    def __init__(self, kind: str, num_classes: int, alpha: float = 0.2) -> None:
        if kind not in MIXES:
            raise ValueError(f"mix {kind!r} unknown; use one of {MIXES} or None.")
        self.mix = (v2.MixUp if kind == "mixup" else v2.CutMix)(alpha=float(alpha),
                                                                 num_classes=int(num_classes))

    def __call__(self, batch: Sequence[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mix(*default_collate(batch))


def make_loader(data: CellImages, classes: Sequence[str], settings: WbcClassificationConfig,
                train: bool, seed: int = 0) -> DataLoader:
    """A DataLoader; training ones shuffle, augment, drop the last partial batch and,
    with ``settings.mix`` ("mixup" or "cutmix"), mix each batch (:class:`BatchMix`)."""
    tf = augmentation(settings, seed) if train else None
    g = torch.Generator().manual_seed(seed)
    bs = int(settings.batch_size)
    mix = settings.mix if train else None
    return DataLoader(ArrayDataset(data.images, data.targets(classes), tf),
                      batch_size=bs if train else max(bs, 128), shuffle=train, generator=g,
                      drop_last=train and len(data) > bs,
                      collate_fn=BatchMix(mix, len(classes), settings.mix_alpha)
                      if mix else None,
                      num_workers=int(settings.num_workers))
