"""Detector builders: every backbone in train and eval mode, anchors, weights, staging,
and a few training steps that reduce the loss on synthetic smears."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.utils.data import DataLoader

from bloodlib.errors import WeightsNotFoundError
from bloodlib.models.detection import (BACKBONES, PAPER2_BACKBONES, build_backbone,
                                       build_detector, cached_weights, detector_info,
                                       set_trainable_stage)

TINY = dict(min_size=64, max_size=64, fpn_channels=16, representation_size=32,
            mask_head_layers=(16,), rpn_pre_nms_top_n_train=100, rpn_post_nms_top_n_train=50,
            rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=20,
            box_batch_size_per_image=16, box_detections_per_img=10)
LOSSES = {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}


def _batch(with_masks: bool):
    masks = torch.zeros(2, 64, 64, dtype=torch.uint8)
    masks[0, 4:30, 4:30] = 1
    masks[1, 30:60, 34:62] = 1
    t = {"boxes": torch.tensor([[4.0, 4, 30, 30], [34, 30, 62, 60]]), "labels": torch.tensor([1, 2])}
    if with_masks:
        t["masks"] = masks
    return [torch.rand(3, 64, 64)], [t]


def test_paper2_backbones_and_a_light_one():
    assert set(PAPER2_BACKBONES) == {"resnet50", "resnet101", "resnet152", "resnext50_32x4d",
                                     "vgg19", "densenet121", "densenet169"}
    assert "mobilenet_v3_large" in BACKBONES


@pytest.mark.parametrize("backbone", BACKBONES)
def test_every_backbone_trains_and_predicts(backbone):
    """Mask R-CNN (a superset of Faster R-CNN) on each backbone: loss dict in train mode,
    detections in eval mode, a 5-level pyramid at strides 4..64."""
    torch.manual_seed(0)
    model = build_detector("mask_rcnn", backbone, 3, **TINY)
    assert model.backbone.strides == [4, 8, 16, 32, 64]
    assert all(len(s) > 0 for s in model.backbone.stage_names)
    model.train()
    images, targets = _batch(True)
    losses = model(images, targets)
    assert set(losses) == LOSSES | {"loss_mask"}
    assert all(torch.isfinite(v) for v in losses.values())
    model.eval()
    with torch.no_grad():
        out = model(images)[0]
    assert {"boxes", "labels", "scores", "masks"} <= set(out)
    assert out["boxes"].shape[1] == 4 and out["masks"].shape[-2:] == (64, 64)


def test_faster_rcnn_loss_keys_and_no_masks():
    model = build_detector("faster_rcnn", "mobilenet_v3_large", 3, **TINY)
    images, targets = _batch(False)
    assert set(model(images, targets)) == LOSSES
    model.eval()
    with torch.no_grad():
        assert "masks" not in model(images)[0]


def test_anchor_configuration():
    model = build_detector("faster_rcnn", "mobilenet_v3_large", 3,
                           anchor_sizes=[(8, 12), (24,), (48,), (96,), (192,)],
                           aspect_ratios=(0.8, 1.0, 1.25), **TINY)
    gen = model.rpn.anchor_generator
    assert gen.sizes[0] == (8, 12) and gen.aspect_ratios[0] == (0.8, 1.0, 1.25)
    assert model.rpn.head.cls_logits.out_channels == 6  # 2 sizes x 3 ratios on level 0 ...
    with pytest.raises(ValueError, match="levels"):
        build_detector("faster_rcnn", "mobilenet_v3_large", 3, anchor_sizes=[(16,), (32,)], **TINY)


def test_levels_subset_and_default_anchors():
    model = build_detector("faster_rcnn", "mobilenet_v3_large", 3, levels=(3, 4, 5), **TINY)
    assert model.backbone.strides == [8, 16, 32, 64]
    assert model.rpn.anchor_generator.sizes == ((32,), (64,), (128,), (256,))


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="backbone"):
        build_detector("faster_rcnn", "alexnet", 3)
    with pytest.raises(ValueError, match="detector"):
        build_detector("yolo", "resnet50", 3)
    with pytest.raises(ValueError, match="background"):
        build_detector("faster_rcnn", "mobilenet_v3_large", 1, **TINY)
    with pytest.raises(ValueError, match="levels"):
        build_backbone("mobilenet_v3_large", levels=(1, 2))


def test_pretrained_weights_only_from_the_local_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty hub cache
    assert cached_weights("mobilenet_v3_large") is None
    with pytest.raises(WeightsNotFoundError, match="hub cache"):
        build_detector("faster_rcnn", "mobilenet_v3_large", 3, pretrained_backbone=True, **TINY)
    with pytest.warns(UserWarning, match="from scratch"):
        model = build_detector("faster_rcnn", "mobilenet_v3_large", 3,
                               pretrained_backbone="auto", **TINY)
    assert model.backbone_pretrained is False
    # from scratch every backbone layer trains and batch norms are ordinary ones
    assert all(p.requires_grad for p in model.backbone.parameters())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.backbone.modules())


def test_staged_training_switches_trainable_layers():
    model = build_detector("faster_rcnn", "resnet50", 3, **TINY)
    body = model.backbone.body
    set_trainable_stage(model, "heads")
    assert not any(p.requires_grad for p in body.parameters())
    assert all(p.requires_grad for p in model.backbone.fpn.parameters())
    assert all(p.requires_grad for p in model.roi_heads.parameters())
    set_trainable_stage(model, "4+")  # ResNet stage 4 = layer3, stage 5 = layer4
    assert all(p.requires_grad for p in body["layer3"].parameters())
    assert all(p.requires_grad for p in body["layer4"].parameters())
    assert not any(p.requires_grad for n in ("conv1", "layer1", "layer2")
                   for p in body[n].parameters())
    counts = set_trainable_stage(model, "all")
    assert counts["frozen"] == 0
    with pytest.raises(ValueError, match="stage"):
        set_trainable_stage(model, "3")


def test_detector_info_rebuilds_the_same_architecture():
    model = build_detector("mcnet", "mobilenet_v3_large", 4, mask_iou_channels=8,
                           mask_iou_fc=16, **TINY)
    info = detector_info(model)
    clone = build_detector(**info)
    clone.load_state_dict(model.state_dict())  # same parameter names and shapes
    assert info["kind"] == "mcnet" and info["num_classes"] == 4


def test_a_few_steps_reduce_the_loss_on_synthetic_smears(tmp_path):
    from bloodlib.data.datasets import DetectionDataset, collate_detection
    from bloodlib.data.synthetic import write_detection_set
    from bloodlib.engine.detection import train_detector

    coco = write_detection_set(tmp_path / "smears", 2, seed=3, height=96, width=120)
    loader = DataLoader(DetectionDataset(coco), batch_size=2, collate_fn=collate_detection)
    torch.manual_seed(0)
    model = build_detector("faster_rcnn", "mobilenet_v3_large", 4, min_size=96, max_size=120,
                           fpn_channels=32, representation_size=64,
                           rpn_post_nms_top_n_train=200, box_batch_size_per_image=64)
    result = train_detector(model, loader, iterations=10, lr=0.01, warmup_iters=2,
                            progress=False)
    loss = result.log["loss"].to_numpy()
    assert len(loss) == 10
    assert loss[-3:].mean() < 0.85 * loss[:3].mean()


@pytest.mark.parametrize("kind", ["faster_rcnn", "mask_rcnn", "mcnet"])
def test_efficientnet_lite_fpn_detectors_start_from_imagenet(kind, tmp_path):
    """Issue 23: an FPN on the pretrained EfficientNet-Lite0 feature maps, frozen batch
    norm, the TensorFlow normalisation in the detector's transform; it trains one step,
    and rebuilds from the store with the same normalisation."""
    import numpy as np

    from bloodlib.inference.detection import DetectorPredictor, detector_meta
    from bloodlib.inference.store import save_model
    from bloodlib.models.pretrained import lite_state_dict
    model = build_detector(kind, "efficientnet_lite0", num_classes=4, min_size=128, max_size=128,
                           pretrained_backbone=True)
    assert model.backbone_pretrained and model.transform.image_mean == [0.5, 0.5, 0.5]
    stem = model.backbone.body["stem"][0].weight
    assert torch.equal(stem, lite_state_dict("efficientnet_lite0")["conv_stem.weight"])
    assert not stem.requires_grad  # trainable_layers=3 by default with ImageNet weights
    frozen = [m for m in model.backbone.body.modules() if "Frozen" in type(m).__name__]
    assert frozen and not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.backbone.body.modules())
    model.train()
    target = {"boxes": torch.tensor([[10.0, 10.0, 60.0, 60.0]]), "labels": torch.tensor([1]),
              "masks": torch.zeros(1, 128, 128, dtype=torch.uint8)}
    losses = model([torch.rand(3, 128, 128)], [target])
    sum(losses.values()).backward()
    meta = detector_meta(model, ["WBC", "RBC", "Platelets"])
    assert meta["preprocessing"]["model_normalization"]["mean"] == [0.5, 0.5, 0.5]
    path = save_model(model.eval(), "lite-det", meta, folder=tmp_path)
    predictor = DetectorPredictor.from_checkpoint(path)
    assert predictor.model.transform.image_mean == [0.5, 0.5, 0.5]
    image = (np.random.default_rng(0).random((128, 128, 3)) * 255).astype(np.uint8)
    predictor.predict(image)


def test_r_mask_rcnn_on_efficientnet_lite():
    from bloodlib.models.pretrained import lite_state_dict
    from bloodlib.models.rmaskrcnn import build_plain_maskrcnn, build_rmaskrcnn
    for build in (build_rmaskrcnn, build_plain_maskrcnn):
        model = build(1, backbone="efficientnet_lite0", pretrained_backbone=True, image_size=128)
        assert model.transform.image_std == [0.5, 0.5, 0.5]
        stem = dict(model.backbone.body.named_parameters())["stem.0.weight"]
        assert torch.equal(stem, lite_state_dict("efficientnet_lite0")["conv_stem.weight"])
        model.eval()
        out = model([torch.rand(3, 128, 128)])[0]
        assert set(out) >= {"boxes", "masks", "scores"}
