"""Trained models in use: the model store, predictors per task, quick models, latency.

* :mod:`.store` - ``save_model``, ``list_models``, ``load_predictor`` (dispatch on
  ``meta["task"]``: ``detect`` -> :mod:`.detection`, ``classify`` ->
  :mod:`.classification`, ``segment`` -> :mod:`.segmentation`).
* :mod:`.pipeline` - one image through any predictor: tables, counts, overlay.
* :mod:`.quick_models` - ``train_quick_model(task)`` when no trained model exists yet.
* :mod:`.benchmark` - prediction latency and folder throughput.

Task modules are imported lazily, so a missing one only matters when its models load.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from .common import TASKS, InvalidImageError, check_image
from .store import (ModelFormatError, ModelNotFoundError, default_model, list_models,
                    load_predictor, model_names, models_dir, read_meta, resolve_model,
                    save_model)
from . import onnx_export as _onnx_export  # noqa: F401,E402  (registers the onnxruntime runtime)

_LAZY = {
    "SegmenterPredictor": ".segmentation", "SegmentationResult": ".segmentation",
    "ClassifierPredictor": ".classification", "ClassificationResult": ".classification",
    "DetectorPredictor": ".detection", "DetectionResult": ".detection",
    "train_quick_model": ".quick_models", "quick_model_tasks": ".quick_models",
    "predict_image": ".pipeline", "render_overlay": ".pipeline",
    "latency_benchmark": ".benchmark",
}

__all__ = ["TASKS", "InvalidImageError", "check_image", "ModelFormatError",
           "ModelNotFoundError", "default_model", "list_models", "load_predictor",
           "model_names", "models_dir", "read_meta", "resolve_model", "save_model", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
