"""The model zoo: manifest, list, pull (file:// URL, hash-checked), train, hints."""

from __future__ import annotations

import hashlib
import json

import pytest

from bloodlib.cli import main
from bloodlib.inference import zoo
from bloodlib.inference.store import load_predictor
from stub_predictors import store_tiny_classifier


def test_packaged_manifest_has_a_reference_model_per_task_with_a_recipe():
    models = zoo.zoo_models()
    for task in ("detect", "classify", "segment"):
        refs = [m for m in models if m.task == task and not m.name.startswith("quick-")]
        assert refs and all(m.recipe and m.expected.get("metrics") for m in refs)
    from pathlib import Path
    root = Path(zoo.PROJECT_ROOT)
    for m in models:
        if "script" in m.recipe:
            assert (root / m.recipe["script"]).is_file()
        source = m.expected.get("source")
        if source:  # expected metrics are the measured ones
            data = json.loads((root / "results" / "reference" / source).read_text())
            for k, v in m.expected["metrics"].items():
                assert data["metrics"][k] == pytest.approx(v, abs=6e-4), (m.name, k)


@pytest.fixture
def published(store, tmp_path, monkeypatch):
    """A manifest whose model 'tiny-cls-pub' is published at a file:// URL."""
    src = store_tiny_classifier(tmp_path / "elsewhere", "tiny-cls")
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    manifest = tmp_path / "zoo.json"
    entry = {"name": "tiny-cls-pub", "task": "classify", "description": "test",
             "recipe": {"quick": "classify", "minutes": 1},
             "expected": {"metrics": {}}, "size_mb": 0.1,
             "url": src.as_uri(), "sha256": digest}
    bad = {**entry, "name": "tiny-bad-hash", "sha256": "0" * 64}
    gone = {**entry, "name": "tiny-gone", "url": (tmp_path / "nope.pt").as_uri()}
    unpublished = {**entry, "name": "tiny-unpublished", "url": None, "sha256": None}
    manifest.write_text(json.dumps({"models": [entry, bad, gone, unpublished]}))
    monkeypatch.setenv("BLOODLIB_ZOO", str(manifest))
    return store


def test_pull_downloads_checks_the_hash_and_stores(published, capsys):
    assert main(["zoo", "pull", "tiny-cls-pub"]) == 0
    assert load_predictor("tiny-cls-pub").task == "classify"
    assert main(["zoo", "list"]) == 0
    out = capsys.readouterr().out
    assert "tiny-cls-pub" in out and "True" in out


def test_pull_refuses_a_wrong_hash_and_says_what_to_do_offline(published, capsys):
    assert main(["zoo", "pull", "tiny-bad-hash"]) == 2
    assert "sha256" in capsys.readouterr().err
    assert not (published / "tiny-bad-hash.pt").exists()
    assert main(["zoo", "pull", "tiny-gone"]) == 2
    assert "bloodlib zoo train tiny-gone" in capsys.readouterr().err
    assert main(["zoo", "pull", "tiny-unpublished"]) == 2
    assert "no published file" in capsys.readouterr().err
    assert main(["zoo", "pull", "nothing-like-it"]) == 2


def test_train_runs_the_quick_recipe(published, monkeypatch):
    calls = []

    def fake_quick(task, name=None, **kw):
        calls.append((task, name))
        return store_tiny_classifier(published, name)
    monkeypatch.setattr("bloodlib.inference.quick_models.train_quick_model", fake_quick)
    path = zoo.train("tiny-unpublished")
    assert calls == [("classify", "tiny-unpublished")] and path.is_file()


def test_empty_store_names_the_zoo_model(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BLOODLIB_MODELS", str(tmp_path / "empty"))
    assert main(["predict", str(tmp_path), "--task", "detect", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "bloodlib zoo pull faster_rcnn-bccd-bench_cpu" in err and "quick-detect" in err
