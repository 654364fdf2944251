"""WCSegNet: the residual U-Net of paper 5 (section 2.3) for WBC-nucleus segmentation.

Structure, as the paper describes it (filters at ``width=1.0``):

* **Conv-Block** (Fig. 4, :class:`ConvBlock`): 3x3 conv + LeakyReLU, 3x3 conv (no
  activation), add the block's input, LeakyReLU. Stride 1, 'same' padding, no batch norm.
* **Encoder**: two Conv-Blocks per level, 64 / 128 / 256 / 512 filters, each level
  followed by 2x2 max pooling; one dropout after the second 512 Conv-Block (its output
  feeds both the pooling and the skip connection, as in the Keras U-Net it derives from).
* **Bottleneck**: two Conv-Blocks with 1024 filters.
* **Decoder**: per level 2x2 upsampling, concatenation with the skip, two Conv-Blocks
  (512 / 256 / 128 / 64); two dropouts "in the middle of the path".
* **Head**: 3x3 conv + batch norm + LeakyReLU + dropout, then a 1x1 conv to 4 classes
  (background + the nuclei of neutrophils, basophils, lymphocytes).

The model returns **logits**; the paper's softmax lives in the loss
(:class:`bloodlib.losses.CrossEntropyLoss`) and in ``predict_segmentation``.

Where the text is ambiguous or impossible, this implementation chooses (and says so):

1. The residual sum needs equal channels but the first block of each level changes them
   (3->64, 64->128, ..., and cat(up, skip)->filters in the decoder); the paper gives no
   shortcut, so a 1x1 convolution projects the input there (ResNet "option B"); elsewhere
   the shortcut is the identity.
2. "Ten Conv-Blocks in the encoder" = 8 encoder blocks + the 2 bottleneck blocks; the
   filter list in 2.3.1 omits 512, which 2.3.1's next paragraphs and 2.3.2 use.
3. "Two dropouts in the middle of the decoder path": placed after decoder levels 2 and 3
   (256 and 128 filters), the middle two of four (``decoder_dropout_levels``).
4. Dropout rates are not given: 0.5 everywhere (the Keras U-Net convention), ``dropout``.
5. LeakyReLU's slope is not given ("typically 0.01 to 0.1"): ``negative_slope=0.01``.
6. "2x2 upsampling" = Keras ``UpSampling2D`` (nearest neighbour, no weights), not a
   transposed convolution. The text lists upsampling, Conv-Blocks, then "four
   concatenation layers"; we follow the U-Net order (upsample, concatenate, convolve)
   that Fig. 3's skip lines show.
7. The head's conv width is not given: the last decoder width (64). The final layer is
   called "(3x3)" and then "(1x1) kernel"; we use 1x1.
8. 120x120 inputs (the paper's size) are not divisible by 16, so a Keras model built as
   described cannot concatenate 14x14 with 15x15; here the upsampled map is resized to
   its skip's size (nearest), so any size works.
9. Weights use Keras' default Glorot-uniform initialisation with zero biases.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .unet import DEFAULT_NEGATIVE_SLOPE

__all__ = ["WCSegNet", "ConvBlock", "PAPER_FILTERS", "scaled_filters"]

PAPER_FILTERS = (64, 128, 256, 512, 1024)


def scaled_filters(width: float, filters: Sequence[int] = PAPER_FILTERS) -> list[int]:
    """Filters times ``width`` (at least 1 each): 0.25 -> 16/32/64/128/256."""
    if width <= 0:
        raise ValueError(f"width must be positive, got {width}")
    return [max(1, int(round(f * width))) for f in filters]


class ConvBlock(nn.Module):
    """Paper 5's residual Conv-Block: ``act(conv(act(conv(x))) + shortcut(x))``.

    ``shortcut`` is the identity when ``cin == cout``, else a 1x1 convolution.
    """

    def __init__(self, cin: int, cout: int,
                 negative_slope: float = DEFAULT_NEGATIVE_SLOPE) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.act = nn.LeakyReLU(negative_slope)
        self.shortcut = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(self.act(self.conv1(x)))
        return self.act(y + self.shortcut(x))


def _pair(cin: int, cout: int, slope: float) -> nn.Sequential:
    return nn.Sequential(ConvBlock(cin, cout, slope), ConvBlock(cout, cout, slope))


def _glorot_init(module: nn.Module) -> None:
    if isinstance(module, nn.Conv2d):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class WCSegNet(nn.Module):
    """Paper 5's WCSegNet; ``width`` scales every filter count (1.0 = the paper).

    Input ``(N, in_channels, H, W)`` of any size; output logits ``(N, num_classes, H, W)``.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 4, width: float = 1.0,
                 negative_slope: float = DEFAULT_NEGATIVE_SLOPE, dropout: float = 0.5,
                 decoder_dropout_levels: Sequence[int] = (1, 2)) -> None:
        super().__init__()
        f = scaled_filters(width)
        s = negative_slope
        self.encoder = nn.ModuleList(_pair(cin, cout, s)
                                     for cin, cout in zip([in_channels] + f[:3], f[:4]))
        self.encoder_dropout = nn.Dropout(dropout)
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = _pair(f[3], f[4], s)
        self.decoder = nn.ModuleList(_pair(f[i + 1] + f[i], f[i], s) for i in (3, 2, 1, 0))
        self.decoder_dropouts = nn.ModuleList(
            nn.Dropout(dropout) if level in decoder_dropout_levels else nn.Identity()
            for level in range(4))
        self.head = nn.Sequential(nn.Conv2d(f[0], f[0], 3, padding=1, bias=False),
                                  nn.BatchNorm2d(f[0]), nn.LeakyReLU(s), nn.Dropout(dropout))
        self.classifier = nn.Conv2d(f[0], num_classes, 1)
        self.apply(_glorot_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for level, stage in enumerate(self.encoder):
            x = stage(x)
            if level == len(self.encoder) - 1:
                x = self.encoder_dropout(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for stage, drop, skip in zip(self.decoder, self.decoder_dropouts, reversed(skips)):
            up = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
            x = drop(stage(torch.cat([up, skip], 1)))
        return self.classifier(self.head(x))
