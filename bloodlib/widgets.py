"""The prediction demo: an ipywidgets app for JupyterLab that also works headlessly.

```python
demo = PredictionDemo()        # models from the store ($BLOODLIB_MODELS or models/)
demo                           # in a notebook: the app
demo.task.value = "detect"     # every control is a widget attribute ...
demo.load_example("Synthetic smear 640x480 (seed 0)")
demo.run()                     # ... and every action a method
demo.counts_frame()            # CBC-style counts; results_frame(): one row per cell
demo.export("results.csv")     # or .json, or a folder for both
```

Upload one or more images (or pick an example), choose the task and the model, move the
score / NMS sliders, toggle CLAHE and stain normalisation; the app shows the image with
boxes, masks and labels, a count table and per-cell class probabilities. When the store
has no model for the task it says so and offers to train a quick one
(:func:`bloodlib.inference.quick_models.train_quick_model`).
"""

from __future__ import annotations

import html
import io
import json
import re
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import pandas as pd

from .config import register
from .errors import BloodlibError, ImageReadError
from .data import synthetic
from .io import read_image, to_rgb_uint8
from .inference.common import (build_preprocess, check_image, preprocessing_available,
                               stain_methods)
from .inference.store import list_models, load_predictor, models_dir
from .inference.pipeline import predict_image, render_overlay
import cv2
from PIL import Image, UnidentifiedImageError

@dataclass(frozen=True)
class DemoSettings:
    """Notebook 06's settings (a profile is one instance)."""

    quick_train_budget_s: float
    latency_images: int
    throughput_images: int
    score_threshold: float
    nms_threshold: float


register("demo", schema=DemoSettings, profiles={
    # notebook 06: quick models trained in ~20 s each (only where the store has none)
    "quick": {"quick_train_budget_s": 20, "latency_images": 5, "throughput_images": 10,
              "score_threshold": 0.5, "nms_threshold": 0.5},
    "bench_cpu": {"quick_train_budget_s": 60, "latency_images": 20, "throughput_images": 100,
                  "score_threshold": 0.5, "nms_threshold": 0.5},
    "full": {"quick_train_budget_s": 60, "latency_images": 50, "throughput_images": 100,
             "score_threshold": 0.5, "nms_threshold": 0.5},
})

TASK_LABELS = {"detect": "Blood-cell detection and counts (WBC, RBC, platelets)",
               "classify": "WBC type classification (one cell per image)",
               "segment": "Nucleus segmentation"}
NO_CLASSIFIER = "(no WBC typing)"
NO_STAIN = "none"
ImageSource = Union[np.ndarray, bytes, bytearray, memoryview, str, Path]


# ----------------------------------------------------------------------------- examples
def _first(folder: Path, pattern: str, n: int) -> list[Path]:
    files = sorted(p for p in folder.glob(pattern) if not p.name.startswith(".")) \
        if folder.is_dir() else []
    return files[:n]


def example_images() -> dict[str, Callable[[], np.ndarray]]:
    """Example name -> loader: synthetic smears and cells, plus a few images of the local
    datasets (BCCD, Zheng, PBC) when they are on disk."""
    out: dict[str, Callable[[], np.ndarray]] = {
        f"Synthetic smear 640x480 (seed {s})": (lambda s=s: synthetic.make_smear(s, 480, 640).image)
        for s in (0, 1)}
    for t in ("neutrophil", "lymphocyte"):
        out[f"Synthetic {t} crop"] = lambda t=t: synthetic.make_cell_crop(t, 0, 128)[0]
    try:
        from .data.catalogue import dataset_path, is_available
        found = []
        if is_available("bccd"):
            found += [("BCCD", p) for p in _first(dataset_path("bccd") / "BCCD" / "JPEGImages",
                                                  "*.jpg", 2)]
        if is_available("wbc_seg_zheng"):
            found += [("Jiangxi", p) for p in _first(dataset_path("wbc_seg_zheng") / "Dataset 1",
                                                     "*.bmp", 2)]
        if is_available("pbc"):
            root = dataset_path("pbc") / "PBC_dataset_normal_DIB"
            found += [("PBC", p) for c in ("neutrophil", "lymphocyte")
                      for p in _first(root / c, "*.jpg", 1)]
        for source, path in found:
            out[f"{source} {path.parent.name}/{path.name}"] = lambda p=path: read_image(p)
    except (BloodlibError, OSError):  # datasets are optional here
        pass
    return out


