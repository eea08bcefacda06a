# ptblm developer commands. `make setup` then `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch pinned for the dev/CI path only; the package itself accepts torch>=2.5. From PyPI, Linux
# gets the CUDA build (GBs); TORCH_INDEX=https://download.pytorch.org/whl/cpu takes the CPU one.
TORCH_DEV := torch==2.13.0
TORCH_INDEX ?=
# pytest-xdist processes for `make test`: the CI machine's two cores (each test uses one
# thread). Whole files to a process, so that a module's trained-run fixture is trained once.
WORKERS ?= 2

.PHONY: setup test oldest lint format bench smoke clean

setup:  ## create .venv and install ptblm (editable) with its dev tools
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_DEV)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install --quiet -e ".[dev]"
	@echo "ready: $(BIN)/ptblm --help"

test:  ## the full test suite (the real-corpus tests read ../shared/ptb), on WORKERS processes
	$(BIN)/pytest -q -n $(WORKERS) --dist loadfile

oldest:  ## the suite on the oldest releases pyproject.toml admits (PyPI's torch: a CUDA build, GBs)
	PYTHON=$(PYTHON) bash scripts/oldest.sh

lint:  ## static checks
	$(BIN)/ruff check ptblm tests scripts

format:  ## rewrite the code in the project's style
	$(BIN)/ruff format ptblm tests scripts
	$(BIN)/ruff check --fix ptblm tests scripts

bench:  ## training throughput: ptblm vs a bare PyTorch loop, fp32 and bf16, small and medium
	$(BIN)/python scripts/bench.py

smoke:  ## a 1-minute end-to-end run of the test config on ../shared/ptb (downloaded if absent)
	$(BIN)/ptblm train --config test --data-dir ../shared --max-steps 2000 --runs-dir runs --name smoke-$$(date +%s)

clean:
	rm -rf $(VENV) .venv-oldest build *.egg-info .pytest_cache .ruff_cache
