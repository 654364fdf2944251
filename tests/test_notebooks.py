"""Every course notebook: committed clean, one `parameters` cell, and runs in the quick profile.

Each notebook declares in its metadata ``bloodlib.experiment`` and
``bloodlib.expected_figures``; the run must write those figures (except, without the real
datasets, those listed in ``bloodlib.figures_needing_data``) and at least one results
JSON whose metrics are all finite. With the real datasets, ``bloodlib.quick_floors``
(``[{"dataset", "model", "metric", "min"}, ...]``, set from measured quick runs) says how
much each quick model must at least have learned, so a quick run can never again teach
with a model that scores zero.
"""

from __future__ import annotations

import ast
import importlib
import json
import math

import nbformat
import pytest

from bloodlib.notebooks import NOTEBOOK_DIR, discover, execute
from conftest import real_data_root

NOTEBOOKS = discover()
REQUIRED_PARAMETERS = ("PROFILE", "DEVICE", "DATA_DIR", "SEED", "OUTPUT_DIR")
QUICK_LIMIT_S = 300


def _read(path):
    return nbformat.read(path, as_version=4)


def test_course_has_notebooks():
    assert NOTEBOOKS, f"no numbered notebooks in {NOTEBOOK_DIR}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs(path):
    nb = _read(path)
    dirty = [i for i, c in enumerate(nb.cells)
             if c.cell_type == "code" and (c.get("outputs") or c.get("execution_count"))]
    assert not dirty, f"{path.name}: cells {dirty} have outputs; clear them before committing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_one_parameters_cell(path):
    nb = _read(path)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: expected one cell tagged 'parameters', got {len(tagged)}"
    for name in REQUIRED_PARAMETERS:
        assert f"{name} =" in tagged[0].source, f"{path.name}: parameters cell lacks {name}"
    meta = nb.metadata.get("bloodlib", {})
    assert meta.get("experiment") and isinstance(meta.get("expected_figures"), list)


def _code(cell) -> str:
    """A code cell's Python, without IPython magics and shell lines."""
    return "\n".join(line for line in cell.source.splitlines()
                     if not line.lstrip().startswith(("%", "!")))


def _missing_names(tree: ast.AST) -> list[str]:
    """Names a cell takes from bloodlib (imports and ``module.attr``) that do not exist."""
    missing, aliases = [], {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("bloodlib"):
            module = importlib.import_module(node.module)
            for alias in node.names:
                target = getattr(module, alias.name, None)
                if target is None:
                    try:
                        target = importlib.import_module(f"{node.module}.{alias.name}")
                    except ImportError:
                        missing.append(f"{node.module}.{alias.name}")
                        continue
                if hasattr(target, "__path__") or type(target).__name__ == "module":
                    aliases[alias.asname or alias.name] = target
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("bloodlib") and alias.asname:
                    aliases[alias.asname] = importlib.import_module(alias.name)
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in aliases and not hasattr(aliases[node.value.id], node.attr)):
            missing.append(f"{aliases[node.value.id].__name__}.{node.attr}")
    return missing


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_bloodlib_name_a_notebook_uses_exists(path):
    """A moved or renamed function breaks a notebook here in a second, not after its run."""
    cells = [c for c in _read(path).cells if c.cell_type == "code"]
    tree = ast.parse("\n".join(_code(c) for c in cells))
    missing = _missing_names(tree)
    assert not missing, f"{path.name} uses names bloodlib no longer has: {missing}"


@pytest.mark.notebook
@pytest.mark.timeout(QUICK_LIMIT_S + 120)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_runs_in_quick_profile(path, tmp_path):
    meta = _read(path).metadata["bloodlib"]
    run = execute(path, tmp_path, "quick")
    assert run.ok, run.error
    assert run.wall_time_s < QUICK_LIMIT_S, f"{path.name} took {run.wall_time_s:.0f} s in quick profile"
    results = sorted((tmp_path / "results").glob("*.json"))
    assert results, f"{path.name} wrote no results JSON"
    for res in results:
        data = json.loads(res.read_text())
        assert data["profile"] == "quick" and data["metrics"]
        bad = {k: v for k, v in data["metrics"].items() if not math.isfinite(v)}
        assert not bad, f"{res.name}: non-finite metrics {bad}"
    if real_data_root() is not None:
        _check_floors(path.name, meta.get("quick_floors", []), results)
    fig_dir = tmp_path / "figures" / meta["experiment"]
    # figures drawn from a real dataset only (a check the notebook skips without it)
    optional = set(meta.get("figures_needing_data", [])) if real_data_root() is None else set()
    missing = [f for f in meta["expected_figures"]
               if f not in optional and not (fig_dir / f"{f}.png").is_file()]
    assert not missing, f"{path.name} did not write figures {missing}"


def _check_floors(name, floors, results):
    """Every floor is met by the results JSON of its dataset and model."""
    rows = [json.loads(r.read_text()) for r in results]
    for floor in floors:
        hits = [r for r in rows if r["dataset"] == floor["dataset"]
                and r.get("model") == floor["model"] and floor["metric"] in r["metrics"]]
        assert hits, f"{name}: no quick result for {floor}"
        best = max(r["metrics"][floor["metric"]] for r in hits)
        assert best >= floor["min"], (f"{name}: quick {floor['model']} on {floor['dataset']} "
                                      f"reached {floor['metric']} {best:.3f} < floor {floor['min']}")