def _preferred_example(task: str, names: Sequence[str]) -> Optional[str]:
    wanted = {"detect": ("BCCD", "Synthetic smear"), "classify": ("PBC", "Synthetic neutrophil"),
              "segment": ("Jiangxi", "Synthetic neutrophil")}[task]
    for prefix in wanted:
        for n in names:
            if n.startswith(prefix):
                return n
    return names[0] if names else None


def decode_image(source: ImageSource, name: Optional[str] = None) -> np.ndarray:
    """An RGB uint8 array from an array, encoded bytes (PNG/JPEG/BMP ...) or a path;
    errors name ``name`` (the uploaded file's name) when given."""
    if isinstance(source, np.ndarray):
        return check_image(source)
    if isinstance(source, (str, Path)):
        return read_image(source)
    label = repr(name) if name else "the uploaded file"
    try:
        img = Image.open(io.BytesIO(bytes(source)))
        img.load()
    except Image.DecompressionBombError:
        raise ImageReadError(f"Cannot use {label}: it is too large to decode safely (more than "
                             f"{2 * (Image.MAX_IMAGE_PIXELS or 0) / 1e6:.0f} MP; possibly a "
                             "decompression bomb). Upload a smaller image or a tile of it.") from None
    except (UnidentifiedImageError, OSError, ValueError, ImportError) as exc:  # see bloodlib.io
        detail = re.sub(r"<_io\.BytesIO object at 0x[0-9a-f]+>", label, str(exc))
        raise ImageReadError(f"Cannot decode {label}: {detail}. Upload a PNG, JPEG, BMP or "
                             "TIFF image.") from None
    try:
        return check_image(to_rgb_uint8(img))
    except BloodlibError as exc:
        raise type(exc)(f"{label}: {exc}") from None


