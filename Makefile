# Two commands for a fresh clone: `make test` and `make bench`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: test bench lint wheels clean

$(INSTALLED): pyproject.toml setup.py $(wildcard src_ext/*.pyx src_ext/*.pxi src_ext/*.pxd src_ext/*.h)
	@test -x $(BIN)/python || echo "Creating the virtual environment $(VENV) ..."
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@echo "Installing spark-channels and its test extras into $(VENV): pip builds the compiled"
	@echo "core with Cython and a C compiler, which takes about a minute and prints nothing ..."
	$(BIN)/python -m pip install --quiet --editable '.[test]'
	touch $@

# The compiled core must be active: a build that silently fell back to pure
# Python fails the run (SPARK_REQUIRE_EXTENSIONS).
test: $(INSTALLED)
	SPARK_REQUIRE_EXTENSIONS=1 $(BIN)/python -m pytest

# Every scenario, side by side against asyncio.Queue: see python -m spark.bench --help.
bench: $(INSTALLED)
	$(BIN)/python -m spark.bench

lint: $(INSTALLED)
	$(BIN)/python -m mypy
	$(BIN)/python -m ruff check spark tests benchmarks
	$(BIN)/python -m ruff format --check spark tests benchmarks

# A manylinux wheel per CPython >= 3.10 that pyenv lists, each tested after
# installing it in a clean venv; `make wheels PYTHONS=python3` for just one.
wheels:
	scripts/wheels.sh $(PYTHONS)

clean:
	rm -rf $(VENV) build dist wheelhouse *.egg-info spark/nodes/*.so src_ext/*.c src_ext/*.html
