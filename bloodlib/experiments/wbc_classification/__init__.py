"""Cell classification: paper 4 (CNN vs ResNet WBC typing) and PBC 8-class (papers 1 and 2).

Tasks and protocols (:data:`PROTOCOLS`):

* ``wbc5`` - paper 4's five WBC types (basophil, eosinophil, lymphocyte, monocyte,
  neutrophil) taken from PBC's WBC classes, split 80/20 stratified (paper 4, section V.A:
  "Eighty percent ... training set, and 20% ... test set"). Paper 4's own data is the
  100-image Zheng "CellaVision" set (its "WBC Image Dataset 2"); both Zheng sets, with
  their per-image labels, serve here as an **external** test of the PBC-trained models.
* ``paper1_80_20`` - PBC 8 classes, stratified 80/20 of every image available (paper 1,
  section 4.2). This is the **benchmark** protocol.
* ``paper2_300_100_100`` - PBC 8 classes, 300 train / 100 validation / 100 test images per
  class (paper 2, section 3); with fewer than 500 images per class the counts are scaled
  down in proportion.

A validation part for the curves is carved out of the training part (``val_fraction``)
where the protocol has none; the test part is used once, at the end.

Duplicates. PBC holds pixel-identical images (6 groups in the course's 4,800-image
subset, one of them filed both as eosinophil and as neutrophil). Splits are made over
unique images, and every member of a duplicate group goes to the part of its group, so
no image is ever in train and test (checked with
:func:`bloodlib.data.splits.check_no_leakage` after every split). Groups whose members
carry different labels are dropped: their label is ambiguous.

Models (:mod:`bloodlib.models.classifiers`): paper 4's plain CNN, ResNet-18 and paper 1's
hybrid (ResNet-18 features + Hu moments and shape descriptors of the Otsu-segmented
cell), all trained from scratch by default. Images are preloaded once at ``image_size``
(centre crop ``crop_fraction``, area resize:
:func:`bloodlib.inference.classification.prepare_crop`).

Training recipe (our choices; the papers give none usable on a CPU): SGD with Nesterov
momentum 0.9, lr 0.05 for short runs (0.1 trained worse in a 4-epoch probe: 65 % vs 86 %
validation accuracy) and 0.1 for the 28-minute benchmark (``bench_cpu``), weight decay
5e-4, batch 64, label smoothing 0.1, a linear warm-up (5 % of training) then a cosine
decay of the learning rate driven by training *progress* = the larger of (steps
done / planned steps) and (time spent / time budget), so that the rate reaches its floor
when either the planned epochs or the time budget run out (:class:`ProgressCosine`);
augmentation = flips, 90-degree rotations, a small colour jitter
(:func:`bloodlib.transforms.augment.cell_classification_augmentation`) and, when
``scale_jitter`` > 0, a small random scale/shift. On a CPU that computes bfloat16
natively (AVX512-BF16 or AMX) training runs under bfloat16 autocast (``amp="bf16_cpu"``,
about 1.7x faster in a probe on the course machine); evaluation always runs in float32. The last
epoch's weights are kept (the schedule has annealed by then; the small validation part
only draws the curves). Test predictions average the softmax over ``tta`` views
("dihedral" = the 8 flips/90-degree rotations, which leave a cell's class unchanged); the
results JSON records the choice.

Metrics: accuracy and error rate (paper 4); per-class and macro precision, recall, F1
and specificity (paper 2's Table 5; our "precision/recall/F1/specificity" beside
paper 2's are the macro means over the classes); one-vs-rest ROC-AUC.

Profiles: ``quick`` (the notebook in ~2 min on 2 CPU cores: 48 px, 80 images per class,
10-14 s per model, one torch thread, which is far faster than two on a CPU shared with
other jobs); ``bench_cpu`` (the course's benchmark: ResNet-18 on the centre 75 % of each image
at 80 px, PBC 8-class under paper 1's 80/20, 28 min of training on 2 cores with an epoch
cap of 150 that only a fast machine reaches; the five-WBC models 75 s each, paper 2's
protocol 150 s; the notebook ~45 min); ``full`` (a GPU):

* input 224 px (``small_input`` off, so the ImageNet stem is used as designed),
  ``pretrained=True`` with ImageNet weights through torchvision's ``weights=``
  (``allow_download=True``: fetched once into the torch hub cache),
* ResNet-50 for the 8-class protocols (paper 2's best backbone family) and ResNet-18 /
  the plain CNN / the hybrid for paper 4's comparison, batch 128, SGD lr 0.01 (fine-tuning;
  the CNN has no ImageNet weights and trains from scratch), 30 epochs, no time budget,
  AMP via :func:`bloodlib.engine.fit` on CUDA,
* the same splits, label smoothing, augmentation and dihedral TTA as ``bench_cpu``.
"""

from __future__ import annotations

from .settings import EXPERIMENT, EXTERNAL_SETS, MODEL_LABELS, PBC8, PROTOCOLS, WBC5
from .data import (ArrayDataset, augmentation, BatchMix, CellImages, check_split,
                   drop_conflicting, duplicate_groups, duplicate_table, group_split,
                   load_external, load_pbc_images, make_loader, MIXES, preload,
                   protocol_split, split_counts)
from .evaluate import (ensemble, evaluate, Evaluation, finite, shared_errors, summary_row,
                       summary_table)
from .train import (architecture_kwargs, build_model, classification_evaluator,
                    make_optimizer, model_meta, peak_rss_mb, ProgressCosine, quick_model,
                    resolve_amp, save_classifier, starts_pretrained, torch_threads,
                    train_classifier, Trained)
from .tables import paper4_table, pbc8_paper_table, pretrained_table, reference_table
from .figures import (augmentation_figure, confusion_figure, curves_figure, gradcam_figure,
                      misclassified_figure, paper_comparison_figure, prediction_figure,
                      printout, roc_figure, samples_figure, shape_figure)

__all__ = ['EXPERIMENT', 'EXTERNAL_SETS', 'MODEL_LABELS', 'PBC8', 'PROTOCOLS', 'WBC5',
           'ArrayDataset', 'augmentation', 'BatchMix', 'CellImages', 'check_split',
           'drop_conflicting', 'duplicate_groups', 'duplicate_table', 'group_split',
           'load_external', 'load_pbc_images', 'make_loader', 'MIXES', 'preload',
           'protocol_split', 'split_counts', 'ensemble', 'evaluate', 'Evaluation', 'finite',
           'shared_errors', 'summary_row', 'summary_table', 'architecture_kwargs',
           'build_model', 'classification_evaluator', 'make_optimizer', 'model_meta',
           'peak_rss_mb', 'ProgressCosine', 'quick_model', 'resolve_amp', 'save_classifier',
           'starts_pretrained', 'torch_threads', 'train_classifier', 'Trained',
           'paper4_table', 'pbc8_paper_table', 'pretrained_table', 'reference_table',
           'augmentation_figure', 'confusion_figure', 'curves_figure', 'gradcam_figure',
           'misclassified_figure', 'paper_comparison_figure', 'prediction_figure',
           'printout', 'roc_figure', 'samples_figure', 'shape_figure']
