"""Prediction latency and folder throughput on 640x480 smears.

Wall-clock latency depends on what else runs on the machine; ``cpu_time_mean_ms`` (the
process's CPU time per image, all threads together) does not, so on a shared machine it
bounds the uncontended latency: wall >= cpu / threads.

:func:`latency_benchmark` times, per image, the detector and the classification of every
detected WBC (the issue's target: under 1 s per image on 2 CPU cores), then the whole
``bloodlib predict`` path (read, predict, classify, overlay, CSV) on a folder of images.
``bloodlib bench latency`` runs it with the newest models in the store, adds the same
latency with the classifier's test-time views off in PyTorch and in onnxruntime (side by
side), and publishes the results JSON to ``results/reference/``.

When no detector exists yet, any other predictor can stand in (its ``task`` is recorded
in the result, ``main_task``), so the numbers always say what was measured.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd
import torch

from ..config import get_profile, register
from ..data import synthetic
from ..io import read_image
from .batch import predict_files
from .pipeline import classify_cells, predict_image, predict_images, render_overlay
from ..errors import BloodlibError
from .store import default_model, load_predictor
from .quick_models import train_quick_model
from ..results import make_result, write_result
import cv2

EXPERIMENT = "latency"
SMEAR_HW = (480, 640)
@dataclass(frozen=True)
class LatencySettings:
    """The latency benchmark's settings (a profile is one instance)."""

    latency_images: int
    throughput_images: int
    warmup: int
    score_threshold: float
    nms_threshold: float
    quick_train_budget_s: float


register(EXPERIMENT, schema=LatencySettings, profiles={
    "quick": {"latency_images": 5, "throughput_images": 10, "warmup": 1,
              "score_threshold": 0.5, "nms_threshold": 0.5, "quick_train_budget_s": 40},
    "bench_cpu": {"latency_images": 30, "throughput_images": 100, "warmup": 2,
                  "score_threshold": 0.5, "nms_threshold": 0.5, "quick_train_budget_s": 60},
    "full": {"latency_images": 100, "throughput_images": 100, "warmup": 3,
             "score_threshold": 0.5, "nms_threshold": 0.5, "quick_train_budget_s": 60},
})


@dataclass
class LatencyReport:
    """Per-image timings (``per_image``), summary ``metrics`` and what was measured."""

    metrics: dict[str, float]
    per_image: pd.DataFrame
    info: dict[str, Any] = field(default_factory=dict)

    def table(self) -> pd.DataFrame:
        """The metrics as a two-column table."""
        return pd.DataFrame({"metric": list(self.metrics), "value": list(self.metrics.values())})

    def write(self, out_dir: str | Path, profile: str, seed: int = 0,
              config: Optional[dict] = None) -> Path:
        """Write the results JSON (experiment ``latency``) under ``out_dir``."""
        result = make_result(EXPERIMENT, "course", self.info.get("dataset", "smears_640x480"),
                             "-", self.metrics, {**(config or {}), **self.info}, seed, profile,
                             self.info.get("wall_time_s", 0.0), model=self.info.get("model"),
                             notes=self.info.get("notes", ""),
                             device=f"cpu ({torch.get_num_threads()} threads)")
        return write_result(result, out_dir)


def smear_images(n: int, seed: int = 0, prefer_real: bool = True) -> tuple[list[tuple[str, np.ndarray]], str]:
    """``n`` 640x480 smears: BCCD test images when the dataset is on disk, else synthetic
    ones; returns ``([(name, image)], dataset name)``."""
    if prefer_real:
        try:
            from ..data.catalogue import dataset_path, is_available
            if is_available("bccd"):
                root = dataset_path("bccd") / "BCCD"
                names = (root / "ImageSets" / "Main" / "test.txt").read_text().split()
                paths = [root / "JPEGImages" / f"{s}.jpg" for s in names][:n]
                if len(paths) == n and all(p.is_file() for p in paths):
                    return [(p.name, read_image(p)) for p in paths], "bccd_test"
        except Exception:  # any problem with the real data: fall back to synthetic smears
            pass
    return [(f"synthetic_{seed + i:03d}.png", synthetic.make_smear(seed + i, *SMEAR_HW).image)
            for i in range(n)], "synthetic_smears"


