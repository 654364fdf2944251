"""Single-cell classifiers: paper 4's plain CNN, torchvision ResNet/DenseNet, paper 1's hybrid.

``build_classifier(name, num_classes, pretrained=False, in_size=224, **kw)``:

=====================  ==========================================================================
``cnn``                :class:`PaperCNN`, paper 4's "CNN architecture for WBC classification"
                       (its Figure 3, whose drawing is lost from the text): stacked
                       Conv-BN-ReLU + max-pooling blocks, then fully connected layers
``resnet18/34/50``     torchvision ResNets (paper 4's ResNet; paper 2's backbones)
``densenet121``        torchvision DenseNet-121 (paper 3's "DCNN" classifier)
``efficientnet_lite0``  timm's EfficientNet-Lite0 (and ``_lite1``, ``_lite2``) whose ImageNet
                       weights install offline (:mod:`bloodlib.models.pretrained`)
``hybrid_<backbone>``  :class:`HybridClassifier` (paper 1's contribution 1): the backbone's
                       pooled CNN features fused with shape moments of the segmented cell
                       (:func:`shape_features`) before the classification head
=====================  ==========================================================================

Every model takes RGB images as float tensors **in [0, 1]**, shape ``(N, 3, H, W)``, and
normalises them inside (:class:`Normalize`: ImageNet mean/std, or mean 0.5 / std 0.5 for
the EfficientNet-Lite weights converted from TensorFlow; ``model.normalization`` says
which), so checkpoints record ``preprocessing = {"normalize": "unit"}`` and the shape
branch of the hybrid sees the image as it is. ``small_input`` (default: ``in_size < 128``) removes the first max-pool
of ResNets (``pool0`` of DenseNet) so that 48-96 px crops keep enough resolution.

ImageNet weights (``pretrained=True``) come through torchvision's ``weights=`` mechanism
only when the file is already in the torch hub cache (or ``allow_download=True``);
otherwise the model is trained from scratch and a :class:`UserWarning` says so. The
EfficientNet-Lite weights come from their packages and are always there.
``model.pretrained_loaded`` records which happened.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, Optional

import cv2
import numpy as np
import torch
from torch import nn
import torchvision.models as tvm

__all__ = ["build_classifier", "CLASSIFIERS", "PaperCNN", "CellClassifier", "HybridClassifier",
           "Normalize", "segment_cell", "shape_features", "shape_features_batch",
           "SHAPE_FEATURE_NAMES", "cam_layer", "weights_in_cache"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LITE_BACKBONES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
BACKBONES = ("cnn", "resnet18", "resnet34", "resnet50", "densenet121") + LITE_BACKBONES
CLASSIFIERS = BACKBONES + tuple(f"hybrid_{b}" for b in BACKBONES)
_TV_WEIGHTS = {"resnet18": "ResNet18_Weights.IMAGENET1K_V1",
               "resnet34": "ResNet34_Weights.IMAGENET1K_V1",
               "resnet50": "ResNet50_Weights.IMAGENET1K_V2",
               "densenet121": "DenseNet121_Weights.IMAGENET1K_V1"}


# ----------------------------------------------------------------------------- building blocks
class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, for inputs in [0, 1]."""

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class PaperCNN(nn.Module):
    """Paper 4's plain CNN: ``len(channels)`` blocks of Conv3x3-BN-ReLU (x ``convs_per_block``)
    + MaxPool2, global average pooling, then two fully connected layers (``hidden`` units,
    ReLU, dropout). As a backbone it returns the ``hidden``-d vector (``feature_dim``); the
    last linear layer is the classifier's head. BN and global pooling are our choices (the
    paper's Figure 3 is not in the text): they let the same net train fast at any input size."""

    def __init__(self, channels: tuple[int, ...] = (32, 64, 128, 256), convs_per_block: int = 2,
                 hidden: int = 256, dropout: float = 0.3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for cout in channels:
            for _ in range(convs_per_block):
                layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                           nn.ReLU(inplace=True)]
                cin = cout
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(cin, hidden), nn.ReLU(inplace=True),
                                nn.Dropout(dropout))
        self.feature_dim = hidden

    @property
    def last_conv(self) -> nn.Module:
        """The last ReLU of the conv stack (Grad-CAM's layer)."""
        return [m for m in self.features if isinstance(m, nn.ReLU)][-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)))


