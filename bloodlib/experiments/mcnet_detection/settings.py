"""Paper 1 (MCNet): names, labels and the three profiles (``quick``, ``bench_cpu``,
``full``)."""

from __future__ import annotations

from ...config import register
from ..configs import McnetConfig


EXPERIMENT = "mcnet"
PAPER = "paper1"
MODELS = ("faster_rcnn", "mask_rcnn", "mcnet", "yolov9")
TORCHVISION_MODELS = ("faster_rcnn", "mask_rcnn", "mcnet")
MASK_MODELS = ("mask_rcnn", "mcnet")
MODEL_LABELS = {"faster_rcnn": "Faster R-CNN", "mask_rcnn": "Mask R-CNN", "mcnet": "MCNet",
                "yolov9": "YOLOv9"}
DATASET_LABELS = {"bccd": "BCCD", "txl_pbc": "TXL-PBC", "pbc": "PBC", "synthetic": "synthetic"}
TABLE_METRICS = ("recall", "precision", "mAP50", "mAP50_95")
#: Smaller heads and fewer proposals than torchvision's defaults, for CPU runs.
LIGHT_HEADS = {"fpn_channels": 128, "representation_size": 256, "mask_head_layers": [128, 128],
               "mask_iou_channels": 64, "mask_iou_fc": 256, "rpn_pre_nms_top_n_train": 1000,
               "rpn_post_nms_top_n_train": 500, "rpn_pre_nms_top_n_test": 500,
               "rpn_post_nms_top_n_test": 300, "box_batch_size_per_image": 128,
               "box_detections_per_img": 100}
_COMMON = {"models": list(MODELS), "aspect_ratios": [0.5, 1.0, 2.0], "anchor_sizes": None,
           "momentum": 0.9, "weight_decay": 1e-4, "grad_clip": 10.0, "score_threshold": 0.5,
           "iou_threshold": 0.5, "num_workers": 0, "hflip": 0.5, "vflip": 0.5,
           "txl_val_fraction": 0.1, "yolo_model": "yolov9t", "samples_per_grid": 3,
           # ultralytics' COCO weights: "auto" uses them when on disk, else from scratch
           "yolo_pretrained": "auto",
           "store_model": False,
           # ultralytics' own multi-GPU training: e.g. [0, 1] or "0,1" (None: the run's device)
           "yolo_devices": None}
register(EXPERIMENT, schema=McnetConfig, profiles={
    # a few minutes on 2 cores: BCCD subset, fine-tuning an ImageNet EfficientNet-Lite0
    # (packaged weights, offline) at 256 px for 30 steps (under half a minute) per model
    "quick": {**_COMMON, "datasets": ["bccd"], "backbone": "efficientnet_lite0",
              "pretrained": True, "min_size": 256, "max_size": 352, "heads": LIGHT_HEADS,
              "preprocessing": {"clahe": True, "stain": None}, "batch_size": 2,
              # a fixed step count (the quick floors of the notebook test need the same
              # training on a busy machine); the time budget is only a safety cap
              "iterations": 30, "lr": 0.01, "warmup_iters": 10, "lr_steps": [],
              "stages": None, "time_budget_s": 90, "eval_every_epochs": None,
              "max_train_images": 24, "max_val_images": 6, "max_test_images": 10,
              "yolo_imgsz": 256, "yolo_epochs": 3, "yolo_batch": 4, "yolo_time_budget_s": 12,
              "yolo_overrides": {"mosaic": 0.0, "warmup_epochs": 0.0},
              "pbc": True, "pbc_models": list(MODELS), "pbc_per_class": {"train": 4, "test": 2},
              "pbc_min_size": 128, "pbc_iterations": 60, "pbc_time_budget_s": 15,
              "pbc_yolo_epochs": 2, "pbc_yolo_time_budget_s": 6, "synthetic_images": 24},
    # the benchmark: each model 60 min on 2 CPU cores on the full BCCD train split (probe:
    # ~1.5 s CPU per step of 2 images at 480x640 for Faster R-CNN / MCNet, single thread;
    # YOLOv9t ~0.25 s CPU per training image): ~3200 steps (~30 epochs) / ~100 YOLO epochs
    "bench_cpu": {**_COMMON, "models": ["faster_rcnn", "mcnet", "yolov9"], "datasets": ["bccd"],
                  "backbone": "mobilenet_v3_large", "pretrained": "auto", "min_size": 480,
                  "max_size": 640, "heads": LIGHT_HEADS,
                  "preprocessing": {"clahe": True, "stain": None}, "batch_size": 2,
                  "iterations": 3200, "lr": 0.01, "warmup_iters": 200, "lr_steps": [0.75, 0.92],
                  "stages": None, "time_budget_s": 3600, "eval_every_epochs": 8,
                  "max_train_images": None, "max_val_images": None, "max_test_images": None,
                  "yolo_imgsz": 480, "yolo_epochs": 300, "yolo_batch": 8,
                  "yolo_time_budget_s": 3600, "yolo_overrides": {"close_mosaic": 5},
                  "pbc": False, "pbc_models": [], "pbc_per_class": {"train": 0, "test": 0},
                  "pbc_min_size": 256, "pbc_iterations": 0, "pbc_time_budget_s": 0,
                  "pbc_yolo_epochs": 0, "pbc_yolo_time_budget_s": 0, "synthetic_images": 100,
                  "store_model": True},
    # the paper's protocol (GPU): ResNet50-FPN, staged schedule, YOLOv9 with its settings
    "full": {**_COMMON, "datasets": ["bccd", "txl_pbc"], "backbone": "resnet50",
             "pretrained": "auto", "min_size": 480, "max_size": 640, "heads": {},
             "preprocessing": {"clahe": True, "stain": "reinhard"}, "batch_size": 2,
             "iterations": 170_000, "lr": 1e-3, "warmup_iters": 1000, "lr_steps": [],
             "stages": "paper1", "time_budget_s": None, "eval_every_epochs": 10,
             "max_train_images": None, "max_val_images": None, "max_test_images": None,
             "yolo_model": "yolov9s", "yolo_imgsz": 640, "yolo_epochs": 100, "yolo_batch": 16,
             "yolo_time_budget_s": None,
             "yolo_overrides": {"optimizer": "SGD", "lr0": 0.01, "lrf": 0.01, "momentum": 0.937,
                                "weight_decay": 0.0005, "warmup_epochs": 3.0,
                                "warmup_momentum": 0.8, "warmup_bias_lr": 0.1, "box": 7.5},
             "pbc": True, "pbc_models": list(MODELS), "pbc_per_class": None,
             "pbc_min_size": 363, "pbc_iterations": 40_000, "pbc_time_budget_s": None,
             "pbc_yolo_epochs": 100, "pbc_yolo_time_budget_s": None, "synthetic_images": 200,
             "store_model": True},
})
