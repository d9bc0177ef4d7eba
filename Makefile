# mrcnn_lite: every target bootstraps .venv itself, so each works from a clean clone.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.setup-done
# Extra pytest arguments, e.g. `make test ARGS="-k boxes"`.
ARGS   ?=

.PHONY: setup test test-heavy test-fast demo lab clean

setup: $(STAMP)

# Re-installs only when pyproject.toml or the pinned constraints change.
$(STAMP): pyproject.toml requirements/constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c requirements/constraints.txt -e '.[dev,teach,book]'
	@touch $@

# One torch thread per process: the two xdist workers (and the notebook kernels they start) then share
# 2 cores without oversubscription, which stalled notebook kernels for minutes (threads spinning on busy
# cores). `make test TEST_THREADS=4` to change.
TEST_THREADS ?= 1
# Every test and every notebook except the ones marked heavy: under 10 minutes on 2 cores, install included.
test: $(STAMP)
	MPLBACKEND=Agg OMP_NUM_THREADS=$(TEST_THREADS) $(PY) -m pytest tests notebooks --nbval-lax -n 2 --dist loadfile -q -ra -m "not heavy" --durations=15 $(ARGS)

# The end-to-end runs marked heavy (each a minute or more): every untouched student copy graded and run as
# written, nbgrader's generate_assignment + autograde, the ablation runner, resuming a killed run, 6000x4000
# images, DDP, the benches, the book in Chromium, the wheel in a fresh venv. CI runs them after `make test`.
test-heavy: $(STAMP)
	MPLBACKEND=Agg OMP_NUM_THREADS=$(TEST_THREADS) $(PY) -m pytest tests -n 2 --dist loadfile -q -ra -m heavy --durations=15 $(ARGS)

# The quick loop while developing: the unit tests without the ones marked slow (training runs, the
# float64 ResNet-50 comparisons, the benches) and without executing the notebooks. `make test` runs all.
test-fast: $(STAMP)
	MPLBACKEND=Agg OMP_NUM_THREADS=$(TEST_THREADS) $(PY) -m pytest tests -m "not slow" -n 2 --dist loadfile -q -ra --durations=10 $(ARGS)

# Train the tiny model on generated shapes (held-out AP printed at the end), then evaluate the
# checkpoint through the COCO path on a held-out split exported as PNG + JSON: ShapesDataset(100, seed=99),
# the split of every held-out number in the course (`shapes --seed S` writes its val split with seed S + 1).
demo: $(STAMP)
	MPLBACKEND=Agg $(PY) -m mrcnn_lite train --config tiny-shapes --out runs/demo --threads 2
	MPLBACKEND=Agg $(PY) -m mrcnn_lite shapes --out runs/demo/heldout --num-train 0 --num-val 100 --seed 98
	MPLBACKEND=Agg $(PY) -m mrcnn_lite evaluate --checkpoint runs/demo/checkpoint.pt --threads 2 \
		--images runs/demo/heldout/val/images --annotations runs/demo/heldout/val/annotations.json \
		--out runs/demo/heldout_metrics.json

lab: $(STAMP)
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks

clean:
	rm -rf runs .pytest_cache .hypothesis

# The course as a static book (docs/build_book.py): executes every notebook with the default settings, 2 at
# a time with one thread each, fails on any notebook error, and renders build/book/html/index.html with
# Sphinx + myst-nb (the `book` extra, which `make setup` installs with the rest).
.PHONY: book
book: $(STAMP)
	$(PY) docs/build_book.py --jobs 2 --out build/book
