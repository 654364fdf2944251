"""What a classifier looks at: Grad-CAM through the maintained ``grad-cam`` package
(pytorch-grad-cam, ``pytorch_grad_cam``).

```python
cams = grad_cam(model, images)                  # (N, H, W) float32 in [0, 1]
overlay = overlay_cam(image_uint8, cams[0])     # RGB uint8 heat map over the image
```

Grad-CAM (Selvaraju et al., 2017) weights the activations of a convolutional layer by the
spatially averaged gradient of a class score and keeps the positive part; the map is
upsampled to the input size and scaled to [0, 1] per image. The layer defaults to the
model's last convolutional stage (:func:`bloodlib.models.classifiers.cam_layer`).
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn
from .models.classifiers import cam_layer

__all__ = ["grad_cam", "overlay_cam"]


def grad_cam(model: nn.Module, images: torch.Tensor, target_classes: Optional[Sequence[int]] = None,
             layer: Optional[nn.Module] = None, batch_size: int = 32) -> np.ndarray:
    """Grad-CAM maps ``(N, H, W)`` float32 in [0, 1] for ``images`` ``(N, 3, H, W)``
    (the model's input, e.g. floats in [0, 1]).

    ``target_classes`` (one index per image) default to the predicted classes. The model
    is put in eval mode and returned to its previous mode afterwards.
    """
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget


    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}.")
    if target_classes is not None and len(target_classes) != len(images):
        raise ValueError(f"{len(target_classes)} target classes for {len(images)} images.")
    was_training = model.training
    device = next(model.parameters()).device
    layer = layer if layer is not None else cam_layer(model)
    out = []
    try:
        with GradCAM(model=model, target_layers=[layer]) as cam:
            for start in range(0, len(images), batch_size):
                x = images[start:start + batch_size].to(device)
                targets = None if target_classes is None else [
                    ClassifierOutputTarget(int(c)) for c in target_classes[start:start + len(x)]]
                out.append(np.asarray(cam(input_tensor=x, targets=targets), dtype=np.float32))
    finally:
        model.train(was_training)
    maps = np.concatenate(out) if out else np.zeros((0, *images.shape[-2:]), np.float32)
    return np.clip(np.nan_to_num(maps), 0.0, 1.0)


def overlay_cam(image: np.ndarray, cam: np.ndarray, image_weight: float = 0.55) -> np.ndarray:
    """The map ``cam`` (H, W) in [0, 1] as a JET heat map over ``image`` (RGB uint8, or
    float in [0, 1], same H and W); returns RGB uint8."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    img = np.asarray(image)
    img = img.astype(np.float32) / 255.0 if img.dtype == np.uint8 else img.astype(np.float32)
    if img.shape[:2] != cam.shape:
        raise ValueError(f"image {img.shape[:2]} and map {cam.shape} differ in size.")
    return show_cam_on_image(np.clip(img, 0, 1), np.clip(cam, 0, 1), use_rgb=True,
                             image_weight=image_weight)
