"""Tiny stand-ins for the detection and classification predictors (same contract), and a
helper that stores a small random-weight segmentation model. Used by the inference,
CLI, widget and benchmark tests so they run in seconds without trained models."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from bloodlib.inference.common import check_image


@dataclass
class StubDetection:
    boxes: np.ndarray
    labels: list
    scores: np.ndarray
    masks: Optional[np.ndarray] = None

    def counts(self) -> dict:
        out: dict = {}
        for lab in self.labels:
            out[lab] = out.get(lab, 0) + 1
        return out


class StubDetector:
    """Four fixed cells: a WBC, two RBCs (scores 0.8, 0.4) and a platelet."""

    task = "detect"
    classes = ["WBC", "RBC", "Platelets"]

    def predict(self, image, score_threshold=0.5, nms_threshold=0.5):
        image = check_image(image)
        boxes = np.array([[10, 10, 50, 50], [60, 10, 90, 40], [5, 55, 30, 80], [40, 60, 46, 66]],
                         float)
        labels = ["WBC", "RBC", "RBC", "Platelets"]
        scores = np.array([0.9, 0.8, 0.4, 0.7])
        keep = scores >= score_threshold
        masks = np.zeros((4, *image.shape[:2]), bool)
        for m, (x1, y1, x2, y2) in zip(masks, boxes.astype(int)):
            m[y1:y2, x1:x2] = True
        return StubDetection(boxes[keep], [l for l, k in zip(labels, keep) if k], scores[keep],
                             masks[keep])


@dataclass
class StubClassification:
    label: str
    probabilities: dict = field(default_factory=dict)


class StubClassifier:
    """'neutrophil' for bright crops, else 'lymphocyte'."""

    task = "classify"
    classes = ["neutrophil", "lymphocyte"]

    def predict(self, image):
        p = float(check_image(image).mean() > 100)
        probs = {"neutrophil": 0.2 + 0.6 * p, "lymphocyte": 0.8 - 0.6 * p}
        return StubClassification(max(probs, key=probs.get), probs)

    def predict_batch(self, images):
        return [self.predict(im) for im in images]


def store_tiny_segmenter(folder: Path, name: str = "tiny-seg") -> Path:
    """A random-weight WCSegNet (width 1/16, 32 px) saved in the store ``folder``."""
    import torch

    from bloodlib.inference.segmentation import segmentation_meta
    from bloodlib.inference.store import save_model
    from bloodlib.models import build_segmentation_model

    torch.manual_seed(0)
    model = build_segmentation_model("wcsegnet", 4, width=1 / 16)
    meta = segmentation_meta("wcsegnet", ["background", "neutrophil", "lymphocyte", "basophil"],
                             32, architecture_kwargs={"width": 1 / 16},
                             training_data={"dataset": "none", "split": "-"},
                             metrics={"dice": 0.5})
    return save_model(model, name, meta, folder=folder)


def smear(seed: int = 0, h: int = 96, w: int = 128) -> np.ndarray:
    from bloodlib.data.synthetic import make_smear
    return make_smear(seed, h, w).image


def png_bytes(image: np.ndarray) -> bytes:
    import io

    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def store_tiny_classifier(folder: Path, name: str = "tiny-cls", size: int = 32) -> Path:
    """A random-weight ResNet-18 for 8 PBC classes at ``size`` px saved in ``folder``."""
    import torch

    from bloodlib.inference.classification import classifier_meta
    from bloodlib.inference.store import save_model
    from bloodlib.models.classifiers import build_classifier

    torch.manual_seed(0)
    classes = ["basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte",
               "neutrophil", "platelet"]
    model = build_classifier("resnet18", len(classes), in_size=size)
    meta = classifier_meta("resnet18", classes, size, architecture_kwargs={"in_size": size},
                           tta="dihedral", training_data={"dataset": "none", "split": "-"})
    return save_model(model, name, meta, folder=folder)


def store_tiny_detector(folder: Path, name: str = "tiny-det") -> Path:
    """A random-weight Faster R-CNN (MobileNetV3, 128 px) for WBC / RBC / Platelets."""
    import torch

    from bloodlib.inference.detection import detector_meta
    from bloodlib.inference.store import save_model
    from bloodlib.models.detection import build_detector

    torch.manual_seed(0)
    model = build_detector("faster_rcnn", "mobilenet_v3_large", 4, min_size=128, max_size=160,
                           fpn_channels=32, representation_size=64,
                           anchor_sizes=[[16], [32], [64], [128], [256]],
                           box_score_thresh=0.0)
    meta = detector_meta(model, ["WBC", "RBC", "Platelets"],
                         training_data={"dataset": "none", "split": "-"})
    return save_model(model, name, meta, folder=folder)
