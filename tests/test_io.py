"""Bad and unusual images: each is converted as documented or rejected clearly."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from bloodlib.errors import ImageReadError, MaskError
from bloodlib.io import image_size, read_image, read_mask


def _save(img: Image.Image, path, **kw):
    img.save(path, **kw)
    return path


def test_rgb_jpeg_roundtrip(tmp_path):
    arr = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    path = _save(Image.fromarray(arr), tmp_path / "a.png")
    out = read_image(path)
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, arr)


def test_grayscale_is_replicated(tmp_path):
    gray = np.arange(200, dtype=np.uint8).reshape(10, 20)
    out = read_image(_save(Image.fromarray(gray, "L"), tmp_path / "g.png"))
    assert out.shape == (10, 20, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], gray)


def test_rgba_composited_over_white(tmp_path):
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[:2, :, 3] = 255  # top half opaque red-ish, bottom half transparent
    out = read_image(_save(Image.fromarray(rgba, "RGBA"), tmp_path / "t.png"))
    assert tuple(out[0, 0]) == (200, 0, 0)
    assert tuple(out[3, 3]) == (255, 255, 255)


def test_sixteen_bit_scaled_to_eight(tmp_path):
    arr = np.array([[0, 65535], [32896, 257]], dtype=np.uint16)
    path = tmp_path / "s.png"
    Image.fromarray(arr).save(path)
    out = read_image(path)
    assert out.dtype == np.uint8
    assert out[0, 0, 0] == 0 and out[0, 1, 0] == 255 and out[1, 1, 0] == 1
    assert abs(int(out[1, 0, 0]) - 128) <= 1


def test_missing_file(tmp_path):
    with pytest.raises(ImageReadError, match="not found"):
        read_image(tmp_path / "nope.jpg")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty"):
        read_image(path)


def test_not_an_image(tmp_path):
    path = tmp_path / "fake.jpg"
    path.write_text("this is not a jpeg")
    with pytest.raises(ImageReadError, match="corrupt"):
        read_image(path)


def test_truncated_jpeg_is_rejected(tmp_path):
    arr = np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    full = _save(Image.fromarray(arr), tmp_path / "full.jpg", quality=95)
    data = full.read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError):
        read_image(cut)


def test_mask_size_mismatch(tmp_path):
    path = _save(Image.fromarray(np.zeros((10, 12), np.uint8)), tmp_path / "m.png")
    assert read_mask(path, expected_hw=(10, 12)).shape == (10, 12)
    with pytest.raises(MaskError, match="pixel-aligned"):
        read_mask(path, expected_hw=(12, 10))


def test_rgb_mask_with_equal_channels_is_reduced(tmp_path):
    m = np.zeros((5, 5, 3), np.uint8)
    m[1:3, 1:3] = 255
    out = read_mask(_save(Image.fromarray(m), tmp_path / "m.png"))
    assert out.shape == (5, 5) and out.max() == 255 and out.sum() == 255 * 4


def test_image_size_reads_header(tmp_path):
    path = _save(Image.fromarray(np.zeros((7, 9, 3), np.uint8)), tmp_path / "x.png")
    assert image_size(path) == (9, 7)
