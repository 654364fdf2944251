"""Profiles, runtime helpers, notebook session and runner."""

from __future__ import annotations

import json
import math

import nbformat
import numpy as np
import pytest
import torch

from bloodlib import config, runtime, session
from bloodlib.cli import build_parser
from bloodlib.notebooks import discover, execute, publish_reference


def test_profiles_resolve_and_reject_typos():
    knobs = config.get_profile("setup", "quick")
    assert knobs["profile"] == "quick"
    with pytest.raises(ValueError, match="Unknown profile"):
        config.get_profile("setup", "fast")
    with pytest.raises(ValueError, match="Unknown experiment"):
        config.get_profile("nope")
    with pytest.raises(ValueError, match="Unknown setting"):
        config.get_profile("setup", "quick", epochz=3)


def test_register_requires_all_profiles():
    with pytest.raises(ValueError, match="lacks profiles"):
        config.register("x", {"quick": {}})


def test_seed_everything_is_reproducible():
    runtime.seed_everything(3)
    a = torch.rand(3), np.random.rand(2)
    runtime.seed_everything(3)
    b = torch.rand(3), np.random.rand(2)
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_device_and_environment():
    assert runtime.get_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA"):
            runtime.get_device("cuda")
    info = runtime.environment_info(torch.device("cpu"))
    assert info["versions"]["torch"] and info["cpu_count"] >= 1


def test_session_writes_results_and_figures(tmp_path):
    import matplotlib.pyplot as plt

    run = session.start("setup", output_dir=tmp_path, verbose=False)
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    assert run.save_figure(fig, "line").is_file()
    plt.close(fig)
    path = run.finish(paper="none", dataset="synthetic", split="all", metrics={"x": 1.0})
    data = json.loads(path.read_text())
    assert data["metrics"]["x"] == 1.0 and data["profile"] == "quick"
    assert math.isfinite(data["wall_time_s"])


def _tiny_notebook(path, body: str, tag_parameters: bool = True):
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("PROFILE = 'quick'\nOUTPUT_DIR = 'out'")
    if tag_parameters:
        params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


@pytest.mark.notebook
def test_runner_executes_and_reports_failure(tmp_path):
    good = _tiny_notebook(tmp_path / "01_good.ipynb",
                          "import pathlib, json\n"
                          "p = pathlib.Path(OUTPUT_DIR) / 'results'\np.mkdir(parents=True, exist_ok=True)\n"
                          "(p / 'x.json').write_text(json.dumps({'profile': PROFILE}))")
    bad = _tiny_notebook(tmp_path / "02_bad.ipynb", "raise ValueError('boom')")
    ok = execute(good, tmp_path / "out", "quick")
    assert ok.ok, ok.error
    assert json.loads((tmp_path / "out" / "results" / "x.json").read_text())["profile"] == "quick"
    failed = execute(bad, tmp_path / "out", "quick")
    assert not failed.ok and "boom" in failed.error
    ref = publish_reference(tmp_path / "out", tmp_path / "ref", command="python -m bloodlib bench 01")
    assert json.loads(ref[0].read_text())["run"]["command"].endswith("bench 01")


def test_discover_rejects_unknown_names():
    with pytest.raises(ValueError, match="No notebook matches"):
        discover(["99_does_not_exist"])


def test_cli_parses_commands():
    args = build_parser().parse_args(["run", "00", "--profile", "quick"])
    assert args.notebooks == ["00"] and args.profile == "quick"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--profile", "fast"])


def test_parse_overrides_reads_literals_and_keeps_text():
    from bloodlib.config import parse_overrides
    assert parse_overrides(["lr=0.1", "tta=None", "mix=mixup", "sizes=[1, 2]", "x=.5"]) == {
        "lr": 0.1, "tta": None, "mix": "mixup", "sizes": [1, 2], "x": 0.5}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_overrides(["lr"])
