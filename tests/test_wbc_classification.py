"""Cell-classification experiment: profiles, duplicate-aware splits, metrics wiring,
training, saving for the demo, paper tables."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from bloodlib.config import get_config, get_profile
from bloodlib.data.splits import pixel_hash
from bloodlib.data.synthetic import write_classification_set
from bloodlib.errors import DatasetIntegrityError
from bloodlib.experiments import wbc_classification as wc

CLASSES3 = ("eosinophil", "lymphocyte", "neutrophil")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """36 synthetic crops per class for three WBC types, preloaded at 32 px."""
    recs = write_classification_set(tmp_path_factory.mktemp("syn"), 36, seed=1, size=48,
                                    classes=CLASSES3)
    return wc.preload(recs, 32, source="synthetic")


def _settings(**kw):
    return get_config("wbc_classification", "quick", **{"image_size": 32, "batch_size": 16, **kw})


def _with_duplicates(data, pairs):
    """``data`` whose hashes make each (i, j) of ``pairs`` a duplicate; labels of j set to
    ``pairs[(i, j)]`` when given."""
    hashes, labels = list(data.hashes), list(data.labels)
    for (i, j), label in pairs.items():
        hashes[j] = hashes[i]
        if label:
            labels[j] = label
    return wc.CellImages(data.images, labels, data.paths, hashes, data.source)


# ----------------------------------------------------------------------------- profiles
def test_profiles():
    quick, bench, full = (get_profile("wbc_classification", p)
                          for p in ("quick", "bench_cpu", "full"))
    assert bench["protocols"][0] == "paper1_80_20" and bench["pretrained"] is False
    assert bench["time_budget_s"]["paper1_80_20"] < 30 * 60  # the issue: under 30 minutes
    assert full["pretrained"] is True and full["image_size"] == 224
    assert quick["image_size"] <= 64 and quick["max_per_class"] is not None
    for knobs in (quick, bench, full):
        assert set(knobs["epochs"]) == set(wc.PROTOCOLS)


def test_reference_table_lists_the_committed_benchmarks(tmp_path):
    from bloodlib.results import make_result, write_result
    for model, acc in (("resnet18", 0.98), ("cnn", 0.97)):
        write_result(make_result(wc.EXPERIMENT, "paper1", "pbc_paper1_80_20", "test",
                                 {"accuracy": acc, "macro_f1": acc - 0.01}, {}, 0, "bench_cpu",
                                 1.0, model=model, extra={"train_seconds": 1200.0}), tmp_path)
    table = wc.reference_table(tmp_path)
    assert table.loc[("bench_cpu", "pbc_paper1_80_20", "resnet18"), "accuracy"] == 0.98
    assert set(table["train_min"]) == {20.0} and "macro_f1" in table
    assert wc.reference_table(tmp_path / "none").empty


# ----------------------------------------------------------------------------- data, splits
def test_preload_hashes_match_pixel_hash(synthetic):
    assert synthetic.images.shape == (108, 32, 32, 3) and synthetic.images.dtype == np.uint8
    assert synthetic.hashes[0] == pixel_hash(synthetic.paths[0])
    assert synthetic.counts() == {c: 36 for c in CLASSES3}


def test_group_split_keeps_duplicates_together(synthetic):
    data = _with_duplicates(synthetic, {(0, 1): None, (0, 2): None, (40, 41): None})
    for kw in ({"fractions": {"train": 0.8, "test": 0.2}},
               {"counts": {"train": 20, "val": 5, "test": 5}}):
        parts = wc.group_split(data.labels, data.hashes, seed=3, **kw)
        where = {i: k for k, idx in parts.items() for i in idx}
        assert where[0] == where[1] == where[2] and where[40] == where[41]
        assert sorted(i for idx in parts.values() for i in idx) == sorted(set(where))
    per_class = wc.group_split(data.labels, data.hashes, counts={"train": 20, "val": 5, "test": 5})
    test_labels = [data.labels[i] for i in per_class["test"]]
    assert {c: test_labels.count(c) for c in CLASSES3} == {c: 5 for c in CLASSES3}


def test_conflicting_duplicates_are_dropped(synthetic):
    data = _with_duplicates(synthetic, {(0, 50): "lymphocyte", (80, 81): None})
    assert len(wc.duplicate_groups(data)) == 2
    table = wc.duplicate_table(data)
    assert table["conflicting"].tolist().count(True) == 1
    clean, dropped = wc.drop_conflicting(data)
    assert dropped == 2 and len(clean) == len(data) - 2
    assert len(wc.duplicate_groups(clean)) == 1  # the consistent pair stays


def test_protocol_split_has_no_leakage_and_right_parts(synthetic):
    settings = _settings(val_fraction=0.25)
    parts = wc.protocol_split(synthetic, "paper1_80_20", settings, seed=0)
    assert set(parts) == {"train", "val", "test"}
    assert sum(map(len, parts.values())) == len(synthetic)
    assert len(parts["test"]) == pytest.approx(0.2 * len(synthetic), abs=3)
    paths = [set(p.paths) for p in parts.values()]
    assert not (paths[0] & paths[1] or paths[0] & paths[2] or paths[1] & paths[2])
    p2 = wc.protocol_split(synthetic, "paper2_300_100_100", settings, seed=0)  # scaled down
    assert [len(p2[k]) for k in ("train", "val", "test")] == [63, 21, 24]
    only5 = wc.protocol_split(synthetic, "wbc5", settings, seed=0)
    assert set(only5["train"].labels) <= set(wc.WBC5)


def test_check_split_detects_a_duplicate_across_parts(synthetic):
    a, b = synthetic.subset(range(0, 10)), synthetic.subset(range(10, 20))
    wc.check_split({"train": a, "test": b})
    leaky = wc.CellImages(b.images, b.labels, b.paths, [a.hashes[0]] + b.hashes[1:])
    with pytest.raises(DatasetIntegrityError, match="cross parts"):
        wc.check_split({"train": a, "test": leaky})


# ----------------------------------------------------------------------------- metrics wiring
class _Oracle(nn.Module):
    """Predicts the class written in the image's red channel (value = 10 x index)."""

    def __init__(self, k):
        super().__init__()
        self.k, self.dummy = k, nn.Parameter(torch.zeros(1))

    def forward(self, x):
        idx = (x[:, 0].mean((1, 2)) * 255 / 10).round().long().clamp(0, self.k - 1)
        return nn.functional.one_hot(idx, self.k).float() * 10 + self.dummy


