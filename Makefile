# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
TORCH_VERSION ?= 2.13.0
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test lint fuzz bench-load demo demo-assets clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned: a bare `torch` requirement would pull the newest CUDA build.
	$(PY) -m pip install --quiet "torch==$(TORCH_VERSION)"
	$(PY) -m pip install --quiet -e ".[dev]"
	# The Ray tests (tests/integrations/ray) need the optional `ray` extra (~740 MB).
	$(PY) -m pip install --quiet -e ".[ray]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m ruff check featureguard integrations tests bench
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check featureguard integrations tests bench
	$(PY) -m ruff format --check featureguard integrations tests bench

# The nightly fuzzing run: only the `fuzz` tests, 20x the examples of `make test` (profile
# `fuzz`, tests/conftest.py), with each test's real count of cases printed at the end
# (240,000 cases, about 17 min on 2 cores; FUZZ_ARGS="-k sae" narrows it).
fuzz: $(STAMP)
	FEATUREGUARD_FUZZ=1 $(PY) -m pytest -q -m fuzz --hypothesis-show-statistics $(FUZZ_ARGS)

# The bundled demo: the shipped model and SAE under log, block and suppress (under a minute).
demo: $(STAMP)
	$(PY) -m featureguard demo

# Rebuild the demo's model, tokenizer, SAE and policies from scratch, seeded (2 cores: < 60 min).
demo-assets: $(STAMP)
	$(PY) -m featureguard.demo.build --scale full --out .

bench-load: $(STAMP)
	$(PY) bench/load_memory.py

clean:
	rm -rf $(VENV) build *.egg-info
