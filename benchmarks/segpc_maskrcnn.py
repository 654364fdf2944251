"""Notebook 03's segmentation benchmark for one model, outside the notebook.

Trains MODEL (``maskrcnn`` = plain Mask R-CNN, ``rmaskrcnn`` = R-Mask R-CNN with the
attention FPN and bottom-up path) on SegPC-2021 train with the ``bench_cpu`` recipe and
evaluates it on SegPC validation (IoU, pixel accuracy, RMSE, matched-cell IoU, COCO segm
AP), writing the results JSON under OUT_DIR/results. Two models can train side by side
(one torch thread each) with the same budget:

    python benchmarks/segpc_maskrcnn.py rmaskrcnn 2700 1 outputs/bench03/rmaskrcnn

Arguments: MODEL BUDGET_S THREADS OUT_DIR [KEY=VALUE ...] (profile knob overrides,
Python literals, e.g. ``max_val_images=20``; ``seed=N`` changes the training seed,
default 0: initial weights and batch order; ``variant="seed 1"`` labels a second run of
the same model, kept beside the first in results/reference and on the board; the
architecture keys ``attention``, ``bottom_up`` and ``multiscale_mask_head`` pick an
R-Mask R-CNN ablation variant, e.g. ``multiscale_mask_head=False``).

Add ``--resume`` to continue a run that was interrupted from its checkpoints in
OUT_DIR/checkpoints/ (the same batches as an uninterrupted run; a time budget restarts).
"""
import resource
import sys
import time

import torch

from bloodlib import session
from bloodlib.config import parse_overrides
from bloodlib.experiments import blood_cancer as bc

RESUME = False  # set by --resume


def main(model: str, budget: float, threads: int, out_dir: str, seed: int = 0,
         variant: str = "", **overrides) -> None:
    torch.set_num_threads(threads)
    architecture = {k: overrides.pop(k) for k in bc.MAIN_VARIANT if k in overrides}
    if architecture and model != "rmaskrcnn":
        raise SystemExit(f"{sorted(architecture)} pick an R-Mask R-CNN variant; MODEL is {model}.")
    run = session.start("blood_cancer", profile="bench_cpu", seed=seed, output_dir=out_dir,
                        time_budget_s=budget, **overrides, resume=RESUME)
    knobs = run.knobs
    data = bc.load_data(knobs, run.output_dir, 0)
    if data["source"] == "synthetic":
        raise SystemExit("SegPC-2021 not found: set BLOODLIB_DATA to the datasets folder.")
    ev = bc.make_eval_set(data["val"], int(knobs["image_size"]))
    out = bc.train_and_evaluate(model, data["train"], ev, knobs, run.device, seed,
                                variant=architecture or None)
    m, log = out["metrics"], out["log"]
    print({k: round(float(v), 4) for k, v in m.items()})
    print(f"{log.steps} steps in {log.seconds:.0f} s (stop: {log.stop_reason})")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    run.finish(paper="paper3", dataset=data["source"], split="valid", model=model,
               metrics=bc.finite({**m, "train_minutes": m.get("train_seconds", 0) / 60,
                                  "peak_rss_mb": peak_mb}),
               notes=(f"data={data['source']}; validation images at {knobs['image_size']} px; "
                      f"backbone {knobs['backbone']} from scratch; trained {log.steps} steps in "
                      f"{log.seconds / 60:.0f} min (budget {budget / 60:.0f} min, stop: "
                      f"{log.stop_reason}) with {threads} torch thread(s)"),
               extra={"paper_table": "table1", "paper_row": {"model": bc.TABLE1_LABELS[model]},
                      "n_train": len(data["train"]["images"]),
                      "n_val": len(data["val"]["images"]), "torch_threads": threads,
                      "stop_reason": log.stop_reason, **({"variant": variant} if variant else {}),
                      **({"architecture": architecture} if architecture else {})})
    bc.save_model(out["model"], run.output_dir / "checkpoints" / f"{model}.pt", knobs, m,
                  f"{data['source']}/train")


if __name__ == "__main__":
    RESUME = session.pop_flag(sys.argv)  # --resume: continue an interrupted run
    if len(sys.argv) < 5:
        raise SystemExit(__doc__)
    over = parse_overrides(sys.argv[5:])
    t0 = time.time()
    main(sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4], **over)
    print(f"total wall {time.time() - t0:.0f} s")
