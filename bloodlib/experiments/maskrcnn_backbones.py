"""Paper 2: Mask R-CNN with seven backbones on PBC (8 cell classes).

Paper 2 hand-labelled PBC polygons; here every image's single centred cell is
auto-annotated (:func:`bloodlib.autolabel.autolabel_pbc`: mask, box and class). Its setup
(Table 2): 300 train / 100 validation / 100 test images per class, 512x512 inputs,
9 classes with background, 100 training RoIs per image, detection threshold 0.75.

Choices made here:

* **Model.** torchvision's Mask R-CNN on each backbone with an FPN
  (:func:`bloodlib.models.detection.build_detector`); the paper used the Matterport
  Keras implementation. SGD (momentum 0.9, weight decay 1e-4, Matterport's defaults),
  learning rate 1e-3 in ``full`` (24,000 steps = 240 epochs x 100 steps). The CPU
  profiles train at batch 2 with a higher rate, except ImageNet EfficientNet-Lite
  backbones, which diverge there and fine-tune at ``lr_by_backbone`` (0.01).
* **Table 3** (losses): the mean of the last ``loss_tail`` training steps of the total,
  box, class and mask losses (Matterport's loss names map to torchvision's
  ``loss_box_reg``, ``loss_classifier``, ``loss_mask``; torchvision's total also holds the
  RPN losses, as Matterport's does); validation loss = the same sum on the validation set.
* **Table 4** (validation set): COCO mask AP at IoU 0.5, 0.7, 0.9 and 0.5:0.95, mask AR
  (COCO AR@100), and F1 of the detections scoring >= the threshold (0.75) at IoU 0.5. The
  mAPs use every detection (COCO's convention), not only those above the threshold.
* **Table 5** (test set): each image holds one cell, so its class is the class of its best
  detection scoring >= the threshold ("none" when there is none, counted as wrong).
  ``accuracy`` follows the paper's equation 7, (TP+TN)/(TP+TN+FP+FN) per class averaged
  over the classes (one-vs-rest); ``top1_accuracy`` is the plain fraction of images
  classified right. Precision, recall, F1 and specificity are macro averages.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Mapping, Optional, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from ..config import register
from .configs import MaskrcnnBackbonesConfig
from ..models.detection import BACKBONE_LABELS, PAPER2_BACKBONES
from . import mcnet_detection as mc
from ..engine.checkpoint import Checkpoints
from ..engine.detection import detection_val_loss, loss_summary
from ..metrics.detection import precision_recall_f1
from ..results import compare_with_paper, paper_table
from ..viz import confusion_panels, detection_grid, draw_detections, finish_figure
from ..data.convert import rle_to_mask
from sklearn.metrics import confusion_matrix

EXPERIMENT = "maskrcnn_backbones"
PAPER = "paper2"
NONE = "none"

_LIGHT = {**mc.LIGHT_HEADS, "box_batch_size_per_image": 64, "box_detections_per_img": 10,
          "rpn_post_nms_top_n_test": 100}
_COMMON = {"threshold": 0.75, "momentum": 0.9, "weight_decay": 1e-4, "grad_clip": 10.0,
           "num_workers": 0, "hflip": 0.5, "vflip": 0.5, "aspect_ratios": [0.5, 1.0, 2.0],
           "anchor_sizes": None, "pretrained": "auto", "stages": None, "eval_every_epochs": None,
           "lr_steps": [], "loss_tail": 20, "examples": 4, "score_threshold": 0.75,
           "iou_threshold": 0.5,
           # fine-tuning an ImageNet backbone at batch 2 diverges at the scratch rate
           "lr_by_backbone": {"efficientnet_lite0": 0.01, "efficientnet_lite1": 0.01,
                              "efficientnet_lite2": 0.01}}
register(EXPERIMENT, schema=MaskrcnnBackbonesConfig, profiles={
    # ~3 min on 2 cores: two backbones, 6/2/2 images per class at 128 px, ~35 s each
    "quick": {**_COMMON, "backbones": ["efficientnet_lite0", "mobilenet_v3_large"],
              "per_class": {"train": 6, "val": 2, "test": 2}, "image_size": 128,
              "heads": _LIGHT, "batch_size": 2, "iterations": 300, "lr": 0.02,
              "warmup_iters": 10, "time_budget_s": 30, "loss_tail": 10},
    # ~45 min on 2 cores: three backbones, 100/25/25 per class at 256 px, 12 min each
    "bench_cpu": {**_COMMON, "backbones": ["mobilenet_v3_large", "resnet50", "densenet121"],
                  "per_class": {"train": 100, "val": 25, "test": 25}, "image_size": 256,
                  "heads": _LIGHT, "batch_size": 2, "iterations": 4000, "lr": 0.02,
                  "warmup_iters": 100, "lr_steps": [0.8], "time_budget_s": 720},
    # paper 2's protocol (GPU): seven backbones, 300/100/100 per class, 512 px
    "full": {**_COMMON, "backbones": list(PAPER2_BACKBONES),
             "per_class": {"train": 300, "val": 100, "test": 100}, "image_size": 512,
             "heads": {"box_batch_size_per_image": 100, "box_detections_per_img": 50},
             "batch_size": 4, "iterations": 24_000, "lr": 1e-3, "warmup_iters": 500,
             "time_budget_s": None, "examples": 6},
})


# ----------------------------------------------------------------------------- data, model
def load_data(settings: MaskrcnnBackbonesConfig, work_dir: Any, seed: int = 0
              ) -> tuple[dict[str, dict], str]:
    """Auto-annotated PBC splits ``{"train", "val", "test"}`` (per class counts from the
    profile) and the source ("pbc" or "synthetic")."""
    return mc.load_pbc_splits(settings.per_class, work_dir, seed)


def recipe(settings: MaskrcnnBackbonesConfig, backbone: str) -> mc.DetectorRecipe:
    """Paper 1's detector recipe for Mask R-CNN on ``backbone``: square ``image_size``
    inputs, the backbone's own rate (``lr_by_backbone``) where given, no preprocessing."""
    size = int(settings.image_size)
    lr = dict(settings.lr_by_backbone or {}).get(backbone, settings.lr)
    return mc.DetectorRecipe.of(settings, backbone=backbone, min_size=size, max_size=size,
                                lr=lr, preprocessing=None)


