"""Paper 5 (WCSegNet): WBC-nucleus segmentation on the Zheng sets (Jiangxi, CellaVision).

The task, as paper 5 (section 2.1-2.3) defines it: **4 classes per pixel** — background
and the nucleus of a neutrophil, a lymphocyte or a basophil. The nucleus class of an image
is its WBC type (the Zheng CSV label); cytoplasm counts as background. Monocytes and
eosinophils are left out of paper 5 entirely: :func:`paper5_records` returns them
separately so that a notebook can count them.

Choices made here (the paper does not say):

* **Metrics** (Table 1). The paper gives the binary formulas (TP/FP/FN, eq. 3-6) and
  calls the last column "mean IoU", so the scores are averaged over classes; with only
  four classes and values of 0.96-0.98 the background must be in the average (the Keras
  ``MeanIoU`` convention). We therefore report, from one confusion matrix pooled over
  all test pixels: ``accuracy`` = pixel accuracy; ``precision``, ``dice``, ``mIoU`` =
  the mean over the four classes **including background**, skipping classes that are
  neither present nor predicted (so a split without a basophil averages over three).
  The foreground-only means (``precision_fg``, ``dice_fg``, ``mIoU_fg``), the per-class
  values and ``nucleus_dice`` (every nucleus vs the rest, type ignored) are reported too.
* **Split**: 80:20 train/test stratified by WBC type (section 3). Classes with fewer
  than ``min_count`` (2) images cannot be stratified: they stay in train (Jiangxi's
  single basophil), so the Jiangxi test set has no basophil. For early stopping and the
  convergence curves a validation part is carved out of train the same way; the test
  set is used once, at the end.
* **Optimiser**: Adam (lr 1e-4 in ``full``, as the paper's learning rate; 1e-3 in the CPU
  profiles, which train for minutes), batch 16, categorical cross-entropy on logits.
  ``bench_cpu`` decays the rate with a cosine over a fixed number of epochs, the same for
  every model, so a busy machine changes the minutes but not the result.
* **Cross-dataset check** (not in the paper): a WCSegNet trained on Jiangxi +
  CellaVision is scored nucleus-vs-rest on the BCCD WBC masks, never trained on, with
  crops centred on the annotated cell (:func:`cross_dataset_check`).
* **Resolution**: every image is resized to ``image_size`` (the paper: 120x120) after
  augmentation; metrics are computed at that resolution.
"""

from __future__ import annotations

import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from ..config import register
from .configs import WcsegnetConfig
from ..results import (compare_with_paper, finite_metrics, paper_table, pretrained_vs_scratch,
                       reference_table as table)
from ..data.masks import NUCLEUS, read_label_mask
from ..data.records import MaskedImage
from ..data.splits import stratified_split
from ..data.parsers.zheng import load_zheng
from ..data import synthetic
from ..errors import DatasetNotFoundError
from ..data.datasets import SegmentationDataset
from ..transforms.augment import (AlbumentationsSegmentation, paper5_augmentation,
                                  single_augmentations)
from ..engine.tta import tta_probabilities
from ..metrics.segmentation import boundary_band_errors, SegmentationMeter
from ..models.segmentation_zoo import build_segmentation_model, count_parameters
from ..losses import build_loss
from ..models.pretrained import LITE_MEAN, LITE_STD
from ..engine.trainer import fit, predict_segmentation
from ..runtime import seed_everything
from ..io import read_image
from ..data.parsers import load_bccd_wbc_masks
import albumentations as A
import cv2
import random
from datetime import datetime, timezone

EXPERIMENT = "wcsegnet"
PAPER = "paper5"
CLASS_NAMES = ("background", "neutrophil", "lymphocyte", "basophil")
PAPER5_TYPES = {"neutrophil": 1, "lymphocyte": 2, "basophil": 3}
EXCLUDED_TYPES = ("monocyte", "eosinophil")
#: Paper 5's mask colours (Figure 7): black background, red / blue / green nuclei.
PAPER5_COLORS = ((0.0, 0.0, 0.0), (1.0, 0.0, 0.0), (0.0, 0.0, 1.0), (0.0, 0.8, 0.0))
MODELS = ("unet_relu", "unet_leaky", "wcsegnet")
MODEL_LABELS = {"unet_relu": "Unet (Relu)", "unet_leaky": "Unet (LeakyRelu)",
                "wcsegnet": "WCSegNet", "lite_unet": "U-Net, EfficientNet-Lite0 encoder"}
