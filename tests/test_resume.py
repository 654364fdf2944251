"""Issue 24 item 15: a run killed with SIGKILL resumes from its early checkpoint and ends
with exactly the weights of an uninterrupted run (same data order, same random draws)."""

from __future__ import annotations

import os
from dataclasses import replace
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).with_name("resume_worker.py")
ROOT = Path(__file__).resolve().parents[1]


def _run(kind: str, ckpt: Path, out: Path, sleep_s: float = 0.0) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(WORKER), kind, str(ckpt), str(out), str(sleep_s)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _kill_when(proc: subprocess.Popen, path: Path, ready, timeout: float = 60.0) -> None:
    """SIGKILL ``proc`` as soon as ``ready(path)`` holds."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if path.is_file() and ready(path):
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return
        assert proc.poll() is None, proc.stdout.read().decode()
        time.sleep(0.02)
    proc.kill()
    pytest.fail(f"{path} did not appear within {timeout} s")


def _same_weights(a: Path, b: Path) -> bool:
    sa, sb = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("kind, latest, ready", [
    ("fit", "model_last.pt",
     lambda p: torch.load(p, weights_only=True)["epoch"] >= 2),
    ("detector", "model.pt",
     lambda p: 4 <= torch.load(p, weights_only=True)["extra"]["step"] < 20),
    ("steps", "model.pt",
     lambda p: 1 <= torch.load(p, weights_only=True)["extra"]["step"] < 20),
    ("gan", "model.pt",
     lambda p: 1 <= torch.load(p, weights_only=True)["extra"]["step"] < 12),
])
def test_kill_minus_9_then_resume_equals_an_uninterrupted_run(tmp_path, kind, latest, ready):
    reference = _run(kind, tmp_path / "ref" / "model.pt", tmp_path / "ref.pt")
    assert reference.wait(120) == 0, reference.stdout.read().decode()

    ckpt = tmp_path / "run" / "model.pt"
    victim = _run(kind, ckpt, tmp_path / "never.pt", sleep_s=0.01)
    _kill_when(victim, ckpt.with_name(latest), ready)
    assert victim.returncode == -signal.SIGKILL and not (tmp_path / "never.pt").exists()
    saved = torch.load(ckpt.with_name(latest), weights_only=True)
    assert "rng_state" in saved

    resumed = _run(kind, ckpt, tmp_path / "resumed.pt")
    output = resumed.communicate(timeout=120)[0].decode()
    assert resumed.returncode == 0, output
    assert "resuming from" in output
    assert _same_weights(tmp_path / "ref.pt", tmp_path / "resumed.pt")


def test_first_checkpoint_is_written_after_the_first_epoch(tmp_path):
    """With the default 60-s interval a kill in the first minute used to leave nothing."""
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from bloodlib.engine.trainer import fit, last_checkpoint_path
    data = TensorDataset(torch.randn(8, 4), torch.randint(0, 2, (8,)))
    model = nn.Linear(4, 2)
    ckpt = tmp_path / "m.pt"
    fit(model, DataLoader(data, batch_size=4), None, nn.CrossEntropyLoss(),
        torch.optim.SGD(model.parameters(), 0.1), 1, "cpu", checkpoint_path=ckpt,
        progress=False, monitor="train_loss", mode="min")
    assert torch.load(last_checkpoint_path(ckpt), weights_only=True)["epoch"] == 1


def test_resume_auto_without_a_checkpoint_starts_fresh_and_a_wrong_path_is_an_error(tmp_path):
    from bloodlib.engine.trainer import resolve_resume
    assert resolve_resume("auto", tmp_path / "none.pt") is None
    assert resolve_resume(None, tmp_path / "none.pt") is None
    with pytest.raises(FileNotFoundError, match="resume from"):
        resolve_resume(tmp_path / "missing.pt", None)


def test_notebook_runs_keep_checkpoints_and_resume_them(tmp_path, monkeypatch, capsys):
    """RESUME (notebooks), --resume (bloodlib run / bench, benchmark scripts): the session
    gives every training a checkpoint folder, and a second run with resume continues
    the first one's checkpoints instead of training again."""
    from bloodlib import session
    from bloodlib.experiments import wbc_segmentation as wcs

    monkeypatch.setenv("BLOODLIB_DATA", str(tmp_path / "no-data"))
    run = session.start("wcsegnet", output_dir=tmp_path / "out", verbose=False)
    assert run.knobs["resume"] is False
    assert run.knobs["checkpoint_dir"] == str((tmp_path / "out/checkpoints/wcsegnet").resolve())
    assert run.checkpoints.for_label("a b")[0].name == "a_b.pt"
    assert run.checkpoints.folder == tmp_path.resolve() / "out/checkpoints/wcsegnet"
    assert run.checkpoints.resume is False
    settings = replace(run.settings, epochs=2, time_budget_s=None, max_train_batches=2)
    included, _, _ = wcs.load_or_synthesize("jiangxi", tmp_path, 0,
                                            synthetic_images=settings.synthetic_images,
                                            image_size=settings.image_size)
    train, val = included[:8], included[8:12]
    _, first, _ = wcs.train_model("wcsegnet", train, val, settings, "cpu", 0, run.checkpoints)
    assert (tmp_path / "out/checkpoints/wcsegnet/wcsegnet_last.pt").is_file()
    again = session.start("wcsegnet", output_dir=tmp_path / "out", verbose=False, resume=True)
    capsys.readouterr()
    assert again.checkpoints.resume is True
    _, second, _ = wcs.train_model("wcsegnet", train, val, settings, "cpu", 0, again.checkpoints)
    assert "resuming from" in capsys.readouterr().out
    assert second.rows == first.rows  # nothing left to train: the history is the first run's


def test_run_and_bench_pass_resume_only_to_notebooks_that_train(tmp_path, monkeypatch):
    import papermill

    from bloodlib import notebooks
    from bloodlib.cli import main
    from bloodlib.session import pop_flag
    seen = {}
    monkeypatch.setattr(papermill, "execute_notebook",
                        lambda nb, out, parameters, **kw: seen.__setitem__(Path(nb).stem, parameters))
    monkeypatch.setattr(notebooks, "write_results_board", lambda out: None)
    assert main(["run", "00", "05", "--resume", "--out", str(tmp_path)]) == 0
    assert "RESUME" not in seen["00_setup_and_datasets"]
    assert seen["05_wcsegnet_nucleus_segmentation"]["RESUME"] is True
    argv = ["script", "a", "--resume", "b"]
    assert pop_flag(argv) and argv == ["script", "a", "b"] and not pop_flag(argv)
