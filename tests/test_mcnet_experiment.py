"""The experiment modules behind notebooks 01 (paper 1) and 02 (paper 2): data fallbacks,
training and evaluation on synthetic smears, the paper tables, metrics and figures."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from bloodlib.config import get_config, get_profile
from bloodlib.data.records import new_coco
from bloodlib.experiments import maskrcnn_backbones as mb
from bloodlib.experiments import mcnet_detection as mc


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """Tiny synthetic splits (the dataset fallback) with exact masks."""
    from bloodlib.data.synthetic import write_detection_set
    root = tmp_path_factory.mktemp("mc_smears")
    splits = {s: write_detection_set(root / s, n, i, height=96, width=120, split=s)
              for i, (s, n) in enumerate([("train", 4), ("val", 2), ("test", 3)])}
    return splits


def _settings(**kw):
    return get_config("mcnet", "quick", **{
        "min_size": 96, "max_size": 120, "iterations": 3, "time_budget_s": None,
        "warmup_iters": 1,
        "heads": {**mc.LIGHT_HEADS, "fpn_channels": 32, "representation_size": 64,
                  "mask_head_layers": [32], "mask_iou_channels": 16, "mask_iou_fc": 32,
                  "box_detections_per_img": 20}, **kw})


def test_profiles_exist_for_every_run_kind():
    for exp in ("mcnet", "maskrcnn_backbones"):
        for p in ("quick", "bench_cpu", "full"):
            assert get_profile(exp, p)["profile"] == p
    bench = get_profile("mcnet", "bench_cpu")
    assert {"faster_rcnn", "mcnet", "yolov9"} <= set(bench["models"])
    assert bench["time_budget_s"] == 3600 and bench["yolo_time_budget_s"] == 3600
    assert get_profile("mcnet", "full")["stages"] == "paper1"
    full2 = get_profile("maskrcnn_backbones", "full")
    assert len(full2["backbones"]) == 7 and full2["image_size"] == 512
    assert full2["per_class"] == {"train": 300, "val": 100, "test": 100}
    assert full2["threshold"] == 0.75


def test_missing_dataset_falls_back_to_synthetic(tmp_path, monkeypatch):
    monkeypatch.setenv("BLOODLIB_DATA", str(tmp_path / "empty"))
    (tmp_path / "empty").mkdir()
    k = _settings(max_train_images=3, max_val_images=2, max_test_images=2, synthetic_images=4)
    with pytest.warns(UserWarning, match="synthetic"):
        splits, source = mc.load_splits("bccd", k, tmp_path, 0)
    assert source == "synthetic"
    assert [len(splits[s]["images"]) for s in ("train", "val", "test")] == [3, 2, 2]


def test_subsets_are_deterministic_and_disjoint(synthetic):
    a = mc.subset_coco(synthetic["train"], 2, seed=1)
    b = mc.subset_coco(synthetic["train"], 2, seed=1)
    assert [im["id"] for im in a["images"]] == [im["id"] for im in b["images"]]
    ids = {im["id"] for im in a["images"]}
    assert all(x["image_id"] in ids for x in a["annotations"])
    rest, part = mc.split_coco(synthetic["train"], 0.25, seed=0)
    assert len(part["images"]) == 1 and len(rest["images"]) == 3
    assert not {im["id"] for im in part["images"]} & {im["id"] for im in rest["images"]}


def test_train_and_evaluate_mcnet_end_to_end(synthetic, tmp_path):
    k = _settings()
    out = mc.train_and_evaluate("mcnet", synthetic, synthetic, k, "cpu", 0, tmp_path)
    assert out.iterations == 3 and len(out.log) == 3 and "loss_mask_iou" in out.log
    m = out.result_metrics()
    assert {"precision", "recall", "mAP50", "mAP50_95", "segm_mAP50", "train_seconds"} <= set(m)
    assert all(math.isfinite(v) for v in m.values())
    ev = out.evaluation
    assert ev.segm is not None and ev.confusion.shape == (4, 4)
    assert all("mask_iou" in p for p in ev.predictions)
    evals = {"mcnet": ev}
    ablation = mc.ablation_table(evals)
    assert list(ablation.index) == ["MCNet, masks ranked by class score",
                                    "MCNet, class score x predicted mask IoU"]
    cal = mc.mask_iou_calibration(synthetic["test"], ev.predictions, score_threshold=0.0)
    assert list(cal.columns) == ["predicted_iou", "actual_iou", "score"]
    assert ((cal["actual_iou"] >= 0) & (cal["actual_iou"] <= 1)).all()
    for fig in (mc.pr_figure(evals), mc.pr_comparison_figure(evals), mc.confusion_figure(evals),
                mc.side_by_side_figure(synthetic["test"], evals, 0, score_threshold=0.0),
                mc.ablation_figure(ablation, cal), mc.loss_figure({"mcnet": out.log})):
        assert fig.axes
    table = mc.table2({"mcnet": m})
    ref = table.set_index("metric")
    assert ref.loc["mAP50", "paper"] == pytest.approx(96.76)
    assert ref.loc["mAP50", "ours"] == pytest.approx(100 * m["mAP50"])

    from bloodlib.inference import load_predictor
    from bloodlib.io import read_image
    stored = mc.store_outcome(out, synthetic["train"], k, "mcnet-synthetic-quick",
                              folder=tmp_path / "store")
    assert stored == tmp_path / "store" / "mcnet-synthetic-quick.pt"
    predictor = load_predictor(stored, task="detect")
    assert predictor.classes == mc.class_names(synthetic["train"])
    assert predictor.meta["metrics"]["test_mAP50"] == pytest.approx(m["mAP50"])
    result = predictor.predict(read_image(synthetic["test"]["images"][0]["path"]),
                               score_threshold=0.0)
    assert result.boxes.shape[1] == 4 and set(result.labels) <= set(predictor.classes)


def test_table1_puts_the_mixed_map_column_in_percent():
    ours = {"recall": 0.5, "precision": 0.6, "mAP50": 0.7, "mAP50_95": 0.4}
    t = mc.table1({"yolov9": ours, "mask_rcnn": ours}).set_index(["model", "metric"])
    assert t.loc[("YOLOv9", "mAP50_95"), "paper"] == pytest.approx(78.5)    # printed 0.785
    assert t.loc[("Mask R-CNN", "mAP50_95"), "paper"] == pytest.approx(78.53)  # printed 78.53
    assert t.loc[("YOLOv9", "mAP50_95"), "ours"] == pytest.approx(40.0)
    assert t.loc[("YOLOv9", "recall"), "paper"] == pytest.approx(73.46)


def _gt_two_classes():
    gt = new_coco(["a", "b"])
    for i in range(1, 4):
        gt["images"].append({"id": i, "file_name": f"{i}.png", "width": 50, "height": 50,
                             "path": f"{i}.png"})
        gt["annotations"].append({"id": i, "image_id": i, "category_id": 1 if i < 3 else 2,
                                  "bbox": [10, 10, 20, 20], "area": 400, "iscrowd": 0})
    return gt


def test_detection_roc_separates_true_and_false_detections():
    gt = _gt_two_classes()
    preds = [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "score": 0.9},
             {"image_id": 2, "category_id": 1, "bbox": [10, 10, 20, 20], "score": 0.8},
             {"image_id": 1, "category_id": 1, "bbox": [30, 30, 10, 10], "score": 0.3},
             {"image_id": 3, "category_id": 2, "bbox": [10, 10, 20, 20], "score": 0.7}]
    curves = mc.detection_roc(gt, preds)
    assert set(curves) == {"a"}          # class b has only a true positive: no ROC
    assert curves["a"][2] == pytest.approx(1.0)


def test_paper2_classification_from_detections_and_metrics():
    gt = _gt_two_classes()
    preds = [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "score": 0.9},
             {"image_id": 1, "category_id": 2, "bbox": [10, 10, 20, 20], "score": 0.8},
             {"image_id": 2, "category_id": 2, "bbox": [10, 10, 20, 20], "score": 0.95},
             {"image_id": 3, "category_id": 2, "bbox": [10, 10, 20, 20], "score": 0.5}]
    y_true, y_pred = mb.classification_from_detections(gt, preds, threshold=0.75)
    assert y_true == ["a", "a", "b"] and y_pred == ["a", "b", mb.NONE]
    m, cm, cols = mb.classification_metrics(y_true, y_pred, ["a", "b"])
    assert cols == ["a", "b", "none"] and cm.tolist() == [[1, 1, 0], [0, 0, 1]]
    assert m["top1_accuracy"] == pytest.approx(1 / 3)
    # paper 2 eq. 7 per class: a: TP1 TN1 FP0 FN1 -> 2/3; b: TP0 TN1 FP1 FN1 -> 1/3
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["precision"] == pytest.approx(0.5) and m["recall"] == pytest.approx(0.25)
    assert m["specificity"] == pytest.approx(0.75) and m["no_detection_rate"] == pytest.approx(1 / 3)


def test_paper2_tables_show_the_paper_beside_ours():
    res = {"resnet50": {"table3": {"total_loss": 1.0, "val_loss": 1.1, "box_loss": 0.1,
                                   "class_loss": 0.2, "mask_loss": 0.3},
                        "table4": {"mAP50": 0.5, "AP70": 0.4, "AP90": 0.1, "mAP50_95": 0.3,
                                   "mAR": 0.6, "F1": 0.5},
                        "table5": {"accuracy": 0.9, "precision": 0.5, "recall": 0.5, "F1": 0.5,
                                   "specificity": 0.9}},
           "mobilenet_v3_large": {"table4": {"mAP50": 0.2, "AP70": 0.1, "AP90": 0.0,
                                             "mAP50_95": 0.1, "mAR": 0.3, "F1": 0.2}}}
    tabs = mb.paper_tables(res)
    t4 = tabs["table4"].set_index(["backbone", "metric"])
    assert t4.loc[("ResNet50", "mAP50"), "paper"] == pytest.approx(0.8902)
    assert t4.loc[("ResNet50", "mAP50"), "ours"] == pytest.approx(0.5)
    assert np.isnan(t4.loc[("MobileNetV3-L", "mAP50"), "paper"])   # not in the paper
    assert len(tabs["table3"]) == 5 and len(tabs["table5"]) == 5
    assert isinstance(mb.wide(tabs["table4"]), pd.DataFrame)


def test_preprocessing_is_applied_once_to_every_image(synthetic, tmp_path):
    out = mc.preprocess_images({"test": synthetic["test"]}, {"clahe": True, "stain": None},
                               tmp_path / "pre")
    paths = [im["path"] for im in out["test"]["images"]]
    assert all(p.endswith(".png") and "clahe" in p for p in paths)
    assert out["test"]["annotations"] == synthetic["test"]["annotations"]
    same = mc.preprocess_images({"test": synthetic["test"]}, {"clahe": False, "stain": None}, tmp_path)
    assert same["test"] is synthetic["test"]


def test_quick_model_follows_the_store_contract(tmp_path, monkeypatch):
    monkeypatch.setenv("BLOODLIB_DATA", str(tmp_path / "none"))
    (tmp_path / "none").mkdir()
    with pytest.warns(UserWarning):
        model, meta = mc.quick_model(tmp_path, 0, steps=2)
    assert meta["task"] == "detect" and meta["classes"] == ["WBC", "RBC", "Platelets"]
    assert meta["architecture"] == "torchvision_detector" and "AP50" in meta["metrics"]
    assert meta["training_data"]["source"] == "synthetic"


def test_detector_recipe_from_either_experiment():
    """Paper 1's settings are a recipe as they are; paper 2's become one per backbone."""
    mcnet = get_config("mcnet", "bench_cpu")
    recipe = mc.DetectorRecipe.of(mcnet)
    assert (recipe.backbone, recipe.min_size, recipe.lr) == (mcnet.backbone, mcnet.min_size,
                                                            mcnet.lr)
    backbones = get_config("maskrcnn_backbones", "quick")
    lite = mb.recipe(backbones, "efficientnet_lite0")
    assert lite.min_size == lite.max_size == backbones.image_size
    assert lite.lr == backbones.lr_by_backbone.get("efficientnet_lite0", backbones.lr)
    assert lite.preprocessing is None and lite.backbone == "efficientnet_lite0"
    with pytest.raises(TypeError, match="lacks"):
        mc.DetectorRecipe.of(backbones)
