import math

import numpy as np
import pytest
import torch

from bloodlib.errors import MaskError
from bloodlib.metrics.segmentation import (SegmentationMeter, boundary_band_errors, mask_iou,
                                          matched_instance_iou)

TARGET = np.array([[0, 0, 1, 1],
                   [0, 0, 1, 1],
                   [0, 2, 2, 1],
                   [0, 2, 2, 0]])
PRED = np.array([[0, 0, 1, 1],
                 [0, 1, 1, 1],
                 [0, 2, 1, 1],
                 [0, 0, 2, 0]])
NAMES = ["background", "cytoplasm", "nucleus"]


def test_4x4_by_hand():
    m = SegmentationMeter(3, NAMES)
    m.update(PRED, TARGET)
    np.testing.assert_array_equal(m.confusion, [[6, 1, 0], [0, 5, 0], [1, 1, 2]])
    r = m.compute()
    # per class: |true|, |pred|, TP = (7, 7, 6), (5, 7, 5), (4, 2, 2)
    assert [r[f"IoU/{n}"] for n in NAMES] == pytest.approx([6 / 8, 5 / 7, 2 / 4])
    assert [r[f"Dice/{n}"] for n in NAMES] == pytest.approx([12 / 14, 10 / 12, 4 / 6])
    assert [r[f"precision/{n}"] for n in NAMES] == pytest.approx([6 / 7, 5 / 7, 2 / 2])
    assert [r[f"recall/{n}"] for n in NAMES] == pytest.approx([6 / 7, 5 / 5, 2 / 4])
    assert r["mIoU"] == pytest.approx((6 / 8 + 5 / 7 + 2 / 4) / 3)
    assert r["mIoU_fg"] == pytest.approx((5 / 7 + 2 / 4) / 2)
    assert r["mDice_fg"] == pytest.approx((10 / 12 + 4 / 6) / 2)
    assert r["pixel_accuracy"] == pytest.approx(13 / 16)
    # foreground calls wrong at (1,1) (bg -> fg) and (3,1) (fg -> bg): sqrt(2/16)
    assert r["rmse"] == pytest.approx(math.sqrt(2 / 16))


def test_binary_foreground_and_ignore():
    m = SegmentationMeter(3, binary_foreground=[2])  # nucleus vs rest
    m.update(torch.from_numpy(PRED), torch.from_numpy(TARGET))
    np.testing.assert_array_equal(m.confusion, [[12, 0], [2, 2]])
    r = m.compute()
    assert r["IoU/foreground"] == pytest.approx(0.5) and r["mIoU_fg"] == pytest.approx(0.5)
    assert r["rmse"] == pytest.approx(math.sqrt(2 / 16))

    target = TARGET.copy()
    target[0] = 255
    m = SegmentationMeter(3, ignore_index=255)
    m.update(PRED, target)
    assert m.confusion.sum() == 12


def test_absent_class_is_nan_and_skipped():
    m = SegmentationMeter(3)
    m.update(np.zeros((2, 2), int), np.array([[0, 1], [0, 1]]))
    r = m.compute()
    assert math.isnan(r["IoU/2"]) and r["IoU/1"] == 0 and r["mIoU"] == pytest.approx(0.25)


def test_accumulation_equals_one_update():
    rng = np.random.default_rng(0)
    p, t = rng.integers(0, 3, (2, 8, 8)), rng.integers(0, 3, (2, 8, 8))
    a, b = SegmentationMeter(3), SegmentationMeter(3)
    a.update(p[0], t[0])
    a.update(p[1], t[1])
    b.update(p, t)
    np.testing.assert_array_equal(a.confusion, b.confusion)
    assert a.compute() == b.compute()
    a.reset()
    assert a.confusion.sum() == 0


def test_bad_shapes_and_values():
    m = SegmentationMeter(3)
    with pytest.raises(ValueError, match=r"\(3, 4, 4\).*\(4, 4\)"):
        m.update(np.zeros((3, 4, 4)), np.zeros((4, 4)))
    with pytest.raises(MaskError, match="0..2"):
        m.update(np.full((2, 2), 3), np.zeros((2, 2)))


def _block(y0, y1, x0, x1, size=10):
    m = np.zeros((size, size), np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def test_mask_iou_and_matched_instances_by_hand():
    a, b = _block(0, 4, 0, 4), _block(5, 9, 5, 9)
    p0, p1, p2 = _block(0, 4, 0, 2), b.copy(), _block(0, 2, 6, 9)
    assert mask_iou(a, p0) == pytest.approx(8 / 16)
    assert math.isnan(mask_iou(np.zeros((3, 3)), np.zeros((3, 3))))
    with pytest.raises(MaskError):
        mask_iou(a, np.zeros((3, 3)))

    r = matched_instance_iou(np.stack([p2, p1, p0]), [a, b])
    assert r["mean_iou"] == pytest.approx((1 + 0.5) / 2)
    assert (r["matched"], r["unmatched_pred"], r["unmatched_gt"]) == (2, 1, 0)
    assert sorted(r["pairs"]) == [(1, 1, 1.0), (2, 0, 0.5)]
    r = matched_instance_iou(torch.from_numpy(np.stack([p2, p1, p0])), [a, b], iou_threshold=0.6)
    assert r["mean_iou"] == 1 and (r["matched"], r["unmatched_gt"]) == (1, 1)
    r = matched_instance_iou([], [a])
    assert math.isnan(r["mean_iou"]) and r["unmatched_gt"] == 1


def _disc(shape=(40, 40), centre=(20, 20), radius=10):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius ** 2


def test_boundary_band_errors_a_one_pixel_shift_is_all_on_the_boundary():
    gt = _disc()
    shifted = _disc(centre=(20, 21))
    r = boundary_band_errors([shifted], [gt], bands=(1, 2))
    errors = int((gt ^ shifted).sum())
    assert r["error_pixels"] == errors > 0
    assert r["within_1px"] == pytest.approx(1.0)
    assert r["dice_outside_1px"] == pytest.approx(1.0)
    assert r["dice"] == pytest.approx(2 * (gt & shifted).sum() / (gt.sum() + shifted.sum()))


def test_boundary_band_errors_a_distant_blob_is_not_on_the_boundary():
    gt = _disc()
    pred = gt.copy()
    pred[2:5, 2:5] = True                               # 9 false positives far from the disc
    pred[20, 10] = False                                # 1 false negative on the boundary
    r = boundary_band_errors(torch.from_numpy(pred)[None], torch.from_numpy(gt)[None], bands=(1,))
    assert r["error_pixels"] == 10
    assert r["within_1px"] == pytest.approx(0.1)
    assert r["dice_outside_1px"] < 1.0


def test_boundary_band_errors_empty_truth_and_bad_shapes():
    empty = np.zeros((1, 8, 8), bool)
    pred = empty.copy()
    pred[0, 3, 3] = True
    r = boundary_band_errors(pred, empty)
    assert r["dice"] == 0.0 and r["within_1px"] == 0.0       # no boundary: nothing is near it
    assert math.isnan(boundary_band_errors(empty, empty)["within_1px"])  # no errors at all
    with pytest.raises(MaskError, match="same size"):
        boundary_band_errors(np.zeros((1, 8, 8)), np.zeros((1, 8, 9)))
