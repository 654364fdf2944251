"""Old grammar of ``bloodlib bench blood_cancer`` (kept so the commands recorded in
committed results still run): one model of notebook 03's ``bench_cpu`` benchmark on
SegPC-2021 (train -> validation).

    python benchmarks/segpc_maskrcnn.py MODEL BUDGET_S THREADS OUT_DIR [KEY=VALUE ...] [--resume]
    = bloodlib bench blood_cancer --model MODEL --budget BUDGET_S --threads THREADS \\
          --out OUT_DIR --store MODEL [KEY=VALUE ...]

``seed=N`` and ``variant="..."`` become --seed / --variant; the R-Mask R-CNN variant keys
(``attention``, ``bottom_up``, ``multiscale_mask_head``) become ``architecture={...}``.
"""
import ast
import sys

from bloodlib.cli import main


def plain(value: str) -> str:
    """A KEY=VALUE value as text ('x' and x alike)."""
    try:
        return str(ast.literal_eval(value))
    except (ValueError, SyntaxError):
        return value

VARIANT_KEYS = ("attention", "bottom_up", "multiscale_mask_head")

if __name__ == "__main__":
    a = [x for x in sys.argv[1:] if x != "--resume"]
    if len(a) < 4 or "-h" in a or "--help" in a:
        raise SystemExit(__doc__)
    over = dict(x.split("=", 1) for x in a[4:])
    options = [f"--{k}={plain(over.pop(k))}" for k in ("seed", "variant") if k in over]
    arch = {k: ast.literal_eval(over.pop(k)) for k in VARIANT_KEYS if k in over}
    extra = [f"{k}={v}" for k, v in over.items()] + ([f"architecture={arch!r}"] if arch else [])
    sys.exit(main(["bench", "blood_cancer", "--model", a[0], "--budget", a[1], "--threads", a[2],
                   "--out", a[3], "--store", a[0], *options, *extra,
                   "--no-publish", *(["--resume"] if "--resume" in sys.argv else [])]))
