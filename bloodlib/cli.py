"""Command line: ``python -m bloodlib {run,train,bench,fetch,verify,datasets,predict,export,report,zoo,models,board}``.

Each command imports what it needs when it runs, so ``--help`` and quick commands answer
without loading torch, ultralytics or papermill."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from .config import PROFILE_NAMES
from .errors import BloodlibError


def _cmd_run(args: argparse.Namespace) -> int:
    from .notebooks import run_course

    runs = run_course(args.notebooks, args.profile, Path(args.out) if args.out else None,
                      parameters={"RESUME": True} if args.resume else None,
                      timeout_s=args.timeout)
    return 0 if runs and all(r.ok for r in runs) else 1


def _cmd_train(args: argparse.Namespace) -> int:
    import os

    from .training_cli import train_experiment
    if args.sync_batchnorm:
        os.environ["BLOODLIB_SYNC_BATCHNORM"] = "1"  # read by every training loop
    metrics = train_experiment(args.experiment, model=args.model, profile=args.profile,
                               out=args.out, overrides=args.overrides, instant=args.instant,
                               store_as=args.store, resume=args.resume, seed=args.seed,
                               device=args.device)
    return 0 if metrics is not None else 1


def _cmd_bench(args: argparse.Namespace) -> int:
    from .notebooks import bench
    from .paths import REFERENCE_DIR

    overrides = [n for n in args.notebooks if "=" in n]
    names = [n for n in args.notebooks if "=" not in n]
    if names and not names[0][:1].isdigit() and names[0] not in ("latency", "predict"):
        return _cmd_bench_experiment(args, names, overrides)
    if overrides or args.model or args.budget:
        raise SystemExit("KEY=VALUE, --model and --budget are for one experiment "
                         "(bloodlib bench EXPERIMENT ...), not for notebooks.")
    names = [n for n in names if n not in ("latency", "predict")]
    status = _cmd_latency(args) if "latency" in args.notebooks else 0
    status |= _cmd_predict_scale(args) if "predict" in args.notebooks else 0
    if not names:
        return status
    runs = bench(names, args.profile, Path(args.out) if args.out else None,
                 Path(args.reference_dir) if args.reference_dir else REFERENCE_DIR,
                 resume=args.resume)
    return status | (0 if runs and all(r.ok for r in runs) else 1)


def _cmd_bench_experiment(args: argparse.Namespace, names: list[str],
                          overrides: list[str]) -> int:
    from .training_cli import bench_experiment
    if len(names) > 1:
        raise SystemExit(f"One experiment at a time, got {names}.")
    metrics = bench_experiment(names[0], model=args.model, budget_s=args.budget,
                               overrides=overrides, profile=args.profile, threads=args.threads,
                               variant=args.variant or "", out=args.out,
                               reference_dir=args.reference_dir, store_as=args.store,
                               resume=args.resume, seed=args.seed,
                               publish=not args.no_publish)
    return 0 if metrics is not None else 1


def _run_store_benchmark(args: argparse.Namespace, runner: Any, label: str) -> int:
    """A benchmark of store models (``latency``, ``predict``): run, publish, rebuild the board."""
    from .notebooks import write_reference_board
    from .paths import PROJECT_ROOT, REFERENCE_DIR

    out = Path(args.out) if args.out else PROJECT_ROOT / "outputs" / args.profile
    reference = Path(args.reference_dir) if args.reference_dir else REFERENCE_DIR
    path = runner(args.profile, out, reference, detector_name=args.detector,
                  classifier_name=args.classifier)
    print(f"{label} result: {path} (published to {reference})")
    write_reference_board(reference)
    return 0


def _cmd_latency(args: argparse.Namespace) -> int:
    from .inference.benchmark import run_latency_benchmark
    return _run_store_benchmark(args, run_latency_benchmark, "latency")


def _cmd_predict_scale(args: argparse.Namespace) -> int:
    from .inference.scale_benchmark import run_scale_benchmark
    return _run_store_benchmark(args, run_scale_benchmark, "prediction-at-scale")


def _cmd_predict(args: argparse.Namespace) -> int:
    from .predict_cli import main as predict_main

    return predict_main(args)


def _cmd_export(args: argparse.Namespace) -> int:
    from .inference.onnx_export import export_onnx, onnx_meta

    path = export_onnx(args.model, args.out)
    meta = onnx_meta(path)
    print(f"{path} ({path.stat().st_size / 1e6:.1f} MB): {meta['task']} model, classes "
          f"{meta['classes']}; run it with bloodlib predict --runtime onnxruntime")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from .inference.folder import set_threads
    from .inference.smear_report import write_smear_report
    from .inference.batch import _load_models

    set_threads(args.threads)
    detector, classifier, name = _load_models("detect", args.detector, None, "cpu", args.runtime)
    names = [name]
    if args.classifier != "none":
        from .inference.store import default_model, load_predictor
        cname = args.classifier or default_model("classify")
        if cname:
            classifier = load_predictor(cname, task="classify", runtime=args.runtime)
            names.append(str(cname))
    page = write_smear_report(args.inputs, Path(args.out), detector, classifier,
                              low_confidence=args.low_confidence, thumbnails=args.thumbnails,
                              score_threshold=args.score_threshold,
                              resume=args.resume, progress=not args.quiet, model_names=names)
    print(f"smear report: {page} (and {page.with_name('report.csv')})")
    return 0


def _cmd_zoo(args: argparse.Namespace) -> int:
    from .inference import zoo

    if args.action == "list":
        print(zoo.zoo_table().to_string(index=False))
        return 0
    if not args.name:
        raise BloodlibError(f"bloodlib zoo {args.action} needs a model NAME (bloodlib zoo list).")
    path = zoo.pull(args.name) if args.action == "pull" else zoo.train(args.name)
    print(f"{args.name}: stored at {path}")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    import warnings

    from .inference.store import list_models, models_dir, unusable_models

    with warnings.catch_warnings():  # the unusable ones are listed below instead
        warnings.simplefilter("ignore", UserWarning)
        df = list_models(args.task)
    print(f"model store: {models_dir()}")
    print(df.drop(columns=["path"]).to_string(index=False) if not df.empty else "(no models)")
    bad = unusable_models()
    if bad:
        print(f"\nunusable ({len(bad)}; the rest of the store works):")
        for name, reason in bad:
            print(f"  {name}: {reason}")
    return 0


def _cmd_board(args: argparse.Namespace) -> int:
    from .board import write_board
    from .paths import REFERENCE_DIR

    md, html = write_board(Path(args.out) if args.out else REFERENCE_DIR.parent / "board",
                           args.results or None)
    print(f"results board: {md} and {html}")
    return 0


def _cmd_fetch(args: argparse.Namespace) -> int:
    from .data.catalogue import fetch

    for name in args.names:
        path = fetch(name, force=args.force)
        print(f"{name}: ready at {path}")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from .data.catalogue import verify

    status = 0
    for name in args.names:
        report = verify(name, use_cache=not args.full)
        print(f"{name}: {report.summary()}")
        status |= 0 if report.ok else 1
    return status


def _cmd_datasets(args: argparse.Namespace) -> int:
    from .data.catalogue import describe

    print(describe().to_string(index=False))
    return 0


EXAMPLES = """examples:
  bloodlib datasets                         list the datasets and whether they are on disk
  bloodlib fetch bccd pbc                   download, verify and extract datasets
  bloodlib run --profile quick              execute every notebook (outputs/quick/, with the
                                            summary and the results board)
  bloodlib run 05 --profile bench_cpu       one notebook in another profile
  bloodlib train mcnet --profile full --instant
                                            a full-profile detector, 3 steps, on a CPU
  torchrun --nproc-per-node 4 -m bloodlib train wcsegnet --profile full
                                            paper 5's protocol on 4 GPUs (DDP)
  bloodlib bench 05 latency                 benchmark notebook 05 and prediction latency;
                                            results JSON go to results/reference/
  bloodlib models                           list trained models in the store
  bloodlib predict smears/ --task detect --out preds/
                                            overlays + detections.csv + counts.csv
  bloodlib predict lab/ --task classify --out preds/ --resume
                                            batched, resumable; --shard I/N + --merge
  bloodlib export pbc8-resnet18 --format onnx
                                            then: bloodlib predict --runtime onnxruntime
  bloodlib report smears/ --out report/     HTML smear report: counts, WBC differential
  bloodlib zoo list                         reference models; zoo train|pull NAME
  bloodlib board                            results board from results/reference/
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``bloodlib`` command."""
    parser = argparse.ArgumentParser(prog="bloodlib", description=__doc__, epilog=EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="execute course notebooks headlessly (papermill)")
    run.add_argument("notebooks", nargs="*", help="numbers or names (default: all)")
    run.add_argument("--profile", choices=PROFILE_NAMES, default="quick")
    run.add_argument("--out", help="output folder (default outputs/<profile>)")
    run.add_argument("--timeout", type=int, default=None, help="per-cell timeout in seconds")
    run.add_argument("--resume", action="store_true", help="continue the trainings an "
                     "interrupted run left in the output folder's checkpoints/")
    run.set_defaults(func=_cmd_run)

    train = sub.add_parser(
        "train", help="train one experiment's model outside its notebook (also under torchrun)",
        description="Train EXPERIMENT's model with a profile and KEY=VALUE overrides, evaluate "
                    "it on the test split and write its results JSON to OUT/results. Runs the "
                    "same under 'torchrun --nproc-per-node N -m bloodlib train ...' "
                    "(DistributedDataParallel, rank 0 writes).")
    train.add_argument("experiment", help="mcnet, maskrcnn_backbones, blood_cancer, "
                                          "wbc_classification, unet_family, wcsegnet")
    train.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                       help="profile settings, Python literals, by flat name or path "
                            "(iterations=5000 lr=0.01 yolo.epochs=5); a wrong name lists the valid ones")
    train.add_argument("--model", help="which model (default: the experiment's main one)")
    train.add_argument("--profile", choices=PROFILE_NAMES, default="full")
    train.add_argument("--out", help="output folder (default outputs/train/<experiment>)")
    train.add_argument("--instant", action="store_true",
                       help="two or three steps on a handful of images: checks a profile "
                            "(e.g. full on a CPU) end to end in seconds to minutes")
    train.add_argument("--store", metavar="NAME", help="save the model into the store as NAME")
    train.add_argument("--resume", action="store_true",
                       help="continue an interrupted run from OUT/checkpoints/")
    train.add_argument("--sync-batchnorm", action="store_true",
                       help="under torchrun on GPUs: batch-norm statistics over all ranks")
    train.add_argument("--seed", type=int, default=0, help="split and training seed")
    train.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ... "
                                                        "(under torchrun: each rank's own GPU)")
    train.set_defaults(func=_cmd_train)

    bench = sub.add_parser(
        "bench", help="run a benchmark and publish its results JSON to results/reference/",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Benchmarks, each publishing its results JSON (with the command) to "
                    "results/reference/ and rebuilding the board:\n"
                    "  bloodlib bench 05 [03 ...]         notebooks in a profile (bench_cpu)\n"
                    "  bloodlib bench EXPERIMENT [KEY=VALUE ...] [--model M] [--budget S]\n"
                    "                                     one model of an experiment: mcnet,\n"
                    "                                     maskrcnn_backbones, blood_cancer,\n"
                    "                                     wbc_classification, unet_family, wcsegnet\n"
                    "  bloodlib bench latency | predict   prediction latency / at scale\n"
                    "Commands of the committed benchmarks: benchmarks/README.md.")
    bench.add_argument("notebooks", nargs="+", metavar="WHAT",
                       help="notebook numbers or names; or one experiment with KEY=VALUE "
                            "overrides; or 'latency', 'predict'")
    bench.add_argument("--model", help="experiment: which model (default: its main one)")
    bench.add_argument("--budget", type=float, metavar="S",
                       help="experiment: training wall-time budget in seconds")
    bench.add_argument("--threads", type=int, help="experiment: torch threads")
    bench.add_argument("--variant", help="experiment: label of a run beside the main one on "
                                         "the board (extra.variant)")
    bench.add_argument("--store", metavar="NAME", help="experiment: save the model as NAME")
    bench.add_argument("--seed", type=int, default=0, help="experiment: training seed")
    bench.add_argument("--no-publish", action="store_true",
                       help="experiment: keep the results in --out only")
    bench.add_argument("--profile", choices=PROFILE_NAMES, default="bench_cpu")
    bench.add_argument("--out")
    bench.add_argument("--reference-dir")
    bench.add_argument("--resume", action="store_true", help="continue the trainings an "
                       "interrupted run left in the output folder's checkpoints/")
    bench.add_argument("--detector", help="latency, predict: stored detector to time "
                                          "(default: newest)")
    bench.add_argument("--classifier", help="latency, predict: stored classifier (default: "
                                            "newest)")
    bench.set_defaults(func=_cmd_bench)

    fetch = sub.add_parser("fetch", help="download, verify and extract datasets")
    fetch.add_argument("names", nargs="+")
    fetch.add_argument("--force", action="store_true")
    fetch.set_defaults(func=_cmd_fetch)

    verify = sub.add_parser("verify", help="check datasets on disk against their manifests")
    verify.add_argument("names", nargs="+")
    verify.add_argument("--full", action="store_true",
                        help="hash every file again, ignoring the record of the last check")
    verify.set_defaults(func=_cmd_verify)

    datasets = sub.add_parser("datasets", help="list the dataset catalogue")
    datasets.set_defaults(func=_cmd_datasets)

    from .predict_cli import add_arguments as predict_arguments
    predict = sub.add_parser("predict", help="run a stored model on images/folders; writes "
                                             "overlays and CSVs (cells, counts)")
    predict_arguments(predict)
    predict.set_defaults(func=_cmd_predict)

    export = sub.add_parser("export", help="export a stored model to ONNX (classifiers, "
                                           "segmenters, torchvision detectors)")
    export.add_argument("model", help="model name in the store or a checkpoint path")
    export.add_argument("--format", choices=("onnx",), default="onnx")
    export.add_argument("--out", help="output file (default: beside the checkpoint, .onnx)")
    export.set_defaults(func=_cmd_export)

    report = sub.add_parser("report", help="a smear report (HTML + CSV): counts, WBC "
                                           "differential and flags per smear")
    report.add_argument("inputs", nargs="+", metavar="SMEAR_OR_FOLDER")
    report.add_argument("--out", required=True, help="output folder (report.html, report.csv)")
    report.add_argument("--detector", help="detect model (default: newest in the store)")
    report.add_argument("--classifier", help="classify model that types each WBC (default: "
                                             "newest in the store; 'none' for no typing)")
    report.add_argument("--score-threshold", type=float, default=0.5,
                        help="detections below this score are dropped")
    report.add_argument("--low-confidence", type=float, default=0.6,
                        help="scores below this are flagged as uncertain")
    report.add_argument("--thumbnails", type=int, default=500,
                        help="overlay thumbnails for the first N smears")
    report.add_argument("--runtime", choices=("torch", "onnxruntime"), default="torch")
    report.add_argument("--threads", type=int, default=None)
    report.add_argument("--resume", action="store_true")
    report.add_argument("--quiet", action="store_true")
    report.set_defaults(func=_cmd_report)

    zoo = sub.add_parser("zoo", help="reference models: list them, train one with its "
                                     "recipe, or pull its published file")
    zoo.add_argument("action", choices=("list", "train", "pull"))
    zoo.add_argument("name", nargs="?", help="a model name from bloodlib zoo list")
    zoo.set_defaults(func=_cmd_zoo)

    models = sub.add_parser("models", help="list the model store ($BLOODLIB_MODELS or models/)")
    models.add_argument("--task", choices=("detect", "classify", "segment"))
    models.set_defaults(func=_cmd_models)

    board = sub.add_parser("board", help="write the results board (paper vs ours, Markdown "
                                         "and HTML) from results JSON")
    board.add_argument("results", nargs="*", help="results folders (default: results/reference)")
    board.add_argument("--out", help="output folder (default results/board)")
    board.set_defaults(func=_cmd_board)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point; returns the process exit status."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # KEY=VALUE overrides after options (bloodlib bench X --budget 60 lr=0.1)
        if args.command not in ("bench", "train") or not all("=" in e for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        positional = "notebooks" if args.command == "bench" else "overrides"
        setattr(args, positional, [*getattr(args, positional), *extra])
    try:
        return args.func(args)
    except BloodlibError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
