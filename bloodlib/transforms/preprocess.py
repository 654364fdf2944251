"""Contrast enhancement and stain normalisation of RGB uint8 smear images.

Paper 1 (section 3.1) normalises the stain of its blood-cell images before it computes
masks and boxes, and enhances contrast; both are ablated on and off in notebook 01.

* :func:`clahe` - OpenCV CLAHE on the L channel of LAB (colours keep their hue).
* :func:`reinhard_normalize` - Reinhard et al. (2001): match the per-channel mean and
  standard deviation in LAB (OpenCV's float CIE-LAB, L 0..100) to a target.
* :func:`macenko_normalize` - Macenko et al. (2009): estimate the two stain vectors in
  optical-density space from the image, then re-express its stain concentrations with
  the target's stain vectors and 99th-percentile concentrations. For a Romanowsky
  (May-Gruenwald-Giemsa, Wright) smear the two "stains" are the purple-blue azure /
  methylene blue (nuclei, first) and the pink eosin (red cells, second).
* :func:`fit_stain_target` - a :class:`StainTarget` (both normalisers' reference) from
  one or more reference images.
* :func:`build_preprocessing` - a picklable ``callable(image) -> image`` for Datasets.

Every function takes and returns an RGB ``uint8`` array (H, W, 3); anything else
(grayscale, RGBA, float, empty) raises :class:`InvalidImageError`. An image without
stain (blank, all white, uniform) raises :class:`StainError` from the stain
normalisers unless ``on_unstained="return"``, which hands the input back unchanged;
no function ever returns NaNs. CLAHE of a uniform image is that same uniform image.

The default target (:data:`DEFAULT_TARGET`) was fitted with :func:`fit_stain_target`
on 80 PBC images (10 per class, ``load_pbc(max_per_class=10, seed=0)``: CellaVision
DM96, May-Gruenwald-Giemsa), so "normalised" means "looks like PBC".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence, Union

import cv2
import numpy as np

from ..errors import BloodlibError, InvalidImageError, StainError

__all__ = ["InvalidImageError", "StainError", "StainTarget", "DEFAULT_TARGET", "check_rgb_uint8",
           "clahe", "reinhard_normalize", "macenko_normalize", "macenko_stains",
           "background_intensity", "optical_density", "stain_concentrations",
           "fit_stain_target", "build_preprocessing", "Preprocessing", "STAIN_METHODS"]


MACENKO_BETA = 0.15  # OD threshold: pixels whose mean OD (norm / sqrt 3) is below it are unstained
MACENKO_ALPHA = 1.0  # percentile of the angle extremes (robust min / max)
MIN_STAINED_PIXELS = 100
MAX_FIT_PIXELS = 100_000
MIN_STAIN_ANGLE_DEG = 3.0  # two stain vectors closer than this are one stain
_LAB_STD_FLOOR = 1.0  # LAB units: caps Reinhard's amplification of near-constant channels


# ---------------------------------------------------------------- validation
def check_rgb_uint8(image: Any, what: str = "image") -> np.ndarray:
    """Return ``image`` as a C-contiguous RGB uint8 (H, W, 3) array or raise
    :class:`InvalidImageError` saying what is wrong and how to convert it."""
    if not isinstance(image, np.ndarray):
        raise InvalidImageError(f"{what} must be a numpy array, got {type(image).__name__}; "
                               "read files with bloodlib.io.read_image.")
    if image.size == 0:
        raise InvalidImageError(f"{what} is empty (shape {image.shape}).")
    if image.dtype != np.uint8:
        raise InvalidImageError(f"{what} has dtype {image.dtype}; expected uint8 RGB. Convert floats "
                               "in [0, 1] with (img * 255).round().astype(np.uint8).")
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        raise InvalidImageError(f"{what} is grayscale (shape {image.shape}); expected RGB (H, W, 3). "
                               "Use np.repeat(img[..., None], 3, axis=2) or bloodlib.io.read_image.")
    if image.ndim == 3 and image.shape[2] == 4:
        raise InvalidImageError(f"{what} is RGBA (shape {image.shape}); expected RGB (H, W, 3). "
                               "Composite it over white (bloodlib.io.read_image does this).")
    if image.ndim != 3 or image.shape[2] != 3:
        raise InvalidImageError(f"{what} has shape {image.shape}; expected RGB (H, W, 3).")
    return np.ascontiguousarray(image)


def _check_on_unstained(value: str) -> None:
    if value not in ("raise", "return"):
        raise ValueError(f"on_unstained must be 'raise' or 'return', got {value!r}.")


# ---------------------------------------------------------------- CLAHE
def clahe(image: np.ndarray, clip_limit: float = 2.0, tile_grid_size: int = 8) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation of the L channel of LAB.

    ``clip_limit`` is OpenCV's (contrast limit per tile, > 0); the image is split into
    ``tile_grid_size`` x ``tile_grid_size`` tiles. Hue and saturation (a, b) are kept.
    """
    image = check_rgb_uint8(image)
    if not clip_limit > 0:
        raise ValueError(f"clip_limit must be > 0, got {clip_limit}.")
    if int(tile_grid_size) != tile_grid_size or tile_grid_size < 1:
        raise ValueError(f"tile_grid_size must be a positive integer, got {tile_grid_size}.")
    lab = cv2.cvtColor(image, cv2.COLOR_RGB2LAB)
    op = cv2.createCLAHE(clipLimit=float(clip_limit), tileGridSize=(int(tile_grid_size),) * 2)
    lab[..., 0] = op.apply(np.ascontiguousarray(lab[..., 0]))
    return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)


