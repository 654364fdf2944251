"""Image (and image + mask) transforms: augmentation (``augment``), contrast enhancement and
stain normalisation (``preprocess``)."""

from .augment import (PAPER5_AUGMENTATION, AlbumentationsSegmentation,
                      cell_classification_augmentation, paper5_augmentation,
                      single_augmentations)
from .preprocess import (DEFAULT_TARGET, StainTarget, build_preprocessing, clahe,
                         fit_stain_target, macenko_normalize, reinhard_normalize)

__all__ = ["paper5_augmentation", "single_augmentations", "cell_classification_augmentation",
           "AlbumentationsSegmentation", "PAPER5_AUGMENTATION",
           "clahe", "reinhard_normalize", "macenko_normalize", "fit_stain_target",
           "build_preprocessing", "StainTarget", "DEFAULT_TARGET"]
