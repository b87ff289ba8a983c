# Two commands do all set-up on a fresh machine (Python 3.10 + package registries):
#   make demo   creates .venv if missing, then runs the default simulation
#   make test   creates .venv if missing, then runs the test suite
PYTHON ?= $(shell command -v python3.10 2>/dev/null || echo /root/.pyenv/versions/3.10.13/bin/python)
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint bench clean

$(BIN)/fedsim: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(BIN)/fedsim

demo: $(BIN)/fedsim
	$(BIN)/fedsim run configs/quick.yaml

test: $(BIN)/fedsim
	$(BIN)/python -m pytest -q

lint: $(BIN)/fedsim
	$(BIN)/ruff check fedsim actors benchmarks tests

clean:
	rm -rf $(VENV) runs .pytest_cache
