"""Losses for segmentation (and classification): all take logits and class indices.

* :class:`CrossEntropyLoss` – paper 5's categorical cross-entropy (softmax inside);
  optional class weights. Works for ``(N, C)`` and ``(N, C, H, W)`` logits.
* :class:`SoftDiceLoss` – ``1 - mean_c Dice_c`` of the softmax probabilities, pooled over
  the batch and pixels, with smoothing; optionally without the background class.
* :class:`CEDiceLoss` – weighted sum of both.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CrossEntropyLoss", "SoftDiceLoss", "CEDiceLoss", "build_loss", "LOSSES"]


def _weights(weight: Optional[Sequence[float] | torch.Tensor]) -> Optional[torch.Tensor]:
    return None if weight is None else torch.as_tensor(weight, dtype=torch.float32)


class CrossEntropyLoss(nn.Module):
    """Categorical cross-entropy on logits; ``weight`` per class, pixels equal to
    ``ignore_index`` are skipped (mean over the remaining ones)."""

    def __init__(self, weight: Optional[Sequence[float] | torch.Tensor] = None,
                 ignore_index: int = -100, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.register_buffer("weight", _weights(weight), persistent=False)
        self.ignore_index, self.label_smoothing = ignore_index, label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), target.long(), weight=self.weight,
                               ignore_index=self.ignore_index,
                               label_smoothing=self.label_smoothing)


class SoftDiceLoss(nn.Module):
    """Multi-class soft Dice loss: ``1 - mean_c (2 sum(p_c g_c) + s) / (sum p_c + sum g_c + s)``.

    Sums run over the whole batch and all pixels (a "batch Dice"); ``smooth`` (s) keeps a
    class absent from both prediction and target at Dice 1. ``ignore_background`` drops
    class 0 from the mean; pixels whose target is ``ignore_index`` are left out.
    """

    def __init__(self, smooth: float = 1.0, ignore_background: bool = False,
                 ignore_index: Optional[int] = None) -> None:
        super().__init__()
        self.smooth, self.ignore_background, self.ignore_index = (smooth, ignore_background,
                                                                  ignore_index)

    def per_class(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Soft Dice of each class, shape ``(C,)``."""
        probs = logits.float().softmax(1)
        target = target.long()
        valid = torch.ones_like(target, dtype=probs.dtype)
        if self.ignore_index is not None:
            valid = (target != self.ignore_index).to(probs.dtype)
            target = target.masked_fill(target == self.ignore_index, 0)
        onehot = F.one_hot(target, probs.shape[1]).movedim(-1, 1).to(probs.dtype)
        valid = valid.unsqueeze(1)
        dims = [0] + list(range(2, probs.ndim))
        inter = (probs * onehot * valid).sum(dims)
        total = ((probs + onehot) * valid).sum(dims)
        return (2 * inter + self.smooth) / (total + self.smooth)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        dice = self.per_class(logits, target)
        if self.ignore_background:
            dice = dice[1:]
        return 1 - dice.mean()


class CEDiceLoss(nn.Module):
    """``ce_weight * CrossEntropy + dice_weight * SoftDice``."""

    def __init__(self, ce_weight: float = 1.0, dice_weight: float = 1.0,
                 class_weights: Optional[Sequence[float] | torch.Tensor] = None,
                 smooth: float = 1.0, ignore_background: bool = False,
                 ignore_index: Optional[int] = None) -> None:
        super().__init__()
        self.ce = CrossEntropyLoss(class_weights,
                                   -100 if ignore_index is None else ignore_index)
        self.dice = SoftDiceLoss(smooth, ignore_background, ignore_index)
        self.ce_weight, self.dice_weight = ce_weight, dice_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (self.ce_weight * self.ce(logits, target)
                + self.dice_weight * self.dice(logits, target))


LOSSES: dict[str, type[nn.Module]] = {
    "ce": CrossEntropyLoss, "cross_entropy": CrossEntropyLoss,
    "dice": SoftDiceLoss, "ce_dice": CEDiceLoss,
}


def build_loss(name: str, **kw: Any) -> nn.Module:
    """``"ce"`` / ``"cross_entropy"``, ``"dice"`` or ``"ce_dice"``; ``kw`` go to the class."""
    if name not in LOSSES:
        raise ValueError(f"Unknown loss {name!r}; valid names: {sorted(LOSSES)}.")
    return LOSSES[name](**kw)
