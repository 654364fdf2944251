"""R-Mask R-CNN (paper 3, section III.B): torchvision's Mask R-CNN with an attention FPN,
a bottom-up path and a multi-scale mask head, each switchable for the ablation.

Pieces, all plugged into :class:`torchvision.models.detection.MaskRCNN`:

* :class:`AttentionFPN` — FPN-AM (steps 1-6): 1x1 lateral convolutions to 256 channels
  (``fpn_channels``),
  top-down 2x upsampling and element-wise addition; the merged map of every level goes
  through an attention module (CA, SA, CA-SA, SA-CA or none) and the usual 3x3 FPN
  output convolution, giving ``F2..F5``. With ``bottom_up`` the B-U-AM path (steps 1-7,
  after PANet) follows: ``N2 = F2``; ``N(x+1) = attention(F(x+1) + relu(conv3x3/2(Nx)))``.
  ``N6`` is a 2x max pooling of ``N5``. Outputs are keyed ``"0".."3", "pool"`` like
  torchvision's FPN, so the RPN and RoI heads take them unchanged.
* Anchors: one size per level, 16, 32, 64, 128, 256 on N2..N6, aspect ratios 1:2, 1:1,
  2:1 (the paper lists "2:2" too, which is 1:1 again).
* :class:`MultiScaleMaskHead` with :class:`MultiLevelRoIAlign` — our reading of the
  paper's "semantic segmentation layer": every RoI is pooled from *all* pyramid levels
  (torchvision pools it from one level picked by its size), each level gets its own 3x3
  convolution and the levels are summed (PANet's adaptive feature pooling); then a small
  encoder-decoder on the 14x14 RoI map — down to 7x7 and back — adds the forward and
  backward maps of the same resolution, before the standard 28x28 mask predictor.
  ``mask_fusion="map"`` (:class:`FusedPyramidRoIAlign`) fuses the levels before pooling
  instead: a 1x1 convolution per level on the whole map, all levels resized to the finest
  and summed, then one RoIAlign per box. Both steps are linear, so this is close to
  pooling every level and fusing with 1x1 convolutions, at a quarter of the RoIAlign
  work. On a CPU, RoIAlign's backward pass over four levels took a quarter of an R-Mask
  R-CNN training step (2.3 s against plain Mask R-CNN's 1.6 s; 1.7 s fused).

The paper does not give channel counts, where the 3x3 smoothing goes, or how the mask
head is wired; the choices above are ours. With ``attention="none"``, ``bottom_up=False``
and ``multiscale_mask_head=False`` the model is a plain Mask R-CNN with the same
backbone, anchors and image size (:func:`build_plain_maskrcnn`).

``num_classes`` counts object classes **without** the background (torchvision's
``num_classes`` is one more). Backbones trained from scratch keep ordinary (trainable)
BatchNorm; with ImageNet weights (only from the torch hub cache) BatchNorm is frozen, as
in torchvision's detection models.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.ops import MultiScaleRoIAlign, roi_align
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

from ..errors import WeightsNotFoundError
from .pretrained import LITE_WEIGHTS, wants_imagenet
from .attention import ATTENTION_KINDS, ChannelAttention, attention_modules, build_attention
import torchvision
from torchvision.ops.misc import FrozenBatchNorm2d

__all__ = ["BACKBONES", "PAPER_ANCHOR_SIZES", "PAPER_ASPECT_RATIOS", "AttentionFPN",
           "RBackbone", "MultiLevelRoIAlign", "FusedPyramidRoIAlign",
           "MultiScaleMaskHead", "MASK_FUSIONS", "backbone_body",
           "paper_anchor_generator", "cached_weights_file", "torchvision_model",
           "build_rmaskrcnn", "build_plain_maskrcnn", "attention_maps", "variant_name"]

BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101", "mobilenet_v3_large",
             "mobilenet_v3_small", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
PAPER_ANCHOR_SIZES = ((16,), (32,), (64,), (128,), (256,))
PAPER_ASPECT_RATIOS = (0.5, 1.0, 2.0)
LEVELS = ("0", "1", "2", "3")
MASK_FUSIONS = ("roi", "map")


# ----------------------------------------------------------------------------- backbone
def cached_weights_file(name: str) -> Path:
    """Where torch hub caches the default ImageNet weights of torchvision model ``name``
    (the file may not exist: bloodlib never downloads it)."""
    url = torchvision.models.get_model_weights(name).DEFAULT.url
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name


def resolve_pretrained(name: str, pretrained: Union[bool, str, None]) -> bool:
    """Whether ``name`` gets ImageNet weights, by :func:`~bloodlib.models.pretrained.
    wants_imagenet`'s rule; for torchvision networks they are at hand when their file is in
    the torch hub cache."""
    if name in LITE_WEIGHTS:
        return wants_imagenet(name, pretrained, True, "")
    cached = cached_weights_file(name)
    hint = f"put {torchvision.models.get_model_weights(name).DEFAULT.url} into {cached.parent}"
    return wants_imagenet(name, pretrained, cached.is_file(), hint)


def torchvision_model(name: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """A torchvision classification network (``resnet50``, ``vgg11`` ...), randomly
    initialised, or with ImageNet weights when ``pretrained`` — only if they are already
    in the torch hub cache (:class:`~bloodlib.errors.WeightsNotFoundError` otherwise).
    ``kwargs`` go to the torchvision builder (e.g. ``norm_layer``)."""
    builder = getattr(torchvision.models, name)
    if not pretrained:
        return builder(weights=None, **kwargs)
    cached = cached_weights_file(name)
    if not cached.is_file():
        raise WeightsNotFoundError(
            f"ImageNet weights for {name} are not cached at {cached} and bloodlib never "
            f"downloads them at run time. Download "
            f"{torchvision.models.get_model_weights(name).DEFAULT.url} into {cached.parent} "
            "yourself, use pretrained_backbone='auto' (scratch when missing) or "
            "pretrained_backbone=False (training from scratch).")
    return builder(weights=torchvision.models.get_model_weights(name).DEFAULT, **kwargs)


def backbone_body(name: str = "mobilenet_v3_large", pretrained: Union[bool, str] = False
                  ) -> tuple[nn.Module, list[int]]:
    """``(body, channels)``: a module returning ``{"0".."3"}`` feature maps at strides
    4, 8, 16 and 32 (the paper's P2..P5) and their channel counts; ``body.pretrained`` says
    whether ImageNet weights were loaded (``pretrained``: see :func:`resolve_pretrained`)."""
    if name not in BACKBONES:
        raise ValueError(f"Unknown backbone {name!r}; choose one of {BACKBONES}.")
    pretrained = resolve_pretrained(name, pretrained)
    body, channels = _backbone_body(name, pretrained)
    body.pretrained = pretrained
    return body, channels


def _backbone_body(name: str, pretrained: bool) -> tuple[nn.Module, list[int]]:
    if name.startswith("efficientnet_lite"):
        from .detection import lite_feature_body
        lite = lite_feature_body(name, pretrained)
        ends = {e: str(k) for k, e in enumerate(lite.stage_ends[1:])}
        body = IntermediateLayerGetter(lite.module, ends)
        body.normalization = lite.normalization
        return body, list(lite.channels[1:])
    frozen = {"norm_layer": FrozenBatchNorm2d} if pretrained else {}
    net = torchvision_model(name, pretrained, **frozen)
    if name.startswith("resnet"):
        body = IntermediateLayerGetter(net, {f"layer{i}": str(i - 1) for i in range(1, 5)})
        c = net.layer1[-1].conv3.out_channels if hasattr(net.layer1[-1], "conv3") \
            else net.layer1[-1].conv2.out_channels
        return body, [c, 2 * c, 4 * c, 8 * c]
    features = net.features
    # the blocks that downsample ("_is_cn"); a level ends just before the next one
    downs = [i for i, b in enumerate(features) if getattr(b, "_is_cn", False)]
    ends = [d - 1 for d in downs[1:]] + [len(features) - 1]  # strides 4, 8, 16, 32
    body = IntermediateLayerGetter(features, {str(e): str(k) for k, e in enumerate(ends)})
    channels = [_out_channels(features[e]) for e in ends]
    return body, channels


def _normalization(body: nn.Module) -> dict[str, list[float]]:
    """MaskRCNN's ``image_mean``/``image_std`` for a body (EfficientNet-Lite: 0.5 / 0.5)."""
    norm = getattr(body, "normalization", None)
    return {"image_mean": list(norm["mean"]), "image_std": list(norm["std"])} if norm else {}


def _out_channels(block: nn.Module) -> int:
    return [m for m in block.modules() if isinstance(m, nn.Conv2d)][-1].out_channels


# ----------------------------------------------------------------------------- FPN-AM / B-U-AM
class AttentionFPN(nn.Module):
    """FPN with an attention module after each top-down merge, optionally followed by the
    bottom-up augmented path with attention (module docstring). Input: ``{"0".."3"}``
    maps (strides 4..32); output ``{"0".."3", "pool"}`` with ``out_channels`` each."""

    def __init__(self, in_channels_list: Sequence[int], out_channels: int = 256,
                 attention: str = "ca_sa", bottom_up: bool = True,
                 residual_attention: bool = False,
                 attention_logit_bound: Optional[float] = None) -> None:
        super().__init__()
        if attention not in ATTENTION_KINDS:
            raise ValueError(f"Unknown attention {attention!r}; choose one of {ATTENTION_KINDS}.")
        n = len(in_channels_list)
        self.attention, self.bottom_up, self.out_channels = attention, bool(bottom_up), out_channels
        self.lateral = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels_list)
        self.fpn_attention = nn.ModuleList(
            build_attention(attention, out_channels, residual_attention, attention_logit_bound)
            for _ in range(n))
        self.output = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, padding=1)
                                    for _ in range(n))
        if self.bottom_up:
            self.down = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1)
                                      for _ in range(n - 1))
            self.bu_attention = nn.ModuleList(
                build_attention(attention, out_channels, residual_attention, attention_logit_bound)
                for _ in range(n - 1))
        self.extra = LastLevelMaxPool()
        convs = [*self.lateral, *self.output, *(self.down if self.bottom_up else [])]
        for conv in convs:  # torchvision's FPN initialisation; attention convs stay at zero
            nn.init.kaiming_uniform_(conv.weight, a=1)
            nn.init.zeros_(conv.bias)

    def top_down(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """FPN-AM: ``[F2, F3, F4, F5]`` from the backbone maps ``[P2, P3, P4, P5]``."""
        merged = self.lateral[-1](feats[-1])
        outs = [self.output[-1](self.fpn_attention[-1](merged))]
        for i in range(len(feats) - 2, -1, -1):
            lat = self.lateral[i](feats[i])
            merged = lat + F.interpolate(merged, size=lat.shape[-2:], mode="nearest")
            outs.insert(0, self.output[i](self.fpn_attention[i](merged)))
        return outs

    def bottom_up_path(self, f: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """B-U-AM: ``[N2, N3, N4, N5]`` from ``[F2, F3, F4, F5]``."""
        n = [f[0]]
        for i in range(len(f) - 1):
            down = F.relu(self.down[i](n[-1]))
            if down.shape[-2:] != f[i + 1].shape[-2:]:
                down = F.interpolate(down, size=f[i + 1].shape[-2:], mode="nearest")
            n.append(self.bu_attention[i](f[i + 1] + down))
        return n

    def forward(self, x: "OrderedDict[str, torch.Tensor]") -> "OrderedDict[str, torch.Tensor]":
        names = list(x.keys())
        outs = self.top_down(list(x.values()))
        if self.bottom_up:
            outs = self.bottom_up_path(outs)
        outs, names = self.extra(outs, list(x.values()), names)
        return OrderedDict(zip(names, outs))


class RBackbone(nn.Module):
    """Backbone body + a feature pyramid (:class:`AttentionFPN` or torchvision's
    ``FeaturePyramidNetwork``), with the ``out_channels`` torchvision expects."""

    def __init__(self, body: nn.Module, fpn: nn.Module, out_channels: int = 256) -> None:
        super().__init__()
        self.body, self.fpn = body, fpn
        self.out_channels = int(out_channels)

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        return self.fpn(self.body(x))


def paper_anchor_generator(sizes: Sequence[Sequence[int]] = PAPER_ANCHOR_SIZES,
                           ratios: Sequence[float] = PAPER_ASPECT_RATIOS) -> AnchorGenerator:
    """One anchor size per level (16..256 on N2..N6) with the same aspect ratios on each."""
    return AnchorGenerator(tuple(tuple(s) for s in sizes), (tuple(ratios),) * len(sizes))


# ----------------------------------------------------------------------------- mask head
class MultiLevelRoIAlign(nn.Module):
    """RoIAlign of every box on **every** level: (K, L, C, S, S). Scales are inferred from
    the feature and image sizes like torchvision's :class:`MultiScaleRoIAlign`."""

    def __init__(self, featmap_names: Sequence[str] = LEVELS, output_size: int = 14,
                 sampling_ratio: int = 2) -> None:
        super().__init__()
        self.featmap_names, self.output_size = list(featmap_names), int(output_size)
        self.sampling_ratio = int(sampling_ratio)

    def forward(self, x: dict[str, torch.Tensor], boxes: list[torch.Tensor],
                image_shapes: list[tuple[int, int]]) -> torch.Tensor:
        rois = _rois(boxes)
        return torch.stack([_roi_align(x[k], rois, image_shapes, self.output_size,
                                       self.sampling_ratio) for k in self.featmap_names], dim=1)


class FusedPyramidRoIAlign(nn.Module):
    """Levels fused before pooling (``mask_fusion="map"``): a 1x1 convolution per level,
    every level resized (bilinear) to the finest and summed, then one RoIAlign of every
    box on that map: (K, channels, S, S)."""

    def __init__(self, in_channels: int = 256, channels: int = 256,
                 featmap_names: Sequence[str] = LEVELS, output_size: int = 14,
                 sampling_ratio: int = 2) -> None:
        super().__init__()
        self.featmap_names, self.output_size = list(featmap_names), int(output_size)
        self.sampling_ratio = int(sampling_ratio)
        self.levels = nn.ModuleList(nn.Conv2d(in_channels, channels, 1, bias=False)
                                    for _ in self.featmap_names)
        for conv in self.levels:
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")

    def fuse(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        """The fused map at the finest level's resolution, (N, channels, H, W)."""
        size = x[self.featmap_names[0]].shape[-2:]
        fused = None
        for name, conv in zip(self.featmap_names, self.levels):
            level = conv(x[name])
            if level.shape[-2:] != size:
                level = F.interpolate(level, size=size, mode="bilinear", align_corners=False)
            fused = level if fused is None else fused + level
        return fused

    def forward(self, x: dict[str, torch.Tensor], boxes: list[torch.Tensor],
                image_shapes: list[tuple[int, int]]) -> torch.Tensor:
        return _roi_align(self.fuse(x), _rois(boxes), image_shapes, self.output_size,
                          self.sampling_ratio)


def _rois(boxes: list[torch.Tensor]) -> torch.Tensor:
    """Per-image boxes -> (K, 5) RoIs with the image index first, as ``roi_align`` takes."""
    return torch.cat([torch.cat([torch.full_like(b[:, :1], i), b], dim=1)
                      for i, b in enumerate(boxes)], dim=0)


def _roi_align(feature: torch.Tensor, rois: torch.Tensor, image_shapes: list[tuple[int, int]],
               output_size: int, sampling_ratio: int) -> torch.Tensor:
    """RoIAlign with the scale inferred from the feature and image heights."""
    height = max(s[0] for s in image_shapes)
    scale = 2.0 ** round(math.log2(feature.shape[-2] / height))
    return roi_align(feature, rois, output_size, spatial_scale=scale,
                     sampling_ratio=sampling_ratio, aligned=False)


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    """3x3 convolution, GroupNorm (scale-free, so the summed levels cannot blow up the
    mask logits of an untrained network), ReLU."""
    conv = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return nn.Sequential(conv, nn.GroupNorm(min(32, cout), cout), nn.ReLU(inplace=True))


def _convs(channels: int, n: int) -> nn.Sequential:
    """``n`` :func:`_conv` blocks at ``channels`` (one block unwrapped, so the weights of
    models saved before ``depth`` existed keep their names)."""
    if n == 1:
        return _conv(channels, channels)
    return nn.Sequential(*(_conv(channels, channels) for _ in range(n)))


class MultiScaleMaskHead(nn.Module):
    """Paper 3's "semantic segmentation layer" as we build it (module docstring): fuse the
    RoI features of all levels, then an encoder-decoder that sums the forward and
    backward maps of equal resolution. Input (K, L, C, S, S) from
    :class:`MultiLevelRoIAlign` (``fusion="roi"``: a 3x3 convolution per level, summed) or
    (K, in_channels, S, S) already fused by :class:`FusedPyramidRoIAlign`
    (``fusion="map"``: normalised); output (K, channels, S, S). ``depth`` 3x3
    convolutions at RoI resolution go on each side of the encoder-decoder (1: four in
    all; 2: six, four of them at full RoI resolution as in torchvision's mask head)."""

    def __init__(self, in_channels: int = 256, num_levels: int = 4, channels: int = 256,
                 fusion: str = "roi", depth: int = 1) -> None:
        super().__init__()
        if fusion not in MASK_FUSIONS:
            raise ValueError(f"Unknown mask fusion {fusion!r}; choose one of {MASK_FUSIONS}.")
        if int(depth) < 1:
            raise ValueError(f"Mask head depth must be >= 1 (3x3 convolutions on each side "
                             f"of the encoder-decoder), got {depth}.")
        self.fusion, self.depth = fusion, int(depth)
        if fusion == "roi":
            self.levels = nn.ModuleList(_conv(in_channels, channels) for _ in range(num_levels))
        else:
            self.fused_norm = nn.Sequential(nn.GroupNorm(min(32, in_channels), in_channels),
                                            nn.ReLU(inplace=True))
        self.enc = _convs(channels, self.depth)
        self.down = nn.Sequential(_conv(channels, channels, stride=2), _conv(channels, channels))
        self.dec = _convs(channels, self.depth)
        self.out_channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fusion == "roi":
            fused = sum(conv(x[:, i]) for i, conv in enumerate(self.levels))
        else:
            fused = self.fused_norm(x)
        forward_map = self.enc(fused)
        backward = F.interpolate(self.down(forward_map), size=forward_map.shape[-2:],
                                 mode="nearest")
        return self.dec(forward_map + backward)


# ----------------------------------------------------------------------------- builders
def _small_mask_logits(model: MaskRCNN, std: float = 0.001) -> None:
    """Start the mask logits near zero (Detectron2's init) instead of torchvision's
    kaiming init, whose logits of ~10 give an untrained model a mask loss of 3-20."""
    logits = model.roi_heads.mask_predictor.mask_fcn_logits
    nn.init.normal_(logits.weight, std=std)
    nn.init.zeros_(logits.bias)


def variant_name(attention: str = "ca_sa", bottom_up: bool = True,
                 multiscale_mask_head: bool = True) -> str:
    """Readable name of a variant, e.g. ``"FPN-CA-SA + B-U + MS head"``."""
    att = "FPN" if attention == "none" else "FPN-" + attention.upper().replace("_", "-")
    return att + (" + B-U" if bottom_up else "") + (" + MS head" if multiscale_mask_head else "")


def build_rmaskrcnn(num_classes: int, backbone: str = "mobilenet_v3_large",
                    attention: str = "ca_sa", bottom_up: bool = True,
                    multiscale_mask_head: bool = True, residual_attention: bool = False,
                    attention_logit_bound: Optional[float] = None, mask_fusion: str = "roi",
                    mask_head_depth: int = 1, pretrained_backbone: Union[bool, str] = False,
                    image_size: Optional[int] = None, fpn_channels: int = 256,
                    mask_channels: int = 256,
                    anchor_sizes: Sequence[Sequence[int]] = PAPER_ANCHOR_SIZES,
                    aspect_ratios: Sequence[float] = PAPER_ASPECT_RATIOS,
                    **maskrcnn_kwargs: Any) -> MaskRCNN:
    """R-Mask R-CNN (or one of its ablation variants) for ``num_classes`` object classes.

    ``residual_attention`` gives every attention module the ``(1 + n * softmax) / 2``
    multiplier and ``attention_logit_bound`` caps their logits at ``b * tanh(logits / b)``
    (:mod:`bloodlib.models.attention`). ``mask_fusion`` picks how the multi-scale mask
    head fuses the levels: ``"roi"`` (pool every level, a 3x3 convolution each) or
    ``"map"`` (fuse the maps, pool once; module docstring); ``mask_head_depth`` is the
    number of 3x3 convolutions on each side of its encoder-decoder (the ``depth`` of
    :class:`MultiScaleMaskHead`). ``image_size`` fixes
    torchvision's resize (``min_size = max_size = image_size``; default: torchvision's
    800/1333).
    ``fpn_channels`` / ``mask_channels`` (256 in the paper's FPN) can be lowered for CPU
    runs: the mask head's 3x3 convolutions on every RoI dominate the cost of a training
    step at small image sizes. Other keyword arguments go to
    :class:`~torchvision.models.detection.MaskRCNN` (e.g. ``rpn_post_nms_top_n_train``).
    ``pretrained_backbone`` (True, False or ``"auto"``, :func:`resolve_pretrained`) uses
    ImageNet weights only when already at hand, never downloading them;
    ``model.backbone_pretrained`` says whether they were loaded.
    """
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1 (object classes, background excluded), "
                         f"got {num_classes}.")
    if mask_fusion not in MASK_FUSIONS:
        raise ValueError(f"Unknown mask_fusion {mask_fusion!r}; choose one of {MASK_FUSIONS}.")
    body, channels = backbone_body(backbone, pretrained_backbone)
    fpn = AttentionFPN(channels, fpn_channels, attention, bottom_up, residual_attention,
                       attention_logit_bound)
    kwargs: dict[str, Any] = {"rpn_anchor_generator": paper_anchor_generator(anchor_sizes,
                                                                             aspect_ratios),
                              **_normalization(body)}
    if image_size is not None:
        kwargs.update(min_size=int(image_size), max_size=int(image_size))
    kwargs.update(maskrcnn_kwargs)
    model = MaskRCNN(RBackbone(body, fpn, fpn_channels), num_classes=int(num_classes) + 1, **kwargs)
    model.backbone_pretrained = bool(body.pretrained)
    if multiscale_mask_head:  # swapped in after construction: torchvision type-checks them
        if mask_fusion == "roi":
            pool: nn.Module = MultiLevelRoIAlign(LEVELS, 14, 2)
        else:
            pool = FusedPyramidRoIAlign(fpn_channels, mask_channels, LEVELS, 14, 2)
        fused_channels = fpn_channels if mask_fusion == "roi" else mask_channels
        model.roi_heads.mask_roi_pool = pool
        model.roi_heads.mask_head = MultiScaleMaskHead(fused_channels, len(channels),
                                                       mask_channels, mask_fusion,
                                                       mask_head_depth)
        model.roi_heads.mask_predictor = MaskRCNNPredictor(mask_channels, mask_channels,
                                                           int(num_classes) + 1)
    elif mask_channels != 256 or fpn_channels != 256:
        _plain_mask_head(model, fpn_channels, mask_channels, int(num_classes))
    _small_mask_logits(model)
    model.bloodlib_config = {"architecture": "rmaskrcnn", "backbone": backbone,
                             "attention": attention, "bottom_up": bool(bottom_up),
                             "multiscale_mask_head": bool(multiscale_mask_head),
                             "mask_fusion": mask_fusion,
                             "mask_head_depth": int(mask_head_depth),
                             "residual_attention": bool(residual_attention),
                             "attention_logit_bound": attention_logit_bound,
                             "num_classes": int(num_classes), "image_size": image_size,
                             "fpn_channels": fpn_channels, "mask_channels": mask_channels}
    return model


def _plain_mask_head(model: MaskRCNN, fpn_channels: int, mask_channels: int,
                     num_classes: int) -> None:
    """torchvision's 4-convolution mask head, at ``mask_channels``."""
    model.roi_heads.mask_head = MaskRCNNHeads(fpn_channels, [mask_channels] * 4, 1)
    model.roi_heads.mask_predictor = MaskRCNNPredictor(mask_channels, mask_channels,
                                                       num_classes + 1)


def build_plain_maskrcnn(num_classes: int, backbone: str = "mobilenet_v3_large",
                         pretrained_backbone: Union[bool, str] = False, image_size: Optional[int] = None,
                         fpn_channels: int = 256, mask_channels: int = 256,
                         anchor_sizes: Sequence[Sequence[int]] = PAPER_ANCHOR_SIZES,
                         aspect_ratios: Sequence[float] = PAPER_ASPECT_RATIOS,
                         **maskrcnn_kwargs: Any) -> MaskRCNN:
    """Plain Mask R-CNN — torchvision's own FPN, RoI pooling and mask head — with the same
    backbone, anchors and image size as :func:`build_rmaskrcnn`, for a fair baseline."""
    body, channels = backbone_body(backbone, pretrained_backbone)
    fpn = FeaturePyramidNetwork(channels, fpn_channels, extra_blocks=LastLevelMaxPool())
    kwargs: dict[str, Any] = {"rpn_anchor_generator": paper_anchor_generator(anchor_sizes,
                                                                             aspect_ratios),
                              "mask_roi_pool": MultiScaleRoIAlign(list(LEVELS), 14, 2),
                              **_normalization(body)}
    if image_size is not None:
        kwargs.update(min_size=int(image_size), max_size=int(image_size))
    kwargs.update(maskrcnn_kwargs)
    model = MaskRCNN(RBackbone(body, fpn, fpn_channels), num_classes=int(num_classes) + 1,
                     **kwargs)
    model.backbone_pretrained = bool(body.pretrained)
    _plain_mask_head(model, fpn_channels, mask_channels, int(num_classes))
    _small_mask_logits(model)
    model.bloodlib_config = {"architecture": "maskrcnn", "backbone": backbone,
                             "num_classes": int(num_classes), "image_size": image_size,
                             "fpn_channels": fpn_channels, "mask_channels": mask_channels}
    return model


@torch.no_grad()
def attention_maps(model: MaskRCNN, image: torch.Tensor) -> dict[str, torch.Tensor]:
    """Run the backbone of ``model`` on one image (float (3, H, W) in [0, 1]) and return
    the weights of every attention module: ``{module name: weights}``, channel weights
    (C,) and spatial maps (H', W'), each summing to 1."""
    was = model.training
    model.eval()
    try:
        batch, _ = model.transform([image])
        model.backbone(batch.tensors)
    finally:
        model.train(was)
    return {name: m.last_weights[0].reshape(-1) if isinstance(m, ChannelAttention)
            else m.last_weights[0, 0]
            for name, m in attention_modules(model.backbone).items() if m.last_weights is not None}
