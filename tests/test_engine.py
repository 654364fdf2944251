"""Training loop: learning, checkpoints (weights_only), resume, early stopping, budgets."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from bloodlib.engine import (evaluate_segmentation, fit, last_checkpoint_path, load_checkpoint,
                             predict_segmentation, save_checkpoint, segmentation_evaluator)
from bloodlib.losses import CEDiceLoss
from bloodlib.models import UNet

torch.set_num_threads(1)
FAST = dict(device="cpu", progress=False)


def _squares(n: int = 16, size: int = 32, seed: int = 0) -> TensorDataset:
    """Noisy images whose mask (class 1) is a bright square."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, size, size, generator=g) * 0.4
    masks = torch.zeros(n, size, size, dtype=torch.long)
    for i in range(n):
        y, x = torch.randint(0, size - 12, (2,), generator=g).tolist()
        images[i, :, y:y + 12, x:x + 12] += 0.5
        masks[i, y:y + 12, x:x + 12] = 1
    return TensorDataset(images, masks)


def _setup(lr: float = 1e-2):
    torch.manual_seed(0)
    model = UNet(num_classes=2, base_channels=4, depth=2)
    loader = DataLoader(_squares(), batch_size=8, shuffle=True)
    val = DataLoader(_squares(8, seed=1), batch_size=8)
    return model, loader, val, torch.optim.Adam(model.parameters(), lr=lr)


def test_loss_decreases_and_history():
    model, loader, val, opt = _setup()
    hist = fit(model, loader, val, CEDiceLoss(), opt, epochs=6,
               evaluate=segmentation_evaluator(2, ["background", "cell"]), **FAST)
    frame = hist.to_frame()
    assert list(frame.index) == [1, 2, 3, 4, 5, 6]
    assert {"train_loss", "val_loss", "val_dice", "val_mIoU", "lr", "seconds"} <= set(frame)
    assert frame["train_loss"].iloc[-1] < 0.7 * frame["train_loss"].iloc[0]
    assert hist.best_epoch is not None and hist.monitor == "val_dice"


def test_checkpoint_round_trip_weights_only(tmp_path: Path):
    model, *_, opt = _setup()
    meta = {"classes": ("background", "cell"), "input_size": (32, 32), "root": Path("/x")}
    path = save_checkpoint(tmp_path / "m.pt", model, meta, optimizer=opt, epoch=3)
    raw = torch.load(path, weights_only=True)
    assert raw["meta"] == {"classes": ["background", "cell"], "input_size": [32, 32],
                           "root": "/x"}
    other = UNet(num_classes=2, base_channels=4, depth=2)
    ckpt = load_checkpoint(path, other)
    assert ckpt["epoch"] == 3
    for a, b in zip(model.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(TypeError, match="JSON"):
        save_checkpoint(tmp_path / "bad.pt", model, {"obj": object()})


def test_resume_continues_epochs(tmp_path: Path):
    ckpt = tmp_path / "best.pt"
    model, loader, val, opt = _setup()
    fit(model, loader, val, nn.CrossEntropyLoss(), opt, epochs=2, monitor="val_loss",
        mode="min", checkpoint_path=ckpt, checkpoint_meta={"classes": ["bg", "cell"]}, **FAST)
    assert ckpt.is_file() and last_checkpoint_path(ckpt).is_file()
    model2, loader, val, opt2 = _setup()
    hist = fit(model2, loader, val, nn.CrossEntropyLoss(), opt2, epochs=4, monitor="val_loss",
               mode="min", checkpoint_path=ckpt, resume_from=last_checkpoint_path(ckpt), **FAST)
    assert [r["epoch"] for r in hist.rows] == [1, 2, 3, 4]
    assert opt2.state_dict()["state"][0]["step"].item() == 4 * 2  # 2 batches per epoch
    assert load_checkpoint(last_checkpoint_path(ckpt))["meta"] == {"classes": ["bg", "cell"]}


def test_early_stopping_triggers():
    model, loader, val, _ = _setup()
    frozen = torch.optim.SGD(model.parameters(), lr=0.0)
    hist = fit(model, loader, val, nn.CrossEntropyLoss(), frozen, epochs=10, monitor="val_loss",
               mode="min", early_stopping_patience=2, **FAST)
    assert hist.stop_reason == "early_stopping" and len(hist.rows) == 3


def test_time_budget_and_monitor_fallback():
    model, loader, val, opt = _setup()
    with pytest.warns(UserWarning, match="val_loss"):
        hist = fit(model, loader, val, nn.CrossEntropyLoss(), opt, epochs=5,
                   time_budget_s=0.0, **FAST)
    assert hist.stop_reason == "time_budget" and hist.rows[0]["train_batches"] == 1
    assert hist.monitor == "val_loss" and len(hist.rows) == 1


def test_classification_and_max_batches():
    torch.manual_seed(0)
    x, y = torch.randn(32, 5), torch.randint(0, 3, (32,))
    model = nn.Linear(5, 3)
    loader = DataLoader(TensorDataset(x, y), batch_size=4)
    hist = fit(model, loader, None, nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), 0.1),
               epochs=2, monitor="train_loss", mode="min", max_train_batches=3, **FAST)
    assert [r["train_batches"] for r in hist.rows] == [3, 3]


