"""Detection and instance-segmentation metrics on COCO-style records.

* :func:`coco_evaluate` runs pycocotools' ``COCOeval`` (``bbox`` or ``segm``) in memory,
  silently, and returns a :class:`DetectionReport` (AP, AP50/70/75/90, AR, per-class AP,
  precision-recall curves).
* :func:`precision_recall_f1` and :func:`detection_confusion_matrix` give the
  fixed-threshold numbers that YOLO-style papers report.
* :func:`torchvision_to_coco_results` turns torchvision detection outputs into COCO
  result dicts.

Ground truth is a COCO dict (see :mod:`bloodlib.data.records`); predictions are COCO
result dicts ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`` plus a
``"segmentation"`` RLE for ``segm``.
"""

from __future__ import annotations

import contextlib
import copy
import io
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from bloodlib.data.records import category_names
from bloodlib.errors import AnnotationError
from sklearn.metrics import roc_auc_score, roc_curve

__all__ = [
    "DetectionReport",
    "coco_evaluate",
    "precision_recall_f1",
    "detection_confusion_matrix",
    "torchvision_to_coco_results",
]

# IoU thresholds read from COCOeval's precision array (its grid is 0.50:0.05:0.95).
_AP_THRESHOLDS = {"AP50": 0.5, "AP70": 0.7, "AP75": 0.75, "AP90": 0.9}


@dataclass
class DetectionReport:
    """COCO metrics of one evaluation (area range "all", ``max_dets`` detections/image).

    Means follow pycocotools: categories without ground truth (COCO's -1) are NaN in
    ``per_class_*`` and left out of ``AP``/``AR``; ``AP``/``AR`` are NaN when no category
    has ground truth. ``pr_curves[name] = (recall, precision)`` at IoU 0.5 on COCO's
    101-point recall grid (interpolated precision; 0 beyond the highest recall reached).
    """

    iou_type: str
    max_dets: int
    AP: float
    AP50: float
    AP70: float
    AP75: float
    AP90: float
    AR: float
    per_class_AP: dict[str, float]
    per_class_AP50: dict[str, float]
    pr_curves: dict[str, tuple[np.ndarray, np.ndarray]] = field(repr=False)
    stats: np.ndarray = field(repr=False)  # COCOeval.stats (12 numbers, -1 = undefined)
    summary_text: str = field(repr=False, default="")

    def as_dict(self) -> dict[str, float]:
        """Flat ``{name: float}``: AP, AP50, AP70, AP75, AP90, AR, ``AP/<class>``, ``AP50/<class>``."""
        out = {k: float(getattr(self, k)) for k in ("AP", "AP50", "AP70", "AP75", "AP90", "AR")}
        out.update({f"AP/{n}": float(v) for n, v in self.per_class_AP.items()})
        out.update({f"AP50/{n}": float(v) for n, v in self.per_class_AP50.items()})
        return out


def _mean_valid(a: np.ndarray) -> float:
    """Mean over entries > -1 (pycocotools' convention), NaN when there are none."""
    a = a[a > -1]
    return float(a.mean()) if a.size else float("nan")


def _gt_coco(gt: dict, iou_type: str) -> COCO:
    """A silent in-memory COCO object from a copy of ``gt``, with COCOeval's required fields."""
    ds = copy.deepcopy(gt)
    images = {im["id"]: im for im in ds.get("images", [])}
    for i, ann in enumerate(ds.get("annotations", [])):
        ann.setdefault("id", i + 1)
        ann.setdefault("iscrowd", 0)
        if ann["image_id"] not in images:
            raise AnnotationError(f"Ground-truth annotation {ann['id']} refers to unknown image id "
                                  f"{ann['image_id']!r}; fix the COCO dict's 'images' list.")
        if iou_type == "segm" and not ann.get("segmentation"):
            raise AnnotationError(f"Ground-truth annotation {ann['id']} has no 'segmentation'; "
                                  "use iou_type='bbox' or add masks.")
    coco = COCO()
    coco.dataset = ds
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    for ann in coco.dataset["annotations"]:  # COCOeval's area ranges need "area"
        if "area" not in ann:
            ann["area"] = float(mask_utils.area(coco.annToRLE(ann)) if ann.get("segmentation")
                                else ann["bbox"][2] * ann["bbox"][3])
    return coco


