"""Format conversion and COCO validation on tiny generated fixtures."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from PIL import Image

from bloodlib.data.convert import (coco_to_yolo, drop_duplicate_boxes, mask_to_polygons, mask_to_rle,
                                   polygons_to_mask, rle_to_mask, validate_coco, voc_to_coco, yolo_to_coco)
from bloodlib.data.records import new_coco
from bloodlib.errors import AnnotationError, UnknownClassError

CLASSES = ["WBC", "RBC", "Platelets"]


def write_image(path: Path, w: int = 64, h: int = 48, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def write_voc(path: Path, filename: str, objects, size=(64, 48)) -> Path:
    objs = "".join(f"<object><name>{n}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
                   f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>" for n, b in objects)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"<annotation><filename>{filename}</filename><size><width>{size[0]}</width>"
                    f"<height>{size[1]}</height><depth>3</depth></size>{objs}</annotation>")
    return path


def one_image_coco(boxes, w=64, h=48, cat=1) -> dict:
    coco = new_coco(CLASSES)
    coco["images"].append({"id": 1, "file_name": "a.png", "width": w, "height": h, "path": "/x/a.png"})
    coco["annotations"] = [{"id": i + 1, "image_id": 1, "category_id": cat, "bbox": list(b)}
                           for i, b in enumerate(boxes)]
    return coco


# ---------------------------------------------------------------- VOC
def test_voc_to_coco_boxes_and_paths(tmp_path):
    img = write_image(tmp_path / "img" / "a.jpg")
    xml = write_voc(tmp_path / "ann" / "a.xml", "a.jpg", [("WBC", (10, 5, 30, 25)), (" rbc ", (0, 0, 64, 48))])
    coco = voc_to_coco([xml], tmp_path / "img", CLASSES, dataset="t", split="train")
    assert coco["images"] == [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 48, "path": str(img.resolve())}]
    assert [a["bbox"] for a in coco["annotations"]] == [[10, 5, 20, 20], [0, 0, 64, 48]]
    assert [a["category_id"] for a in coco["annotations"]] == [1, 2]
    assert coco["info"] == {"dataset": "t", "split": "train"}
    assert validate_coco(coco)["clipped"] == 0


def test_voc_unknown_class_lists_known(tmp_path):
    write_image(tmp_path / "a.jpg")
    xml = write_voc(tmp_path / "a.xml", "a.jpg", [("Neutrophil", (1, 1, 5, 5))])
    with pytest.raises(UnknownClassError, match="known classes.*WBC"):
        voc_to_coco([xml], tmp_path, CLASSES)


def test_voc_missing_annotation_and_image(tmp_path):
    with pytest.raises(AnnotationError, match="not found"):
        voc_to_coco([tmp_path / "nope.xml"], tmp_path, CLASSES)
    xml = write_voc(tmp_path / "b.xml", "b.jpg", [("WBC", (1, 1, 5, 5))])
    with pytest.raises(AnnotationError, match="No image"):
        voc_to_coco([xml], tmp_path, CLASSES)


def test_voc_size_mismatch(tmp_path):
    write_image(tmp_path / "a.jpg", 64, 48)
    xml = write_voc(tmp_path / "a.xml", "a.jpg", [], size=(640, 480))
    with pytest.raises(AnnotationError, match="640x480"):
        voc_to_coco([xml], tmp_path, CLASSES)


# ---------------------------------------------------------------- validation
def test_validate_clips_partial_box():
    coco = one_image_coco([(-5, 10, 20, 10), (50, 40, 30, 30)])
    report = validate_coco(coco, clip=True)
    assert report["clipped"] == 2
    assert coco["annotations"][0]["bbox"] == [0, 10, 15, 10]
    assert coco["annotations"][1]["bbox"] == [50, 40, 14, 8]
    with pytest.raises(AnnotationError, match="outside"):
        validate_coco(one_image_coco([(-5, 10, 20, 10)]), clip=False)


@pytest.mark.parametrize("box", [(70, 10, 5, 5), (-10, -10, 10, 10), (5, 5, 0, 4), (5, 5, 4, -1)])
def test_validate_rejects_outside_or_degenerate(box):
    with pytest.raises(AnnotationError):
        validate_coco(one_image_coco([box]))
    coco = one_image_coco([box, (1, 1, 2, 2)])
    report = validate_coco(coco, drop_invalid=True)
    assert len(report["dropped"]) == 1 and len(coco["annotations"]) == 1


def test_validate_unknown_category_and_image():
    with pytest.raises(UnknownClassError, match="known classes"):
        validate_coco(one_image_coco([(1, 1, 2, 2)], cat=9))
    coco = one_image_coco([(1, 1, 2, 2)])
    coco["annotations"][0]["image_id"] = 7
    with pytest.raises(AnnotationError, match="unknown image"):
        validate_coco(coco)


def test_drop_duplicate_boxes():
    coco = one_image_coco([(10, 10, 20, 20), (12, 12, 20, 20), (30, 10, 20, 20)])
    assert len(drop_duplicate_boxes(coco, tol=2)) == 1
    assert [a["bbox"][0] for a in coco["annotations"]] == [10, 30]


# ---------------------------------------------------------------- YOLO
def make_yolo(tmp_path: Path):
    lines = {"a": "0 0.5 0.5 0.25 0.5\n1 0.123456 0.654321 0.1 0.2\n", "b": "2 0.9 0.1 0.2 0.2\n"}
    images = []
    for i, (stem, txt) in enumerate(lines.items()):
        images.append(write_image(tmp_path / "images" / f"{stem}.png", 80 + 10 * i, 60, seed=i))
        (tmp_path / "labels").mkdir(exist_ok=True)
        (tmp_path / "labels" / f"{stem}.txt").write_text(txt)
    return images, lines


def parse_yolo(text: str) -> np.ndarray:
    return np.array([[float(v) for v in line.split()] for line in text.splitlines() if line.strip()])


def test_yolo_coco_yolo_round_trip(tmp_path):
    images, lines = make_yolo(tmp_path / "src")
    coco = yolo_to_coco(images, tmp_path / "src" / "labels", CLASSES)
    assert coco["annotations"][0]["bbox"] == pytest.approx([30, 15, 20, 30])
    data_yaml = coco_to_yolo(coco, tmp_path / "out", "train")
    for stem, txt in lines.items():
        back = (tmp_path / "out" / "labels" / "train" / f"{stem}.txt").read_text()
        np.testing.assert_allclose(parse_yolo(back), parse_yolo(txt), atol=1e-6)
        assert (tmp_path / "out" / "images" / "train" / f"{stem}.png").resolve() == images[list(lines).index(stem)].resolve()
    coco_to_yolo(coco, tmp_path / "out", "val", copy=True)
    cfg = yaml.safe_load(data_yaml.read_text())
    assert cfg["train"] == "images/train" and cfg["val"] == "images/val"
    assert cfg["names"] == {0: "WBC", 1: "RBC", 2: "Platelets"} and cfg["nc"] == 3
    assert not (tmp_path / "out" / "images" / "val" / "a.png").is_symlink()


def test_yolo_bad_inputs(tmp_path):
    images, _ = make_yolo(tmp_path)
    (tmp_path / "labels" / "b.txt").unlink()
    with pytest.raises(AnnotationError, match="Label file not found"):
        yolo_to_coco(images, tmp_path / "labels", CLASSES)
    coco = yolo_to_coco(images, tmp_path / "labels", CLASSES, missing_ok=True)
    assert len(coco["images"]) == 2 and len(coco["annotations"]) == 2
    (tmp_path / "labels" / "b.txt").write_text("5 0.5 0.5 0.1 0.1\n")
    with pytest.raises(UnknownClassError, match="Platelets"):
        yolo_to_coco(images, tmp_path / "labels", CLASSES)
    (tmp_path / "labels" / "b.txt").write_text("1 0.5 0.5\n")
    with pytest.raises(AnnotationError, match="expected"):
        yolo_to_coco(images, tmp_path / "labels", CLASSES)


# ---------------------------------------------------------------- masks
def iou(a, b) -> float:
    a, b = a > 0, b > 0
    return (a & b).sum() / (a | b).sum()


@pytest.mark.parametrize("shape", ["disk", "concave", "two"])
def test_polygon_mask_polygon_round_trip(shape):
    m = np.zeros((100, 120), np.uint8)
    if shape == "disk":
        cv2.circle(m, (60, 50), 20, 1, -1)
    elif shape == "concave":
        cv2.fillPoly(m, [np.array([[10, 10], [90, 10], [90, 90], [50, 40], [10, 90]])], 1)
    else:
        m[10:30, 10:40] = 1
        cv2.circle(m, (90, 70), 15, 1, -1)
    polys = mask_to_polygons(m)
    assert len(polys) == (2 if shape == "two" else 1)
    back = polygons_to_mask(polys, 100, 120)
    assert back.shape == m.shape and iou(back, m) > 0.99
    again = polygons_to_mask(mask_to_polygons(back), 100, 120)
    assert iou(again, m) > 0.95


def test_polygon_to_mask_square():
    m = polygons_to_mask([[10, 10, 30, 10, 30, 20, 10, 20]], 40, 40)
    assert m.dtype == np.uint8 and abs(int(m.sum()) - 200) <= 30
    assert polygons_to_mask([], 5, 6).shape == (5, 6)


def test_rle_round_trip():
    m = np.zeros((33, 47), np.uint8)
    m[3:20, 5:40] = 1
    rle = mask_to_rle(m)
    assert isinstance(rle["counts"], str) and rle["size"] == [33, 47]
    np.testing.assert_array_equal(rle_to_mask(rle), m)
    np.testing.assert_array_equal(polygons_to_mask(rle, 33, 47), m)
    uncompressed = {"size": [2, 3], "counts": [1, 2, 3]}
    assert rle_to_mask(uncompressed).sum() == 2
