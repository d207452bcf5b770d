# Shared by the training recipes. Run them from the repository root after `make setup`, e.g.
# `make -f recipes/countdown.mk student`. Each stage trains from the one before it (or from random
# weights, for a task's first stage) within 90 minutes on the machine that timed it, so a chain
# replays from random weights when its targets run in order. Stages are written to $(STAGES)
# (git-ignored); what each one recorded (its training config, log and evaluation) is committed in
# docs/results/stages/, and the served checkpoints in models/ link to those records.
# The interpreter and command line; a GPU machine without the venv overrides them
# (loadtests/gpu/train_pack.py records a recipe's commands with `PY=python3`).
PY := .venv/bin/python
BC := .venv/bin/breadcrumbs
TRAIN := $(BC) train
STAGES := runs/stages
# Trace distillation from a finished teacher, as every bundled student ran it. `auto` picks bf16
# autocast where the CPU computes bf16 natively, else float32 (bf16 is 10x slower on AVX2 alone).
TRACES := --trace-batch 32 --sequential --warmup 50 --mixed-precision auto
# A GRPO stage on a supervised teacher, with a KL guard (the last stage of every bundled teacher).
GRPO := --sft-steps 0 --rl-steps 20 --rl-problems 8 --group 8 --rl-lr 2e-5 --kl-coef 0.2 \
	--temperature 0.7 --eval-every 10 --eval-n 64 --threads 2 --mixed-precision auto

# `make -f recipes/<task>.mk` alone lists the targets instead of starting the first one.
.DEFAULT_GOAL := targets
.PHONY: targets
targets:
	@grep -E '^[a-z0-9-]+:' $(firstword $(MAKEFILE_LIST))