def _check_predictions(gt: dict, predictions: Sequence[dict], iou_type: str) -> None:
    """Raise :class:`AnnotationError` for predictions that COCOeval cannot score."""
    image_ids = {im["id"] for im in gt.get("images", [])}
    cat_ids = {c["id"] for c in gt["categories"]}
    need = ("image_id", "category_id", "score", "segmentation" if iou_type == "segm" else "bbox")
    for i, p in enumerate(predictions):
        missing = [k for k in need if k not in p]
        if missing:
            raise AnnotationError(f"Prediction {i} lacks {missing}; COCO results need {list(need)}.")
        if p["image_id"] not in image_ids:
            raise AnnotationError(f"Prediction {i} refers to image id {p['image_id']!r}, which is "
                                  "not in the ground truth; evaluate against the matching split.")
        if p["category_id"] not in cat_ids:
            raise AnnotationError(f"Prediction {i} has category id {p['category_id']!r}; known ids "
                                  f"are {sorted(cat_ids)} (categories are numbered from 1).")


def coco_evaluate(gt: dict, predictions: Sequence[dict], iou_type: str = "bbox",
                  max_dets: int = 100) -> DetectionReport:
    """Evaluate COCO result dicts against ground truth with pycocotools' ``COCOeval``.

    ``max_dets`` is the maximum number of detections per image (COCO's default 100);
    raise it for smears with more than 100 cells, or the lowest-scored ones are dropped.
    Neither input is modified. Empty ``predictions`` give 0 for every category with
    ground truth. Unknown image or category ids raise :class:`AnnotationError`.
    """
    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"iou_type must be 'bbox' or 'segm', not {iou_type!r}")
    _check_predictions(gt, predictions, iou_type)
    coco_gt = _gt_coco(gt, iou_type)
    with contextlib.redirect_stdout(io.StringIO()):
        if predictions:
            coco_dt = coco_gt.loadRes([dict(p) for p in predictions])
        else:
            coco_dt = COCO()
            coco_dt.dataset = {"images": list(coco_gt.dataset["images"]), "annotations": [],
                               "categories": copy.deepcopy(coco_gt.dataset["categories"])}
            coco_dt.createIndex()
    ev = COCOeval(coco_gt, coco_dt, iouType=iou_type)
    ev.params.maxDets = [1, 10, int(max_dets)]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        ev.evaluate()
        ev.accumulate()
        # summarize() looks rows up by the literal 100; label the last row 100 while it
        # runs so its numbers are those of max_dets, then fix the printed label.
        ev.params.maxDets = [1, 10, 100]
        ev.summarize()
        ev.params.maxDets = [1, 10, int(max_dets)]
    summary = buf.getvalue().split("Accumulating evaluation results...")[-1]
    summary = "\n".join(l for l in summary.splitlines() if l.startswith(" Average"))
    summary = summary.replace("maxDets=100 ]", f"maxDets={int(max_dets):>3d} ]")

    precision = ev.eval["precision"][:, :, :, 0, -1]  # [T, R, K] at area "all", max_dets
    recall = ev.eval["recall"][:, :, 0, -1]  # [T, K]
    iou_thrs = ev.params.iouThrs
    t_index = {k: int(np.argmin(np.abs(iou_thrs - v))) for k, v in _AP_THRESHOLDS.items()}
    names = {c["id"]: c["name"] for c in gt["categories"]}
    cat_names = [names[c] for c in ev.params.catIds]
    t50 = t_index["AP50"]
    pr_curves = {}
    for k, n in enumerate(cat_names):
        prec = precision[t50, :, k].astype(float)
        pr_curves[n] = (ev.params.recThrs.copy(), np.where(prec > -1, prec, np.nan))
    return DetectionReport(
        iou_type=iou_type,
        max_dets=int(max_dets),
        AP=_mean_valid(precision),
        **{k: _mean_valid(precision[t]) for k, t in t_index.items()},
        AR=_mean_valid(recall),
        per_class_AP={n: _mean_valid(precision[:, :, k]) for k, n in enumerate(cat_names)},
        per_class_AP50={n: _mean_valid(precision[t50, :, k]) for k, n in enumerate(cat_names)},
        pr_curves=pr_curves,
        stats=np.asarray(ev.stats, dtype=float),
        summary_text=summary,
    )


