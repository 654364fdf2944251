"""Segmentation models: shapes (incl. 120x120 and odd sizes), WCSegNet structure, gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bloodlib.models import (SEGMENTATION_MODELS, ConvBlock, UNet, WCSegNet,
                             build_segmentation_model, count_parameters, model_summary)

torch.set_num_threads(1)
FAST = [n for n in SEGMENTATION_MODELS if n != "deeplabv3plus"]


@pytest.mark.parametrize("name", FAST)
@pytest.mark.parametrize("size", [(120, 120), (37, 53)])
def test_shapes(name, size):
    torch.manual_seed(0)
    model = build_segmentation_model(name, num_classes=4, width=0.125)
    out = model(torch.rand(2, 3, *size))
    assert out.shape == (2, 4, *size)


def test_deeplabv3plus_any_size_no_download():
    model = build_segmentation_model("deeplabv3plus", 3, width=0.25, encoder_name="resnet18")
    assert model(torch.rand(2, 3, 50, 70)).shape == (2, 3, 50, 70)
    with pytest.raises(ValueError, match="encoder_weights"):
        build_segmentation_model("deeplabv3plus", 3, encoder_weights="imagenet")


def test_unknown_name_lists_valid():
    with pytest.raises(ValueError, match="wcsegnet"):
        build_segmentation_model("segnet", 2)


def test_unet_options():
    relu = UNet(num_classes=3, base_channels=8, activation="relu")
    leaky = UNet(num_classes=3, base_channels=8, activation="leaky_relu", negative_slope=0.2)
    assert not any(isinstance(m, nn.LeakyReLU) for m in relu.modules())
    assert {m.negative_slope for m in leaky.modules() if isinstance(m, nn.LeakyReLU)} == {0.2}
    no_bn = UNet(base_channels=8, batch_norm=False)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in no_bn.modules())
    with pytest.raises(ValueError):
        UNet(activation="gelu")


def test_wcsegnet_paper_structure():
    model = WCSegNet(width=1.0)
    blocks = [m for m in model.modules() if isinstance(m, ConvBlock)]
    assert len(blocks) == 18  # 8 encoder + 2 bottleneck + 8 decoder
    assert [b.conv2.out_channels for b in blocks] == (
        [64] * 2 + [128] * 2 + [256] * 2 + [512] * 2 + [1024] * 2
        + [512] * 2 + [256] * 2 + [128] * 2 + [64] * 2)
    assert sum(isinstance(m, nn.Dropout) for m in model.modules()) == 4  # enc, 2 dec, head
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 1  # head only
    assert model.classifier.out_channels == 4 and model.classifier.kernel_size == (1, 1)
    n = count_parameters(model)
    print(f"WCSegNet width=1.0: {n:,} parameters")
    assert 60e6 < n < 70e6


def test_wcsegnet_width_scales_filters():
    model = WCSegNet(width=0.25)
    widths = sorted({b.conv2.out_channels for b in model.modules() if isinstance(b, ConvBlock)})
    assert widths == [16, 32, 64, 128, 256]


def test_wcsegnet_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = WCSegNet(width=0.125)
    out = model(torch.rand(2, 3, 48, 48))
    nn.functional.cross_entropy(out, torch.randint(0, 4, (2, 48, 48))).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_model_summary_table():
    text = model_summary(build_segmentation_model("unet_relu", 2, width=0.125), (3, 32, 32))
    assert "head" in text and "1x2x32x32" in text and "total params" in text


def test_lite_unet_has_an_imagenet_encoder_and_any_input_size(tmp_path):
    """Issue 23: a U-Net on the EfficientNet-Lite0 encoder, its ImageNet weights loaded,
    the TensorFlow normalisation inside, through the store and the predictor."""
    import numpy as np

    from bloodlib.experiments import wbc_segmentation as wcs
    from bloodlib.inference.store import load_predictor, read_meta, save_model
    from bloodlib.models.pretrained import lite_state_dict
    from bloodlib.config import get_config
    settings = get_config("wcsegnet", "quick", width=0.25, image_size=64)
    model = wcs.build_model("lite_unet", settings)
    encoder = model.model.model.encoder.model
    assert model.pretrained_loaded and model.normalization["std"] == (0.5, 0.5, 0.5)
    assert torch.equal(encoder.conv_stem.weight, lite_state_dict("efficientnet_lite0")["conv_stem.weight"])
    assert model(torch.rand(1, 3, 120, 120)).shape == (1, 4, 120, 120)
    scratch = wcs.build_model("lite_unet", get_config("wcsegnet", "quick", pretrained=False))
    assert not scratch.pretrained_loaded
    meta = wcs.checkpoint_meta("lite_unet", settings)
    assert meta["preprocessing"]["model_normalization"]["mean"] == [0.5] * 3
    path = save_model(model.eval(), "lite-unet", meta, folder=tmp_path)
    assert read_meta(path)["preprocessing"]["pretrained"] is True
    image = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    assert load_predictor(path).predict(image).class_map.shape == (64, 64)
