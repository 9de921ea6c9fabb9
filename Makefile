# The few commands a person runs. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
SCHEMA := .cog/openapi_schema.json
WEIGHTS_DIR ?= weights
TINY_WEIGHTS_DIR ?= .cache/tiny-weights
PROMPT ?= lofi hip hop beat with warm piano
PORT ?= 5000
# predictions served at once; an image built by `cog build` takes it from predict.py's @concurrent(max=8),
# a server started here reads only COG_MAX_CONCURRENCY
CONCURRENCY ?= 8
PLAYGROUND_HOST ?= 127.0.0.1
PLAYGROUND_PORT ?= 7860
# the playground's own server runs on WEIGHTS_DIR when one is given, else on tiny random weights (as `make demo`)
PLAYGROUND_WEIGHTS = $(if $(filter file,$(origin WEIGHTS_DIR)),$(TINY_WEIGHTS_DIR),$(WEIGHTS_DIR))
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# the predictor `make serve` runs (the tests put stubs in its place)
COG_PREDICT_TYPE_STUB ?= predict.py:Predictor
# make passes no signal on when it is killed (SIGKILL): the kernel then sends the command SIGTERM
# (util-linux's setpriv sets its parent-death signal), so that nothing make started outlives it
WITH_MAKE := setpriv --pdeathsig TERM
export WEIGHTS_DIR PLAYGROUND_HOST PLAYGROUND_PORT

.PHONY: help setup system-packages test test-fast lint mutants weights tiny-weights predict demo serve playground schema bench lock

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

setup: system-packages $(VENV)/.installed  ## create .venv with the pinned stack; install ffmpeg, chromium and tini if missing

# ffmpeg (mp3); chromium, the browser the playground's page tests drive (headless); tini, the
# image's entry point, which `make serve` runs under too
system-packages:
	@missing="$$(for tool in ffmpeg chromium tini; do command -v $$tool >/dev/null || echo $$tool; done)"; \
	  [ -z "$$missing" ] || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq $$missing; }

$(VENV)/.installed: requirements.txt requirements-nodeps.txt requirements-test.txt requirements-playground.txt
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -r requirements-test.txt -r requirements-playground.txt
	$(PY) -m pip install -q --no-deps -r requirements-nodeps.txt
	touch $@

test: lint  ## lint, then the whole test suite (CI runs exactly this)
	$(PY) -m pytest

test-fast: setup  ## the suite without the soak, the fuzz and the server restarts: the edit loop
	$(PY) -m pytest -m "not slow"

lint: setup  ## ruff (lint and format check) and mypy over the package, tests and benches
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

mutants: setup  ## mutation testing (mutmut) of the core modules, each against its own tests: MODULES="steps drain" for some (docs/mutants.md)
	$(PY) -m tests.mutants $(MODULES)

weights: setup  ## fetch every real asset into WEIGHTS_DIR: pinned in its assets.lock.json, verified, resumable
	$(PY) -m musicgen_cog.commands.fetch_weights $(WEIGHTS_DIR)

tiny-weights: setup  ## write random tiny weights in the real layout to WEIGHTS_DIR
	$(PY) -m musicgen_cog.commands.tiny_weights $(WEIGHTS_DIR)

predict: setup  ## one prediction with the weights in WEIGHTS_DIR: make predict ARGS='-i prompt="..." -i duration=8'
	$(WITH_MAKE) $(PY) -m musicgen_cog.commands.cog_predict $(ARGS)

demo: setup  ## fresh machine, no weights: tiny random weights, then one prediction (noise, not music)
	[ -f $(TINY_WEIGHTS_DIR)/trained_model.tar ] || $(PY) -m musicgen_cog.commands.tiny_weights $(TINY_WEIGHTS_DIR)
	WEIGHTS_DIR=$(TINY_WEIGHTS_DIR) $(WITH_MAKE) $(PY) -m musicgen_cog.commands.cog_predict -i prompt="$(PROMPT)" -i duration=8 -o outputs/demo.wav

bench: setup  ## benchmarks (figures go in docs/benchmarks.md): boot, the path's proof, first request, concurrency, step breakdown, interference, stage memory, load, speed (last line: speedup)
	$(PY) -m bench.setup_time
	$(PY) -m bench.proof tiny
	MUSICGEN_DECODER=batched $(PY) -m bench.proof tiny
	COG_MAX_CONCURRENCY=1 $(PY) -m bench.proof full
	$(PY) -m bench.first_request
	$(PY) -m bench.concurrency
	$(PY) -m bench.steps
	$(PY) -m bench.interference
	$(PY) -m bench.stage_memory
	$(PY) -m bench.memory_table
	$(PY) -m bench.load
	$(PY) -m bench.decode_speed

schema: setup  ## write .cog/openapi_schema.json from predict.py, as `cog build` does
	$(PY) -m musicgen_cog.commands.schema

# What serve needs: rewritten only when what it is read from changed (predict.py's inputs, the writer,
# the installed cog), since importing predict.py for it takes seconds at every start
$(SCHEMA): predict.py musicgen_cog/api/cog_schema.py musicgen_cog/commands/schema.py $(VENV)/.installed
	$(PY) -m musicgen_cog.commands.schema

# As deploy/ runs the image: under tini, coglet's process deciding what each stop signal means, so that
# SIGTERM drains the predictions in flight, then stops (docs/signals.md); tini's -p passes SIGINT (stop
# at once) on to it if make is killed.
serve: system-packages $(SCHEMA)  ## the real Cog HTTP server (coglet) on 127.0.0.1:$(PORT), weights from WEIGHTS_DIR (+ COG_WEIGHTS)
	PATH="$(abspath $(VENV))/bin:$$PATH" COG_PREDICT_TYPE_STUB=$(COG_PREDICT_TYPE_STUB) PORT=$(PORT) \
	  COG_MAX_CONCURRENCY=$(CONCURRENCY) exec tini -p SIGINT -- $(PY) -m musicgen_cog.commands.serve --host 127.0.0.1 $(SERVE_ARGS)

playground: setup  ## the browser playground on 127.0.0.1:7860 (PLAYGROUND_HOST, PLAYGROUND_PORT) with its own server; SERVER_URL=http://... for a running one
ifeq ($(SERVER_URL),)
	[ "$(PLAYGROUND_WEIGHTS)" != "$(TINY_WEIGHTS_DIR)" ] || [ -f $(TINY_WEIGHTS_DIR)/trained_model.tar ] || \
	  $(PY) -m musicgen_cog.commands.tiny_weights $(TINY_WEIGHTS_DIR)
	$(WITH_MAKE) $(PY) -m playground --weights $(PLAYGROUND_WEIGHTS)
else
	$(WITH_MAKE) $(PY) -m playground --server $(SERVER_URL)
endif

lock:  ## re-resolve the stack into requirements.txt (review the diff before committing)
	rm -rf /tmp/musicgen-lock && $(PYTHON) -m venv /tmp/musicgen-lock
	/tmp/musicgen-lock/bin/pip install -q torch==2.11.0 torchaudio==2.11.0 av einops flashy omegaconf hydra-core \
	  julius num2words numpy sentencepiece spacy huggingface_hub tqdm transformers xformers demucs librosa \
	  torchmetrics soundfile pydub pyloudnorm cog requests
	{ sed -n '1,3p' requirements.txt; /tmp/musicgen-lock/bin/pip freeze; } > requirements.txt.new
	mv requirements.txt.new requirements.txt
