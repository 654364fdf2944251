"""Registry of semantic-segmentation models (paper 5's comparison and paper 4's Table 5).

``build_segmentation_model(name, num_classes, in_channels=3, width=1.0, **kw)``:

=================  ==========================================================================
``unet_relu``      :class:`UNet`, ReLU, ``base_channels = 64 * width``
``unet_leaky``     :class:`UNet`, LeakyReLU (``negative_slope`` kw)
``wcsegnet``       :class:`WCSegNet` (paper 5), filters ``64..1024 * width``
``resunet``        classic residual U-Net (Zhang, Liu & Wang 2018, "Road extraction by deep
                   residual U-Net": pre-activation residual units, 3 stride-2 downsamplings,
                   64/128/256/512 * width). Paper 4 cites ResUNet without details; this is
                   the model the name usually means and it scales with ``width``. Pass
                   ``encoder_name="resnet34"`` (or any smp encoder) to get instead a U-Net
                   with a ResNet encoder from segmentation-models-pytorch.
``deeplabv3plus``  smp DeepLabV3+ (``encoder_name`` kw, default resnet34, random weights);
                   ``width`` scales only the decoder's 256 channels
``cbam_dc_unet``   :class:`UNet` with CBAM after every stage and a dilated (1, 2, 4)
                   bottleneck (paper 4's model, whose paper gives no further detail)
``lite_unet``      smp U-Net on timm's EfficientNet-Lite encoder (``encoder`` kw:
                   ``efficientnet_lite0/1/2``), with its ImageNet weights when
                   ``pretrained=True`` (from the offline packages, see
                   :mod:`bloodlib.models.pretrained`); the encoder's normalisation (mean
                   0.5, std 0.5) is applied inside, so inputs stay in [0, 1]; ``width``
                   scales the decoder's 256..16 channels
=================  ==========================================================================

Nothing is ever downloaded (smp's ``encoder_weights=None``). smp models are wrapped in
:class:`PadToMultiple` so that any input size (e.g. 120x120) works.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .unet import UNet
from .wcsegnet import WCSegNet
from .pretrained import efficientnet_lite, LITE_WEIGHTS

__all__ = ["build_segmentation_model", "SEGMENTATION_MODELS", "ResUNet", "PadToMultiple",
           "NormalizedInput", "count_parameters", "model_summary"]


class PadToMultiple(nn.Module):
    """Pad the input (edge replicate) to a multiple of ``multiple``; crop the output back."""

    def __init__(self, model: nn.Module, multiple: int = 32) -> None:
        super().__init__()
        self.model, self.multiple = model, multiple

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ph, pw = (-h) % self.multiple, (-w) % self.multiple
        if ph or pw:
            x = F.pad(x, [0, pw, 0, ph], mode="replicate")
        return self.model(x)[..., :h, :w]


class _ResidualUnit(nn.Module):
    """Pre-activation residual unit: (BN-ReLU-conv3x3) x 2 + 1x1-conv/BN shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1, first: bool = False) -> None:
        super().__init__()
        pre = [] if first else [nn.BatchNorm2d(cin), nn.ReLU(inplace=True)]
        self.body = nn.Sequential(*pre, nn.Conv2d(cin, cout, 3, stride, 1),
                                  nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                                  nn.Conv2d(cout, cout, 3, 1, 1))
        self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.shortcut(x)


