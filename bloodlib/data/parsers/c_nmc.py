"""C-NMC 2019 (ISBI 2019 challenge, SBILab; TCIA): segmented single cells, ALL blasts vs
normal ("hem") B-lymphoid cells, about 15,000 BMP images from 118 subjects.

Layouts read here (both seen in the wild; folders found at any depth below ``c_nmc_2019/``):

* training data: ``.../fold_0/{all,hem}/*.bmp``, ``fold_1``, ``fold_2`` (TCIA:
  ``C-NMC_training_data/fold_k``; Kaggle: ``training_data/fold_k``). File names carry
  the subject: ``UID_11_10_1_all.bmp`` (subject 11), ``UID_H10_43_1_hem.bmp`` (H10).
* preliminary test set: images ``.../C-NMC_test_prelim_phase_data/*.bmp`` named
  ``1.bmp, 2.bmp ...`` with ``C-NMC_test_prelim_phase_data_labels.csv`` (columns
  ``Patient_ID`` — the original file name —, ``new_names``, ``labels``: 1 = ALL, 0 = hem).

The final-phase test images come without labels and are not loaded.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Optional, Sequence

from ...errors import AnnotationError, DatasetNotFoundError
from ..convert import IMAGE_EXTENSIONS
from ..records import LabelledImage
from ._common import _root

C_NMC_CLASSES = ("all", "hem")
C_NMC_SPLITS = ("train", "prelim_test")
PRELIM_CSV = "C-NMC_test_prelim_phase_data_labels.csv"
PRELIM_DIR = "C-NMC_test_prelim_phase_data"
_SUBJECT = re.compile(r"^UID_(H?\d+)_", re.IGNORECASE)


def subject_of(file_name: str) -> Optional[str]:
    """Subject id from a C-NMC file name (``UID_H10_43_1_hem.bmp`` -> ``"H10"``), or None."""
    m = _SUBJECT.match(Path(file_name).name)
    return m.group(1).upper() if m else None


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))


def _train(root: Path, folds: Optional[Sequence[int]]) -> list[LabelledImage]:
    fold_dirs = sorted(d for d in root.rglob("fold_*") if d.is_dir()
                       and re.fullmatch(r"fold_\d+", d.name))
    if folds is not None:
        fold_dirs = [d for d in fold_dirs if int(d.name.split("_")[1]) in set(folds)]
    records = []
    for d in fold_dirs:
        for cls in C_NMC_CLASSES:
            sub = next((s for s in d.iterdir() if s.is_dir() and s.name.lower() == cls), None)
            for p in _images(sub) if sub else []:
                records.append(LabelledImage(p.resolve(), cls, {
                    "dataset": "c_nmc_2019", "fold": int(d.name.split("_")[1]),
                    "subject": subject_of(p.name)}))
    if not records:
        raise DatasetNotFoundError(
            f"No C-NMC training images under {root}: expected folders fold_0, fold_1, fold_2 "
            "each with all/ and hem/ subfolders of BMP images (the TCIA or Kaggle archive "
            "unpacked unchanged). See bloodlib.data.catalogue.get_info('c_nmc_2019').")
    return records


def _image_folder(root: Path, names: set[str]) -> Path:
    """The folder named PRELIM_DIR that directly holds the listed images."""
    for d in sorted((d for d in root.rglob(PRELIM_DIR) if d.is_dir()), key=lambda d: -len(d.parts)):
        if any((d / n).is_file() for n in names):
            return d
    raise DatasetNotFoundError(f"No folder {PRELIM_DIR}/ with the images listed in {PRELIM_CSV} "
                               f"under {root}.")


def _prelim(root: Path) -> list[LabelledImage]:
    csv_path = next(iter(sorted(root.rglob(PRELIM_CSV))), None)
    if csv_path is None:
        raise DatasetNotFoundError(f"{PRELIM_CSV} not found under {root}; the preliminary test "
                                   "set needs its label file (TCIA / Kaggle release).")
    with open(csv_path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    need = {"new_names", "labels"}
    if not rows or not need <= set(rows[0]):
        raise AnnotationError(f"{csv_path} must have columns {sorted(need)} (and Patient_ID); "
                              f"found {sorted(rows[0]) if rows else 'no rows'}.")
    folder = _image_folder(root, {r["new_names"] for r in rows})
    records = []
    for r in rows:
        if str(r["labels"]).strip() not in ("0", "1"):
            raise AnnotationError(f"{csv_path}: label {r['labels']!r} of {r['new_names']} "
                                  "is not 0 or 1.")
        path = folder / r["new_names"]
        if not path.is_file():
            raise DatasetNotFoundError(f"{path} is listed in {csv_path.name} but missing.")
        original = r.get("Patient_ID", "")
        records.append(LabelledImage(path.resolve(), "all" if r["labels"].strip() == "1" else "hem",
                                     {"dataset": "c_nmc_2019", "original_name": original,
                                      "subject": subject_of(original)}))
    return sorted(records, key=lambda r: (C_NMC_CLASSES.index(r.label), str(r.path)))


def load_c_nmc(split: str = "train", root: Path | str | None = None,
               folds: Optional[Sequence[int]] = None) -> list[LabelledImage]:
    """C-NMC 2019 cells as :class:`LabelledImage` records (``"all"`` / ``"hem"``) with
    ``meta`` holding ``subject`` (and ``fold`` for training images).

    ``split``: ``"train"`` (the three folds, or only ``folds``) or ``"prelim_test"``
    (the preliminary-phase test set with its labels).
    """
    if split not in C_NMC_SPLITS:
        raise ValueError(f"split must be one of {C_NMC_SPLITS}, got {split!r}.")
    root = _root("c_nmc_2019", root)
    return _train(root, folds) if split == "train" else _prelim(root)