def train_backbone(backbone: str, splits: Mapping[str, dict], settings: MaskrcnnBackbonesConfig,
                   device: Any = "cpu", seed: int = 0, checkpoint_path: Any = None,
                   progress: bool = False, checkpoints: Optional[Checkpoints] = None):
    """Train Mask R-CNN on ``backbone``; returns ``(model, DetectionTraining, val_losses)``.
    Without a ``checkpoint_path``, ``checkpoints`` (``run.checkpoints``) keeps and resumes
    the training."""
    k = recipe(settings, backbone)
    model, result = mc.train_model("mask_rcnn", {"train": splits["train"]}, k, device, seed,
                                   checkpoint_path=checkpoint_path, checkpoints=checkpoints,
                                   progress=progress)
    val_loader = mc.make_loader(splits["val"], k, False, True, seed)
    val = detection_val_loss(model, val_loader, device)
    return model, result, val


def classification_from_detections(gt: dict, predictions: Sequence[dict], threshold: float
                                   ) -> tuple[list[str], list[str]]:
    """``(true, predicted)`` class per image: the ground truth's (first) annotation and the
    best detection scoring >= ``threshold`` (``"none"`` without one)."""
    names = {c["id"]: c["name"] for c in gt["categories"]}
    truth = {}
    for a in gt["annotations"]:
        truth.setdefault(a["image_id"], names[a["category_id"]])
    best: dict[Any, dict] = {}
    for p in predictions:
        if p["score"] >= threshold and (p["image_id"] not in best
                                        or p["score"] > best[p["image_id"]]["score"]):
            best[p["image_id"]] = p
    ids = [im["id"] for im in gt["images"] if im["id"] in truth]
    return ([truth[i] for i in ids],
            [names[best[i]["category_id"]] if i in best else NONE for i in ids])