DATASET_LABELS = {"jiangxi": "Jiangxi", "cellavision": "CellaVision"}
TABLE1_METRICS = ("accuracy", "precision", "dice", "mIoU")

_COMMON = {"models": list(MODELS), "num_classes": 4, "optimizer": "adam",
           "loss": "categorical_cross_entropy", "augment": True, "shear": 0.2,
           "val_fraction": 0.15, "min_count": 2, "num_workers": 0,
           "lr_schedule": "constant", "min_lr_factor": 0.01, "crop_fill": 0.6,
           "channels_last": True, "tta": None,
           # bloodlib train/bench only: train on train + validation (the best epoch is then
           # picked on images the model saw), and a split seed apart from the training seed
           "train_on_val": False, "split_seed": None}
register(EXPERIMENT, schema=WcsegnetConfig, profiles={
    # the whole notebook in ~1-2 min on 2 cores: Jiangxi only, a subset, a few epochs
    "quick": {**_COMMON, "datasets": ["jiangxi"], "image_size": 96, "width": 0.25,
              "epochs": 8, "batch_size": 8, "lr": 1e-3, "max_train_batches": 8,
              "max_train_images": 64, "max_val_images": 16, "max_test_images": 40,
              "early_stopping_patience": None, "time_budget_s": {"jiangxi": 40, "cellavision": 40},
              "samples_per_grid": 6, "qualitative_n": 4, "synthetic_images": 80,
              "cross_train": False, "cross_images": 24},
    # the notebook ~50 min on 2 cores (measured: 49 min); WCSegNet on Jiangxi trains ~14 min
    # Same schedule for every model: cosine over a fixed number of epochs (not a time
    # budget, so a busy machine changes the minutes, not the result); time caps for safety.
    "bench_cpu": {**_COMMON, "datasets": ["jiangxi", "cellavision"], "image_size": 120,
                  "width": 0.25, "epochs": {"jiangxi": 100, "cellavision": 80, "combined": 50},
                  "batch_size": 16, "lr": 1e-3, "lr_schedule": "cosine",
                  "max_train_batches": None, "max_train_images": None, "max_val_images": None,
                  "max_test_images": None, "early_stopping_patience": None,
                  "time_budget_s": {"jiangxi": 1800, "cellavision": 900, "combined": 1200},
                  "samples_per_grid": 8, "qualitative_n": 6, "synthetic_images": 100,
                  "cross_train": True, "cross_images": None},
    # the paper's protocol (GPU): 120 px, full width, Adam 1e-4, batch 16, CE, early stop
    "full": {**_COMMON, "datasets": ["jiangxi", "cellavision"], "image_size": 120,
             "width": 1.0, "epochs": 100, "batch_size": 16, "lr": 1e-4,
             "max_train_batches": None, "max_train_images": None, "max_val_images": None,
             "max_test_images": None, "early_stopping_patience": 20, "time_budget_s": None,
             "samples_per_grid": 8, "qualitative_n": 8, "synthetic_images": 200,
             "cross_train": True, "cross_images": None},
})


# ----------------------------------------------------------------------------- data
def paper5_mask(rec: MaskedImage) -> np.ndarray:
    """Paper 5's 4-class mask of one record: 0 background (cytoplasm included), the
    nucleus pixels get the class of the image's WBC type (1 neutrophil, 2 lymphocyte,
    3 basophil). Raises ValueError for a type paper 5 leaves out."""
    if rec.label not in PAPER5_TYPES:
        raise ValueError(f"{rec.image_path}: WBC type {rec.label!r} is not one of paper 5's "
                         f"{sorted(PAPER5_TYPES)}; filter records with paper5_records first.")
    labels = read_label_mask(rec)
    return np.where(labels == NUCLEUS, PAPER5_TYPES[rec.label], 0).astype(np.uint8)