def _coded(labels, wrong=()):
    imgs = np.zeros((len(labels), 16, 16, 3), np.uint8)
    for i, lab in enumerate(labels):
        k = CLASSES3.index(lab)
        imgs[i, :, :, 0] = 10 * ((k + 1) % 3 if i in wrong else k)
    return wc.CellImages(imgs, list(labels), [Path(f"{i}.png") for i in range(len(labels))],
                         [str(i) for i in range(len(labels))])


def test_evaluator_and_report_wiring():
    labels = ["eosinophil"] * 4 + ["lymphocyte"] * 3 + ["neutrophil"] * 3
    data = _coded(labels, wrong={0})  # one eosinophil predicted as lymphocyte
    model = _Oracle(3)
    ev = wc.evaluate(model, data, CLASSES3, tta="flip")
    assert ev.report.accuracy == pytest.approx(0.9) and list(ev.wrong) == [0]
    assert ev.report.confusion[0, 1] == 1
    m = ev.metrics()
    assert m["error_rate"] == pytest.approx(0.1)
    assert m["recall/eosinophil"] == pytest.approx(0.75)
    assert m["precision/lymphocyte"] == pytest.approx(0.75)
    assert m["specificity/lymphocyte"] == pytest.approx(6 / 7)
    assert all(np.isfinite(list(m.values())))
    row = wc.summary_row(ev)
    assert row["F1"] == pytest.approx(ev.report.macro["f1"]) and row["roc_auc"] <= 1
    loader = wc.make_loader(data, CLASSES3, _settings(), train=False)
    out = wc.classification_evaluator(CLASSES3)(model, loader, torch.device("cpu"))
    assert out["accuracy"] == pytest.approx(0.9) and out["loss"] > 0
    assert 0 < out["macro_f1"] < 1


def test_shared_errors_lists_the_images_several_models_miss():
    labels = ["eosinophil"] * 4 + ["lymphocyte"] * 3 + ["neutrophil"] * 3
    a = wc.evaluate(_Oracle(3), _coded(labels, wrong={0, 5}), CLASSES3)
    b = wc.evaluate(_Oracle(3), _coded(labels, wrong={5}), CLASSES3)
    data = _coded(labels)
    df = wc.shared_errors({"a": a, "b": b}, data)
    assert list(df.columns) == ["image", "true", "a", "b", "n_wrong"]
    assert df.to_dict("records") == [
        {"image": "5.png", "true": "lymphocyte", "a": "neutrophil", "b": "neutrophil", "n_wrong": 2},
        {"image": "0.png", "true": "eosinophil", "a": "lymphocyte", "b": "", "n_wrong": 1}]
    with pytest.raises(ValueError, match="same set"):
        wc.shared_errors({"a": a}, data.subset(range(5)))


