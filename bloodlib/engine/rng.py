"""Random-number state that a resumed run needs to continue exactly where it stopped.

:func:`rng_state` captures torch's (CPU and CUDA), NumPy's and Python's global
generators and any ``torch.Generator`` a data loader or its sampler holds, as tensors and
plain numbers, so it is stored in a checkpoint that loads with ``weights_only=True``;
:func:`set_rng_state` puts it back. A shuffling ``DataLoader`` draws each epoch's order
from these generators when its iterator starts, so restoring them before the next epoch
gives the same data order as the run that was interrupted.
"""

from __future__ import annotations

import random
from typing import Any, Iterable, Iterator, Mapping, Optional

import numpy as np
import torch

__all__ = ["rng_state", "set_rng_state", "loader_generators", "ResumableBatches"]


def loader_generators(loader: Any) -> list[torch.Generator]:
    """The ``torch.Generator`` objects of ``loader`` and its (batch) sampler, if any."""
    holders = [loader, getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None),
               getattr(getattr(loader, "batch_sampler", None), "sampler", None)]
    out: list[torch.Generator] = []
    for holder in holders:
        gen = getattr(holder, "generator", None)
        if isinstance(gen, torch.Generator) and all(gen is not g for g in out):
            out.append(gen)
    return out


def rng_state(loaders: Iterable[Any] = ()) -> dict[str, Any]:
    """Every generator's state, as tensors and numbers (see the module docstring)."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np.asarray(keys, np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(gauss)},
        "python": {"version": int(version), "internal": torch.tensor(internal, dtype=torch.int64),
                   "gauss_next": gauss_next},
        "loaders": [g.get_state() for loader in loaders for g in loader_generators(loader)],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any], loaders: Iterable[Any] = ()) -> None:
    """Restore what :func:`rng_state` captured (the loaders in the same order)."""
    torch.set_rng_state(state["torch"])
    npst = state["numpy"]
    np.random.set_state(("MT19937", npst["keys"].numpy().astype(np.uint32), npst["pos"],
                         npst["has_gauss"], npst["cached_gaussian"]))
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["internal"].tolist()),
                     py["gauss_next"]))
    gens = [g for loader in loaders for g in loader_generators(loader)]
    for gen, saved in zip(gens, state.get("loaders", [])):
        gen.set_state(saved)
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class ResumableBatches:
    """``(epoch, batch)`` forever (epochs from 0), remembering the random-number state at
    the start of the epoch and the position in it, so that a resumed run draws the same
    batches as an uninterrupted one (:meth:`state` / :meth:`restore`)."""

    def __init__(self, loader: Iterable) -> None:
        self.loader, self.epoch, self.position = loader, 0, 0
        self.epoch_rng: Optional[dict[str, Any]] = None
        self._it: Optional[Iterator[Any]] = None

    def __iter__(self) -> "ResumableBatches":
        return self

    def __next__(self) -> tuple[int, Any]:
        if self._it is None:
            self.epoch_rng, self._it, self.position = rng_state([self.loader]), iter(self.loader), 0
        try:
            batch = next(self._it)
        except StopIteration:
            if self.position == 0:
                raise ValueError("The training loader is empty; check the dataset/split.") from None
            self.epoch, self._it = self.epoch + 1, None
            return next(self)
        self.position += 1
        return self.epoch, batch

    def state(self) -> dict[str, Any]:
        """Where the iteration is, with the epoch's starting random state."""
        return {"epoch": self.epoch, "position": self.position, "epoch_rng": self.epoch_rng}

    def restore(self, state: Mapping[str, Any]) -> None:
        """Replay the epoch's start and skip the batches already used."""
        self.epoch, self.epoch_rng = int(state["epoch"]), state["epoch_rng"]
        if self.epoch_rng is None:
            return
        set_rng_state(self.epoch_rng, [self.loader])
        self._it = iter(self.loader)
        for _ in range(int(state["position"])):
            next(self._it)
        self.position = int(state["position"])