def classification_metrics(y_true: Sequence[str], y_pred: Sequence[str],
                           classes: Sequence[str]) -> tuple[dict[str, float], np.ndarray, list[str]]:
    """Paper 2's Table 5 metrics (see the module docstring), the confusion matrix (rows
    true classes, columns predicted classes plus "none") and its column labels."""
    cols = list(classes) + [NONE]
    cm = confusion_matrix(list(y_true), list(y_pred), labels=cols)[:len(classes)]
    n = cm.sum()
    tp = np.diag(cm[:, :len(classes)]).astype(float)
    fn = cm.sum(1) - tp
    fp = cm[:, :len(classes)].sum(0) - tp
    tn = n - tp - fn - fp
    div = lambda a, b: np.divide(a, b, out=np.zeros_like(a, dtype=float), where=b > 0)  # noqa: E731
    prec, rec, spec = div(tp, tp + fp), div(tp, tp + fn), div(tn, tn + fp)
    f1 = div(2 * prec * rec, prec + rec)
    present = cm.sum(1) > 0
    m = {"accuracy": float(np.mean(div(tp + tn, np.full_like(tp, n))[present])),
         "top1_accuracy": float(tp.sum() / n) if n else float("nan"),
         "precision": float(prec[present].mean()), "recall": float(rec[present].mean()),
         "F1": float(f1[present].mean()), "specificity": float(spec[present].mean()),
         "no_detection_rate": float(cm[:, -1].sum() / n) if n else float("nan")}
    return m, cm, cols


def evaluate_backbone(model: torch.nn.Module, splits: Mapping[str, dict],
                      settings: MaskrcnnBackbonesConfig, device: Any = "cpu") -> dict[str, Any]:
    """Table 4 metrics on ``val`` and Table 5 metrics on ``test`` (detections scoring
    >= ``threshold``); also the test predictions, the confusion matrix and the inference
    speed."""
    thr = float(settings.threshold)
    k = replace(recipe(settings, model.backbone.backbone_name), score_threshold=thr)
    val_ev = mc.evaluate_model(model, splits["val"], k, device)
    test_ev = mc.evaluate_model(model, splits["test"], k, device)
    segm = val_ev.segm if val_ev.segm is not None else val_ev.bbox
    prf = precision_recall_f1(splits["val"], val_ev.predictions, thr, 0.5)
    table4 = {"mAP50": segm.AP50, "AP70": segm.AP70, "AP90": segm.AP90, "mAP50_95": segm.AP,
              "mAR": segm.AR, "F1": prf["f1"], "box_mAP50": val_ev.bbox.AP50,
              "box_mAP50_95": val_ev.bbox.AP}
    y_true, y_pred = classification_from_detections(splits["test"], test_ev.predictions, thr)
    table5, cm, cols = classification_metrics(y_true, y_pred, mc.class_names(splits["test"]))
    return {"table4": {k: float(v) for k, v in table4.items()}, "table5": table5,
            "confusion": cm, "confusion_labels": cols, "test": test_ev,
            "inference_images_per_s": test_ev.images_per_second}


# ----------------------------------------------------------------------------- tables
#: Our metric keys -> paper 2's columns, per table (Table 4 is measured on validation,
#: so its keys carry ``val_``; Table 4 and Table 5 both have an F1 column).
TABLE_METRICS = {
    "table3": {k: k for k in ("total_loss", "val_loss", "box_loss", "class_loss", "mask_loss")},
    "table4": {f"val_{k}": k for k in ("mAP50", "AP70", "AP90", "mAP50_95", "mAR", "F1")},
    "table5": {k: k for k in ("accuracy", "precision", "recall", "F1", "specificity")},
}


