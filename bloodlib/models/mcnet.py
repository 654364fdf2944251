"""MCNet (paper 1, section 3): Mask R-CNN plus a mask-IoU head.

Paper 1 says the network "combines the instance feature with the matching anticipated
mask to estimate the proposed mask IoU" and calibrates mask quality against the
detection score. The text gives no layer sizes, so the head follows Mask Scoring
R-CNN (Huang et al., CVPR 2019), which this description matches:

* input: the RoI's 14x14 FPN feature (the mask branch's RoIAlign output) concatenated
  with the predicted mask of the RoI's class (28x28 probabilities, max-pooled to
  14x14; the mask enters detached so that the IoU loss does not bend the mask branch);
* four 3x3 convolutions (the last with stride 2), two fully connected layers and a
  linear output of one IoU per class;
* target: the IoU, on the 28x28 RoI grid, between the predicted binary mask (probability
  > 0.5) and the matched ground-truth mask cropped to the RoI (RoIAlign, > 0.5);
  0 when both are empty;
* loss: L2 (mean squared error) on the positive RoIs, weight ``mask_iou_loss_weight``;
* inference: ``mask_iou`` = the predicted IoU of the detected class (clamped to
  [0, 1]) and ``mask_scores`` = class score x ``mask_iou``. Boxes and class scores are
  unchanged, so box metrics are those of the underlying Mask R-CNN.

Everything else (RPN, RoIAlign, box and mask heads, NMS) is torchvision's. With
``mask_iou=False`` the model is a plain Mask R-CNN (the ablation).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.roi_heads import (RoIHeads, fastrcnn_loss, maskrcnn_inference,
                                                    maskrcnn_loss, project_masks_on_boxes)

__all__ = ["MaskIoUHead", "MaskIoURoIHeads", "MCNet", "mask_iou_targets", "mask_scores"]


class MaskIoUHead(nn.Module):
    """RoI feature (C, 14, 14) + predicted mask (28, 28) -> one IoU per class."""

    def __init__(self, in_channels: int, num_classes: int, channels: int = 256,
                 fc: int = 1024, roi_size: int = 14) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels + 1
        for i in range(4):
            layers += [nn.Conv2d(c, channels, 3, stride=2 if i == 3 else 1, padding=1),
                       nn.ReLU(inplace=True)]
            c = channels
        self.convs = nn.Sequential(*layers)
        side = (roi_size + 1) // 2
        self.fcs = nn.Sequential(nn.Linear(channels * side * side, fc), nn.ReLU(inplace=True),
                                 nn.Linear(fc, fc), nn.ReLU(inplace=True))
        self.iou = nn.Linear(fc, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.iou.weight, std=0.01)
        nn.init.zeros_(self.iou.bias)

    def forward(self, roi_features: Tensor, mask_probs: Tensor) -> Tensor:
        """``roi_features`` (N, C, S, S), ``mask_probs`` (N, 2S, 2S) -> (N, num_classes)."""
        pooled = F.max_pool2d(mask_probs[:, None], kernel_size=2, stride=2)
        x = self.convs(torch.cat([roi_features, pooled.to(roi_features.dtype)], 1))
        return self.iou(self.fcs(x.flatten(1)))


@torch.no_grad()
def mask_iou_targets(mask_logits: Tensor, proposals: list[Tensor], gt_masks: list[Tensor],
                     gt_labels: list[Tensor], matched_idxs: list[Tensor],
                     threshold: float = 0.5) -> tuple[Tensor, Tensor]:
    """IoU targets of the positive RoIs and their labels.

    ``mask_logits`` (P, K, M, M) of the positive ``proposals`` (per image, (n, 4) xyxy),
    matched to ground truth ``matched_idxs`` (per image). The predicted binary mask is
    ``sigmoid(logit of the matched class) > threshold``; the ground truth is the matched
    mask cropped and resized to the RoI (as torchvision's mask loss) ``> threshold``.
    Returns ``(iou (P,), labels (P,))``.
    """
    m = mask_logits.shape[-1]
    labels = torch.cat([l[i] for l, i in zip(gt_labels, matched_idxs)]) if proposals \
        else mask_logits.new_zeros(0, dtype=torch.int64)
    if mask_logits.shape[0] == 0:
        return mask_logits.new_zeros(0), labels
    gt = torch.cat([project_masks_on_boxes(g, p, i, m)
                    for g, p, i in zip(gt_masks, proposals, matched_idxs)]) > threshold
    idx = torch.arange(labels.shape[0], device=labels.device)
    pred = mask_logits[idx, labels].sigmoid() > threshold
    inter = (pred & gt).flatten(1).sum(1).float()
    union = (pred | gt).flatten(1).sum(1).float()
    return inter / union.clamp(min=1.0), labels


def mask_scores(class_scores: Tensor, predicted_iou: Tensor) -> Tensor:
    """Paper 1's mask score: class score x predicted mask IoU (clamped to [0, 1])."""
    return class_scores * predicted_iou.clamp(0.0, 1.0)


class MaskIoURoIHeads(RoIHeads):
    """torchvision's ``RoIHeads`` with a mask-IoU branch after the mask branch.

    Training adds ``loss_mask_iou``; inference adds ``mask_iou`` and ``mask_scores`` to
    every output dict. ``use_mask_iou=False`` skips the branch (plain Mask R-CNN).
    """

    def __init__(self, *args: Any, mask_iou_head: Optional[MaskIoUHead] = None,
                 mask_iou_loss_weight: float = 1.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.mask_iou_head = mask_iou_head
        self.mask_iou_loss_weight = float(mask_iou_loss_weight)
        self.use_mask_iou = mask_iou_head is not None

    @classmethod
    def from_roi_heads(cls, heads: RoIHeads, mask_iou_head: Optional[MaskIoUHead],
                       mask_iou_loss_weight: float = 1.0) -> "MaskIoURoIHeads":
        """The same sub-modules and settings as ``heads`` plus ``mask_iou_head``."""
        h = heads
        return cls(h.box_roi_pool, h.box_head, h.box_predictor,
                   h.proposal_matcher.high_threshold, h.proposal_matcher.low_threshold,
                   h.fg_bg_sampler.batch_size_per_image, h.fg_bg_sampler.positive_fraction,
                   h.box_coder.weights, h.score_thresh, h.nms_thresh, h.detections_per_img,
                   mask_roi_pool=h.mask_roi_pool, mask_head=h.mask_head,
                   mask_predictor=h.mask_predictor, mask_iou_head=mask_iou_head,
                   mask_iou_loss_weight=mask_iou_loss_weight)

    def forward(self, features: dict[str, Tensor], proposals: list[Tensor],
                image_shapes: list[tuple[int, int]],
                targets: Optional[list[dict[str, Tensor]]] = None
                ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        if self.has_keypoint():
            raise NotImplementedError("MaskIoURoIHeads does not support keypoints.")
        if not self.has_mask():
            return super().forward(features, proposals, image_shapes, targets)
        if self.training:
            if targets is None or any("masks" not in t for t in targets):
                raise ValueError("Training MCNet needs targets with 'masks' (instance masks); "
                                 "add them (e.g. bloodlib.autolabel.autolabel_boxes) or train "
                                 "a Faster R-CNN instead.")
            proposals, matched_idxs, labels, regression_targets = \
                self.select_training_samples(proposals, targets)
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(box_features)
        result: list[dict[str, Tensor]] = []
        losses: dict[str, Tensor] = {}
        if self.training:
            loss_cls, loss_box = fastrcnn_loss(class_logits, box_regression, labels,
                                               regression_targets)
            losses = {"loss_classifier": loss_cls, "loss_box_reg": loss_box}
            pos = [torch.where(l > 0)[0] for l in labels]
            mask_proposals = [p[i] for p, i in zip(proposals, pos)]
            pos_matched = [m[i] for m, i in zip(matched_idxs, pos)]
        else:
            boxes, scores, det_labels = self.postprocess_detections(
                class_logits, box_regression, proposals, image_shapes)
            result = [{"boxes": b, "labels": l, "scores": s}
                      for b, l, s in zip(boxes, det_labels, scores)]
            mask_proposals = [r["boxes"] for r in result]
        roi_features = self.mask_roi_pool(features, mask_proposals, image_shapes)
        mask_logits = self.mask_predictor(self.mask_head(roi_features))
        if self.training:
            gt_masks = [t["masks"] for t in targets]
            gt_labels = [t["labels"] for t in targets]
            losses["loss_mask"] = maskrcnn_loss(mask_logits, mask_proposals, gt_masks, gt_labels,
                                                pos_matched)
            if self.use_mask_iou:
                losses["loss_mask_iou"] = self._mask_iou_loss(
                    roi_features, mask_logits, mask_proposals, gt_masks, gt_labels, pos_matched)
        else:
            labels_det = [r["labels"] for r in result]
            for prob, r in zip(maskrcnn_inference(mask_logits, labels_det), result):
                r["masks"] = prob
            if self.use_mask_iou:
                self._score_masks(roi_features, mask_logits, result)
        return result, losses

    def _mask_iou_loss(self, roi_features: Tensor, mask_logits: Tensor,
                       proposals: list[Tensor], gt_masks: list[Tensor],
                       gt_labels: list[Tensor], matched: list[Tensor]) -> Tensor:
        target, labels = mask_iou_targets(mask_logits, proposals, gt_masks, gt_labels, matched)
        if target.numel() == 0:
            return sum(p.sum() for p in self.mask_iou_head.parameters()) * 0.0
        idx = torch.arange(labels.shape[0], device=labels.device)
        probs = mask_logits[idx, labels].sigmoid().detach()
        pred = self.mask_iou_head(roi_features, probs)[idx, labels]
        return self.mask_iou_loss_weight * F.mse_loss(pred.float(), target.float())

    @torch.no_grad()
    def _score_masks(self, roi_features: Tensor, mask_logits: Tensor,
                     result: list[dict[str, Tensor]]) -> None:
        labels = torch.cat([r["labels"] for r in result]) if result else None
        if labels is None or labels.numel() == 0:
            for r in result:
                r["mask_iou"] = r["scores"].new_zeros(r["scores"].shape)
                r["mask_scores"] = r["scores"].new_zeros(r["scores"].shape)
            return
        idx = torch.arange(labels.shape[0], device=labels.device)
        iou = self.mask_iou_head(roi_features, mask_logits[idx, labels].sigmoid())[idx, labels]
        iou = iou.float().clamp(0.0, 1.0)
        for r, part in zip(result, iou.split([len(r["labels"]) for r in result])):
            r["mask_iou"] = part
            r["mask_scores"] = mask_scores(r["scores"], part)


class MCNet(MaskRCNN):
    """Mask R-CNN (torchvision) whose RoI heads add paper 1's mask-IoU head.

    Takes :class:`torchvision.models.detection.MaskRCNN`'s arguments plus ``mask_iou``
    (False = no head, the ablation), ``mask_iou_channels``, ``mask_iou_fc`` and
    ``mask_iou_loss_weight``. Build it with
    ``bloodlib.models.detection.build_detector("mcnet", ...)``.
    """

    def __init__(self, backbone: nn.Module, num_classes: Optional[int] = None, *,
                 mask_iou: bool = True, mask_iou_channels: int = 256, mask_iou_fc: int = 1024,
                 mask_iou_loss_weight: float = 1.0, **kwargs: Any) -> None:
        super().__init__(backbone, num_classes, **kwargs)
        n_cls = self.roi_heads.box_predictor.cls_score.out_features
        head = MaskIoUHead(backbone.out_channels, n_cls, mask_iou_channels, mask_iou_fc,
                           roi_size=self.roi_heads.mask_roi_pool.output_size[0]) \
            if mask_iou else None
        self.roi_heads = MaskIoURoIHeads.from_roi_heads(self.roi_heads, head, mask_iou_loss_weight)
