"""Metrics: ``detection`` (pycocotools), ``classification`` (scikit-learn), ``segmentation``."""

from bloodlib.metrics.classification import ClassificationReport, classification_report
from bloodlib.metrics.detection import (
    DetectionReport,
    coco_evaluate,
    detection_confusion_matrix,
    detection_roc,
    greedy_matches,
    precision_recall_f1,
    torchvision_to_coco_results,
)
from bloodlib.metrics.segmentation import SegmentationMeter, mask_iou, matched_instance_iou

__all__ = [
    "ClassificationReport",
    "classification_report",
    "DetectionReport",
    "coco_evaluate",
    "detection_confusion_matrix",
    "detection_roc",
    "greedy_matches",
    "precision_recall_f1",
    "torchvision_to_coco_results",
    "SegmentationMeter",
    "mask_iou",
    "matched_instance_iou",
]
