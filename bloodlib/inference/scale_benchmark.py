"""``bloodlib bench predict``: prediction at scale, old path vs new, side by side.

Measured in one run on one machine, with the store's models:

* **folder classification** (PBC crops): the old per-image path (one image at a time, the
  model's test-time views, an overlay per image, torch's default threads) against the
  batched path (a reader thread, batches, no TTA, no overlays) in PyTorch and in
  onnxruntime; the labels of the batched paths are compared with the per-image path
  without TTA on the same images (they must be identical);
* **folder detection** of 640x480 smears (BCCD test) with WBC typing, old vs new;
* **smear latency**, detection + WBC typing per image, PyTorch vs onnxruntime;
* **peak memory** of ``bloodlib predict`` (a fresh process each) on N and 10 N images;
* **a shared machine**: the batched path while one other single-thread job runs, with
  the default threads (the free cores) and with as many threads as cores.

The results JSON (experiment ``predict_scale``) goes to ``OUT/results`` and, with a
reference folder, to ``results/reference/``.
"""

from __future__ import annotations

import multiprocessing as mp
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd
import torch

from ..config import get_profile, register
from ..errors import BloodlibError
from ..data.catalogue import dataset_path, is_available
from .batch import predict_files
from ..io import read_image
from .pipeline import predict_images
from .folder import default_threads, usable_cpus
from ..results import make_result, publish_result, write_result
from .store import default_model, load_predictor, read_meta, resolve_model

EXPERIMENT = "predict_scale"
@dataclass(frozen=True)
class ScaleSettings:
    """``bloodlib bench predict``'s settings: how many images each part measures."""

    classify_images: int
    old_images: int
    detect_images: int
    old_detect_images: int
    latency_images: int
    memory_images: int
    contention_images: int


register(EXPERIMENT, schema=ScaleSettings, profiles={
    "quick": {"classify_images": 200, "old_images": 40, "detect_images": 8, "old_detect_images": 4,
              "latency_images": 4, "memory_images": 50, "contention_images": 100},
    "bench_cpu": {"classify_images": 4000, "old_images": 200, "detect_images": 60,
                  "old_detect_images": 30, "latency_images": 30, "memory_images": 400,
                  "contention_images": 800},
    "full": {"classify_images": 4000, "old_images": 200, "detect_images": 60,
             "old_detect_images": 30, "latency_images": 30, "memory_images": 400,
             "contention_images": 800},
})


