"""Paper 5 experiment helpers: 4-class masks, splits, a tiny training run."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from bloodlib.config import get_config, get_profile
from bloodlib.engine.checkpoint import Checkpoints
from bloodlib.data import synthetic
from bloodlib.data.masks import read_label_mask
from bloodlib.data.records import MaskedImage
from bloodlib.experiments import wbc_segmentation as wcs


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    return synthetic.write_segmentation_set(tmp_path_factory.mktemp("seg"), 15, seed=0, size=32)


def test_profiles_registered():
    for profile in ("quick", "bench_cpu", "full"):
        knobs = get_profile("wcsegnet", profile)
        assert knobs["num_classes"] == 4 and set(knobs["models"]) == set(wcs.MODELS)
    full = get_profile("wcsegnet", "full")
    assert full["width"] == 1.0 and full["image_size"] == 120 and full["lr"] == 1e-4
    assert full["batch_size"] == 16


def test_paper5_mask_labels_nucleus_by_type(records):
    for rec in records:
        if rec.label not in wcs.PAPER5_TYPES:
            with pytest.raises(ValueError):
                wcs.paper5_mask(rec)
            continue
        zheng = read_label_mask(rec)
        m = wcs.paper5_mask(rec)
        assert m.dtype == np.uint8 and m.shape == zheng.shape
        assert set(np.unique(m)) == {0, wcs.PAPER5_TYPES[rec.label]}
        assert np.array_equal(m > 0, zheng == 2)  # nucleus kept, cytoplasm -> background


def test_filter_and_colors(records):
    inc, exc = wcs.filter_paper5(records)
    assert {r.label for r in inc} == set(wcs.PAPER5_TYPES)
    assert {r.label for r in exc} == set(wcs.EXCLUDED_TYPES)
    assert len(inc) + len(exc) == len(records)
    rgb = wcs.color_mask(np.array([[0, 1], [2, 3]]))
    assert rgb.shape == (2, 2, 3) and rgb[0, 1].tolist() == [255, 0, 0]
    assert rgb[1, 0].tolist() == [0, 0, 255] and rgb[0, 0].tolist() == [0, 0, 0]


def _fake(labels):
    return [MaskedImage(f"/x/{i}.png", f"/x/{i}_m.png", lab, {}) for i, lab in enumerate(labels)]


def test_split_deterministic_stratified_and_small_classes_in_train():
    recs = _fake(["neutrophil"] * 50 + ["lymphocyte"] * 20 + ["basophil"])
    a, b = wcs.split_records(recs, seed=3), wcs.split_records(recs, seed=3)
    assert [r.image_path for r in a.test] == [r.image_path for r in b.test]
    assert {r.image_path for r in a.train}.isdisjoint({r.image_path for r in a.test})
    assert len(a.train) + len(a.test) == len(recs)
    counts = a.counts()
    assert counts.loc["neutrophil", "test"] == 10 and counts.loc["lymphocyte", "test"] == 4
    assert counts.loc["basophil", "train"] == 1 and counts.loc["basophil", "test"] == 0
    assert a.kept_in_train == {"basophil": 1}
    c = wcs.split_records(recs, seed=4)
    assert [r.image_path for r in c.test] != [r.image_path for r in a.test]


def test_train_val_test_splits_train_again_for_validation():
    recs = _fake(["neutrophil"] * 50 + ["lymphocyte"] * 20 + ["basophil"])
    parts = wcs.train_val_test(recs, get_config("wcsegnet", "quick", val_fraction=0.15,
                                                min_count=2), seed=0)
    names = {k: {r.image_path for r in v} for k, v in parts.items()}
    assert sum(map(len, names.values())) == len(recs)
    assert names["train"].isdisjoint(names["val"]) and names["val"].isdisjoint(names["test"])
    assert names["test"] == {r.image_path for r in wcs.split_records(recs, 0).test}
    assert len(parts["test"]) == 14 and 0 < len(parts["val"]) < len(parts["train"])


def test_take_subset_keeps_every_class():
    recs = _fake(["neutrophil"] * 30 + ["lymphocyte"] * 5 + ["basophil"] * 2)
    sub = wcs.take_subset(recs, 6, seed=0)
    assert len(sub) == 6 and {r.label for r in sub} == {"neutrophil", "lymphocyte", "basophil"}
    assert wcs.take_subset(recs, 6, seed=0) == sub and wcs.take_subset(recs, None) == recs


def test_train_model_one_epoch(records, tmp_path):
    torch.set_num_threads(1)
    inc, _ = wcs.filter_paper5(records)
    settings = get_config("wcsegnet", "quick", epochs=1, image_size=32, batch_size=4,
                          max_train_batches=2, width=0.125)
    model, history, metrics = wcs.train_model("wcsegnet", inc[:6], inc[6:], settings, "cpu", 0,
                                              Checkpoints(tmp_path), dataset="jiangxi")
    assert history.last_epoch == 1 and "val_dice" in history.to_frame()
    for k in (*wcs.TABLE1_METRICS, "nucleus_dice"):
        assert 0.0 <= metrics[k] <= 1.0, k
    assert (tmp_path / "wcsegnet_jiangxi.pt").is_file()
    test = wcs.evaluate(model, inc[6:], settings, "cpu")
    assert math.isclose(test["accuracy"], metrics["accuracy"], rel_tol=1e-6)
    assert all(math.isfinite(v) for v in wcs.finite(test).values())
    table = wcs.table1({("jiangxi", "wcsegnet"): test})
    assert list(table["metric"]) == list(wcs.TABLE1_METRICS)


def test_checkpoint_meta_follows_store_contract(records, tmp_path):
    from bloodlib.engine.checkpoint import load_checkpoint
    torch.set_num_threads(1)
    inc, _ = wcs.filter_paper5(records)
    settings = get_config("wcsegnet", "quick", epochs=1, image_size=32, batch_size=4,
                          max_train_batches=1, width=0.125)
    wcs.train_model("unet_relu", inc[:4], inc[4:6], settings, "cpu", 0, Checkpoints(tmp_path))
    meta = load_checkpoint(tmp_path / "unet_relu.pt")["meta"]
    assert meta["task"] == "segment" and meta["architecture"] == "unet_relu"
    assert meta["classes"] == list(wcs.CLASS_NAMES) and meta["input_size"] == [32, 32]
    assert meta["architecture_kwargs"] == {"num_classes": 4, "width": 0.125}


def test_cosine_schedule_and_loss_choice():
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    quick = get_config("wcsegnet", "quick")
    assert wcs.build_scheduler(opt, replace(quick, lr_schedule="constant")) is None
    sched = wcs.build_scheduler(opt, replace(quick, lr_schedule="cosine", epochs=4, lr=1e-2,
                                             min_lr_factor=0.1))
    for _ in range(4):
        opt.step()
        sched.step()
    assert math.isclose(opt.param_groups[0]["lr"], 1e-3, rel_tol=1e-6)
    with pytest.raises(ValueError, match="lr_schedule"):
        wcs.build_scheduler(opt, replace(quick, lr_schedule="step"))
    assert type(wcs.build_training_loss(replace(quick, loss="ce_dice"))).__name__ == "CEDiceLoss"


def test_augment_p_share_of_augmented_training_images(records):
    inc, _ = wcs.filter_paper5(records)
    settings = get_config("wcsegnet", "quick", image_size=32)
    plain = wcs.make_dataset(inc[:4], settings, train=False)
    never = wcs.make_dataset(inc[:4], replace(settings, augment_p=0.0), train=True)
    always = wcs.make_dataset(inc[:4], get_config("wcsegnet", "quick", image_size=32,
                                                  augment_p=1.0), train=True)
    for i in range(4):
        assert torch.equal(never[i][0], plain[i][0]) and torch.equal(never[i][1], plain[i][1])
    assert any(not torch.equal(always[i][0], plain[i][0]) for i in range(4))


def test_wcsegnet_dropout_knob_sets_every_dropout():
    def rates(**overrides):
        settings = get_config("wcsegnet", "quick", width=0.125, **overrides)
        model = wcs.build_model("wcsegnet", settings)
        return {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)}

    assert rates() == {0.5}  # paper 5 gives no rate: the Keras U-Net convention
    assert rates(wcsegnet_dropout=0.1) == {0.1}
    unet = wcs.build_model("unet_relu", get_config("wcsegnet", "quick", width=0.125,
                                                   wcsegnet_dropout=0.1))
    assert not any(isinstance(m, torch.nn.Dropout) and m.p == 0.1 for m in unet.modules())


def test_wbc_crop_centres_cell_and_pads_at_borders():
    img = np.zeros((100, 140, 3), np.uint8)
    lab = np.zeros((100, 140), np.uint8)
    lab[0:30, 110:140] = 1          # a cell in the top-right corner
    lab[10:20, 120:130] = 2
    crop, cl = wcs.wbc_crop(img, lab, fill=0.5)
    assert crop.shape[:2] == cl.shape == (58, 58)
    assert (cl == 2).sum() == 100 and (cl > 0).sum() == 900   # the whole cell is inside
    with pytest.raises(ValueError, match="no WBC"):
        wcs.wbc_crop(img, np.zeros_like(lab))


def test_cross_dataset_check_scores_a_perfect_and_a_blind_model(records):
    zheng_like = [r for r in records if r.label in wcs.PAPER5_TYPES][:4]

    class Oracle(torch.nn.Module):   # predicts "nucleus" where the image is darkest
        def forward(self, x):
            dark = (x.mean(1, keepdim=True) < 0.0).float()
            return torch.cat([1 - dark, dark, 0 * dark, 0 * dark], 1)

    blind = wcs.cross_dataset_check(Oracle(), zheng_like, 32)
    assert blind["n_images"] == 4 and blind["recall"] == 0.0
    assert 0.0 < blind["accuracy"] < 1.0


class _Constant(torch.nn.Module):
    """Predicts one class everywhere (0 = background, 1 = a nucleus)."""

    def __init__(self, cls: int) -> None:
        super().__init__()
        self.cls = cls

    def forward(self, x):
        return torch.nn.functional.one_hot(torch.full(x.shape[:1] + x.shape[2:], self.cls),
                                           4).permute(0, 3, 1, 2).float()


def test_boundary_error_table_and_worst_images_figure(records):
    zheng_like = [r for r in records if r.label in wcs.PAPER5_TYPES][:4]
    settings = get_config("wcsegnet", "quick", image_size=32, batch_size=4)
    ds = wcs.make_dataset(zheng_like, settings)
    nucleus_pixels = sum(int((ds[i][1] > 0).sum()) for i in range(len(ds)))
    table = wcs.boundary_error_table({"blind": _Constant(0), "unet_relu": _Constant(1)},
                                     zheng_like, settings)
    assert list(table.index) == ["blind", wcs.MODEL_LABELS["unet_relu"]]
    assert list(table.columns[:4]) == ["nucleus_dice", "error_pixels", "within_1px", "within_2px"]
    blind = table.loc["blind"]
    assert blind["nucleus_dice"] == 0.0 and blind["error_pixels"] == nucleus_pixels > 0
    assert 0.0 < blind["within_1px"] <= blind["within_2px"] <= 1.0
    everything = table.loc[wcs.MODEL_LABELS["unet_relu"]]
    assert everything["error_pixels"] == 4 * 32 * 32 - nucleus_pixels
    fig = wcs.worst_images_figure(_Constant(0), zheng_like, settings, n=3)
    assert len(fig.axes) == 3 and all("Dice 0.000" in ax.get_title() for ax in fig.axes)


def test_reference_table_reads_committed_benchmarks(tmp_path):
    from bloodlib.results import make_result, write_result
    for profile, model in (("bench_cpu", "wcsegnet"), ("quick", "unet_relu")):
        write_result(make_result("wcsegnet", "paper5", "jiangxi", "test",
                                 {"nucleus_dice": 0.97, "dice": 0.96}, {}, 0, profile, 1.0,
                                 model=model, extra={"train_seconds": 120.0}), tmp_path)
    table = wcs.reference_table(tmp_path)
    assert list(table.index) == [("bench_cpu", "jiangxi", "wcsegnet")]   # quick runs left out
    assert table.iloc[0]["train_min"] == 2.0 and table.iloc[0]["nucleus_dice"] == 0.97
    assert wcs.reference_table(tmp_path / "missing").empty