class ResUNet(nn.Module):
    """Residual U-Net (Zhang et al., 2018) for any input size; returns logits."""

    def __init__(self, in_channels: int = 3, num_classes: int = 2,
                 filters: Sequence[int] = (64, 128, 256, 512)) -> None:
        super().__init__()
        f = list(filters)
        self.encoder = nn.ModuleList(
            [_ResidualUnit(in_channels, f[0], 1, first=True)]
            + [_ResidualUnit(f[i], f[i + 1], 2) for i in range(len(f) - 1)])
        self.decoder = nn.ModuleList(_ResidualUnit(f[i + 1] + f[i], f[i])
                                     for i in reversed(range(len(f) - 1)))
        self.head = nn.Conv2d(f[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for unit in self.encoder:
            x = unit(x)
            skips.append(x)
        for unit, skip in zip(self.decoder, reversed(skips[:-1])):
            up = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = unit(torch.cat([up, skip], 1))
        return self.head(x)


def _ch(base: int, width: float) -> int:
    return max(1, int(round(base * width)))


def _unet(activation: str) -> Callable[..., nn.Module]:
    def build(num_classes: int, in_channels: int, width: float, **kw: Any) -> nn.Module:
        return UNet(in_channels, num_classes, base_channels=_ch(64, width),
                    activation=activation, **kw)
    return build


def _wcsegnet(num_classes: int, in_channels: int, width: float, **kw: Any) -> nn.Module:
    return WCSegNet(in_channels, num_classes, width=width, **kw)


def _cbam_dc_unet(num_classes: int, in_channels: int, width: float, **kw: Any) -> nn.Module:
    kw.setdefault("dilations", (1, 2, 4))
    return UNet(in_channels, num_classes, base_channels=_ch(64, width), attention="cbam", **kw)


def _resunet(num_classes: int, in_channels: int, width: float, **kw: Any) -> nn.Module:
    if "encoder_name" not in kw:
        return ResUNet(in_channels, num_classes, [_ch(c, width) for c in (64, 128, 256, 512)])
    import segmentation_models_pytorch as smp  # heavy import (timm): only when needed
    model = smp.Unet(in_channels=in_channels, classes=num_classes, encoder_weights=None, **kw)
    return PadToMultiple(model, 32)


def _deeplabv3plus(num_classes: int, in_channels: int, width: float, **kw: Any) -> nn.Module:
    import segmentation_models_pytorch as smp  # heavy import (timm): only when needed
    kw.setdefault("encoder_name", "resnet34")
    kw.setdefault("decoder_channels", _ch(256, width))
    model = smp.DeepLabV3Plus(in_channels=in_channels, classes=num_classes,
                              encoder_weights=None, **kw)
    return PadToMultiple(model, 32)


class NormalizedInput(nn.Module):
    """``model((x - mean) / std)`` for inputs in [0, 1]; ``normalization`` records both."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.normalization = {"mean": tuple(mean), "std": tuple(std)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)


def _lite_unet(num_classes: int, in_channels: int, width: float, encoder: str = "efficientnet_lite0",
               pretrained: bool = False, **kw: Any) -> nn.Module:
    import segmentation_models_pytorch as smp  # heavy import (timm): only when needed

    if encoder not in LITE_WEIGHTS:
        raise ValueError(f"encoder must be one of {list(LITE_WEIGHTS)}, got {encoder!r}.")
    if in_channels != 3:
        raise ValueError("lite_unet takes RGB images (in_channels=3).")
    kw.setdefault("decoder_channels", tuple(_ch(c, width) for c in (256, 128, 64, 32, 16)))
    model = smp.Unet(encoder_name=f"tu-{LITE_WEIGHTS[encoder].timm_name}", encoder_weights=None,
                     in_channels=3, classes=num_classes, **kw)
    source = efficientnet_lite(encoder, pretrained=pretrained, features_only=True,
                               out_indices=tuple(model.encoder.model.feature_info.out_indices))
    if pretrained:
        model.encoder.model.load_state_dict(source.state_dict())
    wrapped = NormalizedInput(PadToMultiple(model, 32), source.normalization["mean"],
                              source.normalization["std"])
    wrapped.pretrained_loaded = bool(pretrained)
    return wrapped


SEGMENTATION_MODELS: dict[str, Callable[..., nn.Module]] = {
    "unet_relu": _unet("relu"),
    "unet_leaky": _unet("leaky_relu"),
    "wcsegnet": _wcsegnet,
    "resunet": _resunet,
    "deeplabv3plus": _deeplabv3plus,
    "cbam_dc_unet": _cbam_dc_unet,
    "lite_unet": _lite_unet,
}


def build_segmentation_model(name: str, num_classes: int, in_channels: int = 3,
                             width: float = 1.0, **kw: Any) -> nn.Module:
    """A freshly initialised model returning logits ``(N, num_classes, H, W)``.

    ``width`` scales channel counts (1.0 = the papers' sizes; 0.25 for a CPU);
    ``kw`` goes to the model's constructor (e.g. ``negative_slope``, ``dropout``).
    ``encoder_weights`` is forced to None: nothing is ever downloaded.
    """
    if name not in SEGMENTATION_MODELS:
        raise ValueError(f"Unknown segmentation model {name!r}; "
                         f"valid names: {sorted(SEGMENTATION_MODELS)}.")
    if kw.pop("encoder_weights", None) is not None:
        raise ValueError("Pretrained weights cannot be downloaded here; "
                         "leave encoder_weights=None.")
    return SEGMENTATION_MODELS[name](num_classes, in_channels, width, **kw)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all, or only those with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _shape(out: Any) -> str:
    if isinstance(out, torch.Tensor):
        return "x".join(str(s) for s in out.shape)
    if isinstance(out, (list, tuple)) and out:
        return _shape(out[0]) + ("+" if len(out) > 1 else "")
    return "-"


def _selected(model: nn.Module, depth: int | None) -> list[tuple[str, nn.Module]]:
    """Leaf modules, or modules at ``depth`` (and shallower leaves)."""
    chosen = []
    for name, m in model.named_modules():
        if not name:
            continue
        level, leaf = name.count(".") + 1, not any(True for _ in m.children())
        if (depth is None and leaf) or (depth is not None and (level == depth
                                                               or (leaf and level < depth))):
            chosen.append((name, m))
    return chosen


def model_summary(model: nn.Module, input_size: Sequence[int], depth: int | None = None) -> str:
    """Table of modules (leaves, or those at ``depth``): output shape and parameters.

    ``input_size`` is ``(C, H, W)`` or ``(N, C, H, W)``; one forward pass without
    gradients runs on the model's device, in eval mode (the mode is restored).
    """
    size = tuple(input_size) if len(input_size) == 4 else (1, *input_size)
    mods = _selected(model, depth)
    shapes: dict[str, str] = {}
    hooks = [m.register_forward_hook(lambda _m, _i, o, n=n: shapes.__setitem__(n, _shape(o)))
             for n, m in mods]
    param = next(model.parameters(), None)
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            out = model(torch.zeros(size, device=param.device if param is not None else "cpu"))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    width = max([len(n) for n, _ in mods] + [6])
    lines = [f"{'module':<{width}}  {'type':<18} {'output':>18} {'params':>11}"]
    for n, m in mods:
        lines.append(f"{n:<{width}}  {type(m).__name__:<18} {shapes.get(n, '-'):>18} "
                     f"{count_parameters(m):>11,}")
    lines.append(f"input {'x'.join(map(str, size))} -> output {_shape(out)}; "
                 f"total params {count_parameters(model):,} "
                 f"(trainable {count_parameters(model, True):,})")
    return "\n".join(lines)
