"""Classification figures: samples, augmentation, shapes, curves, ROC, confusion, Grad-CAM,
errors."""

from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
import matplotlib.pyplot as plt

from ...inference.classification import images_to_tensor
from ...models.classifiers import segment_cell, shape_features
from ...viz import finish_figure, overlay_mask, plot_confusion_matrix, plot_roc_curves
from ...explain import grad_cam, overlay_cam
from .data import augmentation, CellImages
from .evaluate import Evaluation
from ..configs import WbcClassificationConfig
from .settings import MODEL_LABELS
from .train import Trained


# ----------------------------------------------------------------------------- figures
def samples_figure(data: CellImages, classes: Sequence[str], per_class: int = 2, seed: int = 0,
                   title: str = ""):
    """``per_class`` random images of each class, one column per class."""
    rng = np.random.default_rng(seed)
    fig, axes = plt.subplots(per_class, len(classes), figsize=(1.6 * len(classes), 1.7 * per_class),
                             squeeze=False)
    for j, c in enumerate(classes):
        idx = [i for i, lab in enumerate(data.labels) if lab == c]
        pick = rng.choice(idx, size=min(per_class, len(idx)), replace=False) if idx else []
        for i in range(per_class):
            ax = axes[i, j]
            ax.axis("off")
            if i < len(pick):
                ax.imshow(data.images[pick[i]])
        axes[0, j].set_title(c, fontsize=9)
    fig.suptitle(title)
    return finish_figure(fig)


def augmentation_figure(image: np.ndarray, settings: WbcClassificationConfig, n: int = 7, seed: int = 0):
    """One cell and ``n`` draws of the training augmentation."""
    aug = augmentation(settings, seed)
    fig, axes = plt.subplots(1, n + 1, figsize=(1.6 * (n + 1), 1.9))
    axes[0].imshow(image)
    axes[0].set_title("original", fontsize=9)
    for ax in axes[1:]:
        ax.imshow(aug(image=image)["image"])
    for ax in axes:
        ax.axis("off")
    return finish_figure(fig)


def shape_figure(data: CellImages, classes: Sequence[str], seed: int = 0):
    """What the hybrid's shape branch sees: one image per class over its Otsu mask, with
    a few of the shape descriptors."""
    rng = np.random.default_rng(seed)
    fig, axes = plt.subplots(1, len(classes), figsize=(1.9 * len(classes), 2.4), squeeze=False)
    for ax, c in zip(axes[0], classes):
        idx = [i for i, lab in enumerate(data.labels) if lab == c]
        ax.axis("off")
        if not idx:
            continue
        img = data.images[int(rng.choice(idx))]
        f = shape_features(img)
        ax.imshow(overlay_mask(img, segment_cell(img), alpha=0.45))
        ax.set_title(f"{c}\nsolidity {f[8]:.2f}, parts {int(f[10])}", fontsize=8)
    return finish_figure(fig)


def curves_figure(trained: Mapping[str, Trained], title: str = ""):
    """Training loss and validation accuracy per epoch, one line per model."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, t in trained.items():
        df = t.history.to_frame()
        label = MODEL_LABELS.get(name, name)
        axes[0].plot(df.index, df["train_loss"], marker="o", ms=3, label=label)
        if "val_accuracy" in df:
            axes[1].plot(df.index, df["val_accuracy"], marker="o", ms=3, label=label)
    axes[0].set(xlabel="epoch", ylabel="training loss (label-smoothed CE)")
    axes[1].set(xlabel="epoch", ylabel="validation accuracy")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    return finish_figure(fig)


def roc_figure(ev: Evaluation, title: str = "One-vs-rest ROC"):
    """ROC curve of every class (one-vs-rest) with its AUC."""
    curves = {c: (fpr, tpr, ev.report.roc_auc[c])
              for c, (fpr, tpr, _) in ev.report.roc_curves.items()}
    return finish_figure(plot_roc_curves(curves, title))


def confusion_figure(ev: Evaluation, title: str = ""):
    """Confusion-matrix heatmap (counts)."""
    return finish_figure(plot_confusion_matrix(ev.report.confusion, ev.classes, title=title or None))


def printout(model_label: str, ev: Evaluation, data: CellImages, idx: Sequence[int],
             loss: Optional[float] = None) -> str:
    """Paper 4's console printout: accuracy, loss and "Identified = CLASS" per image."""
    lines = [f"{model_label} Deep Learning", "-" * 5,
             f"1.Accuracy is : {100 * ev.report.accuracy} %"]
    if loss is not None:
        lines.append(f"2.Loss is      : {loss}")
    for i in idx:
        lines += ["", "=" * 5, "-" * 5 + " Prediction " + "-" * 5, "=" * 5,
                  f"Identified = {ev.classes[ev.y_pred[i]].upper()}",
                  f"(true: {data.labels[i]}, p = {ev.probs[i].max():.3f}, {data.paths[i].name})"]
    return "\n".join(lines)


