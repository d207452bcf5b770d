# LinSys (3 unknowns, coefficients up to 3, values up to 5, every operation written out:
# show_work=3): models/linsys-teacher and models/linsys-student. `make -f recipes/linsys.mk TARGET`;
# the comment after each target names the committed record of what it builds. A teacher from
# random weights, then its student distilled on solver traces; every student stage distils the
# SFT teacher (the GRPO stage, `teacher`, ran beside the student's last three on the same GPU).
# The first stages ran on 2 cores of a CPU with native bf16, the later ones on a lent H200 (the
# same command picks a GPU up through accelerate), with 128 traces a step, evaluating only at
# their last step.
include recipes/common.mk

.PHONY: teacher-sft teacher student-1 student-2 student-3 student-4 student-5 student-6 student

LINSYS := --task linsys --task-option coef_max=3 --task-option value_max=5 --task-option show_work=3
STUDENT := student --teacher $(STAGES)/linsys-teacher-sft --ratios 2,4,8,16,32 --max-tokens 640 \
	--eval-n 16 --eval-every 500 --threads 2 $(TRACES)
GPU := $(STUDENT) --trace-ce 3 --trace-batch 128 --warmup 20 --distill-lr 1e-3 --eval-every 1000000 --eval-n 4

teacher-sft:  # docs/results/stages/linsys-teacher-sft: 3500 SFT steps from random weights, 88 min
	$(TRAIN) teacher $(LINSYS) --out $(STAGES)/linsys-teacher-sft --layers 4 --hidden 128 \
		--sft-steps 3500 --sft-batch 32 --lr 2e-3 --rl-steps 0 --temperature 0.7 --max-tokens 640 \
		--eval-every 500 --eval-n 32 --seed 5 --threads 2 --mixed-precision auto

teacher:  # models/linsys-teacher: 20 GRPO steps with a KL guard, 6.0 min on an H200
	$(TRAIN) teacher --init $(STAGES)/linsys-teacher-sft --out runs/linsys-teacher \
		--max-tokens 640 --seed 1 $(GRPO)

student-1:  # docs/results/stages/linsys-student-1: 1500 trace-distillation steps, 54.9 min
	$(TRAIN) $(STUDENT) --trace-ce 1 --out $(STAGES)/linsys-student-1 --trace-steps 1500 \
		--distill-lr 1e-3 --seed 0

student-2:  # docs/results/stages/linsys-student-2: 1250 more steps, trace cross-entropy 3x, 44.8 min
	$(TRAIN) $(STUDENT) --trace-ce 3 --init $(STAGES)/linsys-student-1 --out $(STAGES)/linsys-student-2 \
		--trace-steps 1250 --distill-lr 1e-3 --seed 1

student-3:  # docs/results/stages/linsys-student-3: 250 steps of 128 traces, 4.9 min on an H200
	$(TRAIN) $(STUDENT) --trace-ce 3 --init $(STAGES)/linsys-student-2 --out $(STAGES)/linsys-student-3 \
		--trace-steps 250 --trace-batch 128 --distill-lr 1e-3 --seed 2 --eval-every 1000000

student-4:  # docs/results/stages/linsys-student-4: 280 more steps, 4.7 min on an H200
	$(TRAIN) $(GPU) --init $(STAGES)/linsys-student-3 --out $(STAGES)/linsys-student-4 \
		--trace-steps 280 --seed 3

student-5:  # docs/results/stages/linsys-student-5: 540 more steps, 4.5 min on an H200
	$(TRAIN) $(GPU) --init $(STAGES)/linsys-student-4 --out $(STAGES)/linsys-student-5 \
		--trace-steps 540 --seed 4

student-6:  # docs/results/stages/linsys-student-6: 400 more steps, 3.3 min on an H200
	$(TRAIN) $(GPU) --init $(STAGES)/linsys-student-5 --out $(STAGES)/linsys-student-6 \
		--trace-steps 400 --seed 6

student:  # models/linsys-student: 240 more steps of 128 traces, 2.4 min on an H200
	$(TRAIN) $(GPU) --init $(STAGES)/linsys-student-6 --out runs/linsys-student \
		--trace-steps 240 --seed 7
