"""Paper 5 (WCSegNet): WBC-nucleus segmentation on the Zheng sets (Jiangxi, CellaVision).

The task, as paper 5 (section 2.1-2.3) defines it: **4 classes per pixel** — background
and the nucleus of a neutrophil, a lymphocyte or a basophil. The nucleus class of an image
is its WBC type (the Zheng CSV label); cytoplasm counts as background. Monocytes and
eosinophils are left out of paper 5 entirely: :func:`paper5_records` returns them
separately so that a notebook can count them.

Choices made here (the paper does not say):

* **Metrics** (Table 1). The paper gives the binary formulas (TP/FP/FN, eq. 3-6) and
  calls the last column "mean IoU", so the scores are averaged over classes; with only
  four classes and values of 0.96-0.98 the background must be in the average (the Keras
  ``MeanIoU`` convention). We therefore report, from one confusion matrix pooled over
  all test pixels: ``accuracy`` = pixel accuracy; ``precision``, ``dice``, ``mIoU`` =
  the mean over the four classes **including background**, skipping classes that are
  neither present nor predicted (so a split without a basophil averages over three).
  The foreground-only means (``precision_fg``, ``dice_fg``, ``mIoU_fg``), the per-class
  values and ``nucleus_dice`` (every nucleus vs the rest, type ignored) are reported too.
* **Split**: 80:20 train/test stratified by WBC type (section 3). Classes with fewer
  than ``min_count`` (2) images cannot be stratified: they stay in train (Jiangxi's
  single basophil), so the Jiangxi test set has no basophil. For early stopping and the
  convergence curves a validation part is carved out of train the same way; the test
  set is used once, at the end.
* **Optimiser**: Adam (lr 1e-4 in ``full``, as the paper's learning rate; 1e-3 in the CPU
  profiles, which train for minutes), batch 16, categorical cross-entropy on logits.
  ``bench_cpu`` decays the rate with a cosine over a fixed number of epochs, the same for
  every model, so a busy machine changes the minutes but not the result.
* **Cross-dataset check** (not in the paper): a WCSegNet trained on Jiangxi +
  CellaVision is scored nucleus-vs-rest on the BCCD WBC masks, never trained on, with
  crops centred on the annotated cell (:func:`cross_dataset_check`).
* **Resolution**: every image is resized to ``image_size`` (the paper: 120x120) after
  augmentation; metrics are computed at that resolution.
"""

from __future__ import annotations

from .settings import (CLASS_NAMES, DATASET_LABELS, EXCLUDED_TYPES, EXPERIMENT, MODEL_LABELS,
                       MODELS, PAPER, PAPER5_COLORS, PAPER5_TYPES, TABLE1_METRICS)
from .data import (class_counts, filter_paper5, load_or_synthesize, make_dataset, paper5_mask,
                   paper5_records, RecordSplit, split_records, take_subset, train_val_test)
from .evaluate import evaluate, finite, paper5_metrics
from .train import (build_model, build_scheduler, build_training_loss, checkpoint_meta,
                    per_dataset, train_model)
from .errors import boundary_error_table, nucleus_masks
from .cross import bccd_wbc_records, cross_dataset_check, wbc_crop
from .quick import quick_model
from .tables import parameter_table, pretrained_table, reference_table, table1
from .figures import (augmentation_figure, color_mask, convergence_figure,
                      cross_dataset_figure, qualitative_figure, samples_figure,
                      worst_images_figure)

__all__ = ['quick_model', 'CLASS_NAMES', 'DATASET_LABELS', 'EXCLUDED_TYPES', 'EXPERIMENT', 'MODEL_LABELS',
           'MODELS', 'PAPER', 'PAPER5_COLORS', 'PAPER5_TYPES', 'TABLE1_METRICS',
           'class_counts', 'filter_paper5', 'load_or_synthesize', 'make_dataset',
           'paper5_mask', 'paper5_records', 'RecordSplit', 'split_records', 'take_subset',
           'train_val_test', 'evaluate', 'finite', 'paper5_metrics', 'build_model',
           'build_scheduler', 'build_training_loss', 'checkpoint_meta', 'per_dataset',
           'train_model', 'boundary_error_table', 'nucleus_masks', 'bccd_wbc_records',
           'cross_dataset_check', 'wbc_crop', 'parameter_table', 'pretrained_table',
           'reference_table', 'table1', 'augmentation_figure', 'color_mask',
           'convergence_figure', 'cross_dataset_figure', 'qualitative_figure',
           'samples_figure', 'worst_images_figure']
