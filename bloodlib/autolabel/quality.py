"""How good are the auto-masks? Mask IoU against real whole-cell masks (the BCCD WBC
masks of Banik et al., the Zheng sets), per cell type, with best and worst cases."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

import cv2
import numpy as np

from ..data.convert import category_id, mask_to_rle, rle_to_mask
from ..data.records import category_names
from ..io import read_image
from .segment import _KINDS, AutolabelError, _ellipse, _tight_box, segment_in_box, segment_single_cell
from ..data.masks import cell_mask, read_label_mask
from ..data.parsers import load_bccd, load_bccd_wbc_masks, load_zheng

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from matplotlib.figure import Figure

__all__ = ["QUALITY_DATASETS", "QualityReport", "autolabel_quality", "quality_figure"]


QUALITY_DATASETS = ("bccd_wbc", "jiangxi", "cellavision")


@dataclass
class QualityReport:
    """Auto-masks versus real masks: ``summary`` per cell type (n, IoU mean / median /
    10th percentile, failures, the inscribed-ellipse baseline) and one row per cell."""

    summary: "pd.DataFrame"
    rows: "pd.DataFrame"
    setting: dict = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        """Flat ``{"iou_mean_<type>": ...}`` numbers for ``run.finish(metrics=...)``."""
        out = {}
        for cell_type, row in self.summary.iterrows():
            out[f"iou_mean_{cell_type}"] = float(row["iou_mean"])
            out[f"iou_median_{cell_type}"] = float(row["iou_median"])
        return out


@dataclass
class _Cell:
    image_path: Path
    cell_type: str
    gt: np.ndarray
    box: Optional[tuple[float, float, float, float]]
    component: int = 0


def _bccd_cells(box_source: str, root: Any, bccd_root: Any, limit: Optional[int] = None,
                min_area: int = 300) -> list[_Cell]:
    """One cell per connected component (>= ``min_area`` px) of each BCCD WBC mask;
    masks are read until ``limit`` cells are found."""

    records = load_bccd_wbc_masks(root, bccd_root, on_missing="ignore")
    boxes: dict[str, list[tuple[float, ...]]] = {}
    if box_source == "annotation":
        coco = load_bccd("all", bccd_root)
        wbc = category_id(category_names(coco), "WBC")
        names = {im["id"]: im["file_name"] for im in coco["images"]}
        for a in coco["annotations"]:
            if a["category_id"] == wbc:
                x, y, w, h = a["bbox"]
                boxes.setdefault(names[a["image_id"]], []).append((x, y, x + w, y + h))
    cells: list[_Cell] = []
    for rec in records:
        if limit is not None and len(cells) >= limit:
            break
        full = cell_mask(read_label_mask(rec))
        n, cc, stats, _ = cv2.connectedComponentsWithStats(full.astype(np.uint8))
        for k in range(1, n):
            if stats[k, cv2.CC_STAT_AREA] < min_area:
                continue
            gt = cc == k
            box = _tight_box(gt)
            if box_source == "annotation":
                box = _best_box(box, boxes.get(Path(rec.image_path).name, []))
            cells.append(_Cell(Path(rec.image_path), "WBC", gt, box, k))
    return cells[:limit]


def _box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _best_box(ref: Sequence[float], candidates: Sequence[Sequence[float]],
              min_iou: float = 0.3) -> Optional[tuple[float, float, float, float]]:
    scored = [(_box_iou(ref, c), tuple(c)) for c in candidates]
    best = max(scored, default=(0.0, None))
    return best[1] if best[0] >= min_iou else None


def _zheng_cells(which: str, root: Any, limit: Optional[int] = None) -> list[_Cell]:

    cells = []
    for rec in load_zheng(which, root)[:limit]:
        gt = cell_mask(read_label_mask(rec))
        cells.append(_Cell(Path(rec.image_path), rec.label or "WBC", gt, _tight_box(gt)))
    return cells


def autolabel_quality(dataset: str = "bccd_wbc", mode: str = "box", box_source: str = "mask",
                      method: str = "auto", max_cells: Optional[int] = None,
                      root: Any = None, bccd_root: Any = None) -> QualityReport:
    """Mask IoU of auto-masks against real whole-cell masks (nucleus + cytoplasm).

    * ``dataset="bccd_wbc"``: the BCCD WBC masks (Banik et al.), one cell per connected
      component; ``box_source="mask"`` boxes it with the mask's bounding box,
      ``"annotation"`` with the BCCD VOC WBC box overlapping it most (IoU >= 0.3; cells
      without one are rows with status ``"no box"``, outside the statistics).
    * ``dataset="jiangxi"`` / ``"cellavision"``: the Zheng sets, per WBC type;
      ``mode="box"`` uses the mask's bounding box, ``mode="single_cell"`` no box at all
      (:func:`segment_single_cell`, the PBC situation).

    A failed single-cell segmentation counts as IoU 0. ``baseline_iou`` is the IoU of the
    ellipse inscribed in the box (NaN in single-cell mode). ``seconds`` is CPU time per
    cell. ``root`` / ``bccd_root`` override the dataset folders.
    """
    import pandas as pd

    if dataset not in QUALITY_DATASETS:
        raise ValueError(f"dataset must be one of {QUALITY_DATASETS}, got {dataset!r}.")
    if mode not in ("box", "single_cell"):
        raise ValueError(f"mode must be 'box' or 'single_cell', got {mode!r}.")
    if box_source not in ("mask", "annotation"):
        raise ValueError(f"box_source must be 'mask' or 'annotation', got {box_source!r}.")
    if dataset == "bccd_wbc":
        if mode != "box":
            raise ValueError("BCCD images hold many cells: use mode='box' for dataset='bccd_wbc'.")
        cells = _bccd_cells(box_source, root, bccd_root, max_cells)
    else:
        if box_source != "mask":
            raise ValueError("The Zheng sets have no box annotations: use box_source='mask'.")
        cells = _zheng_cells(dataset, root, max_cells)
    rows, cache, wall = [], {}, time.perf_counter()
    for c in cells:
        if c.image_path not in cache:
            cache = {c.image_path: read_image(c.image_path)}
        rows.append(_measure(cache[c.image_path], c, dataset, mode, method))
    frame = pd.DataFrame(rows)
    setting = {"dataset": dataset, "mode": mode, "box_source": box_source if mode == "box" else None,
               "method": method, "cells": len(cells), "wall_seconds": time.perf_counter() - wall}
    return QualityReport(_summarise(frame), frame, setting)


def _measure(image: np.ndarray, c: _Cell, dataset: str, mode: str, method: str) -> dict[str, Any]:
    row: dict[str, Any] = {"dataset": dataset, "image": str(c.image_path), "component": c.component,
                           "cell_type": c.cell_type, "iou": np.nan, "baseline_iou": np.nan,
                           "method": None, "status": "ok", "seconds": np.nan,
                           "gt_rle": mask_to_rle(c.gt), "auto_rle": None}
    if mode == "box" and c.box is None:
        row["status"] = "no box"
        return row
    t0 = time.process_time()
    try:
        if mode == "box":
            r = segment_in_box(image, c.box, "WBC", method)
        else:
            r = segment_single_cell(image, c.cell_type if c.cell_type in _KINDS else None, method)
        row.update(method=r.method, iou=_iou(r.mask, c.gt), auto_rle=mask_to_rle(r.mask))
    except AutolabelError as exc:
        row.update(status=f"failed: {exc}", iou=0.0)
    row["seconds"] = time.process_time() - t0
    if mode == "box":
        row["baseline_iou"] = _iou(_ellipse(image.shape[:2], c.box), c.gt)
    return row


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else float("nan")


def _summarise(frame: "pd.DataFrame") -> "pd.DataFrame":
    import pandas as pd

    scored = frame[frame["status"] != "no box"]
    parts = [(t, g) for t, g in scored.groupby("cell_type", sort=True)] + [("all", scored)]
    rows = []
    for cell_type, g in parts:
        rows.append({"cell_type": cell_type, "n": len(g), "iou_mean": g["iou"].mean(),
                     "iou_median": g["iou"].median(), "iou_p10": g["iou"].quantile(0.1),
                     "failed": int(g["status"].str.startswith("failed").sum()),
                     "baseline_iou_mean": g["baseline_iou"].mean(),
                     "seconds_mean": g["seconds"].mean()})
    summary = pd.DataFrame(rows).set_index("cell_type")
    summary.loc["all", "no_box"] = int((frame["status"] == "no box").sum())
    return summary


def quality_figure(report: QualityReport, n: int = 4, pad: float = 0.25) -> "Figure":
    """Best (top row) and worst (bottom row) ``n`` cells of a report: the real mask's
    outline in green, the auto-mask's in magenta, IoU and cell type in the title."""
    import matplotlib.pyplot as plt

    rows = report.rows[report.rows["status"] != "no box"].sort_values("iou", ascending=False)
    n = max(1, min(n, len(rows)))
    picks = [("best", rows.head(n)), ("worst", rows.tail(n).iloc[::-1])]
    fig, axes = plt.subplots(2, n, figsize=(2.6 * n, 5.6), squeeze=False)
    for r, (label, part) in enumerate(picks):
        for ax in axes[r]:
            ax.set_axis_off()
        for k, (_, row) in enumerate(part.iterrows()):
            ax = axes[r, k]
            image = read_image(row["image"])
            gt = rle_to_mask(row["gt_rle"]) > 0
            auto = rle_to_mask(row["auto_rle"]) > 0 if row["auto_rle"] else np.zeros_like(gt)
            ax.imshow(_outline(image, gt, auto, pad))
            ax.set_title(f"{label}: IoU {row['iou']:.2f}\n{row['cell_type']}", fontsize=9)
    fig.suptitle(f"Auto-masks on {report.setting.get('dataset', '')} "
                 f"({report.setting.get('mode', '')}): real mask green, auto-mask magenta", fontsize=10)
    fig.tight_layout()
    return fig


def _outline(image: np.ndarray, gt: np.ndarray, auto: np.ndarray, pad: float) -> np.ndarray:
    """Crop around both masks with their outlines drawn."""
    out = image.copy()
    for mask, colour in ((gt, (0, 200, 0)), (auto, (230, 0, 230))):
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(out, contours, -1, colour, max(1, image.shape[0] // 200))
    both = gt | auto
    if not both.any():
        return out
    x0, y0, x1, y1 = _tight_box(both)
    px, py = pad * (x1 - x0), pad * (y1 - y0)
    H, W = image.shape[:2]
    return out[int(max(0, y0 - py)):int(min(H, y1 + py)), int(max(0, x0 - px)):int(min(W, x1 + px))]
