#!/usr/bin/env bash
# The GPU check (issue 25): each `full` model trains ~30 s with AMP on one GPU; steps/s,
# peak GPU memory and each notebook's projected `full` wall time go to
# results/gpu_check/gpu_check_<GPU>.json. About 5 minutes; commit the JSON.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
[ -x .venv/bin/python ] && PY=.venv/bin/python
exec "$PY" -m bloodlib.gpu_check --seconds "${SECONDS_PER_MODEL:-30}" "$@"
