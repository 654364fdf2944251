"""Losses: CE equals torch's, Dice of a perfect prediction is ~0, registry."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bloodlib.losses import CEDiceLoss, CrossEntropyLoss, SoftDiceLoss, build_loss


def _perfect_logits(target: torch.Tensor, classes: int) -> torch.Tensor:
    return F.one_hot(target, classes).movedim(-1, 1).float() * 50.0


def test_ce_matches_torch():
    torch.manual_seed(0)
    logits, target = torch.randn(2, 4, 8, 8), torch.randint(0, 4, (2, 8, 8))
    assert torch.allclose(CrossEntropyLoss()(logits, target), F.cross_entropy(logits, target))
    w = [0.1, 1.0, 2.0, 3.0]
    assert torch.allclose(CrossEntropyLoss(weight=w)(logits, target),
                          F.cross_entropy(logits, target, weight=torch.tensor(w)))
    cls_logits, cls_target = torch.randn(5, 3), torch.randint(0, 3, (5,))
    assert torch.allclose(CrossEntropyLoss()(cls_logits, cls_target),
                          F.cross_entropy(cls_logits, cls_target))


def test_dice_perfect_and_wrong():
    target = torch.randint(0, 3, (2, 16, 16))
    assert SoftDiceLoss()(_perfect_logits(target, 3), target).item() < 1e-3
    wrong = _perfect_logits((target + 1) % 3, 3)
    assert SoftDiceLoss(smooth=0.0)(wrong, target).item() > 0.99


def test_dice_ignore_background_and_index():
    target = torch.zeros(1, 8, 8, dtype=torch.long)
    target[0, 2:6, 2:6] = 1
    logits = _perfect_logits(target, 2)
    logits[0, :, 0, 0] = torch.tensor([0.0, 50.0])  # one background pixel called foreground
    full = SoftDiceLoss(smooth=0)(logits, target)
    fg = SoftDiceLoss(smooth=0, ignore_background=True)(logits, target)
    assert fg > full > 0
    target[0, 0, 0] = 255
    assert SoftDiceLoss(smooth=0, ignore_index=255)(logits, target).item() < 1e-6


def test_ce_dice_and_build():
    target = torch.randint(0, 4, (2, 8, 8))
    logits = torch.randn(2, 4, 8, 8, requires_grad=True)
    loss = CEDiceLoss()(logits, target)
    expected = F.cross_entropy(logits, target) + SoftDiceLoss()(logits, target)
    assert torch.allclose(loss, expected)
    loss.backward()
    assert logits.grad is not None
    assert isinstance(build_loss("ce"), CrossEntropyLoss)
    assert isinstance(build_loss("dice", smooth=0.5), SoftDiceLoss)
    with pytest.raises(ValueError, match="ce_dice"):
        build_loss("focal")
