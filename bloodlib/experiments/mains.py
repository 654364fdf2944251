"""Each experiment's main training outside its notebook, for ``bloodlib train``.

One function per experiment, registered in :data:`bloodlib.registry.TRAINERS`: it loads
the experiment's data (or its synthetic stand-in when the dataset is missing), trains
one model with the run's profile, evaluates it on the test split, writes the results JSON
(``run.finish``; rank 0 only under torchrun) and, when asked, saves the model into the
store. ``instant`` overrides shrink any profile to two or three optimisation steps on a
handful of images, so a ``full`` configuration (full-size models at the paper's input
size) is proven on a CPU in seconds: ``bloodlib train EXPERIMENT --profile full --instant``.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

from ..errors import SettingError
from ..registry import TRAINERS
from ..inference import save_model
from ..session import NotebookRun
from ..models.detection import BACKBONES
from . import blood_cancer as bc
from .configs import part_caps
from . import maskrcnn_backbones as mb
from . import mcnet_detection as mc
from . import unet_family as uf
from . import wbc_classification as wc
from . import wbc_segmentation as wcs
import math

__all__ = ["train_mcnet", "train_wbc_classification", "train_wcsegnet", "train_unet_family",
           "train_blood_cancer", "train_maskrcnn_backbones"]

_SEG_INSTANT = {"epochs": 1, "max_train_batches": 2, "batch_size": 2, "time_budget_s": None}
#: Training images of the notebooks' splits (for the GPU check's projected wall times):
#: Zheng Jiangxi 300 and CellaVision 100 crops, 80 % train of which 85 % fit the model.
_ZHENG_TRAIN_IMAGES = {"jiangxi": 204, "cellavision": 68}


def _PBC_TRAIN_IMAGES(k: Mapping[str, Any]) -> dict[str, tuple[int, int]]:
    """(training images, models trained) per task of notebook 04 on PBC's 17,092 images
    (10,298 of the five WBC types); 80/20 splits less the validation fraction."""
    keep = 0.8 * (1 - float(k["val_fraction"]))
    return {"wbc5": (int(10_298 * keep), len(k["wbc5_models"])),
            "paper1_80_20": (int(17_092 * keep), 1), "paper2_300_100_100": (2400, 1)}


def _per(value: Any, key: str) -> int:
    """A knob that is one number or one per task/dataset."""
    return int(value[key] if isinstance(value, Mapping) else value)


def _torchvision(models: Any) -> int:
    return sum(m != "yolov9" for m in models)


def _finish(run: NotebookRun, paper: str, dataset: str, split: str, model: str,
            metrics: Mapping[str, float], source: str, extra: Mapping[str, Any]) -> None:
    run.finish(paper=paper, dataset=dataset, split=split, model=model, metrics=metrics,
               notes=f"data={source}; bloodlib train {run.experiment} --model {model} "
                     f"--profile {run.profile}",
               extra={"peak_rss_mb": wc.peak_rss_mb(), "entry": "bloodlib train", **extra})


@TRAINERS.register(mc.EXPERIMENT, models=mc.MODELS, default_model="faster_rcnn", instant={
    "max_train_images": 2, "max_val_images": 2, "max_test_images": 2, "iterations": 2,
    "warmup_iters": 1, "time_budget_s": None, "eval_every_epochs": None, "synthetic_images": 8,
    "yolo_epochs": 1, "yolo_time_budget_s": None},
    timed=lambda s: {"iterations": 10**6, "time_budget_s": s, "stages": None},
    budget=lambda s: {"time_budget_s": s, "yolo_time_budget_s": s, "pbc_time_budget_s": s,
                      "pbc_yolo_time_budget_s": s},
    planned_steps=lambda k: int(k["iterations"]) * len(k["datasets"]) * _torchvision(k["models"])
    + (int(k["pbc_iterations"]) * _torchvision(k["pbc_models"]) if k["pbc"] else 0))
def train_mcnet(run: NotebookRun, model: str, store_as: Optional[str] = None) -> dict[str, float]:
    """Paper 1: one detector on the profile's first dataset (BCCD; ``datasets=['pbc']``:
    auto-annotated PBC with the ``pbc`` settings, paper 1's Table 1), COCO metrics on test."""
    settings, seed = run.settings, run.seed
    dataset = settings.datasets[0]
    if dataset == "pbc":
        return _train_mcnet_pbc(run, model, store_as)
    splits, source = mc.load_splits(dataset, settings, run.output_dir, seed)
    masked = ({s: mc.add_masks(c) for s, c in splits.items()} if model in mc.MASK_MODELS
              else None)
    folder = run.output_dir / "preprocessed" / dataset
    splits = mc.preprocess_images(splits, settings.preprocessing, folder)
    masked = mc.preprocess_images(masked, settings.preprocessing, folder) if masked else splits
    out = mc.train_and_evaluate(model, splits, masked, settings, run.device, seed,
                                run.output_dir / dataset, tag=dataset,
                                checkpoints=run.checkpoints)
    metrics = out.result_metrics()
    _finish(run, "paper1", dataset, "test", model, metrics, source,
            {"n_train": len(splits["train"]["images"]), "stop_reason": out.stop_reason,
             "pretrained": out.pretrained})
    if store_as:
        print("stored:", mc.store_outcome(out, splits["train"], settings, store_as))
    return metrics


