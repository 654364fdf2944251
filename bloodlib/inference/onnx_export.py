"""ONNX export of stored models and an onnxruntime-backed predictor.

``bloodlib export NAME --format onnx`` writes ``<name>.onnx`` beside the checkpoint, with
the model's contract metadata (task, classes, preprocessing, input size) and the
checkpoint's sha256 in the file's metadata. ``load_predictor(NAME, runtime="onnxruntime")``
uses it (exporting on first use) through the same predictor classes as PyTorch, so the
pre- and post-processing are shared and only the network runs in onnxruntime (CPU).

What is exported:

* classifiers: ``(N, 3, S, S)`` float in [0, 1] -> logits ``(N, K)`` (normalisation is
  inside the model), batch size free;
* segmenters: ``(N, 3, H, W)`` at the model's input size -> logits ``(N, C, H, W)``;
* torchvision detectors: one ``(3, H, W)`` image in [0, 1], any size -> ``boxes``,
  ``labels``, ``scores`` (and ``masks``); resizing and box mapping are in the graph.

YOLO models export with ultralytics' own ``model.export(format="onnx")``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch

from ..io import sha256_file
from ..errors import BloodlibError
from .store import RUNTIMES, load_predictor, predictor_class, read_meta, resolve_model

OPSET = 17
META_KEY = "bloodlib_meta"
#: largest absolute difference allowed between PyTorch and onnxruntime outputs
#: (probabilities, and box coordinates in pixels) in the parity tests
TOLERANCE = {"probability": 1e-4, "box_pixels": 0.5}



class _DetectorGraph(torch.nn.Module):
    """One image in, plain tensors out (what ONNX can carry)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model([image])[0]
        keys = ("boxes", "labels", "scores") + (("masks",) if "masks" in out else ())
        return tuple(out[k] for k in keys)


def _example(predictor: Any) -> tuple[torch.nn.Module, torch.Tensor, dict[str, Any]]:
    """(module to export, example input, export arguments) for ``predictor``."""
    task = predictor.task
    if task == "classify":
        s = predictor.input_size
        return predictor.model, torch.rand(2, 3, s, s), {
            "input_names": ["images"], "output_names": ["logits"],
            "dynamic_axes": {"images": {0: "batch"}, "logits": {0: "batch"}}}
    if task == "segment":
        h, w = predictor.input_size or (128, 128)
        return predictor.model, torch.rand(2, 3, h, w), {
            "input_names": ["images"], "output_names": ["logits"],
            "dynamic_axes": {"images": {0: "batch"}, "logits": {0: "batch"}}}
    if getattr(predictor, "architecture", "") == "yolo":
        raise BloodlibError("YOLO models export with ultralytics: "
                            "YOLO('model.pt').export(format='onnx'); bloodlib exports "
                            "torchvision detectors, classifiers and segmenters.")
    graph = _DetectorGraph(predictor.model).eval()
    with torch.no_grad():
        names = ["boxes", "labels", "scores"] + (
            ["masks"] if len(graph(torch.rand(3, 64, 64))) == 4 else [])
    return graph, torch.rand(3, 480, 640), {
        "input_names": ["image"], "output_names": names,
        "dynamic_axes": {"image": {1: "height", 2: "width"},
                         **{n: {0: "detections"} for n in names}}}


def export_onnx(name_or_path: str | Path, out: Optional[str | Path] = None,
                folder: Optional[str | Path] = None) -> Path:
    """Export a stored model (name or checkpoint path) to ONNX; returns the file
    (default: the checkpoint's path with ``.onnx``)."""
    import onnx

    path = resolve_model(name_or_path, folder)
    predictor = load_predictor(path)
    module, example, kwargs = _example(predictor)
    target = Path(out) if out else path.with_suffix(".onnx")
    target.parent.mkdir(parents=True, exist_ok=True)
    module.eval()
    try:
        torch.onnx.export(module, (example,), str(target), opset_version=OPSET, dynamo=False,
                          do_constant_folding=True, **kwargs)
    except Exception as exc:  # the exporter's errors are many and internal
        raise BloodlibError(f"Could not export {path.name} to ONNX ({type(exc).__name__}: "
                            f"{str(exc)[:300]}); run it with the PyTorch runtime.") from exc
    proto = onnx.load(str(target))
    entry = proto.metadata_props.add()
    entry.key, entry.value = META_KEY, json.dumps(
        {**predictor.meta, "source_sha256": sha256_file(path), "source": path.name}, default=str)
    onnx.save(proto, str(target))
    return target


