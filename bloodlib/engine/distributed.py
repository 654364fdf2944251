"""Data-parallel training under ``torchrun`` (DistributedDataParallel).

``torchrun --nproc-per-node N`` starts N copies of a command with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and ``MASTER_ADDR``/``PORT`` set. :func:`init_from_env`
joins them into one process group (NCCL on GPUs, gloo on CPUs); the training loop
(:class:`bloodlib.engine.loop.TrainLoop`) then wraps the model in DDP, gives each rank
its share of every epoch (:func:`distributed_loader`), averages the logged losses over
the ranks and lets only rank 0 write checkpoints and results. Without ``torchrun``
every function here is a cheap no-op, so the same code runs on one process.
"""

from __future__ import annotations

import os
from typing import Any, Iterable, Mapping

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

__all__ = ["init_from_env", "is_distributed", "rank", "world_size", "is_main",
           "distributed_loader", "batches_per_rank", "wrap_model", "mean_over_ranks",
           "any_rank", "average_gradients", "average_buffers", "barrier", "shutdown", "local_device"]


def is_distributed() -> bool:
    """Whether this process is one of several in an initialised process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    """Rank 0 (or the only process): the one that writes files and prints."""
    return rank() == 0


def local_device(requested: Any = "auto") -> torch.device:
    """This rank's device: ``cuda:LOCAL_RANK`` under torchrun on GPUs, else ``requested``."""
    if torch.cuda.is_available() and "LOCAL_RANK" in os.environ and requested in ("auto", "cuda"):
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    if requested in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def init_from_env(backend: str | None = None) -> bool:
    """Join the process group that ``torchrun`` describes in the environment; returns
    whether training is distributed. Does nothing without ``WORLD_SIZE`` > 1 or when
    already initialised. ``backend`` defaults to NCCL with GPUs, gloo without."""
    if dist.is_initialized():
        return is_distributed()
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    return True


def shutdown() -> None:
    """Leave the process group (end of a torchrun job)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def wrap_model(model: nn.Module, device: torch.device, sync_batchnorm: bool = False) -> nn.Module:
    """``model`` in DistributedDataParallel when distributed (optionally with SyncBatchNorm,
    which needs GPUs); the model itself otherwise."""
    if not is_distributed():
        return model
    if sync_batchnorm:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids,
                                               find_unused_parameters=_has_frozen(model))


def _has_frozen(model: nn.Module) -> bool:
    """Staged detector training freezes layers; DDP must then look for unused ones."""
    return any(not p.requires_grad for p in model.parameters())




def distributed_loader(loader: Any, seed: int = 0, pin_memory: bool = False) -> Any:
    """``loader`` as the device and the process group want it: under torchrun the same
    DataLoader with a :class:`DistributedSampler`, so each rank reads its own 1/N of every
    epoch (shuffled when the original was); with ``pin_memory`` (CUDA, from the device
    plan) in pinned host memory, the sampler kept. Loaders that are not DataLoaders (lists
    of batches) and loaders that need no change are returned as they are."""
    if not isinstance(loader, DataLoader) or loader.batch_size is None:
        return loader
    distributed = is_distributed()
    if not distributed and (not pin_memory or loader.pin_memory):
        return loader
    sampler = loader.sampler
    if distributed:
        sampler = DistributedSampler(loader.dataset, shuffle=isinstance(sampler, RandomSampler),
                                     seed=seed, drop_last=loader.drop_last)
    return DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=sampler,
                      num_workers=loader.num_workers, collate_fn=loader.collate_fn,
                      pin_memory=pin_memory or loader.pin_memory, drop_last=loader.drop_last,
                      worker_init_fn=loader.worker_init_fn, generator=loader.generator,
                      persistent_workers=loader.persistent_workers if loader.num_workers else False)


def batches_per_rank(loader: Any) -> int:
    """Batches one rank draws per epoch once :func:`distributed_loader` has split the data
    (``len(loader)`` on one process), for schedules counted in steps."""
    n = len(loader)
    if not is_distributed() or not isinstance(loader, DataLoader) or loader.batch_size is None:
        return n
    per_rank = -(-len(loader.dataset) // world_size())
    bs = loader.batch_size
    return per_rank // bs if loader.drop_last else -(-per_rank // bs)


def mean_over_ranks(values: Mapping[str, float]) -> dict[str, float]:
    """Each value averaged over the ranks (one all-reduce); unchanged on one process."""
    if not is_distributed() or not values:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64,
                     device=_reduce_device())
    dist.all_reduce(t)
    return {k: float(v) / world_size() for k, v in zip(keys, t.tolist())}


def average_gradients(params: Iterable[torch.Tensor]) -> None:
    """Each gradient averaged over the ranks (for steps that bypass DDP's forward)."""
    if not is_distributed():
        return
    n = world_size()
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= n


def average_buffers(module: nn.Module) -> None:
    """Float buffers (batch-norm running statistics) averaged over the ranks, so that
    ranks that bypass DDP's buffer broadcast keep the same model."""
    if not is_distributed():
        return
    for b in module.buffers():
        if b.is_floating_point():
            dist.all_reduce(b)
            b /= world_size()


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any (so all ranks stop together)."""
    if not is_distributed():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=_reduce_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def _reduce_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
