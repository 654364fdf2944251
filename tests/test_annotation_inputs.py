"""Bad annotations end in the library's own errors (issue 24, items 1 and 14), and the
parsers and converters keep their promises on random input (property-based tests)."""

from __future__ import annotations

import json
import resource
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from bloodlib.data.convert import (check_polygons, coco_to_yolo, mask_to_polygons, mask_to_rle,
                                   polygons_to_mask, rle_to_mask, validate_coco, voc_to_coco,
                                   yolo_to_coco)
from bloodlib.data.datasets import decode_segmentation
from bloodlib.data.parsers import load_segpc
from bloodlib.errors import AnnotationError, BloodlibError

BAD_VALUES = [float("nan"), float("inf"), -float("inf"), 1e9, -1e9]


def _image(path: Path, w: int = 64, h: int = 48) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), 200, np.uint8)).save(path)
    return path


# ---------------------------------------------------------------- item 1: polygons
@pytest.mark.parametrize("bad", BAD_VALUES)
def test_polygon_with_bad_coordinate_is_an_annotation_error(bad):
    poly = [[1.0, 1.0, 10.0, 1.0, 10.0, bad, 1.0, 10.0]]
    with pytest.raises(AnnotationError, match="polygon 0"):
        polygons_to_mask(poly, 32, 32, where="x.json: image 7, annotation 3")
    with pytest.raises(AnnotationError, match="annotation 3"):
        decode_segmentation(poly, 32, 32, where="x.json: image 7, annotation 3")


def test_polygon_slightly_outside_the_image_is_kept():
    mask = polygons_to_mask([[-2, -2, 12, -2, 12, 12, -2, 12]], 10, 10)
    assert mask.sum() == 100


def test_odd_and_non_numeric_polygons():
    with pytest.raises(AnnotationError, match="x, y pairs"):
        check_polygons([[1, 2, 3, 4, 5]], 10, 10)
    with pytest.raises(AnnotationError, match="non-numeric"):
        check_polygons([["a", 2, 3, 4, 5, 6]], 10, 10)
    with pytest.raises(AnnotationError, match="list of polygons"):
        check_polygons(5, 10, 10)
    assert check_polygons([[1, 2, 3, 4]], 10, 10) == []  # under 3 points: left out


def _segpc(root: Path, bad: float) -> Path:
    _image(root / "MultipleMyeloma-ImageMask-Dataset_V2/train/images/1.jpg", 512, 512)
    anns = [{"id": 10, "image_id": 0, "category_id": 1, "bbox": [10, 10, 100, 100],
             "segmentation": [[10, 10, 110, 10, 110, 110, 10, 110]]},
            {"id": 11, "image_id": 0, "category_id": 1, "bbox": [10, 10, 100, 100],
             "segmentation": [[10, 10, bad, 10, 110, 110, 10, 110]]}]
    src = {"images": [{"id": 0, "file_name": "1.bmp", "width": 1024, "height": 1024}],
           "annotations": anns, "categories": [{"id": 1, "name": "cell"}]}
    (root / "annotations").mkdir(parents=True)
    (root / "annotations/train_cell_t1.json").write_text(json.dumps(src))
    return root


@pytest.mark.parametrize("bad", BAD_VALUES)
def test_load_segpc_drops_and_lists_a_bad_polygon(tmp_path, bad):
    """One NaN made a process take ~23 GB in pycocotools; now it is dropped and listed,
    and the good annotation of the same image stays."""
    root = _segpc(tmp_path / "segpc2021", bad)
    with pytest.warns(UserWarning, match="bad polygons"):
        coco = load_segpc("train", "cell", root)
    assert [a["segmentation"] for a in coco["annotations"]] == [[[5, 5, 55, 5, 55, 55, 5, 55]]]
    (problem,) = coco["info"]["invalid_annotations"]
    assert problem["annotation"] == 11 and problem["image"] == "1.jpg"
    assert "train_cell_t1.json" in problem["problem"] and "annotation 11" in problem["problem"]