def filter_paper5(records: Sequence[MaskedImage]) -> tuple[list[MaskedImage], list[MaskedImage]]:
    """(records of paper 5's three types, records of the excluded types)."""
    keep = [r for r in records if r.label in PAPER5_TYPES]
    return keep, [r for r in records if r.label not in PAPER5_TYPES]


def paper5_records(which: str = "jiangxi", root: Any = None
                   ) -> tuple[list[MaskedImage], list[MaskedImage]]:
    """Zheng subset ``which`` ("jiangxi" / "cellavision") as ``(included, excluded)``:
    neutrophils, lymphocytes and basophils; and the monocytes and eosinophils that paper 5
    leaves out."""
    return filter_paper5(load_zheng(which, root))


def load_or_synthesize(which: str, knobs: Mapping[str, Any], out_dir: Any, seed: int = 0
                       ) -> tuple[list[MaskedImage], list[MaskedImage], str]:
    """``paper5_records(which)``, or when the Zheng data is missing synthetic Zheng-format
    crops (:func:`bloodlib.data.synthetic.write_segmentation_set`); returns
    ``(included, excluded, source)`` with source "zheng" or "synthetic"."""
    try:
        inc, exc = paper5_records(which)
        return inc, exc, "zheng"
    except DatasetNotFoundError:
        recs = synthetic.write_segmentation_set(Path(out_dir) / f"synthetic_{which}",
                                                int(knobs["synthetic_images"]), seed,
                                                size=int(knobs["image_size"]))
        inc, exc = filter_paper5(recs)
        return inc, exc, "synthetic"


@dataclass
class RecordSplit:
    """Two parts of a record list; ``kept_in_train`` = classes too small to stratify."""

    train: list[MaskedImage]
    test: list[MaskedImage]
    kept_in_train: dict[str, int] = field(default_factory=dict)

    def counts(self) -> pd.DataFrame:
        """Images per class (rows) and part (columns)."""
        return pd.DataFrame({"train": Counter(r.label for r in self.train),
                             "test": Counter(r.label for r in self.test)}).fillna(0).astype(int)


def split_records(records: Sequence[MaskedImage], seed: int = 0, test_fraction: float = 0.2,
                  min_count: int = 2) -> RecordSplit:
    """Deterministic split stratified by label (80:20 by default, as paper 5).

    Classes with fewer than ``min_count`` images (at least 2 are needed to stratify) go
    entirely into train and are listed in ``kept_in_train`` — e.g. Jiangxi's single
    basophil, so its test set holds no basophil.
    """
    records = list(records)
    counts = Counter(r.label for r in records)
    small = {c: n for c, n in counts.items() if n < max(min_count, 2)}
    big = [i for i, r in enumerate(records) if r.label not in small]
    parts = stratified_split([records[i].label for i in big],
                             {"train": 1 - test_fraction, "test": test_fraction}, seed=seed) \
        if big else {"train": [], "test": []}
    train = sorted([big[i] for i in parts["train"]]
                   + [i for i, r in enumerate(records) if r.label in small])
    return RecordSplit([records[i] for i in train], [records[big[i]] for i in parts["test"]],
                       dict(sorted(small.items())))


def train_val_test(records: Sequence[MaskedImage], knobs: Mapping[str, Any],
                   seed: int = 0) -> dict[str, list[MaskedImage]]:
    """The notebooks' split: :func:`split_records` 80:20 into train and test (paper 5),
    then ``knobs["val_fraction"]`` of train for validation, both stratified by label."""
    outer = split_records(records, seed, 0.2, knobs["min_count"])
    inner = split_records(outer.train, seed, knobs["val_fraction"], knobs["min_count"])
    return {"train": inner.train, "val": inner.test, "test": outer.test}


