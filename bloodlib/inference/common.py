"""Helpers shared by the predictors: input checks, preprocessing, tensor conversion.

Every predictor takes an RGB ``uint8`` numpy image ``(H, W, 3)``; :func:`check_image`
rejects anything else with a message saying what to do.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import torch

from ..errors import BloodlibError, InvalidImageError

TASKS = ("detect", "classify", "segment")
MIN_SIDE = 8                   # pixels; smaller inputs cannot hold a cell
MAX_PIXELS = 64_000_000        # 64 MP; whole-slide tiles must be cut first
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_PREPROCESSING = {"clahe": False, "stain": None, "normalize": "unit"}


def check_image(image: Any, min_side: int = MIN_SIDE, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """``image`` as a contiguous RGB uint8 array (H, W, 3), or InvalidImageError."""
    if not isinstance(image, np.ndarray):
        raise InvalidImageError(f"Expected a numpy array, got {type(image).__name__}; read files "
                                "with bloodlib.io.read_image(path).")
    if image.dtype != np.uint8:
        raise InvalidImageError(f"Expected dtype uint8, got {image.dtype}; convert with "
                                "np.clip(x * 255, 0, 255).astype(np.uint8) for [0, 1] floats.")
    if image.ndim != 3 or image.shape[2] != 3:
        raise InvalidImageError(f"Expected an RGB image of shape (H, W, 3), got {image.shape}; "
                                "bloodlib.io.read_image converts grayscale/RGBA to RGB.")
    h, w = image.shape[:2]
    if min(h, w) < min_side:
        raise InvalidImageError(f"Image {w}x{h} is too small (each side must be >= {min_side} px).")
    if h * w > max_pixels:
        raise InvalidImageError(f"Image {w}x{h} has {h * w / 1e6:.0f} MP, more than "
                                f"{max_pixels / 1e6:.0f} MP; cut it into tiles first.")
    return np.ascontiguousarray(image)


def preprocessing_available() -> bool:
    """Whether ``bloodlib.transforms.preprocess.build_preprocessing`` can be imported."""
    try:
        from ..transforms.preprocess import build_preprocessing  # noqa: F401
    except ImportError:
        return False
    return True


def stain_methods() -> list[str]:
    """Stain-normalisation names offered by ``bloodlib.transforms.preprocess`` (if any)."""
    try:
        from ..transforms import preprocess
    except ImportError:
        return []
    for attr in ("STAIN_METHODS", "STAIN_NORMALIZERS", "STAIN_NAMES"):
        names = getattr(preprocess, attr, None)
        if names:
            return [str(n) for n in (names.keys() if isinstance(names, Mapping) else names)]
    return ["macenko", "reinhard"]


def build_preprocess(clahe: bool = False, stain: Optional[str] = None
                     ) -> Optional[Callable[[np.ndarray], np.ndarray]]:
    """A function RGB uint8 -> RGB uint8 applying CLAHE and/or stain normalisation, or
    None when neither is asked. Raises BloodlibError when they are asked but
    ``bloodlib.transforms.preprocess`` is not available."""
    if not clahe and not stain:
        return None
    try:
        from ..transforms.preprocess import build_preprocessing
    except ImportError as exc:
        raise BloodlibError("CLAHE / stain normalisation need bloodlib.transforms.preprocess, "
                            f"which is not available in this version ({exc}); run without "
                            "--clahe/--stain.") from exc
    transform = build_preprocessing(clahe=bool(clahe), stain=stain or None)

    def apply(image: np.ndarray) -> np.ndarray:
        out = transform(image) if transform is not None else image
        if isinstance(out, Mapping):  # an albumentations-style result
            out = out["image"]
        return check_image(np.asarray(out))
    return apply


def preprocess_from_meta(meta: Mapping[str, Any]) -> Optional[Callable[[np.ndarray], np.ndarray]]:
    """The CLAHE / stain step a model was trained with (``meta["preprocessing"]``)."""
    pre = dict(DEFAULT_PREPROCESSING, **(meta.get("preprocessing") or {}))
    return build_preprocess(bool(pre.get("clahe")), pre.get("stain"))


class Predictor:
    """What every predictor holds: its contract ``meta``, the ``classes``, the ``device``,
    the ``model`` (moved there and put in eval mode unless ``move=False``) and the
    preprocessing it was trained with."""

    task = ""

    def __init__(self, model: Any, meta: Mapping[str, Any], device: Any = "cpu",
                 move: bool = True) -> None:
        self.meta = dict(meta)
        self.classes = [str(c) for c in self.meta["classes"]]
        self.device = torch.device(device)
        self.model = model.to(self.device).eval() if move else model
        self._pre = preprocess_from_meta(self.meta)

    def _preprocess(self, image: np.ndarray) -> np.ndarray:
        """``image`` checked, then CLAHE / stain-normalised as in training."""
        image = check_image(image)
        return self._pre(image) if self._pre is not None else image


def to_tensor(image: np.ndarray, normalize: str = "unit") -> torch.Tensor:
    """RGB uint8 (H, W, 3) -> float tensor (1, 3, H, W): ``unit`` = [0, 1], ``imagenet`` =
    [0, 1] then standardised with the ImageNet mean and std."""
    x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(255.0)
    if normalize == "imagenet":
        mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
        x = (x - mean) / std
    elif normalize not in ("unit", None):
        raise BloodlibError(f"Unknown normalisation {normalize!r}; use 'unit' or 'imagenet'.")
    return x.unsqueeze(0)


# ----------------------------------------------------------------------------- segmentation meta
#: paper 5's classes (bloodlib.experiments.wbc_segmentation.CLASS_NAMES), used for legacy
#: checkpoints with 4 classes
PAPER5_CLASSES = ("background", "neutrophil", "lymphocyte", "basophil")


def segmentation_meta(architecture: str, classes: Sequence[str], input_size: Any, *,
                      architecture_kwargs: Optional[Mapping[str, Any]] = None,
                      training_data: Any = None, metrics: Optional[Mapping[str, float]] = None,
                      preprocessing: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    """Contract metadata (``task="segment"``) of a segmentation-zoo model."""
    size = [int(input_size), int(input_size)] if np.isscalar(input_size) else \
        [int(s) for s in input_size]
    return {"task": "segment", "architecture": architecture,
            "architecture_kwargs": dict(architecture_kwargs or {}),
            "classes": [str(c) for c in classes], "input_size": size,
            "preprocessing": dict(DEFAULT_PREPROCESSING, **(preprocessing or {})),
            "training_data": training_data or {},
            "metrics": {k: float(v) for k, v in (metrics or {}).items()
                        if isinstance(v, (int, float)) and np.isfinite(v)},
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def segmentation_meta_from_legacy(meta: Mapping[str, Any]) -> dict[str, Any]:
    """Contract metadata from ``{"model": name, "knobs": {...}}`` (wbc_segmentation)."""
    knobs = dict(meta.get("knobs") or {})
    n = int(knobs.get("num_classes", 4))
    classes = list(meta.get("classes") or (PAPER5_CLASSES if n == 4 else
                                           ["background"] + [f"class_{i}" for i in range(1, n)]))
    out = segmentation_meta(str(meta["model"]), classes, int(knobs.get("image_size", 120)),
                            architecture_kwargs={"width": float(knobs.get("width", 1.0))},
                            training_data=meta.get("training_data") or
                            {"dataset": ",".join(knobs.get("datasets") or []) or "unknown",
                             "split": "train", "profile": knobs.get("profile")},
                            metrics=meta.get("metrics"))
    out["created"] = meta.get("created") or out["created"]
    return out
