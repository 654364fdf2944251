"""A small training run for tests/test_resume.py, killed with SIGKILL and resumed there.

usage: python resume_worker.py {fit,detector,steps,gan} CHECKPOINT OUT.pt [SLEEP_S]
Trains with ``resume_from="auto"`` and writes the final weights to OUT.pt.
"""

from __future__ import annotations

import sys
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

torch.set_num_threads(1)


class Slow(Dataset):
    """32 random samples; each read sleeps so that a test can kill the run mid-way."""

    def __init__(self, sleep_s: float, detection: bool = False) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(32, 3, 8, 8, generator=g)
        self.y = torch.randint(0, 2, (32,), generator=g)
        self.sleep_s, self.detection = sleep_s, detection

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        time.sleep(self.sleep_s)
        x = self.x[i] + 0.1 * torch.randn(3, 8, 8)  # a random "augmentation"
        if self.detection:
            return x, {"labels": self.y[i:i + 1], "boxes": torch.tensor([[0.0, 0.0, 4.0, 4.0]])}
        return x, self.y[i]


class TinyDetector(nn.Module):
    """A loss-dict model like torchvision's, drawing random numbers in forward as the
    RPN's sampler does."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(192, 2))

    def forward(self, images, targets):
        x = torch.stack(list(images))
        keep = torch.randperm(len(x))[: max(1, len(x) // 2)]
        labels = torch.cat([t["labels"] for t in targets])
        return {"loss_classifier": nn.functional.cross_entropy(self.net(x[keep]), labels[keep])}


def main() -> None:
    kind, ckpt, out = sys.argv[1], sys.argv[2], sys.argv[3]
    sleep_s = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
    torch.manual_seed(0)
    if kind == "fit":
        from bloodlib.engine.trainer import fit
        model = nn.Sequential(nn.Flatten(), nn.Linear(192, 16), nn.ReLU(), nn.Linear(16, 2))
        loader = DataLoader(Slow(sleep_s), batch_size=8, shuffle=True)
        opt = torch.optim.Adam(model.parameters(), 1e-2)
        fit(model, loader, None, nn.CrossEntropyLoss(), opt, 6, "cpu", checkpoint_path=ckpt,
            resume_from="auto", checkpoint_every_s=0, progress=False, restore_best=False,
            monitor="train_loss", mode="min")
    elif kind == "gan":  # notebook 03's RENS-GAN
        import numpy as np

        from bloodlib.engine import gan as rens_gan
        crops = rens_gan.random_crops
        rens_gan.random_crops = lambda *a: (time.sleep(sleep_s * 20), crops(*a))[1]
        images = [(np.random.default_rng(i).random((40, 40, 3)) * 255).astype(np.uint8)
                  for i in range(4)]
        model, _ = rens_gan.train_gan(images, steps=12, crop=16, batch_size=2, channels=4,
                                      blocks=1, vgg_weights="random", checkpoint_path=ckpt,
                                      resume_from="auto")
    elif kind == "steps":  # notebook 03's loop (blood_cancer.train_steps)
        from pathlib import Path

        from bloodlib.engine.checkpoint import Checkpoints
        from bloodlib.experiments.blood_cancer import Optimization, train_steps
        model = TinyDetector()
        loader = DataLoader(Slow(sleep_s, detection=True), batch_size=4, shuffle=True,
                            collate_fn=lambda b: tuple(zip(*b)))
        optim = Optimization("adamw", lr=1e-2, warmup_steps=2, lr_schedule="cosine")
        train_steps(model, loader, lambda m, b: m(*b), optim, 20, None, label=Path(ckpt).stem,
                    checkpoints=Checkpoints(Path(ckpt).parent, resume=True))
    else:
        from bloodlib.engine.detection import train_detector
        model = TinyDetector()
        loader = DataLoader(Slow(sleep_s, detection=True), batch_size=4, shuffle=True,
                            collate_fn=lambda b: tuple(zip(*b)))
        train_detector(model, loader, iterations=20, lr=0.05, warmup_iters=2, device="cpu",
                       checkpoint_path=ckpt, checkpoint_every=3, resume_from="auto",
                       progress=False, keep_best=False)
    torch.save(model.state_dict(), out)


if __name__ == "__main__":
    main()