def take_subset(records: Sequence[MaskedImage], n: Optional[int], seed: int = 0) -> list[MaskedImage]:
    """At most ``n`` records, drawn round-robin over the classes (each class shuffled with
    ``seed``) so that every class stays represented; the original order is kept."""
    records = list(records)
    if n is None or n >= len(records):
        return records
    rng = np.random.default_rng(seed)
    by_class = {c: list(rng.permutation([i for i, r in enumerate(records) if r.label == c]))
                for c in sorted({r.label for r in records})}
    chosen: list[int] = []
    while len(chosen) < n:
        for c in by_class:
            if by_class[c] and len(chosen) < n:
                chosen.append(int(by_class[c].pop(0)))
    return [records[i] for i in sorted(chosen)]


def class_counts(parts: Mapping[str, Sequence[MaskedImage]]) -> pd.DataFrame:
    """Images per WBC type (rows) for each named part (columns), with a total row."""
    df = pd.DataFrame({k: Counter(r.label for r in v) for k, v in parts.items()}).fillna(0)
    order = [c for c in (*PAPER5_TYPES, *EXCLUDED_TYPES) if c in df.index]
    df = df.loc[order].astype(int)
    df.loc["total"] = df.sum()
    return df


def make_dataset(records: Sequence[MaskedImage], knobs: Mapping[str, Any], train: bool = False,
                 seed: int = 0, decode: Optional[Callable[[MaskedImage], np.ndarray]] = None):
    """A :class:`SegmentationDataset` with paper 5's masks (or ``decode``'s), resized to
    ``image_size``; with ``train`` and ``knobs["augment"]`` paper 5's augmentation, applied
    to a share ``augment_p`` of the images (default 1.0: every image, as Keras does), with
    the optional extras ``vertical_flip`` and ``color_jitter`` (off by default)."""
    tf = None
    if train and knobs.get("augment", True):
        tf = AlbumentationsSegmentation(paper5_augmentation(
            p=float(knobs.get("augment_p", 1.0)), shear=knobs.get("shear", 0.2), seed=seed,
            vertical_flip=bool(knobs.get("vertical_flip", False)),
            color_jitter=float(knobs.get("color_jitter", 0.0))))
    return SegmentationDataset(records, decode=decode or paper5_mask, transforms=tf,
                               size=int(knobs["image_size"]))


def _loader(records, knobs, train: bool, seed: int, decode=None) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    return DataLoader(make_dataset(records, knobs, train, seed, decode),
                      batch_size=int(knobs["batch_size"]),
                      shuffle=train, generator=g, num_workers=int(knobs.get("num_workers", 0)))


# ----------------------------------------------------------------------------- metrics
def paper5_metrics(multi: Mapping[str, float], nucleus: Mapping[str, float]) -> dict[str, float]:
    """Table 1's metrics from a 4-class and a nucleus-vs-rest meter (see module docstring)."""
    prec = np.array([multi[f"precision/{c}"] for c in CLASS_NAMES], float)
    prec_fg = prec[1:]
    out = {
        "accuracy": multi["pixel_accuracy"],
        "precision": float(np.nanmean(prec)) if np.isfinite(prec).any() else float("nan"),
        "dice": multi["mDice"], "mIoU": multi["mIoU"],
        "precision_fg": float(np.nanmean(prec_fg)) if np.isfinite(prec_fg).any() else float("nan"),
        "dice_fg": multi["mDice_fg"], "mIoU_fg": multi["mIoU_fg"],
        "nucleus_dice": nucleus["Dice/foreground"], "nucleus_iou": nucleus["IoU/foreground"],
    }
    for c in CLASS_NAMES[1:]:
        out[f"dice_{c}"] = multi[f"Dice/{c}"]
        out[f"iou_{c}"] = multi[f"IoU/{c}"]
    return {k: float(v) for k, v in out.items()}


finite = finite_metrics  # the notebooks call it by this name


@torch.no_grad()
def _evaluate_loader(model, loader, device, tta: Optional[str] = None) -> dict[str, float]:
    multi = SegmentationMeter(4, CLASS_NAMES)
    nuc = SegmentationMeter(4, binary_foreground=[1, 2, 3])
    was = model.training
    model.eval()
    try:
        for x, y in loader:
            pred = tta_probabilities(model, x.to(device), tta).argmax(1).cpu()
            multi.update(pred, y)
            nuc.update(pred, y)
    finally:
        model.train(was)
    return paper5_metrics(multi.compute(), nuc.compute())


