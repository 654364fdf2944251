"""Results JSON (one file per experiment x dataset x profile), the papers' reference
tables, and paper-vs-ours comparison tables.

```python
res = make_result("wcsegnet", "paper5", "jiangxi", "test", {"dice": 0.91}, cfg, seed=0,
                  profile="quick", wall_time_s=42.0)
write_result(res, "outputs/quick/results")
compare_with_paper({"dice": 0.91}, "paper5", "table1",
                   row_filter={"model": "WCSegNet", "dataset": "Jiangxi"})
```
"""

from __future__ import annotations

import html
import json
import shlex
import math
import os
import platform
import re
import sys
import warnings
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Union

import numpy as np
import pandas as pd

from .errors import ReferenceTableError, ResultsError
from .runtime import cpu_facts, package_versions, total_memory_gb
from .paths import REFERENCE_DIR

SCHEMA_VERSION = 1
REFERENCE_FILE = Path(__file__).parent / "reference" / "papers.json"
REQUIRED_FIELDS = ("schema_version", "experiment", "paper", "dataset", "split", "profile",
                   "seed", "metrics", "config", "wall_time_s", "device", "created", "versions")
UNITS = ("percent", "fraction", "count", "value", "mixed")
# Our metric names (bloodlib.metrics) -> the key used in papers.json.
METRIC_ALIASES = {"AP": "mAP50_95", "AP50": "mAP50", "AR": "mAR", "f1": "F1", "iou": "IoU",
                  "miou": "mIoU", "acc": "accuracy", "pa": "pixel_accuracy"}




# --------------------------------------------------------------------------- results JSON

def _jsonable(value: Any) -> Any:
    """Convert numpy scalars/arrays, tuples, sets and paths to plain JSON types."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)  # torch.device, dtypes, enums ...


def _command() -> str:
    """The command that produced a result: the course runner's (``BLOODLIB_COMMAND``,
    set by :mod:`bloodlib.notebooks`) inside a notebook kernel, else this process's argv."""
    if os.environ.get("BLOODLIB_COMMAND"):
        return os.environ["BLOODLIB_COMMAND"]
    if "ipykernel" in (sys.argv[0] if sys.argv else ""):
        return "interactive notebook session"
    return " ".join(sys.argv)


def _machine() -> dict[str, Any]:
    return {"platform": platform.platform(), "machine": platform.machine(),
            "cpu_count": os.cpu_count(), "ram_gb": total_memory_gb(), **cpu_facts()}


def _cuda_torch() -> Any:
    """The torch module if it is already imported and sees a GPU, else None."""
    torch = sys.modules.get("torch")
    try:
        return torch if torch is not None and torch.cuda.is_available() else None
    except Exception:  # broken CUDA setups must not stop a result from being written
        return None


def _default_device() -> str:
    import torch  # here, not at the top: the board and results tools run without torch loaded
    if torch.cuda.is_available():
        return f"cuda:{torch.cuda.get_device_name(0)}"
    return f"cpu ({os.cpu_count()} cores)"


