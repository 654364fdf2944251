"""Fuzzy c-means segmentation on synthetic images."""

from __future__ import annotations

import numpy as np
import pytest

from bloodlib.classical import connected_instances, fcm_memberships, fcm_segment, fuzzy_cmeans
from bloodlib.errors import ImageReadError, MaskError


def synthetic_cells(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A bright background with two dark cells, each with a darker nucleus, plus noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:80, :100]
    img = np.full((80, 100, 3), (225, 215, 230), float)
    truth = np.zeros((80, 100), bool)
    for cy, cx in ((25, 30), (52, 70)):
        cell = (yy - cy) ** 2 + (xx - cx) ** 2 < 14 ** 2
        nucleus = (yy - cy) ** 2 + (xx - cx) ** 2 < 7 ** 2
        img[cell] = (170, 140, 200)
        img[nucleus] = (90, 60, 150)
        truth |= cell
    img += rng.normal(0, 6, img.shape)
    return img.clip(0, 255).astype(np.uint8), truth


def test_fuzzy_cmeans_finds_separated_clusters():
    rng = np.random.default_rng(1)
    data = np.concatenate([rng.normal(0, 0.1, (50, 2)), rng.normal(5, 0.1, (50, 2))])
    centers, u, iters = fuzzy_cmeans(data, 2, seed=0)
    assert np.allclose(sorted(centers[:, 0]), [0, 5], atol=0.1)
    assert u.shape == (2, 100) and np.allclose(u.sum(axis=0), 1) and iters >= 1
    assert np.allclose(fcm_memberships(data, centers).sum(axis=0), 1)


def test_fcm_segments_synthetic_cells():
    img, truth = synthetic_cells()
    res = fcm_segment(img, n_clusters=3, seed=0)
    assert res.labels.shape == truth.shape and set(np.unique(res.labels)) == {0, 1, 2}
    iou = (res.foreground & truth).sum() / (res.foreground | truth).sum()
    assert iou > 0.9
    assert (res.centers.sum(axis=1) == np.sort(res.centers.sum(axis=1))[::-1]).all()  # bright first
    nucleus = res.labels == 2
    assert nucleus.sum() < res.foreground.sum() / 2  # the darkest cluster is the nuclei
    inst = connected_instances(res.foreground, min_size=50)
    assert inst.shape == (2, 80, 100)


def test_fcm_valid_region_and_errors():
    img, _ = synthetic_cells()
    valid = np.zeros(img.shape[:2], bool)
    valid[:, :50] = True
    res = fcm_segment(img, valid=valid)
    assert not res.foreground[:, 50:].any() and (res.labels[:, 50:] == 0).all()
    with pytest.raises(ImageReadError):
        fcm_segment(img.astype(np.float32))
    with pytest.raises(MaskError):
        fcm_segment(img, valid=valid[:10])
    with pytest.raises(ValueError):
        fuzzy_cmeans(np.zeros((5, 2)), 2, m=1.0)
