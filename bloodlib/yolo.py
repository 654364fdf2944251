"""YOLOv9 through ultralytics, fully offline, scored by our own COCO evaluator.

* :func:`configure_offline` (run on import of this module, before ultralytics is
  imported) sets ``YOLO_OFFLINE=True`` and ``YOLO_CONFIG_DIR`` to a folder of ours,
  turns off ultralytics' settings sync and integrations, points its weights, datasets
  and runs folders there, and puts a local font (matplotlib's DejaVu Sans) under the
  names ultralytics would otherwise download (``Arial.ttf``). Import ultralytics only
  through this module.
* :func:`build_yolo` builds ``yolov9t``/``yolov9s`` from ultralytics' model yaml, or
  loads ``<name>.pt`` when that file exists locally (never downloaded).
* :func:`export_yolo_dataset` writes the same COCO splits in YOLO format
  (:func:`bloodlib.data.convert.coco_to_yolo`); :func:`train_yolo` trains on it with
  ``plots=False`` and AMP off on the CPU (no AMP-check download).
* :func:`predict_coco_yolo` turns predictions into COCO result dicts and
  :func:`evaluate_yolo` scores them with :func:`bloodlib.metrics.coco_evaluate`, so
  YOLO is measured exactly as the torchvision detectors are.
* :func:`save_yolo_checkpoint` / :func:`load_yolo_checkpoint` keep the course's
  checkpoint contract (``weights_only=True`` loading, ``meta``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

from .errors import WeightsNotFoundError
from .data.convert import coco_to_yolo
from .data.records import category_names
from .metrics.detection import coco_evaluate
from .engine.checkpoint import load_checkpoint, save_checkpoint
import pandas as pd
import torch

__all__ = ["YOLO_MODELS", "configure_offline", "yolo_workdir", "find_local_weights",
           "build_yolo", "export_yolo_dataset", "YoloTraining", "train_yolo",
           "predict_coco_yolo", "evaluate_yolo", "save_yolo_checkpoint", "load_yolo_checkpoint"]

YOLO_MODELS = ("yolov9t", "yolov9s", "yolov9m", "yolov9c", "yolov9e")
_INTEGRATIONS = ("sync", "clearml", "comet", "dvc", "mlflow", "raytune", "tensorboard", "wandb",
                 "hub", "neptune", "vscode_msg", "openvino_msg")
_state: dict[str, Any] = {"workdir": None}


def yolo_workdir() -> Path:
    """The folder ultralytics uses here: ``$BLOODLIB_YOLO_DIR``, else a per-user folder in
    the system temp directory."""
    env = os.environ.get("BLOODLIB_YOLO_DIR")
    if env:
        return Path(env).expanduser().resolve()
    user = os.environ.get("USER") or str(os.getuid() if hasattr(os, "getuid") else "user")
    return Path(tempfile.gettempdir()) / f"bloodlib-ultralytics-{user}"


def _install_fonts(config_dir: Path) -> None:
    """Copy matplotlib's DejaVu Sans to the font names ultralytics checks (so it never
    tries to download Arial)."""
    from matplotlib import font_manager
    src = Path(font_manager.findfont("DejaVu Sans", fallback_to_default=True))
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        dst = config_dir / name
        if not dst.exists() and src.is_file():
            shutil.copyfile(src, dst)


def configure_offline(workdir: Optional[Union[str, os.PathLike]] = None) -> Path:
    """Make ultralytics work offline inside ``workdir`` (default :func:`yolo_workdir`).

    Sets ``YOLO_OFFLINE=True`` and ``YOLO_CONFIG_DIR`` (read when ultralytics is first
    imported); afterwards updates its settings (weights/datasets/runs dirs inside
    ``workdir``, sync and integrations off) and forces its ``ONLINE`` flags to False,
    so that even an earlier import cannot reach the network. Returns ``workdir``.
    """
    work = Path(workdir).expanduser().resolve() if workdir else yolo_workdir()
    config = work / "config"
    config.mkdir(parents=True, exist_ok=True)
    os.environ["YOLO_OFFLINE"] = "True"
    os.environ.setdefault("YOLO_CONFIG_DIR", str(config))
    os.environ.setdefault("YOLO_VERBOSE", "False")
    import ultralytics.utils as uu  # noqa: E402 (after the environment is set)
    from ultralytics.utils import checks, events
    for mod in (uu, checks, events):
        if hasattr(mod, "ONLINE"):
            mod.ONLINE = False
    _patch_amp_check()
    _install_fonts(Path(uu.USER_CONFIG_DIR))
    _install_fonts(config)
    wanted = {"weights_dir": str(work / "weights"), "datasets_dir": str(work / "datasets"),
              "runs_dir": str(work / "runs"), **{k: False for k in _INTEGRATIONS}}
    current = uu.SETTINGS
    updates = {k: v for k, v in wanted.items() if k in current and current.get(k) != v}
    if updates:
        current.update(updates)
    for d in ("weights", "datasets", "runs"):
        (work / d).mkdir(exist_ok=True)
    _state["workdir"] = work
    return work


def _patch_amp_check() -> None:
    """ultralytics checks AMP on CUDA by running ``yolo26n.pt``, downloading it when
    missing; without that file the check is skipped (AMP stays on) instead."""
    from ultralytics.engine import trainer
    from ultralytics.utils import checks
    original = getattr(checks.check_amp, "__wrapped_original__", checks.check_amp)

    def check_amp(model: Any, *args: Any, **kwargs: Any) -> bool:
        from ultralytics.utils import WEIGHTS_DIR
        if (Path(WEIGHTS_DIR) / "yolo26n.pt").is_file():
            return original(model, *args, **kwargs)
        return True

    check_amp.__wrapped_original__ = original
    trainer.check_amp = check_amp


def _ensure() -> Path:
    return _state["workdir"] or configure_offline()


def _yaml_name(name: str) -> str:
    base = Path(name).stem if name.endswith((".yaml", ".pt")) else name
    if base not in YOLO_MODELS:
        raise ValueError(f"Unknown YOLO model {name!r}; choose one of {list(YOLO_MODELS)}.")
    return base


def find_local_weights(name: str = "yolov9t",
                       search: Sequence[Union[str, os.PathLike]] = ()) -> Optional[Path]:
    """``<name>.pt`` in ``search`` folders, the ultralytics weights folder or the current
    directory, if it is there; None otherwise (nothing is downloaded)."""
    work = _ensure()
    fname = f"{_yaml_name(name)}.pt"
    for folder in (*map(Path, search), work / "weights", Path.cwd()):
        p = Path(folder) / fname
        if p.is_file():
            return p.resolve()
    return None


def build_yolo(name: str = "yolov9t", pretrained: Union[bool, str] = "auto",
               weights: Optional[Union[str, os.PathLike]] = None):
    """An ``ultralytics.YOLO`` for ``name``: from ``weights`` (a local .pt) or, with
    ``pretrained`` True/"auto", ``<name>.pt`` found by :func:`find_local_weights`; else
    (or "auto" without a file) built from ultralytics' ``<name>.yaml`` with random weights.
    ``pretrained=True`` without a local file raises :class:`WeightsNotFoundError`.
    The returned model has ``bloodlib_pretrained`` (the .pt used, or None)."""
    _ensure()
    from ultralytics import YOLO
    path = Path(weights) if weights is not None else (
        find_local_weights(name) if pretrained not in (False, None) else None)
    if weights is not None and not path.is_file():
        raise WeightsNotFoundError(f"YOLO weights {path} not found.")
    if path is None and pretrained is True:
        raise WeightsNotFoundError(
            f"No {_yaml_name(name)}.pt found locally (looked in {_ensure() / 'weights'} and the "
            "current folder); copy the file there or use pretrained=False to train from scratch.")
    model = YOLO(str(path)) if path is not None else YOLO(f"{_yaml_name(name)}.yaml", task="detect")
    model.bloodlib_pretrained = str(path) if path is not None else None
    return model


def export_yolo_dataset(splits: Mapping[str, dict], out_dir: Union[str, os.PathLike]) -> Path:
    """Write each ``{split_name: coco}`` in YOLO format under ``out_dir`` (image symlinks,
    label txt files, one ``data.yaml``); returns ``data.yaml``. All splits must share
    the same categories."""
    if not splits:
        raise ValueError("No splits to export.")
    names = {k: category_names(c) for k, c in splits.items()}
    first = next(iter(names.values()))
    if any(v != first for v in names.values()):
        raise ValueError(f"Splits have different categories: {names}; export them separately.")
    out = Path(out_dir)
    if (out / "data.yaml").exists():
        (out / "data.yaml").unlink()
    yaml_path = None
    for split, coco in splits.items():
        yaml_path = coco_to_yolo(coco, out, split)
    return yaml_path


@dataclass
class YoloTraining:
    """What :func:`train_yolo` did: the trained ``model`` (best weights), its run
    folder, ultralytics' per-epoch ``history`` (results.csv as a DataFrame), wall time."""

    model: Any
    save_dir: Path
    best: Optional[Path]
    history: Any
    seconds: float
    epochs: int
    images: int
    pretrained: Optional[str] = None
    extra: dict = field(default_factory=dict)

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("nan")


