# Countdown with numbers 1..12: models/countdown-teacher and models/countdown-student.
# `make -f recipes/countdown.mk TARGET`; the comment after each target names the committed record
# of what it builds (tests/test_bundled_models.py checks the flags against it). The teacher: trained
# from random weights (teacher-1), 1200 more SFT steps (teacher-2-sft), a KL-guarded GRPO stage
# (teacher). The student: stages 1-3 distilled from teacher-1, stages 4-12 from the served teacher
# (stages 6 and 9 were not kept; 11 and 12 also train ratios that rise mid-request). Times:
# teacher-1, stage 1 and stages 11-12 on 2 cores of a CPU with native bf16 (`auto` picks bf16
# autocast there); the rest on 2 cores of an AVX2-only CPU in float32 (teacher-1 and stage 1 take
# about twice as long there).
include recipes/common.mk

.PHONY: teacher-1 teacher-2-sft teacher student-1 student-2 student-3 student-4 student-5 \
	student-7 student-8 student-10 student-11 student ablation

STUDENT := --ratios 2,4,8,16 --max-tokens 512 --eval-n 16 --eval-every 100000 --threads 2
FROM_TEACHER_1 := student --teacher $(STAGES)/countdown-teacher-1 $(STUDENT) $(TRACES)
FROM_TEACHER := student --teacher models/countdown-teacher $(STUDENT) $(TRACES)
TEACHER_FLAGS := --eval-n 64 --threads 2 --mixed-precision auto
# Stage 10 on: 300 steps of 48 traces, trace cross-entropy 10x, from the served teacher.
STAGE_10_ON := student --teacher models/countdown-teacher $(STUDENT) --trace-batch 48 --sequential \
	--warmup 30 --mixed-precision auto --trace-ce 10 --trace-steps 300 --distill-lr 2e-4

teacher-1:  # docs/results/stages/countdown-teacher-1: from random weights, 46 min
	$(TRAIN) teacher --task-option high=12 --out $(STAGES)/countdown-teacher-1 --layers 4 \
		--hidden 128 --sft-steps 2400 --sft-batch 32 --lr 2e-3 --rl-steps 20 --rl-problems 8 \
		--group 8 --temperature 0.7 --eval-every 800 --seed 0 $(TEACHER_FLAGS)

teacher-2-sft:  # docs/results/stages/countdown-teacher-2-sft: 1200 more SFT steps, 38.6 min
	$(TRAIN) teacher --init $(STAGES)/countdown-teacher-1 --out $(STAGES)/countdown-teacher-2-sft \
		--sft-steps 1200 --sft-batch 32 --lr 5e-4 --warmup 50 --rl-steps 0 --eval-every 600 \
		--seed 1 $(TEACHER_FLAGS)

teacher:  # models/countdown-teacher: 20 GRPO steps with a KL guard, 8.1 min
	$(TRAIN) teacher --init $(STAGES)/countdown-teacher-2-sft --out runs/countdown-teacher \
		--seed 1 $(GRPO)

student-1:  # docs/results/stages/countdown-student-1: 2600 distillation steps from teacher-1, 66 min
	$(TRAIN) $(FROM_TEACHER_1) --trace-ce 1 --out $(STAGES)/countdown-student-1 --trace-steps 2600 \
		--distill-lr 2e-3 --seed 0

student-2:  # docs/results/stages/countdown-student-2: 1400 more steps, 67.5 min
	$(TRAIN) $(FROM_TEACHER_1) --trace-ce 1 --init $(STAGES)/countdown-student-1 \
		--out $(STAGES)/countdown-student-2 --trace-steps 1400 --distill-lr 5e-4 --seed 1

student-3:  # docs/results/stages/countdown-student-3: 1400 more steps, 68.3 min
	$(TRAIN) $(FROM_TEACHER_1) --trace-ce 1 --init $(STAGES)/countdown-student-2 \
		--out $(STAGES)/countdown-student-3 --trace-steps 1400 --distill-lr 3e-4 --seed 2

student-4:  # docs/results/stages/countdown-student-4: 300 steps from the served teacher, 15.3 min
	$(TRAIN) $(FROM_TEACHER) --trace-ce 1 --init $(STAGES)/countdown-student-3 \
		--out $(STAGES)/countdown-student-4 --trace-steps 300 --distill-lr 3e-4 --seed 3

student-5:  # docs/results/stages/countdown-student-5: 1200 more steps, 61.2 min
	$(TRAIN) $(FROM_TEACHER) --trace-ce 1 --init $(STAGES)/countdown-student-4 \
		--out $(STAGES)/countdown-student-5 --trace-steps 1200 --distill-lr 5e-4 --seed 4

student-7:  # docs/results/stages/countdown-student-7: trace cross-entropy 3x, 13.3 min
	$(TRAIN) $(FROM_TEACHER) --trace-ce 3 --init $(STAGES)/countdown-student-5 \
		--out $(STAGES)/countdown-student-7 --trace-steps 300 --distill-lr 3e-4 --seed 7

student-8:  # docs/results/stages/countdown-student-8: 300 more steps of the same, 16.5 min
	$(TRAIN) $(FROM_TEACHER) --trace-ce 3 --init $(STAGES)/countdown-student-7 \
		--out $(STAGES)/countdown-student-8 --trace-steps 300 --distill-lr 3e-4 --seed 8

student-10:  # docs/results/stages/countdown-student-10: 300 steps, trace cross-entropy 10x, 24.8 min
	$(TRAIN) $(STAGE_10_ON) --init $(STAGES)/countdown-student-8 \
		--out $(STAGES)/countdown-student-10 --seed 11

student-11:  # docs/results/stages/countdown-student-11: a quarter of the paths rise once, 10.8 min
	$(TRAIN) $(STAGE_10_ON) --init $(STAGES)/countdown-student-10 \
		--out $(STAGES)/countdown-student-11 --seed 12 --switch-share 0.25

student:  # models/countdown-student: stage 12, half of the paths rise once, 11 min
	$(TRAIN) $(STAGE_10_ON) --init $(STAGES)/countdown-student-11 \
		--out runs/countdown-student --seed 13 --switch-share 0.5

# Joint vs sequential distillation from stage 1 under teacher-1: 20 rollout steps each, 3-5 min each.
ROLLOUTS := --init $(STAGES)/countdown-student-1 --rl-steps 20 --rl-problems 4 --group 4 \
	--temperature 0.7 --distill-lr 2e-4 --warmup 0 --seed 0
ablation:
	$(TRAIN) student --teacher $(STAGES)/countdown-teacher-1 $(STUDENT) --out runs/student-joint \
		$(ROLLOUTS)
	$(TRAIN) student --teacher $(STAGES)/countdown-teacher-1 $(STUDENT) --out runs/student-seq \
		$(ROLLOUTS) --sequential
