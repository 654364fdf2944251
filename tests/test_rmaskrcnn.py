"""R-Mask R-CNN: FPN-AM / B-U-AM variants (output keys and sizes), the multi-scale mask
head, anchors, and tiny train/eval forward passes."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from bloodlib.models.attention import ChannelAttention, SpatialAttention
from bloodlib.models.rmaskrcnn import (AttentionFPN, FusedPyramidRoIAlign, MultiLevelRoIAlign,
                                       MultiScaleMaskHead, attention_maps, backbone_body,
                                       build_plain_maskrcnn, build_rmaskrcnn, variant_name)
from bloodlib.errors import WeightsNotFoundError

SMALL = dict(image_size=64, fpn_channels=32, mask_channels=16, rpn_pre_nms_top_n_train=50,
             rpn_post_nms_top_n_train=20, rpn_pre_nms_top_n_test=50, rpn_post_nms_top_n_test=20,
             box_batch_size_per_image=16, representation_size=32)


def _feats(channels=(8, 16, 24, 32), size=32):
    return OrderedDict((str(i), torch.randn(1, c, size >> i, size >> i)) for i, c in enumerate(channels))


@pytest.mark.parametrize("attention", ["none", "ca", "sa", "ca_sa", "sa_ca"])
@pytest.mark.parametrize("bottom_up", [False, True])
def test_fpn_variants_keys_and_sizes(attention, bottom_up):
    fpn = AttentionFPN([8, 16, 24, 32], 16, attention, bottom_up)
    out = fpn(_feats())
    assert list(out) == ["0", "1", "2", "3", "pool"]
    assert [tuple(v.shape) for v in out.values()] == [(1, 16, 32, 32), (1, 16, 16, 16),
                                                      (1, 16, 8, 8), (1, 16, 4, 4), (1, 16, 2, 2)]
    n_att = sum(isinstance(m, (ChannelAttention, SpatialAttention)) for m in fpn.modules())
    per_level = {"none": 0, "ca": 1, "sa": 1, "ca_sa": 2, "sa_ca": 2}[attention]
    assert n_att == per_level * (4 + (3 if bottom_up else 0))


def test_bottom_up_changes_upper_levels_only():
    torch.manual_seed(0)
    fpn = AttentionFPN([8, 16, 24, 32], 16, "none", bottom_up=True)
    feats = _feats()
    f = fpn.top_down(list(feats.values()))
    n = fpn.bottom_up_path(f)
    assert torch.equal(n[0], f[0]) and not torch.allclose(n[3], f[3])


def test_backbone_levels_at_strides_4_to_32():
    body, channels = backbone_body("mobilenet_v3_large")
    out = body(torch.rand(1, 3, 64, 64))
    assert channels == [24, 40, 112, 960]
    assert [v.shape[-1] for v in out.values()] == [16, 8, 4, 2]
    with pytest.raises(ValueError, match="Unknown backbone"):
        backbone_body("vgg16")


def test_pretrained_backbone_needs_cached_weights(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(WeightsNotFoundError, match="never"):
        backbone_body("resnet18", pretrained=True)


def test_auto_pretrained_falls_back_to_scratch_with_a_warning_and_uses_cached_weights(
        monkeypatch, tmp_path):
    """``"auto"`` (the full profile's choice) trains from scratch, saying so, when the
    torchvision file is missing, loads it when it is in the hub cache, and the built model
    says which happened."""
    import torchvision
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.warns(UserWarning, match="training from scratch"):
        body, _ = backbone_body("resnet18", pretrained="auto")
    assert body.pretrained is False
    state = torchvision.models.resnet18(weights=None).state_dict()
    state["fc.bias"] = torch.full_like(state["fc.bias"], 0.25)  # recognisable
    file = tmp_path / "checkpoints" / Path(
        torchvision.models.ResNet18_Weights.DEFAULT.url).name
    file.parent.mkdir(parents=True)
    torch.save(state, file)
    model = build_plain_maskrcnn(1, backbone="resnet18", pretrained_backbone="auto",
                                 image_size=64, fpn_channels=32, mask_channels=32)
    assert model.backbone_pretrained is True
    assert build_rmaskrcnn(1, pretrained_backbone=False, image_size=64, fpn_channels=32,
                           mask_channels=32).backbone_pretrained is False
    with pytest.raises(ValueError, match="'auto'"):
        backbone_body("resnet18", pretrained="imagenet")


def test_multilevel_roi_align_and_mask_head():
    feats = _feats((16, 16, 16, 16), 32)
    boxes = [torch.tensor([[0.0, 0.0, 40.0, 40.0], [10.0, 20.0, 90.0, 100.0]])]
    pooled = MultiLevelRoIAlign(output_size=14)(feats, boxes, [(128, 128)])
    assert pooled.shape == (2, 4, 16, 14, 14)
    head = MultiScaleMaskHead(16, 4, 8)
    assert head(pooled).shape == (2, 8, 14, 14)
    assert head(pooled[:0]).shape == (0, 8, 14, 14)


def test_fused_pyramid_roi_align_and_mask_head():
    feats = _feats((16, 16, 16, 16), 32)
    boxes = [torch.tensor([[0.0, 0.0, 40.0, 40.0], [10.0, 20.0, 90.0, 100.0]])]
    pool = FusedPyramidRoIAlign(16, 8, output_size=14)
    pooled = pool(feats, boxes, [(128, 128)])
    assert pooled.shape == (2, 8, 14, 14)
    head = MultiScaleMaskHead(8, 4, 8, fusion="map")
    assert head(pooled).shape == (2, 8, 14, 14) and not hasattr(head, "levels")
    with pytest.raises(ValueError, match="mask fusion"):
        MultiScaleMaskHead(8, 4, 8, fusion="sum")


def _full_resolution_convs(head):
    """3x3 convolutions of ``head`` that keep the RoI resolution (stride 1), in order."""
    return [m for name, m in head.named_modules() if isinstance(m, torch.nn.Conv2d)
            and m.kernel_size == (3, 3) and m.stride == (1, 1) and not name.startswith("down")]


@pytest.mark.parametrize("fusion", ["roi", "map"])
def test_mask_head_depth(fusion):
    shallow = MultiScaleMaskHead(8, 4, 8, fusion=fusion)
    deep = MultiScaleMaskHead(8, 4, 8, fusion=fusion, depth=2)
    # depth 1: enc + dec; depth 2: two each, as many at RoI resolution as torchvision's head
    per_level = 4 if fusion == "roi" else 0
    assert len(_full_resolution_convs(shallow)) == per_level + 2
    assert len(_full_resolution_convs(deep)) == per_level + 4
    x = torch.randn(3, 4, 8, 14, 14) if fusion == "roi" else torch.randn(3, 8, 14, 14)
    assert deep(x).shape == shallow(x).shape == (3, 8, 14, 14)
    # depth 1 keeps the parameter names of models saved before the knob existed
    assert "enc.0.weight" in shallow.state_dict() and "enc.1.0.weight" in deep.state_dict()
    with pytest.raises(ValueError, match="depth must be >= 1"):
        MultiScaleMaskHead(8, 4, 8, depth=0)


def test_fused_pooling_sums_the_levels():
    """Identity 1x1 convolutions on constant levels: every pooled value is the levels' sum,
    the same as pooling each level and adding (both steps are linear)."""
    feats = OrderedDict((str(i), torch.full((1, 4, 32 >> i, 32 >> i), float(i + 1)))
                        for i in range(4))
    pool = FusedPyramidRoIAlign(4, 4, output_size=7)
    with torch.no_grad():
        for conv in pool.levels:
            conv.weight.copy_(torch.eye(4).reshape(4, 4, 1, 1))
    boxes = [torch.tensor([[8.0, 8.0, 100.0, 60.0]])]
    fused = pool(feats, boxes, [(128, 128)])
    per_level = MultiLevelRoIAlign(output_size=7)(feats, boxes, [(128, 128)]).sum(dim=1)
    assert torch.allclose(fused, torch.full_like(fused, 10.0))
    assert torch.allclose(fused, per_level)


def _batch():
    imgs = [torch.rand(3, 64, 64) for _ in range(2)]
    masks = torch.zeros(2, 64, 64, dtype=torch.uint8)
    masks[0, 5:25, 8:30] = 1
    masks[1, 35:60, 30:55] = 1
    tg = {"boxes": torch.tensor([[8.0, 5, 30, 25], [30.0, 35, 55, 60]]),
          "labels": torch.tensor([1, 1]), "masks": masks}
    return imgs, [tg, tg]


@pytest.mark.parametrize("kwargs", [dict(), dict(mask_fusion="map"),
                                    dict(mask_fusion="map", mask_head_depth=2),
                                    dict(attention="sa", bottom_up=False,
                                         multiscale_mask_head=False)])
def test_rmaskrcnn_train_and_eval_forward(kwargs):
    torch.manual_seed(0)
    model = build_rmaskrcnn(1, **kwargs, **SMALL)
    imgs, targets = _batch()
    model.train()
    losses = model(imgs, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness",
                           "loss_rpn_box_reg"}
    sum(losses.values()).backward()
    assert 0.5 < losses["loss_mask"].item() < 0.9  # small initial mask logits: ~ln 2
    model.eval()
    with torch.no_grad():
        out = model(imgs)
    assert len(out) == 2 and set(out[0]) == {"boxes", "labels", "scores", "masks"}
    assert out[0]["masks"].shape[1:] == (1, 64, 64)
    assert model.transform.min_size == (64,) and model.bloodlib_config["architecture"] == "rmaskrcnn"
    assert model.bloodlib_config["mask_fusion"] == kwargs.get("mask_fusion", "roi")
    assert model.bloodlib_config["mask_head_depth"] == kwargs.get("mask_head_depth", 1)
    with pytest.raises(ValueError, match="mask_fusion"):
        build_rmaskrcnn(1, mask_fusion="sum", **SMALL)


def test_plain_maskrcnn_and_anchors():
    model = build_plain_maskrcnn(1, **SMALL)
    assert not any(isinstance(m, (ChannelAttention, SpatialAttention)) for m in model.modules())
    gen = model.rpn.anchor_generator
    assert gen.sizes == ((16,), (32,), (64,), (128,), (256,))
    assert all(r == (0.5, 1.0, 2.0) for r in gen.aspect_ratios)
    imgs, targets = _batch()
    model.train()
    assert torch.isfinite(sum(model(imgs, targets).values()))
    assert variant_name("ca_sa", True, True) == "FPN-CA-SA + B-U + MS head"
    assert variant_name("none", False, False) == "FPN"


def test_attention_maps_sum_to_one():
    model = build_rmaskrcnn(1, attention="ca_sa", bottom_up=True, **SMALL)
    maps = attention_maps(model, torch.rand(3, 64, 64))
    assert len(maps) == 2 * 7
    ca = maps["fpn.fpn_attention.0.0"]
    sa = maps["fpn.fpn_attention.0.1"]
    assert ca.shape == (32,) and sa.shape == (16, 16)
    assert torch.isclose(ca.sum(), torch.tensor(1.0)) and torch.isclose(sa.sum(), torch.tensor(1.0))


def test_attention_options_reach_every_module():
    from bloodlib.models.attention import attention_modules
    from bloodlib.models.rmaskrcnn import build_rmaskrcnn
    model = build_rmaskrcnn(1, image_size=128, fpn_channels=32, mask_channels=32,
                            residual_attention=True, attention_logit_bound=1.5)
    modules = attention_modules(model.backbone)
    assert len(modules) == 2 * (4 + 3)  # CA and SA after F2..F5 and N3..N5
    assert all(m.residual and m.logit_bound == 1.5 for m in modules.values())
    assert model.bloodlib_config["residual_attention"] is True
    assert model.bloodlib_config["attention_logit_bound"] == 1.5
