"""Image-classification metrics (scikit-learn) in one :class:`ClassificationReport`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from bloodlib.errors import UnknownClassError

__all__ = ["ClassificationReport", "classification_report", "to_indices"]

_PER_CLASS = ("precision", "recall", "f1", "specificity", "support", "roc_auc")


@dataclass
class ClassificationReport:
    """Metrics of one set of predictions; per-class values are ``{class name: value}``.

    ``confusion[i, j]`` counts images of true class ``i`` predicted as ``j`` (scikit-learn
    orientation). ``macro``/``weighted`` hold precision, recall, f1 and specificity
    (weighted by support). ROC-AUC is one-vs-rest per class, NaN for a class absent from
    (or the only class in) ``y_true``; ``roc_auc_macro`` is the mean over the others.
    ROC fields are empty/NaN when no probabilities were given.
    """

    classes: list[str]
    accuracy: float
    error_rate: float
    precision: dict[str, float]
    recall: dict[str, float]
    f1: dict[str, float]
    specificity: dict[str, float]
    support: dict[str, int]
    macro: dict[str, float]
    weighted: dict[str, float]
    confusion: np.ndarray = field(repr=False)
    roc_auc: dict[str, float] = field(default_factory=dict)
    roc_auc_macro: float = float("nan")
    roc_curves: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = field(
        default_factory=dict, repr=False)  # name -> (fpr, tpr, thresholds)

    def as_dict(self) -> dict[str, float]:
        """Flat floats: accuracy, error_rate, ``macro_<m>``, ``weighted_<m>``, roc_auc_macro,
        and ``<metric>/<class>`` for each per-class metric."""
        out = {"accuracy": self.accuracy, "error_rate": self.error_rate,
               "roc_auc_macro": self.roc_auc_macro}
        out.update({f"macro_{k}": v for k, v in self.macro.items()})
        out.update({f"weighted_{k}": v for k, v in self.weighted.items()})
        for metric in _PER_CLASS:
            out.update({f"{metric}/{c}": v for c, v in getattr(self, metric).items()})
        return {k: float(v) for k, v in out.items()}

    def per_class_frame(self) -> pd.DataFrame:
        """One row per class: precision, recall, f1, specificity, support, roc_auc."""
        return pd.DataFrame({m: pd.Series(getattr(self, m), dtype=float) for m in _PER_CLASS},
                            index=pd.Index(self.classes, name="class")).astype(
            {"support": int})


def to_indices(labels: Sequence[Any], classes: Sequence[str]) -> np.ndarray:
    """Class indices from indices or class names; anything else raises UnknownClassError."""
    index = {c: i for i, c in enumerate(classes)}
    out = np.empty(len(labels), dtype=np.int64)
    for k, y in enumerate(labels):
        y = y.item() if hasattr(y, "item") else y
        if isinstance(y, str):
            if y not in index:
                raise UnknownClassError(f"Unknown class {y!r}; known classes: {list(classes)}")
            out[k] = index[y]
        elif isinstance(y, (int, np.integer)) and not isinstance(y, bool) and 0 <= y < len(classes):
            out[k] = y
        else:
            raise UnknownClassError(f"Label {y!r} is neither a class name nor an index in "
                                    f"0..{len(classes) - 1}; classes: {list(classes)}")
    return out


def _labels(y: Any) -> list:
    if hasattr(y, "detach"):
        y = y.detach().cpu().numpy()
    return list(y)


def classification_report(y_true: Sequence[Any], y_pred: Optional[Sequence[Any]] = None,
                          y_prob: Optional[Any] = None, *, classes: Sequence[str]
                          ) -> ClassificationReport:
    """Accuracy, per-class and averaged metrics, confusion matrix and (with ``y_prob``)
    one-vs-rest ROC-AUC and ROC curves.

    ``y_true``/``y_pred`` hold class indices or names of ``classes``; ``y_prob`` is
    (n, len(classes)) class probabilities; ``y_pred`` defaults to its argmax.
    """
    classes = list(classes)
    k = len(classes)
    yt = to_indices(_labels(y_true), classes)
    prob = None
    if y_prob is not None:
        prob = np.asarray(y_prob.detach().cpu().numpy() if hasattr(y_prob, "detach") else y_prob,
                          dtype=float)
        if prob.shape != (len(yt), k):
            raise ValueError(f"y_prob has shape {prob.shape}; expected ({len(yt)}, {k})")
    if y_pred is None:
        if prob is None:
            raise ValueError("Give y_pred or y_prob (or both).")
        yp = prob.argmax(axis=1)
    else:
        yp = to_indices(_labels(y_pred), classes)
    if len(yp) != len(yt):
        raise ValueError(f"y_true has {len(yt)} labels but y_pred has {len(yp)}")

    labels = list(range(k))
    cm = skm.confusion_matrix(yt, yp, labels=labels)
    p, r, f, s = skm.precision_recall_fscore_support(yt, yp, labels=labels, zero_division=0)
    fp = cm.sum(axis=0) - np.diag(cm)
    tn = cm.sum() - cm.sum(axis=1) - fp
    spec = np.divide(tn, tn + fp, out=np.zeros(k), where=(tn + fp) > 0)
    per = {"precision": p, "recall": r, "f1": f, "specificity": spec}
    w = s / s.sum() if s.sum() else np.zeros(k)
    acc = float(skm.accuracy_score(yt, yp)) if len(yt) else float("nan")

    auc, curves = {}, {}
    if prob is not None:
        for i, c in enumerate(classes):
            pos = yt == i
            if pos.any() and not pos.all():
                auc[c] = float(skm.roc_auc_score(pos, prob[:, i]))
                curves[c] = skm.roc_curve(pos, prob[:, i])
            else:
                auc[c] = float("nan")
    valid_auc = [v for v in auc.values() if not np.isnan(v)]
    named = lambda a: {c: float(v) for c, v in zip(classes, a)}  # noqa: E731
    return ClassificationReport(
        classes=classes,
        accuracy=acc,
        error_rate=1.0 - acc,
        precision=named(p), recall=named(r), f1=named(f), specificity=named(spec),
        support={c: int(v) for c, v in zip(classes, s)},
        macro={m: float(v.mean()) for m, v in per.items()},
        weighted={m: float((v * w).sum()) for m, v in per.items()},
        confusion=cm,
        roc_auc=auc,
        roc_auc_macro=float(np.mean(valid_auc)) if valid_auc else float("nan"),
        roc_curves=curves,
    )