def evaluate(model: torch.nn.Module, records: Sequence[MaskedImage], knobs: Mapping[str, Any],
             device: Any = "cpu", decode=None, evaluator=None) -> dict[str, float]:
    """Table 1's metrics (and extras) of ``model`` on ``records``, pooled over all pixels,
    with the profile's test-time augmentation ``knobs["tta"]`` (another task: its mask
    ``decode`` and ``evaluator(model, loader, device, tta)``)."""
    device = torch.device(device)
    model.to(device)
    return (evaluator or _evaluate_loader)(model, _loader(records, knobs, False, 0, decode), device,
                                           knobs.get("tta"))


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


# ----------------------------------------------------------------------------- figures / tables
def color_mask(mask: np.ndarray) -> np.ndarray:
    """Class map -> RGB uint8 in paper 5's colours."""
    lut = (np.asarray(PAPER5_COLORS) * 255).round().astype(np.uint8)
    return lut[np.asarray(mask, dtype=np.int64)]


def _finish_with_legend(fig, title: str, bottom: float):
    """Title, the paper-colour legend below the panels, layout; closed for pyplot."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    fig.suptitle(title)
    fig.legend(handles=[Patch(color=c, label=n) for c, n in zip(PAPER5_COLORS, CLASS_NAMES)],
               loc="lower center", ncol=4, frameon=False, bbox_to_anchor=(0.5, -0.02))
    fig.tight_layout(rect=(0, bottom, 1, 1))
    plt.close(fig)
    return fig


def samples_figure(records: Sequence[MaskedImage], n: int = 6, seed: int = 0, title: str = ""):
    """Image over paper-coloured mask for ``n`` records (round-robin over the types)."""
    import matplotlib.pyplot as plt
    recs = take_subset(records, n, seed)
    fig, axes = plt.subplots(2, len(recs), figsize=(2.0 * len(recs), 4.3), squeeze=False)
    for j, r in enumerate(recs):
        axes[0, j].imshow(read_image(r.image_path))
        axes[0, j].set_title(r.label, fontsize=9)
        axes[1, j].imshow(color_mask(paper5_mask(r)), interpolation="nearest")
    for ax in axes.ravel():
        ax.axis("off")
    return _finish_with_legend(fig, title, bottom=0.05)


def augmentation_figure(rec: MaskedImage, seed: int = 0, shear: float = 0.2):
    """Paper 5's Figure 2: one column per augmentation, image above mask."""
    import matplotlib.pyplot as plt
    img, mask = read_image(rec.image_path), paper5_mask(rec)
    cols = {"original": (img, mask)}
    for name, t in single_augmentations(shear=shear).items():
        out = A.Compose([t], seed=seed)(image=img, mask=mask)
        cols[name] = (out["image"], out["mask"])
    fig, axes = plt.subplots(2, len(cols), figsize=(1.9 * len(cols), 4.2), squeeze=False)
    for j, (name, (im, m)) in enumerate(cols.items()):
        axes[0, j].imshow(im)
        axes[0, j].set_title(name.replace("_", " "), fontsize=9)
        axes[1, j].imshow(color_mask(m), interpolation="nearest")
    for ax in axes.ravel():
        ax.axis("off")
    fig.tight_layout()
    plt.close(fig)
    return fig


def parameter_table(knobs: Mapping[str, Any], widths: Sequence[float] = ()) -> pd.DataFrame:
    """Parameters of every model at the profile's width and at ``widths`` (e.g. 1.0)."""
    ws = list(dict.fromkeys([float(knobs["width"]), *map(float, widths)]))
    rows = []
    for name in knobs.get("models", MODELS):
        rows.append({"model": MODEL_LABELS.get(name, name),
                     **{f"params @ width {w:g}": count_parameters(build_model(name, knobs, w))
                        for w in ws}})
    return pd.DataFrame(rows).set_index("model")


