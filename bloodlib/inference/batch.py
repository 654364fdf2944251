"""Prediction over many images: stored models on files and folders in batches, rows
appended to the CSVs per batch (resume, shards, torchrun), bad files skipped, the
summary. ``bloodlib predict`` (:mod:`bloodlib.predict_cli`) is its command line.
"""

from __future__ import annotations

import csv
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np

from ..errors import BloodlibError
from .common import build_preprocess, MAX_PIXELS
from .folder import (LoadedImage, collect_inputs, default_workers, fit_to_pixels,
                               load_batches, parse_shard, read_reason, set_threads,
                               shard_files, shard_folder)
from .tables import (OUTPUT_TABLES, PredictionTables, count_columns, merge_shards,
                               table_columns, totals)
from .pipeline import predict_images, render_overlay
from .store import default_model, load_predictor
import cv2
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

__all__ = ["PredictReport", "collect_inputs", "fit_to_pixels", "predict_files", "run_predict",
           "check_out_dir", "OUTPUT_TABLES"]
PREDICT_ERRORS = (BloodlibError, ValueError, RuntimeError, MemoryError, OSError)
#: images per forward pass when not given: on a CPU, torchvision detectors gain nothing
#: from batches (measured 6.2 images/s one by one vs 5.3 in fours), small inputs do
BATCH_SIZES = {"classify": 64, "segment": 8, "detect": 1}


@dataclass
class PredictReport:
    """What one ``predict`` run did (this run's images; ``resumed`` were done before)."""

    task: str
    model: str
    out_dir: Path
    processed: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    downscaled: list[tuple[str, float]] = field(default_factory=list)
    resumed: int = 0
    wall_seconds: float = 0.0
    overlays: int = 0
    settings: dict[str, Any] = field(default_factory=dict)
    processed_in_all: int = 0  # this run's images and those an earlier run left done
    _totals: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Whether at least one image was processed (by this run or a resumed one)."""
        return bool(self.processed) or self.processed_in_all > 0

    @property
    def images_per_second(self) -> float:
        n = len(self.processed) + len(self.skipped)
        return n / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def totals(self) -> dict[str, int]:
        """Counts summed over all processed images (resumed ones included)."""
        return dict(self._totals)

    def summary(self) -> str:
        """A few lines for the terminal."""
        earlier = f" ({self.resumed} done by an earlier run)" if self.resumed else ""
        lines = [f"{self.task} with {self.model}: {len(self.processed)} image(s) processed, "
                 f"{len(self.skipped)} skipped{earlier}."]
        if self.wall_seconds:
            lines.append(f"{self.images_per_second:.1f} images/s over {self.wall_seconds:.1f} s "
                         f"({', '.join(f'{k} {v}' for k, v in self.settings.items())})")
        if self._totals:
            lines.append("totals: " + ", ".join(f"{k} {v}" for k, v in self._totals.items()))
        lines += [f"skipped {p}: {reason}" for p, reason in self.skipped[:20]]
        if len(self.skipped) > 20:
            lines.append(f"... and {len(self.skipped) - 20} more in skipped.csv")
        lines += [f"downscaled {p} by {f:.2f} (over the pixel limit)" for p, f in self.downscaled]
        lines += [f"{k}: {v}" for k, v in self.files.items()]
        return "\n".join(lines)


def _overlay_name(path: Path, used: set[str]) -> str:
    stem, k = path.stem, 1
    name = f"{stem}.png"
    while name in used:
        k += 1
        name = f"{stem}_{k}.png"
    used.add(name)
    return name


def _write_png(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise BloodlibError(f"Could not write {path}; check the output folder.")


def _to_original_frame(rows: list[dict[str, Any]], factors: tuple[float, float]) -> None:
    """Box coordinates and pixel areas of a shrunk image back in the original's pixels."""
    fx, fy = factors
    for row in rows:
        for key, f in (("x1", fx), ("y1", fy), ("x2", fx), ("y2", fy)):
            if key in row:
                row[key] *= f
        if "pixels" in row:
            row["pixels"] = int(round(row["pixels"] * fx * fy))


