"""Faster R-CNN, Mask R-CNN and MCNet on torchvision's detection models, any backbone.

:func:`build_detector` puts a feature pyramid (torchvision's ``BackboneWithFPN``, whose
``IntermediateLayerGetter`` taps the backbone's stage outputs) on one of
:data:`BACKBONES` and hands it to torchvision's ``FasterRCNN`` / ``MaskRCNN`` (or
:class:`bloodlib.models.mcnet.MCNet`). The RPN, RoIAlign, box/mask heads and NMS are
torchvision's own.

* Paper 2's seven backbones (ResNet50/101/152, ResNeXt50, VGG19, DenseNet121/169) and a
  light one for CPUs (``mobilenet_v3_large``).
* The pyramid taps the last layer of each stride-4/8/16/32 stage (C2..C5; ``levels``
  picks a subset) plus a max-pooled level. Anchors default to one size per level,
  4x its stride (16 px at stride 4 ... 256 px on the pooled level): blood cells are
  small and round. ``anchor_sizes``/``aspect_ratios`` override them.
* Pretrained ImageNet weights are used only when their file is already in the torch
  hub cache (``pretrained_backbone=True`` raises :class:`WeightsNotFoundError`
  otherwise, ``"auto"`` falls back to random weights with a warning); nothing is
  downloaded. With pretrained weights, batch norms are frozen (torchvision's
  convention); from scratch they train.
* :func:`set_trainable_stage` implements paper 1's staged schedule: ``"heads"`` (the
  backbone body frozen), ``"4+"`` (ResNet stage 4 = ``layer3`` and later trainable),
  ``"all"``.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
from torch import nn

from ..errors import WeightsNotFoundError
from .pretrained import efficientnet_lite, wants_imagenet
import torchvision.models as tvm
from torchvision.ops.misc import FrozenBatchNorm2d
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor

__all__ = ["BACKBONES", "PAPER2_BACKBONES", "DETECTORS", "TRAINABLE_STAGES", "build_backbone",
           "build_detector", "cached_weights", "set_trainable_stage", "detector_info",
           "default_anchor_sizes"]

PAPER2_BACKBONES = ("resnet50", "resnet101", "resnet152", "resnext50_32x4d", "vgg19",
                    "densenet121", "densenet169")
LITE_BACKBONES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
BACKBONES = PAPER2_BACKBONES + ("mobilenet_v3_large",) + LITE_BACKBONES
DETECTORS = ("faster_rcnn", "mask_rcnn", "mcnet")
TRAINABLE_STAGES = ("heads", "4+", "3+", "5+", "all")
#: Paper 2's spelling of each backbone (tables and figures).
BACKBONE_LABELS = {"resnet50": "ResNet50", "resnet101": "ResNet101", "resnet152": "ResNet152",
                   "resnext50_32x4d": "ResNeXt50", "vgg19": "VGG19",
                   "densenet121": "DenseNet121", "densenet169": "DenseNet169",
                   "mobilenet_v3_large": "MobileNetV3-L", "efficientnet_lite0": "EfficientNet-Lite0",
                   "efficientnet_lite1": "EfficientNet-Lite1",
                   "efficientnet_lite2": "EfficientNet-Lite2"}
_WEIGHTS = {"resnet50": "ResNet50_Weights", "resnet101": "ResNet101_Weights",
            "resnet152": "ResNet152_Weights", "resnext50_32x4d": "ResNeXt50_32X4D_Weights",
            "vgg19": "VGG19_Weights", "densenet121": "DenseNet121_Weights",
            "densenet169": "DenseNet169_Weights", "mobilenet_v3_large": "MobileNet_V3_Large_Weights"}
_RESNETS = ("resnet50", "resnet101", "resnet152", "resnext50_32x4d")


# ----------------------------------------------------------------------------- weights
def cached_weights(backbone: str) -> Optional[Any]:
    """The torchvision ImageNet weights enum of ``backbone`` whose file is already in the
    torch hub cache (``$TORCH_HOME/hub/checkpoints``), or None. Never downloads."""
    _check_backbone(backbone)
    enum = getattr(tvm, _WEIGHTS[backbone])
    ckpt_dir = Path(torch.hub.get_dir()) / "checkpoints"
    for w in enum:  # IMAGENET1K_V1 first, as torchvision's detection models use
        if (ckpt_dir / os.path.basename(w.url)).is_file():
            return w
    return None


def _resolve_weights(backbone: str, pretrained: Union[bool, str]) -> Optional[Any]:
    """torchvision's weights enum for ``backbone`` by :func:`~bloodlib.models.pretrained.
    wants_imagenet`'s rule, or None (random weights, or a Lite backbone: its own package)."""
    if backbone in LITE_BACKBONES:
        wants_imagenet(backbone, pretrained, True, "")  # validates the value
        return None
    w = cached_weights(backbone)
    where = Path(torch.hub.get_dir()) / "checkpoints"
    hint = (f"put the torchvision weights file (torchvision.models.{_WEIGHTS[backbone]}) "
            f"into the torch hub cache ({where})")
    if not wants_imagenet(backbone, pretrained, w is not None, hint):
        return None
    if w is None:
        raise WeightsNotFoundError(f"No ImageNet weights for {backbone!r}: {hint} to "
                                   "fine-tune, or train from scratch (pretrained=False).")
    return w


def _check_backbone(name: str) -> None:
    if name not in BACKBONES:
        raise ValueError(f"Unknown backbone {name!r}; choose one of {list(BACKBONES)}.")


# ----------------------------------------------------------------------------- backbones
@dataclass
class _Body:
    module: nn.Module               # what IntermediateLayerGetter walks
    stage_ends: list[str]           # child name ending stages C1..C5 (stride 2..32)
    channels: list[int]             # output channels at each stage end
    pretrained: bool


def _freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d by a FrozenBatchNorm2d holding its statistics."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            frozen.weight.copy_(child.weight.detach())
            frozen.bias.copy_(child.bias.detach())
            frozen.running_mean.copy_(child.running_mean)
            frozen.running_var.copy_(child.running_var)
            setattr(module, name, frozen)
        else:
            _freeze_batchnorm(child)
    return module


@torch.no_grad()
def _sequential_stages(features: nn.Sequential) -> tuple[list[str], list[int]]:
    """Names and channels of the last child at each stride 2, 4, 8, 16, 32 (probed once
    with a 128x128 input)."""
    was = features.training
    features.eval()
    x = torch.zeros(1, 3, 128, 128)
    last: dict[int, tuple[str, int]] = {}
    for name, child in features.named_children():
        x = child(x)
        stride = 128 // x.shape[-1]
        last[stride] = (name, int(x.shape[1]))
    features.train(was)
    try:
        ends = [last[s] for s in (2, 4, 8, 16, 32)]
    except KeyError as err:
        raise ValueError(f"Backbone features do not reach stride {err}; cannot build a pyramid.")
    return [n for n, _ in ends], [c for _, c in ends]


def lite_feature_body(name: str, pretrained: bool) -> _Body:
    """EfficientNet-Lite as a flat Sequential (stem, then its seven block stages), with the
    packaged ImageNet weights and frozen batch norm (timm's, which keeps the fused
    activation) when ``pretrained``, so small batches do not disturb the statistics."""
    from timm.layers import freeze_batch_norm_2d

    net = efficientnet_lite(name, pretrained=pretrained, num_classes=0)
    features = nn.Sequential(OrderedDict(
        [("stem", nn.Sequential(net.conv_stem, net.bn1))]
        + [(f"stage{i}", stage) for i, stage in enumerate(net.blocks)]))
    if pretrained:
        features = freeze_batch_norm_2d(features)
    ends, chans = _sequential_stages(features)
    body = _Body(features, ends, chans, bool(pretrained))
    body.normalization = net.normalization
    return body


def _make_body(name: str, pretrained: Union[bool, str]) -> _Body:
    if name in LITE_BACKBONES:
        return lite_feature_body(name, pretrained not in (False, None, "none"))
    weights = _resolve_weights(name, pretrained)
    trained = weights is not None
    if name in _RESNETS:
        net = getattr(tvm, name)(weights=weights,
                                 norm_layer=FrozenBatchNorm2d if trained else nn.BatchNorm2d)
        chans = [64] + [getattr(net, f"layer{i}")[-1].conv3.out_channels for i in range(1, 5)]
        return _Body(net, ["relu", "layer1", "layer2", "layer3", "layer4"], chans, trained)
    if name == "mobilenet_v3_large":
        net = tvm.mobilenet_v3_large(weights=weights,
                                     norm_layer=FrozenBatchNorm2d if trained else None)
        features = net.features
    elif name == "vgg19" and not trained:  # only the conv layers (skip 120M FC weights)
        from torchvision.models.vgg import cfgs, make_layers
        features = make_layers(cfgs["E"], batch_norm=False)
    else:  # vgg19, densenet121, densenet169: their `features` Sequential
        features = getattr(tvm, name)(weights=weights).features
        if trained:
            _freeze_batchnorm(features)
    ends, chans = _sequential_stages(features)
    return _Body(features, ends, chans, trained)


def build_backbone(name: str = "resnet50", levels: Sequence[int] = (2, 3, 4, 5),
                   fpn_channels: int = 256, pretrained: Union[bool, str] = False,
                   trainable_layers: Optional[int] = None) -> nn.Module:
    """``BackboneWithFPN`` on backbone ``name``: pyramid levels C``levels`` (2 = stride 4
    ... 5 = stride 32) plus a max-pooled level, ``fpn_channels`` channels each.

    ``trainable_layers`` (0-5) freezes all but the last ones of the five stages, as
    torchvision does; None = all trainable from scratch, 3 with pretrained weights.
    The returned module carries ``stage_names`` (the body's child names per stage),
    ``strides`` (per output level), ``backbone_name`` and ``pretrained``.
    """
    _check_backbone(name)
    levels = sorted(set(int(l) for l in levels))
    if not levels or levels[0] < 2 or levels[-1] > 5:
        raise ValueError(f"levels must be a subset of (2, 3, 4, 5) (C2..C5), got {levels}.")
    body = _make_body(name, pretrained)
    return_layers = {body.stage_ends[l - 1]: str(i) for i, l in enumerate(levels)}
    model = BackboneWithFPN(body.module, return_layers, [body.channels[l - 1] for l in levels],
                            fpn_channels, extra_blocks=LastLevelMaxPool())
    kept = list(model.body.keys())
    bounds = [kept.index(e) if e in kept else len(kept) - 1 for e in body.stage_ends]
    model.stage_names = [kept[(bounds[i - 1] + 1 if i else 0):bounds[i] + 1]
                         for i in range(5)]
    model.strides = [2 ** l for l in levels] + [2 ** (levels[-1] + 1)]
    model.backbone_name, model.pretrained = name, body.pretrained
    model.normalization = getattr(body, "normalization", {"mean": (0.485, 0.456, 0.406),
                                                          "std": (0.229, 0.224, 0.225)})
    if trainable_layers is None:
        trainable_layers = 3 if body.pretrained else 5
    if not 0 <= trainable_layers <= 5:
        raise ValueError(f"trainable_layers must be in 0..5, got {trainable_layers}.")
    _set_body_trainable(model, 5 - trainable_layers)
    return model


def _set_body_trainable(backbone: nn.Module, first_trainable_stage: int) -> None:
    """Freeze the body's stages before index ``first_trainable_stage`` (0-based)."""
    for i, names in enumerate(backbone.stage_names):
        for n in names:
            for p in backbone.body[n].parameters():
                p.requires_grad_(i >= first_trainable_stage)


def set_trainable_stage(model: nn.Module, stage: str) -> dict[str, int]:
    """Paper 1's staged fine-tuning: ``"heads"`` freezes the whole backbone body (the FPN,
    RPN and RoI heads train), ``"3+"``/``"4+"``/``"5+"`` train from that ResNet stage
    (4+ = ``layer3``, ``layer4``; the same depth on the other backbones), ``"all"``
    trains everything. Returns trainable/frozen parameter counts."""
    if stage not in TRAINABLE_STAGES:
        raise ValueError(f"Unknown stage {stage!r}; choose one of {TRAINABLE_STAGES}.")
    backbone = model.backbone
    first = {"heads": 5, "3+": 2, "4+": 3, "5+": 4, "all": 0}[stage]
    for p in model.parameters():
        p.requires_grad_(True)
    _set_body_trainable(backbone, first)
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in model.parameters())
    return {"trainable": n_train, "frozen": n_all - n_train}


# ----------------------------------------------------------------------------- detectors
def default_anchor_sizes(strides: Sequence[int]) -> tuple[tuple[int, ...], ...]:
    """One anchor size per pyramid level, 4x its stride (16 px at stride 4)."""
    return tuple((4 * int(s),) for s in strides)


def build_detector(kind: str = "faster_rcnn", backbone: str = "resnet50", num_classes: int = 4,
                   *, anchor_sizes: Optional[Sequence[Sequence[int]]] = None,
                   aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0), min_size: int = 800,
                   max_size: int = 1333, trainable_layers: Optional[int] = None,
                   pretrained_backbone: Union[bool, str] = False,
                   levels: Sequence[int] = (2, 3, 4, 5), fpn_channels: int = 256,
                   mask_head_layers: Sequence[int] = (256, 256, 256, 256),
                   representation_size: int = 1024, mask_iou: bool = True,
                   mask_iou_channels: int = 256, mask_iou_fc: int = 1024,
                   mask_iou_loss_weight: float = 1.0, **kwargs: Any) -> nn.Module:
    """A torchvision detector of ``kind`` ("faster_rcnn", "mask_rcnn", "mcnet") on
    ``backbone`` with ``num_classes`` classes **including background**.

    Images are resized by the model so that the short side is ``min_size`` (long side at
    most ``max_size``) and outputs are mapped back to the input's pixels. Further
    keyword arguments go to torchvision's ``FasterRCNN``/``MaskRCNN`` (e.g.
    ``box_score_thresh``, ``box_detections_per_img``, ``box_batch_size_per_image``).
    ``mask_head_layers`` sets the mask head's conv widths (torchvision: four of 256);
    ``representation_size`` the box head's MLP width. For ``"mcnet"``, ``mask_iou``
    switches the mask-IoU head on or off (the ablation) and ``mask_iou_*`` size it.
    The model carries ``detector_info(model)``-readable build arguments.
    """

    if kind not in DETECTORS:
        raise ValueError(f"Unknown detector {kind!r}; choose one of {list(DETECTORS)}.")
    if num_classes < 2:
        raise ValueError(f"num_classes counts the background too, so it must be >= 2, "
                         f"got {num_classes}.")
    body = build_backbone(backbone, levels, fpn_channels, pretrained_backbone, trainable_layers)
    n_maps = len(body.strides)
    sizes = tuple(tuple(int(s) for s in a) for a in anchor_sizes) if anchor_sizes is not None \
        else default_anchor_sizes(body.strides)
    if len(sizes) != n_maps:
        raise ValueError(f"anchor_sizes has {len(sizes)} levels but the pyramid has {n_maps} "
                         f"(strides {body.strides}); give one tuple of sizes per level.")
    ratios = (tuple(float(r) for r in aspect_ratios),) * n_maps
    anchors = AnchorGenerator(sizes, ratios)
    box_head = TwoMLPHead(fpn_channels * 7 * 7, representation_size)
    norm = {"image_mean": list(body.normalization["mean"]),
            "image_std": list(body.normalization["std"])}
    common = dict(min_size=min_size, max_size=max_size, rpn_anchor_generator=anchors,
                  box_head=box_head, **{**norm, **kwargs})
    if kind == "faster_rcnn":
        from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
        model = FasterRCNN(body, box_predictor=FastRCNNPredictor(representation_size, num_classes),
                           **common)
    else:
        layers = tuple(int(c) for c in mask_head_layers)
        heads = dict(mask_head=MaskRCNNHeads(fpn_channels, layers, 1),
                     mask_predictor=MaskRCNNPredictor(layers[-1], layers[-1], num_classes))
        from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
        common["box_predictor"] = FastRCNNPredictor(representation_size, num_classes)
        if kind == "mask_rcnn":
            model = MaskRCNN(body, **heads, **common)
        else:
            from .mcnet import MCNet
            model = MCNet(body, mask_iou=mask_iou, mask_iou_channels=mask_iou_channels,
                          mask_iou_fc=mask_iou_fc, mask_iou_loss_weight=mask_iou_loss_weight,
                          **heads, **common)
    model.bloodlib_build = {
        "kind": kind, "backbone": backbone, "num_classes": int(num_classes),
        "anchor_sizes": [list(a) for a in sizes], "aspect_ratios": list(ratios[0]),
        "min_size": int(min_size), "max_size": int(max_size), "levels": list(levels),
        "fpn_channels": int(fpn_channels), "mask_head_layers": list(mask_head_layers),
        "representation_size": int(representation_size), "mask_iou": bool(mask_iou),
        "mask_iou_channels": int(mask_iou_channels), "mask_iou_fc": int(mask_iou_fc),
        "trainable_layers": trainable_layers, "pretrained_backbone": False,
        **{k: v for k, v in kwargs.items() if isinstance(v, (int, float, str, bool))}}
    model.backbone_pretrained = bool(body.pretrained)
    model.normalization = {"mean": list(model.transform.image_mean),
                           "std": list(model.transform.image_std)}
    return model


def detector_info(model: nn.Module) -> dict[str, Any]:
    """JSON-able arguments that rebuild ``model`` with :func:`build_detector` (weights
    not included: ``pretrained_backbone`` is False, the checkpoint holds them), plus
    whether the backbone started from ImageNet weights."""
    build = getattr(model, "bloodlib_build", None)
    if build is None:
        raise ValueError("This model was not made by bloodlib.models.detection.build_detector.")
    return dict(build)