def _device_arg(device: Any) -> str:
    """ultralytics' device argument: "cpu", "0", or several GPUs ("0,1" from [0, 1])."""
    if isinstance(device, (list, tuple)):
        return ",".join(str(d) for d in device)
    d = str(device)
    return "cpu" if d == "cpu" else ("0" if d in ("cuda", "cuda:0") else d.replace("cuda:", ""))


def train_yolo(data_yaml: Union[str, os.PathLike], name: str = "yolov9t", *, epochs: int = 10,
               imgsz: int = 640, batch: int = 8, device: Any = "cpu", seed: int = 0,
               time_budget_s: Optional[float] = None, pretrained: Union[bool, str] = "auto",
               project: Optional[Union[str, os.PathLike]] = None, run_name: str = "train",
               n_train_images: Optional[int] = None, resume: bool = False,
               **overrides: Any) -> YoloTraining:
    """Train YOLO ``name`` on ``data_yaml`` (from :func:`export_yolo_dataset`, with
    ``train`` and ``val`` splits) and return the best weights.

    ``time_budget_s`` becomes ultralytics' ``time`` (hours; it then overrides ``epochs``).
    Plots, AMP on the CPU, and the run's network hooks are off; ``overrides`` go to
    ``YOLO.train`` (e.g. ``lr0``, ``mosaic``, ``optimizer``). ``n_train_images`` (for
    the throughput figure) defaults to the number of label files of the train split.
    ``resume`` continues this run's ``weights/last.pt`` (ultralytics' own resume, which
    restores the optimizer, the epoch and the run's settings) when it exists.
    """
    work = _ensure()
    model = build_yolo(name, pretrained)
    dev = _device_arg(device)
    args: dict[str, Any] = dict(
        data=str(data_yaml), epochs=int(epochs), imgsz=int(imgsz), batch=int(batch), device=dev,
        workers=0, seed=int(seed), deterministic=False, plots=False, amp=dev != "cpu",
        project=str(project or work / "runs"), name=run_name, exist_ok=True, verbose=False,
        pretrained=model.bloodlib_pretrained is not None, val=True)
    if time_budget_s is not None:
        args["time"] = float(time_budget_s) / 3600.0
    args.update(overrides)
    save_dir = Path(args["project"]) / run_name
    last = save_dir / "weights" / "last.pt"
    t0 = time.monotonic()
    finished = resume and last.is_file() and _finished(last)
    if finished:  # nothing left to train: use what the earlier run left
        print(f"{last} is a finished run; using its weights")
    elif resume and last.is_file():
        print(f"resuming from {last}")
        model = build_yolo(name, weights=last)
        model.train(resume=True)
    else:
        model.train(**args)
    seconds = time.monotonic() - t0
    trainer = getattr(model, "trainer", None) if not finished else None
    save_dir = Path(trainer.save_dir) if trainer is not None else save_dir
    best_path = Path(trainer.best) if trainer is not None else save_dir / "weights" / "best.pt"
    best = best_path if best_path.is_file() else None
    csv = save_dir / "results.csv"
    history = pd.read_csv(csv) if csv.is_file() else pd.DataFrame()
    history.columns = [c.strip() for c in history.columns]
    epochs_run = int(len(history)) if len(history) else int(getattr(trainer, "epoch", 0) + 1)
    if n_train_images is None:
        n_train_images = len(getattr(trainer, "train_loader").dataset) \
            if getattr(trainer, "train_loader", None) is not None else 0
    trained = build_yolo(name, weights=best) if best is not None else model
    return YoloTraining(trained, save_dir, best, history, seconds, epochs_run,
                        epochs_run * int(n_train_images), model.bloodlib_pretrained)


