"""``bloodlib report``: a page a lab person reads - per smear, the cell counts, the WBC
differential and what to look at again.

```
bloodlib report smears/ --out report/ [--detector NAME] [--classifier NAME]
```

Runs the detector (and the WBC classifier on each detected WBC) over the smears with the
batched ``predict`` path (``report/predictions/`` holds its CSVs), then writes:

* ``report/report.html`` - a summary over the folder (cells, counts, differential,
  smears flagged) and one row per smear: a thumbnail with the overlay, RBC / WBC /
  platelet counts, the WBC differential in percent, and flags;
* ``report/report.csv`` - the same numbers, one row per smear.

Flags: no WBC found, WBC types or detections below ``low_confidence``, detected WBCs the
classifier calls a non-white cell (:data:`NOT_WBC_TYPES`, left out of the differential),
and smears that could not be read (they are listed, the others are reported).
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd
from .batch import check_out_dir, predict_files
from .folder import collect_inputs
from ..viz import class_color
import cv2

LOW_CONFIDENCE = 0.6
#: classifier classes that are not white cells (PBC's 8 classes include two): a detected
#: WBC typed as one of them is flagged and left out of the differential
NOT_WBC_TYPES = ("platelet", "platelets", "erythroblast", "rbc", "red_blood_cell")
THUMB_WIDTH = 360
_GROUPS = {"rbc": "RBC", "red_blood_cell": "RBC", "wbc": "WBC", "white_blood_cell": "WBC",
           "platelets": "Platelets", "platelet": "Platelets", "plt": "Platelets"}


def _group(name: str) -> str:
    return _GROUPS.get(str(name).strip().lower().replace(" ", "_"), str(name))


def smear_table(cells: pd.DataFrame, counts: pd.DataFrame,
                low_confidence: float = LOW_CONFIDENCE) -> pd.DataFrame:
    """One row per smear: cell counts per group, WBC differential (percent of typed
    WBCs per type), low-confidence numbers and flags."""
    found = cells.get("wbc_type", pd.Series(dtype=object)).dropna()
    types = sorted({t for t in found if not _not_wbc(t)})
    rows = []
    by_image = dict(tuple(cells.groupby("image"))) if not cells.empty else {}
    for image in counts["image"]:
        c = by_image.get(image, cells.iloc[0:0])
        groups = c["class"].map(_group) if not c.empty else pd.Series(dtype=object)
        row: dict[str, Any] = {"smear": image, "cells": int(len(c))}
        for g in ("RBC", "WBC", "Platelets"):
            row[g] = int((groups == g).sum())
        typed = c["wbc_type"].dropna() if "wbc_type" in c else pd.Series(dtype=object)
        odd = typed[typed.map(_not_wbc)]
        typed = typed[~typed.map(_not_wbc)]
        row["typed_not_wbc"] = int(len(odd))
        for t in types:
            row[f"% {t}"] = 100.0 * float((typed == t).sum()) / len(typed) if len(typed) else np.nan
        low_det = int((c["score"] < low_confidence).sum()) if not c.empty else 0
        low_type = (int((c["wbc_type_score"] < low_confidence).sum())
                    if "wbc_type_score" in c and not c.empty else 0)
        row.update({"low_confidence_detections": low_det, "low_confidence_wbc_types": low_type})
        row["flags"] = "; ".join(_flags(row, low_det, low_type))
        rows.append(row)
    return pd.DataFrame(rows)


def _not_wbc(name: Any) -> bool:
    return str(name).strip().lower().replace(" ", "_") in NOT_WBC_TYPES


def _flags(row: dict[str, Any], low_det: int, low_type: int) -> list[str]:
    flags = []
    if row["WBC"] == 0:
        flags.append("no WBC found")
    if row["typed_not_wbc"]:
        flags.append(f"{row['typed_not_wbc']} WBC(s) typed as a non-white cell")
    if low_type:
        flags.append(f"{low_type} WBC type(s) uncertain")
    if low_det and low_det >= max(3, 0.2 * row["cells"]):
        flags.append(f"{low_det} uncertain detections")
    return flags


def _thumbnail(overlay: Path, target: Path) -> Optional[str]:
    img = cv2.imread(str(overlay))
    if img is None:
        return None
    h, w = img.shape[:2]
    scale = min(1.0, THUMB_WIDTH / w)
    img = cv2.resize(img, (max(1, int(w * scale)), max(1, int(h * scale))),
                     interpolation=cv2.INTER_AREA)
    target.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(target), img, [cv2.IMWRITE_JPEG_QUALITY, 85])
    return f"{target.parent.name}/{target.name}"


def _thumbnails(pred_dir: Path, out_dir: Path) -> dict[str, str]:
    index = pred_dir / "overlays" / "index.csv"
    if not index.is_file():
        return {}
    out = {}
    for image, name in pd.read_csv(index).itertuples(index=False):
        rel = _thumbnail(pred_dir / "overlays" / name, out_dir / "thumbs" / f"{Path(name).stem}.jpg")
        if rel:
            out[image] = rel
    return out


def write_smear_report(inputs: Sequence[str | Path], out_dir: str | Path, detector: Any,
                       classifier: Any = None, *, low_confidence: float = LOW_CONFIDENCE,
                       score_threshold: float = 0.5,
                       thumbnails: int = 500, batch_size: Optional[int] = None, workers: int = 1,
                       resume: bool = False, progress: bool = True,
                       model_names: Sequence[str] = ()) -> Path:
    """Predict ``inputs`` (smear files / folders) and write ``report.html`` and
    ``report.csv`` into ``out_dir``; returns the HTML path."""
    out_dir = Path(out_dir)
    check_out_dir(out_dir)
    files, missing = collect_inputs(inputs, exclude=out_dir)
    pred_dir = out_dir / "predictions"
    rep = predict_files(files, detector, pred_dir, classifier=classifier, overlays=thumbnails,
                        progress=progress, skipped=missing, batch_size=batch_size,
                        workers=workers, resume=resume, tta="none",
                        score_threshold=score_threshold,
                        model_name=" + ".join(model_names))
    cells = pd.read_csv(pred_dir / "detections.csv")
    table = smear_table(cells, pd.read_csv(pred_dir / "counts.csv"), low_confidence)
    table.to_csv(out_dir / "report.csv", index=False)
    skipped = pd.read_csv(pred_dir / "skipped.csv")
    page = render_html(table, skipped, _thumbnails(pred_dir, out_dir), model_names,
                       low_confidence, rep.wall_seconds)
    (out_dir / "report.html").write_text(page, encoding="utf-8")
    return out_dir / "report.html"


# ----------------------------------------------------------------------------- HTML
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:24px;color:#222}
h1{margin:0 0 4px} .sub{color:#666;margin-bottom:18px}
.cards{display:flex;gap:12px;flex-wrap:wrap;margin-bottom:18px}
.card{border:1px solid #ddd;border-radius:8px;padding:10px 14px;min-width:120px}
.card b{display:block;font-size:1.5em}
table{border-collapse:collapse;width:100%} th,td{border-bottom:1px solid #eee;padding:6px;
text-align:left;vertical-align:top} th{background:#f6f6f6;position:sticky;top:0}
.bar{display:flex;height:14px;width:220px;border-radius:3px;overflow:hidden;background:#eee}
.flag{color:#b00020;font-weight:600} .ok{color:#2e7d32}
img.thumb{width:240px;border-radius:4px} .legend span{margin-right:10px;white-space:nowrap}
.sw{display:inline-block;width:10px;height:10px;margin-right:4px;border-radius:2px}
"""


