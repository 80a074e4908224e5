# Two commands on a fresh machine: `make demo` and `make test`.
# Both create .venv with pip when it is missing and install the package with its test extras.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed-stamp
export HF_HUB_OFFLINE = 1

.PHONY: demo test install bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" bash examples/demo.sh

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --durations=15 tests

bench: $(STAMP)
	$(BIN)/python benchmarks/throughput.py

clean:
	rm -rf demo-out .pytest_cache
