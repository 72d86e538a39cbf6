# One virtual environment with the three packages installed in editable mode.
# torch is pinned to the CPU build for development and CI (the Dockerfile installs CUDA).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
TORCH ?= torch==2.13.0
DEMO_OUT ?= demo-output

.PHONY: install test demo lint bench clean

install: $(STAMP)

$(STAMP): service/pyproject.toml clients/pyproject.toml scoring/pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e "clients[dev]" -e "service[dev]" -e "scoring[dev]"
	touch $(STAMP)

test: install
	$(PY) -m pytest tests -rs  # -rs: list what was not run (GPU-only, opt-in) and why

demo: install
	$(PY) scripts/demo.py --out $(DEMO_OUT)

lint: install
	$(VENV)/bin/ruff check .

bench: install
	$(PY) bench/spine.py

# Inside the project, plus the client's result cache in the home folder (only that folder:
# a custom $$SCSTRATA_CACHE_DIR is the user's to remove).
clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache .ruff_cache
	test -z "$(HOME)" || rm -rf "$(HOME)/.cache/scstrata"