def _color(name: str) -> str:
    r, g, b = (int(round(255 * v)) for v in class_color(name)[:3])
    return f"#{r:02x}{g:02x}{b:02x}"


def _bar(percents: dict[str, float]) -> str:
    parts = "".join(f'<div title="{html.escape(t)} {p:.0f} %" style="width:{p:.1f}%;'
                    f'background:{_color(t)}"></div>' for t, p in percents.items() if p > 0)
    return f'<div class="bar">{parts}</div>'


def _differential(row: pd.Series, types: list[str]) -> dict[str, float]:
    return {t: float(row[f"% {t}"]) for t in types if np.isfinite(row[f"% {t}"])}


def _summary_cards(table: pd.DataFrame, skipped: pd.DataFrame, types: list[str]) -> str:
    flagged = int((table["flags"].fillna("") != "").sum()) if len(table) else 0
    cards = [("smears", len(table)), ("not readable", len(skipped)), ("cells", int(table["cells"].sum())),
             ("RBC", int(table["RBC"].sum())), ("WBC", int(table["WBC"].sum())),
             ("platelets", int(table["Platelets"].sum())), ("flagged", flagged)]
    return '<div class="cards">' + "".join(
        f'<div class="card"><b>{v}</b>{html.escape(k)}</div>' for k, v in cards) + "</div>"


