"""Paper 5 (WCSegNet): names, classes, colours and the three profiles."""

from __future__ import annotations

from ...config import register
from ..configs import WcsegnetConfig


EXPERIMENT = "wcsegnet"
PAPER = "paper5"
CLASS_NAMES = ("background", "neutrophil", "lymphocyte", "basophil")
PAPER5_TYPES = {"neutrophil": 1, "lymphocyte": 2, "basophil": 3}
EXCLUDED_TYPES = ("monocyte", "eosinophil")
#: Paper 5's mask colours (Figure 7): black background, red / blue / green nuclei.
PAPER5_COLORS = ((0.0, 0.0, 0.0), (1.0, 0.0, 0.0), (0.0, 0.0, 1.0), (0.0, 0.8, 0.0))
MODELS = ("unet_relu", "unet_leaky", "wcsegnet")
MODEL_LABELS = {"unet_relu": "Unet (Relu)", "unet_leaky": "Unet (LeakyRelu)",
                "wcsegnet": "WCSegNet", "lite_unet": "U-Net, EfficientNet-Lite0 encoder"}
DATASET_LABELS = {"jiangxi": "Jiangxi", "cellavision": "CellaVision"}
TABLE1_METRICS = ("accuracy", "precision", "dice", "mIoU")
_COMMON = {"models": list(MODELS), "num_classes": 4, "optimizer": "adam",
           "loss": "categorical_cross_entropy", "augment": True, "shear": 0.2,
           # paper 5's augmentation on a share of the images (Keras: all), plus extras
           "augment_p": 1.0, "vertical_flip": False, "color_jitter": 0.0,
           # WCSegNet's dropout rate (None: the architecture's own)
           "wcsegnet_dropout": None,
           "val_fraction": 0.15, "min_count": 2, "num_workers": 0,
           "lr_schedule": "constant", "min_lr_factor": 0.01, "crop_fill": 0.6,
           "channels_last": True, "tta": None,
           # bloodlib train/bench only: train on train + validation (the best epoch is then
           # picked on images the model saw), and a split seed apart from the training seed
           "train_on_val": False, "split_seed": None,
           # lite_unet: start its encoder from the packaged ImageNet weights (others ignore it)
           "pretrained": True}
register(EXPERIMENT, schema=WcsegnetConfig, profiles={
    # the whole notebook in ~1-2 min on 2 cores: Jiangxi only, a subset, a fixed 8 epochs
    # (the time budget only a safety cap, so a busy machine trains the same models)
    "quick": {**_COMMON, "datasets": ["jiangxi"], "image_size": 96, "width": 0.25,
              "epochs": 8, "batch_size": 8, "lr": 1e-3, "max_train_batches": 8,
              "max_train_images": 64, "max_val_images": 16, "max_test_images": 40,
              "early_stopping_patience": None, "time_budget_s": {"jiangxi": 90, "cellavision": 90},
              "samples_per_grid": 6, "qualitative_n": 4, "synthetic_images": 80,
              "cross_train": False, "cross_images": 24},
    # the notebook ~50 min on 2 cores (measured: 49 min); WCSegNet on Jiangxi trains ~14 min
    # Same schedule for every model: cosine over a fixed number of epochs (not a time
    # budget, so a busy machine changes the minutes, not the result); time caps for safety.
    "bench_cpu": {**_COMMON, "datasets": ["jiangxi", "cellavision"], "image_size": 120,
                  "width": 0.25, "epochs": {"jiangxi": 100, "cellavision": 80, "combined": 50},
                  "batch_size": 16, "lr": 1e-3, "lr_schedule": "cosine",
                  "max_train_batches": None, "max_train_images": None, "max_val_images": None,
                  "max_test_images": None, "early_stopping_patience": None,
                  "time_budget_s": {"jiangxi": 1800, "cellavision": 900, "combined": 1200},
                  "samples_per_grid": 8, "qualitative_n": 6, "synthetic_images": 100,
                  "cross_train": True, "cross_images": None},
    # the paper's protocol (GPU): 120 px, full width, Adam 1e-4, batch 16, CE, early stop
    "full": {**_COMMON, "datasets": ["jiangxi", "cellavision"], "image_size": 120,
             "width": 1.0, "epochs": 100, "batch_size": 16, "lr": 1e-4,
             "max_train_batches": None, "max_train_images": None, "max_val_images": None,
             "max_test_images": None, "early_stopping_patience": 20, "time_budget_s": None,
             "samples_per_grid": 8, "qualitative_n": 8, "synthetic_images": 200,
             "cross_train": True, "cross_images": None},
})
