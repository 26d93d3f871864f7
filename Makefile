# Two commands do everything on a fresh machine:
#   make demo   - set up, train a small digits classifier, unlearn one class, print the before/after report
#   make test   - set up and run the test suite
# Set-up creates .venv if missing (or uses the virtual environment you have activated) and installs
# torch==2.13.0 first, unless a torch build (e.g. a CUDA one) is already importable there, which is kept.
VENV ?= $(if $(VIRTUAL_ENV),$(VIRTUAL_ENV),.venv)
PYTHON := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.hf-unlearn-installed

.PHONY: setup demo test benchmark lint

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PYTHON) || python3 -m venv $(VENV)
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install -q "$(TORCH_SPEC)"
	$(PYTHON) -m pip install -q -c constraints.txt -e ".[dev]"
	@touch $(STAMP)

demo: setup
	HF_HUB_OFFLINE=1 $(PYTHON) -m hf_unlearn.examples.demo

test: setup
	HF_HUB_OFFLINE=1 $(PYTHON) -m pytest -q

benchmark: setup
	HF_HUB_OFFLINE=1 $(PYTHON) benchmarks/digits.py --output benchmarks/results/digits.md

lint: setup
	$(PYTHON) -m ruff check hf_unlearn tests benchmarks
