"""The model store: trained models with their metadata, in one folder.

The folder is ``$BLOODLIB_MODELS`` or ``models/`` in the checkout (git-ignored). A model
is one checkpoint ``<name>.pt`` written by :func:`bloodlib.engine.checkpoint.save_checkpoint`
whose ``meta`` follows the contract of ``docs/ARCHITECTURE.md``: ``task``,
``architecture``, ``architecture_kwargs``, ``classes``, ``input_size``,
``preprocessing``, ``training_data``, ``metrics``, ``created``. Everything is read with
``torch.load(..., weights_only=True)``: no pickled Python objects are ever executed.

```python
save_model(model, "wcsegnet-jiangxi", meta)
list_models()                       # DataFrame: name, task, classes, input size, ...
predictor = load_predictor("wcsegnet-jiangxi")
predictor.predict(image)
```
"""

from __future__ import annotations

import importlib
import os
import pickle
import re
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Union

import pandas as pd
import torch

from ..errors import BloodlibError, ModelFormatError, ModelNotFoundError
from ..registry import Registry
from .common import DEFAULT_PREPROCESSING, TASKS, segmentation_meta_from_legacy
from ..engine.checkpoint import save_checkpoint

PathLike = Union[str, os.PathLike]
PROJECT_ROOT = Path(__file__).resolve().parents[2]
SUFFIX = ".pt"
REQUIRED_META = ("task", "architecture", "classes")
#: task -> (module, class) of its predictor; imported only when a model of the task loads.
#: Runtimes other than PyTorch: name -> ``load(checkpoint_path, device) -> predictor``;
#: filled by the modules that provide them (:mod:`.onnx_export`: ``"onnxruntime"``).
RUNTIMES: Registry[Callable[[Path, Any], Any]] = Registry("prediction runtime")

PREDICTORS: dict[str, tuple[str, str]] = {
    "detect": ("bloodlib.inference.detection", "DetectorPredictor"),
    "classify": ("bloodlib.inference.classification", "ClassifierPredictor"),
    "segment": ("bloodlib.inference.segmentation", "SegmenterPredictor"),
}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def models_dir() -> Path:
    """The store folder: ``$BLOODLIB_MODELS`` or ``<checkout>/models``."""
    value = os.environ.get("BLOODLIB_MODELS")
    return Path(value).expanduser().resolve() if value else PROJECT_ROOT / "models"


def _store(folder: Optional[PathLike]) -> Path:
    return Path(folder).expanduser().resolve() if folder is not None else models_dir()


def _check_classes(classes: Any) -> list[str]:
    """The class names as a list of distinct, non-empty strings, or ModelFormatError."""
    if isinstance(classes, (str, bytes)) or not isinstance(classes, (list, tuple)):
        raise ModelFormatError(f"Model metadata 'classes' must be a list of class names, got "
                               f"{type(classes).__name__} {classes!r:.60} (a single string would "
                               "be read letter by letter).")
    names = [str(c) for c in classes]
    if not names or any(not n.strip() for n in names) or len(set(names)) != len(names):
        raise ModelFormatError(f"Model metadata 'classes' must be distinct, non-empty names; "
                               f"got {names!r:.120}.")
    return names


def _check_types(meta: Mapping[str, Any]) -> None:
    """ModelFormatError naming the first metadata field of the wrong type."""
    expected = {"task": (str,), "architecture": (str,), "architecture_kwargs": (dict,),
                "preprocessing": (dict, type(None)), "training_data": (dict, str, type(None)),
                "metrics": (dict, type(None)), "created": (str,)}
    for key, types in expected.items():
        if key in meta and not isinstance(meta[key], types):
            raise ModelFormatError(f"Model metadata {key!r} must be "
                                   f"{' or '.join(t.__name__ for t in types)}, got "
                                   f"{type(meta[key]).__name__} {meta[key]!r:.60}.")
    size = meta.get("input_size")
    ok = size is None or (isinstance(size, int) and size > 0) or (
        isinstance(size, (list, tuple)) and len(size) == 2
        and all(isinstance(v, int) and v > 0 for v in size))
    if not ok:
        raise ModelFormatError(f"Model metadata 'input_size' must be a positive int or "
                               f"[height, width], got {size!r:.60}.")


