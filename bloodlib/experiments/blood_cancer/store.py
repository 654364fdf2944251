"""Paper 3's models in the model store: save and load with the course's metadata."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any, Mapping

from torch import nn

from ...engine.checkpoint import save_checkpoint
from ...errors import ModelFormatError
from ...models.rmaskrcnn import build_plain_maskrcnn, build_rmaskrcnn
from ...inference.store import read_task_checkpoint, rebuild_model
from ..configs import BloodCancerConfig
from .settings import CELL
from .evaluate import finite


def save_model(model: nn.Module, path: Any, settings: BloodCancerConfig, metrics: Mapping[str, float],
               training_data: str) -> Path:
    """Save an R-Mask R-CNN / Mask R-CNN checkpoint with the course's model-store ``meta``
    (task "detect"; ``architecture_kwargs`` rebuild it, see :func:`load_model`): images go
    in as RGB in [0, 1] and the model applies its backbone's normalisation
    (``model_normalization``: ImageNet's, or 0.5 / 0.5 for EfficientNet-Lite)."""
    cfg = dict(getattr(model, "bloodlib_config", {}))
    return save_checkpoint(path, model, meta={
        "task": "detect", "architecture": cfg.get("architecture", "rmaskrcnn"),
        "architecture_kwargs": {k: v for k, v in cfg.items() if k != "architecture"},
        "classes": [CELL], "input_size": int(settings.image_size),
        "preprocessing": {"clahe": False, "stain": None, "normalize": "unit",
                          "model_normalization": {"mean": list(model.transform.image_mean),
                                                  "std": list(model.transform.image_std)}},
        "pretrained_backbone": bool(getattr(model, "backbone_pretrained", False)),
        "training_data": training_data, "metrics": finite(metrics),
        "created": date.today().isoformat()})


def load_model(path: Any) -> nn.Module:
    """A Mask R-CNN / R-Mask R-CNN saved by :func:`save_model`, rebuilt from its ``meta``
    (through the model store's checks) and in eval mode."""
    what = "a Mask R-CNN / R-Mask R-CNN"
    ckpt, meta = read_task_checkpoint(path, "detect", what)
    build = {"rmaskrcnn": build_rmaskrcnn, "maskrcnn": build_plain_maskrcnn}.get(
        meta["architecture"])
    if build is None:
        raise ModelFormatError(f"{path} holds a {meta['architecture']!r} detector, not {what} "
                               "saved by blood_cancer.save_model.")
    kwargs = dict(meta["architecture_kwargs"])
    num_classes = kwargs.pop("num_classes")
    return rebuild_model(path, lambda: build(num_classes, **kwargs), ckpt["model_state"],
                         what).eval()
