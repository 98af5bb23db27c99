# Every target sets up .venv/ first (a fast no-op once it is complete).
PY := .venv/bin/python

.PHONY: setup test test-fast lint demo

setup:
	bash scripts/setup_env.sh

lint: setup
	.venv/bin/ruff check .

# The whole CPU suite: lint, then every test (GPU and real-weight tests skip themselves).
test: setup
	.venv/bin/ruff check .
	$(PY) -m pytest -q

# Inner-loop variant without the tests marked slow.
test-fast: setup
	$(PY) -m pytest -q -m "not slow"

# The main job on its built-in default: toy data, untrained vs trained tiny HG model (CPU).
demo: setup
	$(PY) scripts/demo.py
