"""Paper 3's figures: the pipeline, attention, the GAN, training, outcomes, the ablation,
Table I."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
import matplotlib.pyplot as plt
from matplotlib.patches import FancyBboxPatch

from ...models.rmaskrcnn import attention_maps
from ...models.rens_gan import degrade, random_crops
from ...viz import finish_figure, overlay_mask
from ..configs import BloodCancerConfig
from .data import EvalSet, to_uint8
from .evaluate import Prediction
from .train import TrainLog


# ============================================================================ figures
def pipeline_figure() -> Any:
    """Paper 3's Figure 1 as we run it: augmentation, segmentation, classification."""
    steps = [("Bone-marrow image", "SegPC-2021\n(stand-in for\nMiMM_SBILab)"),
             ("RENS-GAN", "noise suppression\n+ 2x resolution\n(augmentation)"),
             ("R-Mask R-CNN", "backbone -> FPN-AM\n-> B-U-AM -> RPN/RoI\n-> multi-scale mask head"),
             ("Segmented cells", "instance masks\n-> cell crops"),
             ("DCNN", "DenseNet-121\nclassifier"),
             ("Class", "paper: ALL / MM\nhere: plasma cell /\nother")]
    fig, ax = plt.subplots(figsize=(13, 2.6))
    for i, (title, text) in enumerate(steps):
        x = i * 2.2
        ax.add_patch(FancyBboxPatch((x, 0), 1.8, 1.6, boxstyle="round,pad=0.05",
                                    fc="#e8eef7" if i % 2 else "#f7efe3", ec="0.3"))
        ax.text(x + 0.9, 1.3, title, ha="center", va="center", fontsize=10, weight="bold")
        ax.text(x + 0.9, 0.62, text, ha="center", va="center", fontsize=8)
        if i < len(steps) - 1:
            ax.annotate("", xy=(x + 2.17, 0.8), xytext=(x + 1.88, 0.8),
                        arrowprops=dict(arrowstyle="->", lw=1.5))
    ax.set_xlim(-0.2, len(steps) * 2.2 - 0.3)
    ax.set_ylim(-0.2, 1.8)
    ax.axis("off")
    ax.set_title("DeepBCSDnet pipeline (paper 3, Figure 1) as run in this notebook")
    return finish_figure(fig)


@torch.no_grad()
def attention_figure(model: nn.Module, image: torch.Tensor, n_channels: int = 3) -> Any:
    """Paper 3's Figures 4-5 for a trained R-Mask R-CNN with CA-SA: the image, the spatial
    attention maps of F2 (FPN-AM) and N3 (B-U-AM), the channel weights of F2, and F2's
    most and least weighted channels."""
    maps = attention_maps(model, image)
    ca, sa = maps.get("fpn.fpn_attention.0.0"), maps.get("fpn.fpn_attention.0.1")
    sa_n3 = maps.get("fpn.bu_attention.0.1")
    if ca is None or sa is None:
        raise ValueError("attention_figure needs an R-Mask R-CNN with CA-SA attention.")
    batch, _ = model.transform([image])
    fpn = model.backbone.fpn
    f2 = fpn.top_down(list(model.backbone.body(batch.tensors).values()))[0][0]
    order = torch.argsort(ca, descending=True)
    chosen = [*order[:n_channels].tolist(), int(order[-1])]
    fig, axes = plt.subplots(2, 4, figsize=(13, 6.4))
    rgb = to_uint8(image)
    axes[0, 0].imshow(rgb)
    axes[0, 0].set_title("input")
    for ax, m, t in ((axes[0, 1], sa, "SA weights, F2 (FPN-AM)"),
                     (axes[0, 2], sa_n3, "SA weights, N3 (B-U-AM)")):
        ax.imshow(rgb)
        if m is not None:
            ax.imshow(torch.nn.functional.interpolate(m[None, None], size=rgb.shape[:2],
                                                      mode="bilinear")[0, 0].numpy(),
                      cmap="magma", alpha=0.55)
        ax.set_title(t, fontsize=9)
    axes[0, 3].bar(range(len(ca)), np.sort(ca.numpy())[::-1] * len(ca), color="tab:purple")
    axes[0, 3].axhline(1.0, color="0.4", ls=":", lw=1)
    axes[0, 3].set(title="CA weights x C, F2 (sorted)", xlabel="channel rank",
                   ylabel="weight (1 = uniform)")
    for ax, c in zip(axes[1], chosen):
        ax.imshow(f2[c].numpy(), cmap="viridis")
        rank = "lowest" if c == chosen[-1] else f"top {chosen.index(c) + 1}"
        ax.set_title(f"F2 channel {c} ({rank}, w x C = {float(ca[c]) * len(ca):.2f})", fontsize=9)
    for ax in [*axes[0, :3], *axes[1]]:
        ax.axis("off")
    fig.suptitle("Channel- and spatial-attention of the trained R-Mask R-CNN "
                 "(paper 3, Figures 4-5)")
    return finish_figure(fig)


