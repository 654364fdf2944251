"""Torch Datasets: shapes, dtypes, joint transforms, errors, and a detector forward pass."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from bloodlib.data.datasets import (ClassificationDataset, DetectionDataset, SegmentationDataset,
                                    collate_detection)
from bloodlib.data.records import LabelledImage
from bloodlib.data.synthetic import (write_classification_set, write_detection_set,
                                     write_segmentation_set)
from bloodlib.errors import AnnotationError, MaskError, UnknownClassError
from bloodlib.io import read_mask


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    return write_detection_set(tmp_path_factory.mktemp("det"), n_images=2, seed=1,
                               height=128, width=160)


def zheng(rec) -> np.ndarray:
    return np.searchsorted([0, 128, 255], read_mask(rec.mask_path))


def _assert_masks_in_boxes(target, tol=1):
    for m, (x1, y1, x2, y2) in zip(target["masks"], target["boxes"].tolist()):
        ys, xs = torch.nonzero(m, as_tuple=True)
        assert len(xs) > 0
        assert xs.min() >= x1 - tol and xs.max() + 1 <= x2 + tol
        assert ys.min() >= y1 - tol and ys.max() + 1 <= y2 + tol


def test_detection_item(coco):
    ds = DetectionDataset(coco, with_masks=True)
    assert len(ds) == 2
    image, t = ds[0]
    assert isinstance(image, tv_tensors.Image) and image.dtype == torch.float32
    assert image.shape == (3, 128, 160) and 0 <= image.min() and image.max() <= 1
    n = sum(a["image_id"] == 1 for a in coco["annotations"])
    assert isinstance(t["boxes"], tv_tensors.BoundingBoxes) and t["boxes"].shape == (n, 4)
    assert t["boxes"].format == tv_tensors.BoundingBoxFormat.XYXY
    assert tuple(t["boxes"].canvas_size) == (128, 160)
    assert t["labels"].dtype == torch.int64 and set(t["labels"].tolist()) <= {1, 2, 3}
    assert t["image_id"] == 1 and t["area"].shape == (n,) and t["iscrowd"].shape == (n,)
    assert isinstance(t["masks"], tv_tensors.Mask) and t["masks"].dtype == torch.uint8
    assert t["masks"].shape == (n, 128, 160)
    _assert_masks_in_boxes(t, tol=0)
    assert "masks" not in DetectionDataset(coco)[0][1]


@pytest.mark.parametrize("transform", [v2.RandomHorizontalFlip(p=1.0),
                                       v2.RandomRotation(degrees=(25, 25))])
def test_detection_transforms_keep_masks_aligned(coco, transform):
    plain = DetectionDataset(coco, with_masks=True)[0][1]
    image, t = DetectionDataset(coco, transforms=transform, with_masks=True)[0]
    assert image.shape == (3, 128, 160)
    _assert_masks_in_boxes(t, tol=1)
    assert len(t["labels"]) == len(t["boxes"]) == len(t["masks"]) == len(t["area"])
    if isinstance(transform, v2.RandomHorizontalFlip):
        assert torch.equal(t["masks"], plain["masks"].flip(-1))


def test_empty_annotation_image(coco):
    c = copy.deepcopy(coco)
    c["images"].append(dict(c["images"][0], id=99))
    image, t = DetectionDataset(c, with_masks=True)[2]
    assert t["boxes"].shape == (0, 4) and t["labels"].shape == (0,)
    assert t["masks"].shape == (0, 128, 160) and t["image_id"] == 99
    _, t = DetectionDataset(c, transforms=v2.RandomHorizontalFlip(p=1.0))[2]
    assert t["boxes"].shape == (0, 4)


def test_bad_annotations_rejected(coco):
    c = copy.deepcopy(coco)
    c["annotations"][0]["bbox"][2] = 0
    with pytest.raises(AnnotationError, match="bbox"):
        DetectionDataset(c)
    c = copy.deepcopy(coco)
    del c["annotations"][0]["segmentation"]
    DetectionDataset(c)  # fine without masks
    with pytest.raises(AnnotationError, match="with_masks"):
        DetectionDataset(c, with_masks=True)


def test_polygon_segmentation(coco):
    c = copy.deepcopy(coco)
    x, y, w, h = c["annotations"][0]["bbox"]
    c["annotations"][0]["segmentation"] = [[x, y, x + w, y, x + w, y + h, x, y + h]]
    m = DetectionDataset(c, with_masks=True)[0][1]["masks"][0]
    assert m.sum() >= (w - 1) * (h - 1)


def test_collate_trains_fasterrcnn(coco):
    from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_320_fpn

    torch.manual_seed(0)
    ds = DetectionDataset(coco, transforms=v2.RandomHorizontalFlip(p=0.5))
    images, targets = collate_detection([ds[0], ds[1]])
    assert len(images) == len(targets) == 2
    model = fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None,
                                                  num_classes=4)
    model.train()
    losses = model(images, targets)
    assert {"loss_classifier", "loss_box_reg"} <= losses.keys()
    assert all(torch.isfinite(v) for v in losses.values())


def test_segmentation_dataset(tmp_path):
    recs = write_segmentation_set(tmp_path, n_images=3, seed=0, size=48)
    ds = SegmentationDataset(recs, decode=zheng, size=32)
    image, mask = ds[0]
    assert type(image) is torch.Tensor and image.shape == (3, 32, 32)
    assert image.dtype == torch.float32 and mask.dtype == torch.int64 and mask.shape == (32, 32)
    assert set(mask.unique().tolist()) == {0, 1, 2}
    flip = SegmentationDataset(recs, decode=zheng, transforms=v2.RandomHorizontalFlip(p=1.0))
    assert torch.equal(flip[1][1], SegmentationDataset(recs, decode=zheng)[1][1].flip(-1))
    assert torch.equal(flip[1][0], SegmentationDataset(recs, decode=zheng)[1][0].flip(-1))
    bad = SegmentationDataset(recs, decode=lambda r: np.zeros((5, 5), np.int64))
    with pytest.raises(MaskError):
        bad[0]


def test_segmentation_default_decoder(tmp_path):
    pytest.importorskip("bloodlib.data.masks")
    recs = write_segmentation_set(tmp_path, n_images=1, seed=0, size=48)
    _, mask = SegmentationDataset(recs)[0]
    assert torch.equal(mask, torch.from_numpy(zheng(recs[0])))


def test_classification_dataset(tmp_path):
    classes = ["lymphocyte", "platelet"]
    recs = write_classification_set(tmp_path, n_per_class=2, seed=0, size=40, classes=classes)
    ds = ClassificationDataset(recs, classes, transforms=v2.RandomHorizontalFlip(), size=(24, 32))
    image, label = ds[3]
    assert type(image) is torch.Tensor and image.shape == (3, 24, 32) and label == 1
    assert ds.targets == [0, 0, 1, 1]
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch[0].shape == (4, 3, 24, 32) and batch[1].tolist() == [0, 0, 1, 1]


def test_unknown_class_label(tmp_path):
    recs = [LabelledImage(tmp_path / "x.png", "macrophage")]
    with pytest.raises(UnknownClassError, match="lymphocyte") as err:
        ClassificationDataset(recs, ["lymphocyte", "platelet"])
    assert "macrophage" in str(err.value) and isinstance(err.value, KeyError)
