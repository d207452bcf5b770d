# StarGraph (5 arms of 9 edges, every node one letter, edges written as two letters: the task's
# letters and compact knobs): models/stargraph-teacher and models/stargraph-student.
# `make -f recipes/stargraph.mk TARGET`; the comment after each target names the committed record
# of what it builds. A teacher from random weights on a small graph (2 arms of 3), then the full
# size, then GRPO; the student distilled from the SFT teacher, then from the GRPO one. On 2 cores
# of a CPU with native bf16.
include recipes/common.mk

.PHONY: teacher-1 teacher-2 teacher-3 teacher-4 teacher student-1 student

STARGRAPH := --task stargraph --task-option arms=2 --task-option length=3 --task-option max_node=51 \
	--task-option letters=true --task-option compact=true
SFT := --sft-batch 32 --rl-steps 0 --rl-problems 8 --group 8 --temperature 0.7 --eval-n 32 \
	--threads 2 --mixed-precision auto
STUDENT := student --ratios 2,4,8,16,32 --max-tokens 160 --eval-n 16 --eval-every 500 \
	--threads 2 $(TRACES) --trace-ce 3

teacher-1:  # docs/results/stages/stargraph-teacher-1: 1500 SFT steps on 2 arms of 3, 6.1 min
	$(TRAIN) teacher $(STARGRAPH) --out $(STAGES)/stargraph-teacher-1 --layers 4 --hidden 128 \
		--sft-steps 1500 --lr 2e-3 --max-tokens 128 --eval-every 250 --seed 0 $(SFT)

teacher-2:  # docs/results/stages/stargraph-teacher-2: 1500 SFT steps on 5 arms of 9, 15.5 min
	$(TRAIN) teacher --init $(STAGES)/stargraph-teacher-1 --task-option arms=5 \
		--task-option length=9 --out $(STAGES)/stargraph-teacher-2 --sft-steps 1500 --lr 2e-3 \
		--warmup 50 --max-tokens 160 --eval-every 250 --seed 1 $(SFT)

teacher-3:  # docs/results/stages/stargraph-teacher-3: 2400 more SFT steps, 28.7 min
	$(TRAIN) teacher --init $(STAGES)/stargraph-teacher-2 --out $(STAGES)/stargraph-teacher-3 \
		--sft-steps 2400 --lr 1.5e-3 --warmup 50 --max-tokens 160 --eval-every 600 --seed 2 $(SFT)

teacher-4:  # docs/results/stages/stargraph-teacher-4: the answer as letters in a row, 2.7 min
	$(TRAIN) teacher --init $(STAGES)/stargraph-teacher-3 --task-option compact_answer=true \
		--out $(STAGES)/stargraph-teacher-4 --sft-steps 300 --lr 1e-3 --warmup 20 \
		--max-tokens 160 --eval-every 150 --seed 3 $(SFT)

teacher:  # models/stargraph-teacher: 20 GRPO steps with a KL guard, 1.7 min
	$(TRAIN) teacher --init $(STAGES)/stargraph-teacher-4 --out runs/stargraph-teacher \
		--max-tokens 160 --seed 4 $(GRPO)

student-1:  # docs/results/stages/stargraph-student-1: 1500 trace-distillation steps, 21.9 min
	$(TRAIN) $(STUDENT) --teacher $(STAGES)/stargraph-teacher-4 --out $(STAGES)/stargraph-student-1 \
		--trace-steps 1500 --distill-lr 1e-3 --seed 0

student:  # models/stargraph-student: 300 more steps from the GRPO teacher, 4.3 min
	$(TRAIN) $(STUDENT) --teacher models/stargraph-teacher --init $(STAGES)/stargraph-student-1 \
		--out runs/stargraph-student --trace-steps 300 --distill-lr 3e-4 --seed 1
