"""PBC, Peripheral Blood Cells (Acevedo et al., 2020): one centred cell per 360x363 JPEG.

Layout: ``pbc/PBC_dataset_normal_DIB/<class>/*.jpg`` (or the class folders directly
under ``root``). Any subset of the eight class folders works. Folder names are matched
case-insensitively; a folder that is not a PBC class raises UnknownClassError, an
empty class folder raises DatasetNotFoundError. The full set has 17,092 images; the
course's local subset has 600 per class (599 neutrophils).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Sequence

from ...errors import DatasetNotFoundError, UnknownClassError
from ..convert import IMAGE_EXTENSIONS
from ..records import LabelledImage
from ._common import _root

PBC_CLASSES = ("basophil", "eosinophil", "erythroblast", "ig",
               "lymphocyte", "monocyte", "neutrophil", "platelet")


def _class_dirs(base: Path) -> dict[str, Path]:
    dirs = {}
    for d in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
        name = d.name.lower()
        if name not in PBC_CLASSES:
            raise UnknownClassError(f"Folder {d} is not a PBC class; known classes: {list(PBC_CLASSES)}. "
                                    "Move it out of the dataset folder.")
        dirs[name] = d
    return dirs


def load_pbc(root: Path | str | None = None, classes: Sequence[str] | None = None,
             max_per_class: int | None = None, seed: int = 0) -> list[LabelledImage]:
    """PBC images as LabelledImage records, sorted by class then file name.

    ``classes`` restricts (and orders nothing: output follows PBC_CLASSES); ``max_per_class``
    keeps a ``random.Random(seed)`` sample of each class's sorted files.
    """
    root = _root("pbc", root)
    base = root / "PBC_dataset_normal_DIB"
    base = base if base.is_dir() else root
    dirs = _class_dirs(base)
    wanted = list(dirs) if classes is None else [c.lower() for c in classes]
    for c in wanted:
        if c not in PBC_CLASSES:
            raise UnknownClassError(f"Unknown PBC class {c!r}; known classes: {list(PBC_CLASSES)}.")
        if c not in dirs:
            raise DatasetNotFoundError(f"PBC class folder {base / c} not found.")
    if not wanted:
        raise DatasetNotFoundError(f"No PBC class folders in {base}.")
    records = []
    for c in (c for c in PBC_CLASSES if c in wanted):
        files = sorted(p for p in dirs[c].iterdir()
                       if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))
        if not files:
            raise DatasetNotFoundError(f"PBC class folder {dirs[c]} holds no images.")
        if max_per_class is not None and len(files) > max_per_class:
            files = sorted(random.Random(seed).sample(files, max_per_class))
        records += [LabelledImage(p.resolve(), c, {"dataset": "pbc"}) for p in files]
    return records
