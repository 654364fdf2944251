"""What the attention modules of trained R-Mask R-CNNs do to their features.

For each checkpoint saved by ``benchmarks/segpc_maskrcnn.py`` (``bc.save_model``), runs
the backbone on the first N SegPC-2021 validation images and prints
:func:`bloodlib.experiments.blood_cancer.attention_gate_table`: per attention module the
median and largest softmax weight (times the entry count), the share of channels /
positions it all but switches off, and the smallest multiplier the features get. A
collapsed softmax reads as a median near 0 and a maximum near the entry count.
Writes one CSV per checkpoint under OUT_DIR:

    python benchmarks/segpc_attention_gates.py OUT_DIR N CHECKPOINT [CHECKPOINT ...]
"""
import sys
from pathlib import Path

import pandas as pd

from bloodlib.config import get_config
from bloodlib.experiments import blood_cancer as bc


def main(out_dir: str, n_images: int, checkpoints: list[str]) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = get_config("blood_cancer", "bench_cpu", max_val_images=n_images)
    data = bc.load_data(settings, out, 0)
    if data["source"] == "synthetic":
        raise SystemExit("SegPC-2021 not found: set BLOODLIB_DATA to the datasets folder.")
    ev = bc.make_eval_set(data["val"], settings.image_size)
    for i, path in enumerate(checkpoints):
        table = bc.attention_gate_table(bc.load_model(path), ev.images)
        table.insert(0, "checkpoint", path)
        table.to_csv(out / f"attention_gates_{i}.csv", index=False)
        with pd.option_context("display.width", 200, "display.max_columns", None,
                               "display.precision", 3):
            print(f"== {path} ({len(ev.images)} validation images)")
            print(table.drop(columns="checkpoint"))


if __name__ == "__main__":
    if "-h" in sys.argv or "--help" in sys.argv:
        raise SystemExit(__doc__)
    if len(sys.argv) < 4:
        raise SystemExit(__doc__)
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3:])