def _predict_isolated(items: Sequence[LoadedImage], predictor: Any, kw: dict[str, Any]
                      ) -> list[tuple[LoadedImage, Any]]:
    """(item, ImagePrediction or the reason it failed) per item: the batch in one pass,
    and when that fails, image by image so one bad image costs no other."""
    if not items:
        return []
    try:
        preds = predict_images(predictor, [it.image for it in items], [it.path for it in items],
                               **kw)
        return list(zip(items, preds))
    except PREDICT_ERRORS as exc:
        if len(items) == 1:
            return [(items[0], read_reason(exc))]
    return [pair for it in items for pair in _predict_isolated([it], predictor, kw)]


def _count_row(path: str, pred: Any, columns: Sequence[str]) -> dict[str, Any]:
    counts = pred.counts()
    unknown = [k for k in counts if k not in columns]
    if unknown:
        raise BloodlibError(f"the model gave classes {unknown} that are not in its class list")
    return {"image": path, **counts, "total": sum(v for k, v in counts.items() if "/" not in k)}


class _FolderRun:
    """One ``predict_files`` run: batches in, CSV rows and overlays out."""

    def __init__(self, report: PredictReport, tables: PredictionTables, predictor: Any,
                 kw: dict[str, Any], overlays: Optional[int]) -> None:
        self.report, self.tables, self.predictor, self.kw = report, tables, predictor, kw
        self.overlay_dir = report.out_dir / "overlays"
        self.used = {p.name for p in self.overlay_dir.glob("*.png")} if tables.resumed else set()
        if not tables.resumed and (self.overlay_dir / "index.csv").is_file():
            (self.overlay_dir / "index.csv").unlink()  # a fresh run: a fresh index
        self.overlay_budget = None if overlays is None else max(0, overlays - len(self.used))

    def batch(self, items: Sequence[LoadedImage]) -> None:
        skipped = [(it.path, it.error) for it in items if it.error is not None]
        rows, counts, downscaled = [], [], []
        good = [it for it in items if it.error is None]
        for item, pred in _predict_isolated(good, self.predictor, self.kw):
            try:
                if isinstance(pred, str):
                    raise BloodlibError(pred)
                item_rows = pred.rows()
                _to_original_frame(item_rows, item.factors)
                count = _count_row(item.path, pred, self.tables.columns["counts"])
                self._overlay(item, pred)
            except PREDICT_ERRORS as exc:
                skipped.append((item.path, read_reason(exc)))
                continue
            rows += item_rows
            counts.append(count)
            self.report.processed.append(item.path)
            self.report.seconds.append(pred.seconds)
            if item.factors != (1.0, 1.0):
                downscaled.append((item.path, max(item.factors)))
        self.tables.append(rows, counts, skipped, downscaled)
        self.report.skipped += skipped
        self.report.downscaled += downscaled

    def _overlay(self, item: LoadedImage, pred: Any) -> None:
        if self.overlay_budget is not None and self.report.overlays >= self.overlay_budget:
            return
        name = _overlay_name(Path(item.path), self.used)
        _write_png(self.overlay_dir / name, render_overlay(pred))
        index = self.overlay_dir / "index.csv"
        new = not index.is_file()
        with index.open("a", newline="") as f:
            writer = csv.writer(f)
            if new:
                writer.writerow(["image", "overlay"])
            writer.writerow([item.path, name])
        self.report.overlays += 1


