#!/usr/bin/env bash
# Idempotent set-up of a fresh machine: Python venv with the project and its dev tools, the npm tools the tests
# use (buf, gltf-validator), the TypeScript client and the web page built, Debian's chromium (browser test), the
# offline default segmentation model, the rig step's pose model (ckpts/pose) and a Docker Compose v2 binary
# (compose.yaml validation, optional). Safe to run again; fast when nothing changed.
#   SYNCHUMAN_VENV   venv folder (default .venv)
#   SYNCHUMAN_TORCH  pip requirement for torch when none is installed (default: requirements/torch.txt, the CPU
#                    wheel here; on a GPU host install the CUDA build of that version into the venv first)
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
  "$py" -m pip install -q "${SYNCHUMAN_TORCH:-$(grep -v '^#' requirements/torch.txt)}"
fi
# Every other Python package at the exact version and hash of the lock (make lock writes it from pyproject.toml),
# then the project itself without resolving anything; pip check proves the set is consistent.
# The Python client package (clients/python, synchuman-client) is installed the same way: the CLI uses it.
if [ ! -f "$stamp" ] || [ requirements/dev.txt -nt "$stamp" ] || [ pyproject.toml -nt "$stamp" ] \
  || [ clients/python/pyproject.toml -nt "$stamp" ]; then
  "$py" -m pip install -q --require-hashes --no-deps -r requirements/dev.txt
  # The editable install's build backend prints notices about editable installs on every run: shown on failure.
  if ! out="$("$py" -m pip install -q --no-deps --no-build-isolation -e . -e clients/python 2>&1)"; then
    echo "$out" >&2; exit 1
  fi
  "$py" -m pip check
  touch "$stamp"
fi
if [ ! -x node_modules/.bin/buf ] || [ ! -e node_modules/gltf-validator ] || [ package.json -nt node_modules ] \
  || [ clients/typescript/package.json -nt node_modules ]; then
  npm install --no-audit --no-fund --silent
  touch node_modules
fi
# The TypeScript client (clients/typescript/dist) and the web page's bundle (gateway/web/dist), when their sources
# changed since the last build.
newer_than() { [ ! -e "$1" ] || [ -n "$(find "${@:2}" -newer "$1" -print -quit)" ]; }
if newer_than clients/typescript/dist/index.js clients/typescript/src clients/typescript/tsconfig.json; then
  npm run build --silent -w clients/typescript
fi
if newer_than gateway/web/dist/app.js gateway/web/src gateway/web/build.mjs package-lock.json; then
  node gateway/web/build.mjs
fi
# Headless Chromium for the web page's browser test (Debian's package; needs root and apt).
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium \
      >/dev/null; } || echo "bootstrap: apt-get install chromium failed; the web page test will skip (fail under CI)" >&2
  else
    echo "bootstrap: chromium not installed (apt-get install chromium); the web page test will skip (fail under CI)" >&2
  fi
fi
# A real PostgreSQL server for the job-store and multi-gateway tests (Debian's package; the tests run it as
# an unprivileged user in a temporary folder, so nothing is configured or started here).
if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 && ! command -v postgres >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql \
      >/dev/null; } || echo "bootstrap: apt-get install postgresql failed; PostgreSQL tests will skip (fail under CI)" >&2
  else
    echo "bootstrap: PostgreSQL not installed (apt-get install postgresql); its tests will skip (fail under CI)" >&2
  fi
fi
# promtool (checks and unit-tests deploy/observability's alert rules): taken out of Debian's prometheus package
# into .cache/tools/ without installing it (installing would register a Prometheus server to start).
if [ ! -x .cache/tools/promtool ] && ! command -v promtool >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && command -v dpkg-deb >/dev/null 2>&1; then
    deb_dir=$(mktemp -d) && chmod a+rwx "$deb_dir"  # apt downloads as its own user _apt
    { { [ "$(id -u)" != 0 ] || apt-get update -qq; } && (cd "$deb_dir" && apt-get download -qq prometheus >/dev/null) \
      && dpkg-deb -x "$deb_dir"/prometheus_*.deb "$deb_dir/root" && mkdir -p .cache/tools \
      && cp "$deb_dir/root/usr/bin/promtool" .cache/tools/promtool; } \
      || echo "bootstrap: promtool not installed; the alert-rule tests will skip (fail under CI)" >&2
    rm -rf "$deb_dir"
  else
    echo "bootstrap: promtool not installed (Debian's prometheus package has it); its tests will skip (fail under CI)" >&2
  fi
fi
"$py" scripts/fetch_segmenter.py
"$py" scripts/fetch_pose_model.py
"$py" scripts/fetch_compose.py || echo "bootstrap: docker-compose not installed; compose.yaml tests will skip (fail under CI)" >&2
