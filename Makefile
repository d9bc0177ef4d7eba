# mrcnn_lite: every target bootstraps .venv itself, so each works from a clean clone.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.setup-done
# Extra pytest arguments, e.g. `make test ARGS="-k boxes"`.
ARGS   ?=

.PHONY: setup test demo lab clean

setup: $(STAMP)

# Re-installs only when pyproject.toml or the pinned constraints change.
$(STAMP): pyproject.toml requirements/constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c requirements/constraints.txt -e '.[dev]'
	@touch $@

test: $(STAMP)
	MPLBACKEND=Agg $(PY) -m pytest tests notebooks --nbval-lax -q -ra --durations=15 $(ARGS)

demo: $(STAMP)
	MPLBACKEND=Agg $(PY) -m mrcnn_lite shapes --out runs/demo

lab: $(STAMP)
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks

clean:
	rm -rf runs .pytest_cache .hypothesis