def predict_files(files: Iterable[Path], predictor: Any, out_dir: Path, *, model_name: str = "",
                  score_threshold: float = 0.5, nms_threshold: float = 0.5,
                  preprocess: Optional[Callable[[np.ndarray], np.ndarray]] = None,
                  classifier: Any = None, overlays: bool | int | None = True,
                  progress: bool = True, skipped: Optional[list[tuple[str, str]]] = None,
                  max_pixels: int = MAX_PIXELS, tta: Optional[str] = None,
                  batch_size: Optional[int] = None, workers: int = 0, resume: bool = False
                  ) -> PredictReport:
    """Run ``predictor`` on every file in batches of ``batch_size`` (read ahead by
    ``workers`` threads) and append the CSV rows to ``out_dir`` as each batch finishes; then write
    ``summary.json``. ``overlays``: True/None all, False/0 none, N the first N images.
    ``tta`` overrides a classifier's test-time views ("none" is fastest);
    ``batch_size`` defaults to :data:`BATCH_SIZES` of the task. With
    ``resume``, images already in the output are skipped. A file that cannot be read or
    predicted goes to ``skipped.csv`` with its reason and costs no other image. Images
    over ``max_pixels`` are shrunk to fit, reported in the original image's pixels."""
    out_dir = Path(out_dir)
    task = predictor.task
    batch_size = batch_size or BATCH_SIZES.get(task, 8)
    types = list(classifier.classes) if classifier is not None and task == "detect" else None
    tables = PredictionTables(out_dir, task, table_columns(task, predictor.classes, types),
                              count_columns(task, predictor.classes, types), resume=resume)
    done = tables.done()
    files = [str(f) for f in files]
    todo = [f for f in files if f not in done]
    report = PredictReport(task, model_name, out_dir, resumed=tables.resumed)
    early = [(p, r) for p, r in (skipped or []) if p not in done]
    tables.append([], [], early)
    report.skipped += early
    limit = None if overlays is True or overlays is None else int(overlays)
    run = _FolderRun(report, tables, predictor, {
        "score_threshold": score_threshold, "nms_threshold": nms_threshold,
        "preprocess": preprocess, "classifier": classifier, "tta": tta}, limit)
    t0 = time.perf_counter()
    with tqdm(total=len(todo), desc=f"predict ({task})", unit="image", disable=not progress,
              file=sys.stderr) as bar:
        for items in load_batches(todo, batch_size, workers, max_pixels):
            run.batch(items)
            bar.update(len(items))
    report.wall_seconds = time.perf_counter() - t0
    report.settings = {"batch size": batch_size, "workers": workers, "tta": tta or "model",
                       "threads": _threads()}
    _write_summary(report, tables)
    return report


def _threads() -> int:
    return int(torch.get_num_threads())


