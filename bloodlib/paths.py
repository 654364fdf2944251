"""Where things are: the low floor every other module may import (it imports nothing of
bloodlib)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["PROJECT_ROOT", "NOTEBOOK_DIR", "REFERENCE_DIR", "BOARD_DIR", "OUTPUTS_DIR"]

#: The checkout (the folder that holds ``bloodlib/``, ``notebooks/``, ``results/``).
PROJECT_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = PROJECT_ROOT / "notebooks"
#: Committed benchmark results (JSON); the board is built from them.
REFERENCE_DIR = PROJECT_ROOT / "results" / "reference"
BOARD_DIR = PROJECT_ROOT / "results" / "board"
OUTPUTS_DIR = PROJECT_ROOT / "outputs"
