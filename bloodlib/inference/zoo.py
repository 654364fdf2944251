"""The model zoo: named reference models, how to get them, what they should score.

The manifest (``bloodlib/reference/zoo.json``) lists one reference model per task (and
pretrained variants) with its bench recipe, the metrics its recipe measured (copied from
the results JSON it names), its size, and, once a file is published, its URL and sha256::

    bloodlib zoo list
    bloodlib zoo train pbc8-resnet18-bench_cpu   # runs the recipe, stores the model
    bloodlib zoo pull pbc8-resnet18-bench_cpu    # downloads the published file, hash-checked
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pandas as pd

from ..io import sha256_file
from ..errors import BloodlibError
from .store import _store, load_predictor, model_names, resolve_model

MANIFEST = Path(__file__).resolve().parents[1] / "reference" / "zoo.json"
PROJECT_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class ZooModel:
    """One manifest entry."""

    name: str
    task: str
    description: str
    recipe: dict[str, Any]
    expected: dict[str, Any] = field(default_factory=dict)
    size_mb: Optional[float] = None
    url: Optional[str] = None
    sha256: Optional[str] = None

    @property
    def minutes(self) -> float:
        return float(self.recipe.get("minutes", 0))


def manifest_path() -> Path:
    """``$BLOODLIB_ZOO`` (another manifest, e.g. a lab's own) or the packaged one."""
    return Path(os.environ.get("BLOODLIB_ZOO") or MANIFEST)


def zoo_models(path: Optional[Path] = None) -> list[ZooModel]:
    """The manifest's models."""
    data = json.loads((path or manifest_path()).read_text())
    return [ZooModel(**entry) for entry in data["models"]]


def zoo_model(name: str) -> ZooModel:
    """The entry ``name``; BloodlibError listing the names otherwise."""
    for m in zoo_models():
        if m.name == name:
            return m
    raise BloodlibError(f"No zoo model {name!r}; choose one of "
                        f"{[m.name for m in zoo_models()]} (bloodlib zoo list).")


def zoo_table() -> pd.DataFrame:
    """The manifest as a table, with whether each model is in the store."""
    have = set(model_names())
    return pd.DataFrame([{
        "name": m.name, "task": m.task, "in store": m.name in have,
        "expected": ", ".join(f"{k} {v}" for k, v in m.expected.get("metrics", {}).items()),
        "train (min)": m.minutes, "size (MB)": m.size_mb,
        "published": bool(m.url)} for m in zoo_models()])


def missing_model_hint(task: str) -> str:
    """What to run when the store has no ``task`` model."""
    names = [m for m in zoo_models() if m.task == task]
    if not names:
        return ""
    ref = next((m for m in names if not m.name.startswith("quick-")), names[0])
    quick = next((m for m in names if m.name.startswith("quick-")), None)
    hint = f"Get the reference one: bloodlib zoo pull {ref.name} (or zoo train, ~{ref.minutes:.0f} min)"
    if quick is not None:
        hint += f"; a quick one in about a minute: bloodlib zoo train {quick.name}"
    return hint + "."



def pull(name: str, folder: Optional[Path] = None, timeout_s: float = 60.0) -> Path:
    """Download ``name``'s published file into the store, checking its sha256 and that
    it loads; BloodlibError when nothing is published or it cannot be reached."""
    m = zoo_model(name)
    if not m.url or not m.sha256:
        raise BloodlibError(f"{name} has no published file yet; train it here instead: "
                            f"bloodlib zoo train {name} (about {m.minutes:.0f} min).")
    target = _store(folder) / f"{name}.pt"
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        part = Path(tmp) / f"{name}.pt"
        try:
            with urllib.request.urlopen(m.url, timeout=timeout_s) as r, part.open("wb") as f:
                shutil.copyfileobj(r, f)
        except (urllib.error.URLError, OSError) as exc:
            raise BloodlibError(f"Could not download {name} from {m.url} ({exc}); offline? "
                                f"Train it instead: bloodlib zoo train {name}.") from exc
        digest = sha256_file(part)
        if digest != m.sha256:
            raise BloodlibError(f"{name}: the downloaded file's sha256 is {digest}, the "
                                f"manifest says {m.sha256}; not stored.")
        load_predictor(part, task=m.task)  # refuses anything that is not a usable model
        os.replace(part, target)
    return target


def train(name: str, out_dir: Optional[Path] = None) -> Path:
    """Reproduce ``name`` with its recipe and store it; returns the stored file."""
    m = zoo_model(name)
    if "quick" in m.recipe:
        from .quick_models import train_quick_model
        return train_quick_model(m.recipe["quick"], name=name)
    script = PROJECT_ROOT / m.recipe["script"]
    if not script.is_file():
        raise BloodlibError(f"{name}'s recipe needs {m.recipe['script']} from the course "
                            "checkout; run this from a clone of the repository.")
    out = Path(out_dir or PROJECT_ROOT / "outputs" / "zoo" / name)
    args = [a.format(out=out, name=name) for a in m.recipe.get("args", [])]
    print(f"training {name} (about {m.minutes:.0f} min): {script.name} {' '.join(args)}")
    proc = subprocess.run([sys.executable, str(script), *args], cwd=PROJECT_ROOT)
    if proc.returncode != 0:
        raise BloodlibError(f"The recipe of {name} failed (exit {proc.returncode}); see above.")
    return resolve_model(name)