def prediction_figure(ev: Evaluation, data: CellImages, idx: Sequence[int]):
    """The printout's images, titled "Identified = CLASS" (red when wrong)."""
    fig, axes = plt.subplots(1, len(idx), figsize=(2.6 * len(idx), 3.0), squeeze=False)
    for ax, i in zip(axes[0], idx):
        ok = ev.y_pred[i] == ev.y_true[i]
        ax.imshow(data.images[i])
        ax.set_title(f"Identified = {ev.classes[ev.y_pred[i]].upper()}\n(true {data.labels[i]}, "
                     f"p={ev.probs[i].max():.2f})", fontsize=8, color="black" if ok else "red")
        ax.axis("off")
    return finish_figure(fig)


def gradcam_figure(models: Mapping[str, nn.Module], data: CellImages, idx: Sequence[int],
                   classes: Sequence[str]):
    """Grad-CAM of the predicted class: the image, then one overlay per model."""
    x = images_to_tensor(data.images[list(idx)])
    fig, axes = plt.subplots(len(idx), len(models) + 1,
                             figsize=(2.0 * (len(models) + 1), 2.0 * len(idx)), squeeze=False)
    for r, i in enumerate(idx):
        axes[r, 0].imshow(data.images[i])
        axes[r, 0].set_title(data.labels[i], fontsize=8)
    for c, (name, model) in enumerate(models.items(), start=1):
        with torch.no_grad():
            pred = model.eval()(x.to(next(model.parameters()).device)).argmax(1).cpu().tolist()
        cams = grad_cam(model, x, pred)
        for r, i in enumerate(idx):
            axes[r, c].imshow(overlay_cam(data.images[i], cams[r]))
            axes[r, c].set_title(f"{MODEL_LABELS.get(name, name)}\n-> {classes[pred[r]]}",
                                 fontsize=7)
    for ax in axes.ravel():
        ax.axis("off")
    return finish_figure(fig)


def misclassified_figure(ev: Evaluation, data: CellImages, n: int = 8, title: str = "",
                         per_row: int = 8):
    """Up to ``n`` wrongly classified test images, the most confident mistakes first,
    ``per_row`` to a row."""
    wrong = ev.wrong
    wrong = wrong[np.argsort(-ev.probs[wrong].max(1))][:n] if len(wrong) else wrong
    cols = max(1, min(len(wrong), per_row))
    rows = max(1, math.ceil(len(wrong) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.1 * cols, 2.6 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    if not len(wrong):
        axes[0, 0].text(0.5, 0.5, "no mistakes", ha="center", va="center")
    for ax, i in zip(axes.ravel(), wrong):
        ax.imshow(data.images[i])
        ax.set_title(f"true {data.labels[i]}\npred {ev.classes[ev.y_pred[i]]} "
                     f"({ev.probs[i].max():.2f})", fontsize=8, color="red")
    fig.suptitle(title)
    return finish_figure(fig)


def paper_comparison_figure(table: pd.DataFrame, metric: str = "accuracy"):
    """Horizontal bars of ``metric`` (percent) from :func:`pbc8_paper_table`, ours highlighted."""
    df = table.dropna(subset=[metric]).copy()
    df["label"] = df["source"] + ": " + df["model"].str.slice(0, 40)
    fig, ax = plt.subplots(figsize=(8, 0.32 * len(df) + 1.2))
    colors = ["tab:red" if s == "ours" else "tab:gray" for s in df["source"]]
    ax.barh(df["label"], df[metric], color=colors)
    lo = max(0.0, float(df[metric].min()) - 5)
    ax.set_xlim(lo, 100)
    ax.invert_yaxis()
    ax.set_xlabel(f"{metric} (%)")
    ax.grid(axis="x", alpha=0.3)
    ax.tick_params(axis="y", labelsize=7)
    return finish_figure(fig)
