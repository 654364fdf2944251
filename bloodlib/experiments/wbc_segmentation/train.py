"""Paper 5's training: WCSegNet and the U-Nets, loss, schedule, checkpoints with metadata."""

from __future__ import annotations

import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import torch

from ...data.records import MaskedImage
from ...models.segmentation_zoo import build_segmentation_model
from ...losses import build_loss
from ...models.pretrained import LITE_MEAN, LITE_STD
from ...engine.trainer import fit
from ...config import to_flat
from ...engine.checkpoint import Checkpoints
from ...runtime import seed_everything
from ..configs import SegmentationSettings, WcsegnetConfig
from .settings import CLASS_NAMES
from .evaluate import _evaluate_loader
from .data import _loader


# ----------------------------------------------------------------------------- training
def build_model(name: str, settings: SegmentationSettings, width: Optional[float] = None) -> torch.nn.Module:
    """One of :data:`MODELS` (or ``lite_unet``, a U-Net on an ImageNet-pretrained
    EfficientNet-Lite0 encoder) with 4 output classes at ``width`` (default the profile's)."""
    extra: dict[str, Any] = {}
    dropout = settings.wcsegnet_dropout if isinstance(settings, WcsegnetConfig) else None
    if name == "wcsegnet" and dropout is not None:
        extra["dropout"] = float(dropout)
    if name == "lite_unet":  # ImageNet encoder unless the profile says pretrained=False
        extra["pretrained"] = _pretrained(settings)
        width = 1.0  # the encoder's size is fixed; the profile's width shrank the decoder
        #              to 16..4 channels, and at width 0.25 it learned background only
    return build_segmentation_model(name, int(settings.num_classes),
                                    width=float(settings.width if width is None else width),
                                    **extra)


def build_training_loss(settings: SegmentationSettings) -> torch.nn.Module:
    """The profile's loss: ``categorical_cross_entropy`` (paper 5) or ``ce_dice``."""
    name = settings.loss
    return build_loss("ce" if name == "categorical_cross_entropy" else name)


def build_scheduler(optimizer: torch.optim.Optimizer, settings: SegmentationSettings,
                    epochs: Optional[int] = None):
    """``lr_schedule`` "constant" (paper 5; None returned) or "cosine": cosine decay over
    ``epochs`` (default ``settings.epochs``) to ``lr * min_lr_factor``, once per epoch."""
    kind = settings.lr_schedule
    if kind == "constant":
        return None
    if kind == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=int(epochs or settings.epochs),
            eta_min=float(settings.lr) * float(settings.min_lr_factor))
    raise ValueError(f"lr_schedule {kind!r} unknown; use 'constant' or 'cosine'.")


def checkpoint_meta(name: str, settings: SegmentationSettings, classes: Sequence[str] = CLASS_NAMES,
                    dataset: Optional[str] = None) -> dict[str, Any]:
    """Metadata saved with a checkpoint (the model store's contract): enough to rebuild
    the model and preprocess an image the way it was trained."""
    size = int(settings.image_size)
    return {"task": "segment", "architecture": name,
            "architecture_kwargs": {"num_classes": int(settings.num_classes),
                                    "width": 1.0 if name == "lite_unet" else float(settings.width)},
            "classes": list(classes), "input_size": [size, size],
            "preprocessing": {"resize": [size, size], "normalize": "unit", "clahe": False,
                              "stain": None, **_encoder_meta(name, settings)},
            "training_data": {"dataset": dataset or "zheng", "split": "train"},
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "model": name, "settings": to_flat(settings)}


def _encoder_meta(name: str, settings: SegmentationSettings) -> dict[str, Any]:
    """For ``lite_unet``: the ImageNet start and the normalisation applied inside the model."""
    if name != "lite_unet":
        return {}
    return {"pretrained": _pretrained(settings),
            "model_normalization": {"mean": list(LITE_MEAN), "std": list(LITE_STD)}}


def _pretrained(settings: SegmentationSettings) -> bool:
    """Whether ``lite_unet`` starts from ImageNet (paper 4's table has no such setting: yes)."""
    return bool(settings.pretrained) if isinstance(settings, WcsegnetConfig) else True


def per_dataset(settings: SegmentationSettings, key: str, dataset: Optional[str]) -> Any:
    """The setting ``key``, or its entry for ``dataset`` when it is a mapping per dataset
    (the largest value when ``dataset`` is None or not listed)."""
    value = getattr(settings, key)
    if isinstance(value, Mapping):
        return value.get(dataset, max(value.values())) if dataset else max(value.values())
    return value


def train_model(name: str, train_records: Sequence[MaskedImage],
                val_records: Sequence[MaskedImage], settings: SegmentationSettings, device: Any = "cpu",
                seed: int = 0, checkpoints: Optional[Checkpoints] = None,
                dataset: Optional[str] = None,
                progress: bool = False, decode=None, evaluator=None, monitor: str = "val_dice",
                classes: Sequence[str] = CLASS_NAMES):
    """Train model ``name`` with :func:`bloodlib.engine.trainer.fit` (Adam, categorical
    cross-entropy, paper 5's augmentation), keeping the epoch with the best validation
    Dice; returns ``(model, history, metrics on val_records)``.

    ``dataset`` picks the time budget when ``settings.time_budget_s`` is per dataset.
    With a ``checkpoints`` folder (``run.checkpoints``) the best weights are kept there and
    ``checkpoints.resume`` continues a stopped training; without one they go through a
    temporary folder. Another
    task on the same records passes its mask ``decode``, ``evaluator(model, loader,
    device) -> metrics`` and the metric to ``monitor``.
    """

    seed_everything(seed)
    device = torch.device(device)
    model = build_model(name, settings)
    if settings.optimizer != "adam":
        raise ValueError(f"optimizer {settings.optimizer!r} not supported; use 'adam'.")
    opt = torch.optim.Adam(model.parameters(), lr=float(settings.lr))
    epochs = int(per_dataset(settings, "epochs", dataset))
    scheduler = build_scheduler(opt, settings, epochs)
    evaluator = evaluator or _evaluate_loader
    train_loader = _loader(train_records, settings, True, seed, decode)
    val_loader = _loader(val_records, settings, False, seed, decode)
    tmp = None
    checkpoints = checkpoints or Checkpoints()
    checkpoint_dir = checkpoints.folder
    if checkpoint_dir is None:
        tmp = tempfile.TemporaryDirectory()
        checkpoint_dir = tmp.name
    ckpt = Path(checkpoint_dir) / f"{name}{'_' + dataset if dataset else ''}.pt"
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        history = fit(model, train_loader, val_loader, build_training_loss(settings), opt,
                      epochs, device, scheduler=scheduler,
                      evaluate=evaluator, monitor=monitor, mode="max",
                      early_stopping_patience=settings.early_stopping_patience,
                      checkpoint_path=ckpt, checkpoint_meta=checkpoint_meta(name, settings, classes, dataset),
                      max_train_batches=settings.max_train_batches,
                      time_budget_s=per_dataset(settings, "time_budget_s", dataset), progress=progress,
                      resume_from="auto" if checkpoints.resume else None,
                      channels_last=settings.channels_last)
        train_s = time.perf_counter() - t0
    finally:
        if tmp is not None:
            tmp.cleanup()
    metrics = evaluator(model, val_loader, device)
    metrics["train_seconds"] = train_s
    metrics["epochs_run"] = float(history.last_epoch)
    metrics["best_epoch"] = float(history.best_epoch or 0)
    return model, history, metrics
