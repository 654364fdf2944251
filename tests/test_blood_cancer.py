"""Paper 3's experiment helpers on synthetic data: evaluation metrics, tables, a tiny
training run, crops for the DCNN stage."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bloodlib.config import get_config, get_profile
from bloodlib.experiments import blood_cancer as bc

TINY = dict(backbone="mobilenet_v3_large", pretrained_backbone=False, image_size=64,
            fpn_channels=16, mask_channels=16, batch_size=2, train_steps=2,
            ablation_steps=1, time_budget_s=None, ablation_time_budget_s=None,
            detections_per_img=10, cls_size=32, cls_epochs=1, cls_batch=8, unet_steps=2,
            unet_base_channels=4, unet_batch=2, unet_time_budget_s=None, cls_time_budget_s=None,
            ablation_variants=[{"attention": "sa", "bottom_up": False}])


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    coco = bc.synthetic_cells(tmp_path_factory.mktemp("cells"), 3, seed=0, split="train", size=64)
    return coco, bc.make_eval_set(coco, 64)


def test_profiles_registered():
    for profile in ("quick", "bench_cpu", "full"):
        k = get_profile("blood_cancer", profile)
        assert k["backbone"] in ("efficientnet_lite0", "mobilenet_v3_large", "resnet50")
        assert k["image_size"] >= 256
    # quick fine-tunes the packaged ImageNet weights (from scratch 30 steps learn nothing)
    assert get_profile("blood_cancer", "quick")["pretrained_backbone"] is True
    assert get_profile("blood_cancer", "bench_cpu")["time_budget_s"] == 3600
    assert get_profile("blood_cancer", "full")["optimizer"] == "sgd"  # the paper's optimiser


def test_letterbox_valid_and_subset():
    v = bc.letterbox_valid({"orig_width": 2040, "orig_height": 1536}, 256, 256)
    rows = np.nonzero(v.any(axis=1))[0]
    assert v[:, 0].sum() == rows.size and 190 <= rows.size <= 194 and rows[0] >= 30
    assert bc.letterbox_valid({}, 4, 5).all()
    coco = {"images": [{"id": i} for i in range(1, 6)],
            "annotations": [{"id": i, "image_id": i} for i in range(1, 6)]}
    sub = bc.subset_coco(coco, 2, seed=0)
    assert len(sub["images"]) == 2 and {a["image_id"] for a in sub["annotations"]} == \
        {im["id"] for im in sub["images"]}


def test_evaluation_of_perfect_and_empty_predictions(synth):
    _, ev = synth
    assert ev.coco["annotations"] and ev.images[0].shape == (3, 64, 64)
    perfect = [bc.Prediction(m, np.ones(len(m))) for m in ev.masks]
    m = bc.evaluate_predictions(perfect, ev)
    assert m["IoU"] == pytest.approx(1) and m["pixel_accuracy"] == pytest.approx(1)
    assert m["rmse"] == pytest.approx(0) and m["cell_iou"] == pytest.approx(1)
    assert m["segm_AP50"] == pytest.approx(1) and m["matched_cells"] == m["gt_cells"]
    empty = [bc.Prediction(np.zeros((0, 64, 64), bool), np.zeros(0)) for _ in ev.masks]
    e = bc.evaluate_predictions(empty, ev)
    assert e["IoU"] == 0 and e["cell_iou"] == 0 and e["segm_AP"] == 0 and e["rmse"] > 0
    low = [bc.Prediction(m, np.full(len(m), 0.1)) for m in ev.masks]
    assert bc.evaluate_predictions(low, ev, score_threshold=0.5)["IoU"] == 0  # below threshold


def test_table1_puts_paper_beside_ours():
    ours = {"fcm": {"IoU": 0.5, "pixel_accuracy": 0.9, "rmse": 0.3},
            "rmaskrcnn": {"IoU": 0.8, "pixel_accuracy": 0.95, "rmse": 0.2}}
    t = bc.table1(ours)
    row = t[(t["model"] == "R-Mask R-CNN") & (t["metric"] == "IoU")].iloc[0]
    assert row["paper"] == 90.03 and row["ours"] == pytest.approx(80)
    assert set(t["model"]) == {"FCM", "R-Mask R-CNN"} and len(t) == 6


def test_tiny_training_run_and_ablation(synth):
    coco, ev = synth
    settings = get_config("blood_cancer", "quick", **TINY)
    r = bc.train_and_evaluate("rmaskrcnn", coco, ev, settings, seed=0)
    assert r["log"].steps == 2 and np.isfinite(r["log"].to_frame()["loss"]).all()
    assert 0 <= r["metrics"]["IoU"] <= 1 and len(r["preds"]) == len(ev.images)
    abl = bc.run_ablation(coco, ev, settings, seed=0)
    assert list(abl) == ["Mask R-CNN (torchvision FPN)", "FPN-SA + MS head",
                         "FPN-CA-SA + B-U + MS head (R-Mask R-CNN)"]
    table = bc.ablation_table(abl)
    assert (table["steps"] == 1).all() and table["cell_iou"].between(0, 1).all()
    with pytest.raises(ValueError, match="maskrcnn"):
        bc.build_model("yolo", settings)


def test_saved_model_loads_back_and_attention_gates(synth, tmp_path):
    coco, ev = synth
    settings = get_config("blood_cancer", "quick", **{**TINY, "residual_attention": True,
                                                       "attention_logit_bound": 2.0,
                                                       "mask_fusion": "map",
                                                       "mask_head_depth": 2})
    r = bc.train_and_evaluate("rmaskrcnn", coco, ev, settings, seed=0)
    path = bc.save_model(r["model"], tmp_path / "r.pt", settings, r["metrics"], "synthetic")
    loaded = bc.load_model(path)
    assert loaded.bloodlib_config == r["model"].bloodlib_config
    meta = torch.load(path, weights_only=False)["meta"]
    assert meta["preprocessing"]["normalize"] == "unit"  # the model normalises by itself
    assert meta["preprocessing"]["model_normalization"]["mean"] == pytest.approx(
        list(loaded.transform.image_mean))
    assert meta["pretrained_backbone"] is False
    assert loaded.bloodlib_config["residual_attention"] is True
    assert loaded.bloodlib_config["mask_fusion"] == "map"
    assert loaded.bloodlib_config["mask_head_depth"] == 2
    for a, b in zip(loaded.state_dict().values(), r["model"].state_dict().values()):
        assert torch.equal(a, b)
    table = bc.attention_gate_table(loaded, ev.images[:2])
    assert list(table["where"]) == ["FPN-AM F2", "FPN-AM F2", "FPN-AM F3", "FPN-AM F3",
                                    "FPN-AM F4", "FPN-AM F4", "FPN-AM F5", "FPN-AM F5",
                                    "B-U-AM N3", "B-U-AM N3", "B-U-AM N4", "B-U-AM N4",
                                    "B-U-AM N5", "B-U-AM N5"]
    assert list(table["attention"][:2]) == ["CA", "SA"] and table["residual"].all()
    assert (table["logit bound"] == 2.0).all()
    assert (table["entries"][::2] == 16).all()  # CA over fpn_channels
    assert (table["min multiplier"] >= 0.5).all()  # the residual form's floor
    assert table["share < 0.1"].between(0, 1).all()
    assert (table["max n*softmax"] >= 1).all() and (table["median n*softmax"] > 0).all()
    with pytest.raises(ValueError, match="attention modules"):
        bc.attention_gate_table(bc.build_model("maskrcnn", settings), ev.images[:1])
    torch.save({"model_state": torch.nn.Conv2d(1, 1, 1).state_dict(),
                "meta": {"task": "segment", "architecture": "unet", "classes": ["cell"]}},
               tmp_path / "u.pt")
    with pytest.raises(ValueError, match="not a Mask R-CNN"):
        bc.load_model(tmp_path / "u.pt")


def test_unet_and_fcm_baselines(synth):
    coco, ev = synth
    settings = get_config("blood_cancer", "quick", **TINY)
    model, log = bc.train_unet(coco, settings)
    assert log.steps == 2
    preds = bc.predict_unet(model, ev, settings)
    fcm_preds, labels = bc.predict_fcm(ev, settings)
    assert labels[0].shape == (64, 64) and len(fcm_preds) == len(preds) == len(ev.images)
    m = bc.evaluate_predictions(fcm_preds, ev)
    assert m["IoU"] > 0.1  # synthetic WBCs are dark on a bright background


def test_crops_and_dcnn_stage(synth):
    coco, _ = synth
    settings = get_config("blood_cancer", "quick", **TINY)
    x, y = bc.cell_crops(coco, settings)
    assert x and all(c.shape == (32, 32, 3) for c in x) and y[0] == "plasma_cell"
    assert y.count("plasma_cell") == len(coco["annotations"])
    model = bc.build_dcnn(settings, 2)
    assert not model.pretrained_loaded
    prob = bc.predict_dcnn(model, x[:3])
    assert prob.shape == (3, 2) and np.allclose(prob.sum(1), 1, atol=1e-5)
    from bloodlib.metrics import classification_report
    rep = classification_report(["plasma_cell", "other", "other"], y_prob=np.array(
        [[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]), classes=bc.CLS_CLASSES)
    cm, t3 = bc.classification_tables(rep)
    assert cm.shape == (2, 2) and t3.loc["average (ours)", "accuracy"] == pytest.approx(200 / 3)
    assert t3.loc["paper DeepBCSDnet average (ALL vs MM)", "accuracy"] == 95.57


def test_learning_rate_schedule():
    optim = bc.Optimization(warmup_steps=4, lr_schedule="cosine")
    assert bc._lr_factor(0, 0.0, 100, None, optim) == pytest.approx(0.25)  # warm-up
    assert bc._lr_factor(4, 0.0, 100, None, optim) == pytest.approx(0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * 0.04)))
    assert bc._lr_factor(10, 90.0, 10**6, 100.0, optim) == pytest.approx(0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * 0.9)))
    assert bc._lr_factor(50, 0.0, 100, None, bc.Optimization(warmup_steps=1)) == 1.0  # constant


def test_optimization_comes_from_the_typed_profile():
    full = get_config("blood_cancer", "full")
    optim = bc.Optimization.of(full)
    assert (optim.optimizer, optim.lr, optim.momentum) == ("sgd", 1e-3, 0.7)
    assert bc.Optimization.of(full, optimizer="adamw").optimizer == "adamw"
