"""Semantic- and instance-segmentation metrics.

:class:`SegmentationMeter` accumulates one confusion matrix over a whole dataset, so every
metric is computed over all pixels pooled (not averaged per image).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

from bloodlib.errors import MaskError

__all__ = ["SegmentationMeter", "boundary_band_errors", "mask_iou", "matched_instance_iou"]


def _numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def _nanmean(a: np.ndarray) -> float:
    a = a[~np.isnan(a)]
    return float(a.mean()) if a.size else float("nan")


class SegmentationMeter:
    """Pixel confusion matrix over a dataset; :meth:`compute` gives the metrics.

    ``update(pred, target)`` takes class-index maps (numpy or torch, any equal shapes,
    batches included). Target pixels equal to ``ignore_index`` are skipped.
    With ``binary_foreground`` (a set of class indices, e.g. ``{2}`` for "nucleus vs
    rest"), pixels are mapped to 1 if their class is in the set, else 0, before counting,
    and the meter has two classes named ``class_names`` or ``["rest", "foreground"]``.
    ``confusion[t, p]`` counts pixels of true class ``t`` predicted as ``p``.
    """

    def __init__(self, num_classes: int, class_names: Optional[Sequence[str]] = None,
                 ignore_index: Optional[int] = None,
                 binary_foreground: Optional[Sequence[int]] = None) -> None:
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.binary_foreground = None if binary_foreground is None else sorted(binary_foreground)
        n = 2 if self.binary_foreground is not None else self.num_classes
        default = ["rest", "foreground"] if n == 2 and self.binary_foreground is not None \
            else [str(i) for i in range(n)]
        self.class_names = list(class_names) if class_names is not None else default
        if len(self.class_names) != n:
            raise ValueError(f"{len(self.class_names)} class names for {n} classes")
        self.confusion = np.zeros((n, n), dtype=np.int64)

    def reset(self) -> None:
        """Forget everything seen so far."""
        self.confusion[:] = 0

    def update(self, pred: Any, target: Any) -> None:
        """Add one prediction/target pair (or batch) of class-index maps."""
        p, t = _numpy(pred), _numpy(target)
        if p.shape != t.shape:
            raise MaskError(f"Prediction shape {p.shape} differs from target shape {t.shape}; "
                            "pass class indices (e.g. logits.argmax(1)), not scores.")
        p, t = p.reshape(-1).astype(np.int64), t.reshape(-1).astype(np.int64)
        if self.ignore_index is not None:
            keep = t != self.ignore_index
            p, t = p[keep], t[keep]
        for name, a in (("prediction", p), ("target", t)):
            if a.size and (a.min() < 0 or a.max() >= self.num_classes):
                raise MaskError(f"{name} has class indices {a.min()}..{a.max()}; "
                                f"expected 0..{self.num_classes - 1}")
        if self.binary_foreground is not None:
            p, t = (np.isin(a, self.binary_foreground).astype(np.int64) for a in (p, t))
        n = len(self.confusion)
        self.confusion += np.bincount(t * n + p, minlength=n * n).reshape(n, n)

    def compute(self) -> dict[str, float]:
        """Flat metrics over everything seen.

        * ``IoU/<c>``, ``Dice/<c>``, ``precision/<c>``, ``recall/<c>`` per class (NaN when
          undefined, e.g. a class neither present nor predicted);
        * ``mIoU``, ``mDice``: mean over all classes, background (index 0) included,
          skipping NaN; ``mIoU_fg``, ``mDice_fg``: the same without class 0;
        * ``pixel_accuracy``;
        * ``rmse``: sqrt(mean((pred_fg - target_fg)^2)) with ``*_fg = (class != 0)``
          as 0/1 over all pixels, i.e. the square root of the fraction of pixels whose
          foreground/background call is wrong.
        """
        cm = self.confusion.astype(float)
        tp = np.diag(cm)
        n_pred, n_true = cm.sum(axis=0), cm.sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = tp / (n_pred + n_true - tp)
            dice = 2 * tp / (n_pred + n_true)
            precision, recall = tp / n_pred, tp / n_true
        total = cm.sum()
        out: dict[str, float] = {
            "pixel_accuracy": float(tp.sum() / total) if total else float("nan"),
            "mIoU": _nanmean(iou), "mIoU_fg": _nanmean(iou[1:]),
            "mDice": _nanmean(dice), "mDice_fg": _nanmean(dice[1:]),
            "rmse": float(np.sqrt((cm[0, 1:].sum() + cm[1:, 0].sum()) / total))
            if total else float("nan"),
        }
        for name, values in (("IoU", iou), ("Dice", dice), ("precision", precision),
                             ("recall", recall)):
            out.update({f"{name}/{c}": float(v) for c, v in zip(self.class_names, values)})
        return out


def mask_iou(a: Any, b: Any) -> float:
    """IoU of two binary masks (nonzero = inside); NaN when both are empty."""
    a, b = _numpy(a).astype(bool), _numpy(b).astype(bool)
    if a.shape != b.shape:
        raise MaskError(f"Mask shapes differ: {a.shape} vs {b.shape}")
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else float("nan")


def _boundary_distance(mask: np.ndarray) -> np.ndarray:
    """Per pixel, the distance to the nearest pixel on the other side of ``mask``'s
    boundary (infinite everywhere when the mask is empty or full: no boundary)."""
    if not mask.any() or mask.all():
        return np.full(mask.shape, np.inf)
    return np.where(mask, ndimage.distance_transform_edt(mask), ndimage.distance_transform_edt(~mask))


def boundary_band_errors(pred_masks: Any, gt_masks: Any, bands: Sequence[int] = (1, 2)
                         ) -> dict[str, float]:
    """Where the errors of binary masks lie relative to the annotated boundary.

    A pixel's distance to the boundary is its Euclidean distance to the nearest pixel of
    the other side of the ground truth (1 = touching the boundary). Over all pixels of
    all images: ``dice``, ``error_pixels`` (false positives + false negatives),
    ``within_<b>px`` = the share of those errors at distance <= b of the annotated
    boundary, and ``dice_outside_<b>px`` = the Dice with those boundary pixels ignored.
    Masks: (N, H, W) stacks or sequences of (H, W), nonzero = foreground.
    """
    p, g = _stack(pred_masks), _stack(gt_masks)
    if p.shape != g.shape:
        raise MaskError(f"Mask shapes differ: predictions {p.shape} vs ground truth {g.shape}; "
                        "pass one prediction per ground-truth mask, at the same size.")
    dist = np.stack([_boundary_distance(gi) for gi in g]) if len(g) else np.zeros(g.shape)
    errors = int((p ^ g).sum())
    out = {"dice": _dice(p, g), "error_pixels": float(errors)}
    for b in sorted(int(b) for b in bands):
        outside = dist > b
        out[f"within_{b}px"] = 1 - ((p ^ g) & outside).sum() / errors if errors else float("nan")
        out[f"dice_outside_{b}px"] = _dice(p & outside, g & outside)
    return out


def _dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean arrays, pooled over all their pixels (NaN when both are empty)."""
    total = int(pred.sum() + truth.sum())
    return float(2 * (pred & truth).sum() / total) if total else float("nan")


def _iou_matrix(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """IoU [n_pred, n_gt] of stacked binary masks (0 where both are empty)."""
    p = pred.reshape(len(pred), -1).astype(np.float64)
    g = gt.reshape(len(gt), -1).astype(np.float64)
    inter = p @ g.T
    union = p.sum(1)[:, None] + g.sum(1)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _stack(masks: Any) -> np.ndarray:
    """Boolean (N, H, W) from a stack (N, [1,] H, W) or a sequence of (H, W) masks."""
    if isinstance(masks, (list, tuple)):
        if not masks:
            return np.zeros((0, 1, 1), bool)
        masks = np.stack([_numpy(m) for m in masks])
    a = _numpy(masks)
    return a.reshape(-1, *a.shape[-2:]) != 0


def matched_instance_iou(pred_masks: Any, gt_masks: Any, iou_threshold: float = 0.5
                         ) -> dict[str, Any]:
    """Match predicted to ground-truth instance masks one-to-one (Hungarian, maximum total
    IoU); pairs with IoU below ``iou_threshold`` are dropped.

    Masks are (N, H, W) binary stacks (numpy or torch) or sequences of (H, W) masks.
    Returns ``mean_iou`` (over matched pairs, NaN if none), ``matched``,
    ``unmatched_pred``, ``unmatched_gt`` and ``pairs`` (list of (pred, gt, iou)).
    """
    p, g = _stack(pred_masks), _stack(gt_masks)
    if len(p) and len(g) and p.shape[1:] != g.shape[1:]:
        raise MaskError(f"Mask sizes differ: predictions {p.shape[1:]} vs ground truth {g.shape[1:]}")
    pairs: list[tuple[int, int, float]] = []
    if len(p) and len(g):
        iou = _iou_matrix(p, g)
        rows, cols = linear_sum_assignment(iou, maximize=True)
        pairs = [(int(r), int(c), float(iou[r, c])) for r, c in zip(rows, cols)
                 if iou[r, c] >= iou_threshold and iou[r, c] > 0]
    ious = [x[2] for x in pairs]
    return {"mean_iou": float(np.mean(ious)) if ious else float("nan"),
            "matched": len(pairs), "unmatched_pred": len(p) - len(pairs),
            "unmatched_gt": len(g) - len(pairs), "pairs": pairs}
