"""Old grammar of ``bloodlib bench unet_family`` (kept so the commands recorded in
committed results still run): paper 4's Table 5 models on CellaVision, one after another.

    python benchmarks/unet_family_table5.py PROFILE OUT_DIR [KEY=VALUE ...] [--resume]
    = for M in unet_relu resunet deeplabv3plus cbam_dc_unet; do
          bloodlib bench unet_family --model $M --profile PROFILE --out OUT_DIR/$M [KEY=VALUE ...]
      done

``models=[...]`` picks the models (default: the profile's).
"""
import ast
import sys

from bloodlib.cli import main
from bloodlib.config import get_profile
from bloodlib.experiments import unet_family as uf

if __name__ == "__main__":
    a = [x for x in sys.argv[1:] if x != "--resume"]
    if len(a) < 2 or "-h" in a or "--help" in a:
        raise SystemExit(__doc__)
    over = dict(x.split("=", 1) for x in a[2:])
    models = ast.literal_eval(over.pop("models")) if "models" in over \
        else get_profile(uf.EXPERIMENT, a[0])["models"]
    status = 0
    for m in models:
        status |= main(["bench", "unet_family", "--model", m, "--profile", a[0],
                        "--out", f"{a[1]}/{m}", *(f"{k}={v}" for k, v in over.items()),
                        "--no-publish", *(["--resume"] if "--resume" in sys.argv else [])])
    sys.exit(status)
