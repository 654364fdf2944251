"""Auto-annotation by classical segmentation (bloodlib.autolabel)."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
from PIL import Image

from bloodlib import autolabel as al
from bloodlib.data.convert import rle_to_mask, validate_coco
from bloodlib.data.records import LabelledImage
from bloodlib.data.synthetic import (CROP_TYPES, SMEAR_CLASSES, make_cell_crop, make_smear,
                                     write_classification_set, write_detection_set)
from bloodlib.errors import AnnotationError, UnknownClassError
from bloodlib.transforms.preprocess import InvalidImageError


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


@pytest.fixture(scope="module")
def smears():
    return [make_smear(seed) for seed in range(3)]


# ---------------------------------------------------------------- inside a box
def test_mask_in_box_recovers_synthetic_instances(smears):
    ious: dict[str, list[float]] = {}
    for sm in smears:
        for mask, box, label in zip(sm.masks, sm.boxes, sm.labels):
            auto = al.mask_in_box(sm.image, box, label)
            assert auto.dtype == bool and auto.shape == mask.shape
            x0, y0, x1, y1 = box.astype(int)
            assert not auto[:y0].any() and not auto[y1:].any()  # never outside its box
            assert not auto[:, :x0].any() and not auto[:, x1:].any()
            ious.setdefault(label, []).append(_iou(auto, mask))
    means = {k: np.mean(v) for k, v in ious.items()}
    assert set(means) == set(SMEAR_CLASSES)
    assert means["WBC"] > 0.85 and means["RBC"] > 0.85 and means["Platelets"] > 0.6, means


@pytest.mark.parametrize("method,floor", [("grabcut", 0.85), ("watershed", 0.6), ("threshold", 0.2)])
def test_each_method_segments_a_wbc(smears, method, floor):
    sm = smears[0]
    i = sm.labels.index("WBC")
    r = al.segment_in_box(sm.image, sm.boxes[i], "WBC", method)
    assert r.method in (method, "ellipse")
    assert _iou(r.mask, sm.masks[i]) > floor
    x0, y0, x1, y1 = r.box
    assert r.mask[int(y0):int(y1), int(x0):int(x1)].sum() == r.mask.sum()


def test_blank_box_falls_back_to_the_ellipse():
    blank = np.full((60, 60, 3), 235, np.uint8)
    r = al.segment_in_box(blank, (10, 10, 50, 40), "WBC")
    assert r.method == "ellipse"
    assert 0.7 < r.mask.sum() / (40 * 30) < 0.85  # pi / 4 of the box


def test_bad_box_input_raises(smears):
    img = smears[0].image
    with pytest.raises(AnnotationError, match="degenerate"):
        al.mask_in_box(img, (10, 10, 10, 30))
    with pytest.raises(AnnotationError):
        al.mask_in_box(img, (1, 2, 3))
    with pytest.raises(UnknownClassError, match="known"):
        al.mask_in_box(img, (10, 10, 50, 50), "macrophage")
    with pytest.raises(ValueError, match="method"):
        al.mask_in_box(img, (10, 10, 50, 50), method="snake")
    with pytest.raises(InvalidImageError):
        al.mask_in_box(img.astype(np.float32), (10, 10, 50, 50))


# ---------------------------------------------------------------- single-cell images
@pytest.mark.parametrize("cell_type", CROP_TYPES)
def test_annotate_single_cell_finds_the_centred_cell(cell_type):
    ious = []
    for seed in range(2):
        image, sem = make_cell_crop(cell_type, seed, size=128)
        mask, box = al.annotate_single_cell(image, cell_type)
        ious.append(_iou(mask, sem > 0))
        ys, xs = np.nonzero(mask)
        assert box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    assert np.mean(ious) > (0.6 if cell_type == "platelet" else 0.8), ious


def test_single_cell_without_stain_raises():
    with pytest.raises(al.AutolabelError, match="blob"):
        al.annotate_single_cell(np.full((80, 80, 3), 240, np.uint8))


# ---------------------------------------------------------------- COCO builders
def test_autolabel_boxes_adds_valid_masks_and_keeps_boxes(tmp_path):
    truth = write_detection_set(tmp_path / "det", n_images=2, seed=3)
    boxes_only = copy.deepcopy(truth)
    for ann in boxes_only["annotations"]:
        del ann["segmentation"]
    out = al.autolabel_boxes(boxes_only)
    assert "segmentation" not in boxes_only["annotations"][0]  # input left alone
    report = validate_coco(out)
    assert report["annotations"] == len(truth["annotations"]) and not report["dropped"]
    ious = []
    for auto, real in zip(out["annotations"], truth["annotations"]):
        assert auto["bbox"] == real["bbox"] and auto["category_id"] == real["category_id"]
        assert auto["autolabel"]["method"] in ("grabcut", "threshold", "watershed", "ellipse")
        h, w = out["images"][0]["height"], out["images"][0]["width"]
        ious.append(_iou(rle_to_mask(auto["segmentation"], h, w) > 0,
                         rle_to_mask(real["segmentation"], h, w) > 0))
    assert np.mean(ious) > 0.8
    counts = out["info"]["autolabel"]["counts"]
    assert sum(counts.values()) == len(out["annotations"])


def test_autolabel_pbc_builds_instances_and_lists_failures(tmp_path):
    classes = ["lymphocyte", "neutrophil", "platelet"]
    records = write_classification_set(tmp_path / "pbc", n_per_class=2, seed=5, size=96,
                                       classes=classes)
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((96, 96, 3), 240, np.uint8)).save(blank)
    records = records + [LabelledImage(blank, "lymphocyte")]
    with pytest.warns(UserWarning, match="failed on 1 of 7"):
        coco = al.autolabel_pbc(records, classes)
    failed = coco["info"]["autolabel"]["failed"]
    assert [f["path"] for f in failed] == [str(blank)] and failed[0]["reason"]
    assert len(coco["images"]) == len(coco["annotations"]) == 6
    validate_coco(coco, clip=False)
    for im, ann in zip(coco["images"], coco["annotations"]):
        mask = rle_to_mask(ann["segmentation"], im["height"], im["width"])
        ys, xs = np.nonzero(mask)
        assert ann["bbox"] == [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()]
        assert ann["area"] == mask.sum() > 0
    assert [c["name"] for c in coco["categories"]] == classes


def test_autolabel_pbc_rejects_labels_outside_classes(tmp_path):
    records = write_classification_set(tmp_path / "pbc", n_per_class=1, seed=1, size=64,
                                       classes=["monocyte"])
    with pytest.raises(UnknownClassError):
        al.autolabel_pbc(records, ["lymphocyte"])


def test_autolabel_boxes_rejects_unknown_category(tmp_path):
    coco = write_detection_set(tmp_path / "det", n_images=1, seed=0)
    coco["categories"][0]["name"] = "macrophage"
    with pytest.raises(UnknownClassError):
        al.autolabel_boxes(coco)


# ---------------------------------------------------------------- quality on real masks
@pytest.mark.realdata
def test_autolabel_quality_on_bccd_wbc_masks(data_root):
    report = al.autolabel_quality("bccd_wbc", max_cells=6, root=data_root / "bccd_wbc_masks",
                                  bccd_root=data_root / "bccd")
    s = report.summary
    assert s.loc["WBC", "n"] == 6 and s.loc["all", "n"] == 6
    assert s.loc["WBC", "iou_mean"] > 0.8, s
    assert len(report.rows) == 6 and report.rows["iou"].between(0, 1).all()
    assert report.metrics()["iou_mean_WBC"] == pytest.approx(s.loc["WBC", "iou_mean"])
    fig = al.quality_figure(report, n=2)
    assert len(fig.axes) == 4
    import matplotlib.pyplot as plt
    plt.close(fig)


@pytest.mark.realdata
def test_autolabel_quality_single_cell_on_zheng(data_root):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = al.autolabel_quality("cellavision", mode="single_cell", max_cells=4,
                                      root=data_root / "wbc_seg_zheng")
    assert report.summary.loc["all", "n"] == 4
    assert report.summary.loc["all", "iou_mean"] > 0.7
    assert report.rows["baseline_iou"].isna().all()  # no box, no ellipse baseline


def test_autolabel_quality_rejects_bad_settings():
    with pytest.raises(ValueError, match="dataset"):
        al.autolabel_quality("lisc")
    with pytest.raises(ValueError, match="single_cell|box"):
        al.autolabel_quality("bccd_wbc", mode="single_cell")
    with pytest.raises(ValueError, match="box_source"):
        al.autolabel_quality("jiangxi", box_source="annotation")