@torch.no_grad()
def gan_figure(gan: Any, images: Sequence[np.ndarray], history: Any, settings: BloodCancerConfig,
               seed: int = 0) -> Any:
    """RENS-GAN before/after on crops of ``images`` (original, degraded input, generated)
    and the training losses."""
    crop = 2 * int(settings.gan.crop)
    real = random_crops(images, 3, min(crop, *(min(i.shape[:2]) for i in images)),
                        np.random.default_rng(seed))
    noisy, _ = degrade(real, float(settings.gan.noise_std), torch.Generator().manual_seed(seed))
    fake = gan(noisy.to(next(gan.parameters()).device)).cpu()
    fig, axes = plt.subplots(3, 4, figsize=(12, 9))
    for i in range(3):
        for ax, img, t in ((axes[i, 0], real[i], "original"),
                           (axes[i, 1], noisy[i], "degraded input (1/2 res + noise)"),
                           (axes[i, 2], fake[i], "RENS-GAN output (2x)")):
            ax.imshow(img.permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_title(t, fontsize=9)
            ax.axis("off")
    df = history.to_frame()
    gs = axes[0, 3].get_gridspec()
    for ax in axes[:, 3]:
        ax.remove()
    ax = fig.add_subplot(gs[:, 3])
    for col in ("pixel", "feature", "adversarial", "discriminator"):
        ax.plot(df["step"], df[col], label=col)
    ax.set(xlabel="step", ylabel="loss", yscale="log",
           title=f"GAN losses (VGG features: {history.feature_weights})")
    ax.legend(fontsize=8)
    return finish_figure(fig)


def training_figure(logs: Mapping[str, TrainLog]) -> Any:
    """Training loss per step (smoothed) of each model."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, log in logs.items():
        df = log.to_frame()
        if len(df):
            ax.plot(df["step"], df["loss"].rolling(5, min_periods=1).mean(), label=name)
    ax.set(xlabel="step", ylabel="total loss (5-step mean)", title="Training loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return finish_figure(fig)


def outcomes_figure(ev: EvalSet, preds: Mapping[str, Sequence[Prediction]], n: int = 3,
                    score_threshold: float = 0.5) -> Any:
    """Paper 3's Figure 11: image, ground truth and each method's cells on ``n`` images."""
    n = min(n, len(ev.images))
    cols = ["image", "ground truth", *preds]
    fig, axes = plt.subplots(n, len(cols), figsize=(2.4 * len(cols), 2.5 * n), squeeze=False)
    for i in range(n):
        rgb = to_uint8(ev.images[i])
        panels = [rgb, overlay_mask(rgb, ev.masks[i]) if len(ev.masks[i]) else rgb]
        for p in preds.values():
            keep = p[i].masks[p[i].scores >= score_threshold] if len(p[i].masks) else p[i].masks
            panels.append(overlay_mask(rgb, keep) if len(keep) else rgb)
        for ax, img, t in zip(axes[i], panels, cols):
            ax.imshow(img)
            ax.axis("off")
            if i == 0:
                ax.set_title(t, fontsize=9)
    fig.suptitle("Segmented outcomes on validation images (paper 3, Figure 11)")
    return finish_figure(fig)


def ablation_figure(df: pd.DataFrame) -> Any:
    """Bars of cell IoU and segm AP50 per variant."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.45 * len(df) + 1.8))
    for ax, col in zip(axes, ("cell_iou", "segm_AP50")):
        bars = ax.barh(df.index[::-1], df[col][::-1].astype(float), color="tab:blue")
        ax.bar_label(bars, [f"{v:.3f}" for v in df[col][::-1].astype(float)], fontsize=8,
                     padding=2)
        ax.set(xlabel=col, xlim=(0, 1.1))
        ax.grid(axis="x", alpha=0.3)
    axes[1].set_yticklabels([])
    fig.suptitle("Ablation: attention in FPN / bottom-up path / mask head")
    return finish_figure(fig)


def table1_figure(df: pd.DataFrame) -> Any:
    """Table I as bars: paper vs ours for IoU, PA and RMSE, one group per model."""
    metrics = [("IoU", "IoU (%)"), ("pixel_accuracy", "PA (%)"), ("rmse", "RMSE (%)")]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for ax, (key, label) in zip(axes, metrics):
        sub = df[df["metric"] == key]
        x = np.arange(len(sub))
        for off, col, color in ((-0.2, "paper", "0.6"), (0.2, "ours", "tab:blue")):
            bars = ax.bar(x + off, sub[col], 0.4, label=col, color=color)
            ax.bar_label(bars, [f"{v:.1f}" for v in sub[col]], fontsize=7, padding=2)
        ax.set_xticks(x, sub["model"], rotation=20, ha="right")
        ax.set(title=label, ylim=(0, 110))
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Table I: paper 3 (SN-AM + MiMM_SBILab + C-NMC) vs ours (SegPC-2021 validation)")
    return finish_figure(fig)
