"""Which PBC test images do several stored 8-class models get wrong?

Loads each named model from the model store (``BLOODLIB_MODELS``), rebuilds paper 1's
80/20 split at the model's own input size and crop (the split does not depend on them),
evaluates with the model's test-time augmentation and prints, then writes to
OUT_DIR/shared_errors.csv, :func:`bloodlib.experiments.wbc_classification.shared_errors`
with an ``ensemble`` column: the prediction of the models' soft-vote ensemble
(:func:`~bloodlib.experiments.wbc_classification.ensemble`) where it is wrong. The
ensemble's accuracy is printed and its mistakes drawn in OUT_DIR/ensemble_errors.png:

    python benchmarks/pbc8_shared_errors.py outputs/pbc8 \\
        pbc8-resnet18-bench_cpu pbc8-resnet18-probe28 pbc8-resnet18-probe96

Add ``--resume`` to continue a run that was interrupted from its checkpoints in
OUT_DIR/checkpoints/ (the same batches as an uninterrupted run; a time budget restarts).
"""
import sys
from pathlib import Path

from bloodlib import session
from bloodlib.experiments import wbc_classification as wc
from bloodlib.inference import load_predictor

TASK = "paper1_80_20"

RESUME = False  # set by --resume


def test_part(out_dir: str, size: int, crop: float) -> wc.CellImages:
    """Paper 1's 80/20 test part, preloaded at ``size`` px of the centre ``crop``."""
    run = session.start("wbc_classification", profile="bench_cpu", output_dir=out_dir,
                        verbose=False, image_size=size, crop_fraction=crop, resume=RESUME)
    pbc, _ = wc.drop_conflicting(wc.load_pbc_images(run.settings, run.output_dir, 0))
    if pbc.source == "synthetic":
        raise SystemExit("PBC not found: set BLOODLIB_DATA to the datasets folder.")
    return wc.protocol_split(pbc, TASK, run.settings, 0)["test"]


def main(out_dir: str, names: list[str]) -> None:
    evals, parts, test = {}, {}, None
    for name in names:
        predictor = load_predictor(name, task="classify")
        size = int(predictor.meta["input_size"][0])
        crop = float(predictor.meta["preprocessing"].get("crop_fraction", 1.0))
        if (size, crop) not in parts:                   # load each preprocessing once
            parts[size, crop] = test_part(out_dir, size, crop)
        part = parts[size, crop]
        if test is not None and [p.name for p in part.paths] != [p.name for p in test.paths]:
            raise SystemExit(f"{name}: its test split differs from the first model's.")
        test = part
        evals[name] = wc.evaluate(predictor.model, part, wc.PBC8,
                                  predictor.meta.get("tta") or "none")
        print(f"{name}: {size} px, test accuracy {evals[name].report.accuracy:.4f} "
              f"({len(evals[name].wrong)} wrong)", flush=True)
    table = wc.shared_errors(evals, test)
    vote = wc.ensemble(evals)
    missed = {Path(test.paths[i]).name: vote.classes[vote.y_pred[i]] for i in vote.wrong}
    table["ensemble"] = [missed.get(name, "") for name in table["image"]]
    print(table.to_string(index=False))
    print("images wrong in k models:", table["n_wrong"].value_counts().sort_index().to_dict())
    print(f"soft-vote ensemble of {len(evals)}: test accuracy {vote.report.accuracy:.4f} "
          f"({len(vote.wrong)} wrong), macro F1 {vote.report.macro['f1']:.4f}")
    out = Path(out_dir) / "shared_errors.csv"
    table.to_csv(out, index=False)
    fig = wc.misclassified_figure(vote, test, n=len(vote.wrong), per_row=6,
                                  title=f"The {len(vote.wrong)} test images the ensemble of "
                                        f"{len(evals)} models misses")
    fig.savefig(Path(out_dir) / "ensemble_errors.png", dpi=80, bbox_inches="tight")
    print("written:", out, Path(out_dir) / "ensemble_errors.png")


if __name__ == "__main__":
    if "-h" in sys.argv or "--help" in sys.argv:
        raise SystemExit(__doc__)
    RESUME = session.pop_flag(sys.argv)  # --resume: continue an interrupted run
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    main(sys.argv[1], sys.argv[2:])
