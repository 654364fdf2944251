"""Classifier evaluation: metrics per protocol, summaries, ensembles, shared errors."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from torch import nn

from ...results import finite_metrics
from ...inference.classification import images_to_tensor, predict_proba
from ...metrics.classification import classification_report
from .data import CellImages


# ----------------------------------------------------------------------------- evaluation
@dataclass
class Evaluation:
    """Predictions of a model on a set and their :class:`ClassificationReport`."""

    report: Any
    probs: np.ndarray
    y_true: np.ndarray
    y_pred: np.ndarray
    seconds: float
    classes: list[str]

    def metrics(self) -> dict[str, float]:
        """The report's finite metrics (flat: accuracy, macro_*, ``<metric>/<class>``...)."""
        return finite(self.report.as_dict())

    @property
    def wrong(self) -> np.ndarray:
        return np.flatnonzero(self.y_true != self.y_pred)


finite = finite_metrics  # the notebooks call it by this name


def evaluate(model: nn.Module, data: CellImages, classes: Sequence[str], tta: str = "none",
             device: Any = None) -> Evaluation:
    """Probabilities (averaged over ``tta`` views) and the classification report of
    ``model`` on ``data``; ``data``'s labels must be among ``classes``."""
    classes = list(classes)
    t0 = time.perf_counter()
    probs = predict_proba(model, images_to_tensor(data.images), tta, device=device)
    seconds = time.perf_counter() - t0
    y = data.targets(classes)
    report = classification_report(y, None, probs, classes=classes)
    return Evaluation(report, probs, y, probs.argmax(1), seconds, classes)


def summary_row(ev: Evaluation) -> dict[str, float]:
    """Accuracy, error rate, macro precision/recall/F1/specificity and macro AUC."""
    r = ev.report
    return {"accuracy": r.accuracy, "error_rate": r.error_rate, "precision": r.macro["precision"],
            "recall": r.macro["recall"], "F1": r.macro["f1"],
            "specificity": r.macro["specificity"], "roc_auc": r.roc_auc_macro}


def summary_table(evals: Mapping[str, Evaluation]) -> pd.DataFrame:
    """:func:`summary_row` of every evaluation, one row each."""
    return pd.DataFrame({k: summary_row(v) for k, v in evals.items()}).T


def ensemble(evals: Mapping[str, Evaluation]) -> Evaluation:
    """The soft-vote ensemble of ``evals`` (model name -> :class:`Evaluation` on one set):
    the mean of their probabilities, with its own report. When the ensemble still misses
    what the single models miss, those errors lie in the images, not in one training run."""
    if not evals:
        raise ValueError("ensemble() needs at least one Evaluation.")
    first = next(iter(evals.values()))
    for name, ev in evals.items():
        if ev.classes != first.classes or not np.array_equal(ev.y_true, first.y_true):
            raise ValueError(f"{name!r} was evaluated on other images or classes than the "
                             f"first model: evaluate every model on the same set.")
    probs = np.mean([ev.probs for ev in evals.values()], axis=0)
    report = classification_report(first.y_true, None, probs, classes=first.classes)
    return Evaluation(report, probs, first.y_true, probs.argmax(1),
                      sum(ev.seconds for ev in evals.values()), list(first.classes))


def shared_errors(evals: Mapping[str, Evaluation], data: CellImages) -> pd.DataFrame:
    """The images of ``data`` that at least one of ``evals`` (model name -> its
    :class:`Evaluation` on ``data``) gets wrong: file name, true class, each model's
    prediction (blank where right) and ``n_wrong``, most-missed first. Images every model
    misses point at ambiguous cells or labels rather than at one training run."""
    for name, ev in evals.items():
        if len(ev.y_true) != len(data):
            raise ValueError(f"{name!r} was evaluated on {len(ev.y_true)} images, not on the "
                             f"{len(data)} given: evaluate every model on the same set.")
    wrong = sorted({int(i) for ev in evals.values() for i in ev.wrong})
    rows = []
    for i in wrong:
        row = {"image": Path(data.paths[i]).name, "true": data.labels[i]}
        row.update({name: ev.classes[ev.y_pred[i]] if ev.y_pred[i] != ev.y_true[i] else ""
                    for name, ev in evals.items()})
        row["n_wrong"] = sum(1 for name in evals if row[name])
        rows.append(row)
    columns = ["image", "true", *evals, "n_wrong"]
    df = pd.DataFrame(rows, columns=columns)
    return df.sort_values(["n_wrong", "true"], ascending=[False, True], kind="stable",
                          ignore_index=True)
