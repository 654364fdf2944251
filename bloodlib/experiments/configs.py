"""Typed settings of every experiment: one frozen dataclass per experiment, with a nested
section per group of settings (``yolo``, ``pbc``, ``gan`` ...). Each profile (``quick``,
``bench_cpu``, ``full``) is one instance, built by :func:`bloodlib.config.register` from the
experiment's profile table and checked field by field; ``KEY=VALUE`` overrides may name a
field by its path (``yolo.epochs=5``) or by its flat name (``yolo_epochs=5``). A section's
``enabled`` field is the flat setting of the section's own name (``pbc``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

__all__ = ['BloodCancerConfig', 'MaskrcnnBackbonesConfig', 'McnetConfig', 'UnetFamilyConfig',
           'WbcClassificationConfig', 'WcsegnetConfig', 'SegmentationSettings', 'DetectionSettings',
           'part_caps']


# ----------------------------------------------------------------------------- mcnet

@dataclass(frozen=True)
class McnetYolo:
    """``mcnet``: the ``yolo_*`` settings."""

    batch: int
    devices: Union[None, int, str, list]
    epochs: int
    imgsz: int
    model: str
    overrides: dict
    pretrained: Union[bool, str]
    time_budget_s: Optional[float]


@dataclass(frozen=True)
class McnetPbc:
    """``mcnet``: the ``pbc_*`` settings."""

    enabled: bool
    iterations: int
    min_size: int
    models: list
    per_class: Optional[dict]
    time_budget_s: Optional[float]
    yolo_epochs: int
    yolo_time_budget_s: Optional[float]


@dataclass(frozen=True)
class McnetConfig:
    """Every setting of the ``mcnet`` experiment; a profile is one instance."""

    anchor_sizes: Optional[list]
    aspect_ratios: list
    backbone: str
    batch_size: int
    datasets: list
    eval_every_epochs: Optional[int]
    grad_clip: float
    heads: dict
    hflip: float
    iou_threshold: float
    iterations: int
    lr: float
    lr_steps: list
    max_size: int
    max_test_images: Optional[int]
    max_train_images: Optional[int]
    max_val_images: Optional[int]
    min_size: int
    models: list
    momentum: float
    num_workers: int
    preprocessing: Optional[dict]  # CLAHE / stain normalisation (None: neither)
    pretrained: Union[bool, str]
    samples_per_grid: int
    score_threshold: float
    stages: Optional[str]
    store_model: bool
    synthetic_images: int
    time_budget_s: Optional[float]
    txl_val_fraction: float
    vflip: float
    warmup_iters: int
    weight_decay: float
    yolo: McnetYolo
    pbc: McnetPbc


# ----------------------------------------------------------------------------- blood_cancer

@dataclass(frozen=True)
class BloodCancerCls:
    """``blood_cancer``: the ``cls_*`` settings."""

    batch: int
    epochs: int
    margin: float
    max_per_class: Optional[int]
    size: int
    small_input: Optional[bool]
    time_budget_s: Optional[float]


@dataclass(frozen=True)
class BloodCancerGan:
    """``blood_cancer``: the ``gan_*`` settings."""

    augment: bool
    batch: int
    blocks: int
    channels: int
    crop: int
    noise_std: float
    steps: int
    time_budget_s: Optional[float]


@dataclass(frozen=True)
class BloodCancerUnet:
    """``blood_cancer``: the ``unet_*`` settings."""

    base_channels: int
    batch: int
    steps: int
    time_budget_s: Optional[float]


@dataclass(frozen=True)
class BloodCancerAblation:
    """``blood_cancer``: the ``ablation_*`` settings."""

    steps: int
    time_budget_s: Optional[float]
    variants: list


@dataclass(frozen=True)
class BloodCancerFcm:
    """``blood_cancer``: the ``fcm_*`` settings."""

    clusters: int
    min_size: int


@dataclass(frozen=True)
class BloodCancerConfig:
    """Every setting of the ``blood_cancer`` experiment; a profile is one instance."""

    architecture: Optional[dict]  # R-Mask R-CNN keyword arguments (None: the defaults)
    attention_logit_bound: Optional[float]
    backbone: str
    batch_size: int
    detections_per_img: int
    fpn_channels: int
    grad_clip: float
    image_size: int
    lr: float
    lr_schedule: str
    mask_channels: int
    mask_fusion: str
    mask_head_depth: int
    mask_threshold: float
    max_train_images: Optional[int]
    max_val_images: Optional[int]
    min_instance_size: int
    momentum: float
    num_workers: int
    optimizer: str
    pretrained_backbone: Union[bool, str]
    qualitative_n: int
    residual_attention: bool
    score_threshold: float
    synthetic_images: int
    time_budget_s: Optional[float]
    train_steps: int
    warmup_steps: int
    weight_decay: float
    cls: BloodCancerCls
    gan: BloodCancerGan
    unet: BloodCancerUnet
    ablation: BloodCancerAblation
    fcm: BloodCancerFcm


# ----------------------------------------------------------------------------- maskrcnn_backbones

@dataclass(frozen=True)
class MaskrcnnBackbonesConfig:
    """Every setting of the ``maskrcnn_backbones`` experiment; a profile is one instance."""

    anchor_sizes: Optional[list]
    aspect_ratios: list
    backbones: list
    batch_size: int
    eval_every_epochs: Optional[int]
    examples: int
    grad_clip: float
    heads: dict
    hflip: float
    image_size: int
    iou_threshold: float
    iterations: int
    loss_tail: int
    lr: float
    lr_by_backbone: dict
    lr_steps: list
    momentum: float
    num_workers: int
    per_class: dict
    pretrained: Union[bool, str]
    score_threshold: float
    stages: Optional[str]
    threshold: float
    time_budget_s: Optional[float]
    vflip: float
    warmup_iters: int
    weight_decay: float


# ----------------------------------------------------------------------------- unet_family

@dataclass(frozen=True)
class UnetFamilyConfig:
    """Every setting of the ``unet_family`` experiment; a profile is one instance."""

    augment: bool
    augment_p: float
    batch_size: int
    channels_last: bool
    color_jitter: float
    early_stopping_patience: Optional[int]
    epochs: int
    image_size: int
    loss: str
    lr: float
    lr_by_model: dict
    lr_schedule: str
    max_train_batches: Optional[int]
    min_count: int
    min_lr_factor: float
    models: list
    num_classes: int
    num_workers: int
    optimizer: str
    qualitative_n: int
    shear: float
    time_budget_s: Optional[float]
    tta: Optional[str]
    val_fraction: float
    vertical_flip: bool
    width: float


# ----------------------------------------------------------------------------- wbc_classification

@dataclass(frozen=True)
class WbcClassificationConfig:
    """Every setting of the ``wbc_classification`` experiment; a profile is one instance."""

    allow_download: bool
    amp: str
    batch_size: int
    cnn_width: float
    color_jitter: float
    crop_fraction: float
    dropout: float
    epochs: Union[int, dict]  # per protocol, or one for all
    external: list
    gradcam_n: int
    image_size: int
    label_smoothing: float
    lr: float
    max_per_class: Optional[int]
    min_lr_fraction: float
    misclassified_n: int
    mix: Optional[str]
    mix_alpha: float
    momentum: float
    num_workers: int
    optimizer: str
    pbc8_model: str
    pretrained: Union[bool, list]
    printout_n: int
    protocols: list
    samples_per_class: int
    scale_jitter: float
    small_input: bool
    store_model: bool
    synthetic_per_class: int
    time_budget_s: Union[float, dict, None]  # per protocol, or one for all
    torch_threads: Optional[int]
    tta: Optional[str]
    val_fraction: float
    warmup_fraction: float
    wbc5_models: list
    weight_decay: float


# ----------------------------------------------------------------------------- wcsegnet

@dataclass(frozen=True)
class WcsegnetCross:
    """``wcsegnet``: the ``cross_*`` settings."""

    images: Optional[int]
    train: bool


@dataclass(frozen=True)
class WcsegnetConfig:
    """Every setting of the ``wcsegnet`` experiment; a profile is one instance."""

    augment: bool
    augment_p: float
    batch_size: int
    channels_last: bool
    color_jitter: float
    crop_fill: float
    datasets: list
    early_stopping_patience: Optional[int]
    epochs: Union[int, dict]
    image_size: int
    loss: str
    lr: float
    lr_schedule: str
    max_test_images: Optional[int]
    max_train_batches: Optional[int]
    max_train_images: Optional[int]
    max_val_images: Optional[int]
    min_count: int
    min_lr_factor: float
    models: list
    num_classes: int
    num_workers: int
    optimizer: str
    pretrained: bool
    qualitative_n: int
    samples_per_grid: int
    shear: float
    split_seed: Optional[int]
    synthetic_images: int
    time_budget_s: Union[float, dict, None]  # per dataset, or one for all
    train_on_val: bool
    tta: Optional[str]
    val_fraction: float
    vertical_flip: bool
    wcsegnet_dropout: Optional[float]
    width: float
    cross: WcsegnetCross


# ----------------------------------------------------------------------------- shared
# the settings that paper 5's training code reads, for paper 5 and paper 4's U-Net table
SegmentationSettings = Union[WcsegnetConfig, UnetFamilyConfig]
# the settings that paper 1's detector training reads, for paper 1 and paper 2
DetectionSettings = Union[McnetConfig, MaskrcnnBackbonesConfig]


def part_caps(settings: Union[McnetConfig, WcsegnetConfig]) -> dict:
    """``{"train", "val", "test"}``: the most images each part keeps (None: all of them)."""
    return {"train": settings.max_train_images, "val": settings.max_val_images,
            "test": settings.max_test_images}
