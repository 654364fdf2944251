"""Shared fixtures. Nothing here touches the network."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")

REPO = Path(__file__).resolve().parents[1]


def real_data_root() -> Path | None:
    """The folder BLOODLIB_DATA names, when it exists."""
    value = os.environ.get("BLOODLIB_DATA")
    return Path(value) if value and Path(value).is_dir() else None


@pytest.fixture
def data_root() -> Path:
    """BLOODLIB_DATA, or skip the test when the real datasets are absent."""
    root = real_data_root()
    if root is None:
        pytest.skip("BLOODLIB_DATA is not set to a folder with the datasets")
    return root


@pytest.fixture
def store(tmp_path, monkeypatch) -> Path:
    """A model store in ``tmp_path`` (BLOODLIB_MODELS points at it) holding ``tiny-seg``."""
    from stub_predictors import store_tiny_segmenter

    folder = tmp_path / "models"
    monkeypatch.setenv("BLOODLIB_MODELS", str(folder))
    store_tiny_segmenter(folder)
    return folder


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """Fail any test that opens a non-loopback socket."""
    import socket

    real_connect = socket.socket.connect

    def guarded(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and not (host.startswith("127.") or host in ("localhost", "::1")
                                          or host.startswith("/")):
            raise RuntimeError(f"test tried to reach the network: {address}")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)
