"""One model of notebook 05 on Jiangxi, outside the notebook, to try a recipe change.

Uses the notebook's splits (stratified 80:20, then 15 % of train for validation) and the
``bench_cpu`` recipe with KEY=VALUE knob overrides (Python literals); prints the test
metrics without and with dihedral test-time augmentation, minutes and peak memory. It
writes no results JSON: the committed numbers come from the notebook.

    python benchmarks/wcsegnet_jiangxi.py wcsegnet loss=ce_dice
    python benchmarks/wcsegnet_jiangxi.py wcsegnet train_on_val=True
    python benchmarks/wcsegnet_jiangxi.py wcsegnet seed=1
    python benchmarks/wcsegnet_jiangxi.py wcsegnet store=wcsegnet-jiangxi-bench_cpu
    python benchmarks/wcsegnet_jiangxi.py wcsegnet dataset=cellavision

``train_on_val=True`` trains on train + validation (the best epoch is then picked on
images the model trained on; the test images stay untouched). ``seed=N`` changes the
training seed (initial weights, augmentation, batch order) and keeps the notebook's
split (seed 0), to measure how much a figure moves from one training run to the next.
``dataset=cellavision`` runs the same on the CellaVision set (default ``jiangxi``).
``out=DIR`` also writes the results JSON (test metrics without test-time augmentation,
as notebook 05 reports them) under DIR/results, labelled by ``variant="..."``; the
pretrained-vs-scratch pair of issue 23 ran as

    python benchmarks/wcsegnet_jiangxi.py lite_unet dataset=cellavision pretrained=True \\
        out=outputs/zheng_lite variant="EfficientNet-Lite0 U-Net, ImageNet"

Checkpoints go to ``outputs/wcsegnet_jiangxi/checkpoints`` (``DIR/checkpoints`` with
``out``); ``--resume`` continues an interrupted run from there.
"""
import resource
import sys
import tempfile
import time

from bloodlib.config import get_profile, parse_overrides
from bloodlib import session
from bloodlib.session import pop_flag
from bloodlib.experiments import wbc_segmentation as wcs

SEED = 0  # the notebook's split
RESUME = False  # set by --resume


def main(name: str, overrides: dict) -> None:
    train_on_val = bool(overrides.pop("train_on_val", False))
    train_seed = int(overrides.pop("seed", SEED))
    dataset = str(overrides.pop("dataset", "jiangxi"))
    out, variant = overrides.pop("out", None), str(overrides.pop("variant", "") or "")
    store_as = overrides.pop("store", None)
    run = session.start(wcs.EXPERIMENT, "bench_cpu", output_dir=out, verbose=False,
                        resume=RESUME) if out else None
    knobs = {**get_profile(wcs.EXPERIMENT, "bench_cpu"), **overrides, "resume": RESUME,
             "checkpoint_dir": (run.knobs["checkpoint_dir"] if run
                                else "outputs/wcsegnet_jiangxi/checkpoints")}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        included, _, source = wcs.load_or_synthesize(dataset, knobs, tmp, SEED)
    if source == "synthetic":
        raise SystemExit("Zheng data not found: set BLOODLIB_DATA to the datasets folder.")
    parts = wcs.train_val_test(included, knobs, SEED)
    train = parts["train"] + parts["val"] if train_on_val else parts["train"]
    print(f"{dataset}: train {len(train)}, val {len(parts['val'])}, test {len(parts['test'])}; "
          f"training seed {train_seed}; {overrides}")
    model, history, val = wcs.train_model(name, train, parts["val"], knobs, "cpu", train_seed,
                                          dataset=dataset)
    metrics = {}
    for tta in (None, "dihedral"):
        m = wcs.evaluate(model, parts["test"], {**knobs, "tta": tta}, "cpu")
        metrics[tta] = m
        print(f"tta={tta}: " + " ".join(f"{k} {m[k]:.4f}" for k in
                                         ("nucleus_dice", "dice", "mIoU", "precision", "accuracy")))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"epochs {history.last_epoch} (best {history.best_epoch}) in "
          f"{val['train_seconds'] / 60:.1f} min, peak RSS {peak_mb:.0f} MB")
    if store_as:
        print("stored:", _store(model, str(store_as), name, knobs, dataset, len(train),
                                wcs.finite(metrics[None])))
    if run is not None:
        run.finish(paper="paper5", dataset=dataset, split="test", model=name,
                   metrics=wcs.finite(metrics[None]),
                   config={k: v for k, v in knobs.items() if k != "checkpoint_dir"},
                   notes=f"data={source}; metrics averaged over classes incl. background; "
                         f"benchmarks/wcsegnet_jiangxi.py, training seed {train_seed}",
                   extra={"best_epoch": history.best_epoch, "epochs_run": history.last_epoch,
                          "train_seconds": val["train_seconds"], "peak_rss_mb": peak_mb,
                          "wall_seconds": time.perf_counter() - t0,
                          "dihedral_tta": wcs.finite(metrics["dihedral"]),
                          "pretrained": bool(getattr(model, "pretrained_loaded", False)),
                          **({"variant": variant} if variant else {})})


def _store(model, store_as: str, name: str, knobs: dict, dataset: str, n_train: int,
           metrics: dict):
    """Save the trained model into the model store as ``store_as`` (``store=NAME``)."""
    from bloodlib.inference import save_model
    meta = wcs.checkpoint_meta(name, knobs, dataset=f"wbc_seg_zheng/{dataset}")
    meta.pop("knobs"), meta.pop("model")
    meta["metrics"] = metrics
    meta["training_data"]["split"] = f"train ({n_train} images), metrics on test"
    return save_model(model.cpu(), store_as, meta)


if __name__ == "__main__":
    RESUME = pop_flag(sys.argv)
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    main(sys.argv[1], parse_overrides(sys.argv[2:]))
