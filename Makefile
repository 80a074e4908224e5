# Two commands on a fresh machine: `make demo` and `make test` (`make test-isa`: the trained-quantity tests
# under other CPU kernels).
# Both create .venv with pip when it is missing and install the package with its test extras.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed-stamp
export HF_HUB_OFFLINE = 1

.PHONY: demo test test-isa install bench clean

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

# the tests asserting on trained quantities (marker `trained`) under the kernels of other processors: oneDNN
# capped at AVX2, then ATen's portable kernels; their margins across such variants: benchmarks/results/margins.md
test-isa: $(STAMP)
	rc=0; \
	ONEDNN_MAX_CPU_ISA=AVX2 $(BIN)/python -m pytest -n 2 -m trained tests || rc=1; \
	ATEN_CPU_CAPABILITY=default $(BIN)/python -m pytest -n 2 -m trained tests || rc=1; \
	exit $$rc

bench: $(STAMP)
	$(BIN)/python benchmarks/throughput.py

clean:
	rm -rf demo-out .pytest_cache
