"""RENS-GAN-style augmentation (paper 3, section III.A; DeepBCDnet's generator).

Two generators in a row — :class:`NoiseSuppressionGenerator` (noisy low-resolution image
-> clean low-resolution image) and :class:`ResolutionGenerator` (low resolution -> 2x
resolution) — a PatchGAN :class:`Discriminator` that tells original high-resolution crops
from generated ones, and a VGG :class:`FeatureExtractor` whose feature distance, added to
the adversarial loss, makes the joint generator loss.

Training pairs are made from the images themselves (:func:`degrade`): a high-resolution
crop, and the same crop at half resolution with Gaussian noise. The generator loss is
``pixel L1 + noise-stage L1 + feature_weight * VGG-feature L1 + adv_weight * adversarial``.
Its training (:func:`bloodlib.engine.gan.train_gan`) lives in the engine, on the one
training loop. :func:`augment_with_gan` then turns each training image into a new sample: degrade it,
regenerate it; the geometry is unchanged, so masks and boxes stay valid.

Differences from the paper, stated plainly: the paper trains with the Stochastic
Variance Reduced Extra-Gradient (SVRE) method; we use Adam. The VGG feature extractor has
ImageNet weights only when they are already in the torch hub cache
(``weights="auto"``); otherwise its weights are **random** (a fixed random convolutional
feature loss) — :attr:`FeatureExtractor.weights` says which. Sizes (channels, residual
blocks) are ours and small enough to train in a minute on a CPU.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import WeightsNotFoundError
from .rmaskrcnn import cached_weights_file

__all__ = ["ResidualBlock", "NoiseSuppressionGenerator", "ResolutionGenerator",
           "Discriminator", "FeatureExtractor", "RensGAN", "degrade", "random_crops",
           "augment_with_gan"]


class ResidualBlock(nn.Module):
    """conv3x3-ReLU-conv3x3 with an identity shortcut."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1),
                                  nn.ReLU(inplace=True),
                                  nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def _trunk(channels: int, blocks: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), nn.ReLU(inplace=True),
                         *(ResidualBlock(channels) for _ in range(blocks)))


