# Two commands do all set-up on a fresh machine (python3, pip and make only):
#   make quickstart   - install into .venv, run notebooks/00_quickstart.ipynb, render its report
#   make test         - install into .venv, run the test suite (all of it: what CI runs), in
#                       TEST_WORKERS processes side by side, file by file (docs/testing.md)
#   make test-quick   - the same without the tests marked slow (notebooks, longer searches)
#   make demos        - every CPU-sized demo of notebooks 01-07 end to end, recorded in docs/demos.md
# Re-running is fast: the install step re-runs only when pyproject.toml or constraints.txt change.

PYTHON ?= python3
# pytest-xdist workers of `make test`: one per core of the 2-core machines it is timed on
TEST_WORKERS ?= 2
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install quickstart test test-quick bench demos notebooks clean-venv

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -c constraints.txt -e '.[dev]'
	$(BIN)/python -m ipykernel install --sys-prefix --name rst-workbook --display-name "Python (rst-workbook)" >/dev/null
	# the templates open read-only: writes the server config, fails unless the extension is active
	$(BIN)/python -m rst_lib.workbook.jupyter_contents
	touch $(STAMP)

install: $(STAMP)

quickstart: $(STAMP)
	$(BIN)/rst-workbook run notebooks/00_quickstart.ipynb -p params/quickstart.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --durations=15

test-quick: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

bench: $(STAMP)
	$(BIN)/python bench/run.py

demos: $(STAMP)
	$(BIN)/python bench/demos.py

notebooks: $(STAMP)
	$(BIN)/python -m rst_lib.workbook.params
	$(BIN)/jupytext --sync notebooks/*.py

clean-venv:
	rm -rf $(VENV)