def _finished(last: Path) -> bool:
    """Whether an ultralytics ``last.pt`` is from a run that ended (its epoch is -1)."""
    from ultralytics.nn.tasks import torch_safe_load
    ckpt, _ = torch_safe_load(str(last))
    return int(ckpt.get("epoch", -1)) == -1


def predict_coco_yolo(model: Any, coco: dict, *, imgsz: int = 640, conf: float = 0.001,
                      iou: float = 0.7, max_det: int = 300, device: Any = "cpu",
                      batch: int = 8) -> list[dict]:
    """COCO result dicts of ``model`` on every image of ``coco`` (by its ``path``).
    Class index ``k`` of the YOLO export is category ``k``-th by id (as
    :func:`bloodlib.data.convert.coco_to_yolo` writes it). Low ``conf`` keeps the
    whole precision-recall curve, as COCO evaluation expects."""
    cat_ids = [c["id"] for c in sorted(coco["categories"], key=lambda c: c["id"])]
    images = list(coco["images"])
    results: list[dict] = []
    for start in range(0, len(images), batch):
        chunk = images[start:start + batch]
        preds = model.predict(source=[str(im["path"]) for im in chunk], imgsz=int(imgsz),
                              conf=conf, iou=iou, max_det=max_det, device=_device_arg(device),
                              verbose=False, save=False)
        for im, r in zip(chunk, preds):
            boxes = r.boxes
            xyxy = boxes.xyxy.detach().cpu().numpy().reshape(-1, 4)
            cls = boxes.cls.detach().cpu().numpy().astype(int)
            score = boxes.conf.detach().cpu().numpy()
            for (x1, y1, x2, y2), k, s in zip(xyxy, cls, score):
                if not 0 <= k < len(cat_ids):
                    raise ValueError(f"YOLO predicted class index {k}, but the ground truth has "
                                     f"{len(cat_ids)} categories; was it trained on this export?")
                results.append({"image_id": im["id"], "category_id": int(cat_ids[k]),
                                "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                                "score": float(s)})
    return results


def evaluate_yolo(model: Any, coco: dict, *, imgsz: int = 640, device: Any = "cpu",
                  predictions: Optional[Sequence[dict]] = None, max_dets: int = 100):
    """Our :func:`bloodlib.metrics.coco_evaluate` (bbox) of ``model`` on ``coco``."""
    preds = list(predictions) if predictions is not None else \
        predict_coco_yolo(model, coco, imgsz=imgsz, device=device)
    return coco_evaluate(coco, preds, iou_type="bbox", max_dets=max_dets)


# ----------------------------------------------------------------------------- checkpoints
def save_yolo_checkpoint(model: Any, path: Union[str, os.PathLike], classes: Sequence[str],
                         meta: Optional[Mapping[str, Any]] = None, name: str = "yolov9t",
                         imgsz: int = 640) -> Path:
    """Save ``model``'s network with the course's checkpoint contract: ``architecture``
    "yolo", ``architecture_kwargs`` {"cfg": "<name>.yaml", "nc": K}, ``classes``,
    ``input_size``; loadable with ``weights_only=True``."""
    m = dict(meta or {})
    m.setdefault("task", "detect")
    m["architecture"] = "yolo"
    m["architecture_kwargs"] = {"cfg": f"{_yaml_name(name)}.yaml", "nc": len(classes)}
    m["classes"] = list(classes)
    m.setdefault("input_size", int(imgsz))
    m.setdefault("preprocessing", {"clahe": False, "stain": None, "normalize": "unit"})
    net = model.model if hasattr(model, "model") and not isinstance(model, type) else model
    return save_checkpoint(path, net, m)


def load_yolo_checkpoint(path: Union[str, os.PathLike], device: Any = "cpu"):
    """``(ultralytics.YOLO, meta)`` from :func:`save_yolo_checkpoint`'s file."""
    _ensure()
    from ultralytics import YOLO
    from ultralytics.nn.tasks import DetectionModel
    ckpt = load_checkpoint(path, None, map_location="cpu")
    meta = ckpt["meta"]
    kw = meta.get("architecture_kwargs", {})
    net = DetectionModel(kw.get("cfg", "yolov9t.yaml"), nc=int(kw["nc"]), verbose=False)
    net.load_state_dict(ckpt["model_state"])
    net.names = dict(enumerate(meta["classes"]))
    net.eval()
    model = YOLO(kw.get("cfg", "yolov9t.yaml"), task="detect")
    model.model = net
    model.model.args = {"imgsz": int(meta.get("input_size", 640))}
    model.model.to(torch.device(device))
    return model, meta


configure_offline()
