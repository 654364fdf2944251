"""Issue 26: no import circle among bloodlib's modules (imports inside functions count),
and the low floors import nothing of bloodlib above them."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "bloodlib"


def _module_names() -> dict[str, Path]:
    mods = {}
    for f in PACKAGE.rglob("*.py"):
        parts = f.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        mods[name] = f
    return mods


def _targets(mods: dict[str, Path], current: str, node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = current.split(".")
    if mods[current].name != "__init__.py":
        base = base[:-1]
    base = base[:len(base) - (node.level - 1)] if node.level else []
    module = ".".join(base + ([node.module] if node.module else []))
    return [f"{module}.{a.name}" if f"{module}.{a.name}" in mods else module for a in node.names]


def import_graph() -> dict[str, set[str]]:
    """Module -> the bloodlib modules it imports (anywhere in the file)."""
    mods = _module_names()
    graph = {}
    for name, path in mods.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges |= {t for t in _targets(mods, name, node) if t in mods and t != name}
        graph[name] = edges
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_circles():
    assert _cycles(import_graph()) == []


def test_the_floors_import_nothing_above_them():
    graph = import_graph()
    assert graph["bloodlib.paths"] == set() and graph["bloodlib.errors"] == set()
    assert graph["bloodlib.registry"] <= {"bloodlib.errors"}
    assert not any(t.startswith("bloodlib.experiments") or t == "bloodlib.notebooks"
                   for m in ("bloodlib.results", "bloodlib.board") for t in graph[m])
    above_inference = ("bloodlib.experiments", "bloodlib.notebooks", "bloodlib.session",
                       "bloodlib.cli", "bloodlib.predict_cli", "bloodlib.training_cli",
                       "bloodlib.widgets", "bloodlib.gpu_check")
    for m in (m for m in graph if m.startswith("bloodlib.inference")):  # experiments plug in
        assert not any(t.startswith(above_inference) for t in graph[m]), (m, graph[m])
    engine = {m for m in graph if m.startswith("bloodlib.engine")}
    for m in engine:  # the training engine knows no experiment, notebook or CLI
        assert not any(t.startswith(("bloodlib.experiments", "bloodlib.notebooks",
                                     "bloodlib.cli", "bloodlib.session")) for t in graph[m]), m


#: bloodlib's layers, lowest first: a module may import its own layer and those below it,
#: never one above (high layers fill the low layers' registries instead)
LAYERS = (
    ("paths", "errors", "registry", "runtime"),
    ("config", "io", "transforms", "classical", "viz"),
    ("data", "metrics", "results", "losses"),
    ("models", "autolabel", "explain"),
    ("engine", "yolo"),
    ("session", "inference"),
    ("experiments",),
    ("notebooks", "board", "widgets", "gpu_check", "predict_cli", "training_cli", "cli",
     "__main__", "bloodlib"),
)


def _layer(module: str) -> int:
    part = module.split(".")[1] if "." in module else module
    for level, names in enumerate(LAYERS):
        if part in names:
            return level
    raise AssertionError(f"{module} is in no layer; add {part!r} to LAYERS")


def test_no_module_imports_a_layer_above_its_own():
    upward = [f"{m} -> {t}" for m, targets in import_graph().items() for t in targets
              if _layer(t) > _layer(m)]
    assert upward == []


def test_a_circle_is_found():
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]


def test_shared_helpers_are_written_once():
    """Issue 26: helpers the experiments had copied now exist once, re-exported by name."""
    from bloodlib.data.splits import subset_coco
    from bloodlib.experiments import blood_cancer, mcnet_detection, wbc_classification
    from bloodlib.experiments import wbc_segmentation
    from bloodlib.results import finite_metrics
    assert mcnet_detection.subset_coco is blood_cancer.subset_coco is subset_coco
    assert wbc_classification.finite is wbc_segmentation.finite is blood_cancer.finite \
        is finite_metrics
    assert finite_metrics({"a": 1, "b": float("nan"), "c": None, "d": "x"}) == {"a": 1.0}


#: modules that import lazily on purpose: ``bloodlib --help`` must answer without torch
LAZY_MODULES = {"cli.py", "predict_cli.py", "training_cli.py", "__main__.py"}


def test_imports_sit_at_module_top():
    """A function may import a bloodlib module only inside a branch or with a comment that
    says why (the CLI modules excepted)."""
    unexplained = []
    for path in PACKAGE.rglob("*.py"):
        if path.name in LAZY_MODULES:
            continue
        lines = path.read_text().splitlines()
        for fn in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for st in fn.body:
                if isinstance(st, ast.ImportFrom) and st.level > 0 \
                        and "#" not in "".join(lines[st.lineno - 1:st.end_lineno]):
                    unexplained.append(f"{path.relative_to(PACKAGE)}:{st.lineno}")
    assert unexplained == []