def _write_folder(images: Sequence[tuple[str, np.ndarray]], n: int, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        name, img = images[i % len(images)]
        p = folder / f"{i:04d}_{Path(name).stem}.png"
        cv2.imwrite(str(p), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        paths.append(p)
    return paths


def latency_benchmark(detector: Any, classifier: Any = None,
                      images: Sequence[Any] = (), *, folder_images: int = 100,
                      score_threshold: float = 0.5, nms_threshold: float = 0.5,
                      warmup: int = 1, work_dir: Optional[str | Path] = None) -> LatencyReport:
    """Time ``detector`` (+ ``classifier`` on each detected WBC) per image, then the
    folder path (read + predict + overlay + CSV) on ``folder_images`` files.

    ``images`` are RGB arrays or ``(name, array)`` pairs (default: 10 smears from
    :func:`smear_images`). ``detector`` may be any predictor (its task is recorded).
    """

    items = [(f"image_{i}", im) if isinstance(im, np.ndarray) else tuple(im)
             for i, im in enumerate(images)] or smear_images(10)[0]
    is_det = detector.task == "detect"
    kw = {"score_threshold": score_threshold, "nms_threshold": nms_threshold} if is_det else {}
    for name, img in items[:max(0, warmup)]:  # first calls allocate and import; not counted
        render_overlay(predict_image(detector, img, name, classifier=classifier if is_det else None,
                                     **kw))
    rows = []
    for name, img in items:
        c0, t0 = time.process_time(), time.perf_counter()
        res = detector.predict(img, **kw)
        t1 = time.perf_counter()
        types = classify_cells(classifier, img, res) if is_det and classifier is not None else []
        t2, c2 = time.perf_counter(), time.process_time()
        rows.append({"image": name, "height": img.shape[0], "width": img.shape[1],
                     "main_ms": 1000 * (t1 - t0), "classify_ms": 1000 * (t2 - t1),
                     "total_ms": 1000 * (t2 - t0), "cpu_ms": 1000 * (c2 - c0),
                     "cells": len(res.labels) if is_det else 0,
                     "wbc_classified": sum(t is not None for t in types)})
    per = pd.DataFrame(rows)
    tmp = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="bloodlib-latency-"))
    try:
        files = _write_folder(items, folder_images, tmp / "images")
        t0 = time.perf_counter()
        rep = predict_files(files, detector, tmp / "out", classifier=classifier if is_det else None,
                            score_threshold=score_threshold, nms_threshold=nms_threshold,
                            progress=False)
        folder_s = time.perf_counter() - t0
    finally:
        if not work_dir:
            shutil.rmtree(tmp, ignore_errors=True)
    total = per["total_ms"]
    metrics = {
        "latency_mean_ms": float(total.mean()), "latency_median_ms": float(total.median()),
        "latency_p95_ms": float(np.percentile(total, 95)), "latency_max_ms": float(total.max()),
        "cpu_time_mean_ms": float(per["cpu_ms"].mean()),
        "main_task_mean_ms": float(per["main_ms"].mean()),
        "classify_mean_ms": float(per["classify_ms"].mean()),
        "cells_per_image": float(per["cells"].mean()),
        "wbc_classified_per_image": float(per["wbc_classified"].mean()),
        "under_1s_fraction": float((total < 1000).mean()),
        "folder_images": float(len(rep.processed)), "folder_seconds": float(folder_s),
        "throughput_images_per_s": float(len(rep.processed) / folder_s) if folder_s else 0.0,
        "torch_threads": float(torch.get_num_threads()), "images_timed": float(len(per)),
    }
    info = {"main_task": detector.task, "with_classifier": bool(is_det and classifier is not None),
            "image_size": f"{items[0][1].shape[1]}x{items[0][1].shape[0]}",
            "detector": repr(detector), "classifier": repr(classifier) if classifier else None}
    return LatencyReport(metrics, per, info)


def onnxruntime_latency(detector: Any, classifier: Any, images: Sequence[Any],
                        score_threshold: float = 0.5, nms_threshold: float = 0.5,
                        warmup: int = 1) -> dict[str, float]:
    """Mean and p95 ms per image of ``detector`` (+ ``classifier`` on each WBC) as given
    (e.g. onnxruntime predictors), with the classifier's test-time views off, beside the
    same for :func:`latency_benchmark`'s PyTorch numbers."""
    items = [im if isinstance(im, np.ndarray) else im[1] for im in images]
    kw = ({"score_threshold": score_threshold, "nms_threshold": nms_threshold}
          if detector.task == "detect" else {})
    cls = classifier if detector.task == "detect" else None
    for im in items[:max(0, warmup)]:
        predict_images(detector, [im], ["warm-up"], classifier=cls, tta="none", **kw)
    times = []
    for im in items:
        t0 = time.perf_counter()
        predict_images(detector, [im], ["image"], classifier=cls, tta="none", **kw)
        times.append(1000 * (time.perf_counter() - t0))
    return {"onnxruntime_latency_mean_ms": float(np.mean(times)),
            "onnxruntime_latency_p95_ms": float(np.percentile(times, 95))}


