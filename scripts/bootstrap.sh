#!/usr/bin/env bash
# Idempotent set-up of a fresh machine: Python venv with the project and its dev tools, the npm tools the tests
# use (buf, gltf-validator), the offline default segmentation model and a Docker Compose v2 binary (compose.yaml
# validation, optional). Safe to run again; fast when nothing changed.
#   SYNCHUMAN_VENV   venv folder (default .venv)
#   SYNCHUMAN_TORCH  pip requirement for torch when none is installed (default torch==2.13.0: the CPU wheel here;
#                    on a GPU host install the CUDA build you want into the venv first)
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${SYNCHUMAN_VENV:-.venv}"
py="$venv/bin/python"
stamp="$venv/.synchuman-installed"

if [ ! -x "$py" ]; then
  python3 -m venv "$venv"
  "$py" -m pip install -q -U pip
fi
if ! "$py" -c "import torch" 2>/dev/null; then
  "$py" -m pip install -q "${SYNCHUMAN_TORCH:-torch==2.13.0}"
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  "$py" -m pip install -q -e ".[dev]"
  touch "$stamp"
fi
if [ ! -x node_modules/.bin/buf ] || [ ! -e node_modules/gltf-validator ] || [ package.json -nt node_modules ]; then
  npm install --no-audit --no-fund --silent
  touch node_modules
fi
"$py" scripts/fetch_segmenter.py
"$py" scripts/fetch_compose.py || echo "bootstrap: docker-compose not installed; compose.yaml tests will skip (fail under CI)" >&2
