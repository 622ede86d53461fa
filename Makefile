# The two commands a newcomer runs: `make demo` and `make test`. Each sets itself up.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
# CPU machines get the CPU build of torch (an unpinned torch pulls a multi-GB CUDA build).
TORCH_CPU ?= torch==2.13.0
STAMP  := $(VENV)/.setup-done

.PHONY: setup test lint demo clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
	  echo "GPU found: keeping pip's default torch"; \
	else \
	  $(PIP) install -q "$(TORCH_CPU)"; \
	fi
	$(PIP) install -q -e ".[test]"
	touch $(STAMP)

lint: setup
	$(VENV)/bin/ruff check nvlm_train tests bench tools

test: setup lint
	$(VENV)/bin/pytest -q tests

demo: setup
	$(PY) -m nvlm_train.cli.demo

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
