"""PBC 8-class classification under paper 1's stratified 80/20, outside notebook 04.

Notebook 04's ``bench_cpu`` profile trains this model inside a notebook of about 45
minutes; this script runs only that part, with optional knob overrides, so a recipe can be
measured on its own. It writes the results JSON (``run.finish``) under OUT_DIR/results and saves the
model into the model store as NAME:

    python benchmarks/pbc8_classification.py outputs/pbc8 pbc8-resnet18-bench_cpu \\
        image_size=72 crop_fraction=1.0 lr=0.05
    # fine-tuning ImageNet weights vs the same network from scratch, side by side
    python benchmarks/pbc8_classification.py outputs/pbc8_lite pbc8-lite0-imagenet \\
        pbc8_model=efficientnet_lite0 pretrained=True torch_threads=1

Overrides are KEY=VALUE (Python literals); per-task knobs (``epochs``, ``time_budget_s``)
are given for the 80/20 task only, e.g. ``time_budget_s=1440``. ``variant="..."`` labels
the run (``extra["variant"]``), so that it sits beside the notebook's in results/reference
and on the board instead of replacing it.

Add ``--resume`` to continue a run that was interrupted from its checkpoints in
OUT_DIR/checkpoints/ (the same batches as an uninterrupted run; a time budget restarts).
"""
import sys
import time

from bloodlib import session
from bloodlib.config import parse_overrides
from bloodlib.experiments import wbc_classification as wc
from bloodlib.inference import save_model

TASK = "paper1_80_20"

RESUME = False  # set by --resume


def main(out_dir: str, name: str, overrides: dict) -> None:
    variant = str(overrides.pop("variant", "") or "")
    base = session.start("wbc_classification", profile="bench_cpu", output_dir=out_dir,
                         verbose=False, resume=RESUME).knobs
    for key in ("epochs", "time_budget_s"):
        if key in overrides:
            overrides[key] = {**base[key], TASK: overrides[key]}
    run = session.start("wbc_classification", profile="bench_cpu", output_dir=out_dir,
                        **overrides, resume=RESUME)
    knobs = run.knobs
    pbc, dropped = wc.drop_conflicting(wc.load_pbc_images(knobs, run.output_dir, 0))
    if pbc.source == "synthetic":
        raise SystemExit("PBC not found: set BLOODLIB_DATA to the datasets folder.")
    parts = wc.protocol_split(pbc, TASK, knobs, 0)
    print({k: len(v) for k, v in parts.items()}, f"(dropped {dropped} conflicting duplicates)")
    t = wc.train_classifier(knobs["pbc8_model"], parts, wc.PBC8, knobs, TASK, run.device, 0)
    ev = wc.evaluate(t.model, parts["test"], wc.PBC8, knobs["tta"])
    print(f"{t.info['epochs_run']} epochs in {t.info['train_minutes']:.1f} min "
          f"({t.info['images_per_second']:.0f} img/s, peak RSS {t.info['peak_rss_mb']:.0f} MB) | "
          f"test accuracy {ev.report.accuracy:.4f}, macro F1 {ev.report.macro['f1']:.4f}")
    run.finish(paper="paper1", dataset=f"pbc_{TASK}", split="test", model=knobs["pbc8_model"],
               metrics=ev.metrics(),
               notes=(f"data={pbc.source}; PBC 8 classes, {TASK}; "
                      f"{'fine-tuned from ImageNet' if t.info['pretrained_loaded'] else 'trained from scratch'}"
                      f"; tta={knobs['tta']}; "
                      f"image_size={knobs['image_size']}, crop_fraction={knobs['crop_fraction']}"),
               extra={**t.info, "n_test": len(parts["test"]), "tta": knobs["tta"],
                      "test_seconds": ev.seconds,
                      "test_images_per_second": len(parts["test"]) / max(ev.seconds, 1e-9),
                      **({"variant": variant} if variant else {})})
    training = {"dataset": pbc.source, "split": f"{TASK} train", "profile": "bench_cpu"}
    metrics = {"test_accuracy": ev.report.accuracy, "test_macro_f1": ev.report.macro["f1"]}
    print("stored:", save_model(t.model, name, wc.model_meta(t, knobs, training, metrics)))


if __name__ == "__main__":
    RESUME = session.pop_flag(sys.argv)  # --resume: continue an interrupted run
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    t0 = time.time()
    main(sys.argv[1], sys.argv[2], parse_overrides(sys.argv[3:]))
    print(f"total wall {time.time() - t0:.0f} s")
