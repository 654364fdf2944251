"""Old grammar of ``bloodlib bench mcnet`` (kept so the commands recorded in committed
results still run): one detector of notebook 01's ``bench_cpu`` profile on BCCD.

    python benchmarks/detection_one_model.py MODEL BUDGET_S ITERATIONS THREADS OUT_DIR [--resume]
    = bloodlib bench mcnet --model MODEL --budget BUDGET_S --threads THREADS --out OUT_DIR \\  (with --no-publish)
          [iterations=ITERATIONS] --store MODEL-bccd-bench_cpu
"""
import sys

from bloodlib.cli import main

if __name__ == "__main__":
    a = [x for x in sys.argv[1:] if x != "--resume"]
    if len(a) != 5 or "-h" in a or "--help" in a:
        raise SystemExit(__doc__)
    its = [f"iterations={a[2]}"] if int(a[2]) else []
    sys.exit(main(["bench", "mcnet", "--model", a[0], "--budget", a[1], "--threads", a[3],
                   "--out", a[4], "--store", f"{a[0]}-bccd-bench_cpu", *its,
                   "--no-publish", *(["--resume"] if "--resume" in sys.argv else [])]))
