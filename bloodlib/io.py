"""Reading images and masks safely.

Every image in the course goes through :func:`read_image`, which returns an RGB
``uint8`` array of shape (H, W, 3) or raises :class:`~bloodlib.errors.ImageReadError`.
Documented conversions (never silent failures):

* grayscale (L, 1-bit, palette) -> the gray channel replicated to RGB;
* RGBA / LA -> composited over a white background (a smear's background is light);
* 16-bit (I;16, I) or 48-bit -> scaled to 8 bits over the full 16-bit range;
* corrupt, truncated, empty or missing files -> ``ImageReadError`` naming the file;
* more pixels than Pillow's decompression-bomb limit (``Image.MAX_IMAGE_PIXELS`` x 2,
  about 179 MP) -> ``ImageReadError`` before any pixel is decoded.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from .errors import ImageReadError, MaskError

PathLike = Union[str, Path]
ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file must fail, not be padded with grey

_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


def _open(path: PathLike) -> Image.Image:
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"Image not found: {path}. Check the path, or fetch the dataset "
                             "with `python -m bloodlib fetch NAME`.")
    if path.stat().st_size == 0:
        raise ImageReadError(f"Image file is empty (0 bytes): {path}. Re-download or remove it.")
    try:
        img = Image.open(path)
        img.load()  # decode now so truncation is detected here
    except Image.DecompressionBombError as exc:
        raise ImageReadError(f"Image {path} is too large to decode safely ({exc}). It may be a "
                             "decompression bomb; a genuine whole-slide image must be cut into "
                             "tiles first.") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, ImportError) as exc:
        # ImportError: once ultralytics is imported it patches Image.open to retry unknown
        # files with an optional HEIF plugin, which fails with ModuleNotFoundError
        detail = ("cannot identify the image format" if isinstance(
            exc, (UnidentifiedImageError, ImportError)) else str(exc))
        raise ImageReadError(f"Cannot decode image {path}: {detail}. The file is corrupt, "
                             "truncated or not an image; re-download it or remove it from the "
                             "dataset.") from exc
    return img


def _sixteen_to_eight(arr: np.ndarray) -> np.ndarray:
    """Scale 16-bit values (0..65535) to 8 bits over the full range."""
    return np.clip(np.round(arr.astype(np.float64) / 65535.0 * 255.0), 0, 255).astype(np.uint8)


def to_rgb_uint8(img: Image.Image) -> np.ndarray:
    """Convert a decoded PIL image of any supported mode to an RGB uint8 array."""
    if img.mode in _SIXTEEN_BIT_MODES:
        gray = _sixteen_to_eight(np.asarray(img))
        return np.repeat(gray[..., None], 3, axis=2)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    if img.mode == "F":
        raise ImageReadError("Floating-point images are not supported; save it as 8- or 16-bit PNG.")
    return np.asarray(img.convert("RGB"))


def read_image(path: PathLike) -> np.ndarray:
    """Read an image file as an RGB uint8 array (H, W, 3); see the module docstring."""
    arr = to_rgb_uint8(_open(path))
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageReadError(f"Unexpected image shape {arr.shape} in {path}.")
    return np.ascontiguousarray(arr)


def read_mask(path: PathLike, expected_hw: tuple[int, int] | None = None) -> np.ndarray:
    """Read a label mask as a 2-D uint8 array.

    RGB masks whose three channels are equal are reduced to one channel; RGB masks
    with differing channels are converted to luminance. ``expected_hw`` (height,
    width) is checked and a :class:`MaskError` raised on mismatch.
    """
    img = _open(path)
    if img.mode in _SIXTEEN_BIT_MODES:
        arr = np.asarray(img)
        if arr.max(initial=0) > 255:
            raise MaskError(f"Mask {path} has label values above 255; convert it to 8-bit labels.")
        arr = arr.astype(np.uint8)
    else:
        arr = np.asarray(img.convert("RGB"))
        if np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2]):
            arr = arr[..., 0]
        else:
            arr = np.asarray(img.convert("L"))
    if expected_hw is not None and tuple(arr.shape[:2]) != tuple(expected_hw):
        raise MaskError(f"Mask {path} is {arr.shape[1]}x{arr.shape[0]} (WxH) but its image is "
                        f"{expected_hw[1]}x{expected_hw[0]}; masks must be pixel-aligned with "
                        "their images (resize with nearest-neighbour or fix the pairing).")
    return np.ascontiguousarray(arr)


def image_size(path: PathLike) -> tuple[int, int]:
    """(width, height) of an image file without decoding all pixels."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            return img.size
    except (FileNotFoundError, UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise ImageReadError(f"Cannot read image header of {path}: {exc}") from exc


def save_image(path: PathLike, image: np.ndarray) -> Path:
    """Write an RGB uint8 array (H, W, 3) to ``path`` (format from the suffix), creating
    the folder; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(image)).save(path)
    return path


def sha256_file(path: PathLike, chunk_bytes: int = 1 << 20) -> str:
    """The SHA-256 hex digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(chunk_bytes), b""):
            digest.update(chunk)
    return digest.hexdigest()
