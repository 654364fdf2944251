"""Paper 4 Table 5 helpers: whole-cell masks, training each model, the paper table."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bloodlib.config import get_config, get_profile
from bloodlib.engine.checkpoint import Checkpoints
from bloodlib.data import synthetic
from bloodlib.data.masks import read_label_mask
from bloodlib.experiments import unet_family as uf


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    return synthetic.write_segmentation_set(tmp_path_factory.mktemp("seg4"), 10, seed=1, size=32)


def test_profiles_registered():
    for profile in ("quick", "bench_cpu", "full"):
        knobs = get_profile("unet_family", profile)
        assert knobs["num_classes"] == 2 and list(knobs["models"]) == list(uf.MODELS)
    assert get_profile("unet_family", "full")["width"] == 1.0


def test_whole_cell_mask_is_nucleus_plus_cytoplasm(records):
    for rec in records:
        m = uf.whole_cell_mask(rec)
        assert m.dtype == np.uint8 and set(np.unique(m)) <= {0, 1}
        assert np.array_equal(m == 1, read_label_mask(rec) > 0)


@pytest.mark.parametrize("name", uf.MODELS)
def test_each_model_trains_and_scores(name, records, tmp_path):
    torch.set_num_threads(1)
    settings = get_config("unet_family", "quick", epochs=1, image_size=32, batch_size=4,
                          max_train_batches=1, width=0.125, time_budget_s=None)
    model, history, val = uf.train_model(name, records[:6], records[6:], settings, "cpu", 0,
                                         Checkpoints(tmp_path))
    assert "val_IoU" in history.to_frame()
    test = uf.evaluate(model, records[6:], settings)
    for k in ("IoU", "recall", "accuracy", "precision", "dice"):
        assert 0.0 <= test[k] <= 1.0 or math.isnan(test[k]), k
    assert math.isclose(test["accuracy"], val["accuracy"], rel_tol=1e-6)


def test_table5_puts_paper_beside_ours():
    ours = {"unet_relu": {"IoU": 0.9, "recall": 0.95, "accuracy": 0.98}}
    t = uf.table5(ours)
    assert list(t.index) == ["U-Net", "ResUNet", "DeepLabV3+", "MIF-Net", "CBAM-DC-UNet"]
    assert t.loc["U-Net", ("IoU", "paper")] == 91.1 and t.loc["U-Net", ("IoU", "ours")] == 90.0
    assert math.isnan(t.loc["MIF-Net", ("IoU", "ours")])
