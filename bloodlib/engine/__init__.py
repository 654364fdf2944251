"""The training loop (one for every track), evaluation/prediction helpers and checkpoints."""

from .checkpoint import load_checkpoint, save_checkpoint
from .detection import (PAPER1_STAGES, DetectionTraining, Stage, detection_val_loss,
                        evaluate_detector, predict_coco, train_detector)
from .trainer import (History, evaluate_segmentation, fit, last_checkpoint_path, mean_loss,
                      predict_segmentation, segmentation_evaluator)
from .loop import (CheckpointHook, Hook, LossDictStep, PeriodicEval, SchedulerHook,
                   SupervisedStep, TrainLoop, TrainStep)

__all__ = ["TrainLoop", "TrainStep", "SupervisedStep", "LossDictStep", "Hook", "SchedulerHook",
           "CheckpointHook", "PeriodicEval", "fit", "History", "mean_loss", "evaluate_segmentation",
           "segmentation_evaluator", "predict_segmentation", "save_checkpoint",
           "load_checkpoint", "last_checkpoint_path", "train_detector", "DetectionTraining",
           "Stage", "PAPER1_STAGES", "predict_coco", "evaluate_detector", "detection_val_loss"]
