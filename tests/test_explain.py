"""Grad-CAM (pytorch-grad-cam) maps and overlays."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from bloodlib.explain import grad_cam, overlay_cam
from bloodlib.models.classifiers import build_classifier


def _model(name):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return build_classifier(name, 4, in_size=48)


@pytest.mark.parametrize("name", ["cnn", "resnet18", "hybrid_resnet18", "densenet121"])
def test_grad_cam_shape_range_and_mode(name):
    model = _model(name).train()
    x = torch.rand(3, 3, 48, 48)
    maps = grad_cam(model, x)
    assert maps.shape == (3, 48, 48) and maps.dtype == np.float32
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    assert model.training  # mode restored
    assert maps.reshape(3, -1).max(1).min() > 0  # each map highlights something


def test_grad_cam_follows_the_evidence():
    """Channel 0 sees red, channel 1 green; class 1's score is channel 0's mean, class 0's
    channel 1's. A red top-left and a green bottom-right square: each class's map must
    light up its own square only."""

    class TwoColours(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 1, bias=False)
            with torch.no_grad():
                self.conv.weight.zero_()
                self.conv.weight[0, 0] = 1.0
                self.conv.weight[1, 1] = 1.0

        def forward(self, x):
            f = torch.relu(self.conv(x)).mean((2, 3))
            return torch.stack([f[:, 1], f[:, 0]], 1)

    model = TwoColours()
    x = torch.zeros(1, 3, 16, 16)
    x[0, 0, :8, :8] = 1.0
    x[0, 1, 8:, 8:] = 1.0
    red = grad_cam(model, x, target_classes=[1], layer=model.conv)[0]
    green = grad_cam(model, x, target_classes=[0], layer=model.conv)[0]
    assert red[:8, :8].mean() > 0.9 and red[8:, 8:].max() < 0.1
    assert green[8:, 8:].mean() > 0.9 and green[:8, :8].max() < 0.1


def test_grad_cam_bad_input():
    model = _model("cnn")
    with pytest.raises(ValueError, match="N, C, H, W"):
        grad_cam(model, torch.rand(3, 48, 48))
    with pytest.raises(ValueError, match="target classes"):
        grad_cam(model, torch.rand(2, 3, 48, 48), target_classes=[0])


def test_overlay_cam():
    img = np.full((20, 30, 3), 128, np.uint8)
    cam = np.zeros((20, 30), np.float32)
    cam[:, :15] = 1.0
    out = overlay_cam(img, cam)
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8
    assert not np.array_equal(out[:, :15], out[:, 15:])  # hot half differs from the cold half
    with pytest.raises(ValueError, match="differ in size"):
        overlay_cam(img, np.zeros((10, 10), np.float32))
