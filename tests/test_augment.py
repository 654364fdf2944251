"""Joint image/mask augmentation: alignment, label set, numpy and tensor round trips."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bloodlib.transforms import (AlbumentationsSegmentation, cell_classification_augmentation,
                                 paper5_augmentation, single_augmentations)


def _sample(size: int = 48) -> tuple[np.ndarray, np.ndarray]:
    image = np.full((size, size, 3), 40, np.uint8)
    mask = np.zeros((size, size), np.int64)
    image[10:30, 12:26] = 220  # "cytoplasm"
    mask[10:30, 12:26] = 1
    image[15:22, 16:22] = 255  # "nucleus"
    mask[15:22, 16:22] = 3
    return image, mask


def _aligned(image: np.ndarray, mask: np.ndarray) -> float:
    """Fraction of pixels where 'bright' in the image agrees with 'labelled' in the mask."""
    return float(((image[..., 0] > 130) == (mask > 0)).mean())


@pytest.mark.parametrize("seed", range(8))
def test_paper5_keeps_alignment_and_labels(seed):
    image, mask = _sample()
    aug = AlbumentationsSegmentation(paper5_augmentation(seed=seed))
    out_image, out_mask = aug(image, mask)
    assert out_image.shape == image.shape and out_image.dtype == np.uint8
    assert out_mask.shape == mask.shape and out_mask.dtype == mask.dtype
    assert set(np.unique(out_mask)) <= {0, 1, 3}
    assert _aligned(out_image, out_mask) > 0.97


@pytest.mark.parametrize("name", list(single_augmentations()))
def test_single_augmentations(name):
    image, mask = _sample()
    out_image, out_mask = AlbumentationsSegmentation(single_augmentations()[name])(image, mask)
    assert set(np.unique(out_mask)) <= {0, 1, 3}
    assert _aligned(out_image, out_mask) > 0.97


@pytest.mark.parametrize("seed", range(4))
def test_extras_keep_alignment_and_jitter_only_the_image(seed):
    image, mask = _sample()
    aug = AlbumentationsSegmentation(paper5_augmentation(seed=seed, vertical_flip=True,
                                                         color_jitter=0.1))
    out_image, out_mask = aug(image, mask)
    assert set(np.unique(out_mask)) <= {0, 1, 3}
    assert _aligned(out_image, out_mask) > 0.95
    flips = [t for t in paper5_augmentation(vertical_flip=True).transforms
             if type(t).__name__ == "VerticalFlip"]
    assert len(flips) == 1
    jitter_only = AlbumentationsSegmentation(paper5_augmentation(
        p=1.0, rotation=0, shift=0, shear=0, zoom=0, horizontal_flip=False, color_jitter=0.3,
        seed=seed))
    assert np.array_equal(jitter_only(image, mask)[1], mask)


def test_seed_reproducible():
    image, mask = _sample()
    a = AlbumentationsSegmentation(paper5_augmentation(seed=3))(image, mask)
    b = AlbumentationsSegmentation(paper5_augmentation(seed=3))(image, mask)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_flip_moves_the_shape():
    image, mask = _sample()
    _, out_mask = AlbumentationsSegmentation(single_augmentations()["horizontal_flip"])(image, mask)
    assert np.array_equal(out_mask, mask[:, ::-1])


def test_tensor_round_trip_keeps_kinds():
    from torchvision import tv_tensors
    image, mask = _sample()
    t_image = tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1).float() / 255)
    t_mask = tv_tensors.Mask(torch.from_numpy(mask))
    out_image, out_mask = AlbumentationsSegmentation(paper5_augmentation())(t_image, t_mask)
    assert isinstance(out_image, tv_tensors.Image) and out_image.dtype == torch.float32
    assert out_image.shape == (3, 48, 48) and 0 <= out_image.min() <= out_image.max() <= 1
    assert isinstance(out_mask, tv_tensors.Mask) and out_mask.dtype == torch.int64
    assert set(out_mask.unique().tolist()) <= {0, 1, 3}
    plain = AlbumentationsSegmentation(single_augmentations()["horizontal_flip"])(
        torch.from_numpy(image).permute(2, 0, 1).float() / 255, torch.from_numpy(mask))
    assert torch.equal(plain[1], torch.from_numpy(mask).flip(-1))


def test_classification_augmentation_image_only():
    image, _ = _sample()
    out = AlbumentationsSegmentation(cell_classification_augmentation())(image)
    assert out.shape == image.shape and out.dtype == np.uint8
