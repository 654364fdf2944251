"""Paper 3's classifier: the DenseNet on cell crops (the stand-in task)."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import cv2
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ...engine import distributed as ddp
from ...runtime import seed_everything
from ...classical import connected_instances, fcm_segment
from ...data.datasets import decode_segmentation
from ...models.classifiers import build_classifier
from ...engine.checkpoint import Checkpoints
from ..configs import BloodCancerConfig
from .settings import CLS_CLASSES
from .train import Optimization, train_steps, TrainLog
from .augment import coco_images
from .data import letterbox_valid


# ============================================================================ DCNN
def _crop(image: np.ndarray, box: Sequence[float], margin: float, size: int) -> np.ndarray:
    x, y, w, h = box
    cx, cy, half = x + w / 2, y + h / 2, max(w, h) * (1 + margin) / 2
    h_img, w_img = image.shape[:2]
    x0, y0 = int(max(0, cx - half)), int(max(0, cy - half))
    x1, y1 = int(min(w_img, cx + half)), int(min(h_img, cy + half))
    return cv2.resize(np.ascontiguousarray(image[y0:y1, x0:x1]), (size, size),
                      interpolation=cv2.INTER_AREA)


def cell_crops(coco: dict, settings: BloodCancerConfig, seed: int = 0
               ) -> tuple[list[np.ndarray], list[str]]:
    """The classification stand-in (module docstring): crops of annotated plasma cells
    and of FCM-segmented objects that are not plasma cells, at most ``cls_max_per_class``
    of each, from the native-resolution images of ``coco``."""
    size, margin = int(settings.cls.size), float(settings.cls.margin)
    cap = settings.cls.max_per_class
    pos, neg = [], []
    areas = [a["area"] for a in coco["annotations"]] or [100.0]
    lo, hi = 0.25 * float(np.percentile(areas, 5)), 2.0 * float(np.percentile(areas, 95))
    by_image: dict[int, list[dict]] = {}
    for a in coco["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    for entry, image in zip(coco["images"], coco_images(coco)):
        anns = by_image.get(entry["id"], [])
        pos += [_crop(image, a["bbox"], margin, size) for a in anns]
        h, w = image.shape[:2]
        cells = np.zeros((h, w), bool)
        for a in anns:
            cells |= decode_segmentation(a["segmentation"], h, w).astype(bool)
        fg = fcm_segment(image, int(settings.fcm.clusters), valid=letterbox_valid(entry, h, w),
                         min_size=int(settings.fcm.min_size), seed=seed).foreground
        for inst in connected_instances(fg & ~cells, int(lo)):
            area = inst.sum()
            if area > hi or (inst & cells).sum() > 0.2 * area:
                continue
            ys, xs = np.nonzero(inst)
            neg.append(_crop(image, [xs.min(), ys.min(), np.ptp(xs) + 1, np.ptp(ys) + 1],
                             margin, size))
    rng = np.random.default_rng(seed)
    if cap is not None:
        pos = [pos[i] for i in sorted(rng.choice(len(pos), min(cap, len(pos)), replace=False))]
        neg = [neg[i] for i in sorted(rng.choice(len(neg), min(cap, len(neg)), replace=False))]
    return pos + neg, [CLS_CLASSES[0]] * len(pos) + [CLS_CLASSES[1]] * len(neg)


def build_dcnn(settings: BloodCancerConfig, num_classes: int = 2) -> nn.Module:
    """DenseNet-121 (paper 3's "DCNN") from the classification track's registry
    (:func:`bloodlib.models.classifiers.build_classifier`), trained from scratch unless
    ImageNet weights are cached; it takes images in [0, 1] and normalises inside.
    ``cls_small_input`` keeps DenseNet's first pooling (False) or drops it (True; None =
    automatic below 128 px)."""
    return build_classifier("densenet121", num_classes, in_size=int(settings.cls.size),
                            small_input=settings.cls.small_input)


def _crop_tensor(crops: Sequence[np.ndarray]) -> torch.Tensor:
    """RGB uint8 crops -> float (n, 3, s, s) in [0, 1]."""
    return torch.from_numpy(np.stack(crops).transpose(0, 3, 1, 2).copy()).float() / 255.0


def train_dcnn(crops: Sequence[np.ndarray], labels: Sequence[str], settings: BloodCancerConfig,
               device: Any = "cpu", seed: int = 0, checkpoints: Optional[Checkpoints] = None
               ) -> tuple[nn.Module, TrainLog]:
    """DenseNet-121 on the crops (flips and 90-degree rotations, cross-entropy, AdamW),
    ``cls_epochs`` epochs or ``cls_time_budget_s``."""
    seed_everything(seed)
    model = build_dcnn(settings, len(CLS_CLASSES))
    x = _crop_tensor(crops)
    y = torch.tensor([CLS_CLASSES.index(c) for c in labels])
    loader = DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=int(settings.cls.batch),
                        shuffle=True, generator=torch.Generator().manual_seed(seed))
    dev = torch.device(device)
    ce = nn.CrossEntropyLoss()

    def fn(m: nn.Module, batch: Any) -> dict:
        xb, yb = batch
        k = int(torch.randint(4, (1,)))
        xb = torch.rot90(xb, k, (2, 3))
        if torch.rand(1) < 0.5:
            xb = xb.flip(3)
        return {"cross_entropy": ce(m(xb.to(dev)), yb.to(dev))}
    steps = int(settings.cls.epochs) * ddp.batches_per_rank(loader)
    log = train_steps(model, loader, fn, Optimization.of(settings, optimizer="adamw",
                                                       warmup_steps=1),
                      steps, settings.cls.time_budget_s, device,
                      label=f"classifier_{len(x)}crops_s{seed}", checkpoints=checkpoints)
    return model, log


@torch.no_grad()
def predict_dcnn(model: nn.Module, crops: Sequence[np.ndarray], device: Any = "cpu",
                 batch_size: int = 64) -> np.ndarray:
    """Class probabilities (n, 2) of the crops."""
    model.eval().to(device)
    x = _crop_tensor(crops)
    return torch.cat([model(x[i:i + batch_size].to(device)).softmax(1).cpu()
                      for i in range(0, len(x), batch_size)]).numpy()
