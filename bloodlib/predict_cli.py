"""``bloodlib predict``: run a stored model on images and folders, write overlays and CSVs.

```
bloodlib predict smear.png folder/ --task detect --model quick-detect --out predictions/
```

Writes into ``--out``:

* ``overlays/<image>.png`` - the image with boxes / masks / labels;
* ``detections.csv`` (detect) - one row per cell: image, cell, class, score, x1, y1, x2, y2
  (with ``--classifier``: wbc_type, wbc_type_score and p_<type> for each WBC);
* ``classifications.csv`` (classify) - one row per image: image, label, score, p_<class>;
* ``areas.csv`` (segment) - one row per image and class: pixels, fraction, objects;
* ``counts.csv`` - one row per image: cells (detect), 1 for the label (classify) or
  regions (segment) per class, and the total;
* ``skipped.csv`` - files that could not be read, with the reason;
* ``summary.json`` - what was done, timings, totals.

Files that cannot be used (corrupt, not an image, under 8 px a side, past Pillow's
decompression-bomb limit, broken links, link loops) are listed in ``skipped.csv`` with the
reason, and the other images are processed. Images over 64 MP (whole-slide tiles) are
shrunk to 64 MP with area interpolation before prediction; their boxes and pixel areas
are given in the original image's pixels, and ``summary.json`` lists them with the
factor. The exit status is 0 when at least one image was processed, 1 when none was.
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np
import pandas as pd

from .errors import BloodlibError
from .inference.common import MAX_PIXELS

OUTPUT_TABLES = {"detect": "detections.csv", "classify": "classifications.csv",
                 "segment": "areas.csv"}


@dataclass
class PredictReport:
    """What one ``predict`` run did."""

    task: str
    model: str
    out_dir: Path
    processed: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    counts: list[dict[str, Any]] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    downscaled: list[tuple[str, float]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.processed)

    def totals(self) -> dict[str, int]:
        """Counts summed over all processed images."""
        df = pd.DataFrame(self.counts)
        cols = [c for c in df.columns if c != "image"]
        return {c: int(df[c].sum()) for c in cols} if not df.empty else {}

    def summary(self) -> str:
        """A few lines for the terminal."""
        lines = [f"{self.task} with {self.model}: {len(self.processed)} image(s) processed, "
                 f"{len(self.skipped)} skipped."]
        if self.seconds:
            lines.append(f"time per image: mean {1000 * np.mean(self.seconds):.0f} ms, "
                         f"max {1000 * np.max(self.seconds):.0f} ms (reading excluded)")
        if self.counts:
            lines.append("totals: " + ", ".join(f"{k} {v}" for k, v in self.totals().items()))
        lines += [f"skipped {p}: {reason}" for p, reason in self.skipped]
        lines += [f"downscaled {p} by {f:.2f} (over the pixel limit)" for p, f in self.downscaled]
        lines += [f"{k}: {v}" for k, v in self.files.items()]
        return "\n".join(lines)


def collect_inputs(inputs: Sequence[str | Path], exclude: Optional[Path] = None
                   ) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files named in ``inputs``, folders expanded (recursively, sorted, hidden files and
    ``exclude`` left out; linked folders followed once); returns ``(files, [(input,
    reason)])`` where the reasons cover missing inputs, broken links and link loops."""
    files: list[Path] = []
    missing: list[tuple[str, str]] = []
    exclude = exclude.resolve() if exclude is not None else None
    for item in inputs:
        path = Path(item)
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            _walk_folder(path, exclude, files, missing)
        elif path.is_symlink():
            missing.append((str(item), _link_problem(path)))
        else:
            missing.append((str(item), "no such file or folder"))
    return list(dict.fromkeys(files)), missing


def _link_problem(path: Path) -> str:
    """Why a symbolic link leads to no file: a loop, or a missing target."""
    try:
        path.resolve(strict=True)
    except RuntimeError:
        return "symbolic link loop"
    except OSError as exc:
        if getattr(exc, "errno", None) == 40:  # ELOOP
            return "symbolic link loop"
        return f"broken symbolic link (to {os.readlink(path)})"
    return "not a regular file"