def _overall(table: pd.DataFrame, types: list[str]) -> str:
    typed = {t: float((table[f"% {t}"].fillna(0) * table["WBC"]).sum()) for t in types}
    total = sum(typed.values())
    if not total:
        return "<p>No WBC was typed (no classifier, or no WBC found).</p>"
    pct = {t: 100 * v / total for t, v in typed.items()}
    legend = "".join(f'<span><i class="sw" style="background:{_color(t)}"></i>'
                     f"{html.escape(t)} {p:.1f} %</span>" for t, p in pct.items())
    return f"<h2>WBC differential over the folder</h2>{_bar(pct)}<p class='legend'>{legend}</p>"


def render_html(table: pd.DataFrame, skipped: pd.DataFrame, thumbs: dict[str, str],
                model_names: Sequence[str], low_confidence: float, seconds: float) -> str:
    """The report page (self-contained apart from the thumbnails beside it)."""
    types = [c[2:] for c in table.columns if c.startswith("% ")]
    rows = []
    for _, r in table.iterrows():
        thumb = (f'<img class="thumb" alt="overlay" src="{html.escape(thumbs[r["smear"]])}">'
                 if r["smear"] in thumbs else "")
        diff = _differential(r, types)
        text = ", ".join(f"{t} {p:.0f} %" for t, p in diff.items() if p > 0) or "-"
        flags = (f'<span class="flag">{html.escape(r["flags"])}</span>' if r["flags"]
                 else '<span class="ok">ok</span>')
        rows.append(f"<tr><td>{thumb}</td><td>{html.escape(Path(r['smear']).name)}</td>"
                    f"<td>{r['RBC']}</td><td>{r['WBC']}</td><td>{r['Platelets']}</td>"
                    f"<td>{_bar(diff)}<small>{html.escape(text)}</small></td><td>{flags}</td></tr>")
    bad = "".join(f"<li>{html.escape(str(p))}: {html.escape(str(w))}</li>"
                  for p, w in skipped.itertuples(index=False))
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>Blood smear report</title><style>{_CSS}</style></head><body>
<h1>Blood smear report</h1>
<div class="sub">Models: {html.escape(" + ".join(model_names) or "-")}; cells and WBC types
below {low_confidence:.2f} confidence are counted as uncertain; {len(table)} smear(s) in
{seconds:.0f} s. Research use only: not a diagnosis.</div>
{_summary_cards(table, skipped, types)}
{_overall(table, types)}
<h2>Smears</h2>
<table><thead><tr><th>overlay</th><th>smear</th><th>RBC</th><th>WBC</th><th>platelets</th>
<th>WBC differential</th><th>flags</th></tr></thead><tbody>{''.join(rows)}</tbody></table>
{f'<h2>Not readable</h2><ul>{bad}</ul>' if bad else ''}
</body></html>"""
