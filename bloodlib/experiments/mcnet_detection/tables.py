"""Paper 1's tables: Tables 1 and 2 beside ours, the ablation, benchmark rows."""

from __future__ import annotations

import resource
import sys
from typing import Any, Mapping, Optional

import pandas as pd
import torch

from ...results import compare_with_paper, paper_table, pretrained_vs_scratch
from ...results import reference_table as table
from ...models.segmentation_zoo import count_parameters
from .settings import DATASET_LABELS, EXPERIMENT, MODEL_LABELS, PAPER, TABLE_METRICS
from ..configs import McnetConfig
from .recipe import DetectorRecipe
from .evaluate import Evaluation
from .train import build_model


def reference_table(reference_dir: Any = None) -> pd.DataFrame:
    """The committed ``bench_cpu``/``full`` results of this experiment (``results/reference``):
    box mAP50, mAP50-95, per-class AP50, precision/recall, speed, minutes, peak memory."""
    return table(EXPERIMENT, ("mAP50", "mAP50_95", "AP50/WBC", "AP50/RBC", "AP50/Platelets",
                              "segm_mAP50", "precision", "recall", "train_images_per_s",
                              "inference_images_per_s"), reference_dir)


def pretrained_table(reference_dir: Any = None) -> pd.DataFrame:
    """BCCD test: the committed pairs fine-tuned from ImageNet vs from scratch (same
    detector, backbone and steps, side by side), box mAP50, beside paper 1's Faster R-CNN
    (its Table 2, as a fraction)."""
    ref = paper_table(PAPER, "table2").set_index("model")
    return pretrained_vs_scratch(EXPERIMENT, "mAP50", reference_dir,
                                 paper={"bccd": float(ref.loc["Faster R-CNN", "mAP50"]) / 100})


def split_counts(splits: Mapping[str, dict]) -> pd.DataFrame:
    """Images and boxes per class for each split (columns)."""
    rows = {}
    for s, coco in splits.items():
        names = {c["id"]: c["name"] for c in coco["categories"]}
        counts = pd.Series([names[a["category_id"]] for a in coco["annotations"]],
                           dtype=object).value_counts()
        rows[s] = {"images": len(coco["images"]),
                   **{n: int(counts.get(n, 0)) for n in names.values()}}
    return pd.DataFrame(rows)


def parameter_table(settings: McnetConfig, num_classes: int) -> pd.DataFrame:
    """Parameters of each torchvision model at the profile's settings (and YOLO's)."""
    rows = []
    for name in settings.models:
        if name == "yolov9":
            from ...yolo import build_yolo
            net = build_yolo(settings.yolo.model, pretrained=False).model
            rows.append({"model": MODEL_LABELS[name], "backbone": settings.yolo.model,
                         "parameters": count_parameters(net)})
        else:
            m = build_model(name, DetectorRecipe.of(settings), num_classes)
            rows.append({"model": MODEL_LABELS[name], "backbone": settings.backbone,
                         "parameters": count_parameters(m),
                         "ImageNet backbone": bool(getattr(m, "backbone_pretrained", False))})
    return pd.DataFrame(rows).set_index("model")


# ----------------------------------------------------------------------------- tables
def table_metrics(ev: Evaluation) -> dict[str, float]:
    """Table 1/2 metrics of one evaluation (fractions)."""
    m = ev.metrics()
    return {k: m[k] for k in TABLE_METRICS}


def table2(results: Mapping[str, Mapping[str, float]], dataset: str = "bccd") -> pd.DataFrame:
    """Paper 1's Table 2 (BCCD) beside ours: ``results[model] = metrics`` (fractions).
    Rows: model, metric, paper (percent), ours (percent), difference."""
    frames = []
    for name, metrics in results.items():
        ours = {k: metrics[k] for k in TABLE_METRICS if k in metrics}
        df = compare_with_paper(ours, PAPER, "table2", row_filter={"model": MODEL_LABELS[name]})
        frames.append(df.assign(dataset=DATASET_LABELS.get(dataset, dataset),
                                model=MODEL_LABELS[name]))
    return _stack(frames)