# ---------------------------------------------------------------- targets
@dataclass(frozen=True)
class StainTarget:
    """Reference statistics for both normalisers.

    ``lab_mean``/``lab_std``: per-channel LAB mean and std (Reinhard);
    ``stain_matrix``: (3, 2) unit optical-density vectors, stain 1 (azure / haematoxylin
    like, absorbs red most) first; ``max_conc``: 99th-percentile concentrations;
    ``background``: the light level ``I_0`` (RGB) of the reference (Macenko).
    """

    lab_mean: tuple[float, float, float]
    lab_std: tuple[float, float, float]
    stain_matrix: tuple[tuple[float, float], ...]
    max_conc: tuple[float, float]
    background: tuple[float, float, float] = (240.0, 240.0, 240.0)
    source: str = field(default="", compare=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (for checkpoint metadata)."""
        return {"lab_mean": list(self.lab_mean), "lab_std": list(self.lab_std),
                "stain_matrix": [list(r) for r in self.stain_matrix],
                "max_conc": list(self.max_conc), "background": list(self.background),
                "source": self.source}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "StainTarget":
        """Inverse of :meth:`to_dict`."""
        return cls(tuple(d["lab_mean"]), tuple(d["lab_std"]),
                   tuple(tuple(r) for r in d["stain_matrix"]), tuple(d["max_conc"]),
                   tuple(d.get("background", (240.0, 240.0, 240.0))), d.get("source", ""))


DEFAULT_TARGET = StainTarget(
    lab_mean=(79.201, 11.132, 7.1842),
    lab_std=(15.83, 9.3044, 14.627),
    stain_matrix=((0.72194, 0.42152), (0.64609, 0.90288), (0.24774, 0.08446)),
    max_conc=(1.1357, 2.4761),
    background=(255.0, 228.0, 203.0),
    source="fit_stain_target(load_pbc(max_per_class=10, seed=0) images) (80 PBC images)",
)


TargetLike = Union[StainTarget, np.ndarray, None]


def _resolve_target(target: TargetLike) -> StainTarget:
    if target is None:
        return DEFAULT_TARGET
    if isinstance(target, StainTarget):
        return target
    if isinstance(target, np.ndarray):
        return fit_stain_target([target])
    raise TypeError(f"target must be a StainTarget, a reference RGB uint8 image or None, "
                    f"got {type(target).__name__}.")


# ---------------------------------------------------------------- Reinhard
def _lab_float(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)


def _lab_stats(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lab = pixels.reshape(-1, 3).astype(np.float64)
    return lab.mean(axis=0), lab.std(axis=0)


def reinhard_normalize(image: np.ndarray, target: TargetLike = None,
                       on_unstained: str = "raise") -> np.ndarray:
    """Reinhard colour transfer: per-channel LAB mean/std of ``image`` -> ``target``'s.

    ``target`` is a :class:`StainTarget`, a reference image, or None (:data:`DEFAULT_TARGET`).
    A uniform image (L std < 0.5, e.g. all white) raises :class:`StainError`, or is
    returned unchanged with ``on_unstained="return"``. The a/b std is floored at 1 LAB
    unit so that near-grey images are not amplified into noise.
    """
    image = check_rgb_uint8(image)
    _check_on_unstained(on_unstained)
    tgt = _resolve_target(target)
    lab = _lab_float(image)
    mean, std = _lab_stats(lab)
    if std[0] < 0.5:
        if on_unstained == "return":
            return image.copy()
        raise StainError(f"Image is uniform (LAB L std {std[0]:.2f}); Reinhard normalisation needs "
                         "a stained smear. Skip blank images or pass on_unstained='return'.")
    std = np.maximum(std, _LAB_STD_FLOOR)
    out = (lab - mean) / std * np.asarray(tgt.lab_std) + np.asarray(tgt.lab_mean)
    out[..., 0] = np.clip(out[..., 0], 0, 100)
    rgb = cv2.cvtColor(out.astype(np.float32), cv2.COLOR_LAB2RGB)
    return np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- Macenko
def background_intensity(pixels: np.ndarray) -> np.ndarray:
    """Per-channel light level ``I_0`` (3,): the median colour of the brightest 10 % of
    pixels (by R + G + B), at least 64. Smears differ (BCCD ~190 grey, Jiangxi yellow,
    PBC beige), so a fixed ``I_0`` would count a dim background as stain."""
    px = pixels.reshape(-1, 3).astype(np.float64)
    lum = px.sum(axis=1)
    bright = px[lum >= np.percentile(lum, 90)]
    return np.maximum(np.median(bright, axis=0), 64.0)


def _optical_density(pixels: np.ndarray, io: np.ndarray) -> np.ndarray:
    """(N, 3) uint8 -> (N, 3) OD = -ln((I + 1) / (I_0 + 1)), clipped at 0."""
    return np.maximum(-np.log((pixels.reshape(-1, 3).astype(np.float64) + 1.0) / (io + 1.0)), 0.0)


def _stained(od: np.ndarray, beta: float = MACENKO_BETA) -> np.ndarray:
    """Pixels with OD norm > beta * sqrt(3). (Macenko drops pixels below beta in *any*
    channel; a Romanowsky nucleus barely absorbs blue, so that rule loses the nuclei.)"""
    return od[np.linalg.norm(od, axis=1) > beta * np.sqrt(3)]


def _stain_vectors(od_hat: np.ndarray, alpha: float = MACENKO_ALPHA) -> np.ndarray:
    """Macenko's plane fit and angle extremes: (3, 2) unit vectors, red-absorbing first."""
    _, vecs = np.linalg.eigh(np.cov(od_hat.T))
    plane = vecs[:, 1:3]
    plane = plane * np.where(plane.sum(axis=0) < 0, -1.0, 1.0)  # point into positive OD
    proj = od_hat @ plane
    phi = np.arctan2(proj[:, 1], proj[:, 0])
    lo, hi = np.percentile(phi, alpha), np.percentile(phi, 100 - alpha)
    v1 = plane @ np.array([np.cos(lo), np.sin(lo)])
    v2 = plane @ np.array([np.cos(hi), np.sin(hi)])
    stains = np.stack([v1, v2], axis=1) if v1[0] > v2[0] else np.stack([v2, v1], axis=1)
    stains = stains * np.where(stains.sum(axis=0) < 0, -1.0, 1.0)
    return stains / np.linalg.norm(stains, axis=0, keepdims=True)


def _check_stains(stains: np.ndarray, where: str) -> None:
    cos = float(np.clip(stains[:, 0] @ stains[:, 1], -1, 1))
    if not np.all(np.isfinite(stains)) or np.degrees(np.arccos(cos)) < MIN_STAIN_ANGLE_DEG:
        raise StainError(f"{where}: found one stain colour only (the two stain vectors are "
                         f"{np.degrees(np.arccos(cos)):.1f} degrees apart); cannot separate stains.")


def _concentrations(od: np.ndarray, stains: np.ndarray) -> np.ndarray:
    """(N, 3) OD -> (N, 2) least-squares stain concentrations."""
    return np.linalg.lstsq(stains, od.T, rcond=None)[0].T


def optical_density(image: np.ndarray, background: Optional[np.ndarray] = None) -> np.ndarray:
    """(H, W, 3) optical density of an RGB uint8 image against ``background`` (its light
    level ``I_0``; default :func:`background_intensity` of the image)."""
    image = check_rgb_uint8(image)
    io = background_intensity(image) if background is None else np.asarray(background, float)
    return _optical_density(image, io).reshape(image.shape).astype(np.float32)


def stain_concentrations(image: np.ndarray, stains: Optional[np.ndarray] = None,
                         background: Optional[np.ndarray] = None) -> np.ndarray:
    """(H, W, 2) concentrations of stain 1 (azure, nuclei) and stain 2 (eosin, red cells).

    ``stains`` (3, 2) defaults to the image's own Macenko vectors, or the PBC reference
    vectors of :data:`DEFAULT_TARGET` when the image holds too little stain to fit them.
    """
    od = optical_density(image, background)
    if stains is None:
        try:
            stains, _ = _fit_macenko(od.reshape(-1, 3).astype(np.float64), "image")
        except StainError:
            stains = np.asarray(DEFAULT_TARGET.stain_matrix)
    conc = _concentrations(od.reshape(-1, 3).astype(np.float64), np.asarray(stains, float))
    return conc.reshape(od.shape[0], od.shape[1], 2).astype(np.float32)


def macenko_stains(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Estimate ``(stain_matrix (3, 2), max_conc (2,))`` of one image (Macenko).

    Raises :class:`StainError` when fewer than ``MIN_STAINED_PIXELS`` pixels exceed the
    OD threshold in every channel (blank image) or only one stain colour is present.
    """
    image = check_rgb_uint8(image)
    return _fit_macenko(_optical_density(image, background_intensity(image)), "image")


def _fit_macenko(od: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    od_hat = _stained(od)
    if len(od_hat) > MAX_FIT_PIXELS:  # a seeded sample keeps large images fast
        od_hat = od_hat[np.random.default_rng(0).choice(len(od_hat), MAX_FIT_PIXELS, replace=False)]
    if len(od_hat) < MIN_STAINED_PIXELS:
        raise StainError(f"{where}: only {len(od_hat)} stained pixels (mean OD > {MACENKO_BETA}; "
                         f"need {MIN_STAINED_PIXELS}). Is it blank or all white?")
    stains = _stain_vectors(od_hat)
    _check_stains(stains, where)
    conc = _concentrations(od_hat, stains)
    max_conc = np.percentile(conc, 99, axis=0)
    if not np.all(np.isfinite(max_conc)) or np.any(max_conc <= 1e-6):
        raise StainError(f"{where}: a stain has no positive concentration (99th percentile "
                         f"{max_conc.tolist()}); cannot normalise.")
    return stains, max_conc


def macenko_normalize(image: np.ndarray, target: TargetLike = None,
                      on_unstained: str = "raise") -> np.ndarray:
    """Macenko stain normalisation towards ``target`` (StainTarget, reference image or None).

    Concentrations are scaled so their 99th percentiles match the target's, then
    recomposed with the target's stain vectors and light level: ``I = I_0 exp(-S C)``
    (each image's own ``I_0`` is :func:`background_intensity`), so the background takes
    the target's colour. A blank image (see :func:`macenko_stains`)
    raises :class:`StainError`, or is returned unchanged with ``on_unstained="return"``.
    """
    image = check_rgb_uint8(image)
    _check_on_unstained(on_unstained)
    tgt = _resolve_target(target)
    od = _optical_density(image, background_intensity(image))
    try:
        stains, max_conc = _fit_macenko(od, "image")
    except StainError:
        if on_unstained == "return":
            return image.copy()
        raise
    conc = _concentrations(od, stains) * (np.asarray(tgt.max_conc) / max_conc)
    rgb = (np.asarray(tgt.background) + 1.0) * np.exp(-conc @ np.asarray(tgt.stain_matrix).T) - 1.0
    if not np.all(np.isfinite(rgb)):  # cannot happen with checked stains; never return NaNs
        raise StainError("Macenko normalisation produced non-finite values.")
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8).reshape(image.shape)


# ---------------------------------------------------------------- fitting
def fit_stain_target(images: Union[np.ndarray, Sequence[np.ndarray]], max_pixels: int = 500_000,
                     seed: int = 0) -> StainTarget:
    """Fit a :class:`StainTarget` on one image or a list of images.

    LAB statistics and optical densities (each image against its own light level) are
    pooled over the images; at most ``max_pixels`` pixels (a seeded random sample) enter
    the fit; the target's light level is the median of the images'. Raises
    :class:`StainError` when the images hold too little stain for Macenko's fit.
    """
    if isinstance(images, np.ndarray):
        images = [images]
    images = [check_rgb_uint8(im, f"images[{i}]") for i, im in enumerate(images)]
    if not images:
        raise ValueError("fit_stain_target needs at least one image.")
    levels = [background_intensity(im) for im in images]
    pixels = np.concatenate([im.reshape(-1, 3) for im in images])
    od = np.concatenate([_optical_density(im, io) for im, io in zip(images, levels)])
    if len(pixels) > max_pixels:
        keep = np.random.default_rng(seed).choice(len(pixels), max_pixels, replace=False)
        pixels, od = pixels[keep], od[keep]
    mean, std = _lab_stats(_lab_float(pixels.reshape(-1, 1, 3)))
    if std[0] < 0.5:
        raise StainError("Reference images are uniform (all white?); cannot fit a stain target.")
    stains, max_conc = _fit_macenko(od, "reference images")
    r = lambda v: tuple(float(f"{x:.5g}") for x in v)  # noqa: E731 - readable constants
    return StainTarget(r(mean), r(np.maximum(std, _LAB_STD_FLOOR)),
                       tuple(r(row) for row in stains), r(max_conc), r(np.median(levels, axis=0)),
                       f"fit_stain_target on {len(images)} image(s)")


# ---------------------------------------------------------------- pipelines
STAIN_METHODS: dict[str, Callable[..., np.ndarray]] = {
    "reinhard": reinhard_normalize,
    "macenko": macenko_normalize,
}


@dataclass(frozen=True)
class Preprocessing:
    """``image -> image``: optional stain normalisation, then optional CLAHE (picklable)."""

    clahe: bool = False
    stain: Optional[str] = None
    target: Optional[StainTarget] = None
    clip_limit: float = 2.0
    tile_grid_size: int = 8
    on_unstained: str = "return"

    def __call__(self, image: np.ndarray) -> np.ndarray:
        image = check_rgb_uint8(image)
        if self.stain is not None:
            image = STAIN_METHODS[self.stain](image, self.target, on_unstained=self.on_unstained)
        if self.clahe:
            image = clahe(image, self.clip_limit, self.tile_grid_size)
        return image

    def to_meta(self) -> dict[str, Any]:
        """The ``preprocessing`` entry of checkpoint metadata (``normalize`` is the model's)."""
        meta: dict[str, Any] = {"clahe": self.clahe, "stain": self.stain}
        if self.target is not None:
            meta["stain_target"] = self.target.to_dict()
        return meta


def build_preprocessing(clahe: bool = False, stain: Optional[str] = None,
                        target: TargetLike = None, clip_limit: float = 2.0,
                        tile_grid_size: int = 8, on_unstained: str = "return") -> Preprocessing:
    """A ``callable(image) -> image``: stain normalisation (``"reinhard"``, ``"macenko"`` or
    None) then CLAHE when ``clahe``. With neither it returns the (validated) input.

    Inside a pipeline a blank image is passed through unchanged (``on_unstained="return"``)
    rather than stopping a whole dataset; pass ``"raise"`` to be strict.
    """
    if stain is not None and stain not in STAIN_METHODS:
        raise BloodlibError(f"Unknown stain normalisation {stain!r}; choose one of "
                            f"{sorted(STAIN_METHODS)} or None.")
    _check_on_unstained(on_unstained)
    if not clip_limit > 0 or int(tile_grid_size) != tile_grid_size or tile_grid_size < 1:
        raise ValueError("clip_limit must be > 0 and tile_grid_size a positive integer.")
    tgt = None if target is None else _resolve_target(target)
    return Preprocessing(bool(clahe), stain, tgt, float(clip_limit), int(tile_grid_size), on_unstained)
