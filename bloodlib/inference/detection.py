"""Detection predictor: boxes, classes, scores (and masks) for one smear image, and a
CBC-style count per class.

Loads checkpoints of :func:`bloodlib.models.detection.build_detector` models
(``meta["architecture"] == "torchvision_detector"``, ``architecture_kwargs`` = its
arguments, see :func:`detector_meta`) and of ultralytics YOLO models saved with
:func:`bloodlib.yolo.save_yolo_checkpoint` (``"yolo"``). The image goes through the
model's training-time preprocessing (CLAHE / stain normalisation, from
``meta["preprocessing"]``); torchvision detectors resize it themselves and return
boxes in the image's pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch

from .common import DEFAULT_PREPROCESSING, Predictor
from ..models.detection import build_detector, detector_info
from .store import check_head, ModelFormatError, read_task_checkpoint, rebuild_model
from torchvision.ops import batched_nms

__all__ = ["DetectionResult", "DetectorPredictor", "detector_meta", "DETECTOR_ARCHITECTURE"]

DETECTOR_ARCHITECTURE = "torchvision_detector"


@dataclass
class DetectionResult:
    """Detections of one image: ``boxes`` (N, 4) xyxy pixels, ``labels`` (class names),
    ``scores`` (N,), optional ``masks`` (N, H, W) bool; ``classes`` = every class the
    model knows (so that counts include zeros)."""

    boxes: np.ndarray
    labels: list[str]
    scores: np.ndarray
    masks: Optional[np.ndarray] = None
    classes: Optional[list[str]] = None

    def __len__(self) -> int:
        return len(self.labels)

    def counts(self) -> dict[str, int]:
        """Detections per class (a CBC-style count), every known class included."""
        out = {c: 0 for c in (self.classes or [])}
        for lab in self.labels:
            out[lab] = out.get(lab, 0) + 1
        return out


def detector_meta(model: torch.nn.Module, classes: Sequence[str], *, input_size: Any = None,
                  preprocessing: Optional[Mapping[str, Any]] = None,
                  training_data: Any = None, metrics: Optional[Mapping[str, float]] = None
                  ) -> dict[str, Any]:
    """Contract metadata (``task="detect"``) of a :func:`build_detector` model;
    ``classes`` without the background."""
    info = detector_info(model)
    if info["num_classes"] != len(classes) + 1:
        raise ValueError(f"The model has {info['num_classes']} classes with background but "
                         f"{len(classes)} class names were given (background excluded).")
    return {"task": "detect", "architecture": DETECTOR_ARCHITECTURE,
            "architecture_kwargs": info, "classes": [str(c) for c in classes],
            "input_size": input_size if input_size is not None else info["min_size"],
            "preprocessing": dict(DEFAULT_PREPROCESSING, **(preprocessing or {}),
                                  model_normalization=getattr(model, "normalization", None)),
            "training_data": training_data or {},
            "metrics": {k: float(v) for k, v in (metrics or {}).items()
                        if isinstance(v, (int, float)) and np.isfinite(v)},
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "pretrained_backbone": bool(getattr(model, "backbone_pretrained", False))}


def _class_nms(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor,
               iou: float) -> torch.Tensor:
    """Indices kept by torchvision's class-wise NMS, best score first."""
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.int64)
    return batched_nms(boxes.float(), scores.float(), labels, float(iou))


