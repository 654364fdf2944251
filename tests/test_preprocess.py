"""Contrast enhancement and stain normalisation (bloodlib.transforms.preprocess)."""

from __future__ import annotations

import pickle

import cv2
import numpy as np
import pytest

from bloodlib.data.synthetic import make_smear
from bloodlib.errors import BloodlibError
from bloodlib.transforms.preprocess import (DEFAULT_TARGET, InvalidImageError, StainError,
                                            StainTarget, build_preprocessing, clahe,
                                            fit_stain_target, macenko_normalize, macenko_stains,
                                            reinhard_normalize, stain_concentrations)


@pytest.fixture(scope="module")
def smear() -> np.ndarray:
    return make_smear(1).image


@pytest.fixture(scope="module")
def other_smear() -> np.ndarray:
    """A second smear with a blue-green cast (another stain batch / scanner)."""
    img = make_smear(2).image.astype(np.float32) * np.array([0.85, 0.95, 1.05])
    return np.clip(img, 0, 255).astype(np.uint8)


def _lab_stats(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lab = cv2.cvtColor(img.astype(np.float32) / 255, cv2.COLOR_RGB2LAB).reshape(-1, 3)
    return lab.mean(axis=0), lab.std(axis=0)


def _local_contrast(img: np.ndarray, k: int = 15) -> float:
    """Mean local standard deviation of the L channel over k x k windows."""
    L = cv2.cvtColor(img, cv2.COLOR_RGB2LAB)[..., 0].astype(np.float64)
    mean, sq = cv2.blur(L, (k, k)), cv2.blur(L * L, (k, k))
    return float(np.sqrt(np.maximum(sq - mean * mean, 0)).mean())


# ---------------------------------------------------------------- CLAHE
def test_clahe_raises_local_contrast_and_keeps_colour(smear):
    flat = np.clip(150 + (smear.astype(np.float32) - 150) * 0.35, 0, 255).astype(np.uint8)
    out = clahe(flat, clip_limit=3.0, tile_grid_size=8)
    assert out.shape == flat.shape and out.dtype == np.uint8
    assert _local_contrast(out) > 1.5 * _local_contrast(flat)
    ab_in = cv2.cvtColor(flat, cv2.COLOR_RGB2LAB)[..., 1:].astype(int)
    ab_out = cv2.cvtColor(out, cv2.COLOR_RGB2LAB)[..., 1:].astype(int)
    assert np.abs(ab_in - ab_out).mean() < 2.0  # only L is equalised


def test_clahe_stronger_clip_limit_gives_more_contrast(smear):
    assert _local_contrast(clahe(smear, 4.0)) > _local_contrast(clahe(smear, 1.0))


def test_clahe_of_uniform_image_is_that_image():
    white = np.full((32, 40, 3), 255, np.uint8)
    np.testing.assert_array_equal(clahe(white), white)


@pytest.mark.parametrize("kwargs", [{"clip_limit": 0}, {"tile_grid_size": 0}, {"tile_grid_size": 2.5}])
def test_clahe_rejects_bad_parameters(smear, kwargs):
    with pytest.raises(ValueError):
        clahe(smear, **kwargs)


# ---------------------------------------------------------------- Reinhard
def test_reinhard_matches_target_lab_mean_and_std(smear, other_smear):
    target = fit_stain_target(smear)
    out = reinhard_normalize(other_smear, target)
    mean, std = _lab_stats(out)
    np.testing.assert_allclose(mean, target.lab_mean, atol=1.5)
    np.testing.assert_allclose(std, target.lab_std, rtol=0.1)
    before, _ = _lab_stats(other_smear)
    assert np.abs(before - target.lab_mean).max() > 3  # there was something to correct


def test_reinhard_accepts_a_reference_image(smear, other_smear):
    np.testing.assert_array_equal(reinhard_normalize(other_smear, smear),
                                  reinhard_normalize(other_smear, fit_stain_target(smear)))


def test_reinhard_default_target_is_pbc(other_smear):
    mean, _ = _lab_stats(reinhard_normalize(other_smear))
    np.testing.assert_allclose(mean, DEFAULT_TARGET.lab_mean, atol=2.0)


# ---------------------------------------------------------------- Macenko
def test_macenko_output_shape_dtype_and_finite(smear, other_smear):
    out = macenko_normalize(other_smear, fit_stain_target(smear))
    assert out.shape == other_smear.shape and out.dtype == np.uint8
    conc = stain_concentrations(other_smear)
    assert conc.shape == other_smear.shape[:2] + (2,) and np.isfinite(conc).all()


def test_macenko_towards_own_target_changes_little(smear):
    out = macenko_normalize(smear, fit_stain_target(smear))
    assert np.abs(out.astype(int) - smear.astype(int)).mean() < 4


def test_macenko_stain_vectors_are_unit_and_ordered(smear):
    stains, max_conc = macenko_stains(smear)
    assert stains.shape == (3, 2) and max_conc.shape == (2,)
    np.testing.assert_allclose(np.linalg.norm(stains, axis=0), 1.0, atol=1e-6)
    assert (stains >= -1e-6).all() and (max_conc > 0).all()
    assert stains[0, 0] > stains[0, 1]  # stain 1 (azure, nuclei) absorbs red most
    ref = np.asarray(DEFAULT_TARGET.stain_matrix)
    assert ref[0, 0] > ref[0, 1]


def test_macenko_on_a_single_colour_raises(smear):
    pink = np.zeros((40, 40, 3), np.uint8) + np.array([200, 120, 140], np.uint8)
    noisy = np.clip(pink + np.random.default_rng(0).normal(0, 1, pink.shape), 0, 255).astype(np.uint8)
    noisy[:5] = 245  # some background
    with pytest.raises(StainError):
        macenko_normalize(noisy)


# ---------------------------------------------------------------- blank and bad input
@pytest.mark.parametrize("fn", [reinhard_normalize, macenko_normalize])
def test_stain_normalisers_raise_on_all_white(fn):
    white = np.full((30, 30, 3), 255, np.uint8)
    with pytest.raises(StainError, match="(?i)uniform|stained"):
        fn(white)
    np.testing.assert_array_equal(fn(white, on_unstained="return"), white)


BAD_IMAGES = {
    "grayscale": np.full((20, 20), 128, np.uint8),
    "grayscale_1ch": np.full((20, 20, 1), 128, np.uint8),
    "rgba": np.full((20, 20, 4), 128, np.uint8),
    "float": np.full((20, 20, 3), 0.5, np.float32),
    "uint16": np.full((20, 20, 3), 1000, np.uint16),
    "empty": np.zeros((0, 0, 3), np.uint8),
    "list": [[[1, 2, 3]]],
}


@pytest.mark.parametrize("name", list(BAD_IMAGES))
@pytest.mark.parametrize("fn", [clahe, reinhard_normalize, macenko_normalize,
                                build_preprocessing(clahe=True, stain="macenko")])
def test_bad_input_raises_a_clear_error(name, fn):
    with pytest.raises(InvalidImageError) as info:
        fn(BAD_IMAGES[name])
    assert isinstance(info.value, BloodlibError) and isinstance(info.value, ValueError)
    assert "RGB" in str(info.value) or "empty" in str(info.value) or "numpy" in str(info.value)


def test_on_unstained_must_be_known(smear):
    with pytest.raises(ValueError, match="on_unstained"):
        macenko_normalize(smear, on_unstained="ignore")


# ---------------------------------------------------------------- targets and pipelines
def test_fit_stain_target_pools_images_and_round_trips(smear, other_smear):
    target = fit_stain_target([smear, other_smear])
    assert np.asarray(target.stain_matrix).shape == (3, 2)
    assert StainTarget.from_dict(target.to_dict()) == target
    with pytest.raises(StainError):
        fit_stain_target([np.full((10, 10, 3), 255, np.uint8)])
    with pytest.raises(ValueError):
        fit_stain_target([])


def test_build_preprocessing_chains_and_describes_itself(smear):
    identity = build_preprocessing()
    np.testing.assert_array_equal(identity(smear), smear)
    pipe = build_preprocessing(clahe=True, stain="reinhard")
    np.testing.assert_array_equal(pipe(smear), clahe(reinhard_normalize(smear)))
    assert pipe.to_meta() == {"clahe": True, "stain": "reinhard"}
    restored = pickle.loads(pickle.dumps(pipe))  # DataLoader workers pickle transforms
    np.testing.assert_array_equal(restored(smear), pipe(smear))
    white = np.full((16, 16, 3), 255, np.uint8)
    np.testing.assert_array_equal(build_preprocessing(stain="macenko")(white), white)


def test_build_preprocessing_rejects_unknown_stain():
    with pytest.raises(BloodlibError, match="Unknown stain normalisation 'vahadane'"):
        build_preprocessing(stain="vahadane")