# ---------------------------------------------------------------- item 14: YOLO, RLE
@pytest.mark.parametrize("line, what", [
    ("0 0.1 0.1 0.2 0.1 0.2 0.2", "polygon"),      # 7 columns: a segmentation label
    ("0 0.5 0.5 0.2 0.2 0.9", "6"),                # an extra column
    ("0 0.5 0.5 0.2", "4"),                        # a missing column
    ("0 nan 0.5 0.2 0.2", "non-finite"),
])
def test_yolo_line_with_wrong_columns_names_file_and_line(tmp_path, line, what):
    image = _image(tmp_path / "images/x.jpg")
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels/x.txt").write_text("0 0.5 0.5 0.2 0.2\n" + line + "\n")
    with pytest.raises(AnnotationError, match=what) as err:
        yolo_to_coco([image], tmp_path / "labels", ["a", "b"])
    assert "x.txt:2" in str(err.value)


def test_rle_segmentations_decode_or_fail_clearly():
    m = np.zeros((10, 12), np.uint8)
    m[2:5, 3:9] = 1
    rle = mask_to_rle(m)
    assert np.array_equal(polygons_to_mask(rle, 10, 12), m)
    assert np.array_equal(polygons_to_mask([rle], 10, 12), m)  # a list of RLEs
    uncompressed = {"size": [10, 12], "counts": [0, 120]}
    assert polygons_to_mask(uncompressed, 10, 12).sum() == 120  # 0 background, then 120 ones
    with pytest.raises(AnnotationError, match="12x10|size"):
        polygons_to_mask(rle, 20, 20)
    with pytest.raises(AnnotationError, match="counts"):
        polygons_to_mask({"size": [10, 12], "counts": [5, 5]}, 10, 12)
    with pytest.raises(AnnotationError):
        polygons_to_mask({"size": [10, 12]}, 10, 12)
    with pytest.raises(AnnotationError, match="RLE"):
        rle_to_mask({"size": [10, 12], "counts": 7}, 10, 12)


# ---------------------------------------------------------------- properties
coord = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=64),
                  st.floats(-50, 150), st.integers(-10**12, 10**12))
polygon = st.lists(coord, min_size=0, max_size=16)
PROPS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@PROPS
@given(polys=st.lists(polygon, max_size=4), h=st.integers(1, 64), w=st.integers(1, 64))
def test_polygons_to_mask_never_crashes_nor_blows_up(polys, h, w):
    before = _rss_mb()
    try:
        mask = polygons_to_mask(polys, h, w)
    except AnnotationError:
        return
    assert mask.shape == (h, w) and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
    assert _rss_mb() - before < 200  # bounded memory


@PROPS
@given(seg=st.one_of(st.none(), st.integers(), st.text(max_size=5),
                     st.dictionaries(st.sampled_from(["size", "counts", "x"]),
                                     st.one_of(st.integers(), st.text(max_size=8),
                                               st.lists(st.integers(-5, 200), max_size=4)),
                                     max_size=3),
                     st.lists(st.one_of(st.integers(), st.text(max_size=3)), max_size=4)))
def test_segmentation_of_any_shape_gives_a_mask_or_our_error(seg):
    try:
        mask = decode_segmentation(seg, 10, 12)
    except BloodlibError:
        return
    assert mask.shape == (10, 12)


@PROPS
@given(data=st.data(), h=st.integers(4, 40), w=st.integers(4, 40))
def test_mask_polygon_round_trip_keeps_the_pixels(data, h, w):
    """A filled rectangle survives mask -> polygons -> mask and mask -> RLE -> mask."""
    y0 = data.draw(st.integers(0, h - 2))
    x0 = data.draw(st.integers(0, w - 2))
    y1 = data.draw(st.integers(y0 + 1, h))
    x1 = data.draw(st.integers(x0 + 1, w))
    mask = np.zeros((h, w), np.uint8)
    mask[y0:y1, x0:x1] = 1
    assert np.array_equal(polygons_to_mask(mask_to_polygons(mask), h, w), mask)
    assert np.array_equal(rle_to_mask(mask_to_rle(mask)), mask)


