"""U-Net (Ronneberger et al., 2015) with the knobs the course's papers vary.

* ``activation``: ``"relu"`` or ``"leaky_relu"`` (paper 5 compares both);
* ``base_channels``: 64 is the paper; 16 trains on a CPU;
* optional CBAM attention after every encoder/decoder stage and a dilated bottleneck,
  which together give paper 4's CBAM-DC-UNet (see :func:`bloodlib.models.segmentation_zoo`).

Any input size works: each decoder stage resizes its upsampled map to its skip
connection (the paper's "crop"), so 120x120 (not divisible by 16) is fine.
The model returns logits ``(N, num_classes, H, W)``; softmax belongs to loss/predict.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["UNet", "DoubleConv", "CBAM", "DilatedBottleneck", "make_activation",
           "match_size", "DEFAULT_NEGATIVE_SLOPE"]

DEFAULT_NEGATIVE_SLOPE = 0.01  # PyTorch's default; paper 5 gives no value ("0.01 to 0.1")


def make_activation(name: str, negative_slope: float = DEFAULT_NEGATIVE_SLOPE) -> nn.Module:
    """``"relu"`` or ``"leaky_relu"`` as a module."""
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name in ("leaky_relu", "leakyrelu", "leaky"):
        return nn.LeakyReLU(negative_slope, inplace=True)
    raise ValueError(f"Unknown activation {name!r}; choose 'relu' or 'leaky_relu'.")


def match_size(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Pad (zeros) or crop ``x`` so its spatial size equals ``ref``'s."""
    dh, dw = ref.shape[-2] - x.shape[-2], ref.shape[-1] - x.shape[-1]
    if dh == 0 and dw == 0:
        return x
    return F.pad(x, [dw // 2, dw - dw // 2, dh // 2, dh - dh // 2])


def conv3x3(cin: int, cout: int, dilation: int = 1, bias: bool = True) -> nn.Conv2d:
    """3x3 'same' convolution."""
    return nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation, bias=bias)


class DoubleConv(nn.Sequential):
    """(3x3 conv -> [BN] -> activation) x 2."""

    def __init__(self, cin: int, cout: int, activation: str = "relu",
                 negative_slope: float = DEFAULT_NEGATIVE_SLOPE, batch_norm: bool = True) -> None:
        layers: list[nn.Module] = []
        for c in (cin, cout):
            layers.append(conv3x3(c, cout, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(cout))
            layers.append(make_activation(activation, negative_slope))
        super().__init__(*layers)


class CBAM(nn.Module):
    """Convolutional Block Attention Module (Woo et al., 2018): channel then spatial
    attention, each a sigmoid gate multiplied onto the features."""

    def __init__(self, channels: int, reduction: int = 16, kernel_size: int = 7) -> None:
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.mlp = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True),
                                 nn.Conv2d(hidden, channels, 1))
        self.spatial = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.mlp(F.adaptive_avg_pool2d(x, 1))
        mx = self.mlp(F.adaptive_max_pool2d(x, 1))
        x = x * torch.sigmoid(avg + mx)
        pooled = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)
        return x * torch.sigmoid(self.spatial(pooled))


class DilatedBottleneck(nn.Module):
    """Cascade of 3x3 convolutions with growing dilation whose outputs are summed
    (D-LinkNet-style dilated centre): a large receptive field at the lowest resolution."""

    def __init__(self, cin: int, cout: int, dilations: Sequence[int] = (1, 2, 4),
                 activation: str = "relu", negative_slope: float = DEFAULT_NEGATIVE_SLOPE,
                 batch_norm: bool = True) -> None:
        super().__init__()
        stages = []
        for i, d in enumerate(dilations):
            layers: list[nn.Module] = [conv3x3(cin if i == 0 else cout, cout, d, not batch_norm)]
            if batch_norm:
                layers.append(nn.BatchNorm2d(cout))
            layers.append(make_activation(activation, negative_slope))
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = 0
        for stage in self.stages:
            x = stage(x)
            out = out + x
        return out


class UNet(nn.Module):
    """U-Net with ``depth`` poolings; channels ``base_channels * 2**level``.

    Down: :class:`DoubleConv` + 2x2 max pooling. Up: 2x2 transposed convolution,
    size-match to the skip, concatenation, :class:`DoubleConv`. Final 1x1 convolution to
    ``num_classes`` logits. ``attention="cbam"`` adds :class:`CBAM` after every stage;
    ``dilations`` replaces the bottleneck's double convolution by a
    :class:`DilatedBottleneck`. ``dropout`` (default 0) is applied after the bottleneck.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 2, base_channels: int = 64,
                 depth: int = 4, activation: str = "relu",
                 negative_slope: float = DEFAULT_NEGATIVE_SLOPE, batch_norm: bool = True,
                 attention: Optional[str] = None, dilations: Optional[Sequence[int]] = None,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if attention not in (None, "cbam"):
            raise ValueError(f"Unknown attention {attention!r}; choose None or 'cbam'.")
        act = dict(activation=activation, negative_slope=negative_slope, batch_norm=batch_norm)
        chans = [base_channels * 2 ** i for i in range(depth + 1)]
        self.encoder = nn.ModuleList(
            self._stage(cin, cout, attention, act)
            for cin, cout in zip([in_channels] + chans[:depth - 1], chans[:depth]))
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = (DilatedBottleneck(chans[-2], chans[-1], dilations, **act) if dilations
                           else DoubleConv(chans[-2], chans[-1], **act))
        self.dropout = nn.Dropout2d(dropout) if dropout else nn.Identity()
        self.ups = nn.ModuleList(nn.ConvTranspose2d(chans[i + 1], chans[i], 2, stride=2)
                                 for i in reversed(range(depth)))
        self.decoder = nn.ModuleList(self._stage(2 * chans[i], chans[i], attention, act)
                                     for i in reversed(range(depth)))
        self.head = nn.Conv2d(chans[0], num_classes, 1)

    @staticmethod
    def _stage(cin: int, cout: int, attention: Optional[str], act: dict) -> nn.Module:
        block = DoubleConv(cin, cout, **act)
        return nn.Sequential(block, CBAM(cout)) if attention == "cbam" else block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
            x = self.pool(x)
        x = self.dropout(self.bottleneck(x))
        for up, stage, skip in zip(self.ups, self.decoder, reversed(skips)):
            x = stage(torch.cat([skip, match_size(up(x), skip)], 1))
        return self.head(x)
