# The two commands of the README: `make reproduce` and `make test`.
# Both create the virtual environment on first use (Python >= 3.10 is all they need).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv test reproduce bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: the suite is broken" >&2; exit 1; fi; exit $$rc

reproduce: $(STAMP)
	$(VENV)/bin/mstnet reproduce paper-table --preset cpu

bench: $(STAMP)
	$(PY) -m pytest -q benchmarks --benchmark-enable --benchmark-json=reports/benchmarks.json
	$(VENV)/bin/mstnet report --benchmarks reports/benchmarks.json --out reports/performance

clean:
	rm -rf $(VENV) .pytest_cache .benchmarks
