"""Paper 3: names, labels and the three profiles (``quick``, ``bench_cpu``, ``full``)."""

from __future__ import annotations

from ...config import register
from ..configs import BloodCancerConfig


EXPERIMENT = "blood_cancer"
PAPER = "paper3"
CELL = "cell"
CLS_CLASSES = ("plasma_cell", "other")
MAIN_VARIANT = {"attention": "ca_sa", "bottom_up": True, "multiscale_mask_head": True}
TABLE1_LABELS = {"fcm": "FCM", "maskrcnn": "Mask R-CNN", "unet": "UNet-INV2",
                 "rmaskrcnn": "R-Mask R-CNN"}
MODEL_LABELS = {"fcm": "FCM", "maskrcnn": "Mask R-CNN", "unet": "U-Net",
                "rmaskrcnn": "R-Mask R-CNN", "rmaskrcnn_gan": "R-Mask R-CNN + RENS-GAN"}
_COMMON = {"score_threshold": 0.5, "mask_threshold": 0.5, "fcm_clusters": 3, "fcm_min_size": 30,
           "min_instance_size": 30, "grad_clip": 10.0, "weight_decay": 1e-4, "num_workers": 0,
           "gan_crop": 64, "gan_batch": 8, "gan_noise_std": 0.04, "gan_channels": 32,
           "gan_blocks": 3, "cls_margin": 0.15, "cls_batch": 16, "cls_small_input": None,
           "qualitative_n": 3,
           "detections_per_img": 50, "synthetic_images": 24, "lr_schedule": "constant",
           # R-Mask R-CNN's attention multiplier: (1 + n * softmax) / 2, or the plain
           # n * softmax (False), which zeroed all but one channel at N4/N5 in bench_cpu runs
           "residual_attention": True,
           # caps the attention logits at b * tanh(logits / b) (None: unbounded)
           "attention_logit_bound": None,
           # multi-scale mask head: pool every level ("roi") or fuse the maps first ("map")
           "mask_fusion": "roi",
           # 3x3 convolutions at RoI resolution on each side of the mask head's
           # encoder-decoder (1: four convolutions in all, two at 14x14)
           "mask_head_depth": 1,
           # an R-Mask R-CNN variant for bloodlib train/bench, e.g. {"attention": "sa"}
           # (keys of MAIN_VARIANT; None: the main model)
           "architecture": None}
_QUICK = {**_COMMON,
          # fine-tuned from the packaged ImageNet weights: from scratch, 30 steps learn nothing
          # (segm AP50 0.001 vs 0.26-0.36 measured)
          "image_size": 256, "backbone": "efficientnet_lite0", "fpn_channels": 128,
          "mask_channels": 128, "pretrained_backbone": True,
          "max_train_images": 24, "max_val_images": 10, "batch_size": 2,
          "optimizer": "adamw", "lr": 1e-3, "momentum": 0.9, "warmup_steps": 5,
          "train_steps": 30, "time_budget_s": 45,
          # the ablation's budget equals the main one, so it reuses both main models and
          # trains only the RENS-GAN row (its variants run in bench_cpu)
          "ablation_variants": [],
          "ablation_steps": 30, "ablation_time_budget_s": 45, "gan_augment": True,
          "gan_steps": 40, "gan_time_budget_s": 10, "unet_base_channels": 8, "unet_steps": 30,
          "unet_batch": 4, "unet_time_budget_s": 10, "cls_size": 64, "cls_small_input": False,
          "cls_epochs": 3, "cls_max_per_class": 80, "cls_time_budget_s": 12}
_ALL_ABLATIONS = [{"attention": a, "bottom_up": True} for a in ("none", "ca", "sa", "sa_ca")] \
    + [{"attention": "ca_sa", "bottom_up": False},
       {"attention": "ca_sa", "bottom_up": True, "multiscale_mask_head": False}]
register(EXPERIMENT, schema=BloodCancerConfig, profiles={
    # ~3 min on 2 idle cores: 24 train / 10 validation images at 256 px, 30 steps per model
    # (3 detectors); the time budgets are safety caps on a busy machine
    "quick": _QUICK,
    # the benchmark: SegPC train -> validation, 60 min per main model on 2 cores
    # MobileNetV3-Large from scratch: the backbone of the committed runs (the Lite0 ImageNet /
    # scratch pairs are variants: backbone=efficientnet_lite0 pretrained_backbone=True|False)
    "bench_cpu": {**_QUICK, "backbone": "mobilenet_v3_large", "pretrained_backbone": False,
                  "image_size": 384, "max_train_images": None, "max_val_images": None,
                  "warmup_steps": 100, "lr_schedule": "cosine", "train_steps": 1_000_000,
                  "time_budget_s": 3600,
                  "ablation_variants": _ALL_ABLATIONS, "ablation_steps": 1_000_000,
                  "ablation_time_budget_s": 480, "gan_steps": 600, "gan_time_budget_s": 300,
                  "unet_base_channels": 16,
                  "unet_steps": 1_000_000, "unet_time_budget_s": 900, "cls_size": 96,
                  "cls_small_input": None,
                  "cls_epochs": 20, "cls_max_per_class": 1500, "cls_time_budget_s": 600,
                  "qualitative_n": 4},
    # the paper's protocol on a GPU: 512 px, ResNet-50 from torchvision's ImageNet weights
    # (when in the torch hub cache; else a warning and scratch), SGD lr 0.001 momentum 0.7,
    # batch 1
    "full": {**_COMMON, "image_size": 512, "backbone": "resnet50", "fpn_channels": 256,
             "mask_channels": 256, "pretrained_backbone": "auto", "max_train_images": None,
             "max_val_images": None, "batch_size": 1, "optimizer": "sgd", "lr": 1e-3,
             "momentum": 0.7, "warmup_steps": 500, "lr_schedule": "cosine", "train_steps": 60_000,
             "time_budget_s": None,
             "ablation_variants": _ALL_ABLATIONS, "ablation_steps": 20_000,
             "ablation_time_budget_s": None, "gan_augment": True, "gan_steps": 5000,
             "gan_time_budget_s": None,
             "unet_base_channels": 64, "unet_steps": 20_000, "unet_batch": 4,
             "unet_time_budget_s": None, "cls_size": 224, "cls_epochs": 50,
             "cls_max_per_class": None, "cls_time_budget_s": None, "qualitative_n": 4},
})