def table1(results: Mapping[str, Mapping[str, float]]) -> pd.DataFrame:
    """Paper 1's Table 1 (PBC) beside ours, in percent. The paper's "mAP" column mixes
    fractions and one percentage; its values are shown in percent (fractions x 100)."""
    ref = paper_table(PAPER, "table1").set_index("model")
    frames = []
    for name, metrics in results.items():
        label = MODEL_LABELS[name]
        ours = {k: metrics[k] for k in ("recall", "precision", "mAP50") if k in metrics}
        df = compare_with_paper(ours, PAPER, "table1", row_filter={"model": label},
                                metric_map={k: k for k in ours}, scale=100)
        paper_map = float(ref.loc[label, "mAP50_95"])
        paper_map = paper_map * 100 if paper_map <= 1 else paper_map
        if "mAP50_95" in metrics:
            mine = 100 * float(metrics["mAP50_95"])
            df = pd.concat([df, pd.DataFrame([{"metric": "mAP50_95", "label": "mAP",
                                               "paper": paper_map, "ours": mine,
                                               "difference": mine - paper_map,
                                               "unit": "percent"}])], ignore_index=True)
        frames.append(df.assign(dataset="PBC", model=label))
    return _stack(frames)


def _stack(frames: list[pd.DataFrame]) -> pd.DataFrame:
    if not frames:
        return pd.DataFrame(columns=["dataset", "model", "metric", "paper", "ours", "difference"])
    out = pd.concat(frames, ignore_index=True)
    return out[["dataset", "model", "metric", "paper", "ours", "difference"]]


def wide(table: pd.DataFrame) -> pd.DataFrame:
    """A paper-vs-ours table as one row per model, columns (paper|ours, metric)."""
    if table.empty:
        return table
    return table.pivot_table(index=["dataset", "model"], columns="metric",
                             values=["paper", "ours"], sort=False).round(2)


def benchmark_row(name: str, ev: Evaluation, seconds: float, images_per_s: float,
                  peak_mb: Optional[float] = None) -> dict[str, Any]:
    """One row of the benchmark table (issue 5): mAP50, mAP50-95, per-class AP50,
    minutes, training and inference images per second, peak memory."""
    m = ev.metrics()
    row = {"model": MODEL_LABELS.get(name, name), "mAP50": m["mAP50"], "mAP50_95": m["mAP50_95"],
           **{k: v for k, v in m.items() if k.startswith("AP50/")},
           "train_minutes": seconds / 60, "train_images_per_s": images_per_s,
           "inference_images_per_s": ev.images_per_second}
    if peak_mb is not None:
        row["peak_memory_mb"] = peak_mb
    return row


def peak_memory_mb() -> float:
    """Peak resident memory of this process so far (MiB; CUDA peak when on a GPU)."""
    if torch.cuda.is_available() and torch.cuda.max_memory_allocated() > 0:
        return torch.cuda.max_memory_allocated() / 2 ** 20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2 ** 20 if sys.platform == "darwin" else rss / 1024


def ablation_table(evals: Mapping[str, Evaluation]) -> pd.DataFrame:
    """Mask-IoU head ablation: mask AP of Mask R-CNN (no head), MCNet ranked by class
    score (head trained, not used), MCNet ranked by class score x predicted IoU."""
    rows = []
    if "mask_rcnn" in evals and evals["mask_rcnn"].segm is not None:
        s = evals["mask_rcnn"].segm
        rows.append({"variant": "Mask R-CNN (no mask-IoU head)", "mask AP": s.AP,
                     "mask AP50": s.AP50, "mask AP75": s.AP75, "box AP": evals["mask_rcnn"].bbox.AP})
    if "mcnet" in evals and evals["mcnet"].segm is not None:
        ev = evals["mcnet"]
        if ev.segm_class_scores is not None:
            s = ev.segm_class_scores
            rows.append({"variant": "MCNet, masks ranked by class score", "mask AP": s.AP,
                         "mask AP50": s.AP50, "mask AP75": s.AP75, "box AP": ev.bbox.AP})
        s = ev.segm
        rows.append({"variant": "MCNet, class score x predicted mask IoU", "mask AP": s.AP,
                     "mask AP50": s.AP50, "mask AP75": s.AP75, "box AP": ev.bbox.AP})
    return pd.DataFrame(rows).set_index("variant") if rows else pd.DataFrame()
