"""WBC Image Dataset (Zheng et al., Micron 2018): WBC crops with 3-class masks.

Layout: ``wbc_seg_zheng/Dataset 1/NNN.bmp + NNN.png`` ("Jiangxi", 300 images, 120x120 or
smaller: 76 are 88-120 px) with ``Class Labels of Dataset 1.csv`` (``image ID,class label``),
and ``Dataset 2`` ("CellaVision", 100 images 300x300) with ``Class Labels of Dataset 2.csv``
(``image ID,class``). Labels 1 neutrophil, 2 lymphocyte, 3 monocyte, 4 eosinophil,
5 basophil. Masks: 0 background, 128 cytoplasm, 255 nucleus (decoder ``"zheng"``).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ...errors import AnnotationError, DatasetNotFoundError, UnknownClassError
from ..records import MaskedImage
from ._common import _root

ZHENG_LABELS = {1: "neutrophil", 2: "lymphocyte", 3: "monocyte", 4: "eosinophil", 5: "basophil"}
ZHENG_SUBSETS = {"jiangxi": 1, "cellavision": 2}


def _read_labels(csv: Path) -> dict[int, str]:
    if not csv.is_file():
        raise DatasetNotFoundError(f"Class label file {csv} not found.")
    df = pd.read_csv(csv)
    if df.shape[1] < 2 or "id" not in str(df.columns[0]).lower():
        raise AnnotationError(f"{csv}: expected columns 'image ID,<class>', got {list(df.columns)}.")
    labels = {}
    for img_id, code in zip(df.iloc[:, 0], df.iloc[:, 1]):
        if int(code) not in ZHENG_LABELS:
            raise UnknownClassError(f"{csv}: image {img_id} has class code {code}; known: {ZHENG_LABELS}.")
        if int(img_id) in labels:
            raise AnnotationError(f"{csv}: image ID {img_id} is listed twice.")
        labels[int(img_id)] = ZHENG_LABELS[int(code)]
    return labels


def load_zheng(which: str = "jiangxi", root: Path | str | None = None) -> list[MaskedImage]:
    """One subset (``"jiangxi"`` = Dataset 1, ``"cellavision"`` = Dataset 2), sorted by id.

    An image without a mask, an image without a CSV label, or a label without an image
    raises AnnotationError.
    """
    if which not in ZHENG_SUBSETS:
        raise ValueError(f"which must be one of {list(ZHENG_SUBSETS)}, got {which!r}.")
    root, n = _root("wbc_seg_zheng", root), ZHENG_SUBSETS[which]
    folder = root / f"Dataset {n}"
    if not folder.is_dir():
        raise DatasetNotFoundError(f"Zheng folder {folder} not found.")
    labels = _read_labels(root / f"Class Labels of Dataset {n}.csv")
    images = {int(p.stem): p for p in folder.glob("*.bmp") if p.stem.isdigit()}
    if not images:
        raise DatasetNotFoundError(f"No NNN.bmp images in {folder}.")
    if missing := sorted(set(images) - set(labels)):
        raise AnnotationError(f"Images without a class label in the CSV: {missing[:10]} ({len(missing)}).")
    if missing := sorted(set(labels) - set(images)):
        raise AnnotationError(f"CSV labels without an image in {folder}: {missing[:10]} ({len(missing)}).")
    records = []
    for i in sorted(images):
        mask = images[i].with_suffix(".png")
        if not mask.is_file():
            raise AnnotationError(f"Image {images[i]} has no mask {mask.name}.")
        records.append(MaskedImage(images[i].resolve(), mask.resolve(), labels[i],
                                   {"mask_format": "zheng", "dataset": "wbc_seg_zheng",
                                    "subset": which, "id": i}))
    return records
