"""Paper 3 (DeepBCSDnet): RENS-GAN augmentation, R-Mask R-CNN segmentation and a
DenseNet-121 ("DCNN") classifier on segmented cells — the helpers behind notebook 03.

What runs on which data (paper 3 used SN-AM, MiMM_SBILab and C-NMC 2019, none of which
is available here; loaders for their layouts are in :mod:`bloodlib.data.parsers`):

* **Segmentation** (Table I, the ablation, Figure 11): SegPC-2021, plasma cells of
  multiple myeloma from SBILab, the group behind MiMM_SBILab — it stands in for
  MiMM_SBILab. Task: instance segmentation of the annotated plasma cells ("cell"
  polygons). Train on the SegPC train split, evaluate on its validation split. Images
  are the local 512 px letterboxed copies, resized to ``image_size``; metrics are
  computed in that frame. Without SegPC on disk, synthetic smears (WBCs as "cells") are
  used and the notebook says so.
* **Classification** (Tables II-III, Figure 14): paper 3 separates ALL from MM images.
  With no ALL data here, the stand-in task is *plasma cell vs other segmented object*
  on SegPC: positives are crops of annotated plasma cells, negatives are crops of
  objects that fuzzy c-means segments but that are not annotated plasma cells (other
  cells, RBC clumps, debris). Crops come from train images for training and from
  validation images for testing. It is a two-class problem like the paper's, but an
  easier and different one: the numbers are not comparable.

Metrics (paper 3, eqs. 2-4): IoU of the cell class and pixel accuracy from one pixel
confusion matrix pooled over the evaluation images (the union of the predicted cell
masks vs the union of the annotated ones), RMSE = sqrt(fraction of pixels whose
cell/background call is wrong); plus our instance metrics — the mean IoU of predicted
and annotated cells matched one-to-one (Hungarian, IoU >= 0.5, ``cell_iou``) and COCO
``segm`` AP/AP50 (pycocotools). FCM and U-Net give a foreground mask; their instances
are its connected components (score 1), which is how a semantic method would count cells.

Choices the paper leaves open are in the typed settings
(:class:`~bloodlib.experiments.configs.BloodCancerConfig`; ``run.settings`` in the notebook).
The CPU profiles train a MobileNetV3 backbone from scratch by default
(``backbone=efficientnet_lite0 pretrained_backbone=True`` fine-tunes the offline ImageNet
weights instead) with AdamW rather than the paper's SGD (lr 0.001, momentum 0.7, weight
decay 1e-4, batch 1), which ``full`` keeps, on a ResNet-50 from torchvision's ImageNet
weights when they are in the torch hub cache.
"""

from __future__ import annotations

from ...data.splits import subset_coco
from .settings import (CELL, CLS_CLASSES, EXPERIMENT, MAIN_VARIANT, MODEL_LABELS, PAPER,
                       TABLE1_LABELS)
from .data import (CellDataset, collate, EvalSet, letterbox_valid, load_data, make_eval_set,
                   synthetic_cells, to_uint8)
from .evaluate import evaluate_predictions, finite, Prediction
from .train import (_lr_factor, ablation_name, build_model, Optimization, predict_detector,
                    predict_fcm,
                    predict_unet, run_ablation, slug, train_and_evaluate, train_detector,
                    train_steps, train_unet, TrainLog)
from .augment import coco_images, gan_augmented_coco
from .classifier import build_dcnn, cell_crops, predict_dcnn, train_dcnn
from .tables import (ablation_table, attention_gate_table, classification_tables,
                     instance_table, pretrained_table, reference_table, table1)
from .figures import (ablation_figure, attention_figure, gan_figure, outcomes_figure,
                      pipeline_figure, table1_figure, training_figure)
from .store import load_model, save_model

__all__ = ['subset_coco', 'CELL', 'CLS_CLASSES', 'EXPERIMENT', 'MAIN_VARIANT',
           'MODEL_LABELS', 'PAPER', 'TABLE1_LABELS', 'pretrained_table', 'CellDataset', 'collate', 'EvalSet',
           'letterbox_valid', 'load_data', 'make_eval_set', 'synthetic_cells', 'to_uint8',
           'evaluate_predictions', 'finite', 'Prediction', '_lr_factor', 'ablation_name',
           'build_model', 'Optimization', 'predict_detector', 'predict_fcm', 'predict_unet', 'run_ablation',
           'slug', 'train_and_evaluate', 'train_detector', 'train_steps', 'train_unet',
           'TrainLog', 'coco_images', 'gan_augmented_coco', 'build_dcnn', 'cell_crops',
           'predict_dcnn', 'train_dcnn', 'ablation_table', 'attention_gate_table',
           'classification_tables', 'instance_table', 'reference_table', 'table1',
           'ablation_figure', 'attention_figure', 'gan_figure', 'outcomes_figure',
           'pipeline_figure', 'table1_figure', 'training_figure', 'load_model', 'save_model']