def _peak_memory_mb() -> dict[str, float]:
    peak: dict[str, float] = {}
    try:
        import resource

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak["cpu_rss"] = round(rss / 2**20 if sys.platform == "darwin" else rss / 2**10, 1)
    except (ImportError, OSError):
        pass
    torch = _cuda_torch()
    if torch is not None:
        peak["cuda"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return peak


def _check_metrics(metrics: Mapping[str, Any], allow_nan: bool) -> dict[str, Optional[float]]:
    if not isinstance(metrics, Mapping) or not metrics:
        raise ResultsError("metrics must be a non-empty dict {name: float}.")
    out: dict[str, Optional[float]] = {}
    for key, value in metrics.items():
        if value is None and allow_nan:
            out[str(key)] = None
            continue
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
            raise ResultsError(f"Metric {key!r} must be a number, got {type(value).__name__} "
                               f"({value!r}).")
        value = float(value)
        if not math.isfinite(value):
            if not allow_nan:
                raise ResultsError(f"Metric {key!r} is {value}; fix the evaluation or pass "
                                   "allow_nan=True to record it as missing (null).")
            out[str(key)] = None
        else:
            out[str(key)] = value
    return out


def make_result(experiment: str, paper: str, dataset: str, split: str,
                metrics: Mapping[str, float], config: Mapping[str, Any], seed: Optional[int],
                profile: str, wall_time_s: float, device: Optional[str] = None, notes: str = "",
                model: Optional[str] = None, extra: Optional[Mapping[str, Any]] = None,
                allow_nan: bool = False) -> dict[str, Any]:
    """Build a validated result dict with device, versions, machine, command and peak memory.

    Metrics must be finite numbers; NaN/inf raise :class:`ResultsError` naming the metric
    unless ``allow_nan=True``, in which case they are stored as ``null``.
    """
    for name, value in (("experiment", experiment), ("paper", paper), ("dataset", dataset),
                        ("split", split), ("profile", profile)):
        if not isinstance(value, str) or not value.strip():
            raise ResultsError(f"{name} must be a non-empty string, got {value!r}.")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
        raise ResultsError(f"seed must be an int or None, got {seed!r}.")
    wall = float(wall_time_s)
    if not math.isfinite(wall) or wall < 0:
        raise ResultsError(f"wall_time_s must be a finite number >= 0, got {wall_time_s!r}.")
    return {
        "schema_version": SCHEMA_VERSION,
        "experiment": experiment, "paper": paper, "dataset": dataset, "split": split,
        "profile": profile, "model": model, "seed": None if seed is None else int(seed),
        "metrics": _check_metrics(metrics, allow_nan),
        "config": _jsonable(dict(config or {})),
        "wall_time_s": round(wall, 3),
        "device": str(device) if device is not None else _default_device(),
        "notes": notes, "extra": _jsonable(dict(extra or {})),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": package_versions(), "machine": _machine(),
        "command": _command(), "peak_memory_mb": _peak_memory_mb(),
    }


def validate_result(result: Mapping[str, Any]) -> None:
    """Raise :class:`ResultsError` if ``result`` lacks fields or has an unknown schema."""
    if not isinstance(result, Mapping):
        raise ResultsError(f"A result must be a dict, got {type(result).__name__}.")
    missing = [f for f in REQUIRED_FIELDS if f not in result]
    if missing:
        raise ResultsError(f"Result lacks field(s) {missing}; build it with make_result().")
    if result["schema_version"] != SCHEMA_VERSION:
        raise ResultsError(f"Result schema_version {result['schema_version']!r} is not supported "
                           f"(this bloodlib reads {SCHEMA_VERSION}); update bloodlib.")
    for key, value in result["metrics"].items():
        if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value)):
            raise ResultsError(f"Metric {key!r} is {value!r}; metrics must be finite numbers.")


def _safe(part: Any) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(part)).strip("-.") or "x"


def result_variant(result: Mapping[str, Any]) -> Optional[str]:
    """The label of a second run of the same configuration (``extra["variant"]``), if any."""
    return (result.get("extra") or {}).get("variant") or None


def result_filename(result: Mapping[str, Any]) -> str:
    """``<experiment>__<dataset>__<profile>[__<model>][__<variant>].json`` with unsafe
    characters replaced.

    The model and the :func:`result_variant` are appended when set, so several models of
    one experiment, or two runs of one model, do not overwrite each other.
    """
    parts = [result["experiment"], result["dataset"], result["profile"],
             result.get("model"), result_variant(result)]
    return "__".join(_safe(p) for p in parts if p) + ".json"


def write_result(result: Mapping[str, Any], out_dir: Union[str, os.PathLike]) -> Path:
    """Validate and write ``result`` as JSON under ``out_dir``; return the file's path."""
    validate_result(result)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / result_filename(result)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(_jsonable(result), indent=2, sort_keys=True, allow_nan=False) + "\n")
    tmp.replace(path)
    return path


def load_results(*dirs: Union[str, os.PathLike]) -> list[dict[str, Any]]:
    """Read every results JSON under ``dirs`` (folders, searched recursively, or files).

    Files that are not results (no ``schema_version``/``experiment``/``metrics``) are
    skipped; unreadable JSON is skipped with a warning; an unsupported schema raises.
    """
    paths: list[Path] = []
    for d in dirs:
        d = Path(d)
        if d.is_file():
            paths.append(d)
        elif d.is_dir():
            paths.extend(sorted(d.rglob("*.json")))
        else:
            raise FileNotFoundError(f"No results folder or file at {d}.")
    results = []
    for path in paths:
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            warnings.warn(f"Skipping unreadable JSON {path}: {exc}", stacklevel=2)
            continue
        if not (isinstance(data, dict) and {"schema_version", "experiment", "metrics"} <= data.keys()):
            continue
        try:
            validate_result(data)
        except ResultsError as exc:
            raise ResultsError(f"{path}: {exc}") from None
        results.append(data)
    return results


