# The two entry points of the README. Both install whatever is missing first (scripts/bootstrap.sh).
.PHONY: serve test setup lock protos lint compose-test client-wheel

PY := .venv/bin/python

setup:
	bash scripts/bootstrap.sh

# Rewrite the lock files (requirements/*.txt) after a change of pyproject.toml; keeps every other pin.
# Upgrade one package: make lock ARGS="--upgrade-package grpcio-tools"; everything: make lock ARGS=--upgrade.
lock: setup
	$(PY) scripts/lock.py $(ARGS)

# Main job: check/obtain checkpoints, then start preprocess, stage 1, stage 2 and the gateway on localhost.
serve: setup
	$(PY) -m synchuman_cli ckpts ensure
	$(PY) -m synchuman_cli serve

# Tests on CPU with tiny random checkpoints (what CI runs, via .ci/run).
test: setup
	$(PY) -m ruff check .
	$(PY) -m pytest -q -p no:cacheprovider --durations=30  # the slowest tests: CI must stay within 45 minutes

# End to end through Docker (CI, after the unit tests): builds the CPU images from a clean clone, runs the compose
# stack with tiny checkpoints (tests/test_compose.py), leaves the images; times and sizes in the report.
compose-test: setup
	SYNCHUMAN_COMPOSE_E2E=1 $(PY) -m pytest -q -p no:cacheprovider -rs tests/test_compose.py; \
	status=$$?; cat .cache/compose-test/report.json 2>/dev/null; exit $$status

# Python (synchuman/v1 and its client copy clients/python/src/synchuman_client/_proto) and TypeScript
# (clients/typescript/src/gen, buf.gen.yaml) code from protos/.
protos:
	$(PY) scripts/gen_protos.py
	npm run --silent generate -w clients/typescript

# The Python client's wheel (clients/python: synchuman-client, no server code) into .cache/dist/. make test builds
# and installs the same wheel into a throwaway venv (tests/test_python_client_package.py).
client-wheel: setup
	$(PY) -m pip wheel -q --no-deps --no-build-isolation -w .cache/dist clients/python
