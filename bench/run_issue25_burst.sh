#!/usr/bin/env bash
# Issue 25, item 4 on one lent GPU: 8 jobs submitted at once through the real services (gateway, preprocess,
# stage 1 and stage 2 sharing GPU 0 with the GPU turn + stage-2 claim of services/common/gpu_share.py).
#
# Run from the repository root of the device copy with .whl/ (stage-2 wheels) and .whl4/ (gRPC, gateway and
# diffusers wheels) carried, and the committed tree exported to .clean/ (git archive HEAD | tar -x -C .clean),
# so that uncommitted work of others does not travel into the numbers.
# Usage: bench/run_issue25_burst.sh [JOBS] [TIMEOUT_S]   (default 8 jobs, 470 s bench budget)
set -u
JOBS=${1:-8}
TIMEOUT_S=${2:-470}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/*.whl .whl4/*.whl || exit 1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
cd .clean || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 MAX_JOBS=16 TORCH_CUDA_ARCH_LIST=9.0
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
if [ ! -f /tmp/ckpts_full/RANDOM_WEIGHTS.json ]; then
    python3 -m synchuman_cli ckpts make-random /tmp/ckpts_full --dtype float16 --device cuda \
        >"$OUT/ckpts.log" 2>&1 || { tail -30 "$OUT/ckpts.log"; exit 1; }
fi
python3 bench/bench_deployment.py --ckpts /tmp/ckpts_full --gpus 0 --jobs "$JOBS" --kill-job 0 \
    --timeout "$TIMEOUT_S" --out "$OUT/burst.md" 2>"$OUT/services.log"
rc=$?
tail -15 "$OUT/services.log"
exit $rc