def board_placement(backbone: str, pretrained: bool) -> dict[str, Any]:
    """``extra`` for a result of ``backbone``: the paper's row of Tables 3-5 when the
    paper has that backbone, else a row of our own (with its weights) in those tables;
    and the metric keys of each table."""
    label = BACKBONE_LABELS.get(backbone, backbone)
    if label in set(paper_table("paper2", "table4")["backbone"].dropna()):
        where: dict[str, Any] = {"paper_row": {"model": "Mask R-CNN", "backbone": label}}
    else:
        weights = "ImageNet" if pretrained else "from scratch"
        where = {"own_row": {"model": "Mask R-CNN", "backbone": f"{label} ({weights})"},
                 "paper_tables": list(TABLE_METRICS)}
    return {**where, "paper_metrics": TABLE_METRICS}


def _compare(ours: Mapping[str, float], table: str, backbone: str) -> pd.DataFrame:
    """Paper vs ours for one backbone (paper NaN for a backbone the paper did not use)."""
    label = BACKBONE_LABELS.get(backbone, backbone)
    ref = paper_table(PAPER, table)
    keys = [c for c in ref.attrs["units"] if c in ours]
    if label in set(ref["backbone"]):
        df = compare_with_paper({k: ours[k] for k in keys}, PAPER, table,
                                row_filter={"backbone": label}, metric_map={k: k for k in keys})
    else:
        df = pd.DataFrame({"metric": keys, "label": [ref.attrs["labels"][k] for k in keys],
                           "paper": np.nan, "ours": [float(ours[k]) for k in keys],
                           "difference": np.nan, "unit": "value"})
    return df.assign(backbone=label)


def paper_tables(results: Mapping[str, Mapping[str, Any]]) -> dict[str, pd.DataFrame]:
    """Tables 3, 4, 5 (long form: backbone, metric, paper, ours, difference) from
    ``results[backbone] = {"table3": {...}, "table4": {...}, "table5": {...}}``."""
    out = {}
    for t in ("table3", "table4", "table5"):
        frames = [_compare(r[t], t, b) for b, r in results.items() if t in r]
        out[t] = pd.concat(frames, ignore_index=True)[
            ["backbone", "metric", "paper", "ours", "difference"]] if frames else pd.DataFrame()
    return out


def wide(table: pd.DataFrame, digits: int = 4) -> pd.DataFrame:
    """One row per backbone, columns (paper|ours, metric)."""
    if table.empty:
        return table
    return table.pivot_table(index="backbone", columns="metric", values=["paper", "ours"],
                             sort=False, dropna=False).round(digits)


def table3_metrics(log: Any, val_losses: Mapping[str, float], tail: int = 20) -> dict[str, float]:
    """Table 3's final losses (mean of the last ``tail`` steps) and the validation loss."""
    s = loss_summary(log, tail)
    return {"total_loss": s["total_loss"], "val_loss": float(val_losses.get("loss", np.nan)),
            "box_loss": s.get("box_loss", np.nan), "class_loss": s.get("class_loss", np.nan),
            "mask_loss": s.get("mask_loss", np.nan)}


# ----------------------------------------------------------------------------- figures
def samples_figure(coco: dict, n: int = 8, seed: int = 0, title: str = ""):
    """One auto-annotated image per class (mask, box, class)."""
    names = {c["id"]: c["name"] for c in coco["categories"]}
    first: dict[str, int] = {}
    ann_by_img = {a["image_id"]: a for a in coco["annotations"]}
    for i, im in enumerate(coco["images"]):
        a = ann_by_img.get(im["id"])
        if a is not None:
            first.setdefault(names[a["category_id"]], i)
    idx = list(first.values())[:n]
    samples = [{**mc._gt_sample(coco, i, True), "title": names[ann_by_img[coco["images"][i]["id"]]
                                                                 ["category_id"]]} for i in idx]
    fig = detection_grid(samples, ncols=min(4, max(1, len(samples))), size=2.6)
    return finish_figure(fig, title)


