# The two commands of the README: `make reproduce` and `make test`.
# Both create the virtual environment on first use (Python >= 3.10 is all they need).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv test reproduce bench gpu-check slurm-start slurm-stop clean

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

# On a CUDA machine: the paper preset end to end (timings, largest batch, memory, gradient
# checkpointing, one epoch, the same under torchrun on every GPU) -> reports/gpu-check/, then the
# model benchmarks in their CUDA mode (paper size, bf16; the matmul ceiling among them) ->
# reports/gpu-check/performance/. Without CUDA: "no CUDA device: skipped", exit 0.
gpu-check: $(STAMP)
	$(VENV)/bin/mstnet gpu-check --out reports/gpu-check
	@if $(PY) -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then \
		$(PY) -m pytest -q benchmarks/test_bench_model.py -k cuda --benchmark-enable \
			--benchmark-json=reports/gpu-check/benchmarks-cuda.json && \
		$(VENV)/bin/mstnet report --benchmarks reports/gpu-check/benchmarks-cuda.json --out reports/gpu-check/performance; \
	fi

# The one-node SLURM cluster of tests/test_slurm.py (as root; .ci/run starts and stops it itself).
slurm-start:
	bash scripts/slurm-local-cluster start

slurm-stop:
	bash scripts/slurm-local-cluster stop

clean:
	rm -rf $(VENV) .pytest_cache .benchmarks
