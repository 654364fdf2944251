"""The detection training engine: schedule, logging, staging, checkpoints and resume,
time budget, evaluation helpers."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
from torch import nn

from bloodlib.engine.detection import (LOSS_KEYS, PAPER1_STAGES, Preprocess, Stage,
                                       detection_transforms, detection_val_loss,
                                       evaluate_detector, loss_summary, predict_coco,
                                       scale_stages, train_detector)


class ToyDetector(nn.Module):
    """A stand-in with torchvision's interface: losses in training mode, one detection per
    ground-truth box (shifted by a learnt offset) in eval mode."""

    def __init__(self) -> None:
        super().__init__()
        self.offset = nn.Parameter(torch.tensor(3.0))
        self.bn = nn.BatchNorm1d(1)

    def forward(self, images, targets=None):
        if self.training:
            x = self.bn(torch.ones(2, 1) * self.offset)
            return {"loss_box_reg": self.offset ** 2, "loss_classifier": x.abs().mean() * 0 + 0.5}
        return [{"boxes": torch.tensor([[2.0, 2, 10, 10]]) + self.offset,
                 "labels": torch.tensor([1]), "scores": torch.tensor([0.9])} for _ in images]


def _loader(n=4):
    img = torch.zeros(3, 16, 16)
    t = {"boxes": torch.tensor([[2.0, 2, 10, 10]]), "labels": torch.tensor([1]), "image_id": 1}
    return [([img, img], [dict(t), dict(t)]) for _ in range(n)]


def test_log_has_one_row_per_step_with_loss_components():
    r = train_detector(ToyDetector(), _loader(), iterations=6, lr=0.1, warmup_iters=0,
                       progress=False)
    assert len(r.log) == 6 and r.iterations == 6 and r.images == 12
    assert {"step", "epoch", "stage", "lr", "loss", "loss_box_reg", "loss_classifier",
            "seconds"} <= set(r.log.columns)
    assert "loss_mask_iou" not in r.log  # components a model never returns are dropped
    assert r.log["loss"].iloc[-1] < r.log["loss"].iloc[0]
    assert r.log["epoch"].tolist() == [1, 1, 1, 1, 2, 2]
    assert r.stop_reason == "completed" and math.isfinite(r.images_per_second)
    assert set(LOSS_KEYS) >= {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness",
                              "loss_rpn_box_reg", "loss_mask_iou"}
    s = loss_summary(r.log, last=2)
    assert s["total_loss"] == pytest.approx(r.log["loss"].tail(2).mean())
    assert "box_loss" in s and "class_loss" in s


def test_warmup_and_step_decay():
    r = train_detector(ToyDetector(), _loader(), iterations=8, lr=0.1, warmup_iters=4,
                       warmup_factor=0.1, lr_steps=[6], lr_gamma=0.1, progress=False,
                       grad_clip=None)
    lr = r.log["lr"].to_numpy()
    assert lr[0] == pytest.approx(0.01)               # warmup_factor * lr
    assert np.all(np.diff(lr[:5]) > 0) and lr[4] == pytest.approx(0.1)
    assert lr[6] == pytest.approx(0.01) and lr[7] == pytest.approx(0.01)


class SlowToyDetector(ToyDetector):
    """A ToyDetector whose training step takes 20 ms, so a time budget binds first."""

    def forward(self, images, targets=None):
        if self.training:
            time.sleep(0.02)
        return super().forward(images, targets)


def test_lr_drops_at_the_same_fraction_of_the_time_budget_when_that_comes_first():
    """A run the clock stops long before its step milestones still gets its decays: the
    drop at step 500 of 1000 comes at half the time budget."""
    r = train_detector(SlowToyDetector(), _loader(), iterations=1000, lr=0.1, warmup_iters=0,
                       lr_steps=[500], lr_gamma=0.1, time_budget_s=1.0, progress=False,
                       grad_clip=None)
    lr = r.log["lr"].to_numpy()
    assert r.stop_reason == "time_budget" and r.iterations < 500
    assert lr[0] == pytest.approx(0.1) and lr[-1] == pytest.approx(0.01)
    first_low = int(np.argmax(lr < 0.05))
    assert 0.3 < first_low / len(lr) < 0.7  # about half-way through the rows
    assert set(np.round(lr, 6)) == {0.1, 0.01}


def test_stages_set_lr_and_names():
    stages = [Stage("a", 2, 0.1), Stage("b", 3, 0.01)]
    r = train_detector(ToyDetector(), _loader(), stages=stages, warmup_iters=0, progress=False)
    assert r.log["stage"].tolist() == ["a", "a", "b", "b", "b"]
    assert r.log["lr"].tolist() == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.01])
    scaled = scale_stages(PAPER1_STAGES, 17)
    assert [s.iterations for s in scaled] == [5, 8, 4] and scaled[2].lr == 1e-4
    assert [s.trainable for s in PAPER1_STAGES] == ["heads", "4+", "all"]


def test_heads_stage_freezes_the_backbone_body():
    from bloodlib.models.detection import build_detector
    model = build_detector("faster_rcnn", "mobilenet_v3_large", 3, min_size=64, max_size=64,
                           fpn_channels=16, representation_size=32, box_batch_size_per_image=16)
    body_before = {k: v.clone() for k, v in model.backbone.body.state_dict().items()
                   if v.dtype.is_floating_point and "running" not in k}
    head_before = model.roi_heads.box_predictor.cls_score.weight.clone()
    img = torch.rand(3, 64, 64)
    t = {"boxes": torch.tensor([[4.0, 4, 30, 30]]), "labels": torch.tensor([1])}
    train_detector(model, [([img], [t])], stages=[Stage("heads", 2, 0.01, "heads")],
                   warmup_iters=0, progress=False)
    after = model.backbone.body.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in body_before.items())
    assert not torch.equal(head_before, model.roi_heads.box_predictor.cls_score.weight)


def test_checkpoint_and_resume(tmp_path):
    path = tmp_path / "det.pt"
    meta = {"task": "detect", "classes": ["a"]}
    model = ToyDetector()
    train_detector(model, _loader(), iterations=3, lr=0.1, warmup_iters=0, progress=False,
                   checkpoint_path=path, checkpoint_meta=meta)
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["meta"] == meta and ckpt["extra"]["step"] == 3 and len(ckpt["history"]) == 3

    resumed = ToyDetector()
    r = train_detector(resumed, _loader(), iterations=5, lr=0.1, warmup_iters=0, progress=False,
                       resume_from=path, checkpoint_path=path)
    assert r.log["step"].tolist() == [1, 2, 3, 4, 5]
    full = ToyDetector()
    train_detector(full, _loader(), iterations=5, lr=0.1, warmup_iters=0, progress=False)
    assert resumed.offset.item() == pytest.approx(full.offset.item(), rel=1e-5)
    assert torch.load(path, weights_only=True)["meta"] == meta


def test_time_budget_stops_early():
    r = train_detector(ToyDetector(), _loader(), iterations=1000, lr=0.01, time_budget_s=0.0,
                       progress=False)
    assert r.stop_reason == "time_budget" and r.iterations == 1


def test_non_finite_loss_raises():
    class Bad(ToyDetector):
        def forward(self, images, targets=None):
            return {"loss_classifier": self.offset * float("nan")}
    with pytest.raises(FloatingPointError, match="learning rate"):
        train_detector(Bad(), _loader(), iterations=2, progress=False)


def test_periodic_evaluation_keeps_the_best_weights():
    scores = iter([0.2, 0.9, 0.1, 0.0])
    seen = []

    def evaluate(m):
        seen.append(m.offset.item())
        return {"AP50": next(scores)}
    model = ToyDetector()
    r = train_detector(model, _loader(), iterations=6, lr=0.05, warmup_iters=0, progress=False,
                       evaluate=evaluate, eval_every=2)
    assert r.evals["step"].tolist() == [2, 4, 6] and r.best_step == 4
    assert model.offset.item() == pytest.approx(seen[1])  # restored to the best evaluation


def test_val_loss_leaves_batch_norm_statistics_alone():
    model = ToyDetector()
    before = model.bn.running_mean.clone()
    out = detection_val_loss(model, _loader(2))
    assert out["loss"] == pytest.approx(9.5) and "loss_box_reg" in out
    assert torch.equal(before, model.bn.running_mean)


def test_predict_and_evaluate_against_coco():
    from bloodlib.data.records import new_coco
    gt = new_coco(["cell"])
    gt["images"].append({"id": 1, "file_name": "a.png", "width": 16, "height": 16, "path": "a"})
    gt["annotations"].append({"id": 1, "image_id": 1, "category_id": 1, "bbox": [5, 5, 8, 8],
                              "area": 64, "iscrowd": 0})
    model = ToyDetector()
    preds = predict_coco(model, _loader(1))
    assert len(preds) == 2 and preds[0]["bbox"] == pytest.approx([5, 5, 8, 8])
    report = evaluate_detector(model, _loader(1), gt)
    assert report.AP50 == pytest.approx(1.0)
    with pytest.raises(ValueError, match="masks"):
        evaluate_detector(None, None, gt, "segm", predictions=preds)


def test_segm_evaluation_ranks_masks_by_mask_score():
    from bloodlib.data.convert import mask_to_rle
    from bloodlib.data.records import new_coco
    m_good = np.zeros((20, 20), np.uint8)
    m_good[2:10, 2:10] = 1
    m_bad = np.zeros((20, 20), np.uint8)
    m_bad[12:18, 12:18] = 1
    gt = new_coco(["cell"])
    gt["images"].append({"id": 1, "file_name": "a.png", "width": 20, "height": 20, "path": "a"})
    gt["annotations"].append({"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 8, 8],
                              "area": 64, "iscrowd": 0, "segmentation": mask_to_rle(m_good)})
    # the wrong mask has the higher class score, but the lower mask score
    preds = [{"image_id": 1, "category_id": 1, "bbox": [2, 2, 8, 8], "score": 0.5,
              "mask_score": 0.45, "segmentation": mask_to_rle(m_good)},
             {"image_id": 1, "category_id": 1, "bbox": [2, 2, 8, 8], "score": 0.9,
              "mask_score": 0.1, "segmentation": mask_to_rle(m_bad)}]
    by_mask = evaluate_detector(None, None, gt, "segm", predictions=preds)
    by_class = evaluate_detector(None, None, gt, "segm", predictions=preds, use_mask_scores=False)
    assert by_mask.AP50 == pytest.approx(1.0) and by_class.AP50 < 1.0


def test_transforms_flip_boxes_and_preprocess():
    from torchvision import tv_tensors
    img = tv_tensors.Image(torch.zeros(3, 10, 20))
    img[:, :, :5] = 1.0
    target = {"boxes": tv_tensors.BoundingBoxes(torch.tensor([[0.0, 0, 5, 10]]), format="XYXY",
                                                canvas_size=(10, 20))}
    tf = detection_transforms(True, hflip=1.0, vflip=0.0, preprocess=lambda a: 255 - a)
    out_img, out_t = tf(img, target)
    assert out_t["boxes"].tolist() == [[15.0, 0.0, 20.0, 10.0]]
    assert out_img[:, :, 15:].max() == 0 and out_img[:, :, :15].min() == 1  # inverted + flipped
    assert detection_transforms(False) is None
    with pytest.raises(ValueError, match="uint8"):
        Preprocess(lambda a: a.astype(np.float32))(img)


def test_stage_lr_with_warmup_and_decay_matches_the_closed_form():
    """torch's LinearLR + MultiStepLR chained, rescaled at each stage, give the schedule
    of paper 1: stage lr x gamma^(milestones passed) x linear warm-up."""
    stages = [Stage("a", 3, 0.1), Stage("b", 4, 0.01)]
    r = train_detector(ToyDetector(), _loader(), stages=stages, warmup_iters=4,
                       warmup_factor=0.1, lr_steps=(5,), lr_gamma=0.5, progress=False)

    def expected(s: int) -> float:
        stage = stages[0] if s < 3 else stages[1]
        warm = 0.1 * (1 - s / 4) + s / 4 if s < 4 else 1.0
        return stage.lr * 0.5 ** (s >= 5) * warm
    assert r.log["lr"].tolist() == pytest.approx([expected(s) for s in range(7)], rel=1e-9)
    assert r.log["stage"].tolist() == ["a"] * 3 + ["b"] * 4


def test_checkpoints_of_the_step_only_schedule_still_resume():
    """A schedule state saved before time-aware drops (LinearLR chained with MultiStepLR)
    loads: the warm-up's position is kept and the drops already in the lr are counted."""
    from types import SimpleNamespace

    from torch.optim.lr_scheduler import ChainedScheduler, LinearLR, MultiStepLR

    from bloodlib.engine.detection import StageSchedule

    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    old = ChainedScheduler([LinearLR(opt, 0.1, total_iters=4), MultiStepLR(opt, [6], 0.1)],
                           optimizer=opt)
    for _ in range(7):
        opt.step()
        old.step()
    saved = {"stage": 0, "scheduler": old.state_dict()}
    new = StageSchedule(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1),
                        [Stage("train", 10, 0.1)], 4, 0.1, [6], 0.1)
    new.load_state_dict(saved)
    assert new.scheduler.last_epoch == 7 and new.drops is None
    new.before_train(SimpleNamespace(state=SimpleNamespace(step=7)))
    assert new.drops == 1
