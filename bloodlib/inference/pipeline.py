"""One image through any predictor: uniform tables, counts and an overlay.

Used by ``bloodlib predict``, the widget demo and the latency benchmark::

    pred = predict_image(detector, image, "smear.png", classifier=classifier)
    pred.rows()        # one dict per cell (detect), per image (classify), per class (segment)
    pred.counts()      # {"WBC": 2, "RBC": 41, "Platelets": 3, "WBC/neutrophil": 1, ...}
    render_overlay(pred)   # RGB uint8 with boxes / masks / labels

Results are read by attribute (duck typing), so this module does not import the task
modules: a detection result has ``boxes``, ``labels``, ``scores`` (``masks``); a
classification result ``label``, ``probabilities``; a segmentation result ``class_map``,
``classes``.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import cv2
import numpy as np

from .common import check_image
from ..viz import class_color

WBC_NAMES = ("wbc", "white_blood_cell", "leukocyte", "leucocyte")
CROP_PADDING = 0.15  # box grown by this fraction on each side before classification


def is_wbc(name: str) -> bool:
    """Whether a detection class name means a white blood cell."""
    return name.strip().lower().replace(" ", "_") in WBC_NAMES


@dataclass
class ImagePrediction:
    """A predictor's output for one image, with the (preprocessed) image it saw."""

    name: str
    task: str
    image: np.ndarray
    result: Any
    classes: list[str]
    cell_types: list[Optional[Any]] = field(default_factory=list)  # per box (detect)
    seconds: float = 0.0

    def rows(self) -> list[dict[str, Any]]:
        """Table rows: per cell (detect), per image (classify), per class (segment)."""
        return {"detect": self._detection_rows, "classify": self._classification_rows,
                "segment": self._segmentation_rows}[self.task]()

    def _detection_rows(self) -> list[dict[str, Any]]:
        r = self.result
        boxes = np.asarray(r.boxes, float).reshape(-1, 4)
        scores = np.asarray(r.scores, float).reshape(-1)
        rows = []
        for i, (box, label, score) in enumerate(zip(boxes, r.labels, scores)):
            row = {"image": self.name, "cell": i, "class": str(label), "score": float(score),
                   "x1": float(box[0]), "y1": float(box[1]), "x2": float(box[2]),
                   "y2": float(box[3])}
            typed = self.cell_types[i] if i < len(self.cell_types) else None
            if typed is not None:
                probs = dict(typed.probabilities)
                row.update({"wbc_type": typed.label, "wbc_type_score": float(probs[typed.label])})
                row.update({f"p_{k}": float(v) for k, v in probs.items()})
            rows.append(row)
        return rows

    def _classification_rows(self) -> list[dict[str, Any]]:
        probs = dict(self.result.probabilities)
        return [{"image": self.name, "label": self.result.label,
                 "score": float(probs.get(self.result.label, np.nan)),
                 **{f"p_{k}": float(v) for k, v in probs.items()}}]

    def _segmentation_rows(self) -> list[dict[str, Any]]:
        areas, objects = self.result.areas(), self.result.counts()
        total = max(1, int(self.result.class_map.size))
        return [{"image": self.name, "class": c, "pixels": n, "fraction": n / total,
                 "objects": objects.get(c, np.nan)} for c, n in areas.items()]

    def counts(self) -> dict[str, int]:
        """Cells per class (detect; plus ``WBC/<type>`` with a classifier), 1 for the
        predicted class (classify), regions per foreground class (segment)."""
        if self.task == "detect":
            found = Counter(str(lab) for lab in self.result.labels)
            out = {c: int(found.get(c, 0)) for c in self.classes}
            out.update({c: n for c, n in found.items() if c not in out})
            types = Counter(t.label for t in self.cell_types if t is not None)
            out.update({f"WBC/{k}": int(v) for k, v in sorted(types.items())})
            return out
        if self.task == "classify":
            return {c: int(c == self.result.label) for c in self.classes}
        return self.result.counts()


def _crops(image: np.ndarray, boxes: np.ndarray, keep: Sequence[int]) -> list[np.ndarray]:
    h, w = image.shape[:2]
    out = []
    for i in keep:
        x1, y1, x2, y2 = boxes[i]
        px, py = (x2 - x1) * CROP_PADDING, (y2 - y1) * CROP_PADDING
        a, b = int(max(0, np.floor(x1 - px))), int(max(0, np.floor(y1 - py)))
        c, d = int(min(w, np.ceil(x2 + px))), int(min(h, np.ceil(y2 + py)))
        crop = image[b:d, a:c]
        if min(crop.shape[:2]) < 8:  # too small for any classifier: grow to 8x8
            crop = cv2.resize(image[b:max(d, b + 1), a:max(c, a + 1)], (8, 8))
        out.append(np.ascontiguousarray(crop))
    return out


def classify_cells(classifier: Any, image: np.ndarray, detection: Any,
                   select: Callable[[str], bool] = is_wbc) -> list[Optional[Any]]:
    """Classify the crop of every detected cell whose class passes ``select`` (WBCs);
    returns one classification result (or None) per box."""
    return _classify_all(classifier, [image], [detection], None, select)[0]


def predict_image(predictor: Any, image: np.ndarray, name: str = "image", *,
                  score_threshold: float = 0.5, nms_threshold: float = 0.5,
                  preprocess: Optional[Callable[[np.ndarray], np.ndarray]] = None,
                  classifier: Any = None) -> ImagePrediction:
    """Run ``predictor`` on ``image`` (after ``preprocess``, e.g. CLAHE); for a detector
    with a ``classifier``, classify each detected WBC too. Timed in ``seconds``."""
    return predict_images(predictor, [image], [name], score_threshold=score_threshold,
                          nms_threshold=nms_threshold, preprocess=preprocess,
                          classifier=classifier)[0]


