"""Cell classifiers: shapes, ImageNet-weights handling, shape features, and learning."""

from __future__ import annotations

import warnings

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from bloodlib.data.synthetic import make_cell_crop
from bloodlib.models.classifiers import (CLASSIFIERS, SHAPE_FEATURE_NAMES, HybridClassifier,
                                         PaperCNN, build_classifier, cam_layer, segment_cell,
                                         shape_features, shape_features_batch, weights_in_cache)


def _build(name, k=5, size=48, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return build_classifier(name, k, in_size=size, **kw)


@pytest.mark.parametrize("name", ["cnn", "resnet18", "resnet50", "densenet121",
                                  "hybrid_resnet18", "hybrid_cnn"])
def test_output_shape_every_architecture(name):
    model = _build(name, k=5).eval()
    with torch.no_grad():
        out = model(torch.rand(3, 3, 48, 48))
    assert out.shape == (3, 5) and torch.isfinite(out).all()
    assert isinstance(cam_layer(model), nn.Module)


def test_every_registered_name_builds():
    for name in CLASSIFIERS:
        model = _build(name, k=3)
        assert model.head[-1].out_features == 3
        assert isinstance(model, HybridClassifier) == name.startswith("hybrid_")


def test_unknown_name_and_bad_class_count():
    with pytest.raises(ValueError, match="Unknown classifier"):
        build_classifier("vgg99", 3)
    with pytest.raises(ValueError, match="at least 2"):
        build_classifier("cnn", 1)


def test_small_input_removes_first_pooling():
    small = _build("resnet18", size=64)
    assert isinstance(small.backbone.maxpool, nn.Identity)
    big = _build("resnet18", size=224)
    assert isinstance(big.backbone.maxpool, nn.MaxPool2d)
    forced = _build("resnet18", size=64, small_input=False)
    assert isinstance(forced.backbone.maxpool, nn.MaxPool2d)
    dense = _build("densenet121", size=64)
    assert isinstance(dense.backbone.features.pool0, nn.Identity)


def test_plain_cnn_is_stacked_conv_pool_then_fully_connected():
    net = PaperCNN((8, 16, 32), convs_per_block=1, hidden=20)
    kinds = [type(m).__name__ for m in net.features]
    assert kinds.count("Conv2d") == 3 and kinds.count("MaxPool2d") == 3
    assert net(torch.rand(2, 3, 40, 40)).shape == (2, 20)  # the hidden FC layer's output
    model = _build("cnn", k=4, width=0.25)
    assert model.head[-1].in_features == model.feature_dim == 256


def test_pretrained_without_cached_weights_warns_and_trains_from_scratch(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    assert weights_in_cache("resnet18") is None
    with pytest.warns(UserWarning, match="FROM SCRATCH"):
        model = build_classifier("resnet18", 3, pretrained=True, in_size=64)
    assert model.pretrained_loaded is False


def test_pretrained_uses_the_torch_hub_cache(tmp_path, monkeypatch):
    """A weights file already in the hub cache is loaded (never downloaded)."""
    import torchvision
    from torchvision.models import get_weight

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    fake = torchvision.models.resnet18(num_classes=1000)
    with torch.no_grad():
        fake.conv1.weight.fill_(0.125)
    name = get_weight("ResNet18_Weights.IMAGENET1K_V1").url.rsplit("/", 1)[-1]
    (tmp_path / "checkpoints").mkdir()
    torch.save(fake.state_dict(), tmp_path / "checkpoints" / name)
    assert weights_in_cache("resnet18") is not None
    model = build_classifier("resnet18", 3, pretrained=True, in_size=224)
    assert model.pretrained_loaded is True
    assert torch.all(model.backbone.conv1.weight == 0.125)
    assert model(torch.rand(1, 3, 64, 64)).shape == (1, 3)


def test_models_take_unit_range_inputs_and_normalise_inside():
    model = _build("resnet18", k=3)
    x = torch.full((1, 3, 8, 8), 0.5)
    z = model.normalize(x)
    assert torch.allclose(z[0, :, 0, 0], (0.5 - model.normalize.mean.view(3))
                          / model.normalize.std.view(3))


# ----------------------------------------------------------------------------- shape features
def _disc(size=64, radius=14, lobes=1):
    img = np.full((size, size, 3), (235, 225, 215), np.uint8)
    centres = [(size // 2, size // 2)] if lobes == 1 else \
        [(size // 2 - 10, size // 2), (size // 2 + 10, size // 2)]
    for c in centres:
        cv2.circle(img, c, radius if lobes == 1 else 7, (120, 60, 170), -1)
    return img


def test_segment_cell_finds_the_centred_stained_cell():
    img = _disc()
    cv2.circle(img, (4, 4), 4, (120, 60, 170), -1)  # a stained speck at the border
    mask = segment_cell(img)
    assert mask.dtype == np.uint8 and mask[32, 32] == 1
    assert mask[4, 4] == 0  # off-centre parts are dropped
    assert abs(int(mask.sum()) - np.pi * 14 ** 2) < 0.1 * np.pi * 14 ** 2


def test_shape_features_of_a_disc_and_of_two_lobes():
    disc = shape_features(_disc())
    assert disc.shape == (len(SHAPE_FEATURE_NAMES),) and np.isfinite(disc).all()
    named = dict(zip(SHAPE_FEATURE_NAMES, disc))
    assert named["solidity"] > 0.95 and named["circularity"] > 0.8
    assert named["components"] == 1 and named["elongation"] < 0.1
    two = dict(zip(SHAPE_FEATURE_NAMES, shape_features(_disc(lobes=2))))
    assert two["components"] == 2 and two["elongation"] > 0.3 and two["solidity"] < 0.9


def test_hu_moments_are_rotation_invariant():
    img, _ = make_cell_crop("neutrophil", seed=3, size=64)
    a, b = shape_features(img), shape_features(np.ascontiguousarray(np.rot90(img)))
    assert np.allclose(a[:6], b[:6], atol=1e-4)
    assert np.allclose(a[7:], b[7:], atol=1e-4)


def test_shape_features_of_an_empty_image_are_zero_and_bad_input_fails():
    assert not shape_features(np.full((32, 32, 3), 200, np.uint8)).any()
    with pytest.raises(ValueError, match="RGB uint8"):
        shape_features(np.zeros((32, 32), np.uint8))


def test_hybrid_fuses_shape_features_before_the_head():
    model = _build("hybrid_resnet18", k=4).eval()
    assert isinstance(model, HybridClassifier)
    assert model.head[-1].in_features == model.feature_dim + 32
    x = torch.rand(2, 3, 48, 48)
    assert shape_features_batch(x).shape == (2, len(SHAPE_FEATURE_NAMES))
    with torch.no_grad():
        assert model(x).shape == (2, 4)


# ----------------------------------------------------------------------------- learning
def _crops(classes=("eosinophil", "lymphocyte", "platelet"), n=4, size=40):
    imgs, ys = [], []
    for k, c in enumerate(classes):
        for i in range(n):
            imgs.append(make_cell_crop(c, seed=100 * k + i, size=size)[0])
            ys.append(k)
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 255
    return x, torch.tensor(ys)


@pytest.mark.parametrize("name", ["cnn", "resnet18", "hybrid_resnet18"])
def test_a_few_optimisation_steps_reduce_the_loss(name):
    torch.manual_seed(0)
    x, y = _crops()
    model = _build(name, k=3, size=40)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


@pytest.mark.parametrize("name", ["efficientnet_lite0", "hybrid_efficientnet_lite0"])
def test_efficientnet_lite_classifier_fine_tunes_from_imagenet(name):
    """Issue 23: the Lite backbones come with their ImageNet weights and the TensorFlow
    normalisation (mean 0.5, std 0.5) inside the model; from scratch they are random."""
    from bloodlib.models.pretrained import lite_state_dict
    model = build_classifier(name, 5, pretrained=True, in_size=64)
    assert model.pretrained_loaded and model.normalization["mean"] == pytest.approx((0.5,) * 3)
    ref = lite_state_dict("efficientnet_lite0")
    assert torch.equal(model.backbone.conv_stem.weight, ref["conv_stem.weight"])
    assert model(torch.rand(2, 3, 64, 64)).shape == (2, 5)
    scratch = build_classifier(name, 5, pretrained=False, in_size=64)
    assert not scratch.pretrained_loaded
    assert not torch.equal(scratch.backbone.conv_stem.weight, ref["conv_stem.weight"])


def test_lite_classifier_round_trips_through_the_store(tmp_path):
    from bloodlib.inference.classification import classifier_meta
    from bloodlib.inference.store import load_predictor, read_meta, save_model
    model = build_classifier("efficientnet_lite0", 3, pretrained=True, in_size=48).eval()
    meta = classifier_meta("efficientnet_lite0", ["a", "b", "c"], 48,
                           preprocessing={"pretrained": True, "model_normalization":
                                          {"mean": [0.5] * 3, "std": [0.5] * 3}})
    path = save_model(model, "lite", meta, folder=tmp_path)
    assert read_meta(path)["preprocessing"]["model_normalization"]["mean"] == [0.5] * 3
    predictor = load_predictor(path)
    assert torch.equal(predictor.model.normalize.mean, model.normalize.mean)
    image = (np.random.default_rng(0).random((48, 48, 3)) * 255).astype(np.uint8)
    x = torch.from_numpy(image.transpose(2, 0, 1)).float()[None] / 255
    with torch.no_grad():
        expected = torch.softmax(model(x), 1)[0]
    got = predictor.predict(image).probabilities
    assert max(abs(got[c] - float(expected[i])) for i, c in enumerate("abc")) < 1e-4
