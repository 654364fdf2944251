"""Semantic-segmentation predictor for the models of :mod:`bloodlib.models.segmentation_zoo`.

The image is resized to the model's ``input_size`` (the size it was trained at, e.g.
paper 5's 120x120 single-cell crops), segmented, and the class probabilities are
resized back to the image, so the class map has the image's size.

Checkpoints written by :func:`bloodlib.experiments.wbc_segmentation.train_model` before
the model-store contract existed (``meta = {"model": name, "knobs": {...}}``) are read
too: :func:`segmentation_meta_from_legacy` turns their metadata into the contract's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .common import PAPER5_CLASSES  # noqa: F401  (re-exported)
from .common import Predictor, segmentation_meta, segmentation_meta_from_legacy, to_tensor
from ..models.segmentation_zoo import build_segmentation_model
from .store import check_head, read_task_checkpoint, rebuild_model
from scipy import ndimage

__all__ = ["SegmenterPredictor", "SegmentationResult", "segmentation_meta",
           "segmentation_meta_from_legacy"]



@dataclass
class SegmentationResult:
    """Class index per pixel (``class_map`` (H, W), 0 = background) and the class names."""

    class_map: np.ndarray
    classes: list[str]
    min_object_pixels: int = field(default=20, repr=False)

    def areas(self) -> dict[str, int]:
        """Pixels per class (background included)."""
        counts = np.bincount(self.class_map.ravel(), minlength=len(self.classes))
        return {c: int(n) for c, n in zip(self.classes, counts)}

    def counts(self) -> dict[str, int]:
        """Connected regions per foreground class (regions smaller than
        ``min_object_pixels`` ignored) - e.g. the nuclei of each type."""
        out = {}
        for i, c in enumerate(self.classes[1:], start=1):
            labels, n = ndimage.label(self.class_map == i)
            sizes = np.bincount(labels.ravel())[1:] if n else np.array([])
            out[c] = int((sizes >= self.min_object_pixels).sum())
        return out


class SegmenterPredictor(Predictor):
    """Per-pixel classes for RGB uint8 images with a segmentation-zoo model."""

    task = "segment"

    def __init__(self, model: torch.nn.Module, meta: Mapping[str, Any], device: Any = "cpu") -> None:
        super().__init__(model, meta, device)
        size = self.meta.get("input_size")
        self.input_size = None if size is None else (
            (int(size), int(size)) if np.isscalar(size) else (int(size[0]), int(size[1])))
        self.normalize = (self.meta.get("preprocessing") or {}).get("normalize", "unit")

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: Any = "cpu") -> "SegmenterPredictor":
        """Rebuild the model named in the checkpoint's metadata and load its weights."""
        ckpt, meta = read_task_checkpoint(path, "segment", "a segmentation one")
        kwargs = dict(meta.get("architecture_kwargs") or {})
        num_classes = int(kwargs.pop("num_classes", len(meta["classes"])))
        check_head(path, meta, num_classes, f"{meta['architecture']!r} model")
        model = rebuild_model(
            path, lambda: build_segmentation_model(meta["architecture"], num_classes, **kwargs),
            ckpt["model_state"], f"{meta['architecture']!r} with {kwargs}")
        return cls(model, meta, device)

    @torch.no_grad()
    def predict_proba_batch(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Class probabilities (C, H, W) float32 of each image, at its own size; the
        images go through the model together (resized to ``input_size``)."""
        prepared = [self._preprocess(im) for im in images]
        if not prepared:
            return []
        xs = [self._input(im) for im in prepared]
        if len({tuple(x.shape) for x in xs}) > 1:  # no fixed input size: one at a time
            logits = [self.model(x.to(self.device)).float() for x in xs]
        else:
            logits = list(self.model(torch.cat(xs).to(self.device)).float().split(1))
        out = []
        for lg, im in zip(logits, prepared):
            h, w = im.shape[:2]
            if lg.shape[-2:] != (h, w):
                lg = F.interpolate(lg, size=(h, w), mode="bilinear", align_corners=False)
            out.append(lg.softmax(1)[0].cpu().numpy())
        return out

    def _input(self, image: np.ndarray) -> torch.Tensor:
        x = to_tensor(image, self.normalize)
        if self.input_size is not None and tuple(x.shape[-2:]) != self.input_size:
            x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False,
                              antialias=True)
        return x

    def predict_proba(self, image: np.ndarray) -> np.ndarray:
        """Class probabilities (C, H, W) float32 at the image's size."""
        return self.predict_proba_batch([image])[0]

    def predict_batch(self, images: Sequence[np.ndarray]) -> list[SegmentationResult]:
        """:meth:`predict` for several images in one forward pass."""
        return [SegmentationResult(p.argmax(0).astype(np.int64), list(self.classes))
                for p in self.predict_proba_batch(images)]

    def predict(self, image: np.ndarray) -> SegmentationResult:
        """The class map (H, W) of ``image`` (RGB uint8)."""
        return self.predict_batch([image])[0]

    def __repr__(self) -> str:
        return (f"SegmenterPredictor({self.meta['architecture']}, classes={self.classes}, "
                f"input_size={self.input_size})")