# ---------------------------------------------------------------- fixed-threshold metrics
def _by_image(gt: dict, predictions: Sequence[dict], score_threshold: float
              ) -> dict[Any, tuple[list[dict], list[dict]]]:
    """``{image_id: (gt annotations, predictions above threshold, best score first)}``."""
    _check_predictions(gt, predictions, "bbox")
    out: dict[Any, tuple[list[dict], list[dict]]] = {im["id"]: ([], []) for im in gt["images"]}
    for a in gt["annotations"]:
        if not a.get("iscrowd", 0):
            out[a["image_id"]][0].append(a)
    for p in sorted(predictions, key=lambda p: -p["score"]):
        if p["score"] >= score_threshold:
            out[p["image_id"]][1].append(p)
    return out


def _box_iou(preds: list[dict], gts: list[dict]) -> np.ndarray:
    """IoU matrix [len(preds), len(gts)] of ``[x, y, w, h]`` boxes (pycocotools)."""
    if not preds or not gts:
        return np.zeros((len(preds), len(gts)))
    return np.asarray(mask_utils.iou([p["bbox"] for p in preds], [g["bbox"] for g in gts],
                                     [0] * len(gts))).reshape(len(preds), len(gts))


def _ratio(a: float, b: float) -> float:
    return a / b if b else 0.0


def _prf(tp: int, fp: int, fn: int) -> dict[str, float]:
    p, r = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    return {"precision": p, "recall": r, "f1": _ratio(2 * p * r, p + r),
            "tp": tp, "fp": fp, "fn": fn, "support": tp + fn}


def greedy_matches(gt: dict, predictions: Sequence[dict], score_threshold: float = 0.5,
                   iou_threshold: float = 0.5
                   ) -> Iterator[tuple[list[dict], list[dict], np.ndarray, np.ndarray]]:
    """Per image, ``(gts, preds, hit, used)``: predictions with ``score >= score_threshold``
    taken best score first, each matching the unmatched ground-truth box of its class with
    the highest IoU (``>= iou_threshold``). ``hit[i]`` says prediction ``i`` is a true
    positive, ``used[j]`` that ground-truth box ``j`` was matched."""
    for gts, preds in _by_image(gt, predictions, score_threshold).values():
        iou = _box_iou(preds, gts)
        used = np.zeros(len(gts), bool)
        hit = np.zeros(len(preds), bool)
        for i, p in enumerate(preds):
            ok = np.array([g["category_id"] == p["category_id"] for g in gts], bool) & ~used
            cand = np.where(ok, iou[i], -1.0) if gts else np.zeros(0)
            j = int(np.argmax(cand)) if cand.size else -1
            if j >= 0 and cand[j] >= iou_threshold:
                used[j] = hit[i] = True
        yield gts, preds, hit, used


def precision_recall_f1(gt: dict, predictions: Sequence[dict], score_threshold: float = 0.5,
                        iou_threshold: float = 0.5) -> dict[str, Any]:
    """Precision, recall and F1 at one score and IoU threshold.

    Matching as in :func:`greedy_matches`: a matched prediction is a TP, an unmatched one
    a FP; unmatched boxes are FN.
    Returns pooled (micro) ``precision``, ``recall``, ``f1``, ``tp``, ``fp``, ``fn``;
    ``macro_precision/recall/f1`` averaged over classes with ground truth; and
    ``per_class[name]`` with the same keys plus ``support``. 0/0 counts as 0.
    """
    counts = {c["id"]: [0, 0, 0] for c in gt["categories"]}  # tp, fp, fn
    for gts, preds, hit, used in greedy_matches(gt, predictions, score_threshold,
                                                iou_threshold):
        for p, h in zip(preds, hit):
            counts[p["category_id"]][0 if h else 1] += 1
        for g, u in zip(gts, used):
            counts[g["category_id"]][2] += int(not u)
    names = {c["id"]: c["name"] for c in gt["categories"]}
    per_class = {names[c]: _prf(*v) for c, v in sorted(counts.items())}
    out: dict[str, Any] = _prf(*(int(sum(v[i] for v in counts.values())) for i in range(3)))
    out.pop("support")
    with_gt = [v for v in per_class.values() if v["support"] > 0]
    for k in ("precision", "recall", "f1"):
        out[f"macro_{k}"] = float(np.mean([v[k] for v in with_gt])) if with_gt else 0.0
    out["per_class"] = per_class
    return out