def _takes(predictor: Any, argument: str) -> bool:
    """Whether ``predictor.predict_batch`` accepts ``argument``."""
    import inspect
    batch = getattr(predictor, "predict_batch", None)
    return batch is not None and argument in inspect.signature(batch).parameters


def _batch_call(predictor: Any, images: list[np.ndarray], **kw: Any) -> list[Any]:
    """``predictor.predict_batch`` when it has one, else one ``predict`` per image."""
    batch = getattr(predictor, "predict_batch", None)
    if batch is not None:
        return list(batch(images, **kw))
    return [predictor.predict(im, **kw) for im in images]


def _classify_all(classifier: Any, images: Sequence[np.ndarray], results: Sequence[Any],
                  tta: Optional[str], select: Callable[[str], bool] = is_wbc
                  ) -> list[list[Optional[Any]]]:
    """Per image, one classification result (or None) per box of its detection: the
    crops of the boxes whose class passes ``select`` go through one classifier batch."""
    per_image, crops = [], []
    for image, det in zip(images, results):
        labels = [str(lab) for lab in det.labels]
        keep = [i for i, lab in enumerate(labels) if select(lab)]
        per_image.append((len(labels), keep))
        crops += _crops(image, np.asarray(det.boxes, float).reshape(-1, 4), keep)
    kw = {"tta": tta} if tta and _takes(classifier, "tta") else {}
    typed = iter(_batch_call(classifier, crops, **kw) if crops else [])
    out = []
    for n, keep in per_image:
        types: list[Optional[Any]] = [None] * n
        for i in keep:
            types[i] = next(typed)
        out.append(types)
    return out


def predict_images(predictor: Any, images: Sequence[np.ndarray], names: Sequence[str], *,
                   score_threshold: float = 0.5, nms_threshold: float = 0.5,
                   preprocess: Optional[Callable[[np.ndarray], np.ndarray]] = None,
                   classifier: Any = None, tta: Optional[str] = None) -> list[ImagePrediction]:
    """:func:`predict_image` for a batch: one forward pass of ``predictor`` (and one of
    ``classifier`` over every WBC crop). ``tta`` overrides a classifier's test-time
    views (``"none"`` is fastest). ``seconds`` is the batch's time shared equally."""
    t0 = time.perf_counter()
    images = [check_image(im) for im in images]
    if preprocess is not None:
        images = [preprocess(im) for im in images]
    task = predictor.task
    if task == "detect":
        results = _batch_call(predictor, images, score_threshold=score_threshold,
                              nms_threshold=nms_threshold)
        types = (_classify_all(classifier, images, results, tta) if classifier is not None
                 else [[] for _ in images])
    else:
        kw = {"tta": tta} if task == "classify" and tta and _takes(predictor, "tta") else {}
        results, types = _batch_call(predictor, images, **kw), [[] for _ in images]
    each = (time.perf_counter() - t0) / max(1, len(images))
    return [ImagePrediction(n, task, im, r, list(predictor.classes), t, each)
            for n, im, r, t in zip(names, images, results, types)]


# ----------------------------------------------------------------------------- overlay
def _rgb(name: str) -> tuple[int, int, int]:
    return tuple(int(round(255 * v)) for v in class_color(name))


def _label(img: np.ndarray, text: str, x: int, y: int, color: tuple, scale: float) -> None:
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    y = max(th + base, y)
    cv2.rectangle(img, (x, y - th - base), (x + tw + 2, y), color, -1)
    dark = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2] < 150
    cv2.putText(img, text, (x + 1, y - base), cv2.FONT_HERSHEY_SIMPLEX, scale,
                (255, 255, 255) if dark else (0, 0, 0), 1, cv2.LINE_AA)


def _blend(img: np.ndarray, region: np.ndarray, color: tuple, alpha: float = 0.4) -> None:
    img[region] = ((1 - alpha) * img[region] + alpha * np.asarray(color)).astype(np.uint8)


def render_overlay(pred: ImagePrediction) -> np.ndarray:
    """The image with the prediction drawn on it (RGB uint8, same size)."""
    img = pred.image.copy()
    h, w = img.shape[:2]
    scale = max(0.35, min(h, w) / 900)
    thick = max(1, int(round(min(h, w) / 320)))
    if pred.task == "detect":
        r = pred.result
        boxes = np.asarray(r.boxes, float).reshape(-1, 4)
        masks = getattr(r, "masks", None)
        for i, (box, lab, score) in enumerate(zip(boxes, r.labels, np.asarray(r.scores).ravel())):
            typed = pred.cell_types[i] if i < len(pred.cell_types) else None
            name = typed.label if typed is not None else str(lab)
            color = _rgb(name)
            if masks is not None and len(masks) > i:
                _blend(img, np.asarray(masks[i]).astype(bool), color)
            x1, y1, x2, y2 = (int(round(v)) for v in box)
            cv2.rectangle(img, (x1, y1), (x2, y2), color, thick)
            _label(img, f"{name} {float(score):.2f}", x1, y1, color, scale)
    elif pred.task == "classify":
        label = pred.result.label
        p = dict(pred.result.probabilities).get(label, float("nan"))
        _label(img, f"{label} {p:.2f}", 2, int(22 * scale / 0.5), _rgb(label), scale * 1.4)
    else:
        cmap = pred.result.class_map
        for i, c in enumerate(pred.result.classes[1:], start=1):
            _blend(img, cmap == i, _rgb(c), 0.5)
        present = [c for i, c in enumerate(pred.result.classes) if i and (cmap == i).any()]
        for k, c in enumerate(present):
            _label(img, c, 2, int((k + 1) * 20 * scale / 0.45), _rgb(c), scale)
    return img
