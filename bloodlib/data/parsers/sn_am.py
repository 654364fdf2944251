"""SN-AM (SBILab, TCIA): bone-marrow aspirate images of B-ALL and multiple myeloma (MM).

Paper 3's description: Jenner-Giemsa-stained slides, Nikon Eclipse-200 at 1000x, raw
BMP images of 2560x1920 pixels; 90 B-ALL and 100 MM images. The collection is one folder
per diagnosis. Layout read here: ``sn_am/**/<class folder>/**/*.bmp`` where a class
folder is named ``ALL`` or ``B-ALL`` (also ``B_ALL``, ``BALL``) or ``MM`` (matched
case-insensitively, at any depth, so the archive can be unpacked unchanged). Files in
folders whose name contains "mask" or "ground" are skipped (annotation images, not
samples). Not redistributable: download it from TCIA (see the catalogue entry).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ...errors import DatasetNotFoundError, UnknownClassError
from ..convert import IMAGE_EXTENSIONS
from ..records import LabelledImage
from ._common import _root

SN_AM_CLASSES = ("all", "mm")
_FOLDER_CLASS = {"all": "all", "b-all": "all", "b_all": "all", "ball": "all", "b all": "all",
                 "mm": "mm"}
_SKIP_WORDS = ("mask", "ground")


def _skipped(path: Path, base: Path) -> bool:
    parts = [p.lower() for p in path.relative_to(base).parts[:-1]]
    return any(w in p for p in parts for w in _SKIP_WORDS) or path.name.startswith(".")


def class_folders(root: Path) -> dict[str, list[Path]]:
    """``{class: [folders]}`` of every ALL/B-ALL/MM folder below ``root`` (outermost only)."""
    found: dict[str, list[Path]] = {c: [] for c in SN_AM_CLASSES}
    for d in sorted(p for p in root.rglob("*") if p.is_dir()):
        cls = _FOLDER_CLASS.get(d.name.lower())
        if cls and not any(d.is_relative_to(f) for fs in found.values() for f in fs):
            found[cls].append(d)
    return found


def load_sn_am(root: Path | str | None = None, classes: Sequence[str] | None = None
               ) -> list[LabelledImage]:
    """SN-AM images as :class:`LabelledImage` records (label ``"all"`` or ``"mm"``),
    sorted by class then path. ``classes`` restricts them (e.g. ``["mm"]``)."""
    root = _root("sn_am", root)
    wanted = list(SN_AM_CLASSES) if classes is None else [str(c).lower() for c in classes]
    unknown = [c for c in wanted if c not in SN_AM_CLASSES]
    if unknown:
        raise UnknownClassError(f"Unknown SN-AM class(es) {unknown}; known: {list(SN_AM_CLASSES)}.")
    folders = class_folders(root)
    records = []
    for c in wanted:
        files = sorted({p for f in folders[c] for p in f.rglob("*")
                        if p.suffix.lower() in IMAGE_EXTENSIONS and not _skipped(p, f)})
        if not files:
            raise DatasetNotFoundError(
                f"No SN-AM {c.upper()} images under {root}: expected a folder named "
                f"{'ALL or B-ALL' if c == 'all' else 'MM'} holding the BMP images (the TCIA "
                "archive unpacked unchanged). See bloodlib.data.catalogue.get_info('sn_am').")
        records += [LabelledImage(p.resolve(), c, {"dataset": "sn_am"}) for p in files]
    return records