def normalize_meta(meta: Any) -> dict[str, Any]:
    """``meta`` checked against the contract (types of every known field) with its defaults
    filled in; ModelFormatError when it is not a mapping, a required key (task,
    architecture, classes) is missing, the task is unknown or a field has the wrong type."""
    if not isinstance(meta, Mapping):
        raise ModelFormatError(f"Model metadata must be a mapping, got {type(meta).__name__}.")
    meta = dict(meta)
    missing = [k for k in REQUIRED_META if k not in meta or meta[k] in (None, "", [], ())]
    if missing:
        raise ModelFormatError(f"Model metadata lacks {missing}; a saved model needs at least "
                               f"{list(REQUIRED_META)} (see docs/ARCHITECTURE.md).")
    _check_types(meta)
    if meta["task"] not in TASKS:
        raise ModelFormatError(f"Unknown task {meta['task']!r}; valid tasks: {list(TASKS)}.")
    meta["classes"] = _check_classes(meta["classes"])
    meta.setdefault("architecture_kwargs", {})
    meta.setdefault("input_size", None)
    meta["preprocessing"] = dict(DEFAULT_PREPROCESSING, **(meta.get("preprocessing") or {}))
    meta.setdefault("training_data", {})
    meta["metrics"] = meta.get("metrics") or {}
    meta.setdefault("created", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    return meta


def check_head(path: PathLike, meta: Mapping[str, Any], outputs: int, what: str) -> None:
    """ModelFormatError when the model's head has ``outputs`` classes but the metadata
    names another number (the output would be relabelled silently)."""
    if outputs != len(meta["classes"]):
        raise ModelFormatError(f"{path}: the {what} has {outputs} outputs but the metadata "
                               f"names {len(meta['classes'])} classes {meta['classes']}; fix "
                               "'classes' so it lists one name per output, in order.")


def save_model(model: torch.nn.Module, name: str, meta: Mapping[str, Any], *,
               folder: Optional[PathLike] = None, overwrite: bool = True,
               history: Optional[list[dict]] = None) -> Path:
    """Write ``model`` with its metadata as ``<store>/<name>.pt``; returns the path."""
    if not _NAME.match(name or ""):
        raise BloodlibError(f"Model name {name!r} is not valid; use letters, digits, '.', '_' "
                            "and '-' (e.g. 'wcsegnet-jiangxi').")
    path = _store(folder) / f"{name}{SUFFIX}"
    if path.exists() and not overwrite:
        raise BloodlibError(f"A model named {name!r} exists at {path}; pick another name or "
                            "pass overwrite=True.")
    return save_checkpoint(path, model, normalize_meta(meta), history=history)


_MAGIC = (b"PK\x03\x04", b"\x80")  # torch's zip format; the legacy pickle format


def _check_magic(path: Path) -> None:
    """ModelFormatError for an empty file or one that is neither of torch's formats."""
    with open(path, "rb") as fh:
        head = fh.read(4)
    if not head:
        raise ModelFormatError(f"{path} is empty (0 bytes), not a model checkpoint; the save "
                               "was probably interrupted. Remove it and save the model again.")
    if not head.startswith(_MAGIC):
        raise ModelFormatError(f"{path} is not a model checkpoint (not a PyTorch file: it "
                               f"starts with {head!r}). Remove it, or point at the right file.")


def read_checkpoint(path: PathLike, mmap: bool = False) -> dict[str, Any]:
    """A checkpoint dict read with ``weights_only=True``; ModelFormatError if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError(f"No model file at {path}.")
    _check_magic(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelFormatError(f"{path} cannot be loaded safely (weights_only=True): {first}. "
                               "Only checkpoints written by bloodlib (state dicts and JSON-able "
                               "metadata) are accepted; re-save the model with "
                               "bloodlib.inference.save_model.") from None
    if not isinstance(ckpt, dict) or "model_state" not in ckpt:
        raise ModelFormatError(f"{path} is not a bloodlib checkpoint (no 'model_state').")
    return ckpt


def _contract_meta(ckpt: Mapping[str, Any]) -> dict[str, Any]:
    raw = ckpt.get("meta") or {}
    if not isinstance(raw, Mapping):
        raise ModelFormatError(f"The checkpoint's 'meta' must be a mapping, got "
                               f"{type(raw).__name__}.")
    meta = dict(raw)
    if "task" not in meta and "model" in meta and "knobs" in meta:  # wbc_segmentation.train_model
        try:
            meta = segmentation_meta_from_legacy(meta)
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise ModelFormatError(f"Legacy segmentation metadata is malformed: {exc}") from None
    return meta


def read_meta(path: PathLike) -> dict[str, Any]:
    """The contract metadata of a checkpoint (legacy WCSegNet checkpoints are converted)."""
    meta = _contract_meta(read_checkpoint(path, mmap=True))
    return normalize_meta(meta) if "task" in meta else meta


def read_task_checkpoint(path: PathLike, task: str, what: str
                         ) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(checkpoint, contract metadata)`` of a ``task`` model; ModelFormatError naming
    ``what`` (e.g. "a classifier") when the checkpoint holds another task's model."""
    ckpt = read_checkpoint(path)
    meta = normalize_meta(_contract_meta(ckpt))
    if meta["task"] != task:
        raise ModelFormatError(f"{path} is a {meta['task']!r} model, not {what}.")
    return ckpt, meta


def rebuild_model(path: PathLike, build: Callable[[], torch.nn.Module],
                  state: Mapping[str, Any], description: str) -> torch.nn.Module:
    """``build()`` a model and load ``state`` into it; ModelFormatError ("cannot rebuild
    ``description``") when the architecture or the weights do not fit."""
    try:
        model = build()
        model.load_state_dict(state)
    except (ValueError, RuntimeError, TypeError) as exc:
        hint = (" Does the metadata's 'classes' list one name per output of the head?"
                if "size mismatch" in str(exc) else "")
        raise ModelFormatError(f"{path}: cannot rebuild {description}: "
                               f"{str(exc).splitlines()[0]}{hint}") from None
    return model


def model_names(folder: Optional[PathLike] = None) -> list[str]:
    """Names of the models in the store (sorted)."""
    root = _store(folder)
    return sorted(p.stem for p in root.glob(f"*{SUFFIX}")) if root.is_dir() else []


def _looks_like_path(value: str) -> bool:
    return value.endswith(SUFFIX) or "/" in value or os.sep in value or value.startswith("~")


def resolve_model(name_or_path: PathLike, folder: Optional[PathLike] = None) -> Path:
    """The checkpoint file of a store name or an explicit path; ModelNotFoundError listing
    the names. A name resolves inside the store only (letters, digits, '.', '_', '-'); a
    file elsewhere must be given as a path (with a '/' or ending in .pt)."""
    text = str(name_or_path)
    root = _store(folder)
    if _NAME.match(text) and not text.endswith(SUFFIX):
        for c in (root / f"{text}{SUFFIX}",):
            if c.is_file():
                return c.resolve()
    elif _looks_like_path(text):
        raw = Path(text).expanduser()
        if raw.is_file():
            return raw.resolve()
        raise ModelNotFoundError(f"No model file at {raw}.")
    else:
        raise ModelNotFoundError(f"{text!r} is neither a model name (letters, digits, '.', '_', "
                                 "'-') nor a path to a .pt file.")
    names = model_names(folder)
    hint = (f"models in {root}: {', '.join(names)}" if names else
            f"the store {root} holds no model yet; train one (e.g. "
            "bloodlib.inference.train_quick_model('segment')) or set BLOODLIB_MODELS")
    raise ModelNotFoundError(f"No model {text!r} in the store; {hint}. A file elsewhere must "
                             "be given as a path (e.g. ./my-model.pt).")


def _fmt_size(size: Any) -> str:
    if size is None:
        return "-"
    if isinstance(size, (list, tuple)):
        return "x".join(str(int(s)) for s in size)
    return f"{int(size)}x{int(size)}"


def _fmt_data(data: Any) -> str:
    if isinstance(data, Mapping):
        return " / ".join(str(data[k]) for k in ("dataset", "split", "source") if data.get(k))
    return str(data or "-")


def _fmt_metrics(metrics: Mapping[str, Any], n: int = 4) -> str:
    items = [(k, v) for k, v in (metrics or {}).items() if isinstance(v, (int, float))]
    return ", ".join(f"{k}={v:.3g}" for k, v in items[:n]) or "-"


def list_models(task: Optional[str] = None, folder: Optional[PathLike] = None) -> pd.DataFrame:
    """One row per stored model: name, task, architecture, classes, input size, training
    data, metrics, created, path. Unusable files are left out with a warning; see
    :func:`unusable_models`."""
    cols = ["name", "task", "architecture", "classes", "input_size", "training_data",
            "metrics", "created", "path"]
    rows = []
    for name, path, meta in _readable_models(folder, warn=True):
        if task and meta["task"] != task:
            continue
        rows.append({"name": name, "task": meta["task"], "architecture": meta["architecture"],
                     "classes": ", ".join(meta["classes"]),
                     "input_size": _fmt_size(meta.get("input_size")),
                     "training_data": _fmt_data(meta.get("training_data")),
                     "metrics": _fmt_metrics(meta.get("metrics") or {}),
                     "created": str(meta.get("created", ""))[:19], "path": str(path)})
    df = pd.DataFrame(rows, columns=cols)
    return df.sort_values(["task", "created"], ascending=[True, False], ignore_index=True)


def _readable_models(folder: Optional[PathLike], warn: bool = False
                     ) -> Iterator[tuple[str, Path, dict[str, Any]]]:
    """(name, path, contract metadata) of every usable model in the store."""
    for name in model_names(folder):
        path = _store(folder) / f"{name}{SUFFIX}"
        try:
            meta = read_meta(path)
            if "task" not in meta:
                raise ModelFormatError("no 'task' in its metadata")
        except BloodlibError as exc:
            if warn:
                warnings.warn(f"Skipping {path}: {exc}", stacklevel=3)
            continue
        yield name, path, meta


def unusable_models(folder: Optional[PathLike] = None) -> list[tuple[str, str]]:
    """(name, reason) of every file in the store that cannot be used as a model
    (malformed metadata, not a checkpoint); the other models are not affected."""
    out = []
    for name in model_names(folder):
        try:
            meta = read_meta(_store(folder) / f"{name}{SUFFIX}")
            if "task" not in meta:
                raise ModelFormatError("no 'task' in its metadata; not saved as a model")
        except BloodlibError as exc:
            out.append((name, str(exc).splitlines()[0]))
    return out


def default_model(task: str, folder: Optional[PathLike] = None) -> Optional[str]:
    """Name of the newest stored model for ``task``, or None."""
    df = list_models(task, folder)
    return None if df.empty else str(df.iloc[0]["name"])


def predictor_class(task: str) -> type:
    """The predictor class of ``task``, imported now; BloodlibError when its module is not
    part of this version."""
    if task not in PREDICTORS:
        raise ModelFormatError(f"Unknown task {task!r}; valid tasks: {list(PREDICTORS)}.")
    module_name, cls_name = PREDICTORS[task]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        raise BloodlibError(f"Models of task {task!r} need {module_name} ({cls_name}), which "
                            "is not part of this version of bloodlib; update bloodlib or "
                            "choose a model of another task.") from None
    if not hasattr(module, cls_name):
        raise BloodlibError(f"{module_name} has no {cls_name}; update bloodlib.")
    return getattr(module, cls_name)


def load_predictor(name_or_path: PathLike, device: Any = "cpu", task: Optional[str] = None,
                   folder: Optional[PathLike] = None, runtime: str = "torch") -> Any:
    """A ready predictor (``predict(image)``) for a stored model name or a checkpoint path;
    ``task`` (optional) is checked against the model's. ``runtime="onnxruntime"`` runs
    the network from its ONNX export (made beside the checkpoint on first use)."""
    path = resolve_model(name_or_path, folder)
    meta = read_meta(path)
    if "task" not in meta:
        raise ModelFormatError(f"{path} has no 'task' in its metadata; it was not saved as a "
                               "model (see bloodlib.inference.save_model).")
    if task is not None and meta["task"] != task:
        raise BloodlibError(f"Model {str(name_or_path)!r} is a {meta['task']!r} model, not "
                            f"{task!r}; pick a {task!r} model (list_models(task={task!r})).")
    if runtime != "torch":
        if runtime not in RUNTIMES:
            raise BloodlibError(f"Unknown runtime {runtime!r}; use 'torch' or one of "
                                f"{RUNTIMES.names()}.")
        return RUNTIMES.get(runtime)(path, device)
    return predictor_class(meta["task"]).from_checkpoint(path, device=device)
