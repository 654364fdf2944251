"""Command line: ``python -m bloodlib {run,bench,fetch,verify,datasets}``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from .config import PROFILE_NAMES
from .errors import BloodlibError


def _cmd_run(args: argparse.Namespace) -> int:
    from .notebooks import run_course

    runs = run_course(args.notebooks, args.profile, Path(args.out) if args.out else None,
                      timeout_s=args.timeout)
    return 0 if runs and all(r.ok for r in runs) else 1


def _cmd_bench(args: argparse.Namespace) -> int:
    from .notebooks import REFERENCE_DIR, bench

    runs = bench(args.notebooks, args.profile, Path(args.out) if args.out else None,
                 Path(args.reference_dir) if args.reference_dir else REFERENCE_DIR)
    return 0 if runs and all(r.ok for r in runs) else 1


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
        report = verify(name)
        print(f"{name}: {report.summary()}")
        status |= 0 if report.ok else 1
    return status


def _cmd_datasets(args: argparse.Namespace) -> int:
    from .data.catalogue import describe

    print(describe().to_string(index=False))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``bloodlib`` command."""
    parser = argparse.ArgumentParser(prog="bloodlib", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="execute course notebooks headlessly (papermill)")
    run.add_argument("notebooks", nargs="*", help="numbers or names (default: all)")
    run.add_argument("--profile", choices=PROFILE_NAMES, default="quick")
    run.add_argument("--out", help="output folder (default outputs/<profile>)")
    run.add_argument("--timeout", type=int, default=None, help="per-cell timeout in seconds")
    run.set_defaults(func=_cmd_run)

    bench = sub.add_parser("bench", help="run notebooks in a benchmark profile and publish "
                                         "their results JSON to results/reference/")
    bench.add_argument("notebooks", nargs="+")
    bench.add_argument("--profile", choices=PROFILE_NAMES, default="bench_cpu")
    bench.add_argument("--out")
    bench.add_argument("--reference-dir")
    bench.set_defaults(func=_cmd_bench)

    fetch = sub.add_parser("fetch", help="download, verify and extract datasets")
    fetch.add_argument("names", nargs="+")
    fetch.add_argument("--force", action="store_true")
    fetch.set_defaults(func=_cmd_fetch)

    verify = sub.add_parser("verify", help="check datasets on disk against their manifests")
    verify.add_argument("names", nargs="+")
    verify.set_defaults(func=_cmd_verify)

    datasets = sub.add_parser("datasets", help="list the dataset catalogue")
    datasets.set_defaults(func=_cmd_datasets)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point; returns the process exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BloodlibError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
