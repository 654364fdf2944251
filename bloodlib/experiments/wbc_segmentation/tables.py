"""Paper 5's tables: parameters, Table 1 beside ours, pretrained vs scratch, the benchmarks."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import pandas as pd

from ...results import (compare_with_paper, paper_table, pretrained_vs_scratch,
                        reference_table as table)
from ...models.segmentation_zoo import count_parameters
from ..configs import SegmentationSettings
from .settings import DATASET_LABELS, EXPERIMENT, MODEL_LABELS, PAPER, TABLE1_METRICS
from .train import build_model


def parameter_table(settings: SegmentationSettings, widths: Sequence[float] = ()) -> pd.DataFrame:
    """Parameters of every model at the profile's width and at ``widths`` (e.g. 1.0)."""
    ws = list(dict.fromkeys([float(settings.width), *map(float, widths)]))
    rows = []
    for name in settings.models:
        rows.append({"model": MODEL_LABELS.get(name, name),
                     **{f"params @ width {w:g}": count_parameters(build_model(name, settings, w))
                        for w in ws}})
    return pd.DataFrame(rows).set_index("model")


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