def loss_curves_figure(logs: Mapping[str, Any], val_losses: Mapping[str, Mapping[str, float]],
                       smooth: int = 10, title: str = ""):
    """Paper 2 Appendix 1: training losses per step (moving average) per backbone, with the
    final validation loss as a dashed line."""
    n = len(logs)
    fig, axes = plt.subplots(1, max(1, n), figsize=(4.4 * max(1, n), 3.4), squeeze=False)
    names = {"loss": "total", "loss_box_reg": "box", "loss_classifier": "class",
             "loss_mask": "mask"}
    for ax, (b, log) in zip(axes[0], logs.items()):
        for col, lab in names.items():
            if col in log:
                ax.plot(log["step"], log[col].rolling(smooth, min_periods=1).mean(), label=lab,
                        lw=2 if col == "loss" else 1)
        v = val_losses.get(b, {}).get("loss")
        if v is not None and np.isfinite(v):
            ax.axhline(v, ls="--", color="k", lw=1, label="validation (end)")
        ax.set(title=BACKBONE_LABELS.get(b, b), xlabel="step", ylabel="loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return finish_figure(fig, title)


def confusion_figure(results: Mapping[str, Mapping[str, Any]], title: str = ""):
    """Paper 2 Appendix 2: the test confusion matrix of each backbone (rows true class,
    columns predicted class; "none" = no detection above the threshold)."""
    return confusion_panels(
        {f"{BACKBONE_LABELS.get(b, b)} (top-1 {r['table5']['top1_accuracy']:.2f})":
         (r["confusion"], r["confusion_labels"][:-1], r["confusion_labels"])
         for b, r in results.items()}, title, panel_size=5.4)


def examples_figure(gt: dict, results: Mapping[str, Mapping[str, Any]], n: int = 4,
                    threshold: float = 0.75, title: str = ""):
    """Paper 2 Appendix 3: the best detection (mask, box, class, score) of each backbone
    on ``n`` test images, a row per backbone; a best detection scoring below
    ``threshold`` is drawn too and its panel title says so."""
    names = {c["id"]: c["name"] for c in gt["categories"]}
    step = max(1, len(gt["images"]) // max(1, n))
    idx = list(range(0, len(gt["images"]), step))[:n]
    fig, axes = plt.subplots(len(results), len(idx), figsize=(3.0 * len(idx), 2.8 * len(results)),
                             squeeze=False)
    for r, (b, res) in enumerate(results.items()):
        preds = res["test"].predictions
        for c, i in enumerate(idx):
            s = mc._gt_sample(gt, i)
            im = gt["images"][i]
            mine = sorted([p for p in preds if p["image_id"] == im["id"]],
                          key=lambda p: -p["score"])[:1]
            title = f"true: {s['labels'][0] if s['labels'] else '?'}"
            if mine and mine[0]["score"] < threshold:
                title += f" (best {mine[0]['score']:.2f} < {threshold:g})"
            boxes = np.array([[p["bbox"][0], p["bbox"][1], p["bbox"][0] + p["bbox"][2],
                               p["bbox"][1] + p["bbox"][3]] for p in mine]).reshape(-1, 4)
            masks = np.stack([rle_to_mask(p["segmentation"]) for p in mine]).astype(bool) \
                if mine and "segmentation" in mine[0] else None
            draw_detections(s["image"], boxes, [names[p["category_id"]] for p in mine],
                            [p["score"] for p in mine], masks=masks, ax=axes[r, c],
                            title=title)
            if c == 0:
                axes[r, c].text(-0.08, 0.5, BACKBONE_LABELS.get(b, b), rotation=90,
                                transform=axes[r, c].transAxes, va="center", ha="right")
    return finish_figure(fig, title)


def table_figure(table: pd.DataFrame, metric: str, title: str = ""):
    """Paper vs ours for one metric across backbones (bars)."""
    t = table[table["metric"] == metric]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(t) + 2), 3.4))
    x = np.arange(len(t))
    ax.bar(x - 0.2, t["paper"].fillna(0), 0.4, label="paper", color="0.6")
    ax.bar(x + 0.2, t["ours"], 0.4, label="ours", color="tab:blue")
    ax.set_xticks(x, t["backbone"], rotation=20)
    ax.set(ylabel=metric, ylim=(0, 1.05))
    ax.grid(alpha=0.3, axis="y")
    ax.legend()
    return finish_figure(fig, title)
