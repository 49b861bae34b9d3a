# The two entry points of the README. Both install whatever is missing first (scripts/bootstrap.sh).
.PHONY: serve test setup protos lint

PY := .venv/bin/python

setup:
	bash scripts/bootstrap.sh

# Main job: check/obtain checkpoints, then start preprocess, stage 1, stage 2 and the gateway on localhost.
serve: setup
	$(PY) -m synchuman_cli ckpts ensure
	$(PY) -m synchuman_cli serve

# Tests on CPU with tiny random checkpoints (what CI runs, via .ci/run).
test: setup
	$(PY) -m ruff check .
	$(PY) -m pytest -q -p no:cacheprovider

# Python (synchuman/v1) and TypeScript (clients/typescript/src/gen, buf.gen.yaml) code from protos/.
protos:
	$(PY) scripts/gen_protos.py
	node_modules/.bin/buf generate --template buf.gen.yaml
