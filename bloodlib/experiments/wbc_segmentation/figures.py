"""Paper 5's figures: samples, augmentation, convergence, qualitative results, errors, the
cross-dataset check."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import albumentations as A
import cv2
import numpy as np
import torch
import matplotlib.pyplot as plt
from matplotlib.patches import Patch

from ...data.masks import NUCLEUS, read_label_mask
from ...data.records import MaskedImage
from ...transforms.augment import single_augmentations
from ...io import read_image
from .settings import CLASS_NAMES, DATASET_LABELS, MODEL_LABELS, PAPER5_COLORS
from .errors import _predict_records, nucleus_masks
from ...config import get_config
from ..configs import SegmentationSettings
from .data import paper5_mask, take_subset
from .cross import wbc_crop


# ----------------------------------------------------------------------------- figures / tables
def color_mask(mask: np.ndarray) -> np.ndarray:
    """Class map -> RGB uint8 in paper 5's colours."""
    lut = (np.asarray(PAPER5_COLORS) * 255).round().astype(np.uint8)
    return lut[np.asarray(mask, dtype=np.int64)]


def _finish_with_legend(fig, title: str, bottom: float):
    """Title, the paper-colour legend below the panels, layout; closed for pyplot."""
    fig.suptitle(title)
    fig.legend(handles=[Patch(color=c, label=n) for c, n in zip(PAPER5_COLORS, CLASS_NAMES)],
               loc="lower center", ncol=4, frameon=False, bbox_to_anchor=(0.5, -0.02))
    fig.tight_layout(rect=(0, bottom, 1, 1))
    plt.close(fig)
    return fig


def samples_figure(records: Sequence[MaskedImage], n: int = 6, seed: int = 0, title: str = ""):
    """Image over paper-coloured mask for ``n`` records (round-robin over the types)."""
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


def convergence_figure(histories: Mapping[str, Mapping[str, Any]], key: str = "val_dice"):
    """Validation ``key`` per epoch: one panel per dataset, one line per model
    (paper 5's Figures 5-6 show the loss; both are in the histories)."""
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
                       settings: Optional[SegmentationSettings] = None, seed: int = 0,
                       title: str = ""):
    """Paper 5's Figure 7: original / ground truth / prediction (paper colours) for ``n``
    records (round-robin over the types), at the input size of ``settings`` (default:
    ``bench_cpu``'s 120 px)."""
    settings = settings or get_config("wcsegnet", "bench_cpu")
    recs = take_subset(records, n, seed)
    images, masks, preds = _predict_records(model, recs, settings)
    fig, axes = plt.subplots(len(recs), 3, figsize=(6.3, 2.1 * len(recs)), squeeze=False)
    for i, r in enumerate(recs):
        for ax, im, t in zip(axes[i], (images[i].permute(1, 2, 0).numpy(),
                                       color_mask(masks[i].numpy()), color_mask(preds[i].numpy())),
                             (f"{r.label}", "ground truth", "prediction")):
            ax.imshow(im, interpolation="nearest")
            ax.set_title(t, fontsize=9)
            ax.axis("off")
    return _finish_with_legend(fig, title, bottom=0.04)


def worst_images_figure(model: torch.nn.Module, records: Sequence[MaskedImage],
                        settings: SegmentationSettings, n: int = 4, device: Any = None, title: str = ""):
    """The ``n`` records with the lowest nucleus Dice: the image with the annotated nucleus
    outline (green) and the predicted one (red)."""
    images, truth, pred = nucleus_masks(model, records, settings, device)
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


@torch.no_grad()
def cross_dataset_figure(model: torch.nn.Module, records: Sequence[MaskedImage],
                         image_size: int, n: int = 4, fill: float = 0.6, title: str = ""):
    """Crops of other smears: image, annotated nucleus, predicted nucleus (any type)."""
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
