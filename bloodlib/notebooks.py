"""Execute the course notebooks headlessly with papermill and summarise the run.

`python -m bloodlib run` executes notebooks into ``outputs/<profile>/``:
``notebooks/`` (executed copies), ``results/`` (results JSON), ``figures/``,
``summary.md`` / ``summary.html`` and ``board/`` (the results board, :mod:`bloodlib.board`).
`python -m bloodlib bench` does the same in a heavier profile and copies the results JSON
into the committed ``results/reference/``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

from .board import write_board
from .paths import NOTEBOOK_DIR, PROJECT_ROOT, REFERENCE_DIR
from .results import (invocation, load_results, publish_result, summary_html,
                      summary_markdown)


@dataclass
class NotebookResult:
    """Outcome of executing one notebook."""

    notebook: str
    ok: bool
    wall_time_s: float
    output: str
    error: str = ""


def discover(selection: Optional[Sequence[str]] = None, notebook_dir: Path = NOTEBOOK_DIR) -> list[Path]:
    """Numbered course notebooks (``NN_name.ipynb``), optionally filtered.

    ``selection`` items may be a number prefix (``"05"``), a stem or a path.
    """
    all_nbs = sorted(p for p in notebook_dir.glob("[0-9][0-9]_*.ipynb"))
    if not selection:
        return all_nbs
    chosen = []
    for item in selection:
        path = Path(item)
        if path.suffix == ".ipynb" and path.is_file():
            chosen.append(path.resolve())
            continue
        matches = [p for p in all_nbs if p.stem == item or p.stem.startswith(f"{item}_")
                   or p.name == item]
        if not matches:
            names = ", ".join(p.stem for p in all_nbs)
            raise ValueError(f"No notebook matches {item!r}; available: {names}.")
        chosen.extend(matches)
    return chosen


def execute(notebook: Path, out_dir: Path, profile: str, parameters: Optional[dict] = None,
            timeout_s: Optional[int] = None) -> NotebookResult:
    """Execute one notebook with papermill; never raises for a failing notebook."""
    import papermill as pm

    out_dir = Path(out_dir).resolve()
    (out_dir / "notebooks").mkdir(parents=True, exist_ok=True)
    output = out_dir / "notebooks" / notebook.name
    params = {"PROFILE": profile, "OUTPUT_DIR": str(out_dir)}
    params.update(parameters or {})
    if "RESUME" in params and "RESUME =" not in notebook.read_text():
        params.pop("RESUME")  # a notebook that trains nothing has no RESUME parameter
    start = time.perf_counter()
    try:
        pm.execute_notebook(str(notebook), str(output), parameters=params,
                            cwd=str(notebook.parent), kernel_name="python3",
                            progress_bar=False, execution_timeout=timeout_s)
        ok, error = True, ""
    except Exception as exc:  # papermill wraps cell errors; report and carry on
        ok, error = False, f"{type(exc).__name__}: {str(exc)[-2000:]}"
    return NotebookResult(notebook.stem, ok, round(time.perf_counter() - start, 1),
                          str(output), error)


def write_summary(out_dir: Path, runs: Sequence[NotebookResult], profile: str) -> tuple[Path, Path]:
    """Write ``summary.md`` and ``summary.html``: notebook status and every result table."""

    results = load_results(out_dir / "results") if (out_dir / "results").is_dir() else []
    lines = [f"# Course run, profile `{profile}`", "", "| notebook | status | wall time (s) |",
             "|---|---|---|"]
    lines += [f"| {r.notebook} | {'ok' if r.ok else 'FAILED'} | {r.wall_time_s:.1f} |" for r in runs]
    total = sum(r.wall_time_s for r in runs)
    lines += ["", f"Total: {total:.1f} s", ""]
    lines += [f"**{r.notebook} failed:** `{r.error.splitlines()[-1] if r.error else ''}`"
              for r in runs if not r.ok]
    md = "\n".join(lines) + "\n\n" + summary_markdown(results)
    status_rows = "".join(f"<tr><td>{r.notebook}</td><td>{'ok' if r.ok else 'FAILED'}</td>"
                          f"<td>{r.wall_time_s:.1f}</td></tr>" for r in runs)
    html = (f"<html><head><meta charset='utf-8'><title>Course run ({profile})</title></head><body>"
            f"<h1>Course run, profile {profile}</h1><table border='1'><tr><th>notebook</th>"
            f"<th>status</th><th>wall time (s)</th></tr>{status_rows}</table>"
            f"<p>Total: {total:.1f} s</p>{summary_html(results)}</body></html>")
    md_path, html_path = out_dir / "summary.md", out_dir / "summary.html"
    md_path.write_text(md)
    html_path.write_text(html)
    (out_dir / "runs.json").write_text(json.dumps([asdict(r) for r in runs], indent=2))
    return md_path, html_path


def run_course(selection: Optional[Sequence[str]] = None, profile: str = "quick",
               out_dir: Optional[Path] = None, parameters: Optional[dict] = None,
               timeout_s: Optional[int] = None, log=print) -> list[NotebookResult]:
    """Execute notebooks in order into ``out_dir`` (default ``outputs/<profile>``) and summarise."""
    out_dir = Path(out_dir or PROJECT_ROOT / "outputs" / profile).resolve()
    os.environ.setdefault("BLOODLIB_COMMAND", invocation())  # kernels inherit it
    runs = []
    for nb in discover(selection):
        log(f"[{profile}] running {nb.name} ...")
        res = execute(nb, out_dir, profile, parameters, timeout_s)
        log(f"[{profile}] {nb.name}: {'ok' if res.ok else 'FAILED'} in {res.wall_time_s:.1f} s")
        if not res.ok:
            log(res.error)
        runs.append(res)
    md, _ = write_summary(out_dir, runs, profile)
    log(f"summary: {md}")
    board = write_results_board(out_dir)
    if board is not None:
        log(f"results board: {board}")
    return runs


def write_results_board(out_dir: Path) -> Optional[Path]:
    """The results board (:mod:`bloodlib.board`) of a run: the committed reference results
    and this run's, beside the papers' tables, in ``<out_dir>/board/``. Never raises."""
    try:
        md, _ = write_board(Path(out_dir) / "board", [REFERENCE_DIR, Path(out_dir) / "results"])
        return md
    except Exception as exc:  # the board must not hide the notebooks' own outcome
        print(f"results board not written: {type(exc).__name__}: {exc}", file=sys.stderr)
        return None


def write_reference_board(reference_dir: Path = REFERENCE_DIR) -> Optional[Path]:
    """The results board of the committed reference results, in ``results/board/`` beside
    ``reference_dir`` (the README links to it). Never raises."""
    try:
        md, _ = write_board(Path(reference_dir).parent / "board", [reference_dir])
        return md
    except Exception as exc:
        print(f"results board not written: {type(exc).__name__}: {exc}", file=sys.stderr)
        return None




def _relative(path: Path) -> str:
    """``path`` relative to the project root when inside it (no machine-specific paths)."""
    try:
        return str(path.resolve().relative_to(PROJECT_ROOT))
    except ValueError:
        return str(path)


def publish_reference(out_dir: Path, reference_dir: Path = REFERENCE_DIR,
                      command: Optional[str] = None, runner: str = "papermill") -> list[Path]:
    """Copy results JSON from a benchmark run into the committed reference folder.

    Each file gains a ``run`` block with the exact command that produced it."""
    command = command or invocation()
    where = ({"executed_notebooks": _relative(Path(out_dir) / "notebooks")}
             if runner == "papermill" else {})
    return [publish_result(src, reference_dir, runner, command, **where)
            for src in sorted((Path(out_dir) / "results").glob("*.json"))]


def bench(selection: Iterable[str], profile: str = "bench_cpu", out_dir: Optional[Path] = None,
          reference_dir: Path = REFERENCE_DIR, log=print, resume: bool = False
          ) -> list[NotebookResult]:
    """Run notebooks in a benchmark profile and publish their results JSON; ``resume``
    continues the trainings an interrupted run left in ``out_dir/checkpoints``."""
    out_dir = Path(out_dir or PROJECT_ROOT / "outputs" / profile).resolve()
    if out_dir.exists():
        shutil.rmtree(out_dir / "results", ignore_errors=True)
    runs = run_course(list(selection), profile, out_dir, log=log,
                      parameters={"RESUME": True} if resume else None)
    if all(r.ok for r in runs):
        for path in publish_reference(out_dir, reference_dir):
            log(f"reference result: {path}")
        board = write_reference_board(reference_dir)
        if board is not None:
            log(f"reference results board: {board}")
    else:
        log("Some notebooks failed; reference results were NOT updated.")
    return runs
