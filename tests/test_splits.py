"""Splits, duplicate detection and dataset statistics."""

from __future__ import annotations

import shutil
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from bloodlib.data.records import LabelledImage, new_coco
from bloodlib.data.splits import (assert_no_leakage, check_no_leakage, find_duplicates, image_strata,
                                  load_split, per_class_split, pixel_hash, save_split, stratified_split)
from bloodlib.data.stats import coco_stats, duplicate_report, label_stats
from bloodlib.errors import AnnotationError, DatasetIntegrityError

LABELS = ["a"] * 50 + ["b"] * 30 + ["c"] * 20


def assert_partition(split: dict, n: int) -> None:
    all_idx = [i for v in split.values() for i in v]
    assert len(all_idx) == len(set(all_idx)), "an index is in two splits"
    assert set(all_idx) <= set(range(n))


def test_stratified_split_deterministic_and_proportional():
    fr = {"train": 0.6, "val": 0.2, "test": 0.2}
    s1, s2 = stratified_split(LABELS, fr, seed=3), stratified_split(LABELS, fr, seed=3)
    assert s1 == s2 and s1 != stratified_split(LABELS, fr, seed=4)
    assert_partition(s1, len(LABELS))
    assert sum(map(len, s1.values())) == len(LABELS)
    assert [len(s1[k]) for k in fr] == [60, 20, 20]
    for name, frac in fr.items():
        counts = Counter(LABELS[i] for i in s1[name])
        for cls, total in Counter(LABELS).items():
            assert abs(counts[cls] - frac * total) <= 1


def test_stratified_split_default_and_errors():
    s = stratified_split(LABELS)
    assert set(s) == {"train", "test"} and len(s["test"]) == 20
    with pytest.raises(ValueError, match="sum to 1"):
        stratified_split(LABELS, {"train": 0.5, "test": 0.4})
    with pytest.raises(AnnotationError, match="fewer images than splits"):
        stratified_split(LABELS + ["lonely"], {"train": 0.8, "test": 0.2})


def test_per_class_split_counts_and_scale_down():
    labels = ["a"] * 12 + ["b"] * 7
    counts = {"train": 3, "val": 1, "test": 1}
    s = per_class_split(labels, counts, seed=1)
    assert s == per_class_split(labels, counts, seed=1)
    assert_partition(s, len(labels))
    for name, n in counts.items():
        assert Counter(labels[i] for i in s[name]) == {"a": n, "b": n}
    with pytest.raises(AnnotationError, match="fewer than 10"):
        per_class_split(labels, {"train": 6, "val": 2, "test": 2})
    s = per_class_split(labels, {"train": 6, "val": 2, "test": 2}, scale_down=True)
    assert_partition(s, len(labels))
    assert Counter(labels[i] for i in s["train"]) == {"a": 6, "b": 4}
    assert sum(Counter(labels[i] for i in v)["b"] for v in s.values()) == 7


def test_image_strata():
    coco = new_coco(["WBC", "RBC", "Platelets"])
    coco["images"] = [{"id": i, "file_name": f"{i}.jpg", "width": 10, "height": 10} for i in (1, 2, 3)]
    anns = [(1, 2), (1, 2), (1, 1), (2, 2), (2, 2)]
    coco["annotations"] = [{"id": k + 1, "image_id": im, "category_id": c, "bbox": [0, 0, 1, 1]}
                           for k, (im, c) in enumerate(anns)]
    assert image_strata(coco, "rarest") == ["WBC", "RBC", "none"]
    assert image_strata(coco, "majority") == ["RBC", "RBC", "none"]
    stats = coco_stats(coco)
    assert stats["images"] == 3 and stats["instances_per_class"] == {"WBC": 1, "RBC": 4, "Platelets": 0}
    assert stats["images_without_instances"] == 1 and stats["image_sizes"] == {"10x10": 3}


def test_save_load_split(tmp_path):
    split = stratified_split(LABELS, seed=7)
    path = save_split(split, tmp_path / "s" / "split.json", method="stratified", seed=7, dataset="toy")
    assert load_split(path) == split
    splits, meta = load_split(path, with_meta=True)
    assert meta == {"method": "stratified", "seed": 7, "dataset": "toy"}


def write(path, seed, fmt=None):
    arr = np.random.default_rng(seed).integers(0, 255, (20, 24, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format=fmt)
    return path


def test_duplicates_and_leakage(tmp_path):
    a, b = write(tmp_path / "a.png", 0), write(tmp_path / "b.png", 1)
    copy = tmp_path / "sub" / "copy_of_a.png"
    copy.parent.mkdir()
    shutil.copy(a, copy)
    bmp = write(tmp_path / "a_as.bmp", 0, "BMP")  # same pixels, other format
    assert pixel_hash(a) == pixel_hash(copy) == pixel_hash(bmp) != pixel_hash(b)
    groups = find_duplicates([a, b, copy, bmp])
    assert len(groups) == 1 and set(groups[0]) == {a, copy, bmp}
    assert check_no_leakage({"train": [a, b], "test": [bmp]}) == [{"train": [a], "test": [bmp]}]
    assert check_no_leakage({"train": [a, copy], "test": [b]}) == []
    with pytest.raises(DatasetIntegrityError, match="more than one split"):
        assert_no_leakage({"train": [a], "test": [copy]})
    rep = duplicate_report("toy", {"train": [a, b], "test": [copy]})
    assert rep["duplicate_groups"] == 1 and rep["cross_split_groups"] == 1 and rep["images"] == 3


def test_label_stats():
    recs = [LabelledImage(f"{i}.jpg", lab) for i, lab in enumerate(LABELS)]
    df = label_stats(recs)
    assert df.loc["a", "count"] == 50 and df.loc["c", "imbalance"] == 2.5
    assert abs(df["fraction"].sum() - 1) < 1e-9
