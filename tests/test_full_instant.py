"""Issue 25: every experiment's ``full`` configuration (full-size models at the paper's
input sizes) trains two or three optimisation steps on a handful of images, evaluates and
writes its results JSON, on a CPU: ``bloodlib train EXPERIMENT --profile full --instant``.
ImageNet weights come from a small (random) file written into a temporary torch hub cache,
so the loading path of the full profile runs without a download."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch

from bloodlib.registry import TRAINERS
from bloodlib.training_cli import train_experiment

EXPERIMENTS = TRAINERS.names()


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> Path:
    """A torch hub cache holding ResNet-50 'ImageNet' weights (random values) under every
    file name torchvision's enums use."""
    import torchvision
    home = tmp_path_factory.mktemp("torch_home")
    folder = home / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    state = torchvision.models.resnet50(weights=None).state_dict()
    first = None
    for w in torchvision.models.ResNet50_Weights:
        path = folder / Path(w.url).name
        if first is None:
            torch.save(state, path)
            first = path
        else:
            os.link(first, path)
    return home


def test_every_experiment_has_a_trainer():
    assert set(EXPERIMENTS) >= {"mcnet", "wbc_classification", "wcsegnet", "unet_family",
                                "blood_cancer", "maskrcnn_backbones"}


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_full_profile_instant_run(experiment, hub, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(hub))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)
    metrics = train_experiment(experiment, profile="full", instant=True, out=tmp_path)
    assert metrics and all(math.isfinite(v) for v in metrics.values())
    [path] = (tmp_path / "results").glob("*.json")
    result = json.loads(path.read_text())
    assert result["profile"] == "full" and result["experiment"] == experiment
    assert result["metrics"] == pytest.approx(metrics)
    from bloodlib.config import get_profile
    full = get_profile(experiment, "full")
    for key in ("image_size", "min_size", "backbone", "width"):  # the paper's sizes, kept
        if key in full:
            assert result["config"][key] == full[key], key
    if experiment in ("mcnet", "blood_cancer"):  # ResNet-50 from the (fake) ImageNet file
        assert result["extra"]["pretrained"] is True
    if experiment == "wbc_classification":
        assert result["extra"]["pretrained_loaded"] is True


def test_unknown_experiment_and_model_are_clear_errors(tmp_path):
    with pytest.raises(KeyError, match="known: "):
        train_experiment("nope", out=tmp_path)
    with pytest.raises(ValueError, match="choose one of"):
        train_experiment("wcsegnet", model="nope", out=tmp_path)
