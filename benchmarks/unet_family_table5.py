"""Paper 4's Table 5 (notebook 04, Part B) outside the notebook, in any profile.

Trains U-Net, ResUNet, DeepLabV3+ and CBAM-DC-UNet on the Zheng CellaVision set (whole
WBC vs background; the notebook's stratified 80:20 split, then 15 % of train for
validation) exactly as notebook 04's Part B does, and writes one results JSON per model
under OUT_DIR/results (``run.finish``, experiment ``unet_family``). Notebook 04 needs PBC
for its Part A; this script needs only CellaVision, so the ``full`` profile (full width,
304 px, 100 epochs, Adam 1e-4) can run on a GPU machine that has no PBC copy:

    python benchmarks/unet_family_table5.py full outputs/table5_full
    python benchmarks/unet_family_table5.py bench_cpu outputs/table5 epochs=10

Overrides are KEY=VALUE (Python literals) of the ``unet_family`` profile.

Add ``--resume`` to continue a run that was interrupted from its checkpoints in
OUT_DIR/checkpoints/ (the same batches as an uninterrupted run; a time budget restarts).
"""
import sys
import time

from bloodlib import session
from bloodlib.config import parse_overrides
from bloodlib.data.parsers import load_zheng
from bloodlib.experiments import unet_family as uf
from bloodlib.experiments import wbc_segmentation as wcs

SEED = 0  # the notebook's split and training seed

RESUME = False  # set by --resume


def main(profile: str, out_dir: str, overrides: dict) -> None:
    run = session.start(uf.EXPERIMENT, profile=profile, output_dir=out_dir, seed=SEED,
                        **overrides, resume=RESUME)
    knobs = run.knobs
    records = load_zheng("cellavision")  # DatasetNotFoundError says where it looked
    data = wcs.train_val_test(records, knobs, SEED)
    print({k: len(v) for k, v in data.items()})
    results = {}
    for name in knobs["models"]:
        t0 = time.perf_counter()
        model, history, _ = uf.train_model(name, data["train"], data["val"], knobs, run.device,
                                           SEED, checkpoint_dir=run.output_dir / "checkpoints")
        minutes = (time.perf_counter() - t0) / 60
        metrics = uf.evaluate(model, data["test"], knobs, run.device)
        results[name] = metrics
        print(f"{uf.MODEL_LABELS[name]:13s} epochs {history.last_epoch:3d} (best "
              f"{history.best_epoch}) {minutes:.1f} min | test "
              + " ".join(f"{k} {metrics[k]:.4f}" for k in ("IoU", "recall", "accuracy", "dice")))
        run.finish(paper=uf.PAPER, dataset="cellavision", split="test", model=name,
                   metrics=wcs.finite(metrics),
                   notes="data=CellaVision; whole-WBC vs background; "
                         "benchmarks/unet_family_table5.py (notebook 04 Part B)",
                   extra={"paper_table": "table5", "paper_row": {"model": uf.MODEL_LABELS[name]},
                          "epochs_run": history.last_epoch, "best_epoch": history.best_epoch,
                          "stop_reason": history.stop_reason, "train_minutes": minutes,
                          "n_train": len(data["train"]), "n_test": len(data["test"])})
    print(uf.table5(results).to_string())


if __name__ == "__main__":
    RESUME = session.pop_flag(sys.argv)  # --resume: continue an interrupted run
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    t_start = time.time()
    main(sys.argv[1], sys.argv[2], parse_overrides(sys.argv[3:]))
    print(f"total wall {time.time() - t_start:.0f} s")
