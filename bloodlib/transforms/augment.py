"""Augmentations applied jointly to an image and its mask (albumentations).

Paper 5 (section 2.2) used Keras' ``ImageDataGenerator`` with ``rotation_range=40``,
``width_shift_range=0.2``, ``height_shift_range=0.2``, ``shear_range=0.2``,
``zoom_range=0.2``, ``horizontal_flip=True``. Translated to one ``A.Affine`` + a flip:

* rotation: uniform in [-40, 40] degrees;
* shifts: uniform in [-20 %, 20 %] of the width / height;
* shear: Keras' ``shear_range`` is in **degrees**, so 0.2 means +-0.2 degrees (barely
  visible). Many Keras users believed it was radians (+-11.5 degrees); pass
  ``shear=11.5`` to get that reading;
* zoom: Keras draws the x and y zoom independently in [0.8, 1.2] and *divides*
  coordinates by it, so the picture is scaled by 1/z in [0.83, 1.25] per axis;
* horizontal flip with probability 0.5;
* Keras' default ``fill_mode="nearest"`` = replicate the edge pixels.

Images are interpolated bilinearly, masks with nearest neighbour (labels stay labels).
:class:`AlbumentationsSegmentation` adapts any albumentations transform to the
``transforms(image, mask)`` call of :class:`bloodlib.data.datasets.SegmentationDataset`.
"""

from __future__ import annotations

from typing import Any, Optional

import albumentations as A
import cv2
import numpy as np
import torch

__all__ = ["paper5_augmentation", "single_augmentations", "cell_classification_augmentation",
           "AlbumentationsSegmentation", "PAPER5_AUGMENTATION"]

PAPER5_AUGMENTATION = {"rotation_range": 40, "width_shift_range": 0.2,
                       "height_shift_range": 0.2, "shear_range": 0.2, "zoom_range": 0.2,
                       "horizontal_flip": True}


def _affine(rotate: float = 0.0, shift_x: float = 0.0, shift_y: float = 0.0,
            shear: float = 0.0, zoom: float = 0.0) -> A.Affine:
    """Keras-style random affine (ranges symmetric around the identity), always applied."""
    return A.Affine(rotate=(-rotate, rotate),
                    translate_percent={"x": (-shift_x, shift_x), "y": (-shift_y, shift_y)},
                    shear={"x": (-shear, shear), "y": (0.0, 0.0)},
                    scale={"x": (1 / (1 + zoom), 1 / (1 - zoom)),
                           "y": (1 / (1 + zoom), 1 / (1 - zoom))},
                    keep_ratio=False, interpolation=cv2.INTER_LINEAR,
                    mask_interpolation=cv2.INTER_NEAREST, border_mode=cv2.BORDER_REPLICATE,
                    p=1.0)


def _color_jitter(amount: float) -> A.ColorJitter:
    """Brightness / contrast / saturation within +-``amount``, hue a fifth of it; half the
    time. Changes the image only."""
    return A.ColorJitter(brightness=amount, contrast=amount, saturation=amount,
                         hue=amount / 5, p=0.5)


def paper5_augmentation(p: float = 1.0, rotation: float = 40.0, shift: float = 0.2,
                        shear: float = 0.2, zoom: float = 0.2,
                        horizontal_flip: bool = True, seed: Optional[int] = None,
                        vertical_flip: bool = False, color_jitter: float = 0.0) -> A.Compose:
    """Paper 5's augmentation (Keras semantics, see the module docstring); applied with
    probability ``p``; ``seed`` makes the random draws reproducible.
    ``vertical_flip`` and ``color_jitter`` (brightness / contrast / saturation range; the
    image only) are extras beyond the paper, off by default.
    Call as ``t(image=img, mask=mask)`` or wrap in :class:`AlbumentationsSegmentation`."""
    steps: list[Any] = [_affine(rotation, shift, shift, shear, zoom)]
    if horizontal_flip:
        steps.append(A.HorizontalFlip(p=0.5))
    if vertical_flip:
        steps.append(A.VerticalFlip(p=0.5))
    if color_jitter > 0:
        steps.append(_color_jitter(color_jitter))
    return A.Compose(steps, p=p, seed=seed)


def single_augmentations(shear: float = 0.2) -> dict[str, A.BasicTransform]:
    """One transform per augmentation of paper 5 (its Figure 2), each always applied."""
    return {
        "rotation": _affine(rotate=40.0),
        "width_shift": _affine(shift_x=0.2),
        "height_shift": _affine(shift_y=0.2),
        "shear": _affine(shear=shear),
        "zoom": _affine(zoom=0.2),
        "horizontal_flip": A.HorizontalFlip(p=1.0),
    }


def cell_classification_augmentation(color_jitter: float = 0.1) -> A.Compose:
    """Flips, 90-degree rotations and a small colour jitter for single-cell crops."""
    return A.Compose([
        A.HorizontalFlip(p=0.5),
        A.VerticalFlip(p=0.5),
        A.RandomRotate90(p=1.0),
        _color_jitter(color_jitter),
    ])


def _mask_to_numpy(mask: np.ndarray) -> np.ndarray:
    """cv2 cannot warp int64 masks: use uint8 when the labels fit, else float32."""
    if mask.dtype in (np.uint8, np.float32):
        return mask
    if mask.size and mask.min() >= 0 and mask.max() < 256:
        return mask.astype(np.uint8)
    return mask.astype(np.float32)


class AlbumentationsSegmentation:
    """Adapter: ``(image, mask) -> (image, mask)`` through an albumentations transform.

    Accepts either numpy (image ``(H, W, C)`` uint8 or float, mask ``(H, W)``) or torch
    tensors (image ``(C, H, W)`` float in [0, 1], mask ``(H, W)`` integer) and returns the
    same kinds, dtypes and tensor subclasses it received. Tensors go through albumentations
    as float32 ``(H, W, C)`` arrays, so nothing is quantised. With ``mask=None`` (e.g. a
    classification Dataset calling ``transforms(image)``) only the image is returned.
    """

    def __init__(self, transform: Any) -> None:
        self.transform = transform

    def __call__(self, image: Any, mask: Optional[Any] = None) -> Any:
        is_tensor = isinstance(image, torch.Tensor)
        img = image.detach().cpu().permute(1, 2, 0).float().numpy() if is_tensor \
            else np.asarray(image)
        kw: dict[str, Any] = {"image": np.ascontiguousarray(img)}
        if mask is not None:
            m = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
            kw["mask"] = _mask_to_numpy(m)
        out = self.transform(**kw)
        new_image = self._image_back(out["image"], image) if is_tensor \
            else out["image"].astype(np.asarray(image).dtype, copy=False)
        if mask is None:
            return new_image
        return new_image, self._mask_back(out["mask"], mask)

    @staticmethod
    def _image_back(arr: np.ndarray, like: torch.Tensor) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)
        return t.to(like.dtype).contiguous().as_subclass(type(like))

    @staticmethod
    def _mask_back(arr: np.ndarray, like: Any) -> Any:
        if isinstance(like, torch.Tensor):
            t = torch.from_numpy(np.ascontiguousarray(arr)).to(like.dtype)
            return t.as_subclass(type(like))
        return arr.astype(np.asarray(like).dtype, copy=False)
