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
from ...runtime import seed_everything
from .settings import CLASS_NAMES
from .evaluate import _evaluate_loader
from .data import _loader


# ----------------------------------------------------------------------------- training
def build_model(name: str, knobs: Mapping[str, Any], width: Optional[float] = None) -> torch.nn.Module:
    """One of :data:`MODELS` (or ``lite_unet``, a U-Net on an ImageNet-pretrained
    EfficientNet-Lite0 encoder) with 4 output classes at ``width`` (default the profile's)."""
    extra: dict[str, Any] = {}
    if name == "wcsegnet" and knobs.get("wcsegnet_dropout") is not None:
        extra["dropout"] = float(knobs["wcsegnet_dropout"])
    if name == "lite_unet":  # ImageNet encoder unless the profile says pretrained=False
        extra["pretrained"] = bool(knobs.get("pretrained", True))
        width = 1.0  # the encoder's size is fixed; the profile's width shrank the decoder
        #              to 16..4 channels, and at width 0.25 it learned background only
    return build_segmentation_model(name, int(knobs.get("num_classes", 4)),
                                    width=float(knobs["width"] if width is None else width),
                                    **extra)


def build_training_loss(knobs: Mapping[str, Any]) -> torch.nn.Module:
    """The profile's loss: ``categorical_cross_entropy`` (paper 5) or ``ce_dice``."""
    name = knobs.get("loss", "categorical_cross_entropy")
    return build_loss("ce" if name == "categorical_cross_entropy" else name)


def build_scheduler(optimizer: torch.optim.Optimizer, knobs: Mapping[str, Any],
                    epochs: Optional[int] = None):
    """``lr_schedule`` "constant" (paper 5; None returned) or "cosine": cosine decay over
    ``epochs`` (default ``knobs["epochs"]``) to ``lr * min_lr_factor``, once per epoch."""
    kind = knobs.get("lr_schedule", "constant")
    if kind == "constant":
        return None
    if kind == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=int(epochs or knobs["epochs"]),
            eta_min=float(knobs["lr"]) * float(knobs.get("min_lr_factor", 0.01)))
    raise ValueError(f"lr_schedule {kind!r} unknown; use 'constant' or 'cosine'.")


def checkpoint_meta(name: str, knobs: Mapping[str, Any], classes: Sequence[str] = CLASS_NAMES,
                    dataset: Optional[str] = None) -> dict[str, Any]:
    """Metadata saved with a checkpoint (the model store's contract): enough to rebuild
    the model and preprocess an image the way it was trained."""
    size = int(knobs["image_size"])
    return {"task": "segment", "architecture": name,
            "architecture_kwargs": {"num_classes": int(knobs.get("num_classes", len(classes))),
                                    "width": 1.0 if name == "lite_unet" else float(knobs["width"])},
            "classes": list(classes), "input_size": [size, size],
            "preprocessing": {"resize": [size, size], "normalize": "unit", "clahe": False,
                              "stain": None, **_encoder_meta(name, knobs)},
            "training_data": {"dataset": dataset or "zheng", "split": "train"},
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "model": name, "knobs": dict(knobs)}


def _encoder_meta(name: str, knobs: Mapping[str, Any]) -> dict[str, Any]:
    """For ``lite_unet``: the ImageNet start and the normalisation applied inside the model."""
    if name != "lite_unet":
        return {}
    return {"pretrained": bool(knobs.get("pretrained", True)),
            "model_normalization": {"mean": list(LITE_MEAN), "std": list(LITE_STD)}}


def per_dataset(knobs: Mapping[str, Any], key: str, dataset: Optional[str]) -> Any:
    """``knobs[key]``, or its entry for ``dataset`` when it is a mapping per dataset
    (the largest value when ``dataset`` is None or not listed)."""
    value = knobs.get(key)
    if isinstance(value, Mapping):
        return value.get(dataset, max(value.values())) if dataset else max(value.values())
    return value


def train_model(name: str, train_records: Sequence[MaskedImage],
                val_records: Sequence[MaskedImage], knobs: Mapping[str, Any], device: Any = "cpu",
                seed: int = 0, checkpoint_dir: Any = None, dataset: Optional[str] = None,
                progress: bool = False, decode=None, evaluator=None, monitor: str = "val_dice",
                classes: Sequence[str] = CLASS_NAMES):
    """Train model ``name`` with :func:`bloodlib.engine.trainer.fit` (Adam, categorical
    cross-entropy, paper 5's augmentation), keeping the epoch with the best validation
    Dice; returns ``(model, history, metrics on val_records)``.

    ``dataset`` picks the time budget when ``knobs["time_budget_s"]`` is per dataset.
    Without ``checkpoint_dir`` the best weights go through a temporary folder. Another
    task on the same records passes its mask ``decode``, ``evaluator(model, loader,
    device) -> metrics`` and the metric to ``monitor``.
    """

    seed_everything(seed)
    device = torch.device(device)
    model = build_model(name, knobs)
    if knobs.get("optimizer", "adam") != "adam":
        raise ValueError(f"optimizer {knobs['optimizer']!r} not supported; use 'adam'.")
    opt = torch.optim.Adam(model.parameters(), lr=float(knobs["lr"]))
    epochs = int(per_dataset(knobs, "epochs", dataset))
    scheduler = build_scheduler(opt, knobs, epochs)
    evaluator = evaluator or _evaluate_loader
    train_loader = _loader(train_records, knobs, True, seed, decode)
    val_loader = _loader(val_records, knobs, False, seed, decode)
    tmp = None
    checkpoint_dir = checkpoint_dir or knobs.get("checkpoint_dir")
    if checkpoint_dir is None:
        tmp = tempfile.TemporaryDirectory()
        checkpoint_dir = tmp.name
    ckpt = Path(checkpoint_dir) / f"{name}{'_' + dataset if dataset else ''}.pt"
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        history = fit(model, train_loader, val_loader, build_training_loss(knobs), opt,
                      epochs, device, scheduler=scheduler,
                      evaluate=evaluator, monitor=monitor, mode="max",
                      early_stopping_patience=knobs.get("early_stopping_patience"),
                      checkpoint_path=ckpt, checkpoint_meta=checkpoint_meta(name, knobs, classes, dataset),
                      max_train_batches=knobs.get("max_train_batches"),
                      time_budget_s=per_dataset(knobs, "time_budget_s", dataset), progress=progress,
                      resume_from="auto" if knobs.get("resume") else None,
                      channels_last=knobs.get("channels_last", "auto"))
        train_s = time.perf_counter() - t0
    finally:
        if tmp is not None:
            tmp.cleanup()
    metrics = evaluator(model, val_loader, device)
    metrics["train_seconds"] = train_s
    metrics["epochs_run"] = float(history.last_epoch)
    metrics["best_epoch"] = float(history.best_epoch or 0)
    return model, history, metrics
