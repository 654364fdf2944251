"""Issue 25: one short run per training track with fixed steps and no time budgets, so
two trees (the four old loops vs the one loop) can be compared; it calls library
functions that both have. Prints one JSON line per track.

    git worktree add /tmp/old 4e5a268
    PYTHONPATH=/tmp/old python benchmarks/engine_equivalence.py > old.jsonl
    PYTHONPATH=$PWD python benchmarks/engine_equivalence.py > new.jsonl; diff old.jsonl new.jsonl

Needs CellaVision, BCCD and SegPC-2021 under $BLOODLIB_DATA; trained detectors go to a
temporary model store.
"""
import json
import os
import sys
import tempfile
import time

if "-h" in sys.argv or "--help" in sys.argv:
    raise SystemExit(__doc__)
os.environ["BLOODLIB_MODELS"] = tempfile.mkdtemp()

import numpy as np  # noqa: E402

from bloodlib.config import get_config, get_profile  # noqa: E402
from bloodlib.data.parsers import load_zheng  # noqa: E402
from bloodlib.experiments import blood_cancer as bc  # noqa: E402
from bloodlib.experiments import mcnet_detection as mc  # noqa: E402
from bloodlib.experiments import unet_family as uf  # noqa: E402
from bloodlib.experiments import wbc_segmentation as wcs  # noqa: E402
from bloodlib.engine.gan import train_gan  # noqa: E402


def show(track: str, t0: float, **values) -> None:
    print(json.dumps({"track": track, **values}), flush=True)
    print(f"{track}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)


work = tempfile.mkdtemp()
t0 = time.perf_counter()  # fit: U-Net and CBAM-DC-UNet, 3 epochs on CellaVision
settings = get_config(uf.EXPERIMENT, "quick", time_budget_s=None, epochs=3)
data = wcs.train_val_test(load_zheng("cellavision"), settings, 0)
for name in ("unet_relu", "cbam_dc_unet"):
    model, history, _ = uf.train_model(name, data["train"], data["val"], settings, "cpu", 0)
    show(f"fit/{name}", t0, IoU=uf.evaluate(model, data["test"], settings, "cpu")["IoU"],
         train_loss=history.rows[-1]["train_loss"])

t0 = time.perf_counter()  # train_detector: Faster R-CNN, 40 steps on BCCD (bench_cpu recipe)
knobs = {**get_profile(mc.EXPERIMENT, "bench_cpu"), "iterations": 40, "time_budget_s": None,
         "eval_every_epochs": None}
splits, _ = mc.load_splits("bccd", knobs, work, 0)
splits = mc.preprocess_images(splits, knobs["preprocessing"], f"{work}/pre")
out = mc.train_and_evaluate("faster_rcnn", splits, splits, knobs, "cpu", 0, work)
show("detector/faster_rcnn", t0, mAP50=out.evaluation.metrics()["mAP50"],
     last_loss=float(out.log["loss"].iloc[-1]))

t0 = time.perf_counter()  # train_steps: R-Mask R-CNN, 15 steps on 8 SegPC images
settings = get_config(bc.EXPERIMENT, "bench_cpu", train_steps=15, time_budget_s=None,
                      max_train_images=8, max_val_images=4)
segpc = bc.load_data(settings, work, 0)
res = bc.train_and_evaluate("rmaskrcnn", segpc["train"], bc.make_eval_set(
    segpc["val"], settings.image_size), settings, "cpu", 0)
show("steps/rmaskrcnn", t0, IoU=res["metrics"]["IoU"], last_loss=res["log"].rows[-1]["loss"])

t0 = time.perf_counter()  # the GAN: 30 steps on random images
images = [(np.random.default_rng(i).random((64, 64, 3)) * 255).astype(np.uint8) for i in range(4)]
gan, hist = train_gan(images, steps=30, crop=32, batch_size=4, channels=8, blocks=1,
                      vgg_weights="random")
show("gan", t0, generator=hist.rows[-1]["generator"], discriminator=hist.rows[-1]["discriminator"],
     param_sum=float(sum(p.detach().double().sum() for p in gan.parameters())))
