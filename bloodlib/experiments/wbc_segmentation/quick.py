"""Paper 5's quick model for the demo and ``bloodlib predict`` (a small WCSegNet)."""

from __future__ import annotations

from pathlib import Path

from ...config import get_config
from ...engine.checkpoint import Checkpoints
from ...inference.segmentation import segmentation_meta
from .data import load_or_synthesize, split_records, take_subset
from .evaluate import finite
from .settings import CLASS_NAMES
from .train import train_model


def quick_model(work_dir: Path, seed: int = 0, steps: int = 20):
    """The demo's quick segmenter: WCSegNet (width 0.25, 64 px, no augmentation, Adam 3e-3)
    on 64 Jiangxi images (synthetic crops when absent) for ``steps`` epochs; returns
    ``(model, meta)`` for the model store (:mod:`bloodlib.inference.quick_models`)."""
    settings = get_config("wcsegnet", "quick", epochs=int(steps), time_budget_s=None,
                          image_size=64, lr=3e-3, augment=False, max_train_batches=None,
                          early_stopping_patience=None)
    included, _, source = load_or_synthesize("jiangxi", work_dir, seed,
                                             synthetic_images=settings.synthetic_images,
                                             image_size=settings.image_size)
    split = split_records(included, seed, 0.2, settings.min_count)
    train = take_subset(split.train, settings.max_train_images, seed)
    val = take_subset(split.test, settings.max_val_images, seed)
    model, _, metrics = train_model("wcsegnet", train, val, settings, "cpu", seed,
                                    Checkpoints(Path(work_dir) / "ckpt"))
    keep = {k: metrics[k] for k in ("accuracy", "dice", "mIoU", "nucleus_dice") if k in metrics}
    meta = segmentation_meta(
        "wcsegnet", CLASS_NAMES, int(settings.image_size),
        architecture_kwargs={"width": float(settings.width)}, metrics=finite(keep),
        training_data={"dataset": "wbc_seg_zheng/jiangxi" if source == "zheng" else "synthetic",
                       "split": f"train subset ({len(train)} images), metrics on {len(val)} "
                                f"held-out images", "source": source})
    return model, meta