_FRAME_COLUMNS = ["experiment", "paper", "dataset", "split", "profile", "model", "seed",
                  "device", "created", "wall_time_s", "metric", "value"]


def results_frame(results: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Long table: one row per result x metric (``value`` NaN for null metrics)."""
    rows = [{**{c: r.get(c) for c in _FRAME_COLUMNS[:-2]}, "metric": k,
             "value": np.nan if v is None else float(v)}
            for r in results for k, v in r["metrics"].items()]
    return pd.DataFrame(rows, columns=_FRAME_COLUMNS)


def reference_table(experiment: str, metrics: Iterable[str],
                    reference_dir: Optional[Union[str, os.PathLike]] = None) -> pd.DataFrame:
    """The committed ``bench_cpu``/``full`` results of ``experiment`` (default folder
    ``results/reference``): one row per profile, dataset and model (+ ``extra["variant"]``)
    with ``metrics`` (those present), training minutes and peak memory; empty when nothing
    has been benchmarked."""
    if reference_dir is None:
        reference_dir = REFERENCE_DIR
    folder = Path(reference_dir)
    keys, rows = list(metrics), []
    for r in (load_results(folder) if folder.is_dir() else []):
        if r["experiment"] != experiment or r["profile"] == "quick":
            continue
        m, extra = r["metrics"], r.get("extra", {})
        seconds = extra.get("train_seconds", m.get("train_seconds"))
        model = " ".join(str(p) for p in (r.get("model"), result_variant(r)) if p)
        rows.append({"profile": r["profile"], "dataset": r["dataset"], "model": model,
                     **{k: m[k] for k in keys if k in m},
                     "train_min": round(seconds / 60, 1) if seconds is not None else None,
                     "peak_rss_mb": (r.get("peak_memory_mb") or {}).get("cpu_rss")})
    if not rows:
        return pd.DataFrame()
    df = pd.DataFrame(rows).set_index(["profile", "dataset", "model"]).sort_index()
    order = [c for c in (*keys, "train_min", "peak_rss_mb") if c in df]
    return df[order].dropna(axis=1, how="all").round(4)


# --------------------------------------------------------------------------- summaries

def _summary_tables(results: Iterable[Mapping[str, Any]]) -> dict[str, pd.DataFrame]:
    """One wide table per experiment: run descriptors, then one column per metric."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        row = {"dataset": r["dataset"], "split": r["split"], "profile": r["profile"],
               "model": r.get("model") or "-", "variant": result_variant(r) or "-",
               "seed": r.get("seed"), "device": r["device"],
               "wall time (s)": float(r["wall_time_s"])}
        row.update({k: np.nan if v is None else float(v) for k, v in r["metrics"].items()})
        groups.setdefault(str(r["experiment"]), []).append(row)
    return {exp: _readable(pd.DataFrame(rows)) for exp, rows in sorted(groups.items())}


_WIDE_LIMIT = 16  # beyond this many columns, metrics are listed as rows instead


def _readable(df: pd.DataFrame) -> pd.DataFrame:
    """Transpose a table too wide to read: one row per field, one column per run."""
    if df.shape[1] <= _WIDE_LIMIT:
        return df
    wide = df.T.reset_index()
    wide.columns = ["field"] + [f"run {i + 1}" for i in range(len(df))]
    return wide


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, (float, np.floating)):
        return "–" if not math.isfinite(value) else f"{value:.4g}"
    return str(value)