def _walk_folder(root: Path, exclude: Optional[Path], files: list[Path],
                 problems: list[tuple[str, str]]) -> None:
    """Add ``root``'s files (sorted) to ``files``; links that lead nowhere, and linked
    folders that lead back into folders already walked, go to ``problems``."""
    seen = {root.resolve()}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        here = Path(dirpath)
        keep = []
        for d in sorted(dirnames):
            sub = here / d
            if d.startswith("."):
                continue
            try:
                real = sub.resolve(strict=True)
            except (OSError, RuntimeError):
                problems.append((str(sub), _link_problem(sub)))
                continue
            if real in seen or (exclude and (real == exclude or exclude in real.parents)):
                if sub.is_symlink() and real in seen:
                    problems.append((str(sub), "symbolic link loop (folder already searched)"))
                continue
            seen.add(real)
            keep.append(d)
        dirnames[:] = keep
        for name in sorted(filenames):  # os.walk lists looping and broken links here
            p = here / name
            if name.startswith("."):
                continue
            if not p.is_file():
                if p.is_symlink():
                    problems.append((str(p), _link_problem(p)))
                continue
            if not (exclude and exclude in p.resolve().parents):
                files.append(p)


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


def fit_to_pixels(image: np.ndarray, max_pixels: int = MAX_PIXELS
                  ) -> tuple[np.ndarray, tuple[float, float]]:
    """``image`` shrunk (area interpolation) to at most ``max_pixels``, and the factors
    (x, y) that take its coordinates back to the original's ((1, 1): unchanged)."""
    import cv2
    h, w = image.shape[:2]
    if h * w <= max_pixels:
        return image, (1.0, 1.0)
    shrink = math.sqrt(h * w / max_pixels)
    size = (max(1, math.floor(w / shrink)), max(1, math.floor(h / shrink)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA), (w / size[0], h / size[1])


def _to_original_frame(rows: list[dict[str, Any]], factors: tuple[float, float]) -> None:
    """Box coordinates and pixel areas of a shrunk image back in the original's pixels."""
    fx, fy = factors
    for row in rows:
        for key, f in (("x1", fx), ("y1", fy), ("x2", fx), ("y2", fy)):
            if key in row:
                row[key] *= f
        if "pixels" in row:
            row["pixels"] = int(round(row["pixels"] * fx * fy))


def _predict_one(path: Path, predictor: Any, max_pixels: int, **kw: Any) -> tuple[Any, float]:
    """(prediction, scale factor) for one file; the library's errors propagate."""
    from .inference.pipeline import predict_image
    from .io import read_image

    image, factor = fit_to_pixels(read_image(path), max_pixels)
    pred = predict_image(predictor, image, str(path), **kw)
    return pred, factor


def _reason(exc: BaseException) -> str:
    """One line saying why an image was skipped."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, BloodlibError):
        return text.split(". ")[0] or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:300]


def predict_files(files: Iterable[Path], predictor: Any, out_dir: Path, *, model_name: str = "",
                  score_threshold: float = 0.5, nms_threshold: float = 0.5,
                  preprocess: Optional[Callable[[np.ndarray], np.ndarray]] = None,
                  classifier: Any = None, overlays: bool = True, progress: bool = True,
                  skipped: Optional[list[tuple[str, str]]] = None,
                  max_pixels: int = MAX_PIXELS) -> PredictReport:
    """Run ``predictor`` on every file and write the CSVs, overlays and ``summary.json``
    into ``out_dir``. A file that cannot be read or predicted (corrupt, too small, a
    decompression bomb, a model error) goes to ``skipped.csv`` with its reason and costs
    no other image. Images over ``max_pixels`` (64 MP) are shrunk to fit; their boxes
    and areas are reported in the original image's pixels and listed in the summary."""
    from tqdm.auto import tqdm

    from .inference.pipeline import render_overlay

    files = list(files)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = PredictReport(predictor.task, model_name, out_dir, skipped=list(skipped or []))
    used: set[str] = set()
    for path in tqdm(files, desc=f"predict ({predictor.task})", unit="image",
                     disable=not progress, file=sys.stderr):
        try:
            pred, factor = _predict_one(path, predictor, max_pixels,
                                        score_threshold=score_threshold,
                                        nms_threshold=nms_threshold, preprocess=preprocess,
                                        classifier=classifier)
            rows = pred.rows()
            _to_original_frame(rows, factor)
            if overlays:
                _write_png(out_dir / "overlays" / _overlay_name(path, used), render_overlay(pred))
        except (BloodlibError, ValueError, RuntimeError, MemoryError, OSError) as exc:
            report.skipped.append((str(path), _reason(exc)))
            continue
        report.processed.append(str(path))
        report.seconds.append(pred.seconds)
        report.rows.extend(rows)
        if factor != (1.0, 1.0):
            report.downscaled.append((str(path), max(factor)))
        counts = pred.counts()
        report.counts.append({"image": str(path), **counts,
                              "total": sum(v for k, v in counts.items() if "/" not in k)})
    _write_outputs(report, overlays)
    return report


def _write_outputs(report: PredictReport, overlays: bool) -> None:
    out = report.out_dir
    table = out / OUTPUT_TABLES[report.task]
    pd.DataFrame(report.rows, columns=_columns(report)).to_csv(table, index=False)
    pd.DataFrame(report.counts).fillna(0).to_csv(out / "counts.csv", index=False)
    pd.DataFrame(report.skipped, columns=["image", "reason"]).to_csv(out / "skipped.csv",
                                                                       index=False)
    report.files = {"table": str(table), "counts": str(out / "counts.csv"),
                    "skipped": str(out / "skipped.csv")}
    if overlays:
        report.files["overlays"] = str(out / "overlays")
    summary = {"task": report.task, "model": report.model, "processed": len(report.processed),
               "skipped": [{"image": p, "reason": r} for p, r in report.skipped],
               "totals": report.totals(),
               "downscaled": [{"image": p, "factor": f} for p, f in report.downscaled],
               "mean_seconds_per_image": float(np.mean(report.seconds)) if report.seconds else None,
               "files": report.files}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    report.files["summary"] = str(out / "summary.json")


def _columns(report: PredictReport) -> list[str]:
    base = {"detect": ["image", "cell", "class", "score", "x1", "y1", "x2", "y2"],
            "classify": ["image", "label", "score"],
            "segment": ["image", "class", "pixels", "fraction", "objects"]}[report.task]
    extra = list(dict.fromkeys(k for r in report.rows for k in r if k not in base))
    return base + extra


def run_predict(inputs: Sequence[str | Path], task: str, model: Optional[str], out_dir: Path, *,
                score_threshold: float = 0.5, nms_threshold: float = 0.5, clahe: bool = False,
                stain: Optional[str] = None, classifier: Optional[str] = None,
                device: str = "cpu", overlays: bool = True, progress: bool = True,
                log: Callable[[str], None] = print) -> PredictReport:
    """Load the model (``model`` name or path; default the newest ``task`` model in the
    store), predict every input, write the outputs and log a summary."""
    from .inference.common import build_preprocess
    from .inference.store import default_model, load_predictor

    check_out_dir(Path(out_dir))
    name = model or default_model(task)
    if name is None:
        raise BloodlibError(f"No {task!r} model in the store; pass --model NAME_OR_PATH or "
                            f"train one: python -c \"from bloodlib.inference import "
                            f"train_quick_model; train_quick_model('{task}')\".")
    if classifier and task != "detect":
        raise BloodlibError("--classifier only applies to --task detect (it types the WBCs).")
    predictor = load_predictor(name, device=device, task=task)
    cls = load_predictor(classifier, device=device, task="classify") if classifier else None
    preprocess = build_preprocess(clahe, stain)
    files, missing = collect_inputs(inputs, exclude=Path(out_dir))
    report = predict_files(files, predictor, Path(out_dir), model_name=str(name),
                           score_threshold=score_threshold, nms_threshold=nms_threshold,
                           preprocess=preprocess, classifier=cls, overlays=overlays,
                           progress=progress, skipped=missing)
    log(report.summary())
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


def add_arguments(parser: Any) -> None:
    """The ``predict`` sub-command's arguments (used by :mod:`bloodlib.cli`)."""
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER",
                        help="image files and/or folders (searched recursively)")
    parser.add_argument("--task", choices=("detect", "classify", "segment"), required=True)
    parser.add_argument("--model", help="model name in the store (bloodlib models) or a "
                                        "checkpoint path; default: newest model of the task")
    parser.add_argument("--out", required=True, help="output folder for overlays and CSVs")
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
    parser.add_argument("--no-overlays", action="store_true", help="write CSVs only")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def main(args: Any) -> int:
    """Run ``bloodlib predict`` from parsed arguments; 0 if any image was processed."""
    if args.device == "auto":
        from .runtime import get_device
        args.device = str(get_device("auto"))
    report = run_predict(args.inputs, args.task, args.model, Path(args.out),
                         score_threshold=args.score_threshold, nms_threshold=args.nms_threshold,
                         clahe=args.clahe, stain=args.stain, classifier=args.classifier,
                         device=args.device, overlays=not args.no_overlays,
                         progress=not args.quiet)
    if not report.ok:
        print("error: no image could be processed.", file=sys.stderr)
    return 0 if report.ok else 1