def convergence_figure(histories: Mapping[str, Mapping[str, Any]], key: str = "val_dice"):
    """Validation ``key`` per epoch: one panel per dataset, one line per model
    (paper 5's Figures 5-6 show the loss; both are in the histories)."""
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(histories), figsize=(5.2 * len(histories), 3.6), squeeze=False)
    for ax, (ds, per_model) in zip(axes[0], histories.items()):
        for name, h in per_model.items():
            df = h.to_frame()
            if key in df:
                ax.plot(df.index, df[key], marker="o", label=MODEL_LABELS.get(name, name))
        ax.set(title=DATASET_LABELS.get(ds, ds), xlabel="epoch", ylabel=key.replace("_", " "))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    plt.close(fig)
    return fig


@torch.no_grad()
def qualitative_figure(model: torch.nn.Module, records: Sequence[MaskedImage], n: int = 4,
                       knobs: Optional[Mapping[str, Any]] = None, seed: int = 0, title: str = ""):
    """Paper 5's Figure 7: original / ground truth / prediction (paper colours) for ``n``
    records (round-robin over the types), at the model's input size."""
    import matplotlib.pyplot as plt
    knobs = knobs or {"image_size": 120, "batch_size": 16}
    recs = take_subset(records, n, seed)
    images, masks, preds = _predict_records(model, recs, knobs)
    fig, axes = plt.subplots(len(recs), 3, figsize=(6.3, 2.1 * len(recs)), squeeze=False)
    for i, r in enumerate(recs):
        for ax, im, t in zip(axes[i], (images[i].permute(1, 2, 0).numpy(),
                                       color_mask(masks[i].numpy()), color_mask(preds[i].numpy())),
                             (f"{r.label}", "ground truth", "prediction")):
            ax.imshow(im, interpolation="nearest")
            ax.set_title(t, fontsize=9)
            ax.axis("off")
    return _finish_with_legend(fig, title, bottom=0.04)


def _predict_records(model: torch.nn.Module, records: Sequence[MaskedImage],
                     knobs: Mapping[str, Any], device: Any = None):
    """(images, true class masks, predicted class masks) at the model's input size."""
    ds = make_dataset(records, knobs, train=False)
    images, masks = zip(*(ds[i] for i in range(len(ds))))
    images = torch.stack(images)
    preds = predict_segmentation(model, images, device, int(knobs.get("batch_size", 16)))
    return images, torch.stack(masks), preds


def nucleus_masks(model: torch.nn.Module, records: Sequence[MaskedImage],
                  knobs: Mapping[str, Any], device: Any = None):
    """(images, true nucleus masks, predicted nucleus masks): any nucleus class vs the rest."""
    images, masks, preds = _predict_records(model, records, knobs, device)
    return images, masks > 0, preds > 0


def boundary_error_table(models: Mapping[str, torch.nn.Module], records: Sequence[MaskedImage],
                         knobs: Mapping[str, Any], device: Any = None,
                         bands: Sequence[int] = (1, 2)) -> pd.DataFrame:
    """Per model, where its nucleus-vs-rest errors on ``records`` lie: nucleus Dice, error
    pixels, the share of them within 1 and 2 px of the annotated nucleus boundary, and
    the Dice with that 1-px band ignored (:func:`bloodlib.metrics.segmentation.boundary_band_errors`).
    Predictions without test-time augmentation."""
    rows = {}
    for name, model in models.items():
        _, truth, pred = nucleus_masks(model, records, knobs, device)
        rows[MODEL_LABELS.get(name, name)] = boundary_band_errors(pred, truth, bands)
    table = pd.DataFrame(rows).T.rename(columns={"dice": "nucleus_dice"})
    first = ["nucleus_dice", "error_pixels", *(f"within_{b}px" for b in sorted(bands))]
    return table[first + [c for c in table.columns if c not in first]]