def _probs_eval(probs, y_true):
    probs = np.asarray(probs, float)
    return wc.Evaluation(None, probs, np.asarray(y_true), probs.argmax(1), 1.0, list(CLASSES3))


def test_ensemble_averages_probabilities_and_reports_on_the_mean():
    y = [0, 1, 2]
    a = _probs_eval([[0.4, 0.6, 0.0], [0.0, 1.0, 0.0], [0.0, 0.2, 0.8]], y)  # misses image 0
    b = _probs_eval([[0.9, 0.1, 0.0], [0.0, 0.3, 0.7], [0.0, 0.0, 1.0]], y)  # misses image 1
    ens = wc.ensemble({"a": a, "b": b})
    np.testing.assert_allclose(ens.probs[0], [0.65, 0.35, 0.0])
    assert list(ens.y_pred) == [0, 1, 2] and ens.report.accuracy == pytest.approx(1.0)
    assert ens.seconds == pytest.approx(2.0) and ens.classes == list(CLASSES3)
    with pytest.raises(ValueError, match="same set"):
        wc.ensemble({"a": a, "c": _probs_eval(b.probs, [0, 1, 1])})
    with pytest.raises(ValueError, match="at least one"):
        wc.ensemble({})


def test_misclassified_figure_wraps_rows():
    labels = ["eosinophil"] * 4 + ["lymphocyte"] * 3 + ["neutrophil"] * 3
    ev = wc.evaluate(_Oracle(3), _coded(labels, wrong={0, 1, 2, 5, 8}), CLASSES3)
    fig = wc.misclassified_figure(ev, _coded(labels), n=16, per_row=2)
    titled = [ax for ax in fig.axes if ax.get_title()]
    assert len(fig.axes) == 6 and len(titled) == 5


def test_progress_cosine_schedule(monkeypatch):
    sched = wc.ProgressCosine(100, None, warmup=0.1, min_fraction=0.0)
    assert sched(0) < sched(5) < sched(10) == pytest.approx(1.0)
    assert sched(55) == pytest.approx(0.5, abs=1e-6) and sched(100) == pytest.approx(0.0)
    clock = [1000.0]
    monkeypatch.setattr(wc.train.time, "monotonic", lambda: clock[0])
    timed = wc.ProgressCosine(1000, budget_s=10.0, warmup=0.0)
    clock[0] += 10.0  # the budget is spent although few steps were done
    assert timed(3) == pytest.approx(0.0, abs=1e-9)


class _AutocastProbe(nn.Module):
    """Records whether each training forward ran under CPU bfloat16 autocast."""

    def __init__(self):
        super().__init__()
        self.lin, self.seen = nn.Linear(4, 2), []

    def forward(self, x):
        if self.training:
            self.seen.append(torch.is_autocast_enabled("cpu")
                             and torch.get_autocast_dtype("cpu") == torch.bfloat16)
        return self.lin(x).float()


@pytest.mark.parametrize("amp, expected", [("bf16", True), ("auto", False)])
def test_fit_uses_bf16_autocast_on_cpu_only_when_asked(amp, expected):
    from bloodlib.engine.trainer import fit
    model = _AutocastProbe()
    data = [(torch.rand(8, 4), torch.randint(0, 2, (8,))) for _ in range(3)]
    fit(model, data, None, nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), 0.1), 1,
        "cpu", monitor="train_loss", mode="min", amp=amp, progress=False)
    assert model.seen == [expected] * 3


def test_resolve_amp(monkeypatch):
    monkeypatch.setattr(wc.train, "cpu_has_bf16", lambda: True)
    assert wc.resolve_amp("bf16_cpu", torch.device("cpu")) == "bf16"
    assert wc.resolve_amp("bf16_cpu", torch.device("cuda")) == "auto"
    monkeypatch.setattr(wc.train, "cpu_has_bf16", lambda: False)
    assert wc.resolve_amp("bf16_cpu", torch.device("cpu")) == "auto"
    assert wc.resolve_amp(False, torch.device("cpu")) is False


