#!/usr/bin/env bash
# Issue 25, item 3 on a lent GPU: stage-2 decode memory before / after, in one call.
#
# Run from the repository root of the device copy, with the wheels carried in .whl/ and two clean trees
# exported here first (so that uncommitted work of others in the checkout does not travel into the numbers):
#   git archive HEAD | tar -x -C .clean            # "after" (the whole repo: bench/ + package)
#   git archive HEAD synchuman | tar -x -C .before, then the changed files from the commit before the change
# Usage: bench/run_issue25_memory.sh [STEP ...]   steps: decode, or a bench_stage2_memory run (noisy, stick,
# realistic; RUN@after = that code tree only); default: noisy decode stick realistic@after
# Logs and JSON go to $OUT (when set).
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 MAX_JOBS=16 TORCH_CUDA_ARCH_LIST=9.0
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
cd .clean || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__)"
# steps run in order while time is left: each is started only if DEADLINE (s, default 560) leaves it ~60 s
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(noisy decode stick realistic@after)
DEADLINE=${DEADLINE:-560}
make=--make-random
[ -f /tmp/ckpts/SecondStage/pipeline.json ] && make=
for step in "${steps[@]}"; do
    left=$((DEADLINE - SECONDS))
    if [ "$left" -lt 60 ]; then echo "skipped $step: ${left} s left"; continue; fi
    case $step in
        decode)
            python3 bench/bench_decode_memory.py --device cuda --ckpts /tmp/ckpts --parts decoder,extract \
                --code after=. --code before=../.before --child-timeout 120 2>&1 | tee "$OUT/decode.log" ;;
        *)
            run=${step%@*}
            python3 bench/bench_stage2_memory.py --ckpts /tmp/ckpts $make --runs "$step" \
                --code after=. --code before=../.before --budget $((left - 60)) --child-timeout $((left - 20)) \
                2>&1 | tee "$OUT/$run.log"
            make= ;;
    esac
done
