# Every target sets up .venv/ first (a fast no-op once it is complete).
PY := .venv/bin/python

.PHONY: setup test test-fast lint demo train

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

# Training that exits non-zero when it fails (`xtuner train` exits 0 either way), e.g.
#   make train CONFIG=configs/tiny/hg_tiny_llava_toy.py ARGS="--work-dir work_dirs/tiny"
#   NPROC_PER_NODE=8 make train CONFIG=configs/... ARGS="--deepspeed deepspeed_zero2"
CONFIG ?= configs/tiny/hg_tiny_llava_toy.py
train: setup
	$(PY) scripts/train.py $(CONFIG) $(ARGS)