def onnx_meta(path: str | Path) -> dict[str, Any]:
    """The bloodlib metadata stored in an exported file."""
    import onnx
    proto = onnx.load(str(path), load_external_data=False)
    for entry in proto.metadata_props:
        if entry.key == META_KEY:
            return json.loads(entry.value)
    raise BloodlibError(f"{path} has no bloodlib metadata; export it with bloodlib export.")


def ensure_onnx(path: Path) -> Path:
    """The ONNX file of checkpoint ``path``, exported when missing or stale (made from
    another version of the checkpoint)."""
    target = path.with_suffix(".onnx")
    if target.is_file():
        try:
            if onnx_meta(target).get("source_sha256") == sha256_file(path):
                return target
        except Exception:  # unreadable or foreign: export again
            pass
    return export_onnx(path, target)


class OnnxModule(torch.nn.Module):
    """An onnxruntime session behind the call of the PyTorch model it replaces: tensors
    (or, for detectors, a list of images) in, tensors (or a list of dicts) out."""

    def __init__(self, path: str | Path, task: str, threads: Optional[int] = None) -> None:
        super().__init__()
        import onnxruntime as ort
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads or torch.get_num_threads())
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options,
                                            providers=["CPUExecutionProvider"])
        self.task = task
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]

    def forward(self, x: Any) -> Any:
        if self.task == "detect":
            return [self._detect(im) for im in x]
        arr = x.detach().cpu().numpy().astype(np.float32)
        return torch.from_numpy(self.session.run(None, {self.inputs[0]: arr})[0])

    def _detect(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        arr = image.detach().cpu().numpy().astype(np.float32)
        values = self.session.run(None, {self.inputs[0]: arr})
        return {k: torch.from_numpy(np.asarray(v)) for k, v in zip(self.outputs, values)}


def load_onnx_predictor(path: Path, device: Any = "cpu") -> Any:
    """A predictor of the checkpoint ``path``'s task whose network runs in onnxruntime."""
    if str(device) != "cpu":
        raise BloodlibError("--runtime onnxruntime runs on the CPU; use --device cpu, or the "
                            "torch runtime on a GPU.")
    meta = read_meta(path)
    onnx_path = ensure_onnx(path)
    return predictor_class(meta["task"])(OnnxModule(onnx_path, meta["task"]), meta, "cpu")


def parity(torch_predictor: Any, onnx_predictor: Any, images: Sequence[np.ndarray]
           ) -> dict[str, float]:
    """Largest differences between the two predictors on ``images``: class or pixel
    probabilities (classify, segment) or matched box coordinates and scores (detect)."""
    if torch_predictor.task == "classify":
        a = torch_predictor.predict_batch(images, tta="none")
        b = onnx_predictor.predict_batch(images, tta="none")
        diff = max(abs(x.probabilities[c] - y.probabilities[c])
                   for x, y in zip(a, b) for c in x.probabilities)
        return {"probability": float(diff), "same_labels": float(all(
            x.label == y.label for x, y in zip(a, b)))}
    if torch_predictor.task == "segment":
        diffs = [np.abs(p - q).max() for p, q in zip(torch_predictor.predict_proba_batch(images),
                                                     onnx_predictor.predict_proba_batch(images))]
        return {"probability": float(max(diffs))}
    box, score, count = 0.0, 0.0, True
    for im in images:
        a, b = torch_predictor.predict(im, 0.05), onnx_predictor.predict(im, 0.05)
        count &= len(a) == len(b)
        if len(a) == len(b) and len(a):
            box = max(box, float(np.abs(a.boxes - b.boxes).max()))
            score = max(score, float(np.abs(a.scores - b.scores).max()))
    return {"box_pixels": box, "score": score, "same_counts": float(count)}


def describe_tolerance() -> Mapping[str, float]:
    """The tolerances the parity tests hold the export to."""
    return dict(TOLERANCE)


RUNTIMES.add("onnxruntime", load_onnx_predictor)
