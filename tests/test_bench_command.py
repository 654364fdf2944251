"""Issue 26: one benchmark command, ``bloodlib bench EXPERIMENT [--model M] [--budget S]
[KEY=VALUE ...]``, publishing its results JSON with the command that made it."""

from __future__ import annotations

import json

import pytest

from bloodlib.cli import main


def test_bench_one_experiment_publishes_its_result_and_the_board(tmp_path, capsys):
    ref = tmp_path / "reference"
    status = main(["bench", "wcsegnet", "--profile", "quick", "--budget", "30", "--threads", "1",
                   "--variant", "(test)", "--out", str(tmp_path / "out"), "--reference-dir",
                   str(ref), "epochs=1", "max_train_batches=2", "max_train_images=8",
                   "max_val_images=4", "max_test_images=4", "synthetic_images=40"])
    assert status == 0
    [path] = ref.glob("*.json")
    assert path.name.endswith("__test.json")  # a variant never overwrites the main run
    result = json.loads(path.read_text())
    assert result["run"]["runner"] == "bloodlib bench" and result["run"]["command"]
    assert result["extra"]["variant"] == "(test)" and result["extra"]["torch_threads"] == 1
    assert result["config"]["time_budget_s"] == 30 and result["config"]["epochs"] == 1
    assert (tmp_path / "board").is_dir()


def test_bench_help_names_every_kind_of_benchmark(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    text = capsys.readouterr().out
    for word in ("EXPERIMENT", "--budget", "--model", "latency", "predict", "benchmarks/README.md"):
        assert word in text


def test_bench_settings_for_notebooks_are_refused():
    with pytest.raises(SystemExit, match="one experiment"):
        main(["bench", "05", "lr=0.1"])


def test_unknown_names_are_messages_not_tracebacks(capsys):
    assert main(["bench", "nope", "--no-publish"]) == 2
    assert "known:" in capsys.readouterr().err
