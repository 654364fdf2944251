"""Paper 5's data: the Zheng sets' 4-class masks, splits, datasets and loaders."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from ...data.masks import NUCLEUS, read_label_mask
from ...data.records import MaskedImage
from ...data.splits import stratified_split
from ...data.parsers.zheng import load_zheng
from ...data import synthetic
from ...errors import DatasetNotFoundError
from ...data.datasets import SegmentationDataset
from ...transforms.augment import AlbumentationsSegmentation, paper5_augmentation
from ..configs import SegmentationSettings
from .settings import EXCLUDED_TYPES, PAPER5_TYPES


# ----------------------------------------------------------------------------- data
def paper5_mask(rec: MaskedImage) -> np.ndarray:
    """Paper 5's 4-class mask of one record: 0 background (cytoplasm included), the
    nucleus pixels get the class of the image's WBC type (1 neutrophil, 2 lymphocyte,
    3 basophil). Raises ValueError for a type paper 5 leaves out."""
    if rec.label not in PAPER5_TYPES:
        raise ValueError(f"{rec.image_path}: WBC type {rec.label!r} is not one of paper 5's "
                         f"{sorted(PAPER5_TYPES)}; filter records with paper5_records first.")
    labels = read_label_mask(rec)
    return np.where(labels == NUCLEUS, PAPER5_TYPES[rec.label], 0).astype(np.uint8)


def filter_paper5(records: Sequence[MaskedImage]) -> tuple[list[MaskedImage], list[MaskedImage]]:
    """(records of paper 5's three types, records of the excluded types)."""
    keep = [r for r in records if r.label in PAPER5_TYPES]
    return keep, [r for r in records if r.label not in PAPER5_TYPES]


def paper5_records(which: str = "jiangxi", root: Any = None
                   ) -> tuple[list[MaskedImage], list[MaskedImage]]:
    """Zheng subset ``which`` ("jiangxi" / "cellavision") as ``(included, excluded)``:
    neutrophils, lymphocytes and basophils; and the monocytes and eosinophils that paper 5
    leaves out."""
    return filter_paper5(load_zheng(which, root))


def load_or_synthesize(which: str, out_dir: Any, seed: int = 0, *, synthetic_images: int = 40,
                       image_size: int = 120
                       ) -> tuple[list[MaskedImage], list[MaskedImage], str]:
    """``paper5_records(which)``, or when the Zheng data is missing ``synthetic_images``
    synthetic Zheng-format crops of ``image_size`` px in ``out_dir``
    (:func:`bloodlib.data.synthetic.write_segmentation_set`); returns
    ``(included, excluded, source)`` with source "zheng" or "synthetic"."""
    try:
        inc, exc = paper5_records(which)
        return inc, exc, "zheng"
    except DatasetNotFoundError:
        recs = synthetic.write_segmentation_set(Path(out_dir) / f"synthetic_{which}",
                                                int(synthetic_images), seed,
                                                size=int(image_size))
        inc, exc = filter_paper5(recs)
        return inc, exc, "synthetic"


@dataclass
class RecordSplit:
    """Two parts of a record list; ``kept_in_train`` = classes too small to stratify."""

    train: list[MaskedImage]
    test: list[MaskedImage]
    kept_in_train: dict[str, int] = field(default_factory=dict)

    def counts(self) -> pd.DataFrame:
        """Images per class (rows) and part (columns)."""
        return pd.DataFrame({"train": Counter(r.label for r in self.train),
                             "test": Counter(r.label for r in self.test)}).fillna(0).astype(int)


def split_records(records: Sequence[MaskedImage], seed: int = 0, test_fraction: float = 0.2,
                  min_count: int = 2) -> RecordSplit:
    """Deterministic split stratified by label (80:20 by default, as paper 5).

    Classes with fewer than ``min_count`` images (at least 2 are needed to stratify) go
    entirely into train and are listed in ``kept_in_train`` — e.g. Jiangxi's single
    basophil, so its test set holds no basophil.
    """
    records = list(records)
    counts = Counter(r.label for r in records)
    small = {c: n for c, n in counts.items() if n < max(min_count, 2)}
    big = [i for i, r in enumerate(records) if r.label not in small]
    parts = stratified_split([records[i].label for i in big],
                             {"train": 1 - test_fraction, "test": test_fraction}, seed=seed) \
        if big else {"train": [], "test": []}
    train = sorted([big[i] for i in parts["train"]]
                   + [i for i, r in enumerate(records) if r.label in small])
    return RecordSplit([records[i] for i in train], [records[big[i]] for i in parts["test"]],
                       dict(sorted(small.items())))


def train_val_test(records: Sequence[MaskedImage], settings: SegmentationSettings,
                   seed: int = 0) -> dict[str, list[MaskedImage]]:
    """The notebooks' split: :func:`split_records` 80:20 into train and test (paper 5),
    then ``settings.val_fraction`` of train for validation, both stratified by label."""
    outer = split_records(records, seed, 0.2, settings.min_count)
    inner = split_records(outer.train, seed, settings.val_fraction, settings.min_count)
    return {"train": inner.train, "val": inner.test, "test": outer.test}


def take_subset(records: Sequence[MaskedImage], n: Optional[int], seed: int = 0) -> list[MaskedImage]:
    """At most ``n`` records, drawn round-robin over the classes (each class shuffled with
    ``seed``) so that every class stays represented; the original order is kept."""
    records = list(records)
    if n is None or n >= len(records):
        return records
    rng = np.random.default_rng(seed)
    by_class = {c: list(rng.permutation([i for i, r in enumerate(records) if r.label == c]))
                for c in sorted({r.label for r in records})}
    chosen: list[int] = []
    while len(chosen) < n:
        for c in by_class:
            if by_class[c] and len(chosen) < n:
                chosen.append(int(by_class[c].pop(0)))
    return [records[i] for i in sorted(chosen)]


def class_counts(parts: Mapping[str, Sequence[MaskedImage]]) -> pd.DataFrame:
    """Images per WBC type (rows) for each named part (columns), with a total row."""
    df = pd.DataFrame({k: Counter(r.label for r in v) for k, v in parts.items()}).fillna(0)
    order = [c for c in (*PAPER5_TYPES, *EXCLUDED_TYPES) if c in df.index]
    df = df.loc[order].astype(int)
    df.loc["total"] = df.sum()
    return df


def make_dataset(records: Sequence[MaskedImage], settings: SegmentationSettings, train: bool = False,
                 seed: int = 0, decode: Optional[Callable[[MaskedImage], np.ndarray]] = None):
    """A :class:`SegmentationDataset` with paper 5's masks (or ``decode``'s), resized to
    ``image_size``; with ``train`` and ``settings.augment`` paper 5's augmentation, applied
    to a share ``augment_p`` of the images (default 1.0: every image, as Keras does), with
    the optional extras ``vertical_flip`` and ``color_jitter`` (off by default)."""
    tf = None
    if train and settings.augment:
        tf = AlbumentationsSegmentation(paper5_augmentation(
            p=float(settings.augment_p), shear=settings.shear, seed=seed,
            vertical_flip=bool(settings.vertical_flip),
            color_jitter=float(settings.color_jitter)))
    return SegmentationDataset(records, decode=decode or paper5_mask, transforms=tf,
                               size=int(settings.image_size))


def _loader(records: Sequence[MaskedImage], settings: SegmentationSettings, train: bool,
            seed: int, decode=None) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    return DataLoader(make_dataset(records, settings, train, seed, decode),
                      batch_size=int(settings.batch_size),
                      shuffle=train, generator=g, num_workers=int(settings.num_workers))
