#!/usr/bin/env bash
# Build FlashAttention-3 (the optional "flash_attn3" attention backend of synchuman/nn/attention.py) as a wheel,
# forward kernels of head dim 64 only (the stage-1 models' attention), fp16 + bf16, Hopper (sm_90a).
#
# Usage (on a Hopper machine with nvcc >= 12.3 and torch): bench/build_flash_attn3.sh SOURCES.tar.xz OUTDIR
# SOURCES.tar.xz holds fa3src/hopper (the hopper/ folder of Dao-AILab/flash-attention), fa3src/README.md and
# fa3src/csrc/cutlass/include (NVIDIA/cutlass at the commit flash-attention pins); it is made from fetched
# sources and kept in the ignored .fa3/ folder, never committed. Install the wheel with pip; synchuman then
# uses it by itself (attention backend "auto").
set -euo pipefail
sources=$1
outdir=$2
work=${FA3_WORK:-/tmp/fa3}
rm -rf "$work" && mkdir -p "$work" "$outdir"
tar -xJf "$sources" -C "$work"
cd "$work/fa3src/hopper"
export FLASH_ATTENTION_FORCE_BUILD=TRUE FLASH_ATTENTION_DISABLE_BACKWARD=TRUE FLASH_ATTENTION_DISABLE_SPLIT=TRUE \
  FLASH_ATTENTION_DISABLE_PAGEDKV=TRUE FLASH_ATTENTION_DISABLE_APPENDKV=TRUE FLASH_ATTENTION_DISABLE_LOCAL=TRUE \
  FLASH_ATTENTION_DISABLE_SOFTCAP=TRUE FLASH_ATTENTION_DISABLE_PACKGQA=TRUE FLASH_ATTENTION_DISABLE_FP8=TRUE \
  FLASH_ATTENTION_DISABLE_VARLEN=TRUE FLASH_ATTENTION_DISABLE_CLUSTER=TRUE FLASH_ATTENTION_DISABLE_HDIM96=TRUE \
  FLASH_ATTENTION_DISABLE_HDIM128=TRUE FLASH_ATTENTION_DISABLE_HDIM192=TRUE FLASH_ATTENTION_DISABLE_HDIM256=TRUE \
  FLASH_ATTENTION_DISABLE_SM80=TRUE FLASH_ATTENTION_DISABLE_HDIMDIFF64=TRUE FLASH_ATTENTION_DISABLE_HDIMDIFF192=TRUE
export MAX_JOBS=${MAX_JOBS:-4} NVCC_THREADS=${NVCC_THREADS:-4}
started=$(date +%s)
python3 -m pip wheel . --no-build-isolation --no-deps -w "$outdir" -v > "$outdir/fa3-build.log" 2>&1 \
  || { tail -60 "$outdir/fa3-build.log"; exit 1; }
echo "FlashAttention-3 wheel built in $(( $(date +%s) - started )) s: $(ls "$outdir"/flash_attn_3-*.whl)"
