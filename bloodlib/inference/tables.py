"""The CSVs of ``bloodlib predict``, written as batches finish, resumable and mergeable.

Rows are appended (and flushed) after every batch, so a killed run loses at most the
batch in flight; ``resume=True`` keeps what is on disk and :meth:`PredictionTables.done`
says which images to skip. An image counts as done once it has a row in ``counts.csv``
(processed) or ``skipped.csv``; table rows of an image that never reached ``counts.csv``
(a kill between the two writes) and a half-written last line are dropped on resume.
:func:`merge_shards` joins the parts written by ``--shard I/N`` runs.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

import pandas as pd

from ..errors import BloodlibError

OUTPUT_TABLES = {"detect": "detections.csv", "classify": "classifications.csv",
                 "segment": "areas.csv"}
BASE_COLUMNS = {"detect": ["image", "cell", "class", "score", "x1", "y1", "x2", "y2"],
                "classify": ["image", "label", "score"],
                "segment": ["image", "class", "pixels", "fraction", "objects"]}
SKIPPED_COLUMNS = ["image", "reason"]
DOWNSCALED_COLUMNS = ["image", "factor"]


def table_columns(task: str, classes: Sequence[str],
                  cell_types: Optional[Sequence[str]] = None) -> list[str]:
    """Columns of the task's table: the base ones, ``p_<class>`` (classify), and
    ``wbc_type``, ``wbc_type_score``, ``p_<type>`` with a WBC classifier (detect)."""
    cols = list(BASE_COLUMNS[task])
    if task == "classify":
        cols += [f"p_{c}" for c in classes]
    if task == "detect" and cell_types:
        cols += ["wbc_type", "wbc_type_score"] + [f"p_{c}" for c in cell_types]
    return cols


def count_columns(task: str, classes: Sequence[str],
                  cell_types: Optional[Sequence[str]] = None) -> list[str]:
    """Columns of ``counts.csv``: image, one per class (foreground only for segment),
    ``WBC/<type>`` with a classifier, total."""
    names = list(classes[1:]) if task == "segment" else list(classes)
    if task == "detect" and cell_types:
        names += [f"WBC/{t}" for t in sorted(cell_types)]
    return ["image"] + names + ["total"]


def _complete_rows(path: Path, columns: list[str]) -> list[list[str]]:
    """The rows of ``path`` that have every column (a half-written last line does not);
    BloodlibError when its header is not ``columns``."""
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            return []
        if header != columns:
            raise BloodlibError(f"--resume: {path} has the columns {header[:6]}..., not those "
                                "of this model and task; resume with the same model and task, "
                                "or write to a new --out folder.")
        return [row for row in reader if len(row) == len(columns)]


class PredictionTables:
    """The task table, ``counts.csv``, ``skipped.csv`` and ``downscaled.csv`` of one
    output folder, appended batch by batch."""

    def __init__(self, out_dir: Path, task: str, columns: list[str], counts: list[str],
                 resume: bool = False) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.task = task
        self.paths = {"table": self.out_dir / OUTPUT_TABLES[task],
                      "counts": self.out_dir / "counts.csv",
                      "skipped": self.out_dir / "skipped.csv",
                      "downscaled": self.out_dir / "downscaled.csv"}
        self.columns = {"table": columns, "counts": counts, "skipped": SKIPPED_COLUMNS,
                        "downscaled": DOWNSCALED_COLUMNS}
        kept = self._kept_rows() if resume else {k: [] for k in self.paths}
        self._done = {r[0] for r in kept["counts"]} | {r[0] for r in kept["skipped"]}
        self.resumed = len(self._done)
        for key, path in self.paths.items():
            with path.open("w", newline="") as f:
                csv.writer(f).writerows([self.columns[key], *kept[key]])

    def _kept_rows(self) -> dict[str, list[list[str]]]:
        kept = {k: _complete_rows(p, self.columns[k]) for k, p in self.paths.items()}
        processed = {r[0] for r in kept["counts"]}
        kept["table"] = [r for r in kept["table"] if r[0] in processed]
        return kept

    def done(self) -> set[str]:
        """Images already processed or skipped (from this run or a resumed one)."""
        return set(self._done)

    def _append(self, key: str, rows: Iterable[Mapping[str, Any]]) -> None:
        rows = list(rows)
        if not rows:
            return
        with self.paths[key].open("a", newline="") as f:
            writer = csv.DictWriter(f, self.columns[key], extrasaction="raise")
            writer.writerows(rows)
            f.flush()

    def append(self, rows: Sequence[Mapping[str, Any]], counts: Sequence[Mapping[str, Any]],
               skipped: Sequence[tuple[str, str]] = (),
               downscaled: Sequence[tuple[str, float]] = ()) -> None:
        """Append one batch: table rows first, then the counts that mark images done."""
        self._append("table", rows)
        self._append("downscaled", ({"image": p, "factor": f} for p, f in downscaled))
        self._append("counts", counts)
        self._append("skipped", ({"image": p, "reason": r} for p, r in skipped))
        self._done.update(c["image"] for c in counts)
        self._done.update(p for p, _ in skipped)

    def read(self, key: str) -> pd.DataFrame:
        """One of the written tables."""
        return pd.read_csv(self.paths[key])


def totals(counts: pd.DataFrame) -> dict[str, int]:
    """Column sums of a ``counts.csv`` table."""
    return {c: int(counts[c].fillna(0).sum()) for c in counts.columns if c != "image"}


# ----------------------------------------------------------------------------- shards
def _shard_parts(out_dir: Path) -> list[Path]:
    """The complete shard folders of ``out_dir``; BloodlibError when some are missing."""
    root = Path(out_dir) / "shards"
    parts = sorted(p for p in root.glob("*-of-*") if p.is_dir()) if root.is_dir() else []
    if not parts:
        raise BloodlibError(f"--merge: no shard folders under {root}; run predict with "
                            "--shard I/N and the same --out first.")
    counts = {int(p.name.split("-of-")[1]) for p in parts}
    if len(counts) != 1:
        raise BloodlibError(f"--merge: {root} holds shards of different splits "
                            f"({sorted(counts)}); remove the old ones.")
    n = counts.pop()
    have = {int(p.name.split("-of-")[0]) for p in parts}
    missing = sorted(set(range(n)) - have)
    unfinished = [p.name for p in parts if not (p / "summary.json").is_file()]
    if missing or unfinished:
        problems = ([f"shards {missing} missing"] if missing else []) + (
            [f"{unfinished} unfinished"] if unfinished else [])
        raise BloodlibError(f"--merge: {' and '.join(problems)} (of {n}); run (or --resume) "
                            "those first.")
    return sorted(parts, key=lambda p: int(p.name.split("-of-")[0]))


def merge_shards(out_dir: Path) -> dict[str, Any]:
    """Join the shard folders of ``out_dir`` into its CSVs (rows ordered by image) and
    write ``summary.json``; returns the summary."""
    out_dir = Path(out_dir)
    parts = _shard_parts(out_dir)
    summaries = [json.loads((p / "summary.json").read_text()) for p in parts]
    task = summaries[0]["task"]
    names = [OUTPUT_TABLES[task], "counts.csv", "skipped.csv", "downscaled.csv"]
    for name in names:
        frames = [pd.read_csv(p / name) for p in parts if (p / name).is_file()]
        joined = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
        if "image" in joined.columns and not joined.empty:
            joined = joined.sort_values("image", kind="stable", ignore_index=True)
        joined.to_csv(out_dir / name, index=False)
    counts = pd.read_csv(out_dir / "counts.csv")
    seconds = sum(s.get("seconds", 0.0) for s in summaries)
    summary = {"task": task, "model": summaries[0].get("model"),
               "processed": int(len(counts)),
               "skipped": pd.read_csv(out_dir / "skipped.csv").to_dict("records"),
               "totals": totals(counts),
               "shards": [{"folder": str(p), "processed": s["processed"],
                           "seconds": s.get("seconds")} for p, s in zip(parts, summaries)],
               "seconds": seconds,
               "files": {"table": str(out_dir / OUTPUT_TABLES[task]),
                         "counts": str(out_dir / "counts.csv"),
                         "skipped": str(out_dir / "skipped.csv")}}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
