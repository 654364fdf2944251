"""Cell-type classifier behind ``predict(image) -> label, probabilities``.

A classifier of :mod:`bloodlib.models.classifiers` sees one cell per image. The image is
prepared exactly as in training (:func:`prepare_crop`: optional centre crop, then an
area-averaging resize to the model's square ``input_size``) and the softmax is averaged
over the test-time views named by ``meta["tta"]`` (:data:`TTA_MODES`).

```python
predictor = ClassifierPredictor.from_checkpoint("models/pbc8-resnet18.pt")
res = predictor.predict(read_image("cell.jpg"))
res.label, res.probabilities["eosinophil"]
print(res)   # Identified = EOSINOPHIL (99.2 %)
```
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import cv2
import numpy as np
import torch

from .common import DEFAULT_PREPROCESSING, Predictor
from ..engine.tta import tta_transforms
from ..models.classifiers import build_classifier
from .store import read_task_checkpoint, rebuild_model

__all__ = ["ClassifierPredictor", "ClassificationResult", "classifier_meta", "prepare_crop",
           "images_to_tensor", "predict_proba", "tta_views", "TTA_MODES"]

#: test-time augmentation: none, + horizontal flip, or the 8 flips/90-degree rotations
TTA_MODES = ("none", "flip", "dihedral")


@dataclass
class ClassificationResult:
    """The predicted class and the probability of every class (summing to 1)."""

    label: str
    probabilities: dict[str, float]

    @property
    def confidence(self) -> float:
        """Probability of the predicted class."""
        return float(self.probabilities[self.label])

    def top(self, k: int = 3) -> list[tuple[str, float]]:
        """The ``k`` most probable classes, most probable first."""
        return sorted(self.probabilities.items(), key=lambda kv: -kv[1])[:k]

    def __str__(self) -> str:  # paper 4's printout
        return f"Identified = {self.label.upper()} ({100 * self.confidence:.1f} %)"


# ----------------------------------------------------------------------------- preprocessing
def prepare_crop(image: np.ndarray, size: int, crop_fraction: float = 1.0) -> np.ndarray:
    """RGB uint8 -> ``(size, size, 3)`` uint8: keep the central ``crop_fraction`` of each
    side, then resize with area averaging (OpenCV ``INTER_AREA``). Training and prediction
    both use this, so a model sees the same pixels in both."""
    if not 0 < crop_fraction <= 1:
        raise ValueError(f"crop_fraction must be in (0, 1], got {crop_fraction}.")
    h, w = image.shape[:2]
    if crop_fraction < 1:
        ch, cw = max(1, round(h * crop_fraction)), max(1, round(w * crop_fraction))
        top, left = (h - ch) // 2, (w - cw) // 2
        image = image[top:top + ch, left:left + cw]
    interp = cv2.INTER_AREA if min(image.shape[:2]) >= size else cv2.INTER_LINEAR
    return np.ascontiguousarray(cv2.resize(image, (size, size), interpolation=interp))


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """``(N, H, W, 3)`` uint8 -> float tensor ``(N, 3, H, W)`` in [0, 1]."""
    arr = np.ascontiguousarray(np.asarray(images).transpose(0, 3, 1, 2))
    return torch.from_numpy(arr).float().div_(255.0)


def tta_views(x: torch.Tensor, mode: str = "none") -> list[torch.Tensor]:
    """The test-time views of a batch ``(N, C, H, W)`` for ``mode`` in :data:`TTA_MODES`."""
    if mode not in TTA_MODES:
        raise ValueError(f"Unknown TTA mode {mode!r}; choose one of {TTA_MODES}.")
    return [forward(x) for forward, _ in tta_transforms(mode)]


@torch.no_grad()
def predict_proba(model: torch.nn.Module, x: torch.Tensor, tta: str = "none",
                  batch_size: int = 256, device: Any = None) -> np.ndarray:
    """Softmax probabilities ``(N, K)`` of ``model`` for inputs ``x`` ``(N, 3, H, W)`` in
    [0, 1], averaged over the :func:`tta_views`; eval mode, the model's mode restored."""
    param = next(model.parameters(), None)
    device = torch.device(device) if device is not None else (
        param.device if param is not None else torch.device("cpu"))
    was_training = model.training
    model.eval()
    out = []
    try:
        for chunk in x.split(batch_size):
            chunk = chunk.to(device)
            views = tta_views(chunk, tta)
            probs = sum(model(v).float().softmax(1) for v in views) / len(views)
            out.append(probs.cpu())
    finally:
        model.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


