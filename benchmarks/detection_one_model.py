"""One detector of notebook 01's ``bench_cpu`` profile, outside the notebook.

Trains MODEL (faster_rcnn, mask_rcnn, mcnet or yolov9) on BCCD's official train split with
the profile's recipe (CLAHE, MobileNetV3-FPN light heads or YOLOv9t at 480 px), evaluates
it on BCCD test with the course's COCO evaluator, writes the results JSON (``run.finish``)
under OUT_DIR/results and saves the model into the model store as
``<model>-bccd-bench_cpu``. It exists so that the three detectors can train side by side
on a small machine (one torch thread each) with a shorter budget than the notebook's 60 min:

    python benchmarks/detection_one_model.py faster_rcnn 2700 1200 1 outputs/bench01/faster_rcnn

Arguments: MODEL BUDGET_S ITERATIONS (0 = the profile's) THREADS OUT_DIR.
Copy the JSON into results/reference/ and run ``python -m bloodlib board`` to publish it.

Add ``--resume`` to continue a run that was interrupted from its checkpoints in
OUT_DIR/checkpoints/ (the same batches as an uninterrupted run; a time budget restarts).
"""
import json
import resource
import sys
import time

import torch

from bloodlib import session
from bloodlib.experiments import mcnet_detection as mc

RESUME = False  # set by --resume


def main(model: str, budget: float, iterations: int, threads: int, out_dir: str) -> None:
    torch.set_num_threads(threads)
    over = {"models": [model], "time_budget_s": budget, "yolo_time_budget_s": budget}
    if iterations:
        over["iterations"] = iterations
    run = session.start("mcnet", profile="bench_cpu", seed=0, output_dir=out_dir, resume=RESUME,
                        **over)
    knobs = run.knobs
    splits, source = mc.load_splits("bccd", knobs, run.output_dir, 0)
    if source == "synthetic":
        raise SystemExit("BCCD not found: set BLOODLIB_DATA to the datasets folder.")
    masked = {s: mc.add_masks(c) for s, c in splits.items()} if model in mc.MASK_MODELS else None
    folder = run.output_dir / "preprocessed" / "bccd"
    splits = mc.preprocess_images(splits, knobs["preprocessing"], folder)
    masked = mc.preprocess_images(masked, knobs["preprocessing"], folder) if masked else splits
    out = mc.train_and_evaluate(model, splits, masked, knobs, "cpu", 0, run.output_dir / "bccd",
                                tag="bccd")
    metrics = out.evaluation.metrics()
    print(json.dumps({k: v for k, v in metrics.items() if isinstance(v, float)}, indent=1))
    print(f"{out.iterations} steps/epochs in {out.seconds:.0f} s ({out.stop_reason})")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    backbone = knobs["yolo_model"] if model == "yolov9" else knobs["backbone"]
    run.finish(paper="paper1", dataset="bccd", split="test", model=model,
               metrics={**out.result_metrics(), "peak_rss_mb": peak_mb},
               notes=(f"data={source}; backbone={backbone}; pretrained={out.pretrained}; "
                      "precision/recall macro at score>=0.5, IoU 0.5; trained "
                      f"{budget / 60:.0f} min wall with {threads} torch thread(s)"),
               extra={"n_train": len(splits["train"]["images"]),
                      "n_test": len(splits["test"]["images"]),
                      "stop_reason": out.stop_reason, "torch_threads": threads})
    print("stored:", mc.store_outcome(out, splits["train"], knobs, f"{model}-bccd-bench_cpu"))


if __name__ == "__main__":
    RESUME = session.pop_flag(sys.argv)  # --resume: continue an interrupted run
    if len(sys.argv) != 6:
        raise SystemExit(__doc__)
    t0 = time.time()
    main(sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
    print(f"total wall {time.time() - t0:.0f} s")