class DetectorPredictor(Predictor):
    """Cells in RGB uint8 smear images, with a torchvision detector or a YOLO model."""

    task = "detect"

    def __init__(self, model: Any, meta: Mapping[str, Any], device: Any = "cpu") -> None:
        architecture = meta.get("architecture", DETECTOR_ARCHITECTURE)
        super().__init__(model, meta, device, move=architecture != "yolo")
        self.architecture = architecture
        self.input_size = self.meta.get("input_size")

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: Any = "cpu") -> "DetectorPredictor":
        """Rebuild the detector named in the checkpoint's metadata and load its weights."""
        ckpt, meta = read_task_checkpoint(path, "detect", "a detector")
        if meta["architecture"] == "yolo":
            from ..yolo import load_yolo_checkpoint
            model, _ = load_yolo_checkpoint(path, device)
            head = getattr(getattr(model, "model", None), "model", None)
            if head is not None and hasattr(head[-1], "nc"):
                check_head(path, meta, int(head[-1].nc), "YOLO model")
            return cls(model, meta, device)
        if meta["architecture"] != DETECTOR_ARCHITECTURE:
            raise ModelFormatError(f"{path}: unknown detector architecture "
                                   f"{meta['architecture']!r}; expected "
                                   f"{DETECTOR_ARCHITECTURE!r} or 'yolo'.")
        kwargs = {**(meta.get("architecture_kwargs") or {}), "pretrained_backbone": False}
        check_head(path, meta, int(kwargs.get("num_classes", 4)) - 1,
                   "detector (background excluded)")
        model = rebuild_model(path, lambda: build_detector(**kwargs), ckpt["model_state"],
                              f"the detector with {kwargs}")
        return cls(model, meta, device)

    @torch.no_grad()
    def _raw(self, images: Sequence[np.ndarray]) -> list[dict[str, torch.Tensor]]:
        """The model's raw outputs for a batch of (preprocessed) images."""
        if self.architecture == "yolo":
            results = self.model.predict(source=[im[..., ::-1].copy() for im in images],
                                         imgsz=int(self.input_size or 640), conf=0.001, iou=0.7,
                                         verbose=False,
                                         device="cpu" if self.device.type == "cpu" else 0)
            return [{"boxes": r.boxes.xyxy.cpu(), "scores": r.boxes.conf.cpu(),
                     "labels": r.boxes.cls.cpu().long() + 1} for r in results]
        xs = [torch.from_numpy(np.ascontiguousarray(im.transpose(2, 0, 1))).float().div_(255)
              .to(self.device) for im in images]
        return [{k: v.detach().cpu() for k, v in out.items()} for out in self.model(xs)]

    def _result(self, out: Mapping[str, torch.Tensor], score_threshold: float,
                nms_threshold: float) -> DetectionResult:
        keep = out["scores"] >= score_threshold
        boxes, scores, labels = out["boxes"][keep], out["scores"][keep], out["labels"][keep]
        order = _class_nms(boxes, scores, labels, nms_threshold)
        boxes, scores, labels = boxes[order], scores[order], labels[order]
        masks = None
        if "masks" in out:
            m = out["masks"][keep][order]
            masks = (m.reshape(len(order), *m.shape[-2:]) > 0.5).numpy()
        names = [self.classes[int(l) - 1] if 1 <= int(l) <= len(self.classes) else str(int(l))
                 for l in labels]
        return DetectionResult(boxes.numpy().astype(np.float32).reshape(-1, 4), names,
                               scores.numpy().astype(np.float32), masks, list(self.classes))

    def predict_batch(self, images: Sequence[np.ndarray], score_threshold: float = 0.5,
                      nms_threshold: float = 0.5) -> list[DetectionResult]:
        """:meth:`predict` for several images in one forward pass (any sizes)."""
        if not 0.0 <= score_threshold <= 1.0 or not 0.0 < nms_threshold <= 1.0:
            raise ValueError(f"score_threshold must be in [0, 1] and nms_threshold in (0, 1], "
                             f"got {score_threshold} and {nms_threshold}.")
        if len(images) == 0:
            return []
        outs = self._raw([self._preprocess(im) for im in images])
        return [self._result(o, score_threshold, nms_threshold) for o in outs]

    def predict(self, image: np.ndarray, score_threshold: float = 0.5,
                nms_threshold: float = 0.5) -> DetectionResult:
        """Detections of ``image`` (RGB uint8 (H, W, 3)) scoring at least
        ``score_threshold``, after class-wise NMS at IoU ``nms_threshold``."""
        return self.predict_batch([image], score_threshold, nms_threshold)[0]

    def __repr__(self) -> str:
        kind = (self.meta.get("architecture_kwargs") or {}).get("kind", self.architecture)
        return f"DetectorPredictor({kind}, classes={self.classes})"
