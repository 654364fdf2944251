"""Channel and spatial attention as paper 3 (R-Mask R-CNN, sections III.B.2-3) describes.

* :class:`ChannelAttention` (CA): average-pool every channel to one number (the vector
  ``Q`` of eq. 1), a 1x1 convolution over ``Q``, a softmax over the channels.
* :class:`SpatialAttention` (SA): a 1x1 convolution of the feature map to a single map
  ``G``, a softmax over all positions of ``G``.
* :class:`AttentionSequence`: the CA-SA and SA-CA compositions (one after the other).

The paper's softmax weights sum to one. Multiplying a feature map by them would shrink
it by the number of channels (CA) or positions (SA), so each module multiplies by
``n * softmax`` instead: the weights keep their proportions (what the softmax decides)
but average 1. The 1x1 convolutions start at zero, so every module starts as the
identity and learns to depart from it.

With ``residual=True`` each module multiplies by ``(1 + n * softmax) / 2`` instead (the
``(1 + M) * F`` of Wang et al.'s Residual Attention Network): still the identity at the
start, but a feature the softmax gives no weight keeps half its strength. Trained from
scratch (notebook 03's ``bench_cpu`` runs), the softmax of the bottom-up path collapsed
onto one channel at N4 and N5 with either form; the plain form then multiplied the other
127 channels by ~0, the residual form by 0.5.

``logit_bound=b`` squashes the logits to ``b * tanh(logits / b)`` before the softmax, so
no two entries differ by more than a factor ``exp(2b)``: one channel or position can no
longer take all the weight, though a group of them still can (see :func:`bound_logits`).

:meth:`weights` returns the raw softmax (sums to one), and each module keeps the weights
of its last forward pass in ``last_weights`` for the attention-map figures.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

__all__ = ["ATTENTION_KINDS", "gate", "bound_logits", "ChannelAttention", "SpatialAttention",
           "AttentionSequence", "build_attention", "attention_modules"]

#: Names accepted by :func:`build_attention` (paper 3's ablation: none, CA, SA, CA-SA, SA-CA).
ATTENTION_KINDS = ("none", "ca", "sa", "ca_sa", "sa_ca")


def gate(weights: torch.Tensor, n: int, residual: bool) -> torch.Tensor:
    """The multiplier for softmax ``weights`` over ``n`` entries: ``n * w``, or
    ``(1 + n * w) / 2`` when ``residual``; both are 1 for uniform weights."""
    scaled = weights * n
    return (1 + scaled) / 2 if residual else scaled


def bound_logits(logits: torch.Tensor, bound: Optional[float]) -> torch.Tensor:
    """``bound * tanh(logits / bound)`` (identity when ``bound`` is None): logits within
    ``(-bound, bound)``, unchanged near 0 where every module starts."""
    return logits if bound is None else bound * torch.tanh(logits / bound)


def _checked_bound(bound: Optional[float]) -> Optional[float]:
    if bound is None:
        return None
    if not float(bound) > 0:
        raise ValueError(f"logit_bound must be a positive number or None, got {bound!r}.")
    return float(bound)


def _zero_conv(cin: int, cout: int) -> nn.Conv2d:
    conv = nn.Conv2d(cin, cout, kernel_size=1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class _SoftmaxAttention(nn.Module):
    """What CA and SA share: the gate options, and ``x * gate(weights(x))`` with ``n`` the
    number of entries of one image's weights (channels for CA, positions for SA)."""

    def __init__(self, channels: int, residual: bool, logit_bound: Optional[float]) -> None:
        super().__init__()
        self.channels, self.residual = int(channels), bool(residual)
        self.logit_bound = _checked_bound(logit_bound)
        self.last_weights: Optional[torch.Tensor] = None

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weights(x)
        self.last_weights = w.detach()
        return x * gate(w, w[0].numel(), self.residual)


class ChannelAttention(_SoftmaxAttention):
    """CA: ``x * C * softmax_c(conv1x1(avgpool(x)))`` for ``x`` of shape (B, C, H, W)
    (``residual``: ``x * (1 + C * softmax) / 2``; ``logit_bound``: :func:`bound_logits`)."""

    def __init__(self, channels: int, residual: bool = False,
                 logit_bound: Optional[float] = None) -> None:
        super().__init__(channels, residual, logit_bound)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.conv = _zero_conv(self.channels, self.channels)

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax weights over the channels, shape (B, C, 1, 1), summing to 1 per image."""
        return torch.softmax(bound_logits(self.conv(self.pool(x)), self.logit_bound), dim=1)


class SpatialAttention(_SoftmaxAttention):
    """SA: ``x * HW * softmax_hw(conv1x1(x))`` — one weight per position, shared by channels
    (``residual``: ``x * (1 + HW * softmax) / 2``; ``logit_bound``: :func:`bound_logits`)."""

    def __init__(self, channels: int, residual: bool = False,
                 logit_bound: Optional[float] = None) -> None:
        super().__init__(channels, residual, logit_bound)
        self.conv = _zero_conv(self.channels, 1)

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax weights over the positions, shape (B, 1, H, W), summing to 1 per image."""
        g = bound_logits(self.conv(x), self.logit_bound)
        b, _, h, w = g.shape
        return torch.softmax(g.reshape(b, 1, h * w), dim=-1).reshape(b, 1, h, w)


class AttentionSequence(nn.Sequential):
    """Attention modules applied one after the other (CA-SA: CA first; SA-CA: SA first)."""


def build_attention(kind: str, channels: int, residual: bool = False,
                    logit_bound: Optional[float] = None) -> nn.Module:
    """An attention module by name: ``none`` (identity), ``ca``, ``sa``, ``ca_sa``, ``sa_ca``;
    ``residual`` selects the ``(1 + n * softmax) / 2`` multiplier and ``logit_bound`` caps
    the logits (module docstring)."""
    kind = str(kind).lower().replace("-", "_")
    if kind == "none":
        return nn.Identity()
    parts = {"ca": (ChannelAttention,), "sa": (SpatialAttention,),
             "ca_sa": (ChannelAttention, SpatialAttention),
             "sa_ca": (SpatialAttention, ChannelAttention)}.get(kind)
    if parts is None:
        raise ValueError(f"Unknown attention {kind!r}; choose one of {ATTENTION_KINDS}.")
    modules = [cls(channels, residual, logit_bound) for cls in parts]
    return modules[0] if len(modules) == 1 else AttentionSequence(*modules)


def attention_modules(module: nn.Module) -> dict[str, nn.Module]:
    """Every :class:`ChannelAttention` / :class:`SpatialAttention` inside ``module``, by name."""
    return {name: m for name, m in module.named_modules()
            if isinstance(m, (ChannelAttention, SpatialAttention))}
