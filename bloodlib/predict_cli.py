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

Unreadable files (corrupt, not an image) are reported and skipped; the exit status is 0
when at least one image was processed, 1 when none was.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np
import pandas as pd

from .errors import BloodlibError, ImageReadError

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
        lines += [f"{k}: {v}" for k, v in self.files.items()]
        return "\n".join(lines)


def collect_inputs(inputs: Sequence[str | Path], exclude: Optional[Path] = None
                   ) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files named in ``inputs``, folders expanded (recursively, sorted, hidden files and
    ``exclude`` left out); returns ``(files, [(missing input, reason)])``."""
    files: list[Path] = []
    missing: list[tuple[str, str]] = []
    exclude = exclude.resolve() if exclude is not None else None
    for item in inputs:
        path = Path(item)
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            for p in sorted(path.rglob("*")):
                rel = p.relative_to(path).parts
                if (p.is_file() and not any(part.startswith(".") for part in rel)
                        and not (exclude and exclude in p.resolve().parents)):
                    files.append(p)
        else:
            missing.append((str(item), "no such file or folder"))
    return list(dict.fromkeys(files)), missing


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


def predict_files(files: Iterable[Path], predictor: Any, out_dir: Path, *, model_name: str = "",
                  score_threshold: float = 0.5, nms_threshold: float = 0.5,
                  preprocess: Optional[Callable[[np.ndarray], np.ndarray]] = None,
                  classifier: Any = None, overlays: bool = True, progress: bool = True,
                  skipped: Optional[list[tuple[str, str]]] = None) -> PredictReport:
    """Run ``predictor`` on every file; unreadable files are recorded, not raised.
    Writes the CSVs, overlays and ``summary.json`` into ``out_dir``."""
    from tqdm.auto import tqdm

    from .inference.pipeline import predict_image, render_overlay
    from .io import read_image

    files = list(files)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = PredictReport(predictor.task, model_name, out_dir, skipped=list(skipped or []))
    used: set[str] = set()
    for path in tqdm(files, desc=f"predict ({predictor.task})", unit="image",
                     disable=not progress, file=sys.stderr):
        try:
            image = read_image(path)
        except ImageReadError as exc:
            report.skipped.append((str(path), str(exc).split(". ")[0]))
            continue
        pred = predict_image(predictor, image, str(path), score_threshold=score_threshold,
                             nms_threshold=nms_threshold, preprocess=preprocess,
                             classifier=classifier)
        report.processed.append(str(path))
        report.seconds.append(pred.seconds)
        report.rows.extend(pred.rows())
        counts = pred.counts()
        report.counts.append({"image": str(path), **counts,
                              "total": sum(v for k, v in counts.items() if "/" not in k)})
        if overlays:
            _write_png(out_dir / "overlays" / _overlay_name(path, used), render_overlay(pred))
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
