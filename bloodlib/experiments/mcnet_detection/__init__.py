"""Paper 1 (MCNet): blood-cell detection on BCCD and TXL-PBC, and the PBC experiment.

Four detectors are trained on the same splits and scored by the same COCO evaluator
(:func:`bloodlib.metrics.coco_evaluate`): Faster R-CNN, Mask R-CNN and MCNet
(:mod:`bloodlib.models.mcnet`, Mask R-CNN + a mask-IoU head) from
:func:`bloodlib.models.detection.build_detector`, and YOLOv9 through ultralytics
(:mod:`bloodlib.yolo`), whose predictions are converted to COCO results first.

Choices made here (the paper does not say, or cannot be followed on a CPU):

* **Splits.** BCCD: the official train / val / test lists (205 / 87 / 72). TXL-PBC: the
  local copy has no test split, so its ``val`` (288) is the test set and 10 % of
  ``train`` is carved out for validation. PBC (Table 1): 80 / 20 per class as paper 1.
* **Masks.** BCCD and TXL-PBC have boxes only; Mask R-CNN and MCNet are trained on
  instance masks made inside the boxes by :func:`bloodlib.autolabel.autolabel_boxes`
  (paper 1 section 3.2 auto-annotates too). PBC masks and boxes come from
  :func:`bloodlib.autolabel.autolabel_pbc` (one centred cell per image). Mask metrics are
  therefore measured against automatic masks.
* **Metrics** (Table 2). ``precision`` / ``recall``: macro averages over the classes at
  score >= ``score_threshold`` (0.5) and IoU 0.5 (the paper gives no threshold);
  ``mAP50`` = COCO AP at IoU 0.5 and ``mAP50_95`` = COCO AP@[.5:.95] (the paper's "mAP",
  undefined there), both box-based for every model.
* **Preprocessing.** Paper 1 enhances contrast (CLAHE) and normalises stain before
  training; ``preprocessing`` in the profile applies :mod:`bloodlib.transforms.preprocess`
  to every image once (files written under the run's output folder), so all four models
  see the same pixels. The paper does not name its stain method (it cites [3]); ``full``
  uses Reinhard: Macenko rescales each stain so that its 99th-percentile concentration
  matches the PBC reference, and on BCCD (RBCs fill the field, little eosin-dense
  material) that multiplies the eosin concentration about 4x and turns the RBCs purple.
* **Training.** SGD, momentum 0.9, weight decay 1e-4 (section 4.1). The staged schedule
  (heads 50k, from stage 4 80k at 1e-3, all 40k at 1e-4) is used in ``full`` when the
  ImageNet backbone weights are in the torch hub cache; from random weights a frozen
  backbone makes no sense, so all layers train. ``quick`` fine-tunes an ImageNet
  EfficientNet-Lite0 (packaged weights, offline), ``bench_cpu`` a MobileNetV3; both use
  smaller heads and images and a time budget per model. YOLO starts from ultralytics'
  COCO weights only when they are on disk (``yolo_pretrained``).
"""

from __future__ import annotations

from ...data.splits import subset_coco
from ...metrics.detection import detection_roc
from .settings import (DATASET_LABELS, EXPERIMENT, LIGHT_HEADS, MASK_MODELS, MODEL_LABELS,
                       MODELS, PAPER, TABLE_METRICS, TORCHVISION_MODELS)
from .recipe import DetectorRecipe
from .data import (add_masks, class_names, load_pbc_splits, load_splits, make_loader,
                   preprocess_images, split_coco)
from .evaluate import (evaluate_model, evaluate_yolo_model, Evaluation,
                       evaluation_from_predictions, mask_iou_calibration)
from .train import (build_model, Outcome, quick_model, store_outcome, train_and_evaluate,
                    train_model, train_yolo_model)
from .tables import (ablation_table, benchmark_row, parameter_table, peak_memory_mb,
                     pretrained_table, reference_table, split_counts, table1, table2,
                     table_metrics, wide)
from .figures import (_gt_sample, ablation_figure, comparison_figure, confusion_figure,
                      dataset_figure, loss_figure, pr_comparison_figure, pr_figure,
                      preprocessing_figure, roc_figure, side_by_side_figure)

__all__ = ['DetectorRecipe', 'subset_coco', 'detection_roc', 'DATASET_LABELS', 'EXPERIMENT', 'LIGHT_HEADS',
           'MASK_MODELS', 'MODEL_LABELS', 'MODELS', 'PAPER', 'TABLE_METRICS',
           'TORCHVISION_MODELS', 'add_masks', 'class_names', 'load_pbc_splits',
           'load_splits', 'make_loader', 'preprocess_images', 'split_coco', 'evaluate_model',
           'evaluate_yolo_model', 'Evaluation', 'evaluation_from_predictions',
           'mask_iou_calibration', 'build_model', 'Outcome', 'quick_model', 'store_outcome',
           'train_and_evaluate', 'train_model', 'train_yolo_model', 'ablation_table',
           'benchmark_row', 'parameter_table', 'peak_memory_mb', 'pretrained_table', 'reference_table',
           'split_counts', 'table1', 'table2', 'table_metrics', 'wide', '_gt_sample',
           'ablation_figure', 'comparison_figure', 'confusion_figure', 'dataset_figure',
           'loss_figure', 'pr_comparison_figure', 'pr_figure', 'preprocessing_figure',
           'roc_figure', 'side_by_side_figure']
