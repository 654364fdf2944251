"""Where the nucleus errors of notebook 05's trained models lie, and whether cleaning the
predictions helps.

Reads the checkpoints a notebook-05 run saved (``<run>/checkpoints/wcsegnet/<model>_<dataset>.pt``),
rebuilds the notebook's splits and prints, on the test part,
:func:`bloodlib.experiments.wbc_segmentation.boundary_error_table`; then the nucleus Dice
on validation and test after removing predicted objects and holes smaller than N pixels
(scikit-image), N = 0 (none), 16, 32, 64, 128:

    python benchmarks/wcsegnet_error_location.py outputs/bench_cpu/checkpoints/wcsegnet jiangxi

(``make bench NOTEBOOKS=05`` writes its outputs, checkpoints included, to outputs/bench_cpu.)
"""
import sys
import tempfile
from pathlib import Path

import numpy as np
from skimage.morphology import remove_small_holes, remove_small_objects

from bloodlib.config import get_config
from bloodlib.engine.checkpoint import load_checkpoint
from bloodlib.experiments import wbc_segmentation as wcs

SEED = 0
CLEANUP_SIZES = (0, 16, 32, 64, 128)


def cleaned_dice(truth: np.ndarray, pred: np.ndarray, size: int) -> float:
    """Nucleus Dice after removing predicted objects and holes under ``size`` pixels."""
    if size:
        pred = np.stack([remove_small_holes(remove_small_objects(p, max_size=size - 1),
                                            max_size=size - 1) for p in pred])
    return float(2 * (pred & truth).sum() / (pred.sum() + truth.sum()))


def main(checkpoint_dir: str, dataset: str) -> None:
    settings = get_config(wcs.EXPERIMENT, "bench_cpu")
    with tempfile.TemporaryDirectory() as tmp:
        included, _, source = wcs.load_or_synthesize(dataset, tmp, SEED)
    if source == "synthetic":
        raise SystemExit("Zheng data not found: set BLOODLIB_DATA to the datasets folder.")
    parts = wcs.train_val_test(included, settings, SEED)
    models = {}
    for name in wcs.MODELS:
        path = Path(checkpoint_dir) / f"{name}_{dataset}.pt"
        if not path.exists():
            raise SystemExit(f"{path} not found: run notebook 05 (make bench NOTEBOOKS=05) first.")
        models[name] = wcs.build_model(name, settings)
        load_checkpoint(path, models[name])
    print(wcs.boundary_error_table(models, parts["test"], settings).round(4).to_string())
    for name, model in models.items():
        for part in ("val", "test"):
            _, truth, pred = wcs.nucleus_masks(model, parts[part], settings)  # predict once
            print(f"{name} {part} cleaned nucleus Dice: " + " ".join(
                f"{n}:{cleaned_dice(truth.numpy(), pred.numpy(), n):.4f}"
                for n in CLEANUP_SIZES))


if __name__ == "__main__":
    if "-h" in sys.argv or "--help" in sys.argv:
        raise SystemExit(__doc__)
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    main(sys.argv[1], sys.argv[2])
