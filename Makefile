# One task runner for people and CI. Every target creates .venv on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-all bench lint format clean

# the console's browser test drives Debian's Chromium (playwright never downloads one)
CHROMIUM := /usr/bin/chromium
SUDO     := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

$(CHROMIUM):
	$(SUDO) apt-get update -q
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends \
		chromium fonts-dejavu-core

demo: $(STAMP)
	$(BIN)/vigil demo $(ARGS)

# the edit-run loop: unit and fast integration tests (under 8 minutes on 2 cores)
test: $(STAMP) $(CHROMIUM)
	$(BIN)/python -m pytest -q -m "not slow" $(ARGS)

# what CI runs: lint, then every test (slow ones included: the fault suite's short run,
# worker and rank restarts, release rounds, multi-process training)
test-all: lint $(CHROMIUM)
	$(BIN)/python -m pytest -q $(ARGS)

bench: $(STAMP)
	$(BIN)/vigil bench features --json
	mkdir -p .vigil && $(BIN)/vigil train risk --json > .vigil/train-risk.json
	$(BIN)/vigil bench scoring --json
	$(BIN)/vigil bench risk --events 20000 --json
	$(BIN)/vigil train inspection --json > .vigil/train-inspection.json
	$(BIN)/vigil bench quantization --json

lint: $(STAMP)
	$(BIN)/ruff check vigil apps streams models tests conftest.py
	$(BIN)/ruff format --check vigil apps streams models tests conftest.py

format: $(STAMP)
	$(BIN)/ruff format vigil apps streams models tests conftest.py
	$(BIN)/ruff check --fix vigil apps streams models tests conftest.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