def _onnx_twins(main_name: Optional[str], classifier_name: Optional[str]) -> tuple[Any, Any]:
    """onnxruntime predictors of the named store models, or (None, None) with a message
    when one cannot be exported (e.g. YOLO)."""
    try:
        det = load_predictor(main_name, runtime="onnxruntime") if main_name else None
        cls = load_predictor(classifier_name, runtime="onnxruntime") if classifier_name else None
        return det, cls
    except BloodlibError as exc:
        print(f"no onnxruntime comparison: {exc}")
        return None, None


def _store_predictor(task: str, budget: float, name: Optional[str] = None) -> Any:
    """The stored model ``name`` of ``task``, else the newest one (a quick one is trained
    when none exists); None when the task cannot be served in this version."""
    if name:  # asked for by name: a missing or wrong model is an error, not a fallback
        return load_predictor(name, task=task)
    try:
        name = default_model(task) or train_quick_model(task, time_budget_s=budget).stem
        return load_predictor(name, task=task)
    except BloodlibError as exc:
        print(f"no {task} model: {exc}")
        return None


def run_latency_benchmark(profile: str = "bench_cpu", out_dir: str | Path = "outputs/bench_cpu",
                          reference_dir: Optional[str | Path] = None, seed: int = 0,
                          detector_name: Optional[str] = None,
                          classifier_name: Optional[str] = None) -> Path:
    """``bloodlib bench latency``: measure with the store's detector ``detector_name`` (default
    the newest; else the segmenter as a stand-in) and classifier ``classifier_name`` (default
    the newest); write the results JSON into ``out_dir/results`` and, with
    ``reference_dir``, publish it there too."""
    knobs = dict(get_profile(EXPERIMENT, profile))
    t0 = time.perf_counter()
    detector = _store_predictor("detect", knobs["quick_train_budget_s"], detector_name)
    classifier = (_store_predictor("classify", knobs["quick_train_budget_s"], classifier_name)
                  if detector else None)
    main = detector or _store_predictor("segment", knobs["quick_train_budget_s"])
    if main is None:
        from ..errors import BloodlibError
        raise BloodlibError("No model to benchmark: train one first.")
    images, dataset = smear_images(int(knobs["latency_images"]), seed)
    report = latency_benchmark(main, classifier, images, folder_images=int(knobs["throughput_images"]),
                               score_threshold=knobs["score_threshold"],
                               nms_threshold=knobs["nms_threshold"], warmup=int(knobs["warmup"]))
    main_name = (detector_name or default_model("detect")) if detector else default_model("segment")
    cls_name = (classifier_name or default_model("classify")) if classifier else None
    onnx_main, onnx_cls = _onnx_twins(main_name, cls_name)
    if onnx_main is not None:
        report.metrics.update(onnxruntime_latency(
            onnx_main, onnx_cls, images, knobs["score_threshold"], knobs["nms_threshold"],
            int(knobs["warmup"])))
        torch_no_tta = onnxruntime_latency(main, classifier, images, knobs["score_threshold"],
                                           knobs["nms_threshold"], int(knobs["warmup"]))
        report.metrics.update({k.replace("onnxruntime", "torch_no_tta"): v
                               for k, v in torch_no_tta.items()})
    report.info.update(dataset=dataset, wall_time_s=time.perf_counter() - t0,
                       model=getattr(main, "meta", {}).get("architecture", main.task),
                       detector_model=detector_name or (default_model("detect") if detector
                                                        else None),
                       classifier_model=classifier_name or (default_model("classify")
                                                            if classifier else None),
                       notes=("detection + WBC classification" if detector and classifier else
                              f"stand-in: {main.task} model (no detector in the store)"))
    path = report.write(Path(out_dir) / "results", profile, seed, knobs)
    if reference_dir is not None:
        from ..results import publish_result
        publish_result(path, reference_dir, "bloodlib bench latency")
    print(report.table().to_string(index=False))
    return path
