"""Old grammar of ``bloodlib bench wbc_classification`` (kept so the commands recorded in
committed results still run): PBC 8 classes under paper 1's 80/20, ``bench_cpu``.

    python benchmarks/pbc8_classification.py OUT_DIR NAME [KEY=VALUE ...] [--resume]
    = bloodlib bench wbc_classification --out OUT_DIR --store NAME [KEY=VALUE ...]

``pbc8_model=M`` becomes --model M; ``variant="..."`` --variant; ``time_budget_s=S``
(the 80/20 task's) --budget S; ``epochs=E`` the 80/20 task's epochs.
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
    if len(a) < 2 or "-h" in a or "--help" in a:
        raise SystemExit(__doc__)
    over = dict(x.split("=", 1) for x in a[2:])
    options = [f"--model={plain(over.pop('pbc8_model'))}"] if "pbc8_model" in over else []
    options += [f"--variant={plain(over.pop('variant'))}"] if "variant" in over else []
    options += [f"--budget={plain(over.pop('time_budget_s'))}"] if "time_budget_s" in over else []
    if "epochs" in over:
        e = over.pop("epochs")
        over["epochs"] = f"{{'wbc5': {e}, 'paper1_80_20': {e}, 'paper2_300_100_100': {e}}}"
    sys.exit(main(["bench", "wbc_classification", "--out", a[0], "--store", a[1], *options,
                   *(f"{k}={v}" for k, v in over.items()),
                   "--no-publish", *(["--resume"] if "--resume" in sys.argv else [])]))
