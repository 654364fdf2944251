"""MCNet's mask-IoU head: its regression target, its scoring, and the ablation switch."""

from __future__ import annotations

import pytest
import torch

from bloodlib.models.detection import build_detector
from bloodlib.models.mcnet import MaskIoUHead, MaskIoURoIHeads, mask_iou_targets, mask_scores

TINY = dict(min_size=64, max_size=96, fpn_channels=16, representation_size=32,
            mask_head_layers=(16,), mask_iou_channels=8, mask_iou_fc=16,
            rpn_pre_nms_top_n_train=100, rpn_post_nms_top_n_train=50,
            rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=50,
            box_batch_size_per_image=32, box_detections_per_img=20)


def _targets():
    masks = torch.zeros(2, 64, 80, dtype=torch.uint8)
    masks[0, 8:40, 8:40] = 1
    masks[1, 20:60, 44:76] = 1
    return [{"boxes": torch.tensor([[8.0, 8, 40, 40], [44, 20, 76, 60]]),
             "labels": torch.tensor([1, 2]), "masks": masks}]


def test_target_is_iou_of_thresholded_prediction_with_matched_mask():
    # one image, the GT mask fills its box; the RoI is the box itself
    gt = torch.zeros(1, 32, 32, dtype=torch.uint8)
    gt[0, 0:32, 0:32] = 1
    proposals = [torch.tensor([[0.0, 0, 32, 32], [0.0, 0, 32, 32], [0.0, 0, 32, 32]])]
    logits = torch.full((3, 3, 28, 28), -5.0)
    logits[0, 1] = 5.0                      # class 1 everywhere -> IoU 1
    logits[1, 1, :, :14] = 5.0              # left half -> IoU 0.5
    logits[2, 2] = 5.0                      # only the wrong class is on -> IoU 0
    iou, labels = mask_iou_targets(logits, proposals, [gt], [torch.tensor([1])],
                                   [torch.tensor([0, 0, 0])])
    assert labels.tolist() == [1, 1, 1]
    assert iou.tolist() == pytest.approx([1.0, 0.5, 0.0], abs=1e-6)


def test_target_uses_the_matched_instance_and_empty_is_zero():
    gt = torch.zeros(2, 32, 32, dtype=torch.uint8)
    gt[0, :, :16] = 1                       # instance 0: left half of the image
    gt[1, :, 16:] = 1                       # instance 1: right half
    proposals = [torch.tensor([[0.0, 0, 32, 32], [0.0, 0, 32, 32]])]
    logits = torch.full((2, 2, 28, 28), -5.0)
    logits[0, 1, :, :14] = 5.0              # predicts the left half
    iou, _ = mask_iou_targets(logits, proposals, [gt], [torch.tensor([1, 1])],
                              [torch.tensor([0, 1])])
    assert iou[0] == pytest.approx(1.0)     # matched to instance 0 (left)
    assert iou[1] == pytest.approx(0.0)     # empty prediction vs right half


def test_mask_score_is_class_score_times_clamped_iou():
    scores = torch.tensor([0.9, 0.5, 0.8])
    iou = torch.tensor([0.5, 1.3, -0.2])
    assert mask_scores(scores, iou).tolist() == pytest.approx([0.45, 0.5, 0.0])


def test_head_shapes():
    head = MaskIoUHead(16, 5, channels=8, fc=16)
    out = head(torch.randn(3, 16, 14, 14), torch.rand(3, 28, 28))
    assert out.shape == (3, 5)


def test_mcnet_trains_end_to_end_and_scores_masks():
    torch.manual_seed(0)
    model = build_detector("mcnet", "mobilenet_v3_large", 3, **TINY)
    assert isinstance(model.roi_heads, MaskIoURoIHeads)
    assert model.roi_heads.score_thresh == pytest.approx(0.05)  # torchvision settings kept
    model.train()
    losses = model([torch.rand(3, 64, 80)], _targets())
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness",
                           "loss_rpn_box_reg", "loss_mask_iou"}
    model.zero_grad()
    losses["loss_mask_iou"].backward()
    head_grad = sum(p.grad.abs().sum() for p in model.roi_heads.mask_iou_head.parameters()
                    if p.grad is not None)
    assert head_grad > 0
    # the RoI features carry the IoU loss back into the backbone (end to end) ...
    fpn_grad = [p.grad for p in model.backbone.fpn.parameters() if p.grad is not None]
    assert fpn_grad and sum(g.abs().sum() for g in fpn_grad) > 0
    # ... but the predicted mask enters detached, so the mask predictor gets nothing
    assert all(p.grad is None or p.grad.abs().sum() == 0
               for p in model.roi_heads.mask_predictor.parameters())

    model.eval()
    model.roi_heads.score_thresh = 0.0
    with torch.no_grad():
        out = model([torch.rand(3, 64, 80)])[0]
    assert {"boxes", "labels", "scores", "masks", "mask_iou", "mask_scores"} <= set(out)
    assert len(out["mask_iou"]) == len(out["scores"]) > 0
    assert (out["mask_iou"] >= 0).all() and (out["mask_iou"] <= 1).all()
    assert torch.allclose(out["mask_scores"], out["scores"] * out["mask_iou"])


def test_ablation_switch_removes_the_head():
    model = build_detector("mcnet", "mobilenet_v3_large", 3, mask_iou=False, **TINY)
    assert model.roi_heads.mask_iou_head is None
    model.train()
    losses = model([torch.rand(3, 64, 80)], _targets())
    assert "loss_mask_iou" not in losses and "loss_mask" in losses
    model.eval()
    with torch.no_grad():
        out = model([torch.rand(3, 64, 80)])[0]
    assert "mask_scores" not in out and "masks" in out


def test_training_without_masks_is_a_clear_error():
    model = build_detector("mcnet", "mobilenet_v3_large", 3, **TINY)
    model.train()
    t = _targets()
    del t[0]["masks"]
    with pytest.raises(ValueError, match="masks"):
        model([torch.rand(3, 64, 80)], t)
