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

import sys
from pathlib import Path
from typing import Any

from .errors import BloodlibError


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
    # here, not at the top: `bloodlib --help` builds this parser without loading torch
    from .inference.batch import run_predict
    from .inference.tables import merge_shards
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
