"""SN-AM, MiMM_SBILab and C-NMC 2019 loaders on tiny generated fixtures in their layouts."""

from __future__ import annotations

import numpy as np
import pytest

from bloodlib.data.convert import rle_to_mask
from bloodlib.data.datasets import DetectionDataset
from bloodlib.data.parsers import load_c_nmc, load_mimm_sbilab, load_sn_am
from bloodlib.data.parsers.c_nmc import subject_of
from bloodlib.errors import AnnotationError, DatasetNotFoundError, UnknownClassError
from fixtures.cancer_layouts import write_c_nmc, write_mimm_sbilab, write_sn_am


# ---------------------------------------------------------------- SN-AM
def test_sn_am_reads_class_folders(tmp_path):
    recs = load_sn_am(write_sn_am(tmp_path / "sn_am"))
    assert [r.label for r in recs] == ["all"] * 3 + ["mm"] * 2  # the mask folder is skipped
    assert all(r.path.is_absolute() and r.path.suffix == ".bmp" for r in recs)
    assert [r.label for r in load_sn_am(tmp_path / "sn_am", classes=["MM"])] == ["mm", "mm"]


def test_sn_am_errors(tmp_path, monkeypatch):
    (tmp_path / "sn_am" / "ALL").mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError, match="ALL or B-ALL"):
        load_sn_am(tmp_path / "sn_am")
    with pytest.raises(UnknownClassError):
        load_sn_am(write_sn_am(tmp_path / "other"), classes=["aml"])
    monkeypatch.setenv("BLOODLIB_DATA", str(tmp_path / "nothing"))
    with pytest.raises(DatasetNotFoundError, match="cancerimagingarchive"):
        load_sn_am()


# ---------------------------------------------------------------- MiMM_SBILab
def test_mimm_with_segpc_style_masks(tmp_path):
    root = write_mimm_sbilab(tmp_path / "mimm_sbilab")
    coco = load_mimm_sbilab(root)
    assert coco["info"]["annotated"] and [im["file_name"] for im in coco["images"]] == ["1.bmp", "2.bmp"]
    anns = coco["annotations"]
    assert len(anns) == 2 and {a["image_id"] for a in anns} == {1}
    assert anns[0]["bbox"] == [3.0, 2.0, 14.0, 12.0] and anns[0]["area"] == 12 * 14
    mask = rle_to_mask(anns[0]["segmentation"])
    assert mask.shape == (40, 50) and mask.sum() == 12 * 14
    nuc = load_mimm_sbilab(root, target="nucleus")
    assert [a["area"] for a in nuc["annotations"]] == [25.0, 25.0]
    ds = DetectionDataset(coco, with_masks=True)  # plugs into the torch Dataset
    _, target = ds[0]
    assert target["masks"].shape == (2, 40, 50)


def test_mimm_images_only(tmp_path):
    coco = load_mimm_sbilab(write_mimm_sbilab(tmp_path / "m", annotated=False))
    assert len(coco["images"]) == 2 and not coco["annotations"] and not coco["info"]["annotated"]


def test_mimm_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(DatasetNotFoundError, match="MiMM_SBILab"):
        load_mimm_sbilab(tmp_path / "empty")
    with pytest.raises(ValueError):
        load_mimm_sbilab(tmp_path / "empty", target="cytoplasm")


# ---------------------------------------------------------------- C-NMC 2019
def test_c_nmc_training_folds(tmp_path):
    root = write_c_nmc(tmp_path / "c_nmc_2019")
    recs = load_c_nmc("train", root)
    assert len(recs) == 10
    assert sum(r.label == "all" for r in recs) == 6 and {r.meta["fold"] for r in recs} == {0, 1}
    hem = [r for r in recs if r.label == "hem"]
    assert {r.meta["subject"] for r in hem} == {"H1", "H2"}
    assert len(load_c_nmc("train", root, folds=[1])) == 5


def test_c_nmc_prelim_test_labels(tmp_path):
    recs = load_c_nmc("prelim_test", write_c_nmc(tmp_path / "c"))
    assert [(r.path.name, r.label) for r in recs] == [("1.bmp", "all"), ("3.bmp", "all"),
                                                      ("2.bmp", "hem")]
    assert recs[0].meta["subject"] == "57" and subject_of("UID_H10_43_1_hem.bmp") == "H10"


def test_c_nmc_errors(tmp_path):
    root = write_c_nmc(tmp_path / "c")
    csv = next(root.rglob("*labels.csv"))
    csv.write_text("Patient_ID,new_names,labels\nx,1.bmp,2\n")
    with pytest.raises(AnnotationError, match="not 0 or 1"):
        load_c_nmc("prelim_test", root)
    (tmp_path / "e" / "x").mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError, match="fold_0"):
        load_c_nmc("train", tmp_path / "e")
    with pytest.raises(ValueError):
        load_c_nmc("final_test", root)