box = st.tuples(st.floats(0, 50), st.floats(0, 40), st.floats(1, 14), st.floats(1, 8))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(boxes=st.lists(st.tuples(st.integers(0, 1), box), max_size=6))
def test_voc_yolo_coco_round_trip_keeps_boxes(tmp_path_factory, boxes):
    """COCO -> YOLO files -> COCO and VOC XML -> COCO give back the same boxes."""
    root = tmp_path_factory.mktemp("rt")
    _image(root / "img/x.png")
    objects = "".join(
        f"<object><name>{'ab'[c]}</name><bndbox><xmin>{x}</xmin><ymin>{y}</ymin>"
        f"<xmax>{x + w}</xmax><ymax>{y + h}</ymax></bndbox></object>" for c, (x, y, w, h) in boxes)
    (root / "x.xml").write_text(f"<annotation><filename>x.png</filename>{objects}</annotation>")
    coco = voc_to_coco([root / "x.xml"], root / "img", ["a", "b"])
    got = [v for a in coco["annotations"] for v in a["bbox"]]
    assert got == pytest.approx([v for _, b in boxes for v in b], abs=1e-6)
    validate_coco(coco)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        coco_to_yolo(coco, root / "yolo", "train", copy=True)
    back = yolo_to_coco([root / "yolo/images/train/x.png"], root / "yolo/labels/train", ["a", "b"])
    assert [a["category_id"] for a in back["annotations"]] == [a["category_id"] for a in coco["annotations"]]
    for a, b in zip(coco["annotations"], back["annotations"]):
        assert b["bbox"] == pytest.approx(a["bbox"], abs=1e-4)


@PROPS
@given(lines=st.lists(st.lists(st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                                         st.integers(-3, 5), st.text(max_size=3)),
                               max_size=8), max_size=5))
def test_yolo_parser_gives_boxes_or_our_error(tmp_path_factory, lines):
    root = tmp_path_factory.mktemp("yl")
    image = _image(root / "images/x.png")
    (root / "labels").mkdir()
    (root / "labels/x.txt").write_text("\n".join(" ".join(map(str, ln)) for ln in lines))
    try:
        coco = yolo_to_coco([image], root / "labels", ["a", "b"])
    except BloodlibError:
        return
    assert all(len(a["bbox"]) == 4 and np.all(np.isfinite(a["bbox"])) for a in coco["annotations"])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(values=st.lists(st.lists(st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                                          st.integers(-100, 200), st.sampled_from(["", "x", "1e9"])),
                                min_size=4, max_size=4), max_size=5),
       names=st.lists(st.sampled_from(["a", "B", " b ", "c", ""]), min_size=5, max_size=5))
def test_voc_parser_and_validation_keep_only_sane_boxes(tmp_path_factory, values, names):
    """Random VOC boxes (NaN, inf, text, outside the image, inverted): the parser and
    validate_coco end in our errors or keep only finite boxes inside the 64x48 image."""
    root = tmp_path_factory.mktemp("voc")
    _image(root / "img/x.png")
    objects = "".join(
        f"<object><name>{n}</name><bndbox><xmin>{v[0]}</xmin><ymin>{v[1]}</ymin>"
        f"<xmax>{v[2]}</xmax><ymax>{v[3]}</ymax></bndbox></object>" for n, v in zip(names, values))
    (root / "x.xml").write_text(f"<annotation><filename>x.png</filename>{objects}</annotation>")
    try:
        coco = voc_to_coco([root / "x.xml"], root / "img", ["a", "b"])
        report = validate_coco(coco, clip=True, drop_invalid=True)
    except BloodlibError:
        return
    assert report["annotations"] == len(coco["annotations"])
    for a in coco["annotations"]:
        x, y, w, h = a["bbox"]
        assert np.all(np.isfinite(a["bbox"])) and w > 0 and h > 0
        assert 0 <= x and 0 <= y and x + w <= 64 + 1e-6 and y + h <= 48 + 1e-6
