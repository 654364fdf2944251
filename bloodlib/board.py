"""The results board: every results JSON, the papers' tables beside ours, one report.

```python
md, html = write_board("outputs/quick/board", ["results/reference", "outputs/quick/results"])
```

For each paper it shows each of its tables with the paper's numbers and ours (one column
per profile and origin: its main run), then, folded, every run of that table (variants
by configuration; repeats on other seeds or machines as mean ± sd, with their machines), a
bar chart per table, the list of runs with their profile and machine (``quick`` runs are
smoke tests whose numbers are not comparable with the papers), and the results that
belong to no paper table. No table is wider than
:data:`bloodlib.results.MAX_TABLE_COLUMNS` columns (wider ones are cut into parts).

A result is put beside a table row when its ``extra`` names them
(``extra={"paper_table": "table1", "paper_row": {"model": "WCSegNet", "dataset": "Jiangxi"}}``),
or else when its ``model`` and ``dataset`` match exactly one row of a table of its paper
(case, spaces and punctuation ignored; a unique prefix is accepted, e.g.
``unet_leaky`` -> ``Unet (LeakyRelu)``). Metrics are compared where our key equals a
column key (or an alias in :data:`bloodlib.results.METRIC_ALIASES`); columns of mixed
units are left out unless the result names them.
"""

from __future__ import annotations

import html
import json
import re
import warnings
from datetime import datetime, timezone
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import numpy as np
import pandas as pd

from .config import register
from .errors import BloodlibError
from .paths import PROJECT_ROOT, REFERENCE_DIR
from .results import (METRIC_ALIASES, ResultsError, _reference, compare_with_paper,
                      load_results, paper_info, paper_table, result_variant, split_columns,
                      summary_html, summary_markdown)

PathLike = Union[str, Path]


@dataclass(frozen=True)
class BoardSettings:
    """Notebook 07's settings."""

    include_reference: bool


register("results_board", {p: {"include_reference": True} for p in ("quick", "bench_cpu", "full")},
         schema=BoardSettings)
PROFILE_NOTES = {
    "quick": "smoke test: minutes on a CPU, small subsets; numbers are NOT comparable with the papers",
    "bench_cpu": "CPU benchmark: tens of minutes on 2 cores; reduced models/epochs, see each notebook",
    "full": "the paper's protocol (GPU)",
}
PROFILE_ORDER = {"full": 0, "bench_cpu": 1, "quick": 2}
_BADGE_COLORS = {"quick": "#f0ad4e", "bench_cpu": "#5bc0de", "full": "#5cb85c"}


# ----------------------------------------------------------------------------- loading
def _origin(folder: Path) -> str:
    folder = folder.resolve()
    if folder == REFERENCE_DIR.resolve():
        return "reference"
    return f"run {folder.parent.name}" if folder.name == "results" else folder.name


def collect_results(dirs: Optional[Sequence[PathLike]] = None) -> list[dict[str, Any]]:
    """Every valid results JSON under ``dirs`` (default: ``results/reference``), each with
    ``origin`` ("reference" or "run <profile folder>") and ``source`` (its file) added.
    Missing folders are ignored; invalid files are skipped with a warning."""
    out = []
    for d in [Path(p) for p in (dirs or [REFERENCE_DIR])]:
        if not d.exists():
            continue
        files = sorted(d.rglob("*.json")) if d.is_dir() else [d]
        for f in files:
            try:
                found = load_results(f)
            except ResultsError as exc:
                warnings.warn(f"Skipping {f}: {exc}", stacklevel=2)
                continue
            for r in found:
                out.append({**r, "origin": _origin(d if d.is_dir() else d.parent),
                            "source": str(f), "result_id": len(out)})
    return out


def run_label(result: Mapping[str, Any]) -> str:
    """Short name of the run a result comes from: ``profile · origin``, then the result's
    ``extra["variant"]`` when it has one (the table row already says which model and
    dataset)."""
    return " · ".join(str(p) for p in (result["profile"], result.get("origin"),
                                       result_variant(result)) if p)


