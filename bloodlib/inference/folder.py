"""Reading many images for prediction: parallel loading in batches, threads, shards.

``bloodlib predict`` on a lab's folder reads and decodes images in reader threads while
the model works on the previous batch::

    for batch in load_batches(files, batch_size=32, workers=1):
        good = [item for item in batch if item.error is None]

A file that cannot be read comes back with its ``error`` (the reason) instead of an
image, so one bad file never stops the others. :func:`default_threads` picks a torch
thread count that leaves room for other jobs on the machine (thread oversubscription
slows PyTorch on CPU by an order of magnitude); :func:`shard_files` gives each of ``N``
processes or machines a deterministic part of the inputs.
"""

from __future__ import annotations

import math
import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
import torch

from ..errors import BloodlibError
from .common import MAX_PIXELS
from ..io import read_image
import cv2


@dataclass
class LoadedImage:
    """One input file: its image (None when it could not be read, then ``error`` says
    why) and the factors (x, y) taking the image's pixels back to the file's."""

    index: int
    path: str
    image: Optional[np.ndarray]
    factors: tuple[float, float] = (1.0, 1.0)
    error: Optional[str] = None


def fit_to_pixels(image: np.ndarray, max_pixels: int = MAX_PIXELS
                  ) -> tuple[np.ndarray, tuple[float, float]]:
    """``image`` shrunk (area interpolation) to at most ``max_pixels``, and the factors
    (x, y) that take its coordinates back to the original's ((1, 1): unchanged)."""
    h, w = image.shape[:2]
    if h * w <= max_pixels:
        return image, (1.0, 1.0)
    shrink = math.sqrt(h * w / max_pixels)
    size = (max(1, math.floor(w / shrink)), max(1, math.floor(h / shrink)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA), (w / size[0], h / size[1])


def read_reason(exc: BaseException) -> str:
    """One line saying why a file was skipped."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, BloodlibError):
        return text.split(". ")[0] or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:300]


class ImageFiles:
    """Image files as :class:`LoadedImage` items, read with :func:`bloodlib.io.read_image`
    and shrunk to ``max_pixels``; read errors are returned, not raised."""

    def __init__(self, files: Sequence[str | Path], max_pixels: int = MAX_PIXELS) -> None:
        self.files = [str(f) for f in files]
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> LoadedImage:
        path = self.files[index]
        try:
            image, factors = fit_to_pixels(read_image(path), self.max_pixels)
        except (BloodlibError, ValueError, OSError, MemoryError, RuntimeError) as exc:
            return LoadedImage(index, path, None, error=read_reason(exc))
        return LoadedImage(index, path, image, factors)


def load_batches(files: Sequence[str | Path], batch_size: int = 16, workers: int = 0,
                 max_pixels: int = MAX_PIXELS, ahead: int = 2) -> Iterator[list[LoadedImage]]:
    """Batches of :class:`LoadedImage`, in file order. With ``workers`` > 0, that many
    reader threads decode the next ``ahead`` batches while the caller works on this one
    (JPEG/PNG decoding and resizing release the GIL, so the threads run in parallel; they
    start at once and copy nothing, unlike DataLoader worker processes, which also hang
    when forked from a process holding onnxruntime's thread pool)."""
    if batch_size < 1 or workers < 0:
        raise BloodlibError(f"--batch-size must be >= 1 and --workers >= 0, got {batch_size} "
                            f"and {workers}.")
    data = ImageFiles(files, max_pixels)
    chunks = iter([range(i, min(i + batch_size, len(data)))
                   for i in range(0, len(data), batch_size)])
    if workers == 0:
        for chunk in chunks:
            yield [data[i] for i in chunk]
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="bloodlib-read") as pool:
        pending: deque[list[Future]] = deque()

        def submit() -> None:
            chunk = next(chunks, None)
            if chunk is not None:
                pending.append([pool.submit(data.__getitem__, i) for i in chunk])
        for _ in range(max(1, ahead)):
            submit()
        while pending:
            futures = pending.popleft()
            submit()
            yield [f.result() for f in futures]


# ----------------------------------------------------------------------------- inputs
def collect_inputs(inputs: Sequence[str | Path], exclude: Optional[Path] = None
                   ) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files named in ``inputs``, folders expanded (recursively, sorted, hidden files and
    ``exclude`` left out; linked folders followed once); returns ``(files, [(input,
    reason)])`` where the reasons cover missing inputs, broken links and link loops."""
    files: list[Path] = []
    missing: list[tuple[str, str]] = []
    exclude = exclude.resolve() if exclude is not None else None
    for item in inputs:
        path = Path(item)
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            _walk_folder(path, exclude, files, missing)
        elif path.is_symlink():
            missing.append((str(item), _link_problem(path)))
        else:
            missing.append((str(item), "no such file or folder"))
    return list(dict.fromkeys(files)), missing


def _link_problem(path: Path) -> str:
    """Why a symbolic link leads to no file: a loop, or a missing target."""
    try:
        path.resolve(strict=True)
    except RuntimeError:
        return "symbolic link loop"
    except OSError as exc:
        if getattr(exc, "errno", None) == 40:  # ELOOP
            return "symbolic link loop"
        return f"broken symbolic link (to {os.readlink(path)})"
    return "not a regular file"


def _walk_folder(root: Path, exclude: Optional[Path], files: list[Path],
                 problems: list[tuple[str, str]]) -> None:
    """Add ``root``'s files (sorted) to ``files``; links that lead nowhere, and linked
    folders that lead back into folders already walked, go to ``problems``."""
    seen = {root.resolve()}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        here = Path(dirpath)
        keep = []
        for d in sorted(dirnames):
            sub = here / d
            if d.startswith("."):
                continue
            try:
                real = sub.resolve(strict=True)
            except (OSError, RuntimeError):
                problems.append((str(sub), _link_problem(sub)))
                continue
            if real in seen or (exclude and (real == exclude or exclude in real.parents)):
                if sub.is_symlink() and real in seen:
                    problems.append((str(sub), "symbolic link loop (folder already searched)"))
                continue
            seen.add(real)
            keep.append(d)
        dirnames[:] = keep
        for name in sorted(filenames):  # os.walk lists looping and broken links here
            p = here / name
            if name.startswith("."):
                continue
            if not p.is_file():
                if p.is_symlink():
                    problems.append((str(p), _link_problem(p)))
                continue
            if not (exclude and exclude in p.resolve().parents):
                files.append(p)



# ----------------------------------------------------------------------------- threads
def usable_cpus() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def busy_cpus(samples: int = 5, interval_s: float = 0.02) -> float:
    """Cores kept busy by other processes now: the run queue of ``/proc/loadavg``
    (median of a few samples, this process excluded), else the 1-minute load."""
    try:
        values = []
        for _ in range(samples):
            running = Path("/proc/loadavg").read_text().split()[3].split("/")[0]
            values.append(max(0, int(running) - 1))
            time.sleep(interval_s)
        return float(np.median(values))
    except (OSError, IndexError, ValueError):
        return float(os.getloadavg()[0]) if hasattr(os, "getloadavg") else 0.0


def default_threads() -> int:
    """Torch threads for prediction: the usable cores less those other jobs keep busy,
    at least 1. Running more threads than free cores makes every thread wait for the
    slowest (27x slower in a measured case). The reader threads are not counted: they
    wait on the model most of the time."""
    free = usable_cpus() - busy_cpus()
    return max(1, int(math.floor(free + 0.5)))


def default_workers() -> int:
    """Reader threads: one when there are at least two cores, else none."""
    return 1 if usable_cpus() >= 2 else 0


def set_threads(threads: Optional[int]) -> int:
    """Set torch's (and OpenCV's) thread count (``None``: :func:`default_threads`)."""
    n = int(threads) if threads else default_threads()
    if n < 1:
        raise BloodlibError(f"--threads must be >= 1, got {n}.")
    torch.set_num_threads(n)
    cv2.setNumThreads(n)
    return n


# ----------------------------------------------------------------------------- shards
def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> (I, N) with 0 <= I < N; BloodlibError otherwise."""
    try:
        i, n = (int(v) for v in str(text).split("/"))
    except ValueError:
        raise BloodlibError(f"--shard {text!r}: write it as I/N, e.g. 0/4 for the first of "
                            "four parts.") from None
    if not (n >= 1 and 0 <= i < n):
        raise BloodlibError(f"--shard {text!r}: I must be in 0..N-1 and N >= 1.")
    return i, n


def shard_files(files: Sequence[Path], index: int, count: int) -> list[Path]:
    """Part ``index`` of ``count``: every ``count``-th file from ``index`` on, so the
    parts are deterministic, disjoint, cover every file and balance large folders."""
    return list(files[index::count])


def shard_folder(out_dir: Path, index: int, count: int) -> Path:
    """Where shard ``index`` of ``count`` writes under ``out_dir``."""
    return Path(out_dir) / "shards" / f"{index}-of-{count}"