def test_evaluate_and_predict_segmentation():
    model, loader, val, opt = _setup()
    metrics = evaluate_segmentation(model, val, "cpu", 2, ["background", "cell"],
                                    loss_fn=nn.CrossEntropyLoss())
    assert {"dice", "iou", "loss", "pixel_accuracy", "Dice/cell"} <= set(metrics)
    images = val.dataset.tensors[0]
    masks = predict_segmentation(model, images, batch_size=3)
    assert masks.shape == (8, 32, 32) and masks.dtype == torch.int64
    assert predict_segmentation(model, images[0]).shape == (32, 32)
    assert model.training  # mode restored


def _count_saves(monkeypatch) -> list[str]:
    import bloodlib.engine.loop as loop
    import bloodlib.engine.trainer as trainer
    names: list[str] = []
    real = trainer.save_checkpoint

    def counting(path, *a, **kw):
        names.append(Path(path).name)
        return real(path, *a, **kw)
    monkeypatch.setattr(trainer, "save_checkpoint", counting)
    monkeypatch.setattr(loop, "save_checkpoint", counting)
    return names


def test_checkpoints_written_at_most_every_interval(tmp_path: Path, monkeypatch):
    """A long interval: each file written after the first epoch (so an early kill loses
    at most one epoch) and once at the end, the best file holding the best epoch's
    weights (taken in memory), the model ending with them."""
    saves = _count_saves(monkeypatch)
    ckpt = tmp_path / "best.pt"
    model, loader, val, opt = _setup()
    bests: dict[int, dict] = {}
    import bloodlib.engine.trainer as trainer
    real_end = trainer.EpochValidation.after_epoch

    def spy(self, loop):
        real_end(self, loop)
        if self.history.best_epoch == loop.state.epoch:
            bests[loop.state.epoch] = {k: v.clone() for k, v in loop.module.state_dict().items()}
    monkeypatch.setattr(trainer.EpochValidation, "after_epoch", spy)
    hist = fit(model, loader, val, nn.CrossEntropyLoss(), opt, epochs=5, monitor="val_loss",
               mode="min", checkpoint_path=ckpt, checkpoint_every_s=3600, **FAST)
    assert saves.count("best_last.pt") == 2 and 1 <= saves.count("best.pt") <= 2
    assert saves[:2] == ["best_last.pt", "best.pt"]  # after epoch 1
    saved = load_checkpoint(ckpt)
    assert saved["epoch"] == hist.best_epoch and saved["optimizer_state"] is None
    for k, v in bests[hist.best_epoch].items():
        assert torch.equal(saved["model_state"][k], v) and torch.equal(model.state_dict()[k], v)
    assert load_checkpoint(last_checkpoint_path(ckpt))["epoch"] == 5


def test_checkpoints_every_epoch_with_zero_interval(tmp_path: Path, monkeypatch):
    saves = _count_saves(monkeypatch)
    model, loader, val, opt = _setup()
    fit(model, loader, val, nn.CrossEntropyLoss(), opt, epochs=3, monitor="val_loss",
        mode="min", checkpoint_path=tmp_path / "best.pt", checkpoint_every_s=0, **FAST)
    assert saves.count("best_last.pt") == 3 and 1 <= saves.count("best.pt") <= 3


def test_interrupted_fit_keeps_its_best_weights(tmp_path: Path):
    """An exception in epoch 3 (a Ctrl-C, say): the best of epochs 1-2 is still on disk."""
    model, loader, val, opt = _setup()
    calls = {"n": 0}

    def failing_loss(logits, target):
        calls["n"] += 1
        if calls["n"] > 4:  # 2 batches per epoch: fails in epoch 3
            raise KeyboardInterrupt
        return nn.functional.cross_entropy(logits, target)
    with pytest.raises(KeyboardInterrupt):
        fit(model, loader, None, failing_loss, opt, epochs=5, monitor="train_loss", mode="min",
            checkpoint_path=tmp_path / "best.pt", checkpoint_every_s=3600, **FAST)
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] in (1, 2)
