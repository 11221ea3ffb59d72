# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip "setuptools>=77"  # SPDX license string; test_install builds in place
	# torch first, exactly as pinned: any other spec pulls gigabytes of CUDA packages
	$(BIN)/python -m pip install -q -c constraints.txt torch
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m selfish_deploy.serving.demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -n auto --dist worksteal -m "not slow and not gpu"  # a worker per core; idle ones take queued tests

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