def pbc_files(n: int) -> list[Path]:
    """``n`` PBC crops spread over the classes (sorted, every k-th), deterministic."""
    if not is_available("pbc"):
        raise BloodlibError("The benchmark needs the PBC dataset: bloodlib fetch pbc, or set "
                            "BLOODLIB_DATA.")
    files = sorted(p for p in dataset_path("pbc").rglob("*.jpg") if not p.name.startswith("."))
    step = max(1, len(files) // n)
    return files[::step][:n]


def bccd_files(n: int) -> list[Path]:
    """The first ``n`` BCCD test smears (640x480)."""
    if not is_available("bccd"):
        raise BloodlibError("The benchmark needs BCCD: bloodlib fetch bccd, or set BLOODLIB_DATA.")
    root = dataset_path("bccd") / "BCCD"
    names = (root / "ImageSets" / "Main" / "test.txt").read_text().split()
    return [root / "JPEGImages" / f"{s}.jpg" for s in names][:n]


def _timed_folder(files: Sequence[Path], predictor: Any, out: Path, threads: int,
                  **kw: Any) -> dict[str, Any]:
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    rep = predict_files(files, predictor, out, progress=False, **kw)
    seconds = time.perf_counter() - t0
    table = pd.read_csv(rep.files["table"])
    return {"images": len(rep.processed), "seconds": seconds,
            "images_per_s": len(rep.processed) / seconds, "threads": threads,
            "table": table}


def _labels(result: dict[str, Any]) -> list[str]:
    return result["table"].sort_values("image")["label"].tolist()


def classification_part(clf: Any, onnx_clf: Any, knobs: dict, work: Path, cpus: int
                        ) -> dict[str, float]:
    """Old per-image path vs batched (torch, onnxruntime) on PBC crops."""
    files = pbc_files(int(knobs["classify_images"]))
    few = files[:int(knobs["old_images"])]
    old = _timed_folder(few, clf, work / "c_old", cpus, batch_size=1, workers=0,
                        overlays=True)
    ref = _timed_folder(few, clf, work / "c_ref", cpus, batch_size=1, workers=0,
                        overlays=False, tta="none")
    new_few = _timed_folder(few, clf, work / "c_new_few", cpus, batch_size=64,
                            workers=1, overlays=False, tta="none")
    new = _timed_folder(files, clf, work / "c_new", cpus, batch_size=64, workers=1,
                        overlays=False, tta="none")
    ort = _timed_folder(files, onnx_clf, work / "c_ort", cpus, batch_size=64,
                        workers=1, overlays=False, tta="none")
    same = _labels(ref) == _labels(new_few)
    same_ort = _labels(new) == _labels(ort)
    return {"classify_old_images_per_s": old["images_per_s"],
            "classify_per_image_no_tta_images_per_s": ref["images_per_s"],
            "classify_new_images_per_s": new["images_per_s"],
            "classify_new_onnxruntime_images_per_s": ort["images_per_s"],
            "classify_speedup": new["images_per_s"] / old["images_per_s"],
            "classify_speedup_onnxruntime": ort["images_per_s"] / old["images_per_s"],
            "classify_identical_labels": float(same),
            "classify_identical_labels_onnxruntime": float(same_ort),
            "classify_images_new": float(new["images"]), "classify_images_old": float(old["images"])}


def detection_part(det: Any, clf: Any, onnx_det: Any, onnx_clf: Any, knobs: dict, work: Path,
                   cpus: int) -> dict[str, float]:
    """Folder detection + WBC typing of 640x480 smears, old vs new."""
    files = bccd_files(int(knobs["detect_images"]))
    old = _timed_folder(files[:int(knobs["old_detect_images"])], det, work / "d_old", cpus,
                        classifier=clf, batch_size=1, workers=0, overlays=True)
    new = _timed_folder(files, det, work / "d_new", cpus, classifier=clf,
                        batch_size=1, workers=1, overlays=False, tta="none")
    ort = _timed_folder(files, onnx_det, work / "d_ort", cpus, classifier=onnx_clf,
                        batch_size=1, workers=1, overlays=False, tta="none")
    return {"detect_old_images_per_s": old["images_per_s"],
            "detect_new_images_per_s": new["images_per_s"],
            "detect_new_onnxruntime_images_per_s": ort["images_per_s"],
            "detect_speedup": new["images_per_s"] / old["images_per_s"],
            "detect_speedup_onnxruntime": ort["images_per_s"] / old["images_per_s"],
            "detect_cells_per_image": float(len(new["table"]) / max(1, new["images"]))}


def latency_part(det: Any, clf: Any, onnx_det: Any, onnx_clf: Any, knobs: dict, cpus: int
                 ) -> dict[str, float]:
    """Mean ms per smear, detection + WBC typing, for the old setting and both runtimes."""
    torch.set_num_threads(cpus)
    images = [read_image(p) for p in bccd_files(int(knobs["latency_images"]))]
    out = {}
    for label, d, c, tta in (("old", det, clf, None), ("torch", det, clf, "none"),
                             ("onnxruntime", onnx_det, onnx_clf, "none")):
        predict_images(d, images[:1], ["warm-up"], classifier=c, tta=tta)
        times = []
        for im in images:
            t0 = time.perf_counter()
            predict_images(d, [im], ["smear"], classifier=c, tta=tta)
            times.append(1000 * (time.perf_counter() - t0))
        out[f"latency_{label}_mean_ms"] = float(np.mean(times))
        out[f"latency_{label}_p95_ms"] = float(np.percentile(times, 95))
    return out


_MEMORY_CHILD = """
import resource, sys
from pathlib import Path
from bloodlib.inference.batch import run_predict
files = [l for l in Path(sys.argv[1]).read_text().splitlines() if l]
run_predict(files, "classify", sys.argv[2], Path(sys.argv[3]), progress=False, workers=1,
            overlays=0, tta="none", batch_size=64, log=lambda s: None)
own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(own, kids)
"""


def memory_part(model_name: str, knobs: dict, work: Path) -> dict[str, float]:
    """Peak RSS (MB) of a fresh ``predict`` process on N and 10 N PBC crops."""
    n = int(knobs["memory_images"])
    files = pbc_files(10 * n)
    out = {}
    for label, subset in (("n", files[:n]), ("10n", files)):
        listing = work / f"mem_{label}.txt"
        listing.write_text("\n".join(map(str, subset)))
        proc = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, str(listing), model_name,
                               str(work / f"mem_{label}")], capture_output=True, text=True,
                              check=True)
        own, kids = (int(v) for v in proc.stdout.split()[-2:])
        out[f"peak_rss_mb_{label}"] = own / 1024
        out[f"peak_rss_workers_mb_{label}"] = kids / 1024
        out[f"memory_images_{label}"] = float(len(subset))
    out["peak_rss_growth_10x"] = out["peak_rss_mb_10n"] / out["peak_rss_mb_n"] - 1
    return out