def _write_summary(report: PredictReport, tables: PredictionTables) -> None:
    counts = tables.read("counts")
    report._totals = totals(counts)
    report.processed_in_all = int(len(counts))
    report.files = {k: str(p) for k, p in tables.paths.items()}
    if report.overlays or (report.out_dir / "overlays").is_dir():
        report.files["overlays"] = str(report.out_dir / "overlays")
    summary = {"task": report.task, "model": report.model, "processed": int(len(counts)),
               "processed_this_run": len(report.processed), "resumed": report.resumed,
               "skipped": tables.read("skipped").to_dict("records"),
               "totals": report.totals(),
               "downscaled": tables.read("downscaled").to_dict("records"),
               "mean_seconds_per_image": float(np.mean(report.seconds)) if report.seconds else None,
               "seconds": report.wall_seconds, "images_per_second": report.images_per_second,
               "overlays_written": report.overlays, "settings": report.settings,
               "files": dict(report.files)}
    (report.out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    report.files["summary"] = str(report.out_dir / "summary.json")


def _torchrun_rank() -> Optional[tuple[int, int]]:
    """(rank, world size) when launched by torchrun with several processes, else None."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return (int(os.environ.get("RANK", "0")), world) if world > 1 else None


def _barrier() -> None:
    """Wait for every torchrun process (gloo; the group is made once)."""
    if not dist.is_initialized():
        dist.init_process_group("gloo")
    dist.barrier()
    dist.destroy_process_group()


def _load_models(task: str, model: Optional[str], classifier: Optional[str], device: str,
                 runtime: str) -> tuple[Any, Any, str]:
    name = model or default_model(task)
    if name is None:
        from .zoo import missing_model_hint
        raise BloodlibError(f"No {task!r} model in the store; pass --model NAME_OR_PATH. "
                            + missing_model_hint(task))
    if classifier and task != "detect":
        raise BloodlibError("--classifier only applies to --task detect (it types the WBCs).")
    predictor = load_predictor(name, device=device, task=task, runtime=runtime)
    cls = (load_predictor(classifier, device=device, task="classify", runtime=runtime)
           if classifier else None)
    return predictor, cls, str(name)


def run_predict(inputs: Sequence[str | Path], task: str, model: Optional[str], out_dir: Path, *,
                score_threshold: float = 0.5, nms_threshold: float = 0.5, clahe: bool = False,
                stain: Optional[str] = None, classifier: Optional[str] = None,
                device: str = "cpu", overlays: bool | int | None = None,
                tta: Optional[str] = None, batch_size: Optional[int] = None,
                workers: Optional[int] = None,
                threads: Optional[int] = None, resume: bool = False,
                shard: Optional[str] = None, runtime: str = "torch", progress: bool = True,
                log: Callable[[str], None] = print) -> PredictReport:
    """Load the model (``model`` name or path; default the newest ``task`` model in the
    store), predict every input, write the outputs and log a summary.

    Defaults for folders: no overlays, no test-time augmentation (``tta=None`` -> "none"
    when any input is a folder, else the model's); ``workers`` one reader thread on two
    or more cores; ``threads`` the cores other jobs leave free. ``shard="I/N"`` (or a
    torchrun launch) predicts part I of N into ``out_dir/shards/I-of-N``; under torchrun
    rank 0 then merges the parts into ``out_dir``."""
    out_dir = Path(out_dir)
    check_out_dir(out_dir)
    ranked = _torchrun_rank() if shard is None else None
    part = parse_shard(shard) if shard else ranked
    workers = default_workers() if workers is None else int(workers)
    threads_used = set_threads(threads)
    predictor, cls, name = _load_models(task, model, classifier, device, runtime)
    has_folder = any(Path(i).is_dir() for i in inputs)
    if overlays is None:
        overlays = 0 if has_folder else True
    if tta == "model":
        tta = None
    elif tta is None and has_folder:
        tta = "none"
    files, missing = collect_inputs(inputs, exclude=out_dir)
    target = out_dir
    if part is not None:
        files, target = shard_files(files, *part), shard_folder(out_dir, *part)
        missing = missing if part[0] == 0 else []
    report = predict_files(files, predictor, target, model_name=name,
                           score_threshold=score_threshold, nms_threshold=nms_threshold,
                           preprocess=build_preprocess(clahe, stain), classifier=cls,
                           overlays=overlays, progress=progress, skipped=missing, tta=tta,
                           batch_size=batch_size, workers=workers, resume=resume)
    report.settings.update(threads=threads_used, runtime=runtime)
    log(report.summary())
    if ranked is not None:
        _barrier()
        if ranked[0] == 0:
            summary = merge_shards(out_dir)
            log(f"merged {len(summary['shards'])} shards into {out_dir}: "
                f"{summary['processed']} image(s) processed")
    return report


def check_out_dir(out_dir: Path) -> None:
    """BloodlibError unless ``out_dir`` is a folder or can be made one."""
    if out_dir.exists() and not out_dir.is_dir():
        raise BloodlibError(f"--out {out_dir} is an existing file; give a folder for the "
                            "overlays and CSVs (it is created when missing).")
    for parent in out_dir.parents:
        if parent.exists():
            if not parent.is_dir():
                raise BloodlibError(f"--out {out_dir}: {parent} is a file, not a folder.")
            break


