"""Fuzzy c-means (FCM) colour clustering for cell segmentation — paper 3's Table I
baseline "FCM" (its reference [28] adds an eagle-strategy optimiser and morphological
reconstruction; this is the plain algorithm with a morphological clean-up).

:func:`fuzzy_cmeans` is Bezdek's algorithm in numpy (memberships ``u_ik`` with fuzzifier
``m``; centres are membership-weighted means; iterate until the memberships change by
less than ``tol``). :func:`fcm_segment` clusters the pixel colours of an image (fitted on
a random subsample of pixels, then every pixel gets its highest-membership cluster),
orders the clusters from brightest to darkest, and calls everything but the brightest
cluster foreground (stained cells on a bright background).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..errors import ImageReadError, MaskError
from scipy import ndimage
from skimage.morphology import remove_small_objects
from skimage.measure import label

__all__ = ["FCMResult", "fuzzy_cmeans", "fcm_memberships", "fcm_segment",
           "connected_instances"]


def fcm_memberships(data: np.ndarray, centers: np.ndarray, m: float = 2.0) -> np.ndarray:
    """Memberships (c, N) of points ``data`` (N, D) in clusters ``centers`` (c, D):
    ``u_ik = 1 / sum_j (d_ik / d_jk) ** (2 / (m - 1))``; each column sums to 1."""
    d = np.linalg.norm(data[None, :, :] - centers[:, None, :], axis=2)  # (c, N)
    d = np.fmax(d, 1e-10)
    inv = d ** (-2.0 / (m - 1.0))
    return inv / inv.sum(axis=0, keepdims=True)


def fuzzy_cmeans(data: np.ndarray, n_clusters: int, m: float = 2.0, max_iter: int = 100,
                 tol: float = 1e-5, seed: int = 0) -> tuple[np.ndarray, np.ndarray, int]:
    """Fuzzy c-means of ``data`` (N, D): ``(centers (c, D), memberships (c, N), iterations)``."""
    data = np.asarray(data, dtype=np.float64)
    if data.ndim != 2 or len(data) < n_clusters:
        raise ValueError(f"data must be (N, D) with N >= n_clusters={n_clusters}; "
                         f"got {data.shape}.")
    if m <= 1:
        raise ValueError(f"The fuzzifier m must be > 1, got {m}.")
    rng = np.random.default_rng(seed)
    u = rng.random((n_clusters, len(data)))
    u /= u.sum(axis=0, keepdims=True)
    centers = np.zeros((n_clusters, data.shape[1]))
    it = 0
    for it in range(1, max_iter + 1):
        um = u ** m
        centers = um @ data / um.sum(axis=1, keepdims=True)
        new_u = fcm_memberships(data, centers, m)
        done = np.abs(new_u - u).max() < tol
        u = new_u
        if done:
            break
    return centers, u, it


@dataclass
class FCMResult:
    """``labels`` (H, W) cluster index, 0 = brightest (background) ... c-1 = darkest;
    ``foreground`` (H, W) bool = not the brightest cluster (after clean-up); ``centers``
    (c, 3) RGB cluster centres in the same order; ``iterations`` of the FCM fit."""

    labels: np.ndarray
    foreground: np.ndarray
    centers: np.ndarray
    iterations: int


def _clean(mask: np.ndarray, min_size: int) -> np.ndarray:
    mask = ndimage.binary_opening(mask, iterations=1)
    mask = ndimage.binary_fill_holes(mask)
    if min_size <= 1:
        return mask
    try:  # scikit-image >= 0.26 names the threshold max_size (objects <= it go)
        return remove_small_objects(mask, max_size=min_size - 1)
    except TypeError:
        return remove_small_objects(mask, min_size=min_size)


def fcm_segment(image: np.ndarray, n_clusters: int = 3, m: float = 2.0,
                valid: Optional[np.ndarray] = None, max_pixels: int = 20000,
                min_size: int = 30, max_iter: int = 100, seed: int = 0) -> FCMResult:
    """Segment an RGB uint8 image by fuzzy c-means on its pixel colours.

    ``valid`` (H, W bool) restricts the fit and the labels to part of the image (e.g. the
    picture inside a letterboxed frame); pixels outside are background (label 0).
    Foreground connected components smaller than ``min_size`` pixels are removed and holes
    filled.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ImageReadError(f"fcm_segment needs an RGB uint8 image (H, W, 3); got "
                             f"{image.dtype} {image.shape}.")
    h, w = image.shape[:2]
    valid = np.ones((h, w), bool) if valid is None else np.asarray(valid, bool)
    if valid.shape != (h, w):
        raise MaskError(f"valid mask {valid.shape} does not match the image {(h, w)}.")
    pixels = image[valid].astype(np.float64) / 255.0
    if len(pixels) < n_clusters:
        raise MaskError(f"Only {len(pixels)} valid pixels for {n_clusters} clusters.")
    rng = np.random.default_rng(seed)
    sample = pixels[rng.choice(len(pixels), min(max_pixels, len(pixels)), replace=False)]
    centers, _, iters = fuzzy_cmeans(sample, n_clusters, m, max_iter=max_iter, seed=seed)
    order = np.argsort(-centers.sum(axis=1))  # brightest first
    centers = centers[order]
    labels = np.zeros((h, w), np.int64)
    labels[valid] = fcm_memberships(pixels, centers, m).argmax(axis=0)
    foreground = _clean((labels > 0) & valid, min_size)
    return FCMResult(labels, foreground, (centers * 255).astype(np.float32), iters)


def connected_instances(mask: np.ndarray, min_size: int = 1) -> np.ndarray:
    """Instance masks (N, H, W) bool of the connected components of a binary mask (8-
    connectivity), those smaller than ``min_size`` pixels dropped."""
    lab = label(np.asarray(mask, bool), connectivity=2)
    ids = [i for i, n in enumerate(np.bincount(lab.ravel())) if i and n >= min_size]
    if not ids:
        return np.zeros((0, *lab.shape), bool)
    return np.stack([lab == i for i in ids])