def test_train_save_and_predict_round_trip(synthetic, tmp_path):
    settings = _settings(epochs={k: 3 for k in wc.PROTOCOLS}, time_budget_s={k: 60 for k in wc.PROTOCOLS},
                   tta="none", cnn_width=0.25, lr=0.05)
    parts = wc.protocol_split(synthetic, "paper1_80_20", settings, seed=0)
    t = wc.train_classifier("cnn", parts, CLASSES3, settings, "paper1_80_20", "cpu", seed=0)
    df = t.history.to_frame()
    assert len(df) == 3 and {"train_loss", "val_accuracy", "val_macro_f1", "lr"} <= set(df.columns)
    assert df["lr"].iloc[-1] < df["lr"].iloc[0] or df["lr"].iloc[0] < settings.lr
    assert t.info["images_per_second"] > 0 and t.info["peak_rss_mb"] > 0
    assert t.info["images_seen"] == sum(df["train_batches"]) * 16
    ev = wc.evaluate(t.model, parts["test"], CLASSES3)
    path = wc.save_classifier(tmp_path / "m.pt", t, settings, {"dataset": "synthetic"},
                              {"accuracy": ev.report.accuracy})
    from bloodlib.inference import load_predictor
    pred = load_predictor(path)
    res = pred.predict_batch([im for im in parts["test"].images[:5]])
    got = np.array([[r.probabilities[c] for c in CLASSES3] for r in res])
    assert np.allclose(got, ev.probs[:5], atol=1e-5)
    assert pred.meta["training_data"] == {"dataset": "synthetic"}


@pytest.mark.parametrize("mix", wc.MIXES)
def test_mixed_batches_carry_probability_targets_and_train(synthetic, mix):
    settings = _settings(mix=mix, mix_alpha=1.0, epochs={k: 2 for k in wc.PROTOCOLS},
                   time_budget_s={k: 60 for k in wc.PROTOCOLS}, cnn_width=0.25)
    parts = wc.protocol_split(synthetic, "paper1_80_20", settings, seed=0)
    x, y = next(iter(wc.make_loader(parts["train"], CLASSES3, settings, train=True)))
    assert x.shape == (16, 3, 32, 32) and y.shape == (16, 3) and y.dtype == torch.float32
    assert torch.allclose(y.sum(1), torch.ones(16)) and (y.max(1).values < 1).any()
    _, y_val = next(iter(wc.make_loader(parts["val"], CLASSES3, settings, train=False)))
    assert y_val.ndim == 1                              # evaluation is never mixed
    t = wc.train_classifier("cnn", parts, CLASSES3, settings, "paper1_80_20", "cpu", seed=0)
    assert np.isfinite(t.history.to_frame()["train_loss"]).all()
    with pytest.raises(ValueError, match="mix 'blend' unknown"):
        wc.BatchMix("blend", 3)


def test_quick_model_for_the_demo(tmp_path, monkeypatch):
    monkeypatch.setenv("BLOODLIB_DATA", str(tmp_path / "no-data"))
    t0 = time.perf_counter()
    model, meta = wc.quick_model(tmp_path, seed=0, steps=1)
    assert time.perf_counter() - t0 < 60
    assert meta["task"] == "classify" and meta["classes"] == list(wc.PBC8)
    assert meta["training_data"]["dataset"] == "synthetic"
    assert model(torch.rand(2, 3, 48, 48)).shape == (2, 8)


# ----------------------------------------------------------------------------- paper tables
def test_paper_tables():
    t4 = wc.paper4_table({"ResNet-18 | PBC": 0.95})
    assert t4.iloc[0]["accuracy (%)"] == pytest.approx(98.61373901367188)
    assert t4.iloc[1]["accuracy (%)"] == pytest.approx(95.0)
    ours = {"accuracy": 0.98, "precision": 0.97, "recall": 0.96, "F1": 0.965, "specificity": 0.99}
    t8 = wc.pbc8_paper_table({"us": ours})
    resnet101 = t8[t8["model"] == "Mask R-CNN ResNet101"].iloc[0]
    assert resnet101["accuracy"] == pytest.approx(99.31)
    assert t8[t8["source"] == "ours"].iloc[0]["F1"] == pytest.approx(96.5)
    assert (t8["model"].str.contains("VGG-16 \\+ Inception")).any()  # paper 1's related work
    assert t8["accuracy"].max() <= 100


# ----------------------------------------------------------------------------- real data
@pytest.mark.realdata
def test_pbc_duplicates_never_cross_parts(data_root):
    from bloodlib.data.parsers.pbc import load_pbc
    recs = load_pbc(classes=["basophil", "eosinophil", "monocyte", "neutrophil"])
    data = wc.preload(recs, 16)
    groups = wc.duplicate_groups(data)
    assert len(groups) >= 5  # BA x3, EO x1, MO x1, EO/BNE (conflicting)
    clean, dropped = wc.drop_conflicting(data)
    assert dropped == 2
    for protocol in ("wbc5", "paper1_80_20", "paper2_300_100_100"):
        parts = wc.protocol_split(clean, protocol, _settings(val_fraction=0.1), seed=0)
        owners = {}
        for k, d in parts.items():
            for h in d.hashes:
                owners.setdefault(h, set()).add(k)
        assert all(len(v) == 1 for v in owners.values())