def _train_mcnet_pbc(run: NotebookRun, model: str, store_as: Optional[str]) -> dict[str, float]:
    """Notebook 01's PBC part for one model (the ``pbc`` settings: per class counts, input
    size, iterations, time budgets)."""
    settings, seed = run.settings, run.seed
    pbc_settings = settings.pbc
    pbc, source = mc.load_pbc_splits(pbc_settings.per_class, run.output_dir, seed)
    budget = pbc_settings.yolo_time_budget_s if model == "yolov9" else pbc_settings.time_budget_s
    out = mc.train_and_evaluate(model, pbc, pbc, settings, run.device, seed,
                                run.output_dir / "pbc", min_size=pbc_settings.min_size,
                                iterations=pbc_settings.iterations, time_budget_s=budget,
                                yolo_epochs=pbc_settings.yolo_epochs, tag="pbc",
                                detections_per_img=10, checkpoints=run.checkpoints)
    metrics = out.result_metrics()
    _finish(run, "paper1", "pbc", "test", model, metrics, source,
            {"n_train": len(pbc["train"]["images"]), "n_test": len(pbc["test"]["images"]),
             "stop_reason": out.stop_reason, "pretrained": out.pretrained,
             "paper_table": "table1", "backbone": settings.backbone})
    if store_as:
        print("stored:", mc.store_outcome(out, pbc["train"], settings, store_as))
    return metrics


_PBC_TASK = "paper1_80_20"


