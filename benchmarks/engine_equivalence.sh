#!/bin/bash
# Issue 25: one short run per training track (fit, detector, train_steps, GAN) with fixed
# steps and no time budgets, so two trees (old loops vs the one loop) can be compared:
#   git worktree add /tmp/old <commit>; benchmarks/engine_equivalence.sh /tmp/old /tmp/eq/old
#   benchmarks/engine_equivalence.sh "$PWD" /tmp/eq/new; diff -r /tmp/eq/old /tmp/eq/new
# (BCCD and SegPC-2021 in $BLOODLIB_DATA; the trained detector goes to OUT/models).
set -e
cd "$1"; OUT=$2; mkdir -p $OUT
export BLOODLIB_MODELS=$OUT/models BLOODLIB_DATA=${BLOODLIB_DATA:-data} PYTHONPATH="$1" OMP_NUM_THREADS=2
PY=${PYTHON:-python}
t0=$(date +%s)
$PY benchmarks/unet_family_table5.py quick $OUT/fit "models=['unet_relu','cbam_dc_unet']" time_budget_s=None epochs=3 2>&1 | grep -E "^(U-Net|CBAM)" > $OUT/fit.txt
t1=$(date +%s)
$PY benchmarks/detection_one_model.py faster_rcnn 3600 40 2 $OUT/det 2>&1 | grep -E "mAP50\"|steps/epochs" > $OUT/det.txt
t2=$(date +%s)
$PY benchmarks/segpc_maskrcnn.py rmaskrcnn 3600 2 $OUT/steps train_steps=15 max_train_images=8 max_val_images=4 2>&1 | grep -E "^\{|steps in" > $OUT/steps.txt
t3=$(date +%s)
$PY -c "
import numpy as np, torch
from bloodlib.models.rens_gan import train_gan
imgs=[(np.random.default_rng(i).random((64,64,3))*255).astype(np.uint8) for i in range(4)]
g,h=train_gan(imgs,steps=30,crop=32,batch_size=4,channels=8,blocks=1,vgg_weights='random')
r=h.rows[-1]; print({k: round(r[k],6) for k in ('generator','discriminator','pixel')})
print('param sum', round(float(sum(p.double().sum() for p in g.parameters())),6))
" > $OUT/gan.txt
t4=$(date +%s)
echo "seconds fit $((t1-t0)) det $((t2-t1)) steps $((t3-t2)) gan $((t4-t3))" > $OUT/times.txt