def worst_images_figure(model: torch.nn.Module, records: Sequence[MaskedImage],
                        knobs: Mapping[str, Any], n: int = 4, device: Any = None, title: str = ""):
    """The ``n`` records with the lowest nucleus Dice: the image with the annotated nucleus
    outline (green) and the predicted one (red)."""
    import matplotlib.pyplot as plt
    images, truth, pred = nucleus_masks(model, records, knobs, device)
    inter = (truth & pred).flatten(1).sum(1).double()
    total = (truth.flatten(1).sum(1) + pred.flatten(1).sum(1)).double()
    dice = torch.where(total > 0, 2 * inter / total.clamp(min=1), torch.ones_like(total))
    order = dice.argsort()[:n].tolist()
    fig, axes = plt.subplots(1, len(order), figsize=(2.4 * len(order), 2.8), squeeze=False)
    for ax, i in zip(axes[0], order):
        ax.imshow(images[i].permute(1, 2, 0).numpy(), interpolation="nearest")
        for mask, colour in ((truth[i], "lime"), (pred[i], "red")):
            if mask.any() and not mask.all():
                ax.contour(mask.numpy().astype(float), [0.5], colors=colour, linewidths=1)
        ax.set_title(f"{records[i].label}\nDice {dice[i]:.3f}", fontsize=9)
        ax.axis("off")
    fig.suptitle(title or "Lowest nucleus Dice: annotated (green) vs predicted (red)")
    fig.tight_layout()
    plt.close(fig)
    return fig


def table1(results: Mapping[tuple[str, str], Mapping[str, float]]) -> pd.DataFrame:
    """Paper 5's Table 1 beside ours: ``results[(dataset, model)]`` = our metrics
    (fractions); one row per dataset, model and metric."""
    frames = []
    for (ds, name), metrics in results.items():
        ours = {k: metrics[k] for k in TABLE1_METRICS if k in metrics}
        df = compare_with_paper(ours, PAPER, "table1",
                                row_filter={"model": MODEL_LABELS[name],
                                            "dataset": DATASET_LABELS.get(ds, "Jiangxi")})
        frames.append(df.assign(dataset=DATASET_LABELS.get(ds, ds), model=MODEL_LABELS[name]))
    if not frames:
        return pd.DataFrame()
    out = pd.concat(frames, ignore_index=True)
    return out[["dataset", "model", "metric", "paper", "ours", "difference"]]


# ----------------------------------------------------------------------------- cross-dataset check
def wbc_crop(image: np.ndarray, labels: np.ndarray, fill: float = 0.6
             ) -> tuple[np.ndarray, np.ndarray]:
    """A square crop centred on the WBC of a whole smear (``labels`` 0/1/2), sized so
    that the cell spans ``fill`` of it (Jiangxi ~0.7, CellaVision ~0.5); the image is
    edge-padded where the crop leaves it. Returns ``(image crop, label crop)``."""
    ys, xs = np.nonzero(labels > 0)
    if not len(ys):
        raise ValueError("The mask has no WBC pixels; cannot centre a crop on the cell.")
    side = int(round(max(np.ptp(ys), np.ptp(xs)) / fill))
    cy, cx = (ys.min() + ys.max()) // 2, (xs.min() + xs.max()) // 2
    top, left = cy - side // 2, cx - side // 2
    pad = max(0, -top, -left, top + side - labels.shape[0], left + side - labels.shape[1])
    img = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    lab = np.pad(labels, pad, mode="constant")
    return (img[top + pad:top + pad + side, left + pad:left + pad + side],
            lab[top + pad:top + pad + side, left + pad:left + pad + side])


@torch.no_grad()
def cross_dataset_check(model: torch.nn.Module, records: Sequence[MaskedImage], image_size: int,
                        device: Any = "cpu", fill: float = 0.6, batch_size: int = 16,
                        tta: Optional[str] = None) -> dict[str, float]:
    """Nucleus-vs-rest scores of a paper-5 model on other smears (e.g. the BCCD WBC
    masks), never trained on: each image is cropped around its annotated WBC
    (:func:`wbc_crop`, an oracle detector), resized to ``image_size``, and any predicted
    nucleus class counts as nucleus. Returns Dice, IoU, precision, recall, accuracy and
    ``n_images``."""
    meter = SegmentationMeter(2, ["rest", "nucleus"])
    model.to(device).eval()
    crops, targets = [], []

    def flush():
        x = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float().div(255)
        pred = tta_probabilities(model, x.to(device), tta).argmax(1).cpu().numpy() > 0
        meter.update(pred.astype(np.int64), np.stack(targets).astype(np.int64))
        crops.clear()
        targets.clear()

    for rec in records:
        img, lab = wbc_crop(read_image(rec.image_path), read_label_mask(rec), fill)
        crops.append(cv2.resize(img, (image_size, image_size), interpolation=cv2.INTER_AREA))
        targets.append(cv2.resize((lab == NUCLEUS).astype(np.uint8), (image_size, image_size),
                                  interpolation=cv2.INTER_NEAREST))
        if len(crops) == batch_size:
            flush()
    if crops:
        flush()
    m = meter.compute()
    return {"nucleus_dice": m["Dice/nucleus"], "nucleus_iou": m["IoU/nucleus"],
            "precision": m["precision/nucleus"], "recall": m["recall/nucleus"],
            "accuracy": m["pixel_accuracy"], "n_images": float(len(records))}