# ----------------------------------------------------------------------------- metadata
def classifier_meta(architecture: str, classes: Sequence[str], input_size: int, *,
                    architecture_kwargs: Optional[Mapping[str, Any]] = None,
                    crop_fraction: float = 1.0, tta: str = "none",
                    training_data: Any = None, metrics: Optional[Mapping[str, float]] = None,
                    preprocessing: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    """Contract metadata (``task="classify"``) of a :mod:`bloodlib.models.classifiers` model:
    ``architecture`` is a :func:`~bloodlib.models.classifiers.build_classifier` name."""
    pre = dict(DEFAULT_PREPROCESSING, normalize="unit", resize="area",
               crop_fraction=float(crop_fraction), **(preprocessing or {}))
    return {"task": "classify", "architecture": architecture,
            "architecture_kwargs": dict(architecture_kwargs or {}),
            "classes": [str(c) for c in classes], "input_size": [int(input_size)] * 2,
            "preprocessing": pre, "tta": tta, "training_data": training_data or {},
            "metrics": {k: float(v) for k, v in (metrics or {}).items()
                        if isinstance(v, (int, float)) and np.isfinite(v)},
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}


# ----------------------------------------------------------------------------- predictor
class ClassifierPredictor(Predictor):
    """One class per RGB uint8 single-cell image, with the probability of every class."""

    task = "classify"

    def __init__(self, model: torch.nn.Module, meta: Mapping[str, Any],
                 device: Any = "cpu") -> None:
        super().__init__(model, meta, device)
        size = self.meta.get("input_size") or 64
        self.input_size = int(size[0] if isinstance(size, (list, tuple)) else size)
        pre = dict(self.meta.get("preprocessing") or {})
        if pre.get("normalize", "unit") != "unit":
            raise ValueError("bloodlib classifiers normalise inside the model; their "
                             f"preprocessing must say normalize='unit', not {pre['normalize']!r}.")
        self.crop_fraction = float(pre.get("crop_fraction", 1.0))
        self.tta = str(self.meta.get("tta", "none"))

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: Any = "cpu") -> "ClassifierPredictor":
        """Rebuild ``meta["architecture"]`` with ``build_classifier`` and load the weights."""
        ckpt, meta = read_task_checkpoint(path, "classify", "a classifier")
        kwargs = dict(meta.get("architecture_kwargs") or {})
        model = rebuild_model(
            path, lambda: build_classifier(meta["architecture"], len(meta["classes"]), **kwargs),
            ckpt["model_state"], f"{meta['architecture']!r} with {kwargs}")
        return cls(model, meta, device)

    def _prepare(self, image: np.ndarray) -> np.ndarray:
        image = self._preprocess(image)
        return prepare_crop(image, self.input_size, self.crop_fraction)

    def predict_batch(self, images: Sequence[np.ndarray], tta: Optional[str] = None
                      ) -> list[ClassificationResult]:
        """:meth:`predict` for several images at once (any sizes); ``tta`` overrides the
        model's test-time views (``meta["tta"]``), e.g. ``"none"`` for speed."""
        if len(images) == 0:
            return []
        x = images_to_tensor(np.stack([self._prepare(im) for im in images]))
        probs = predict_proba(self.model, x, tta or self.tta, device=self.device)
        return [ClassificationResult(self.classes[int(p.argmax())],
                                     {c: float(v) for c, v in zip(self.classes, p)})
                for p in probs]

    def predict(self, image: np.ndarray) -> ClassificationResult:
        """The class of one RGB uint8 ``(H, W, 3)`` image; InvalidImageError for anything
        else (wrong dtype or channel count, smaller than 8 px, larger than 64 MP)."""
        return self.predict_batch([image])[0]

    def __repr__(self) -> str:
        return (f"ClassifierPredictor({self.meta['architecture']}, classes={self.classes}, "
                f"input_size={self.input_size}, tta={self.tta!r})")
