"""A small training run for tests/test_distributed.py, started once as one process and
once under ``torchrun --nproc-per-node 2`` (gloo, CPU).

usage: python ddp_worker.py {fit,detector,steps,gan} OUT.pt GLOBAL_BATCH

The one-process run reads the data through a one-replica ``DistributedSampler`` with the
global batch, so both runs see the same samples in each step; the two-process run gives
each rank a plain shuffled loader of half the batch, which the training loop turns into
a two-replica ``DistributedSampler``. Rank 0 writes the final weights to OUT.pt (every
rank writes ``OUT.rankN.pt`` so the test can check that the ranks agree).
"""

from __future__ import annotations

import sys

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from bloodlib.engine import distributed as ddp

torch.set_num_threads(1)


def _data(detection: bool = False):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 3, 8, 8, generator=g), torch.randint(0, 2, (32,), generator=g)
    if not detection:
        return TensorDataset(x, y)
    return [(x[i], {"labels": y[i:i + 1], "boxes": torch.tensor([[0.0, 0.0, 4.0, 4.0]])})
            for i in range(32)]


class TinyDetector(nn.Module):
    """A loss-dict model like torchvision's (mean loss over the batch)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(192, 2))

    def forward(self, images, targets):
        x = torch.stack(list(images))
        labels = torch.cat([t["labels"] for t in targets])
        return {"loss_classifier": nn.functional.cross_entropy(self.net(x), labels)}


def _loader(dataset, global_batch: int, collate=None) -> DataLoader:
    if ddp.is_distributed():
        return DataLoader(dataset, batch_size=global_batch // ddp.world_size(), shuffle=True,
                          collate_fn=collate)
    sampler = DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=0)
    return DataLoader(dataset, batch_size=global_batch, sampler=sampler, collate_fn=collate)


def main() -> None:
    kind, out, global_batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
    ddp.init_from_env()
    torch.manual_seed(0)
    if kind == "fit":
        from bloodlib.engine.trainer import fit
        model = nn.Sequential(nn.Flatten(), nn.Linear(192, 16), nn.ReLU(), nn.Linear(16, 2))
        fit(model, _loader(_data(), global_batch), None, nn.CrossEntropyLoss(),
            torch.optim.SGD(model.parameters(), 0.1, momentum=0.9), 3, "cpu", progress=False,
            monitor="train_loss", mode="min")
    elif kind == "detector":
        from bloodlib.engine.detection import train_detector
        model = TinyDetector()
        train_detector(model, _loader(_data(True), global_batch, lambda b: tuple(zip(*b))),
                       iterations=10, lr=0.05, warmup_iters=3, progress=False)
    elif kind == "steps":
        from bloodlib.experiments.blood_cancer import Optimization, train_steps
        model = TinyDetector()
        optim = Optimization("adamw", lr=1e-2, warmup_steps=2, lr_schedule="cosine")
        train_steps(model, _loader(_data(True), global_batch, lambda b: tuple(zip(*b))),
                    lambda m, b: m(*b), optim, 10, None)
    else:  # the GAN: each rank its own crops, gradients averaged
        import numpy as np

        from bloodlib.engine import gan as rens_gan
        images = [(np.random.default_rng(i).random((40, 40, 3)) * 255).astype(np.uint8)
                  for i in range(4)]
        model, _ = rens_gan.train_gan(images, steps=4, crop=16, batch_size=2, channels=4,
                                      blocks=1, vgg_weights="random")
    torch.save(model.state_dict(), f"{out}.rank{ddp.rank()}.pt")
    if ddp.is_main():
        torch.save(model.state_dict(), out)
    ddp.shutdown()


if __name__ == "__main__":
    main()
