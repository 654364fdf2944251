"""Segmentation models: U-Net family, paper 5's WCSegNet, and a name -> model registry.

segmentation-models-pytorch (DeepLabV3+, smp encoders) is imported only when such a
model is built, so ``import bloodlib.models`` stays fast.
"""

from .attention import ATTENTION_KINDS, build_attention
from .classifiers import CLASSIFIERS, HybridClassifier, PaperCNN, build_classifier
from .detection import (BACKBONES as DETECTION_BACKBONES, DETECTORS, build_backbone,
                        build_detector, set_trainable_stage)
from .mcnet import MCNet, MaskIoUHead
from .rens_gan import RensGAN, augment_with_gan
from .rmaskrcnn import build_plain_maskrcnn, build_rmaskrcnn
from .segmentation_zoo import (SEGMENTATION_MODELS, PadToMultiple, ResUNet,
                               build_segmentation_model, count_parameters, model_summary)
from .unet import CBAM, DilatedBottleneck, DoubleConv, UNet
from .wcsegnet import ConvBlock, WCSegNet

__all__ = ["UNet", "DoubleConv", "CBAM", "DilatedBottleneck", "WCSegNet", "ConvBlock",
           "ResUNet", "PadToMultiple", "SEGMENTATION_MODELS", "build_segmentation_model",
           "count_parameters", "model_summary", "CLASSIFIERS", "HybridClassifier", "PaperCNN",
           "build_classifier", "DETECTION_BACKBONES", "DETECTORS", "build_backbone",
           "build_detector", "set_trainable_stage", "MCNet", "MaskIoUHead",
           "ATTENTION_KINDS", "build_attention", "build_rmaskrcnn", "build_plain_maskrcnn",
           "RensGAN", "augment_with_gan"]