class CellClassifier(nn.Module):
    """:class:`Normalize` -> backbone (pooled feature vector) -> dropout + linear head."""

    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.normalize = Normalize()
        self.backbone = backbone
        self.feature_dim = feature_dim
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(feature_dim, num_classes))
        self.pretrained_loaded = False

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.normalize(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


class HybridClassifier(CellClassifier):
    """Paper 1's hybrid: CNN features concatenated with the cell's shape moments.

    The shape branch computes :func:`shape_features` of every input image (OpenCV, no
    gradient), standardises them with a BatchNorm and maps them through a small
    ``Linear + ReLU`` to ``shape_dim`` values; these are concatenated with the backbone's
    pooled features before the linear head.
    """

    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int,
                 dropout: float = 0.0, shape_dim: int = 32) -> None:
        super().__init__(backbone, feature_dim, num_classes, dropout)
        n = len(SHAPE_FEATURE_NAMES)
        self.shape_branch = nn.Sequential(nn.BatchNorm1d(n), nn.Linear(n, shape_dim),
                                          nn.ReLU(inplace=True))
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(feature_dim + shape_dim,
                                                                 num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = torch.from_numpy(shape_features_batch(x)).to(x.device)
        return self.head(torch.cat([self.forward_features(x), self.shape_branch(shape)], 1))


# ----------------------------------------------------------------------------- shape features
SHAPE_FEATURE_NAMES = tuple(f"hu{i}" for i in range(1, 8)) + (
    "area_fraction", "solidity", "circularity", "components", "elongation")


def segment_cell(image: np.ndarray, centre_radius: float = 0.3) -> np.ndarray:
    """Binary mask (uint8 0/1) of the stained, centred cell of an RGB uint8 crop.

    Romanowsky-stained nuclei and WBC cytoplasm are blue-violet, red cells and the
    background are not: Otsu's threshold on ``blue - green`` (median-filtered) separates
    them; an opening removes specks and only the components that reach the central disc
    (``centre_radius`` x the shorter side) are kept, so neighbouring cells drop out.
    An image without contrast in ``blue - green`` gives an empty mask.
    """
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"segment_cell expects an RGB uint8 (H, W, 3) array, got "
                         f"{img.dtype} {img.shape}.")
    stain = np.clip(img[..., 2].astype(np.int16) - img[..., 1] + 128, 0, 255).astype(np.uint8)
    stain = cv2.medianBlur(stain, 3)
    if int(stain.max()) - int(stain.min()) < 10:  # no stained object: nothing to segment
        return np.zeros(stain.shape, np.uint8)
    _, mask = cv2.threshold(stain, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    n, labels = cv2.connectedComponents(mask)
    h, w = mask.shape
    yy, xx = np.ogrid[:h, :w]
    centre = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 <= (centre_radius * min(h, w)) ** 2
    keep = np.unique(labels[centre & (mask > 0)])
    return np.isin(labels, keep[keep > 0]).astype(np.uint8)


def shape_features(image: np.ndarray) -> np.ndarray:
    """The :data:`SHAPE_FEATURE_NAMES` of the cell found by :func:`segment_cell`, float32.

    Hu's seven moment invariants (OpenCV, of the binary mask; log-scaled as
    ``-sign(h) log10 |h|``), the mask's area fraction, solidity (area / convex-hull area),
    circularity (4 pi area / perimeter^2 of the largest component), number of components
    (e.g. nuclear lobes) and elongation (1 - minor/major axis from the second moments).
    An empty mask gives zeros.
    """
    mask = segment_cell(image)
    out = np.zeros(len(SHAPE_FEATURE_NAMES), np.float32)
    area = float(mask.sum())
    if area < 3:
        return out
    m = cv2.moments(mask, binaryImage=True)
    hu = cv2.HuMoments(m).ravel()
    out[:7] = -np.sign(hu) * np.log10(np.abs(hu) + 1e-30)
    out[:7] = np.clip(out[:7], -40, 40)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    hull_area = cv2.contourArea(cv2.convexHull(np.concatenate(contours)))
    big = max(contours, key=cv2.contourArea)
    perim = cv2.arcLength(big, True)
    cov = np.array([[m["mu20"], m["mu11"]], [m["mu11"], m["mu02"]]]) / m["m00"]
    ev = np.sort(np.linalg.eigvalsh(cov))
    out[7] = area / mask.size
    out[8] = min(1.0, area / hull_area) if hull_area > 0 else 1.0
    out[9] = min(1.0, 4 * math.pi * cv2.contourArea(big) / perim ** 2) if perim > 0 else 0.0
    out[10] = len(contours)
    out[11] = 1 - math.sqrt(max(ev[0], 0) / ev[1]) if ev[1] > 0 else 0.0
    return out


def shape_features_batch(x: torch.Tensor) -> np.ndarray:
    """:func:`shape_features` of a batch of ``(N, 3, H, W)`` images in [0, 1]: ``(N, 12)``."""
    arr = (x.detach().float().clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    return np.stack([shape_features(a) for a in arr]) if len(arr) else \
        np.zeros((0, len(SHAPE_FEATURE_NAMES)), np.float32)


# ----------------------------------------------------------------------------- torchvision
def weights_in_cache(arch: str) -> Optional[Path]:
    """Path of ``arch``'s ImageNet weights file in the torch hub cache, or None."""
    from torchvision.models import get_weight
    if arch not in _TV_WEIGHTS:
        return None
    url = get_weight(_TV_WEIGHTS[arch]).url
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    return path if path.is_file() else None


def _tv_weights(arch: str, pretrained: bool, allow_download: bool) -> Any:
    """The torchvision weights enum to pass as ``weights=``, or None (with a warning)."""
    if not pretrained:
        return None
    if arch not in _TV_WEIGHTS:
        warnings.warn(f"{arch!r} has no ImageNet weights; training from scratch.", stacklevel=3)
        return None
    if weights_in_cache(arch) is None and not allow_download:
        warnings.warn(f"ImageNet weights for {arch} are not in the torch hub cache "
                      f"({torch.hub.get_dir()}/checkpoints); the model is trained FROM SCRATCH. "
                      "Pass allow_download=True (needs internet) or copy the file there.",
                      stacklevel=3)
        return None
    from torchvision.models import get_weight
    return get_weight(_TV_WEIGHTS[arch])


def _backbone(arch: str, pretrained: bool, small_input: bool, allow_download: bool,
              width: float) -> tuple[nn.Module, int, bool]:
    """(backbone returning pooled features, feature dimension, ImageNet weights loaded)."""
    if arch == "cnn":
        if pretrained:
            warnings.warn("The plain CNN has no ImageNet weights; training from scratch.",
                          stacklevel=3)
        net = PaperCNN(tuple(max(8, int(round(c * width))) for c in (32, 64, 128, 256)))
        return net, net.feature_dim, False
    if arch in LITE_BACKBONES:
        from .pretrained import efficientnet_lite
        net = efficientnet_lite(arch, pretrained=bool(pretrained), num_classes=0)
        return net, int(net.num_features), bool(pretrained)
    weights = _tv_weights(arch, pretrained, allow_download)
    net = getattr(tvm, arch)(weights=weights)
    if arch.startswith("resnet"):
        dim = net.fc.in_features
        net.fc = nn.Identity()
        if small_input:
            net.maxpool = nn.Identity()
    elif arch == "densenet121":
        dim = net.classifier.in_features
        net.classifier = nn.Identity()
        if small_input:
            net.features.pool0 = nn.Identity()
    else:
        raise ValueError(f"Unknown backbone {arch!r}; choose one of {BACKBONES}.")
    return net, dim, weights is not None


def build_classifier(name: str, num_classes: int, pretrained: bool = False, in_size: int = 224,
                     small_input: Optional[bool] = None, dropout: float = 0.0,
                     width: float = 1.0, allow_download: bool = False) -> CellClassifier:
    """A classifier from :data:`CLASSIFIERS` (see the module docstring).

    ``in_size`` is the training input size; ``small_input`` defaults to ``in_size < 128``.
    ``width`` scales the plain CNN's channels (torchvision models ignore it).
    """
    if name not in CLASSIFIERS:
        raise ValueError(f"Unknown classifier {name!r}; choose one of {CLASSIFIERS}.")
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}.")
    small = in_size < 128 if small_input is None else bool(small_input)
    hybrid = name.startswith("hybrid_")
    arch = name.removeprefix("hybrid_")
    backbone, dim, loaded = _backbone(arch, pretrained, small, allow_download, width)
    cls = HybridClassifier if hybrid else CellClassifier
    model = cls(backbone, dim, num_classes, dropout)
    norm = getattr(backbone, "normalization", None)
    if norm is not None:
        model.normalize = Normalize(norm["mean"], norm["std"])
    model.pretrained_loaded = loaded
    model.normalization = {"mean": tuple(model.normalize.mean.flatten().tolist()),
                           "std": tuple(model.normalize.std.flatten().tolist())}
    return model


def cam_layer(model: nn.Module) -> nn.Module:
    """The layer whose activations Grad-CAM uses: the last convolutional stage."""
    net = getattr(model, "backbone", model)
    if isinstance(net, PaperCNN):
        return net.last_conv
    if hasattr(net, "layer4"):
        return net.layer4[-1]
    if hasattr(net, "features") and hasattr(net.features, "norm5"):
        return net.features.norm5
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"{type(model).__name__} has no convolution for Grad-CAM.")
    return convs[-1]
