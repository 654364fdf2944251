"""Classification tables: paper 4's and papers 1-2's PBC tables beside ours, pretrained vs
scratch, the benchmarks."""

from __future__ import annotations

from typing import Any, Mapping

import pandas as pd

from ...results import paper_table, pretrained_vs_scratch, reference_table as table
from .settings import EXPERIMENT


def pretrained_table(reference_dir: Any = None) -> pd.DataFrame:
    """PBC 8 classes, paper 1's 80/20: the committed pairs fine-tuned from ImageNet vs from
    scratch (same network, size and budget, side by side), test accuracy, beside paper
    2's 99.31 % (its Table 6, Mask R-CNN + ResNet-101)."""
    claim = float(paper_table("paper2", "table6").iloc[0]["accuracy"])
    return pretrained_vs_scratch(EXPERIMENT, "accuracy", reference_dir,
                                 paper={"pbc_paper1_80_20": claim})


def reference_table(reference_dir: Any = None) -> pd.DataFrame:
    """The committed ``bench_cpu``/``full`` results of this experiment (``results/reference``):
    accuracy, macro F1 / precision / recall, ROC-AUC, minutes and peak memory per protocol
    (or external set) and model."""
    return table(EXPERIMENT, ("accuracy", "macro_f1", "macro_precision", "macro_recall",
                              "roc_auc_macro"), reference_dir)


# ----------------------------------------------------------------------------- paper tables
def paper4_table(ours: Mapping[str, float]) -> pd.DataFrame:
    """Paper 4's only classification number (ResNet accuracy 98.61 %) beside our accuracies
    (``{label: accuracy fraction}``), in percent."""
    ref = paper_table("paper4", "classification").iloc[0]
    rows = [{"source": "paper 4", "model": ref["model"], "data": ref["dataset"],
             "accuracy (%)": float(ref["accuracy"])}]
    rows += [{"source": "ours", "model": k.split(" | ")[0], "data": k.split(" | ")[-1],
              "accuracy (%)": 100 * float(v)} for k, v in ours.items()]
    return pd.DataFrame(rows)


def pbc8_paper_table(ours: Mapping[str, Mapping[str, float]]) -> pd.DataFrame:
    """PBC 8-class results beside the papers, in percent: paper 2's Table 5 (its Mask R-CNN
    backbones, 100 test images per class) and Table 6, paper 1's and paper 2's quoted
    related work, then ``ours`` (``{label: summary_row}``)."""
    cols = ["accuracy", "precision", "recall", "F1", "specificity"]
    frames = []
    t5 = paper_table("paper2", "table5")
    frames.append(t5.assign(source="paper 2, Table 5",
                            model=t5["model"] + " " + t5["backbone"]))
    t6 = paper_table("paper2", "table6")
    frames.append(t6.assign(source="paper 2, Table 6", model=t6["model"] + " " + t6["citation"]))
    for p in ("paper1", "paper2"):
        rw = paper_table(p, "related_work_classification")
        frames.append(rw.assign(source=f"{p[:-1]} {p[-1]}, related work",
                                model=rw["model"] + " " + rw["citation"].str.split(" ").str[0])
                      .assign(**{c: rw[c] / 100 for c in cols if c in rw}))
    paper = pd.concat(frames, ignore_index=True)
    paper = paper.reindex(columns=["source", "model", *cols])
    mine = pd.DataFrame([{"source": "ours", "model": k, **{c: v.get(c) for c in cols}}
                         for k, v in ours.items()])
    out = pd.concat([paper, mine], ignore_index=True)
    out[cols] = out[cols].astype(float) * 100
    return out
