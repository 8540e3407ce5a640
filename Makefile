# Two set-up commands: `make demo` and `make test`. Both create or reuse .venv idempotently.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
PIPC   := $(PIP) install --disable-pip-version-check -c constraints.txt
STAMP  := $(VENV)/.medtransfer-installed
DEMO_OUT ?= demo_out

.PHONY: install demo test test-fast lint format bench clean

install: $(STAMP)

# Re-run the install only when a file that defines it changed.
$(STAMP): pyproject.toml setup.py constraints.txt Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIPC) -q --upgrade pip setuptools wheel
	$(PIPC) torch==2.11.0 torchvision==0.26.0 torchaudio==2.11.0
	$(PIPC) -e ".[all,train,distributed,dev]"
	$(PY) -c "import sam2" 2>/dev/null || SAM2_BUILD_CUDA=0 $(PIPC) --no-build-isolation sam2==1.1.0
	$(VENV)/bin/medtransfer --help > /dev/null
	touch $(STAMP)

demo: install
	$(VENV)/bin/medtransfer demo --out $(DEMO_OUT)

test: install
	$(PY) -m pytest -q tests

# the quick loop while developing: everything but the slow end-to-end checks
test-fast: install
	$(PY) -m pytest -q -m "not slow" tests

# what CI checks before the tests: ruff lint + format check, mypy on the core
lint: install
	$(VENV)/bin/ruff check apps shared tests
	$(VENV)/bin/ruff format --check apps shared tests
	$(VENV)/bin/mypy

format: install
	$(VENV)/bin/ruff check --fix apps shared tests
	$(VENV)/bin/ruff format apps shared tests

bench: install
	$(VENV)/bin/medtransfer bench

clean:
	rm -rf $(DEMO_OUT) .pytest_cache
