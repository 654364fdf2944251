"""Paper 1's figures: data, losses, PR / ROC / confusion, detections, ablation, comparison."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ...inference.common import build_preprocess
from ...io import read_image
from ...data.datasets import decode_segmentation
from ...engine.detection import LOSS_LABELS
from ...data.convert import rle_to_mask
from ...viz import (class_color, confusion_panels, detection_grid, finish_figure,
                    plot_roc_curves)
from .evaluate import Evaluation
from .settings import MODEL_LABELS


# ----------------------------------------------------------------------------- figures
def preprocessing_figure(images: Sequence[Any], titles: Sequence[str] = (),
                         stains: Sequence[str] = ("reinhard", "macenko")):
    """Each image (rows) as is, after CLAHE, and after each stain normalisation."""
    cols = [("original", None), ("CLAHE", build_preprocess(True, None))]
    for s in stains:
        try:
            cols.append((f"{s} stain", build_preprocess(False, s)))
        except Exception as exc:  # a method the preprocessing module lacks
            warnings.warn(f"stain method {s!r} unavailable: {exc}", stacklevel=2)
    fig, axes = plt.subplots(len(images), len(cols), figsize=(3.2 * len(cols), 2.6 * len(images)),
                             squeeze=False)
    for i, img in enumerate(images):
        arr = read_image(img) if isinstance(img, (str, Path)) else np.asarray(img)
        for j, (name, fn) in enumerate(cols):
            axes[i, j].imshow(arr if fn is None else fn(arr))
            axes[i, j].set_title(f"{titles[i] if i < len(titles) else ''} {name}".strip(),
                                 fontsize=9)
            axes[i, j].axis("off")
    return finish_figure(fig)


def _gt_sample(coco: dict, image_index: int, with_masks: bool = False) -> dict[str, Any]:
    im = coco["images"][image_index]
    anns = [a for a in coco["annotations"] if a["image_id"] == im["id"]]
    names = {c["id"]: c["name"] for c in coco["categories"]}
    boxes = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                       a["bbox"][1] + a["bbox"][3]] for a in anns]).reshape(-1, 4)
    sample = {"image": read_image(im["path"]), "boxes": boxes,
              "labels": [names[a["category_id"]] for a in anns]}
    if with_masks and anns and all(a.get("segmentation") for a in anns):
        sample["masks"] = np.stack([decode_segmentation(a["segmentation"], im["height"], im["width"])
                                    for a in anns]).astype(bool)
    return sample


def dataset_figure(coco: dict, n: int = 3, title: str = "", with_masks: bool = True, seed: int = 0):
    """``n`` images with their boxes (and masks)."""
    rng = np.random.default_rng(seed)
    idx = sorted(rng.choice(len(coco["images"]), size=min(n, len(coco["images"])), replace=False))
    samples = [{**_gt_sample(coco, int(i), with_masks), "title": Path(coco["images"][i]["path"]).name}
               for i in idx]
    fig = detection_grid(samples, ncols=n)
    return finish_figure(fig, title)


def loss_figure(logs: Mapping[str, Any], smooth: int = 5, title: str = ""):
    """Training loss per step (moving average over ``smooth`` steps), one panel per model
    with every component; YOLO's per-epoch losses (box, cls, dfl) for ultralytics runs."""
    n = len(logs)
    fig, axes = plt.subplots(1, max(1, n), figsize=(4.6 * max(1, n), 3.5), squeeze=False)
    for ax, (name, log) in zip(axes[0], logs.items()):
        if log is None or len(log) == 0:
            ax.set_axis_off()
            continue
        if "step" in log:
            for col in ["loss", *[c for c in log.columns if c.startswith("loss_")]]:
                y = log[col].rolling(smooth, min_periods=1).mean()
                ax.plot(log["step"], y, lw=2 if col == "loss" else 1,
                        label=LOSS_LABELS.get(col, col))
            ax.set_xlabel("step")
        else:  # ultralytics results.csv
            for col in [c for c in log.columns if c.startswith("train/")]:
                ax.plot(log["epoch"], log[col], marker="o", ms=3, label=col[6:])
            ax.set_xlabel("epoch")
        ax.set(title=MODEL_LABELS.get(name, name), ylabel="loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return finish_figure(fig, title)


def pr_figure(evals: Mapping[str, Evaluation], title: str = ""):
    """Per-class precision-recall curves at IoU 0.5 (paper 1 Figures 8, 9), a panel per model."""
    fig, axes = plt.subplots(1, len(evals), figsize=(4.3 * len(evals), 3.8), squeeze=False)
    for ax, (name, ev) in zip(axes[0], evals.items()):
        for cls, (r, p) in ev.bbox.pr_curves.items():
            ap = ev.bbox.per_class_AP50.get(cls, float("nan"))
            ax.plot(r, np.nan_to_num(p), color=class_color(cls), label=f"{cls} (AP50 {ap:.2f})")
        ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision",
               title=f"{MODEL_LABELS.get(name, name)} (mAP50 {ev.bbox.AP50:.2f})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    return finish_figure(fig, title)


def pr_comparison_figure(evals: Mapping[str, Evaluation], title: str = ""):
    """Class-averaged precision-recall curve of each model (paper 1 Figures 13, 14)."""
    fig, ax = plt.subplots(figsize=(5.2, 4.2))
    for name, ev in evals.items():
        curves = list(ev.bbox.pr_curves.values())
        if not curves:
            continue
        r = curves[0][0]
        p = np.nanmean(np.stack([np.nan_to_num(c[1]) for c in curves]), axis=0)
        ax.plot(r, p, lw=2, label=f"{MODEL_LABELS.get(name, name)} (mAP50 {ev.bbox.AP50:.2f})")
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision (mean over classes)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    return finish_figure(fig, title)


def confusion_figure(evals: Mapping[str, Evaluation], title: str = "", normalize: bool = False):
    """Detection confusion matrices (rows true class, columns predicted; "background" =
    missed / false alarm), a panel per model (paper 1 Figures 6, 7)."""
    return confusion_panels({MODEL_LABELS.get(n, n): (np.asarray(ev.confusion, float).T,
                                                      ev.confusion_labels, ev.confusion_labels)
                             for n, ev in evals.items()}, title, normalize=normalize)


def roc_figure(curves: Mapping[str, tuple[np.ndarray, np.ndarray, float]], title: str = "ROC"):
    """Per-class ROC of detection scores (paper 1 Figure 16)."""
    fig = plot_roc_curves(dict(curves), title=title)
    plt.close(fig)
    return fig


def side_by_side_figure(gt: dict, evals: Mapping[str, Evaluation], image_index: int = 0,
                        score_threshold: float = 0.5, title: str = ""):
    """Ground truth and each model's detections (score >= threshold) on one test image
    (paper 1 Figures 10-12)."""
    gt_s = _gt_sample(gt, image_index)
    im = gt["images"][image_index]
    names = {c["id"]: c["name"] for c in gt["categories"]}
    samples = [{**gt_s, "title": "ground truth"}]
    for name, ev in evals.items():
        preds = [p for p in ev.predictions if p["image_id"] == im["id"] and p["score"] >= score_threshold]
        boxes = np.array([[p["bbox"][0], p["bbox"][1], p["bbox"][0] + p["bbox"][2],
                           p["bbox"][1] + p["bbox"][3]] for p in preds]).reshape(-1, 4)
        s = {"image": gt_s["image"], "boxes": boxes, "labels": [names[p["category_id"]] for p in preds],
             "scores": [p["score"] for p in preds], "title": f"{MODEL_LABELS.get(name, name)} "
                                                             f"({len(preds)} cells)"}
        if preds and "segmentation" in preds[0]:
            s["masks"] = np.stack([rle_to_mask(p["segmentation"]) for p in preds]).astype(bool)
        samples.append(s)
    fig = detection_grid(samples, ncols=min(len(samples), 5), size=3.6)
    return finish_figure(fig, title)


def ablation_figure(table: pd.DataFrame, calibration: pd.DataFrame, title: str = ""):
    """Left: mask AP of the ablation variants; right: predicted vs actual mask IoU of
    MCNet's detections (with Pearson's r)."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.9))
    if not table.empty:
        table[["mask AP", "mask AP50", "mask AP75"]].plot.barh(ax=axes[0])
        axes[0].set(xlabel="COCO mask AP (auto-annotated ground truth)", ylabel="")
        axes[0].grid(alpha=0.3, axis="x")
    ax = axes[1]
    if len(calibration):
        ax.scatter(calibration["actual_iou"], calibration["predicted_iou"], s=10, alpha=0.6)
        r = calibration[["actual_iou", "predicted_iou"]].corr().iloc[0, 1] \
            if len(calibration) > 2 else float("nan")
        ax.set_title(f"MCNet: predicted vs actual mask IoU (r = {r:.2f}, n = {len(calibration)})",
                     fontsize=9)
    else:
        ax.set_title("no MCNet detections above the threshold", fontsize=9)
    ax.plot([0, 1], [0, 1], ls=":", color="0.5")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="actual mask IoU", ylabel="predicted mask IoU")
    ax.grid(alpha=0.3)
    return finish_figure(fig, title)


def comparison_figure(table: pd.DataFrame, title: str = ""):
    """Grouped bars paper vs ours per model and metric (percent)."""
    if table.empty:
        fig, ax = plt.subplots(figsize=(4, 2))
        ax.set_axis_off()
        return finish_figure(fig, title)
    models = list(dict.fromkeys(table["model"]))
    fig, axes = plt.subplots(1, len(models), figsize=(3.6 * len(models), 3.4), squeeze=False,
                             sharey=True)
    for ax, m in zip(axes[0], models):
        t = table[table["model"] == m]
        x = np.arange(len(t))
        ax.bar(x - 0.2, t["paper"], 0.4, label="paper", color="0.6")
        ax.bar(x + 0.2, t["ours"], 0.4, label="ours", color="tab:blue")
        ax.set_xticks(x, t["metric"], rotation=30, ha="right", fontsize=8)
        ax.set(title=m, ylim=(0, 105))
        ax.grid(alpha=0.3, axis="y")
    axes[0, 0].set_ylabel("percent")
    axes[0, 0].legend(fontsize=8)
    return finish_figure(fig, title)
