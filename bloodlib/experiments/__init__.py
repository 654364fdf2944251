"""Experiment packages: one per paper reproduction, each exposing the data, training,
evaluation and figure helpers that its notebook calls.

Importing :mod:`bloodlib.experiments` (or any module in it) registers every experiment's
profiles and trainers with the low layers (:func:`bloodlib.config.register`,
:data:`bloodlib.registry.TRAINERS`), here in one place, so any experiment's profile can be
asked for by name whichever experiment a notebook imports first."""

from . import (blood_cancer, maskrcnn_backbones, mcnet_detection, unet_family,  # noqa: F401
               wbc_classification, wbc_segmentation)
from . import mains  # noqa: F401,E402  (last: it fills TRAINERS from the packages above)

__all__ = ["blood_cancer", "maskrcnn_backbones", "mcnet_detection", "unet_family",
           "wbc_classification", "wbc_segmentation", "mains"]