@TRAINERS.register(wc.EXPERIMENT, models=tuple(wc.MODEL_LABELS) + ("efficientnet_lite0",),
                   default_model="resnet50", model_knob="pbc8_model", instant={
                       "max_per_class": 10, "synthetic_per_class": 10, "batch_size": 32, "val_fraction": 0.2,
                       "epochs": {t: 1 for t in wc.PROTOCOLS},
                       "time_budget_s": {t: None for t in wc.PROTOCOLS}},
                   timed=lambda s: {"epochs": {t: 10**4 for t in wc.PROTOCOLS},
                                    "time_budget_s": {t: s for t in wc.PROTOCOLS}},
                   budget=lambda s: {"time_budget_s": {t: s for t in wc.PROTOCOLS}},
                   planned_steps=lambda k: sum(
                       _per(k["epochs"], t) * -(-n // int(k["batch_size"])) * models
                       for t, (n, models) in _PBC_TRAIN_IMAGES(k).items()))
def train_wbc_classification(run: NotebookRun, model: str, store_as: Optional[str] = None
                             ) -> dict[str, float]:
    """Papers 1/2/4: PBC 8 classes under paper 1's stratified 80/20, accuracy and macro
    F1 on test."""
    settings, seed = run.settings, run.seed
    pbc, _ = wc.drop_conflicting(wc.load_pbc_images(settings, run.output_dir, seed))
    parts = wc.protocol_split(pbc, _PBC_TASK, settings, seed)
    trained = wc.train_classifier(model, parts, wc.PBC8, settings, _PBC_TASK, run.device, seed,
                                  checkpoints=run.checkpoints)
    ev = wc.evaluate(trained.model, parts["test"], wc.PBC8, settings.tta)
    metrics = ev.metrics()
    _finish(run, "paper1", f"pbc_{_PBC_TASK}", "test", model, metrics, pbc.source,
            {**trained.info, "n_test": len(parts["test"])})
    if store_as:
        training = {"dataset": pbc.source, "split": f"{_PBC_TASK} train", "profile": run.profile}
        meta = wc.model_meta(trained, settings, training,
                             {"test_accuracy": ev.report.accuracy})
        print("stored:", save_model(trained.model, store_as, meta))
    return metrics


@TRAINERS.register(wcs.EXPERIMENT, models=wcs.MODELS + ("lite_unet",), default_model="wcsegnet",
                   instant={**_SEG_INSTANT, "max_train_images": 4, "max_val_images": 2,
                            "max_test_images": 2, "synthetic_images": 40,
                            "early_stopping_patience": None},
                   timed=lambda s: {"epochs": 10**4, "time_budget_s": s},
                   planned_steps=lambda k: sum(
                       _per(k["epochs"], d) * -(-n // int(k["batch_size"])) * len(k["models"])
                       for d, n in _ZHENG_TRAIN_IMAGES.items() if d in k["datasets"]))
def train_wcsegnet(run: NotebookRun, model: str, store_as: Optional[str] = None
                   ) -> dict[str, float]:
    """Paper 5: nucleus segmentation on the profile's first Zheng set (Jiangxi)."""
    settings, seed = run.settings, run.seed
    dataset = settings.datasets[0]
    split_seed = seed if settings.split_seed is None else int(settings.split_seed)
    records, _, source = wcs.load_or_synthesize(dataset, run.output_dir, split_seed,
                                                synthetic_images=settings.synthetic_images,
                                                image_size=settings.image_size)
    parts = wcs.train_val_test(records, settings, split_seed)
    caps = part_caps(settings)
    parts = {k: wcs.take_subset(v, caps[k], split_seed) for k, v in parts.items()}
    train = parts["train"] + parts["val"] if settings.train_on_val else parts["train"]
    trained, history, _ = wcs.train_model(model, train, parts["val"], settings, run.device,
                                          seed, run.checkpoints, dataset=dataset)
    metrics = wcs.finite(wcs.evaluate(trained, parts["test"], settings, run.device))
    _finish(run, "paper5", dataset, "test", model, metrics, source,
            {"epochs_run": history.last_epoch, "best_epoch": history.best_epoch,
             "n_train": len(train), "split_seed": split_seed,
             "train_seconds": sum(float(r.get("seconds", 0)) for r in history.rows),
             **({"pretrained": settings.pretrained} if model == "lite_unet" else {})})
    if store_as:
        meta = wcs.checkpoint_meta(model, settings, dataset=f"wbc_seg_zheng/{dataset}")
        meta.pop("knobs"), meta.pop("model")
        print("stored:", save_model(trained.cpu(), store_as, {**meta, "metrics": metrics}))
    return metrics


@TRAINERS.register(uf.EXPERIMENT, models=uf.MODELS, default_model="unet_relu",
                   instant={**_SEG_INSTANT, "val_fraction": 0.3},
                   timed=lambda s: {"epochs": 10**4, "time_budget_s": s},
                   planned_steps=lambda k: int(k["epochs"]) * len(k["models"]) * -(
                       -_ZHENG_TRAIN_IMAGES["cellavision"] // int(k["batch_size"])))
def train_unet_family(run: NotebookRun, model: str, store_as: Optional[str] = None
                      ) -> dict[str, float]:
    """Paper 4 Table 5: whole-WBC segmentation on CellaVision (synthetic crops stand in
    when it is missing)."""
    settings, seed = run.settings, run.seed
    records, _, source = wcs.load_or_synthesize("cellavision", run.output_dir, seed,
                                                synthetic_images=40,
                                                image_size=settings.image_size)
    parts = wcs.train_val_test(records, settings, seed)
    trained, history, _ = uf.train_model(model, parts["train"], parts["val"], settings,
                                         run.device, seed, run.checkpoints)
    metrics = wcs.finite(uf.evaluate(trained, parts["test"], settings, run.device))
    _finish(run, uf.PAPER, "cellavision", "test", model, metrics, source,
            {"paper_table": "table5", "paper_row": {"model": uf.MODEL_LABELS[model]},
             "epochs_run": history.last_epoch, "best_epoch": history.best_epoch})
    if store_as:
        print(f"{run.experiment}: the model store takes WCSegNet-style models; not stored.")
    return metrics


@TRAINERS.register(bc.EXPERIMENT, models=("maskrcnn", "rmaskrcnn"), default_model="rmaskrcnn",
                   instant={"max_train_images": 2, "max_val_images": 2, "train_steps": 2,
                            "time_budget_s": None, "warmup_steps": 1, "synthetic_images": 4},
                   timed=lambda s: {"train_steps": 10**6, "time_budget_s": s},
                   planned_steps=lambda k: 3 * int(k["train_steps"])
                   + int(k["ablation_steps"]) * len(k["ablation_variants"]) + int(k["unet_steps"])
                   + int(k["gan_steps"]))
def train_blood_cancer(run: NotebookRun, model: str, store_as: Optional[str] = None
                       ) -> dict[str, float]:
    """Paper 3 Table 1: (R-)Mask R-CNN on SegPC-2021 train, matched-cell metrics on
    validation."""
    settings, seed = run.settings, run.seed
    data = bc.load_data(settings, run.output_dir, seed)
    ev = bc.make_eval_set(data["val"], settings.image_size)
    architecture = dict(settings.architecture or {})
    unknown = set(architecture) - set(bc.MAIN_VARIANT)
    if unknown or (architecture and model != "rmaskrcnn"):
        raise SettingError(f"architecture={architecture} picks an R-Mask R-CNN variant with "
                           f"keys of {sorted(bc.MAIN_VARIANT)}; use it with --model rmaskrcnn.")
    out = bc.train_and_evaluate(model, data["train"], ev, settings, run.device, seed,
                                variant=architecture or None, checkpoints=run.checkpoints)
    metrics = bc.finite(out["metrics"])
    _finish(run, "paper3", data["source"], "valid", model, metrics, data["source"],
            {"paper_table": "table1", "paper_row": {"model": bc.TABLE1_LABELS[model]},
             "stop_reason": out["log"].stop_reason,
             "pretrained": bool(getattr(out["model"], "backbone_pretrained", False)),
             **({"architecture": architecture} if architecture else {})})
    if store_as:
        path = run.output_dir / "checkpoints" / f"{store_as}.pt"
        bc.save_model(out["model"], path, settings, metrics, f"{data['source']}/train")
        print("saved:", path)
    return metrics


@TRAINERS.register(mb.EXPERIMENT, models=tuple(BACKBONES), default_model="resnet50",
                   instant={"per_class": {"train": 1, "val": 1, "test": 1}, "iterations": 2,
                            "warmup_iters": 1, "time_budget_s": None, "batch_size": 2},
                   timed=lambda s: {"iterations": 10**6, "time_budget_s": s},
                   planned_steps=lambda k: int(k["iterations"]) * len(k["backbones"]))
def train_maskrcnn_backbones(run: NotebookRun, model: str, store_as: Optional[str] = None
                             ) -> dict[str, float]:
    """Paper 2: Mask R-CNN on one backbone (``model``), auto-annotated PBC; Table 3
    losses, Table 4 on validation, Table 5 on test."""
    settings, seed = run.settings, run.seed
    splits, source = mb.load_data(settings, run.output_dir, seed)
    trained, training, val = mb.train_backbone(model, splits, settings, run.device, seed,
                                               checkpoints=run.checkpoints)
    res = mb.evaluate_backbone(trained, splits, settings, run.device)
    metrics = {**{f"val_{k}": v for k, v in res["table4"].items()},
               **mb.table3_metrics(training.log, val, settings.loss_tail),
               **res["table5"], "train_seconds": training.seconds,
               "inference_images_per_s": res["inference_images_per_s"]}
    metrics = {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(v)}
    _finish(run, "paper2", "pbc", "test", f"mask_rcnn_{model}", metrics, source,
            {"backbone": model, "pretrained": bool(trained.backbone_pretrained),
             "iterations": training.iterations, "stop_reason": training.stop_reason,
             **mb.board_placement(model, bool(trained.backbone_pretrained))})
    if store_as:
        print(f"{run.experiment}: use notebook 02 or bloodlib zoo to store detectors; not stored.")
    return metrics
