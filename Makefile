# Two commands do all set-up on a fresh machine (Python 3.10 + package registries):
#   make demo   creates .venv if missing, then runs the default simulation
#   make test   creates .venv if missing, then runs the test suite
# The first interpreter that really is CPython 3.10 (a pyenv shim may exist but not run).
PYTHON ?= $(shell for p in python3.10 /root/.pyenv/versions/3.10.13/bin/python \
	/usr/bin/python3.10 /usr/local/bin/python3.10; do \
	$$p -c 'import sys; sys.exit(sys.version_info[:2] != (3, 10))' 2>/dev/null \
	&& { command -v $$p; break; }; done)
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint bench clean

$(BIN)/fedsim: pyproject.toml
	@test -n "$(PYTHON)" || { echo "fedsim needs CPython 3.10 (the openfhe wheel is a 3.10 build); set PYTHON=/path/to/python3.10" >&2; exit 2; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(BIN)/fedsim

demo: $(BIN)/fedsim
	$(BIN)/fedsim run configs/quick.yaml

test: $(BIN)/fedsim
	$(BIN)/python -m pytest -q --durations=15

lint: $(BIN)/fedsim
	$(BIN)/ruff check fedsim actors benchmarks tests

clean:
	rm -rf $(VENV) runs .pytest_cache