class NoiseSuppressionGenerator(nn.Module):
    """Generator 1: predicts the noise of an image in [0, 1] and subtracts it (same size)."""

    def __init__(self, channels: int = 32, blocks: int = 3) -> None:
        super().__init__()
        self.net = nn.Sequential(_trunk(channels, blocks), nn.Conv2d(channels, 3, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.net(x)).clamp(0, 1)


class ResolutionGenerator(nn.Module):
    """Generator 2: 2x super-resolution (pixel shuffle) on top of a bilinear upsampling."""

    def __init__(self, channels: int = 32, blocks: int = 3) -> None:
        super().__init__()
        self.net = nn.Sequential(_trunk(channels, blocks),
                                 nn.Conv2d(channels, 4 * channels, 3, padding=1),
                                 nn.PixelShuffle(2), nn.ReLU(inplace=True),
                                 nn.Conv2d(channels, 3, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        return (up + self.net(x)).clamp(0, 1)


class Discriminator(nn.Module):
    """PatchGAN discriminator: a map of real/fake logits, one per overlapping patch."""

    def __init__(self, channels: int = 32) -> None:
        super().__init__()
        c = channels
        self.net = nn.Sequential(
            nn.Conv2d(3, c, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(c, 2 * c, 4, 2, 1), nn.BatchNorm2d(2 * c), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(2 * c, 4 * c, 4, 2, 1), nn.BatchNorm2d(4 * c),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(4 * c, 1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def _vgg11_first_blocks() -> nn.Sequential:
    """VGG-11's ``features[:5]``: conv64-ReLU-maxpool-conv128-ReLU, VGG's initialisation."""
    layers = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(inplace=True),
                           nn.MaxPool2d(2, 2), nn.Conv2d(64, 128, 3, padding=1),
                           nn.ReLU(inplace=True))
    for conv in (layers[0], layers[3]):
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(conv.bias)
    return layers


class FeatureExtractor(nn.Module):
    """Frozen VGG-11 features up to ``relu2_1`` (the first two convolution blocks).

    ``weights``: ``"auto"`` (ImageNet if cached, else random), ``"imagenet"`` (raises
    :class:`~bloodlib.errors.WeightsNotFoundError` when not cached) or ``"random"``.
    The attribute :attr:`weights` records what was actually used. Only these two blocks
    are built (and, with ImageNet weights, read from the cached VGG-11 checkpoint).
    """

    def __init__(self, weights: str = "auto", seed: int = 0) -> None:
        super().__init__()
        if weights not in ("auto", "imagenet", "random"):
            raise ValueError(f"weights must be 'auto', 'imagenet' or 'random', not {weights!r}.")
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.features = _vgg11_first_blocks()
        self.weights = "random"
        cached = cached_weights_file("vgg11")
        if weights in ("auto", "imagenet") and cached.is_file():
            state = torch.load(cached, map_location="cpu", weights_only=True)
            self.features.load_state_dict({k[len("features."):]: v for k, v in state.items()
                                           if k.startswith(("features.0.", "features.3."))})
            self.weights = "imagenet"
        elif weights == "imagenet":
            raise WeightsNotFoundError(
                f"VGG-11 ImageNet weights are not cached at {cached}; bloodlib never downloads "
                "them. Put the file there or use weights='random'.")
        self.features.eval()
        for p in self.features.parameters():
            p.requires_grad_(False)
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1))

    def train(self, mode: bool = True) -> "FeatureExtractor":
        super().train(mode)
        self.features.eval()  # always frozen
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features((x - self.mean) / self.std)


class RensGAN(nn.Module):
    """The two generators, the discriminator and the feature extractor; calling it runs
    the generators: noisy low-resolution (B, 3, h, w) -> (B, 3, 2h, 2w) in [0, 1]."""

    def __init__(self, channels: int = 32, blocks: int = 3, vgg_weights: str = "auto",
                 seed: int = 0) -> None:
        super().__init__()
        self.g_noise = NoiseSuppressionGenerator(channels, blocks)
        self.g_resolution = ResolutionGenerator(channels, blocks)
        self.discriminator = Discriminator(channels)
        self.features = FeatureExtractor(vgg_weights, seed)

    def forward(self, low_res: torch.Tensor) -> torch.Tensor:
        return self.g_resolution(self.g_noise(low_res))


def degrade(high_res: torch.Tensor, noise_std: float = 0.04,
            generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(noisy low-res, clean low-res)``: 2x area downsampling, then Gaussian noise."""
    if high_res.shape[-1] % 2 or high_res.shape[-2] % 2:
        raise ValueError(f"Image size {tuple(high_res.shape[-2:])} must be even for 2x "
                         "downsampling; crop or pad it first.")
    clean = F.avg_pool2d(high_res, 2)
    noise = torch.randn(clean.shape, generator=generator, device="cpu").to(clean.device)
    return (clean + noise_std * noise).clamp(0, 1), clean


def _to_tensor(image: np.ndarray) -> torch.Tensor:
    if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3
            and image.shape[2] == 3):
        raise ValueError("Images must be RGB uint8 numpy arrays (H, W, 3); got "
                         f"{getattr(image, 'dtype', type(image))} {getattr(image, 'shape', '')}.")
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float() / 255.0


def random_crops(images: Sequence[np.ndarray], n: int, size: int,
                 rng: np.random.Generator) -> torch.Tensor:
    """``n`` random ``size`` x ``size`` crops (float (n, 3, size, size) in [0, 1]) from
    RGB uint8 images, each at least ``size`` pixels on both sides."""
    out = []
    for _ in range(n):
        img = images[int(rng.integers(len(images)))]
        h, w = img.shape[:2]
        if h < size or w < size:
            raise ValueError(f"Image of {w}x{h} is smaller than the {size}px crop.")
        y, x = int(rng.integers(h - size + 1)), int(rng.integers(w - size + 1))
        out.append(_to_tensor(np.ascontiguousarray(img[y:y + size, x:x + size])))
    return torch.stack(out)


@torch.no_grad()
def augment_with_gan(gan: RensGAN, images: Sequence[np.ndarray], noise_std: float = 0.04,
                     seed: int = 0, device: Any = None) -> list[np.ndarray]:
    """A RENS-GAN version of each RGB uint8 image, same size: degrade it (half resolution
    plus noise) and regenerate it with the two generators. Odd sizes are edge-padded by
    one pixel for the round trip and cropped back."""
    device = torch.device(device) if device is not None else next(gan.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    was = gan.training
    gan.eval()
    out = []
    try:
        for img in images:
            x = _to_tensor(img)[None]
            h, w = x.shape[-2:]
            x = F.pad(x, (0, w % 2, 0, h % 2), mode="replicate")
            noisy, _ = degrade(x, noise_std, gen)
            y = gan(noisy.to(device))[0, :, :h, :w].cpu()
            out.append((y.permute(1, 2, 0).numpy() * 255).round().clip(0, 255).astype(np.uint8))
    finally:
        gan.train(was)
    return out
