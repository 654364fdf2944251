"""``bloodlib predict``: run a stored model on images and folders, write CSVs and overlays.

```
bloodlib predict smear.png folder/ --task detect --model quick-detect --out predictions/
bloodlib predict lab_folder/ --task classify --out preds/ --resume      # after a kill
bloodlib predict lab_folder/ --task classify --out preds/ --shard 0/2   # and 1/2 elsewhere
bloodlib predict --merge --task classify --out preds/                   # join the shards
torchrun --nproc-per-node 2 -m bloodlib predict lab_folder/ --task classify --out preds/
```

Images are read by reader threads (``--workers``) and the model runs on batches
(``--batch-size``); rows are appended to the CSVs as each batch finishes, so a killed run
loses at most one batch and ``--resume`` goes on from there. ``--threads`` defaults to
the cores not busy with other jobs. Test-time augmentation and overlays are off for
folders unless asked (``--tta model``, ``--overlays N|all``); for image files given by
name they follow the model and are on.

Writes into ``--out``:

* ``detections.csv`` (detect) - one row per cell: image, cell, class, score, x1, y1, x2, y2
  (with ``--classifier``: wbc_type, wbc_type_score and p_<type> for each WBC);
* ``classifications.csv`` (classify) - one row per image: image, label, score, p_<class>;
* ``areas.csv`` (segment) - one row per image and class: pixels, fraction, objects;
* ``counts.csv`` - one row per image: cells (detect), 1 for the label (classify) or
  regions (segment) per class, and the total;
* ``skipped.csv`` - files that could not be used, with the reason;
* ``downscaled.csv`` - images shrunk to the pixel limit, with the factor;
* ``overlays/<image>.png`` - the image with boxes / masks / labels (when asked), and
  ``overlays/index.csv`` naming each overlay's image;
* ``summary.json`` - what was done, totals, throughput.

Files that cannot be used (corrupt, not an image, under 8 px a side, past Pillow's
decompression-bomb limit, broken links, link loops, a model error on that image) are
listed in ``skipped.csv`` with the reason, and the other images are processed. Images
over 64 MP (whole-slide tiles) are shrunk to 64 MP with area interpolation before
prediction; their boxes and pixel areas are given in the original image's pixels. The
exit status is 0 when at least one image was processed, 1 when none was.
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

from .errors import BloodlibError
from .inference.common import MAX_PIXELS
from .inference.folder import (LoadedImage, collect_inputs, default_workers, fit_to_pixels,
                               load_batches, parse_shard, read_reason, set_threads,
                               shard_files, shard_folder)
from .inference.tables import (OUTPUT_TABLES, PredictionTables, count_columns, merge_shards,
                               table_columns, totals)

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
    import cv2
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
    from .inference.pipeline import predict_images
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
        from .inference.pipeline import render_overlay
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
    from tqdm.auto import tqdm

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
    import torch
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
    import torch.distributed as dist
    if not dist.is_initialized():
        dist.init_process_group("gloo")
    dist.barrier()
    dist.destroy_process_group()


def _load_models(task: str, model: Optional[str], classifier: Optional[str], device: str,
                 runtime: str) -> tuple[Any, Any, str]:
    from .inference.store import default_model, load_predictor
    name = model or default_model(task)
    if name is None:
        from .inference.zoo import missing_model_hint
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
    from .inference.common import build_preprocess

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


def _overlay_count(text: str) -> bool | int:
    if text == "all":
        return True
    try:
        n = int(text)
    except ValueError:
        raise BloodlibError(f"--overlays {text!r}: give a number of images or 'all'.") from None
    if n < 0:
        raise BloodlibError(f"--overlays must be >= 0, got {n}.")
    return n


def add_arguments(parser: Any) -> None:
    """The ``predict`` sub-command's arguments (used by :mod:`bloodlib.cli`)."""
    parser.add_argument("inputs", nargs="*", metavar="IMAGE_OR_FOLDER",
                        help="image files and/or folders (searched recursively)")
    parser.add_argument("--task", choices=("detect", "classify", "segment"), required=True)
    parser.add_argument("--model", help="model name in the store (bloodlib models) or a "
                                        "checkpoint path; default: newest model of the task")
    parser.add_argument("--out", required=True, help="output folder for the CSVs and overlays")
    parser.add_argument("--score-threshold", type=float, default=0.5,
                        help="detections below this score are dropped (detect)")
    parser.add_argument("--nms-threshold", type=float, default=0.5,
                        help="IoU above which overlapping boxes are suppressed (detect)")
    parser.add_argument("--clahe", action="store_true", help="contrast-limited histogram "
                        "equalisation before prediction")
    parser.add_argument("--stain", default=None, help="stain normalisation method "
                        "(e.g. macenko, reinhard) before prediction")
    parser.add_argument("--classifier", help="detect only: a classify model that types "
                                             "each detected WBC")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    parser.add_argument("--runtime", choices=("torch", "onnxruntime"), default="torch",
                        help="onnxruntime: run the model's ONNX export (bloodlib export; "
                             "made on first use), CPU")
    parser.add_argument("--overlays", metavar="N|all", default=None,
                        help="draw overlays for the first N images, or all (default: all "
                             "for image files, none when a folder is given)")
    parser.add_argument("--no-overlays", action="store_true", help="same as --overlays 0")
    parser.add_argument("--tta", choices=("model", "none", "flip", "dihedral"), default=None,
                        help="classifier test-time views (default: none for folders, the "
                             "model's own for image files)")
    parser.add_argument("--batch-size", type=int, default=None, help="images per forward pass "
                        "(default: 64 classify, 8 segment, 1 detect)")
    parser.add_argument("--workers", type=int, default=None,
                        help="image-reading threads (default: 1 on two or more cores)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: the cores not busy with other jobs)")
    parser.add_argument("--resume", action="store_true",
                        help="keep what --out already holds and predict only the rest")
    parser.add_argument("--shard", metavar="I/N", help="predict part I of N (0-based) into "
                        "OUT/shards/I-of-N; join the parts with --merge")
    parser.add_argument("--merge", action="store_true",
                        help="join OUT/shards/* into OUT's CSVs and summary (no inputs)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def main(args: Any) -> int:
    """Run ``bloodlib predict`` from parsed arguments; 0 if any image was processed."""
    if args.merge:
        summary = merge_shards(Path(args.out))
        print(f"merged {len(summary['shards'])} shards into {args.out}: "
              f"{summary['processed']} image(s) processed, {len(summary['skipped'])} skipped; "
              f"totals {summary['totals']}")
        return 0 if summary["processed"] else 1
    if not args.inputs:
        raise BloodlibError("Give image files or folders to predict (or --merge).")
    if args.device == "auto":
        from .runtime import get_device
        args.device = str(get_device("auto"))
    overlays = 0 if args.no_overlays else (
        _overlay_count(args.overlays) if args.overlays is not None else None)
    report = run_predict(args.inputs, args.task, args.model, Path(args.out),
                         score_threshold=args.score_threshold, nms_threshold=args.nms_threshold,
                         clahe=args.clahe, stain=args.stain, classifier=args.classifier,
                         device=args.device, overlays=overlays, tta=args.tta,
                         batch_size=args.batch_size, workers=args.workers,
                         threads=args.threads, resume=args.resume, shard=args.shard,
                         runtime=args.runtime, progress=not args.quiet)
    if not report.ok:
        print("error: no image could be processed.", file=sys.stderr)
    return 0 if report.ok else 1
