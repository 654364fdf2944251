"""Old grammar of ``bloodlib bench wcsegnet`` (kept so the commands recorded in committed
results still run): one model of notebook 05 (``bench_cpu``) on a Zheng set.

    python benchmarks/wcsegnet_jiangxi.py MODEL [KEY=VALUE ...] [--resume]
    = bloodlib bench wcsegnet --model MODEL --out OUT [KEY=VALUE ...] --no-publish

``dataset=D`` becomes ``datasets=['D']``; ``seed=N`` the training seed with the
notebook's split (``split_seed=0``); ``train_on_val=True`` as is; ``out=DIR`` --out
(default outputs/wcsegnet_jiangxi); ``store=NAME`` --store; ``variant="..."`` --variant;
``tta='dihedral'`` evaluates with dihedral test-time augmentation.
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

if __name__ == "__main__":
    a = [x for x in sys.argv[1:] if x != "--resume"]
    if len(a) < 1 or "-h" in a or "--help" in a:
        raise SystemExit(__doc__)
    over = dict(x.split("=", 1) for x in a[1:])
    options = ["--out", plain(over.pop("out", "outputs/wcsegnet_jiangxi"))]
    options += [f"--{k}={plain(over.pop(k))}" for k in ("seed", "variant", "store") if k in over]
    if "dataset" in over:
        over["datasets"] = f"['{plain(over.pop('dataset'))}']"
    sys.exit(main(["bench", "wcsegnet", "--model", a[0], *options, "split_seed=0",
                   *(f"{k}={v}" for k, v in over.items()), "--no-publish",
                   *(["--resume"] if "--resume" in sys.argv else [])]))
