"""Paper 3's tables: Table I beside ours, instance and classification tables, attention
gates, the ablation."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from ...results import compare_with_paper, paper_table, pretrained_vs_scratch, reference_table as table
from ...models.rmaskrcnn import attention_maps
from ...models.attention import attention_modules, ChannelAttention, gate
from .settings import EXPERIMENT, MODEL_LABELS, PAPER, TABLE1_LABELS


# ============================================================================ tables
def reference_table(reference_dir: Any = None) -> pd.DataFrame:
    """The committed ``bench_cpu``/``full`` results of this experiment (``results/reference``):
    cell IoU, pixel accuracy, RMSE, matched-cell IoU and recall, COCO segm AP, minutes,
    peak memory."""
    return table(EXPERIMENT, ("IoU", "pixel_accuracy", "rmse", "cell_iou", "cell_recall",
                              "segm_AP", "segm_AP50", "train_steps"), reference_dir)


def pretrained_table(reference_dir: Any = None, metric: str = "cell_iou") -> pd.DataFrame:
    """SegPC-2021 validation: the committed pairs with an ImageNet backbone vs from scratch
    (same model, backbone, size and time budget, side by side), matched-cell IoU."""
    return pretrained_vs_scratch(EXPERIMENT, metric, reference_dir)


def table1(results: Mapping[str, Mapping[str, float]]) -> pd.DataFrame:
    """Paper 3's Table I beside ours: one row per model and metric (percent). ``results``
    maps ``fcm`` / ``maskrcnn`` / ``unet`` / ``rmaskrcnn`` to our metrics (fractions)."""
    frames = []
    for key, metrics in results.items():
        if key not in TABLE1_LABELS:
            continue
        ours = {k: metrics[k] for k in ("IoU", "pixel_accuracy", "rmse") if k in metrics}
        df = compare_with_paper(ours, PAPER, "table1", row_filter={"model": TABLE1_LABELS[key]})
        frames.append(df.assign(model=MODEL_LABELS[key]))
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return out[["model", "metric", "paper", "ours", "difference"]] if frames else out


def instance_table(results: Mapping[str, Mapping[str, float]]) -> pd.DataFrame:
    """Our instance-level metrics per model (no paper counterpart)."""
    cols = ["cell_iou", "segm_AP50", "segm_AP", "cell_recall", "matched_cells", "gt_cells",
            "predicted_cells"]
    return pd.DataFrame({MODEL_LABELS.get(k, k): {c: v.get(c, np.nan) for c in cols}
                         for k, v in results.items()}).T


def classification_tables(report: Any) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(Table II-style confusion matrix, Table III-style per-class and average rows with
    the paper's DeepBCSDnet "Average" row for reference, in percent)."""
    cm = pd.DataFrame(report.confusion, index=[f"actual {c}" for c in report.classes],
                      columns=[f"predicted {c}" for c in report.classes])
    rows = {c: {"precision": report.precision[c], "recall": report.recall[c],
                "F1": report.f1[c]} for c in report.classes}
    rows["average (ours)"] = {"accuracy": report.accuracy, "precision": report.macro["precision"],
                              "recall": report.macro["recall"], "F1": report.macro["f1"]}
    ours = pd.DataFrame(rows).T * 100
    paper = paper_table(PAPER, "table3")
    ref = paper[(paper["model"] == "DeepBCSDnet") & (paper["class"] == "Average")]
    ref = ref.set_index(pd.Index(["paper DeepBCSDnet average (ALL vs MM)"]))[
        ["accuracy", "precision", "recall", "F1"]]
    return cm, pd.concat([ours, ref])[["accuracy", "precision", "recall", "F1"]]


def _attention_place(name: str) -> str:
    """``"fpn.bu_attention.1.0"`` -> ``"B-U-AM N4"`` (F2..F5 after FPN merges, N3..N5)."""
    parts = name.split(".")
    level = int(parts[2])
    return f"FPN-AM F{level + 2}" if parts[1] == "fpn_attention" else f"B-U-AM N{level + 3}"


@torch.no_grad()
def attention_gate_table(model: nn.Module, images: Sequence[torch.Tensor],
                         off_below: float = 0.1) -> pd.DataFrame:
    """What each attention module of an R-Mask R-CNN does, averaged over ``images``: its
    softmax times the entry count ``n`` (1 = uniform) - median, maximum, and the share of
    channels (CA) or positions (SA) below ``off_below`` - and the smallest multiplier its
    features get (:func:`~bloodlib.models.attention.gate`). A collapsed softmax reads as a
    median near 0 and a maximum near ``n``; the plain multiplier then switches the other
    entries off (minimum ~0), the residual one halves them (minimum 0.5)."""
    modules = attention_modules(model.backbone)
    if not modules:
        raise ValueError("attention_gate_table needs an R-Mask R-CNN with attention modules.")
    stats: dict[str, list[tuple[float, ...]]] = {}
    for image in images:
        for name, w in attention_maps(model, image).items():
            n, scaled = w.numel(), w.flatten() * w.numel()
            floor = gate(w.flatten().min(), n, modules[name].residual)
            stats.setdefault(name, []).append((n, float(scaled.median()), float(scaled.max()),
                                               float((scaled < off_below).float().mean()),
                                               float(floor)))
    rows = []
    for name, values in stats.items():
        a = np.asarray(values)
        rows.append({"where": _attention_place(name),
                     "attention": "CA" if isinstance(modules[name], ChannelAttention) else "SA",
                     "entries": int(a[0, 0]), "residual": modules[name].residual,
                     "logit bound": modules[name].logit_bound,
                     "median n*softmax": a[:, 1].mean(), "max n*softmax": a[:, 2].mean(),
                     f"share < {off_below}": a[:, 3].mean(), "min multiplier": a[:, 4].mean()})
    return pd.DataFrame(rows)


def ablation_table(results: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """One row per variant: its parts and metrics (cell IoU, AP50, IoU, PA, RMSE, time)."""
    rows = {}
    for name, r in results.items():
        m = r["metrics"]
        rows[name] = {"steps": r["log"].steps, "train_s": r["log"].seconds,
                      **{k: m.get(k, np.nan) for k in ("cell_iou", "segm_AP50", "segm_AP", "IoU",
                                                       "pixel_accuracy", "rmse")}}
    return pd.DataFrame(rows).T
