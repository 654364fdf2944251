"""Test-time augmentation: average the softmax over flips/rotations, for dense prediction
(:func:`tta_probabilities`, each prediction mapped back) and for classification (the
views only, ``bloodlib.inference.classification.tta_views``).

Every transform used here is its own exact inverse on the pixel grid (flips, 90-degree
rotations of square inputs), so predictions are mapped back without interpolation.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

Transform = tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]


def _rot(k: int) -> Transform:
    return (lambda t: torch.rot90(t, k, (-2, -1)), lambda t: torch.rot90(t, -k, (-2, -1)))


def _flip(dims: tuple[int, ...]) -> Transform:
    return (lambda t: torch.flip(t, dims), lambda t: torch.flip(t, dims))


def tta_transforms(kind: Optional[str]) -> list[Transform]:
    """``(forward, inverse)`` pairs: ``None``/``"none"`` (identity only), ``"flip"``
    (identity, h-flip), ``"flips"`` (identity, h-flip, v-flip, both) or ``"dihedral"``
    (the 8 symmetries of the square; needs square inputs for dense prediction)."""
    ident = (lambda t: t, lambda t: t)
    if kind in (None, "none"):
        return [ident]
    if kind == "flip":
        return [ident, _flip((-1,))]
    flips = [ident, _flip((-1,)), _flip((-2,)), _flip((-2, -1))]
    if kind == "flips":
        return flips
    if kind == "dihedral":
        return flips + [_rot(1), _rot(3),
                        (lambda t: torch.rot90(t, 1, (-2, -1)).flip(-1),
                         lambda t: torch.rot90(t.flip(-1), -1, (-2, -1))),
                        (lambda t: torch.rot90(t, 1, (-2, -1)).flip(-2),
                         lambda t: torch.rot90(t.flip(-2), -1, (-2, -1)))]
    raise ValueError(f"Unknown test-time augmentation {kind!r}; use None, 'flip', 'flips' or "
                     "'dihedral'.")


@torch.no_grad()
def tta_probabilities(model: nn.Module, x: torch.Tensor, kind: Optional[str] = None) -> torch.Tensor:
    """Mean softmax ``(N, C, H, W)`` of ``model`` over the ``kind`` transforms of ``x``."""
    if kind == "dihedral" and x.shape[-1] != x.shape[-2]:
        raise ValueError(f"'dihedral' TTA needs square inputs, got {tuple(x.shape[-2:])}; "
                         "use 'flips'.")
    total = None
    transforms = tta_transforms(kind)
    for forward, inverse in transforms:
        p = inverse(model(forward(x)).float().softmax(1))
        total = p if total is None else total + p
    return total / len(transforms)
