# Two commands for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Exact pin: on a CPU-only machine a looser spec lets pip pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
DEMO_DIR ?= demo-run

.PHONY: venv test demo bench clean

$(BIN)/nanoseg: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[test,onnx,napari]"
	touch $@

venv: $(BIN)/nanoseg

# Lint first (ruff: pyflakes, pycodestyle, import order; settings in pyproject.toml), then one
# test process per core (-n auto): the tests run one torch thread each.
test: venv
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q -n auto

demo: venv
	$(BIN)/nanoseg demo --out $(DEMO_DIR)

bench: venv
	for b in benchmarks/bench_*.py; do $(BIN)/python -m benchmarks.$$(basename $$b .py) || exit 1; done

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache
