"""Dataset parsers and mask decoders on tiny generated fixtures; real-data counts
(``-m realdata``) when ``BLOODLIB_DATA`` holds the datasets."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bloodlib.data.masks import (cell_mask, decode_bccd_wbc, decode_zheng, is_empty, nucleus_mask,
                                 read_label_mask)
from bloodlib.data.parsers import (PBC_CLASSES, load_bccd, load_bccd_wbc_masks, load_pbc, load_segpc,
                                   load_txl_pbc, load_zheng)
from bloodlib.data.records import MaskedImage
from bloodlib.data.stats import mask_stats
from bloodlib.errors import AnnotationError, DatasetNotFoundError, MaskError, UnknownClassError


def img(path: Path, w: int = 64, h: int = 48, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def gray(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.astype(np.uint8)).save(path)
    return path


def zheng_mask(h=30, w=30) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    m[5:25, 5:25] = 128
    m[10:20, 10:20] = 255
    return m


# ---------------------------------------------------------------- BCCD
def make_bccd(root: Path) -> Path:
    base = root / "BCCD"
    objs = {0: [("WBC", (10, 10, 30, 30)), ("RBC", (0, 0, 20, 20)), ("RBC", (2, 2, 22, 22))],
            1: [("Platelets", (40, 30, 50, 40)), ("RBC", (5, 5, 5, 5))],
            2: [("RBC", (30, 20, 64, 48))]}
    for i, ob in objs.items():
        img(base / "JPEGImages" / f"BloodImage_{i:05d}.jpg", seed=i)
        xml = "".join(f"<object><name>{n}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}"
                      f"</xmax><ymax>{b[3]}</ymax></bndbox></object>" for n, b in ob)
        (base / "Annotations").mkdir(parents=True, exist_ok=True)
        (base / "Annotations" / f"BloodImage_{i:05d}.xml").write_text(
            f"<annotation><filename>BloodImage_{i:05d}.jpg</filename>{xml}</annotation>")
    sets = base / "ImageSets" / "Main"
    sets.mkdir(parents=True)
    for name, ids in {"train": [0, 1], "test": [2], "val": [], "trainval": [0, 1]}.items():
        (sets / f"{name}.txt").write_text("".join(f"BloodImage_{i:05d}\n" for i in ids))
    return root


def test_load_bccd_quirks(tmp_path):
    root = make_bccd(tmp_path / "bccd")
    coco = load_bccd("train", root)
    assert [im["file_name"] for im in coco["images"]] == ["BloodImage_00000.jpg", "BloodImage_00001.jpg"]
    assert all(Path(im["path"]).is_absolute() for im in coco["images"])
    assert coco["info"]["validation"]["dropped"][0]["problem"].startswith("degenerate")
    assert coco["info"]["dropped_duplicates"] == 1  # the (+2, +2) copy
    assert len(coco["annotations"]) == 3
    assert len(load_bccd("all", root)["images"]) == 3
    assert len(load_bccd("test", root / "BCCD")["images"]) == 1  # inner folder accepted
    with pytest.raises(AnnotationError, match="No annotations"):
        load_bccd("val", root)
    with pytest.raises(ValueError):
        load_bccd("dev", root)


def test_bccd_missing_annotation_and_image(tmp_path):
    root = make_bccd(tmp_path / "bccd")
    (root / "BCCD" / "Annotations" / "BloodImage_00002.xml").unlink()
    with pytest.raises(AnnotationError, match="not found"):
        load_bccd("test", root)
    (root / "BCCD" / "JPEGImages" / "BloodImage_00001.jpg").unlink()
    with pytest.raises(AnnotationError, match="No image"):
        load_bccd("train", root)
    with pytest.raises(DatasetNotFoundError):
        load_bccd("train", tmp_path / "nowhere")


def test_root_none_uses_catalogue(tmp_path, monkeypatch):
    root = make_bccd(tmp_path / "bccd")
    fake = types.ModuleType("bloodlib.data.catalogue")
    fake.dataset_path = lambda name, root=None: tmp_path / name
    monkeypatch.setitem(sys.modules, "bloodlib.data.catalogue", fake)
    assert len(load_bccd("train")["images"]) == 2


# ---------------------------------------------------------------- TXL-PBC
def test_load_txl_pbc(tmp_path):
    base = tmp_path / "txl_pbc" / "TXL_PBC"
    base.mkdir(parents=True)
    (base / "data.yaml").write_text("train: ./images/train/\nnc: 3\nnames: ['WBC', 'RBC','Platelets']\n")
    img(base / "images" / "train" / "x.jpg", 100, 50)
    (base / "labels" / "train").mkdir(parents=True)
    (base / "labels" / "train" / "classes.txt").write_text("WBC\nRBC\nPC\n")
    (base / "labels" / "train" / "x.txt").write_text("0 0.5 0.5 0.2 0.2\n0 0.5 0.5 0.2 0.2\n2 0.95 0.5 0.2 0.2\n")
    coco = load_txl_pbc("train", tmp_path / "txl_pbc")
    assert [c["name"] for c in coco["categories"]] == ["WBC", "RBC", "Platelets"]
    assert coco["info"]["dropped_duplicates"] == 1 and coco["info"]["validation"]["clipped"] == 1
    assert coco["annotations"][1]["bbox"] == pytest.approx([85, 20, 15, 10])
    with pytest.raises(DatasetNotFoundError, match="test split"):
        load_txl_pbc("test", tmp_path / "txl_pbc")


# ---------------------------------------------------------------- PBC
def test_load_pbc_subset_and_errors(tmp_path):
    base = tmp_path / "pbc" / "PBC_dataset_normal_DIB"
    for c, n in [("basophil", 3), ("Platelet", 5)]:
        for i in range(n):
            img(base / c / f"{c[:2]}_{i}.jpg", 8, 8, seed=i)
    (base / "basophil" / "notes.txt").write_text("x")
    recs = load_pbc(tmp_path / "pbc")
    assert [r.label for r in recs] == ["basophil"] * 3 + ["platelet"] * 5
    assert len(load_pbc(tmp_path / "pbc", max_per_class=2)) == 4
    assert load_pbc(tmp_path / "pbc", max_per_class=2, seed=1) == load_pbc(tmp_path / "pbc", max_per_class=2, seed=1)
    assert {r.label for r in load_pbc(tmp_path / "pbc", classes=["platelet"])} == {"platelet"}
    with pytest.raises(UnknownClassError, match="known classes"):
        load_pbc(tmp_path / "pbc", classes=["blast"])
    with pytest.raises(DatasetNotFoundError, match="monocyte"):
        load_pbc(tmp_path / "pbc", classes=["monocyte"])
    (base / "monocyte").mkdir()
    with pytest.raises(DatasetNotFoundError, match="no images"):
        load_pbc(tmp_path / "pbc")
    (base / "monocyte").rmdir()
    (base / "blasts").mkdir()
    with pytest.raises(UnknownClassError, match="not a PBC class"):
        load_pbc(tmp_path / "pbc")


# ---------------------------------------------------------------- Zheng
def make_zheng(root: Path, n: int = 3) -> Path:
    folder = root / "Dataset 2"
    for i in range(1, n + 1):
        img(folder / f"{i:03d}.bmp", 30, 30, seed=i)
        gray(folder / f"{i:03d}.png", zheng_mask())
    (root / "Class Labels of Dataset 2.csv").write_text(
        "image ID,class\r\n" + "".join(f"{i},{i % 5 + 1}\r\n" for i in range(1, n + 1)))
    return root


def test_load_zheng_and_masks(tmp_path):
    root = make_zheng(tmp_path / "wbc_seg_zheng")
    recs = load_zheng("cellavision", root)
    assert [r.label for r in recs] == ["lymphocyte", "monocyte", "eosinophil"]
    assert recs[0].meta["mask_format"] == "zheng" and recs[0].image_path.is_absolute()
    labels = read_label_mask(recs[0])
    assert set(np.unique(labels)) == {0, 1, 2}
    assert nucleus_mask(labels).sum() == 100 and cell_mask(labels).sum() == 400
    stats = mask_stats(recs)
    assert stats["frac_nucleus"].iloc[0] == pytest.approx(100 / 900, abs=1e-3) and not stats["is_empty"].any()
    with pytest.raises(DatasetNotFoundError):
        load_zheng("jiangxi", root)


def test_zheng_label_image_mismatch(tmp_path):
    root = make_zheng(tmp_path / "z")
    img(root / "Dataset 2" / "004.bmp", 30, 30)
    with pytest.raises(AnnotationError, match="without a class label"):
        load_zheng("cellavision", root)
    (root / "Dataset 2" / "004.bmp").unlink()
    (root / "Dataset 2" / "003.bmp").unlink()
    with pytest.raises(AnnotationError, match="without an image"):
        load_zheng("cellavision", root)


def test_mask_errors(tmp_path):
    image = img(tmp_path / "a.bmp", 30, 30)
    small = gray(tmp_path / "small.png", zheng_mask(20, 30))
    with pytest.raises(MaskError, match="30x20"):
        read_label_mask(MaskedImage(image, small, None, {"mask_format": "zheng"}))
    empty = gray(tmp_path / "empty.png", np.zeros((30, 30)))
    rec = MaskedImage(image, empty, None, {"mask_format": "zheng"})
    with pytest.raises(MaskError, match="all background"):
        read_label_mask(rec)
    assert is_empty(read_label_mask(rec, allow_empty=True))
    with pytest.raises(MaskError, match="100"):
        decode_zheng(np.array([[0, 100, 255]]))
    noisy = np.full((20, 20), 128)
    noisy[0, :3] = [3, 130, 250]
    assert decode_zheng(noisy)[0, :4].tolist() == [0, 1, 2, 1]
    with pytest.raises(MaskError, match="mask_format"):
        read_label_mask(MaskedImage(image, empty, None, {"mask_format": "lisc"}))


def test_bccd_wbc_decoder_and_pairing(tmp_path):
    np.testing.assert_array_equal(decode_bccd_wbc(np.array([0, 40, 77, 78, 158, 162, 207, 208, 255])),
                                  [0, 0, 0, 1, 1, 1, 1, 2, 2])
    bccd = make_bccd(tmp_path / "bccd")
    m = np.zeros((48, 64, 3), np.uint8)
    m[10:30, 10:30] = 160
    m[15:25, 15:25] = 255
    for i in (0, 1, 7):
        gray(tmp_path / "wm" / "masks" / f"BloodImage_Mask_{i:05d}.png", m)
    with pytest.warns(UserWarning, match="00007"):
        recs = load_bccd_wbc_masks(tmp_path / "wm", bccd)
    assert len(recs) == 2 and recs[0].image_path.name == "BloodImage_00000.jpg"
    assert (read_label_mask(recs[0]) == 2).sum() == 100
    with pytest.raises(AnnotationError, match="no image"):
        load_bccd_wbc_masks(tmp_path / "wm", bccd, on_missing="raise")


# ---------------------------------------------------------------- SegPC
def test_load_segpc_letterboxes(tmp_path):
    """A 2048x1024 original becomes a 512x256 band centred on the 512x512 canvas."""
    root = tmp_path / "segpc2021"
    img(root / "MultipleMyeloma-ImageMask-Dataset_V2" / "train" / "images" / "106.jpg", 512, 512)
    src = {"images": [{"id": 0, "file_name": "106.bmp", "width": 2048, "height": 1024},
                      {"id": 1, "file_name": "999.bmp", "width": 2048, "height": 1024}],
           "annotations": [{"id": 0, "image_id": 0, "category_id": 1, "bbox": [400, 200, 400, 200],
                            "segmentation": [[400, 200, 800, 200, 800, 400, 400, 400]]},
                           {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1],
                            "segmentation": [[0, 0, 1, 0, 1, 1]]}],
           "categories": [{"id": 1, "name": "cell"}]}
    (root / "annotations").mkdir()
    (root / "annotations" / "train_nu_t1.json").write_text(json.dumps(src))
    with pytest.warns(UserWarning, match="999.bmp"):
        coco = load_segpc("train", "nucleus", root)
    assert coco["categories"] == [{"id": 1, "name": "nucleus"}]
    assert coco["info"]["missing_images"] == ["999.bmp"]
    (im,), (ann,) = coco["images"], coco["annotations"]
    assert (im["id"], im["width"], im["orig_width"], ann["id"]) == (1, 512, 2048, 1)
    assert ann["bbox"] == pytest.approx([100, 178, 100, 50])  # scale 0.25, dy = 128
    assert ann["segmentation"] == [pytest.approx([100, 178, 200, 178, 200, 228, 100, 228])]
    assert ann["area"] == pytest.approx(5000, rel=0.03)
    with pytest.raises(DatasetNotFoundError):
        load_segpc("valid", "cell", root)


# ---------------------------------------------------------------- real data
def need(data_root: Path, name: str) -> Path:
    if not (data_root / name).is_dir():
        pytest.skip(f"{name} not under BLOODLIB_DATA={data_root}")
    return data_root / name


@pytest.mark.realdata
def test_real_bccd(data_root):
    root = need(data_root, "bccd")
    sizes = {s: len(load_bccd(s, root)["images"]) for s in ("train", "val", "test", "trainval", "all")}
    assert sizes == {"train": 205, "val": 87, "test": 72, "trainval": 292, "all": 364}
    coco = load_bccd("all", root)
    assert len(coco["info"]["validation"]["dropped"]) == 2 and coco["info"]["dropped_duplicates"] == 7
    assert len(coco["annotations"]) == 4888 - 2 - 7


@pytest.mark.realdata
def test_real_txl_pbc(data_root):
    root = need(data_root, "txl_pbc")
    assert len(load_txl_pbc("train", root)["images"]) == 1008
    assert len(load_txl_pbc("val", root)["images"]) == 288
    with pytest.raises(DatasetNotFoundError, match="144"):
        load_txl_pbc("test", root)


@pytest.mark.realdata
def test_real_pbc(data_root):
    recs = load_pbc(need(data_root, "pbc"))
    counts = {c: sum(r.label == c for r in recs) for c in PBC_CLASSES}
    assert counts == {c: 599 if c == "neutrophil" else 600 for c in PBC_CLASSES}  # 599: see report


@pytest.mark.realdata
def test_real_zheng(data_root):
    root = need(data_root, "wbc_seg_zheng")
    jx, cv = load_zheng("jiangxi", root), load_zheng("cellavision", root)
    assert (len(jx), len(cv)) == (300, 100)
    for rec in jx[:20] + cv[:20]:
        assert set(np.unique(read_label_mask(rec))) == {0, 1, 2}


@pytest.mark.realdata
def test_real_bccd_wbc_masks(data_root):
    with pytest.warns(UserWarning, match="3 BCCD WBC masks"):
        recs = load_bccd_wbc_masks(need(data_root, "bccd_wbc_masks"), need(data_root, "bccd"))
    assert len(recs) == 364
    assert set(np.unique(read_label_mask(recs[0]))) == {0, 1, 2}


@pytest.mark.realdata
def test_real_segpc(data_root):
    root = need(data_root, "segpc2021")
    with pytest.warns(UserWarning, match="610"):
        val = load_segpc("valid", "cell", root)
    train = load_segpc("train", "nucleus", root)
    assert len(train["images"]) == 298 and len(val["images"]) == 199  # 200 annotated, 610 absent
    for coco in (train, val):
        for ann in coco["annotations"]:
            for poly in ann["segmentation"]:
                assert 0 <= min(poly) and max(poly) <= 512


@pytest.mark.realdata
def test_real_segpc_polygons_match_the_provided_masks(data_root):
    """The union of the transformed polygons agrees with the dataset's merged masks
    (IoU 0.97 letterboxed; stretching x and y separately gave 0.52)."""
    from pycocotools import mask as mask_utils

    from bloodlib.io import read_mask

    coco = load_segpc("train", "cell", need(data_root, "segpc2021"))
    ious = []
    for im in coco["images"][:15]:
        truth = read_mask(im["path"].replace("/images/", "/masks/")) > 127
        union = np.zeros_like(truth)
        for ann in (a for a in coco["annotations"] if a["image_id"] == im["id"]):
            rle = mask_utils.merge(mask_utils.frPyObjects(ann["segmentation"], 512, 512))
            union |= mask_utils.decode(rle).astype(bool)
        ious.append((truth & union).sum() / (truth | union).sum())
    assert np.mean(ious) > 0.93 and min(ious) > 0.9