def _busy(seconds: float) -> None:
    torch.set_num_threads(1)
    a = torch.randn(512, 512)
    t_end = time.time() + seconds
    while time.time() < t_end:
        a = (a @ a).tanh_()


def contention_part(clf: Any, knobs: dict, work: Path, cpus: int) -> dict[str, float]:
    """The batched path while one other single-thread job runs: default threads (the free
    cores) vs as many threads as cores."""
    files = pbc_files(int(knobs["contention_images"]))
    ctx = mp.get_context("spawn")
    job = ctx.Process(target=_busy, args=(600.0,), daemon=True)
    job.start()
    try:
        time.sleep(2.0)
        chosen = default_threads()
        auto = _timed_folder(files, clf, work / "k_auto", chosen, batch_size=64, workers=1,
                             overlays=False, tta="none")
        over = _timed_folder(files, clf, work / "k_all", cpus, batch_size=64, workers=1,
                             overlays=False, tta="none")
    finally:
        job.terminate()
        job.join()
    return {"shared_default_threads": float(chosen),
            "shared_default_images_per_s": auto["images_per_s"],
            "shared_all_cores_images_per_s": over["images_per_s"]}


def run_scale_benchmark(profile: str = "bench_cpu", out_dir: str | Path = "outputs/bench_cpu",
                        reference_dir: Optional[str | Path] = None,
                        classifier_name: Optional[str] = None,
                        detector_name: Optional[str] = None) -> Path:
    """Run every part with the store's models (newest unless named); write the JSON."""
    knobs = dict(get_profile(EXPERIMENT, profile))
    cname = classifier_name or default_model("classify")
    dname = detector_name or default_model("detect")
    if not cname or not dname:
        raise BloodlibError("bloodlib bench predict needs a classify and a detect model in "
                            "the store (bloodlib zoo list).")
    cpus = usable_cpus()
    t0 = time.perf_counter()
    clf, det = load_predictor(cname, task="classify"), load_predictor(dname, task="detect")
    onnx_clf = load_predictor(cname, task="classify", runtime="onnxruntime")
    onnx_det = load_predictor(dname, task="detect", runtime="onnxruntime")
    metrics: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bloodlib-scale-") as tmp:
        work = Path(tmp)
        metrics.update(classification_part(clf, onnx_clf, knobs, work, cpus))
        metrics.update(detection_part(det, clf, onnx_det, onnx_clf, knobs, work, cpus))
        metrics.update(latency_part(det, clf, onnx_det, onnx_clf, knobs, cpus))
        metrics.update(memory_part(str(resolve_model(cname)), knobs, work))
        metrics.update(contention_part(clf, knobs, work, cpus))
    info = {"classifier": cname, "classifier_meta": _brief(read_meta(resolve_model(cname))),
            "detector": dname, "detector_meta": _brief(read_meta(resolve_model(dname))),
            "cpus": cpus, **knobs}
    result = make_result(EXPERIMENT, "course", "pbc+bccd_test", "-", metrics, info, 0, profile,
                         time.perf_counter() - t0, model=f"{cname} + {dname}",
                         notes="old = one image at a time, model TTA, overlays, all cores; "
                               "new = batched, 1 reader thread, no TTA, no overlays, all cores",
                         device=f"cpu ({cpus} cores)")
    path = write_result(result, Path(out_dir) / "results")
    if reference_dir is not None:
        publish_result(path, reference_dir, "bloodlib bench predict")
    for k, v in metrics.items():
        print(f"{k:45s} {v:10.3f}")
    return path


def _brief(meta: dict) -> dict:
    return {k: meta.get(k) for k in ("architecture", "input_size", "tta", "metrics",
                                     "training_data")}
