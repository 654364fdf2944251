"""Image (and image + mask) transforms: augmentation now; contrast/stain modules later."""

from .augment import (PAPER5_AUGMENTATION, AlbumentationsSegmentation,
                      cell_classification_augmentation, paper5_augmentation,
                      single_augmentations)

__all__ = ["paper5_augmentation", "single_augmentations", "cell_classification_augmentation",
           "AlbumentationsSegmentation", "PAPER5_AUGMENTATION"]
