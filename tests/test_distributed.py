"""Issue 25: every training entry point under torchrun (gloo, two CPU processes) gives the
result of one process with the same global batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).with_name("ddp_worker.py")
ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    return {**env, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


def _one_process(kind: str, out: Path, batch: int) -> None:
    done = subprocess.run([sys.executable, str(WORKER), kind, str(out), str(batch)],
                          env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def _torchrun(kind: str, out: Path, batch: int, nproc: int = 2) -> None:
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc-per-node={nproc}", str(WORKER), kind, str(out), str(batch)],
                          env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def _close(a: Path, b: Path, atol: float = 1e-5) -> None:
    sa, sb = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.allclose(sa[k].float(), sb[k].float(), atol=atol), (k, sa[k], sb[k])


@pytest.mark.parametrize("kind", ["fit", "detector", "steps"])
def test_two_processes_equal_one_with_the_same_global_batch(tmp_path, kind):
    _one_process(kind, tmp_path / "one.pt", 8)
    _torchrun(kind, tmp_path / "two.pt", 8)
    _close(tmp_path / "one.pt", tmp_path / "two.pt")
    _close(tmp_path / "two.pt.rank0.pt", tmp_path / "two.pt.rank1.pt", atol=0)


def test_gan_ranks_stay_in_step_under_torchrun(tmp_path):
    """The GAN's step calls sub-modules, so it averages gradients itself: the ranks draw
    different crops yet end with the same weights."""
    _torchrun("gan", tmp_path / "gan.pt", 2)
    _close(tmp_path / "gan.pt.rank0.pt", tmp_path / "gan.pt.rank1.pt", atol=0)


def test_without_torchrun_the_helpers_are_no_ops():
    from torch.utils.data import DataLoader

    from bloodlib.engine import distributed as ddp
    assert not ddp.init_from_env() and ddp.world_size() == 1 and ddp.is_main()
    loader = DataLoader(list(range(4)), batch_size=2, shuffle=True)
    assert ddp.distributed_loader(loader) is loader
    assert ddp.mean_over_ranks({"loss": 2.0}) == {"loss": 2.0} and ddp.any_rank(True)


def test_bloodlib_train_under_torchrun_writes_one_result(tmp_path):
    """``torchrun -m bloodlib train``: two ranks train, rank 0 writes the results JSON."""
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc-per-node=2", "-m", "bloodlib", "train", "wcsegnet",
                           "--profile", "quick", "--instant", "--out", str(tmp_path)],
                          env=_env(), capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(list((tmp_path / "results").glob("*.json"))) == 1
    assert done.stdout.count("wcsegnet wcsegnet (quick, instant)") == 1


def test_yolo_trains_on_several_gpus_through_ultralytics_device_list():
    """YOLO uses ultralytics' own multi-GPU training: mcnet's ``yolo_devices=[0, 1]``."""
    from bloodlib.config import get_profile
    from bloodlib.experiments import mcnet_detection  # noqa: F401  (registers its profiles)
    from bloodlib.yolo import _device_arg
    assert _device_arg([0, 1]) == "0,1" and _device_arg("cuda") == "0" and _device_arg("cpu") == "cpu"
    assert get_profile("mcnet", "full", yolo_devices=[0, 1])["yolo_devices"] == [0, 1]


def test_step_counted_schedules_see_each_ranks_share(monkeypatch):
    """A schedule over epochs x batches must count one rank's batches under torchrun."""
    from torch.utils.data import DataLoader

    from bloodlib.engine import distributed as ddp
    loader = DataLoader(list(range(10)), batch_size=2, shuffle=True)
    assert ddp.batches_per_rank(loader) == 5
    monkeypatch.setattr(ddp, "is_distributed", lambda: True)
    monkeypatch.setattr(ddp, "world_size", lambda: 2)
    assert ddp.batches_per_rank(loader) == 3  # 5 samples per rank in batches of 2
    drop = DataLoader(list(range(10)), batch_size=2, drop_last=True)
    assert ddp.batches_per_rank(drop) == 2