def bccd_wbc_records(n: Optional[int] = None, seed: int = 0) -> list[MaskedImage]:
    """The BCCD WBC masks (every WBC type, one cell per 640x480 smear) for
    :func:`cross_dataset_check`; ``n`` draws a deterministic subset. Raises
    DatasetNotFoundError when the BCCD images or masks are missing."""
    records = list(load_bccd_wbc_masks())
    if n is not None and n < len(records):
        records = sorted(random.Random(seed).sample(records, n), key=lambda r: str(r.image_path))
    return records


@torch.no_grad()
def cross_dataset_figure(model: torch.nn.Module, records: Sequence[MaskedImage],
                         image_size: int, n: int = 4, fill: float = 0.6, title: str = ""):
    """Crops of other smears: image, annotated nucleus, predicted nucleus (any type)."""
    import matplotlib.pyplot as plt
    recs = list(records)[:n]
    fig, axes = plt.subplots(len(recs), 3, figsize=(6.3, 2.1 * len(recs)), squeeze=False)
    model.eval()
    for row, rec in zip(axes, recs):
        img, lab = wbc_crop(read_image(rec.image_path), read_label_mask(rec), fill)
        img = cv2.resize(img, (image_size, image_size), interpolation=cv2.INTER_AREA)
        lab = cv2.resize(lab, (image_size, image_size), interpolation=cv2.INTER_NEAREST)
        x = torch.from_numpy(img).permute(2, 0, 1)[None].float().div(255)
        device = next(model.parameters()).device
        pred = model(x.to(device)).argmax(1)[0].cpu().numpy()
        for ax, im, t in zip(row, (img, color_mask(np.where(lab == NUCLEUS, 1, 0)),
                                   color_mask(pred)), (Path(rec.image_path).stem, "annotated nucleus",
                                                       "prediction")):
            ax.imshow(im, interpolation="nearest")
            ax.set_title(t, fontsize=9)
            ax.axis("off")
    return _finish_with_legend(fig, title, bottom=0.04)


# ----------------------------------------------------------------------------- committed benchmark
def pretrained_table(reference_dir: Any = None, metric: str = "dice") -> pd.DataFrame:
    """The committed pairs of the EfficientNet-Lite0 U-Net fine-tuned from ImageNet vs
    from scratch (side by side) on each Zheng set, ``metric`` on test, beside WCSegNet's
    figure in paper 5's Table 1."""
    table = paper_table(PAPER, "table1")
    paper = {d: float(table[(table["model"] == "WCSegNet") & (table["dataset"] == label)]
                      .iloc[0][metric])
             for d, label in DATASET_LABELS.items()} if metric in table.columns else None
    return pretrained_vs_scratch(EXPERIMENT, metric, reference_dir, paper=paper)


def reference_table(reference_dir: Any = None, experiment: str = EXPERIMENT) -> pd.DataFrame:
    """The committed ``bench_cpu``/``full`` results of ``experiment`` (``results/reference``):
    one row per dataset and model with the headline metrics, training minutes and peak
    memory; empty when nothing has been benchmarked."""
    return table(experiment, ("nucleus_dice", "dice", "mIoU", "precision", "recall",
                              "accuracy"), reference_dir)
