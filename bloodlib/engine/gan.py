"""Training of the RENS-GAN augmenter (:mod:`bloodlib.models.rens_gan`) on the one
training loop: a generator and a discriminator update per step (:class:`GanStep`), with
checkpoints, resume and torchrun like every other model."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..models.rens_gan import RensGAN, degrade, random_crops
from . import distributed as ddp
from .checkpoint import resolve_resume
from .device import device_plan
from .loop import CheckpointHook, TrainLoop, TrainStep

__all__ = ["GANHistory", "GanStep", "train_gan"]


@dataclass
class GANHistory:
    """Per-step losses of :func:`train_gan` and the wall time."""

    rows: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    feature_weights: str = "random"

    def to_frame(self) -> "Any":
        return pd.DataFrame(self.rows)


def _generator_loss(gan: RensGAN, noisy: torch.Tensor, clean_lr: torch.Tensor,
                    real: torch.Tensor, adv_weight: float, feature_weight: float
                    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    denoised = gan.g_noise(noisy)
    fake = gan.g_resolution(denoised)
    pixel = F.l1_loss(fake, real)
    noise = F.l1_loss(denoised, clean_lr)
    feat = F.l1_loss(gan.features(fake), gan.features(real))
    logits = gan.discriminator(fake)
    adv = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
    loss = pixel + noise + feature_weight * feat + adv_weight * adv
    parts = {"pixel": pixel, "noise": noise, "feature": feat, "adversarial": adv,
             "generator": loss}
    return loss, fake, {k: float(v.detach()) for k, v in parts.items()}


def _discriminator_loss(gan: RensGAN, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    d_real, d_fake = gan.discriminator(real), gan.discriminator(fake.detach())
    return 0.5 * (F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real))
                  + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake)))


class GanStep(TrainStep):
    """One RENS-GAN update: random crops of the images, degraded; a generator step, then
    a discriminator step (two Adam optimisers). The crop generator (NumPy) and the noise
    generator (torch) are part of the state, so a resumed run draws the same crops."""

    def __init__(self, gan: RensGAN, images: Sequence[np.ndarray], *, lr: float,
                 batch_size: int, crop: int, noise_std: float, adv_weight: float,
                 feature_weight: float, seed: int) -> None:
        g_params = [*gan.g_noise.parameters(), *gan.g_resolution.parameters()]
        super().__init__({"generator": torch.optim.Adam(g_params, lr=lr, betas=(0.5, 0.999)),
                          "discriminator": torch.optim.Adam(gan.discriminator.parameters(),
                                                            lr=lr, betas=(0.5, 0.999))})
        self.gan, self.images, self.batch_size, self.crop = gan, images, batch_size, crop
        self.noise_std, self.adv_weight, self.feature_weight = noise_std, adv_weight, feature_weight
        self.rng, self.gen = np.random.default_rng(seed), torch.Generator().manual_seed(seed)

    def run(self, loop: Any, batch: Any) -> dict[str, Any]:
        real = random_crops(self.images, self.batch_size, self.crop, self.rng).to(loop.device)
        noisy, clean_lr = degrade(real, self.noise_std, self.gen)
        loss_g, fake, row = _generator_loss(self.gan, noisy, clean_lr, real, self.adv_weight,
                                            self.feature_weight)
        self.update(loop, loss_g, self.optimizers["generator"])
        loss_d = _discriminator_loss(self.gan, real, fake)
        self.update(loop, loss_d, self.optimizers["discriminator"])
        return {**row, "discriminator": float(loss_d.detach()), "n": len(real)}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "crop_noise": self.gen.get_state(),
                "numpy_rng": json.dumps(self.rng.bit_generator.state)}

    def load_state_dict(self, state: Any) -> None:
        super().load_state_dict(state)
        self.gen.set_state(state["crop_noise"])
        self.rng.bit_generator.state = json.loads(state["numpy_rng"])


def train_gan(images: Sequence[np.ndarray], steps: int = 100, crop: int = 64,
              batch_size: int = 8, lr: float = 2e-4, noise_std: float = 0.04,
              adv_weight: float = 1e-2, feature_weight: float = 0.1, channels: int = 32,
              blocks: int = 3, vgg_weights: str = "auto", device: Any = "cpu", seed: int = 0,
              time_budget_s: Optional[float] = None, checkpoint_path: Optional[Any] = None,
              resume_from: Any = None) -> tuple[RensGAN, GANHistory]:
    """Train a :class:`RensGAN` on random ``crop`` px crops of RGB uint8 ``images`` for
    ``steps`` generator/discriminator updates (Adam, betas 0.5/0.999), or until
    ``time_budget_s``, on the one training loop (:class:`GanStep`). Returns the model
    (eval mode) and the per-step losses. ``checkpoint_path`` gets the state after the
    first step, every 60 s, at the end and on Ctrl-C (both optimizers and every random
    generator); ``resume_from`` (a path, or ``"auto"`` for ``checkpoint_path`` when it
    exists) continues it with the same crops and noise. Under torchrun each rank draws its
    own crops and the gradients are averaged over the ranks."""
    if not images:
        raise ValueError("train_gan needs at least one image.")
    if crop % 2:
        raise ValueError(f"crop must be even, got {crop}.")
    torch.manual_seed(seed)
    device = torch.device(device)
    gan = RensGAN(channels, blocks, vgg_weights, seed).to(device).train()
    step = GanStep(gan, images, lr=lr, batch_size=batch_size, crop=crop, noise_std=noise_std,
                   adv_weight=adv_weight, feature_weight=feature_weight, seed=seed + ddp.rank())
    hooks = ([CheckpointHook(checkpoint_path, None, every_s=60.0, at="step")]
             if checkpoint_path is not None else [])
    resume = resolve_resume(resume_from, Path(checkpoint_path) if checkpoint_path else None)
    loop = TrainLoop(gan, step, [None] * int(steps), max_steps=int(steps),
                     time_budget_s=time_budget_s, hooks=hooks, device=device,
                     plan=device_plan(device, False, False), resume_from=resume,
                     progress=False, wrap_ddp=False)
    state = loop.run()
    history = GANHistory(rows=[{k: v for k, v in r.items() if k not in ("epoch", "images", "lr")}
                               for r in state.rows],
                         seconds=loop.elapsed(), feature_weights=gan.features.weights)
    return gan.eval(), history
