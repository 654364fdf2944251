"""``bloodlib report``: per-smear counts, WBC differential, flags, HTML and CSV."""

from __future__ import annotations

import pandas as pd
import pytest
from PIL import Image

from bloodlib.inference.smear_report import smear_table, write_smear_report
from stub_predictors import StubClassifier, StubDetector, png_bytes, smear


@pytest.fixture
def smears(tmp_path):
    d = tmp_path / "smears"
    d.mkdir()
    for i in range(3):
        Image.fromarray(smear(i)).save(d / f"s{i}.png")
    (d / "broken.png").write_bytes(png_bytes(smear(5))[:100])
    return d


def test_report_counts_differential_and_flags(smears, tmp_path):
    page = write_smear_report([smears], tmp_path / "rep", StubDetector(), StubClassifier(),
                              progress=False, model_names=["stub-det", "stub-cls"])
    table = pd.read_csv(tmp_path / "rep" / "report.csv")
    assert len(table) == 3
    # the stub finds one WBC, one RBC (the 0.4 one is dropped) and one platelet per smear
    assert table[["RBC", "WBC", "Platelets"]].sum().tolist() == [3, 3, 3]
    pct = table.filter(like="% ")
    assert list(pct.columns) and (pct.fillna(0).sum(axis=1).round(6) == 100).all()
    text = page.read_text()
    assert "Blood smear report" in text and "broken.png" in text and "stub-det" in text
    thumbs = list((tmp_path / "rep" / "thumbs").glob("*.jpg"))
    assert len(thumbs) == 3 and all(f'src="thumbs/{t.name}"' in text for t in thumbs)


def test_flags_mark_what_to_look_at_again():
    cells = pd.DataFrame([
        {"image": "a", "class": "WBC", "score": 0.9, "wbc_type": "neutrophil",
         "wbc_type_score": 0.4},
        {"image": "a", "class": "RBC", "score": 0.9, "wbc_type": None, "wbc_type_score": None}])
    counts = pd.DataFrame({"image": ["a", "b"]})
    t = smear_table(cells, counts, 0.6).set_index("smear")
    assert t.loc["a", "flags"] == "1 WBC type(s) uncertain" and t.loc["a", "% neutrophil"] == 100
    assert t.loc["b", "flags"] == "no WBC found" and t.loc["b", "cells"] == 0


def test_wbcs_typed_as_non_white_cells_are_flagged_and_left_out_of_the_differential():
    cells = pd.DataFrame([
        {"image": "a", "class": "WBC", "score": 0.9, "wbc_type": "neutrophil", "wbc_type_score": 0.9},
        {"image": "a", "class": "WBC", "score": 0.9, "wbc_type": "platelet", "wbc_type_score": 0.9}])
    t = smear_table(cells, pd.DataFrame({"image": ["a"]})).iloc[0]
    assert t["% neutrophil"] == 100 and "% platelet" not in t.index
    assert t["typed_not_wbc"] == 1 and "1 WBC(s) typed as a non-white cell" in t["flags"]