def finite_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers of ``metrics`` as floats (what a results JSON may hold)."""
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool)
            and math.isfinite(v)}


def pretrained_vs_scratch(experiment: str, metric: str, reference_dir: Any = None,
                          paper: Optional[Mapping[str, float]] = None) -> pd.DataFrame:
    """The committed side-by-side runs of ``experiment`` (benchmark profiles): one row per
    dataset, model, backbone, input size, step count, loss and variant (its name without
    "ImageNet" / "scratch": :func:`pair_name`) that has runs with ImageNet weights and from
    scratch (``extra["pretrained_loaded"]`` or ``extra["pretrained"]``), with ``metric`` of
    each (the mean where there are repeats, and their count), the gain, and
    ``paper[dataset]`` (the paper's figure, in the same unit) where given."""
    folder = Path(reference_dir) if reference_dir is not None else REFERENCE_DIR
    buckets: dict[tuple, dict[bool, list[float]]] = {}
    for r in (load_results(folder) if folder.is_dir() else []):
        extra = r.get("extra") or {}
        pre = extra.get("pretrained_loaded", extra.get("pretrained"))
        if r["experiment"] != experiment or r["profile"] == "quick" or pre is None \
                or metric not in r["metrics"]:
            continue
        config = r.get("config") or {}
        key = (r["dataset"], r.get("model") or "-", config.get("backbone"),
               config.get("image_size"), config.get("iterations"), config.get("loss"),
               pair_name(extra.get("variant")))
        buckets.setdefault(key, {True: [], False: []})[bool(pre)].append(r["metrics"][metric])
    rows = []
    for (dataset, model, backbone, size, steps, loss, variant), runs in sorted(
            buckets.items(), key=lambda kv: (str(kv[0][:3]), kv[0][3] or 0, kv[0][4] or 0,
                                             str(kv[0][5]), kv[0][6])):
        if runs[True] and runs[False]:
            ours_in, ours_sc = float(np.mean(runs[True])), float(np.mean(runs[False]))
            label = model + (f" ({backbone})" if backbone else "") + (f", {steps} steps" if steps else "") \
                + (f", {loss}" if loss else "")
            rows.append({"dataset": dataset, "model": label, "variant": variant,
                         "input px": size,
                         f"{metric}, ImageNet": ours_in, f"{metric}, scratch": ours_sc,
                         "gain": ours_in - ours_sc, "runs": f"{len(runs[True])} + {len(runs[False])}",
                         "paper": (paper or {}).get(dataset, np.nan)})
    return pd.DataFrame(rows, columns=["dataset", "model", "variant", "input px",
                                       f"{metric}, ImageNet", f"{metric}, scratch", "gain",
                                       "runs", "paper"])


def pair_name(variant: Optional[str]) -> str:
    """The name two runs of a pretrained-vs-scratch pair share, and repeats of them: their
    variant without the words "ImageNet" and "scratch" and without "repeat N" / "seed N"
    (``"Lite0 ImageNet, 2 x 50 min"`` and ``"Lite0 scratch, 2 x 50 min, repeat 2"`` ->
    ``"Lite0, 2 x 50 min"``); "" without a variant."""
    name = re.sub(r"\b(imagenet|scratch|(repeat|seed) \d+)\b", "", variant or "",
                  flags=re.IGNORECASE)
    return re.sub(r"\s+", " ", name).replace(" ,", ",").strip(" ,")


def invocation() -> str:
    """This process's command line as a user would type it."""
    if Path(sys.argv[0]).name in ("__main__.py", "bloodlib", "cli.py"):
        return " ".join(shlex.quote(a) for a in ["python", "-m", "bloodlib", *sys.argv[1:]])
    return " ".join(shlex.quote(a) for a in sys.argv)


def publish_result(path: Union[str, os.PathLike], reference_dir: Union[str, os.PathLike],
                   runner: str, command: Optional[str] = None,
                   **run: Any) -> Path:
    """Copy the results JSON at ``path`` into ``reference_dir`` (the committed results)
    with a ``run`` block: the exact ``command`` (default: this process's), the ``runner``
    and any further ``run`` fields."""
    data = json.loads(Path(path).read_text())
    data["run"] = {"command": command or invocation(), "runner": runner, **run}
    dst = Path(reference_dir) / Path(path).name
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return dst


#: No table a report writes is wider than this (the board's test checks it).
MAX_TABLE_COLUMNS = 16


def split_columns(table: pd.DataFrame, limit: int = MAX_TABLE_COLUMNS) -> list[pd.DataFrame]:
    """``table`` cut into parts of at most ``limit`` columns, each keeping the first one
    (the row names), so that a wide table stays readable."""
    if table.shape[1] <= limit:
        return [table]
    key, rest = table.columns[0], list(table.columns[1:])
    step = limit - 1
    return [table[[key, *rest[i:i + step]]] for i in range(0, len(rest), step)]


def summary_markdown(results: Iterable[Mapping[str, Any]]) -> str:
    """Markdown: a heading and a table per experiment (metrics as columns)."""
    tables = _summary_tables(list(results))
    if not tables:
        return "_No results._\n"
    out = []
    for exp, table in tables.items():
        out += [f"### {exp}", ""]
        for df in split_columns(table):
            head = [str(c).replace("|", "\\|") for c in df.columns]
            out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            out += ["| " + " | ".join(_fmt(v).replace("|", "\\|") for v in row) + " |"
                    for row in df.itertuples(index=False)]
            out.append("")
    return "\n".join(out)


def summary_html(results: Iterable[Mapping[str, Any]]) -> str:
    """HTML: a heading and a table per experiment (metrics as columns)."""
    tables = _summary_tables(list(results))
    if not tables:
        return "<p><em>No results.</em></p>"
    parts = []
    for exp, table in tables.items():
        body = "\n".join(df.to_html(index=False, border=1, na_rep="–",
                                    float_format=lambda v: f"{v:.4g}")
                         for df in split_columns(table))
        parts.append(f"<h3>{html.escape(exp)}</h3>\n{body}")
    return "\n".join(parts)


# --------------------------------------------------------------------------- reference tables

@lru_cache(maxsize=1)
def _reference() -> dict[str, Any]:
    return json.loads(REFERENCE_FILE.read_text(encoding="utf-8"))["papers"]


def _paper_key(paper: Union[str, int]) -> str:
    key = f"paper{paper}" if isinstance(paper, int) or str(paper).isdigit() else str(paper)
    if key not in _reference():
        raise ReferenceTableError(f"Unknown paper {paper!r}; valid: {sorted(_reference())}.")
    return key


def _table_spec(paper: Union[str, int], table: str) -> dict[str, Any]:
    tables = _reference()[_paper_key(paper)]["tables"]
    if table not in tables:
        raise ReferenceTableError(f"Paper {paper!r} has no table {table!r}; valid: {sorted(tables)}.")
    return tables[table]


def paper_info(paper: Union[str, int]) -> dict[str, Any]:
    """Title, authors, year, venue and DOI of a paper (without its tables)."""
    return {k: v for k, v in _reference()[_paper_key(paper)].items() if k != "tables"}


def list_paper_tables() -> pd.DataFrame:
    """One row per reference table: paper, table, caption, unit, rows, metric columns."""
    rows = [{"paper": p, "table": t, "caption": spec["caption"], "unit": spec["unit"],
             "rows": len(spec["rows"]), "metrics": [c["key"] for c in spec["columns"]]}
            for p, info in _reference().items() for t, spec in info["tables"].items()]
    return pd.DataFrame(rows)


def paper_table(paper: Union[str, int], table: str) -> pd.DataFrame:
    """A paper's table as printed: descriptor columns (model, dataset ...) then metrics.

    ``df.attrs`` holds ``caption``, ``unit``, ``units`` (per metric), ``labels`` (the
    paper's column wording), ``source`` and ``notes``.
    """
    spec = _table_spec(paper, table)
    metrics = [c["key"] for c in spec["columns"]]
    descriptors = list(dict.fromkeys(k for r in spec["rows"] for k in r if k not in metrics))
    df = pd.DataFrame(spec["rows"], columns=descriptors + metrics)
    df[metrics] = df[metrics].astype(float)
    df.attrs.update(paper=_paper_key(paper), table=table, caption=spec["caption"],
                    unit=spec["unit"], source=spec.get("source", ""), notes=spec.get("notes", ""),
                    units={c["key"]: c.get("unit", spec["unit"]) for c in spec["columns"]},
                    labels={c["key"]: c["label"] for c in spec["columns"]})
    return df


def _ours_dict(ours: Union[Mapping[str, float], pd.DataFrame, pd.Series]) -> dict[str, float]:
    if isinstance(ours, pd.Series):
        ours = ours.to_dict()
    if isinstance(ours, pd.DataFrame):
        if {"metric", "value"} <= set(ours.columns):  # results_frame() output
            if ours["metric"].duplicated().any():
                raise ValueError("`ours` holds several values per metric; filter it to one "
                                 "result first (e.g. by dataset and model).")
            return dict(zip(ours["metric"], ours["value"].astype(float)))
        if len(ours) != 1:
            raise ValueError(f"A wide `ours` table must have exactly one row, it has {len(ours)}.")
        return {k: float(v) for k, v in ours.iloc[0].items() if isinstance(v, (int, float, np.number))}
    return {str(k): (np.nan if v is None else float(v)) for k, v in ours.items()}


def compare_with_paper(ours: Union[Mapping[str, float], pd.DataFrame, pd.Series],
                       paper: Union[str, int], table: str,
                       row_filter: Optional[Mapping[str, Any]] = None,
                       metric_map: Optional[Mapping[str, str]] = None,
                       scale: Union[str, float] = "auto") -> pd.DataFrame:
    """Paper vs ours for one row of a reference table, in the paper's unit.

    ``ours`` holds fractions (as bloodlib's metrics return them). ``row_filter`` (e.g.
    ``{"model": "MCNet", "dataset": "BCCD"}``) must select exactly one row.
    ``metric_map`` maps our keys to the table's keys; without it, keys equal to a table
    column (or to one via :data:`METRIC_ALIASES`, e.g. ``AP50 -> mAP50``) are compared.
    ``scale="auto"`` multiplies ours by 100 for percent columns and by 1 for fraction,
    count or value columns, and refuses ``mixed`` columns; a number is used for every
    metric. Returns columns metric, label, paper, ours, difference (ours - paper), unit.
    """
    df = paper_table(paper, table)
    units, labels = df.attrs["units"], df.attrs["labels"]
    row = df
    for col, want in (row_filter or {}).items():
        if col not in df.columns or col in units:
            raise ReferenceTableError(f"Cannot filter {paper}/{table} on {col!r}; descriptor "
                                      f"columns: {[c for c in df.columns if c not in units]}.")
        row = row[row[col] == want]
        if row.empty:
            raise ReferenceTableError(f"No row of {paper}/{table} has {col}={want!r}; values: "
                                      f"{sorted(df[col].dropna().astype(str).unique())}.")
    if len(row) != 1:
        raise ReferenceTableError(f"row_filter {dict(row_filter or {})} matches {len(row)} rows "
                                  f"of {paper}/{table}; add keys to select one.")
    row = row.iloc[0]
    values = _ours_dict(ours)
    if metric_map is None:
        pairs = {}
        for k in values:
            target = k if k in units else METRIC_ALIASES.get(k, METRIC_ALIASES.get(k.lower()))
            if target in units:
                pairs[k] = target
        if not pairs:
            raise ReferenceTableError(f"None of our metrics {sorted(values)} is a column of "
                                      f"{paper}/{table} ({sorted(units)}); pass metric_map.")
    else:
        pairs = dict(metric_map)
        bad_ours = [k for k in pairs if k not in values]
        bad_paper = [v for v in pairs.values() if v not in units]
        if bad_ours or bad_paper:
            raise ReferenceTableError(
                (f"Unknown metric(s) of ours {bad_ours}; we have {sorted(values)}. " if bad_ours else "")
                + (f"Unknown column(s) {bad_paper} of {paper}/{table}; valid: {sorted(units)}."
                   if bad_paper else ""))
    order = list(units)
    rows = []
    for ours_key, key in sorted(pairs.items(), key=lambda kv: order.index(kv[1])):
        unit = units[key]
        if scale == "auto":
            if unit == "mixed":
                raise ValueError(f"Column {key!r} of {paper}/{table} mixes units "
                                 f"({df.attrs['notes']}); pass scale=100 or scale=1 explicitly.")
            factor = 100.0 if unit == "percent" else 1.0
        else:
            factor = float(scale)
        mine = values[ours_key] * factor
        ref = float(row[key])
        rows.append({"metric": key, "label": labels[key], "paper": ref, "ours": mine,
                     "difference": mine - ref, "unit": unit})
    out = pd.DataFrame(rows, columns=["metric", "label", "paper", "ours", "difference", "unit"])
    out.attrs.update(paper=df.attrs["paper"], table=table, caption=df.attrs["caption"],
                     row={k: row[k] for k in df.columns if k not in units})
    return out