def runs_table(results: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per result: what ran, in which profile, where from, when, on what."""
    rows = [{"experiment": r["experiment"], "paper": r["paper"], "dataset": r["dataset"],
             "model": r.get("model") or "-", "variant": result_variant(r) or "-",
             "profile": r["profile"],
             "origin": r.get("origin", "-"),
             "machine": machine_label(r),
             "created": str(r.get("created", ""))[:10], "wall time (s)": r.get("wall_time_s"),
             "metrics": len(r.get("metrics") or {})} for r in results]
    df = pd.DataFrame(rows, columns=["experiment", "paper", "dataset", "model", "variant",
                                     "profile", "origin", "machine", "created",
                                     "wall time (s)", "metrics"])
    order = df["profile"].map(PROFILE_ORDER).fillna(9)
    keys = ["paper", "experiment", "_o", "dataset", "model", "_v", "variant"]
    return (df.assign(_o=order, _v=df["variant"].ne("-")).sort_values(keys)   # main run first
              .drop(columns=["_o", "_v"]).reset_index(drop=True))


# ----------------------------------------------------------------------------- matching
def _norm(value: Any) -> str:
    return re.sub(r"[^a-z0-9]", "", str(value).lower())


def _pick(values: Iterable[Any], ours: Any) -> Optional[Any]:
    values = [v for v in values if isinstance(v, str)]
    key = _norm(ours)
    if not key:
        return None
    exact = [v for v in values if _norm(v) == key]
    prefix = [v for v in values if _norm(v).startswith(key) or key.startswith(_norm(v) or "#")]
    chosen = exact or prefix
    return chosen[0] if len(chosen) == 1 else None


def match_table_row(result: Mapping[str, Any], table: str) -> Optional[dict[str, Any]]:
    """The ``row_filter`` selecting the one row of ``table`` (of the result's paper) that
    the result corresponds to, or None."""
    extra = result.get("extra") or {}
    if extra.get("paper_table") == table and isinstance(extra.get("paper_row"), Mapping):
        return dict(extra["paper_row"])
    if extra.get("paper_table") and extra.get("paper_table") != table:
        return None
    df = paper_table(result["paper"], table)
    metrics = set(df.attrs["units"])
    descriptors = [c for c in df.columns if c not in metrics]
    ours = {"model": result.get("model") or result.get("experiment"),
            "dataset": result.get("dataset"), **dict(extra.get("paper_row") or {})}
    row_filter, rows = {}, df
    for col in descriptors:
        if col not in ours:
            continue
        pick = _pick(rows[col].dropna().unique(), ours[col])
        if pick is None:
            return None
        row_filter[col] = pick
        rows = rows[rows[col] == pick]
    if len(rows) != 1 or ("model" in descriptors and "model" not in row_filter
                          and _pick(rows["model"], ours["model"]) is None):
        return None
    return row_filter


def _metric_map(result: Mapping[str, Any], units: Mapping[str, str],
                table: Optional[str] = None) -> dict[str, str]:
    """Our metric key -> the table's column: ``extra["paper_metrics"][table]`` when the
    result gives one (e.g. ``{"val_mAP50": "mAP50"}`` where two tables share a column
    name), else equal keys or :data:`METRIC_ALIASES`."""
    given = ((result.get("extra") or {}).get("paper_metrics") or {}).get(table)
    if given:
        return {k: v for k, v in given.items()
                if v in units and units[v] != "mixed" and result["metrics"].get(k) is not None}
    pairs = {}
    for k in result["metrics"]:
        target = k if k in units else METRIC_ALIASES.get(k, METRIC_ALIASES.get(k.lower()))
        if target in units and units[target] != "mixed" and result["metrics"][k] is not None:
            pairs.setdefault(k, target)
    return pairs


def _own_row(result: Mapping[str, Any], table: str) -> Optional[pd.DataFrame]:
    """A row of ours that the paper's table lacks (another backbone, say): named by
    ``extra["own_row"]`` for the tables in ``extra["paper_tables"]``; shown with the
    table's columns and no paper value."""
    extra = result.get("extra") or {}
    if table not in (extra.get("paper_tables") or []) or not isinstance(extra.get("own_row"), Mapping):
        return None
    ref = paper_table(result["paper"], table)
    units, labels = ref.attrs["units"], ref.attrs["labels"]
    rows = [{"metric": col, "label": labels[col], "paper": np.nan,
             "ours": float(result["metrics"][k]) * (100.0 if units[col] == "percent" else 1.0),
             "difference": np.nan, "unit": units[col]}
            for k, col in _metric_map(result, units, table).items()]
    if not rows:
        return None
    label = ", ".join(str(v) for v in extra["own_row"].values()) + " (ours only)"
    return pd.DataFrame(rows).assign(row=label)


def comparisons(results: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Long table: paper, table, row, metric, label, unit, paper value, ours, difference,
    run (label), profile, origin - for every result matched to a paper table row (or
    naming a row of its own, :func:`_own_row`)."""
    frames = []
    for r in results:
        if r["paper"] not in _reference():
            continue
        for table in paper_info_tables(r["paper"]):
            cmp = _compare_row(r, table)
            if cmp is None:
                continue
            frames.append(cmp.assign(paper_key=r["paper"], table=table,
                                     run=run_label(r), profile=r["profile"],
                                     origin=r.get("origin", ""), result_id=r.get("result_id"),
                                     variant=result_variant(r) or "",
                                     machine=machine_label(r)))
    cols = ["paper_key", "table", "row", "metric", "label", "unit", "paper", "ours",
            "difference", "run", "profile", "origin", "result_id", "variant", "machine"]
    return pd.concat(frames, ignore_index=True)[cols] if frames else pd.DataFrame(columns=cols)


def _compare_row(r: Mapping[str, Any], table: str) -> Optional[pd.DataFrame]:
    """Paper vs ours for the row of ``table`` that ``r`` matches (with a ``row`` column),
    its own row, or None."""
    row_filter = match_table_row(r, table)
    if row_filter is None:
        return _own_row(r, table)
    units = paper_table(r["paper"], table).attrs["units"]
    pairs = _metric_map(r, units, table)
    if not pairs:
        return None
    try:
        cmp = compare_with_paper(r["metrics"], r["paper"], table, row_filter, pairs)
    except (BloodlibError, ValueError) as exc:
        warnings.warn(f"{r.get('source', r['experiment'])}: {exc}", stacklevel=3)
        return None
    return cmp.assign(row=", ".join(f"{v}" for v in row_filter.values()))


def paper_info_tables(paper: str) -> list[str]:
    """The table names of a paper in the reference file."""
    return list(_reference()[paper]["tables"])


#: Words in a variant label that mark a repeat of the same configuration (another seed,
#: machine, session or load), not a different recipe: such runs are averaged.
_REPEAT_WORDS = re.compile(r"seed[\s-]*\d+|re-?run|(avx2|amx)[\s-]machine|session[\s-]*\d+|"
                           r"\d+[\s-]jobs[\s-]on[\s-]\d+[\s-]cores|stand-alone[\s-]run",
                           re.IGNORECASE)


def machine_label(result: Mapping[str, Any]) -> str:
    """Where a result ran, briefly: the CPU model (or architecture), cores, and the GPU."""
    m = result.get("machine") or {}
    cpu = m.get("cpu_model") or m.get("machine") or "?"
    cpu = re.sub(r"\s+", " ", re.sub(r"\((R|TM)\)|CPU|Processor|@.*", "", str(cpu))).strip()
    device = str(result.get("device") or "cpu")
    gpu = "" if device.startswith("cpu") else f" + {device}"
    return f"{cpu}, {m.get('cpu_count', '?')} cores{gpu}"


def configuration(variant: str) -> str:
    """A variant label with its repeat words removed (``seed-1`` -> the main run's)."""
    left = _REPEAT_WORDS.sub("", variant or "")
    return re.sub(r"[\s,;-]*,[\s,;-]*", ", ", left).strip(" ,;-")


def _paper_rows(cmp: pd.DataFrame, ref: pd.DataFrame) -> pd.DataFrame:
    """The paper's own rows of ``ref`` as comparison rows without values of ours (shown
    beside rows that only we have, so the reader sees the paper's figures)."""
    units, labels = ref.attrs["units"], ref.attrs["labels"]
    descriptors = [c for c in ref.columns if c not in units]
    keys = [m for m in dict.fromkeys(cmp["metric"]) if m in units]
    rows = [{"row": ", ".join(str(r[c]) for c in descriptors if pd.notna(r[c])), "metric": m,
             "label": labels[m], "paper": r[m], "ours": np.nan, "run": "", "variant": ""}
            for _, r in ref.iterrows() for m in keys]
    return pd.DataFrame(rows)


def wide_table(cmp: pd.DataFrame, ref: Optional[pd.DataFrame] = None) -> pd.DataFrame:
    """One paper table laid out like the paper's: one row per table row; for each metric
    the paper's value, then ours from the main run (no variant) of each profile and
    origin (``metric (run)``). Variants and repeats go to :func:`appendix_table`. When
    some rows are ours only (a backbone the paper lacks) and ``ref`` (the paper's table)
    is given, the paper's rows are listed too."""
    if cmp.empty:
        return pd.DataFrame()
    if ref is not None and cmp["row"].str.endswith("(ours only)").any():
        cmp = pd.concat([cmp, _paper_rows(cmp, ref)], ignore_index=True)
    rows = list(dict.fromkeys(cmp["row"]))
    main = cmp[(cmp["variant"].fillna("") == "") & cmp["ours"].notna()] if "variant" in cmp \
        else cmp
    out = pd.DataFrame({"row": rows})
    for label in dict.fromkeys(cmp["label"]):
        sub = cmp[cmp["label"] == label]
        out[f"{label} (paper)"] = sub.drop_duplicates("row").set_index("row")["paper"].reindex(rows).to_numpy()
        mine = main[main["label"] == label]
        for run in dict.fromkeys(mine["run"]):
            vals = mine[mine["run"] == run].drop_duplicates("row").set_index("row")["ours"]
            out[f"{label} ({run})"] = vals.reindex(rows).to_numpy()
    return out


def _spread(values: pd.Series) -> str:
    v = values.dropna().astype(float)
    if len(v) < 2:
        return f"{v.iloc[0]:.4g}" if len(v) else ""
    return f"{v.mean():.4g} ± {v.std(ddof=1):.2g} (n={len(v)})"


def appendix_table(cmp: pd.DataFrame) -> pd.DataFrame:
    """Every run of one paper table, compactly: one row per (table row, configuration)
    with ours per metric (the paper's in the main table); repeats of a configuration
    (other seeds, machines, sessions: see :func:`configuration`) as mean ± standard
    deviation with their count, and the machines they ran on."""
    if cmp.empty:
        return pd.DataFrame()
    df = cmp.assign(config=cmp["variant"].fillna("").map(configuration).replace("", "main run"),
                    profile_=cmp["profile"])
    out = []
    for (row, profile, config), g in df.groupby(["row", "profile_", "config"], sort=False):
        entry = {"row": row, "profile": profile, "configuration": config,
                 "runs": int(g.groupby("label").size().max())}  # one row per run and metric
        for label in dict.fromkeys(g["label"]):
            entry[label] = _spread(g[g["label"] == label]["ours"])
        entry["machines"] = "; ".join(dict.fromkeys(g["machine"]))
        out.append(entry)
    return pd.DataFrame(out)


# ----------------------------------------------------------------------------- figures
def comparison_figure(cmp: pd.DataFrame, title: str = ""):
    """One panel per metric: the paper's value and each run's, for every table row."""
    import matplotlib.pyplot as plt
    metrics = list(dict.fromkeys(cmp["label"]))
    rows = list(dict.fromkeys(cmp["row"]))
    runs = list(dict.fromkeys(cmp["run"]))
    width = 0.8 / (len(runs) + 1)
    ncols = min(2, len(metrics))
    nrows = -(-len(metrics) // ncols)
    panel_w = max(3.2, 0.4 * len(rows) * (len(runs) + 1) + 1.2)
    fig, axes = plt.subplots(nrows, ncols, squeeze=False, figsize=(panel_w * ncols, 3.6 * nrows))
    plt.close(fig)
    for ax in axes.flat[len(metrics):]:
        ax.set_axis_off()
    x = np.arange(len(rows))
    for ax, metric in zip(axes.flat, metrics):
        sub = cmp[cmp["label"] == metric]
        paper = sub.drop_duplicates("row").set_index("row")["paper"].reindex(rows)
        ax.bar(x - 0.4 + width / 2, paper.to_numpy(float), width, label="paper", color="#8c8c8c")
        for k, run in enumerate(runs):
            vals = sub[sub["run"] == run].drop_duplicates("row").set_index("row")["ours"]
            ax.bar(x - 0.4 + width * (k + 1.5), vals.reindex(rows).to_numpy(float), width,
                   label=f"ours ({run})")
        ax.set_xticks(x, rows, rotation=35, ha="right", fontsize=7)
        ax.set_title(metric, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].set_ylabel(f"value ({cmp['unit'].iloc[0]})" if cmp["unit"].nunique() == 1 else "value")
    axes[0, ncols - 1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def runs_overview_figure(runs: pd.DataFrame):
    """Results per experiment, stacked by profile."""
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 3.4))
    plt.close(fig)
    if runs.empty:
        ax.text(0.5, 0.5, "no results yet", ha="center", va="center")
        ax.set_axis_off()
        return fig
    counts = runs.groupby(["experiment", "profile"]).size().unstack(fill_value=0)
    counts = counts[sorted(counts.columns, key=lambda p: PROFILE_ORDER.get(p, 9))]
    counts.plot.barh(stacked=True, ax=ax, color=[_BADGE_COLORS.get(c, "#999") for c in counts.columns])
    ax.set(xlabel="results JSON", ylabel="", title="Results per experiment and profile")
    ax.legend(fontsize=8, title="profile")
    fig.tight_layout()
    return fig


def paper_vs_ours_figure(cmp: pd.DataFrame):
    """Every compared number: the paper's (x) against ours (y), as fractions; points on
    the diagonal reproduce the paper."""
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    plt.close(fig)
    ax.plot([0, 1], [0, 1], color="#999", lw=1, ls="--")
    if cmp.empty:
        ax.text(0.5, 0.5, "no result matches a paper table yet", ha="center", fontsize=8)
    else:
        scale = np.where(cmp["unit"] == "percent", 0.01, 1.0)
        frac = cmp.assign(paper_f=cmp["paper"] * scale, ours_f=cmp["ours"] * scale)
        frac = frac[frac["unit"].isin(["percent", "fraction"])]
        for profile, sub in frac.groupby("profile"):
            ax.scatter(sub["paper_f"], sub["ours_f"], s=18, label=profile,
                       color=_BADGE_COLORS.get(profile, "#999"), edgecolor="k", lw=0.3)
        ax.legend(fontsize=8, title="profile")
    ax.set(xlim=(0, 1.02), ylim=(0, 1.02), xlabel="paper (fraction)", ylabel="ours (fraction)",
           title="Every compared metric")
    ax.set_aspect("equal")
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- report
def _md_table(df: pd.DataFrame) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, (float, np.floating)):
            return "–" if not np.isfinite(v) else f"{v:.4g}"
        return str(v).replace("|", "\\|")
    head = [str(c).replace("|", "\\|") for c in df.columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def _html_table(df: pd.DataFrame) -> str:
    return df.to_html(index=False, border=1, na_rep="–", float_format=lambda v: f"{v:.4g}",
                      escape=True)


def _badge(profile: str) -> str:
    color = _BADGE_COLORS.get(profile, "#999")
    return (f"<span style='background:{color};color:#fff;border-radius:3px;padding:0 4px'>"
            f"{html.escape(profile)}</span>")


def build_board(results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Everything the report shows: runs, per-paper comparison tables, other results."""
    cmp = comparisons(results)
    matched = set(cmp["result_id"].dropna()) if not cmp.empty else set()
    papers = {}
    for (paper, table), sub in cmp.groupby(["paper_key", "table"], sort=True):
        ref = paper_table(paper, table)
        papers.setdefault(paper, {})[table] = {"caption": ref.attrs["caption"],
                                               "unit": ref.attrs["unit"],
                                               "comparison": sub, "wide": wide_table(sub, ref),
                                               "appendix": appendix_table(sub)}
    others = [r for r in results if r.get("result_id") not in matched]
    return {"runs": runs_table(results), "papers": papers, "others": others,
            "comparisons": cmp}


def write_board(out_dir: PathLike, results_dirs: Optional[Sequence[PathLike]] = None,
                title: str = "Results board") -> tuple[Path, Path]:
    """Write ``results_board.md`` / ``.html``, ``comparisons.csv`` and ``figures/*.png``
    into ``out_dir`` from the results JSON under ``results_dirs`` (default: the committed
    reference results)."""
    out = Path(out_dir)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    dirs = [Path(d) for d in (results_dirs or [REFERENCE_DIR])]
    results = collect_results(dirs)
    board = build_board(results)
    board["comparisons"].to_csv(out / "comparisons.csv", index=False)
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    shown = [_relative(d) for d in dirs]
    md = [f"# {title}", "", f"Generated {now} from {len(results)} results JSON in "
          + ", ".join(f"`{d}`" for d in shown) + ".", "", "Profiles:", ""]
    md += [f"* **{p}** - {n}" for p, n in PROFILE_NOTES.items()]
    hb = [f"<h1>{html.escape(title)}</h1><p>Generated {now} from {len(results)} results JSON in "
          + ", ".join(f"<code>{html.escape(d)}</code>" for d in shown) + ".</p><ul>"]
    hb += [f"<li>{_badge(p)} {html.escape(n)}</li>" for p, n in PROFILE_NOTES.items()] + ["</ul>"]
    runs = board["runs"]
    md += ["", "## Runs", "", _md_table(runs) if not runs.empty else "_No results yet._"]
    runs_html = runs.copy()
    hb += ["<h2>Runs</h2>", _html_table(runs_html) if not runs.empty else "<p>No results yet.</p>"]
    hb[-1] = _badge_profiles(hb[-1])
    for paper, tables in board["papers"].items():
        info = paper_info(paper)
        year = f" ({info['year']})" if info.get("year") else ""
        head = f"{paper}: {info.get('title', '')}{year}"
        md += ["", f"## {head}"]
        hb += [f"<h2>{html.escape(head)}</h2>"]
        for table, t in tables.items():
            fig = comparison_figure(t["comparison"], f"{paper} {table}: paper vs ours")
            fig_path = out / "figures" / f"{paper}_{table}.png"
            fig.savefig(fig_path, dpi=100, bbox_inches="tight")
            profiles = sorted(set(t["comparison"]["profile"]), key=lambda p: PROFILE_ORDER.get(p, 9))
            note = ("**Only quick runs: these numbers are a smoke test, not a reproduction.**"
                    if profiles == ["quick"] else f"Profiles: {', '.join(profiles)}.")
            parts = split_columns(t["wide"])
            md += ["", f"### {table}: {t['caption']} ({t['unit']})", "", note, ""]
            md += [x for part in parts for x in (_md_table(part), "")]
            md += [f"![{paper} {table}](figures/{fig_path.name})"]
            hb += [f"<h3>{html.escape(table)}: {html.escape(t['caption'])} ({t['unit']})</h3>",
                   f"<p>{' '.join(_badge(p) for p in profiles)} "
                   f"{'only quick runs: a smoke test, not a reproduction' if profiles == ['quick'] else ''}</p>",
                   *(_html_table(part) for part in parts),
                   f"<p><img src='figures/{fig_path.name}' style='max-width:100%'></p>"]
            appendix = t["appendix"]
            if (appendix["configuration"] != "main run").any() or (appendix["runs"] > 1).any():
                title = f"{table}, every run (variants; repeats as mean ± sd)"
                md += ["", f"<details><summary>{title}</summary>", ""]
                md += [x for part in split_columns(appendix) for x in (_md_table(part), "")]
                md += ["</details>"]
                hb += [f"<details><summary>{html.escape(title)}</summary>",
                       *(_html_table(part) for part in split_columns(appendix)), "</details>"]
    md += ["", "## Other results (no paper table row)", "", summary_markdown(board["others"])]
    hb += ["<h2>Other results (no paper table row)</h2>", summary_html(board["others"])]
    md_path, html_path = out / "results_board.md", out / "results_board.html"
    md_path.write_text("\n".join(md) + "\n")
    html_path.write_text("<html><head><meta charset='utf-8'><title>" + html.escape(title)
                         + "</title></head><body>" + "\n".join(hb) + "</body></html>\n")
    (out / "board.json").write_text(json.dumps({"generated": now, "results": len(results),
                                                "sources": shown}, indent=2) + "\n")
    return md_path, html_path


def _badge_profiles(table_html: str) -> str:
    for p in PROFILE_NOTES:
        table_html = table_html.replace(f"<td>{p}</td>", f"<td>{_badge(p)}</td>")
    return table_html


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(PROJECT_ROOT))
    except ValueError:
        return str(path)
