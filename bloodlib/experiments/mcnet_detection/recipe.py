"""How paper 1's torchvision detectors are built, fed, trained and scored: one typed recipe
that paper 1 (:class:`~bloodlib.experiments.configs.McnetConfig`) and paper 2
(:class:`~bloodlib.experiments.configs.MaskrcnnBackbonesConfig`, one recipe per backbone)
both hand to the training and evaluation code of this package."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional, Union


@dataclass(frozen=True)
class DetectorRecipe:
    """A detector's build, data, optimisation and scoring settings."""

    backbone: str
    min_size: int
    max_size: int
    aspect_ratios: list
    anchor_sizes: Optional[list]
    heads: dict                      # build_detector keyword arguments (light heads ...)
    pretrained: Union[bool, str]     # ImageNet backbone: True, False or "auto"
    stages: Optional[str]            # "paper1": paper 1's staged fine-tuning
    iterations: int
    lr: float
    momentum: float
    weight_decay: float
    warmup_iters: int
    lr_steps: list                   # fractions of the iterations (or of the time budget,
                                     # whichever comes first) where the rate drops 10x
    grad_clip: Optional[float]
    batch_size: int
    hflip: float
    vflip: float
    num_workers: int
    eval_every_epochs: Optional[int]
    time_budget_s: Optional[float]
    score_threshold: float
    iou_threshold: float
    preprocessing: Optional[dict]    # CLAHE / stain normalisation the images went through

    @classmethod
    def of(cls, settings: Any, **changes: Any) -> "DetectorRecipe":
        """The recipe in an experiment's typed ``settings`` (fields of the same name), with
        ``changes`` for what those settings name differently or lack."""
        names = [f.name for f in dataclasses.fields(cls)]
        given = {n: getattr(settings, n) for n in names if hasattr(settings, n)}
        missing = set(names) - set(given) - set(changes)
        if missing:
            raise TypeError(f"{type(settings).__name__} lacks {sorted(missing)}; pass them "
                            "to DetectorRecipe.of as keyword arguments.")
        return cls(**{**given, **changes})
