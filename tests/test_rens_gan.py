"""RENS-GAN-style augmentation: shapes, one training step, augmentation output."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bloodlib.engine.gan import train_gan
from bloodlib.models.rens_gan import (Discriminator, FeatureExtractor, RensGAN, augment_with_gan,
                                      degrade, random_crops)


def _images(n: int = 3, size: int = 40) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (size, size + 6, 3), dtype=np.uint8) for _ in range(n)]


def test_forward_shapes_and_range():
    gan = RensGAN(channels=8, blocks=1, vgg_weights="random")
    x = torch.rand(2, 3, 16, 20)
    y = gan(x)
    assert y.shape == (2, 3, 32, 40) and y.min() >= 0 and y.max() <= 1
    assert gan.g_noise(x).shape == x.shape
    assert Discriminator(8)(y).shape == (2, 1, 4, 5)
    assert gan.features.weights == "random"
    assert gan.features(y).shape[1] == 128


def test_feature_extractor_is_frozen_and_reports_weights():
    fe = FeatureExtractor("auto")
    assert fe.weights in ("imagenet", "random")
    assert not any(p.requires_grad for p in fe.parameters())
    fe.train()
    assert not fe.features.training
    with pytest.raises(ValueError):
        FeatureExtractor("coco")


def test_degrade_halves_and_adds_noise():
    hr = torch.rand(1, 3, 8, 8)
    noisy, clean = degrade(hr, 0.1, torch.Generator().manual_seed(0))
    assert noisy.shape == clean.shape == (1, 3, 4, 4)
    assert torch.allclose(clean, torch.nn.functional.avg_pool2d(hr, 2))
    assert not torch.allclose(noisy, clean)
    with pytest.raises(ValueError, match="even"):
        degrade(torch.rand(1, 3, 7, 8))


def test_one_training_step_updates_generators_and_discriminator():
    torch.manual_seed(0)
    gan0 = RensGAN(channels=8, blocks=1, vgg_weights="random")
    gan, hist = train_gan(_images(), steps=1, crop=16, batch_size=2, channels=8, blocks=1,
                          vgg_weights="random", seed=0)
    assert len(hist.rows) == 1 and hist.feature_weights == "random"
    row = hist.rows[0]
    assert {"pixel", "noise", "feature", "adversarial", "generator", "discriminator"} <= set(row)
    assert all(np.isfinite(v) for v in row.values())
    assert not gan.training
    changed = [not torch.equal(a, b) for a, b in zip(gan.g_resolution.state_dict().values(),
                                                     gan0.g_resolution.state_dict().values())]
    assert any(changed)


def test_augment_keeps_size_and_dtype():
    gan, _ = train_gan(_images(), steps=2, crop=16, batch_size=2, channels=8, blocks=1,
                       vgg_weights="random")
    imgs = _images(2, size=33)  # odd height: padded and cropped back
    out = augment_with_gan(gan, imgs)
    assert [o.shape for o in out] == [i.shape for i in imgs]
    assert all(o.dtype == np.uint8 for o in out)
    with pytest.raises(ValueError, match="uint8"):
        augment_with_gan(gan, [imgs[0].astype(float)])
    with pytest.raises(ValueError, match="smaller"):
        random_crops(imgs, 1, 64, np.random.default_rng(0))


def test_imagenet_vgg_weights_read_from_cache_only(monkeypatch, tmp_path):
    import torchvision
    from bloodlib.errors import WeightsNotFoundError
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(WeightsNotFoundError):
        FeatureExtractor("imagenet")
    # a fake cached checkpoint with VGG-11's key names is picked up by "auto"
    ckpt = tmp_path / "checkpoints" / torchvision.models.VGG11_Weights.DEFAULT.url.rsplit("/", 1)[1]
    ckpt.parent.mkdir(parents=True)
    state = {"features.0.weight": torch.ones(64, 3, 3, 3), "features.0.bias": torch.zeros(64),
             "features.3.weight": torch.ones(128, 64, 3, 3), "features.3.bias": torch.zeros(128),
             "classifier.0.weight": torch.zeros(1)}
    torch.save(state, ckpt)
    fe = FeatureExtractor("auto")
    assert fe.weights == "imagenet" and torch.equal(fe.features[0].weight, torch.ones(64, 3, 3, 3))