def _png(rgb: np.ndarray, max_side: int = 900) -> bytes:
    h, w = rgb.shape[:2]
    if max(h, w) > max_side:
        f = max_side / max(h, w)
        rgb = cv2.resize(rgb, (int(w * f), int(h * f)), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return buf.tobytes()


# ----------------------------------------------------------------------------- the app
class PredictionDemo:
    """The demo app; widgets are attributes, actions are methods (see module docstring)."""

    def __init__(self, folder: Optional[Union[str, Path]] = None, device: str = "cpu",
                 task: Optional[str] = None, export_dir: Union[str, Path] = "demo_exports",
                 quick_train_budget_s: float = 45.0, auto_run: bool = True) -> None:
        import ipywidgets as w

        self.folder, self.device = folder, device
        self.export_dir = Path(export_dir)
        self.quick_train_budget_s, self.auto_run = quick_train_budget_s, auto_run
        self.images: list[tuple[str, np.ndarray]] = []
        self.predictions: list[Any] = []
        self.message = ""
        self._predictors: dict[tuple[str, str], Any] = {}
        self._examples = example_images()
        self._busy = False

        self.task = w.Dropdown(options=[(v, k) for k, v in TASK_LABELS.items()],
                               value=task or self._initial_task(), description="Task")
        self.model = w.Dropdown(options=[], description="Model")
        self.classifier = w.Dropdown(options=[NO_CLASSIFIER], description="WBC types")
        self.example = w.Dropdown(options=list(self._examples), description="Example")
        self.load_example_button = w.Button(description="Load example", icon="image")
        self.upload = w.FileUpload(accept="image/*", multiple=True, description="Upload")
        self.score = w.FloatSlider(value=0.5, min=0.05, max=0.95, step=0.05,
                                   description="Score ≥", continuous_update=False)
        self.nms = w.FloatSlider(value=0.5, min=0.1, max=0.9, step=0.05,
                                 description="NMS IoU", continuous_update=False)
        self.clahe = w.Checkbox(value=False, description="CLAHE")
        self.stain = w.Dropdown(options=[NO_STAIN, *stain_methods()], description="Stain norm.")
        if not preprocessing_available():
            self.clahe.disabled = self.stain.disabled = True
            self.clahe.description = "CLAHE (unavailable)"
        self.run_button = w.Button(description="Run", button_style="primary", icon="play")
        self.train_button = w.Button(description="Train a quick model", button_style="warning",
                                     icon="cogs", layout=w.Layout(display="none", width="auto"))
        self.export_button = w.Button(description="Export CSV + JSON", icon="download")
        self.status = w.HTML()
        self.gallery = w.HBox(layout=w.Layout(flex_flow="row wrap"))
        self.counts_html = w.HTML()
        self.cells_html = w.HTML()
        self.gallery.add_class("bloodlib-overlay")
        self.counts_html.add_class("bloodlib-counts")
        self.cells_html.add_class("bloodlib-cells")
        self.status.add_class("bloodlib-status")
        self.upload.add_class("bloodlib-upload")
        self.app = self._layout(w)
        self._connect()
        self.refresh_models()
        self.example.value = _preferred_example(self.task.value, list(self._examples))

    # -- construction
    def _initial_task(self) -> str:
        tasks = set(list_models(folder=self.folder)["task"])
        return next((t for t in TASK_LABELS if t in tasks), "detect")

    def _layout(self, w: Any) -> Any:
        controls = w.VBox([
            w.HBox([self.task, self.model, self.classifier]),
            w.HBox([self.example, self.load_example_button, self.upload]),
            w.HBox([self.score, self.nms, self.clahe, self.stain]),
            w.HBox([self.run_button, self.train_button, self.export_button]),
            self.status])
        cells = w.Accordion(children=[self.cells_html], selected_index=0)
        cells.set_title(0, "Cells and class probabilities")
        app = w.VBox([w.HTML("<h3>Blood-smear prediction demo</h3>"), controls,
                      w.HBox([self.gallery, self.counts_html]), cells])
        app.add_class("bloodlib-demo")
        return app

    def _connect(self) -> None:
        self.task.observe(self._safe(lambda _: self._on_task()), names="value")
        for ctrl in (self.model, self.classifier, self.score, self.nms, self.clahe, self.stain):
            ctrl.observe(self._safe(lambda _: self._maybe_run()), names="value")
        self.upload.observe(self._safe(lambda ch: self._on_upload(ch["new"])), names="value")
        self.load_example_button.on_click(self._safe(lambda _: self.load_example()))
        self.run_button.on_click(self._safe(lambda _: self.run()))
        self.train_button.on_click(self._safe(lambda _: self.train_quick_model()))
        self.export_button.on_click(self._safe(lambda _: self._export_clicked()))

    def _safe(self, fn: Callable[[Any], Any]) -> Callable[[Any], None]:
        """A widget callback that reports errors in the status line instead of losing them."""
        def callback(arg: Any) -> None:
            try:
                fn(arg)
            except BloodlibError as exc:
                self._say(str(exc), error=True)
            except Exception as exc:  # an unexpected bug: show it, with the traceback
                self._say(f"{type(exc).__name__}: {exc}<pre>{html.escape(traceback.format_exc())}"
                          "</pre>", error=True, escape=False)
        return callback

    def _ipython_display_(self) -> None:
        from IPython.display import display
        display(self.app)

    # -- status
    def _say(self, text: str, error: bool = False, escape: bool = True) -> None:
        self.message = text
        body = html.escape(text, quote=False) if escape else text
        color = "#b00020" if error else "#1b5e20"
        self.status.value = f"<span style='color:{color}'>{body}</span>"

    # -- models
    def refresh_models(self) -> list[str]:
        """Fill the model dropdowns from the store; offer a quick model when none exists."""
        df = list_models(folder=self.folder)
        names = list(df.loc[df["task"] == self.task.value, "name"])
        self.model.options = names
        self.model.value = names[0] if names else None
        classifiers = list(df.loc[df["task"] == "classify", "name"])
        self.classifier.options = [NO_CLASSIFIER, *classifiers]
        detect = self.task.value == "detect"
        self.classifier.value = classifiers[0] if detect and classifiers else NO_CLASSIFIER
        self.classifier.layout.display = None if detect else "none"
        self.score.disabled = self.nms.disabled = not detect
        self.train_button.layout.display = "none" if names else None
        if not names:
            store = self.folder or models_dir()
            from .inference.zoo import missing_model_hint
            self._say(f"No trained {self.task.value!r} model in the store ({store}) yet. "
                      "Click 'Train a quick model' (about a minute on a CPU), or train one "
                      f"in its notebook. {missing_model_hint(self.task.value)}", error=True)
        return names

    def train_quick_model(self) -> Path:
        """Train and store a quick model for the current task, then select it."""
        self._say(f"Training a quick {self.task.value!r} model "
                  f"(about {self.quick_train_budget_s:.0f} s) ...")
        from .inference.quick_models import train_quick_model  # loads the training code: only here
        path = train_quick_model(self.task.value, self.folder,
                                 time_budget_s=self.quick_train_budget_s)
        self.refresh_models()
        self.model.value = path.stem
        self._say(f"Quick model {path.stem!r} trained and saved to {path}.")
        self._maybe_run()
        return path

    def _predictor(self, name: str, task: str) -> Any:
        key = (task, name)
        if key not in self._predictors:
            self._predictors[key] = load_predictor(name, device=self.device, task=task,
                                                   folder=self.folder)
        return self._predictors[key]

    # -- images
    def load_image(self, source: ImageSource, name: Optional[str] = None,
                   replace: bool = False) -> np.ndarray:
        """Add an image (array, encoded bytes or path); ``replace`` clears the others."""
        image = decode_image(source, name)
        if replace:
            self.images.clear()
        label = name or (Path(source).name if isinstance(source, (str, Path)) else
                         f"image {len(self.images) + 1}")
        self.images.append((label, image))
        return image

    def clear_images(self) -> None:
        """Forget the loaded images and their predictions."""
        self.images.clear()
        self.predictions.clear()
        self._render()

    def load_example(self, name: Optional[str] = None) -> np.ndarray:
        """Load an example (default: the one selected) in place of the current images."""
        name = name or self.example.value
        if name not in self._examples:
            raise BloodlibError(f"Unknown example {name!r}; examples: {list(self._examples)}.")
        image = self.load_image(self._examples[name](), name, replace=True)
        self._maybe_run()
        return image

    def _on_upload(self, files: Any) -> None:
        if not files:
            return
        self.images.clear()  # a failed upload must not leave the previous result on show
        self.predictions.clear()
        self._render()
        try:
            for f in files:  # ipywidgets 8: a tuple of dicts with name, content, ...
                self.load_image(f["content"], f["name"])
        finally:
            self.upload.value = ()  # so that the same file can be uploaded again
        self._maybe_run(force=True)

    def _on_task(self) -> None:
        self.refresh_models()
        self.predictions.clear()
        self.example.value = _preferred_example(self.task.value, list(self._examples))
        self._maybe_run()

    # -- running
    def _maybe_run(self, force: bool = False) -> None:
        if (self.auto_run or force) and self.images and self.model.value and not self._busy:
            self.run()
        elif not self.images:
            self._render()

    def run(self) -> list[Any]:
        """Predict every loaded image with the chosen task, model and settings."""
        if not self.images:
            raise BloodlibError("No image loaded: upload one or load an example first.")
        if not self.model.value:
            raise BloodlibError(f"No {self.task.value!r} model selected; train a quick model "
                                "or save one in the store first.")
        self._busy = True
        try:
            self._say(f"Running {self.model.value} on {len(self.images)} image(s) ...")
            predictor = self._predictor(self.model.value, self.task.value)
            classifier = (self._predictor(self.classifier.value, "classify")
                          if self.task.value == "detect" and self.classifier.value != NO_CLASSIFIER
                          else None)
            pre = build_preprocess(self.clahe.value,
                                   None if self.stain.value == NO_STAIN else self.stain.value)
            self.predictions = [predict_image(predictor, img, name, score_threshold=self.score.value,
                                              nms_threshold=self.nms.value, preprocess=pre,
                                              classifier=classifier)
                                for name, img in self.images]
        finally:
            self._busy = False
        self._render()
        ms = 1000 * float(np.mean([p.seconds for p in self.predictions]))
        self._say(f"Processed {len(self.predictions)} image(s) with {self.model.value} "
                  f"({ms:.0f} ms per image): {', '.join(n for n, _ in self.images)}.")
        return self.predictions

    # -- outputs
    def results_frame(self) -> pd.DataFrame:
        """One row per cell (detect; per-cell probabilities with a WBC classifier), per image
        (classify, with the class probabilities) or per image and class (segment)."""
        rows = [r for p in self.predictions for r in p.rows()]
        return pd.DataFrame(rows)

    def counts_per_image(self) -> pd.DataFrame:
        """Counts per image (rows) and class (columns)."""
        return pd.DataFrame([{"image": p.name, **p.counts()} for p in self.predictions]
                            ).set_index("image") if self.predictions else pd.DataFrame()

    def counts_frame(self) -> pd.DataFrame:
        """CBC-style table over all loaded images: count and percent per class; WBC types
        (``WBC/<type>``) as a percentage of the typed WBCs (the differential)."""
        per = self.counts_per_image()
        if per.empty:
            return pd.DataFrame(columns=["class", "count", "percent"])
        total = per.sum(axis=0)
        main = total[[c for c in total.index if "/" not in c]]
        sub = total[[c for c in total.index if "/" in c]]
        rows = [{"class": c, "count": int(v), "percent": 100 * v / max(1, main.sum())}
                for c, v in main.items()]
        rows += [{"class": c, "count": int(v), "percent": 100 * v / max(1, sub.sum())}
                 for c, v in sub.items()]
        return pd.DataFrame(rows, columns=["class", "count", "percent"])

    def overlays(self) -> list[np.ndarray]:
        """The rendered overlay (RGB uint8) of every prediction."""
        return [render_overlay(p) for p in self.predictions]

    def _render(self) -> None:
        import ipywidgets as w
        self.gallery.children = [
            w.VBox([w.HTML(f"<b>{html.escape(p.name)}</b>"),
                    w.Image(value=_png(img), format="png",
                            layout=w.Layout(max_width="640px", width="100%"))])
            for p, img in zip(self.predictions, self.overlays())]
        counts = self.counts_frame()
        self.counts_html.value = "" if counts.empty else (
            "<b>Counts</b>" + counts.to_html(index=False, float_format=lambda v: f"{v:.1f}",
                                             classes="bloodlib-counts-table"))
        cells = self.results_frame()
        self.cells_html.value = "" if cells.empty else (
            f"<b>{len(cells)} row(s)</b>" + cells.head(60).to_html(
                index=False, float_format=lambda v: f"{v:.3f}"))

    def export(self, path: Union[str, Path]) -> list[Path]:
        """Write the results: ``*.csv`` (one row per cell, plus ``*_counts.csv``),
        ``*.json`` (settings, per-image counts and rows), or a folder (both)."""
        if not self.predictions:
            raise BloodlibError("Nothing to export: run a prediction first.")
        path = Path(path)
        if path.suffix.lower() not in (".csv", ".json"):
            return self.export(path / "results.csv") + self.export(path / "results.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix.lower() == ".csv":
            counts = path.with_name(f"{path.stem}_counts.csv")
            self.results_frame().to_csv(path, index=False)
            self.counts_per_image().to_csv(counts)
            return [path, counts]
        doc = {"task": self.task.value, "model": self.model.value,
               "classifier": None if self.classifier.value == NO_CLASSIFIER else self.classifier.value,
               "settings": {"score_threshold": self.score.value, "nms_threshold": self.nms.value,
                            "clahe": self.clahe.value, "stain": self.stain.value},
               "counts": self.counts_frame().to_dict(orient="records"),
               "images": [{"image": p.name, "seconds": p.seconds, "counts": p.counts(),
                           "rows": p.rows()} for p in self.predictions]}
        from .results import _jsonable  # numpy -> JSON, NaN -> null
        path.write_text(json.dumps(_jsonable(doc), indent=2, allow_nan=False) + "\n")
        return [path]

    def _export_clicked(self) -> None:
        paths = self.export(self.export_dir)
        self._say("Exported: " + ", ".join(str(p) for p in paths))
