"""Synthetic smears, crops and the writers that put them on disk as common records."""

from __future__ import annotations

import numpy as np
import pytest

from bloodlib.data.records import LabelledImage, MaskedImage
from bloodlib.data.synthetic import (CROP_TYPES, SMEAR_CLASSES, WBC_TYPES, make_cell_crop,
                                     make_smear, masks_to_boxes, write_classification_set,
                                     write_detection_set, write_segmentation_set)
from bloodlib.io import read_image, read_mask


def test_smear_is_deterministic_by_seed():
    a, b, c = make_smear(3), make_smear(3), make_smear(4)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.masks, b.masks)
    assert a.labels == b.labels and np.array_equal(a.boxes, b.boxes)
    assert not np.array_equal(a.image, c.image)


@pytest.mark.parametrize("seed", range(6))
def test_smear_instances_are_consistent(seed):
    sm = make_smear(seed, height=200, width=240)
    n = len(sm.labels)
    assert sm.image.shape == (200, 240, 3) and sm.image.dtype == np.uint8
    assert sm.masks.shape == (n, 200, 240) and sm.masks.dtype == bool
    assert sm.boxes.shape == (n, 4) and len(sm.wbc_types) == n
    assert set(sm.labels) <= set(SMEAR_CLASSES) and "WBC" in sm.labels and "RBC" in sm.labels
    assert sm.masks.reshape(n, -1).sum(1).min() >= 10  # no empty instances
    assert sm.masks.sum(0).max() <= 1  # visible masks never overlap
    np.testing.assert_array_equal(sm.boxes, masks_to_boxes(sm.masks))  # tight boxes
    for m, (x1, y1, x2, y2) in zip(sm.masks, sm.boxes.astype(int)):
        assert m[y1:y2, x1:x2].sum() == m.sum()  # mask inside its box
    for lab, t in zip(sm.labels, sm.wbc_types):
        assert (t in WBC_TYPES) if lab == "WBC" else t is None
    wbc = sm.masks[[lab == "WBC" for lab in sm.labels]].any(0)
    assert sm.nucleus_mask.any() and not (sm.nucleus_mask & ~wbc).any()
    assert set(np.unique(sm.semantic)) <= {0, 1, 2}
    assert sm.category_ids == [SMEAR_CLASSES.index(lab) + 1 for lab in sm.labels]


@pytest.mark.parametrize("cell_type", CROP_TYPES)
def test_cell_crops(cell_type):
    img, mask = make_cell_crop(cell_type, seed=1, size=64)
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8 and mask.shape == (64, 64)
    assert set(np.unique(mask)) <= {0, 1, 2} and (mask == 1).any()
    assert mask[26:38, 26:38].any()  # centred
    if cell_type == "platelet":
        assert not (mask == 2).any()  # platelets have no nucleus
    else:
        assert (mask == 2).sum() > 20
    img2, mask2 = make_cell_crop(cell_type, seed=1, size=64)
    assert np.array_equal(img, img2) and np.array_equal(mask, mask2)
    assert not np.array_equal(img, make_cell_crop(cell_type, seed=2, size=64)[0])


def test_crop_types_differ_in_colour():
    """Mean colour of the cell alone separates the types a tiny classifier must learn."""
    means = []
    for t in CROP_TYPES:
        img, mask = make_cell_crop(t, seed=0, size=64)
        means.append(img[mask > 0].mean(0))
    d = np.linalg.norm(np.array(means)[:, None] - np.array(means)[None], axis=-1)
    assert d[~np.eye(len(CROP_TYPES), dtype=bool)].min() > 3


def test_unknown_crop_type():
    with pytest.raises(ValueError, match="neutrophil"):
        make_cell_crop("macrophage", seed=0)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools under NumPy 2
def test_write_detection_set(tmp_path):
    from pycocotools.coco import COCO

    coco = write_detection_set(tmp_path / "det", n_images=2, seed=5, height=128, width=160)
    assert [c["name"] for c in coco["categories"]] == list(SMEAR_CLASSES)
    assert [c["id"] for c in coco["categories"]] == [1, 2, 3]
    api = COCO()
    api.dataset = coco
    api.createIndex()
    for im in coco["images"]:
        assert read_image(im["path"]).shape == (128, 160, 3)
    anns = api.loadAnns(api.getAnnIds(imgIds=[1]))
    assert anns and all(a["iscrowd"] == 0 and a["area"] > 0 for a in anns)
    # same seed derivation as the writer: first image's smear
    from bloodlib.data.synthetic import _sub_seed
    sm = make_smear(_sub_seed(5, 0), 128, 160)
    decoded = np.stack([api.annToMask(a) for a in anns]).astype(bool)
    assert np.array_equal(decoded, sm.masks)
    assert [a["category_id"] for a in anns] == sm.category_ids
    np.testing.assert_allclose([a["bbox"] for a in anns],
                               np.c_[sm.boxes[:, :2], sm.boxes[:, 2:] - sm.boxes[:, :2]])
    # the file written to disk loads with COCO(path), and a second call reuses it
    COCO(str(tmp_path / "det" / "annotations.json"))
    mtime = (tmp_path / "det" / "images" / "smear_00000.png").stat().st_mtime_ns
    assert write_detection_set(tmp_path / "det", 2, 5, height=128, width=160) == coco
    assert (tmp_path / "det" / "images" / "smear_00000.png").stat().st_mtime_ns == mtime


def test_write_classification_set(tmp_path):
    recs = write_classification_set(tmp_path / "cls", n_per_class=2, seed=0, size=32,
                                    classes=("neutrophil", "platelet"))
    assert len(recs) == 4 and all(isinstance(r, LabelledImage) for r in recs)
    assert [r.label for r in recs] == ["neutrophil"] * 2 + ["platelet"] * 2
    for r in recs:
        assert r.path.parent.name == r.label and r.path.is_absolute()
        assert read_image(r.path).shape == (32, 32, 3)
    assert write_classification_set(tmp_path / "cls", 2, 0, 32, ("neutrophil", "platelet")) == recs


def test_write_segmentation_set(tmp_path):
    recs = write_segmentation_set(tmp_path / "seg", n_images=5, seed=0, size=48)
    assert all(isinstance(r, MaskedImage) for r in recs)
    assert [r.label for r in recs] == list(WBC_TYPES)
    for r in recs:
        assert r.meta == {"mask_format": "zheng"}
        m = read_mask(r.mask_path, expected_hw=(48, 48))
        assert set(np.unique(m)) == {0, 128, 255}