def detection_roc(gt: dict, predictions: Sequence[dict], iou_threshold: float = 0.5
                  ) -> dict[str, tuple[np.ndarray, np.ndarray, float]]:
    """Per-class ROC of the detection scores (paper 1 Figure 16): ``{class name: (fpr,
    tpr, auc)}``. Every detection (any score) is a true positive when
    :func:`greedy_matches` matches it and a false positive otherwise; the curve ranks them
    by score. Classes without both kinds are left out."""
    names = {c["id"]: c["name"] for c in gt["categories"]}
    y: dict[int, list[int]] = {c: [] for c in names}
    s: dict[int, list[float]] = {c: [] for c in names}
    for _, preds, hit, _ in greedy_matches(gt, predictions, 0.0, iou_threshold):
        for p, h in zip(preds, hit):
            y[p["category_id"]].append(int(h))
            s[p["category_id"]].append(float(p["score"]))
    out = {}
    for c, name in names.items():
        if len(set(y[c])) == 2:
            fpr, tpr, _ = roc_curve(y[c], s[c])
            out[name] = (fpr, tpr, float(roc_auc_score(y[c], s[c])))
    return out


def detection_confusion_matrix(gt: dict, predictions: Sequence[dict],
                               score_threshold: float = 0.5, iou_threshold: float = 0.5
                               ) -> tuple[np.ndarray, list[str]]:
    """YOLO-style detection confusion matrix; ``matrix[predicted, true]``.

    Per image, boxes are matched one-to-one regardless of class, highest IoU first
    (``>= iou_threshold``); a matched pair counts at (its predicted class, its true class).
    The last label is ``"background"``: an unmatched ground-truth box counts in the
    background row (missed), an unmatched prediction in the background column (false
    alarm). Labels are the category names (ordered by id) then ``"background"``.
    """
    labels = category_names(gt) + ["background"]
    row = {c["id"]: i for i, c in enumerate(sorted(gt["categories"], key=lambda c: c["id"]))}
    bg = len(labels) - 1
    matrix = np.zeros((len(labels), len(labels)), dtype=np.int64)
    for gts, preds in _by_image(gt, predictions, score_threshold).values():
        iou = _box_iou(preds, gts)
        pairs = np.argwhere(iou >= iou_threshold)
        pairs = pairs[np.argsort(-iou[pairs[:, 0], pairs[:, 1]], kind="stable")]
        p_used, g_used = set(), set()
        for i, j in pairs:
            if i not in p_used and j not in g_used:
                p_used.add(i), g_used.add(j)
                matrix[row[preds[i]["category_id"]], row[gts[j]["category_id"]]] += 1
        for j, g in enumerate(gts):
            if j not in g_used:
                matrix[bg, row[g["category_id"]]] += 1
        for i, p in enumerate(preds):
            if i not in p_used:
                matrix[row[p["category_id"]], bg] += 1
    return matrix, labels


# ---------------------------------------------------------------- torchvision conversion
def _numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def torchvision_to_coco_results(outputs: Sequence[dict], image_ids: Sequence[Any],
                                with_masks: bool = False, mask_threshold: float = 0.5
                                ) -> list[dict]:
    """COCO result dicts from torchvision detection outputs (one dict per image).

    Each output has ``boxes`` (N, 4) xyxy, ``labels`` (N,) category ids (1..K, as
    torchvision uses 0 for background) and ``scores`` (N,); with ``with_masks``, also
    ``masks`` (N, 1, H, W) probabilities, binarised at ``mask_threshold`` and stored as
    compressed RLE (``counts`` decoded to ``str`` so the results are JSON-serialisable).
    """
    if len(outputs) != len(image_ids):
        raise ValueError(f"{len(outputs)} outputs but {len(image_ids)} image ids")
    results = []
    for out, image_id in zip(outputs, image_ids):
        boxes = _numpy(out["boxes"]).reshape(-1, 4).astype(float)
        labels, scores = _numpy(out["labels"]).reshape(-1), _numpy(out["scores"]).reshape(-1)
        rles = []
        if with_masks:
            masks = _numpy(out["masks"])
            masks = masks.reshape(len(boxes), *masks.shape[-2:]) > mask_threshold
            rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
        for k, (x1, y1, x2, y2) in enumerate(boxes):
            r = {"image_id": image_id, "category_id": int(labels[k]),
                 "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                 "score": float(scores[k])}
            if with_masks:
                r["segmentation"] = {"size": [int(s) for s in rles[k]["size"]],
                                     "counts": rles[k]["counts"].decode("ascii")}
            results.append(r)
    return results
