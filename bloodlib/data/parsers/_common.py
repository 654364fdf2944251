"""Helpers shared by the dataset parsers."""

from __future__ import annotations

from pathlib import Path

from ...errors import DatasetNotFoundError


def _root(name: str, root: Path | str | None) -> Path:
    """``root`` if given (must exist), else the catalogue's ``$BLOODLIB_DATA/<name>``."""
    if root is None:
        from ..catalogue import dataset_path  # lazy: the catalogue is optional here

        root = dataset_path(name)
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DatasetNotFoundError(f"Dataset folder for {name!r} not found: {root}. Fetch it with "
                                   f"`python -m bloodlib fetch {name}` or pass root=.")
    return root


def _inner(root: Path, inner: str, marker: str) -> Path:
    """``root/inner`` when ``root`` is the dataset folder, ``root`` itself when it already
    is the inner folder (recognised by containing ``marker``)."""
    if (root / inner).is_dir():
        return root / inner
    if (root / marker).exists():
        return root
    raise DatasetNotFoundError(f"Expected {root / inner} (with {marker}/ inside); the dataset "
                               "layout is not the original one.")
