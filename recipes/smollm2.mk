# The SmolLM2 pair: SmolLM2-135M-Instruct from PyPI, a LoRA teacher fine-tuned on running sums
# (recipes/sums.py), and its LoRA beacon student; `artifact` writes models/smollm2-sums-student.
# On 2 CPU cores a step of 8 sequences takes about a minute (teacher 40 min, student ~40 min).
#   make -f recipes/smollm2.mk artifact        # the whole chain, from the PyPI download
#   make -f recipes/smollm2.mk more-student    # continue the student: K more steps (K=30)
include recipes/common.mk
SMOL := runs/smollm2
LORA := --data $(SMOL)/train.jsonl --verifier exact --lora-rank 8 --max-tokens 160 \
	--eval-every 1000 --eval-n 16 --save-every 5 --threads 2 --seed 0
K ?= 30

.PHONY: base data teacher student more-student artifact assembled eval bench fixed-budget

base:  # SmolLM2-135M-Instruct, dequantized to float32, with <beacon> (about 1 min)
	$(BC) fetch smollm2-135m-instruct --out runs/smollm2-bc

data:  # 20,000 training rows and 500 held-out rows that never occur in them
	$(PY) recipes/sums.py --n 20000 --seed 0 --out $(SMOL)/train.jsonl
	$(PY) recipes/sums.py --n 500 --seed 1 --exclude $(SMOL)/train.jsonl \
		--out $(SMOL)/held-out.jsonl

teacher: base data  # 32 LoRA SFT steps of 8 worked answers
	$(TRAIN) teacher --init runs/smollm2-bc $(LORA) --sft-steps 32 --sft-batch 8 --lr 1e-3 \
		--warmup 4 --out runs/smollm2-teacher

student: teacher  # 30 steps distilling the teacher on solver traces, ratios 2-16
	$(TRAIN) student --teacher runs/smollm2-teacher $(LORA) --ratios 2,4,8,16 --trace-steps 30 \
		--trace-batch 8 --distill-lr 1e-3 --warmup 3 --out runs/smollm2-student

more-student:  # continue the student run K steps past where it ended
	$(TRAIN) student --resume --extend-steps $(K) --out runs/smollm2-student

artifact:  # the adapters (teacher + student) over the PyPI base: what models/ holds
	$(BC) adapter export --run runs/smollm2-student --out models/smollm2-sums-student

# Assemble the artifact (and its teacher layer) and measure them on 32 held-out rows: what
# docs/results.md reports ("SmolLM2-135M-Instruct"). On 2 CPU cores: `eval` about 50 minutes,
# `bench` about 55; `fixed-budget` has not been run.
ART := models/smollm2-sums-student
S := runs/smollm2-sums-student
T := runs/smollm2-sums-teacher
HELD := --data $(SMOL)/held-out.jsonl --verifier exact --seed 1234 --max-tokens 160 --n 32
BASELINES := random,streaming,streaming-sinks,tova,h2o,snapkv,rkv
BUDGETS := 96 128  # the --combine line names each budget's file

assembled:
	$(BC) adapter assemble $(ART) --out $(S)
	$(BC) adapter assemble $(ART) --upto smollm2-teacher --out $(T)

eval: assembled data  # the teacher; the student at c=8 against every baseline; c=2, 4, 16
	$(BC) eval --model $(T) $(HELD) --ratios none --baselines '' --out $(ART)/teacher-results.json
	$(BC) eval --model $(S) $(HELD) --ratios 8 --baselines $(BASELINES) --kl \
		--baseline-model $(T) --out $(ART)/vs-baselines.json
	$(BC) eval --model $(S) $(HELD) --ratios 2,4,16 --baselines '' --kl --baseline-model $(T) \
		--out $(ART)/results-c2-c4-c16.json

bench: assembled  # stock vLLM against the plugin (off, c=4/8/16) on one KV-bound pool
	$(PY) loadtests/bench_plugin.py --model $(S) --requests 24 --max-tokens 1024 \
		--pool-blocks 44 --rounds 2

fixed-budget: assembled data  # not run yet: the sweep at B=96 and 128
	for B in $(BUDGETS); do $(BC) eval --model $(S) $(HELD) --ratios 4,8,16 \
		--baselines $(BASELINES) --baseline-model $(T) --budgets $$B \
		--out docs/results/smollm2-fixed-budget-B$$B.json || exit 1; done
	$(BC) eval --combine docs/results/smollm2-fixed-budget-B96.json,docs/results/smollm2-fixed-budget-B128.json \
		--out docs/results/smollm2-fixed-budget.json

# The next student's task (recipes/two_sums.py): list A's total is needed ~200 tokens after it
# was written, beyond every sliding window at a c=8 student's KV. Measured so far
# (docs/results-log.md, "SmolLM2: a task no window solves"): `two-sums-teacher` (18 min on 2
# cores) scores 87.5% held out and every training-free baseline 0% at 184 entries
# (`two-sums-probe`, 15 min). `two-sums-student` ran 330 of its 420 steps here (1 h 45 min,
# 15-21 s a step) and scores 0% at every ratio (`two-sums-eval`, 32 min): it needs a GPU.
TWO := runs/two-sums
TWO_COMMON := --data $(TWO)/train.jsonl --verifier exact --max-tokens 300 --mixed-precision auto \
	--threads 2 --seed 0
TWO_HELD := --data $(TWO)/held-out.jsonl --verifier exact --seed 1234 --max-tokens 300 --n 32
# Flags appended to the teacher's and the student's commands (argparse keeps a repeated flag's
# last value): how a GPU run changes the batch, steps and time limit (loadtests/gpu_train.sh).
TWO_TEACHER_EXTRA :=
TWO_STUDENT_EXTRA :=
# The pair `two-sums-probe` and `two-sums-eval` score, and where their JSON goes (a GPU run's
# assembled pair: TWO_T=runs/gpu-two-sums-teacher TWO_S=... TWO_OUT=docs/results/smollm2-gpu-two-sums).
TWO_T := runs/two-sums-teacher
TWO_S := runs/two-sums-student
TWO_OUT := docs/results/smollm2-two-sums

.PHONY: two-sums-data two-sums-teacher two-sums-probe two-sums-student two-sums-continue \
	two-sums-eval two-sums-gap gpu-train-pack

two-sums-data:  # 20,000 training rows, list B of 22-26 numbers; 500 held out
	$(PY) recipes/two_sums.py --n 20000 --seed 0 --b-lengths 22,26 --out $(TWO)/train.jsonl
	$(PY) recipes/two_sums.py --n 500 --seed 1 --b-lengths 22,26 \
		--exclude $(TWO)/train.jsonl --out $(TWO)/held-out.jsonl

two-sums-teacher: base two-sums-data  # 120 LoRA (rank 8) SFT steps of 8 worked answers
	$(TRAIN) teacher --init runs/smollm2-bc $(TWO_COMMON) --lora-rank 8 --sft-steps 120 \
		--sft-batch 8 --lr 1e-3 --warmup 8 --eval-every 1000 --eval-n 32 --save-every 20 \
		--out runs/two-sums-teacher $(TWO_TEACHER_EXTRA)

two-sums-probe: two-sums-data  # the teacher held out; every baseline at 184 entries
	$(BC) eval --model $(TWO_T) $(TWO_HELD) --ratios none --baselines '' \
		--out $(TWO_OUT)-teacher.json
	$(BC) eval --model $(TWO_T) $(TWO_HELD) --ratios none --baselines $(BASELINES) \
		--budgets 184 --out $(TWO_OUT)-baselines-B184.json

TWO_STUDENT := $(TWO_COMMON) --lora-rank 16 --ratios 2,4,8,16 --trace-steps 420 --trace-batch 8 \
	--trace-ce 1.0 --distill-lr 1e-3 --warmup 10 --eval-every 1000 --eval-n 16 --save-every 10

two-sums-student: two-sums-teacher  # 420 LoRA (rank 16) steps on solver traces: KL + cross-entropy
	$(TRAIN) student --teacher runs/two-sums-teacher $(TWO_STUDENT) --out runs/two-sums-student \
		$(TWO_STUDENT_EXTRA)

# Continue a two-sums student made elsewhere (a lent GPU's OUT/two-sums-student) from its adapter
# artifact TWO_FROM: its teacher and student are assembled over the base, and a new LoRA layer
# trains on the student with the same flags. `adapter export --run $(TWO_NEXT)` then writes the
# artifact's layers plus this one. A layer's name must be new to the lineage, so the run is named
# by its place in it, TWO_LAYER (the artifact's layer count plus one), which also seeds it: it
# draws other traces than the runs below it (loadtests/gpu/train_pack.py sets both on a GPU).
TWO_FROM := runs/gpu-two-sums-artifact
TWO_LAYER := 3
TWO_NEXT := runs/two-sums-student-$(TWO_LAYER)
two-sums-continue: base two-sums-data
	$(BC) adapter assemble $(TWO_FROM) --base runs/smollm2-bc --upto two-sums-teacher \
		--out runs/two-sums-from-teacher
	$(BC) adapter assemble $(TWO_FROM) --base runs/smollm2-bc --out runs/two-sums-from-student
	$(TRAIN) student --teacher runs/two-sums-from-teacher --init runs/two-sums-from-student \
		$(TWO_STUDENT) --seed $(TWO_LAYER) --out $(TWO_NEXT) $(TWO_STUDENT_EXTRA)

two-sums-eval: two-sums-data  # the student: c=8 against every baseline at its peaks; 2, 4, 16; none
	$(BC) eval --model $(TWO_S) $(TWO_HELD) --ratios 8 --baselines $(BASELINES) --kl \
		--baseline-model $(TWO_T) --out $(TWO_OUT)-vs-baselines.json
	$(BC) eval --model $(TWO_S) $(TWO_HELD) --ratios 2,4,16 --baselines '' --kl \
		--baseline-model $(TWO_T) --out $(TWO_OUT)-c2-c4-c16.json
	$(BC) eval --model $(TWO_S) $(TWO_HELD) --ratios none --baselines '' \
		--out $(TWO_OUT)-student-uncompressed.json

# The four-layer CPU student's held-out scores against its steps in all, and the targets
# (docs/results/smollm2-two-sums-gap.png): the eval JSONs of each layer, committed. Named apart
# from TWO_OUT, which a GPU run points elsewhere: these files are the CPU lineage's.
R2 := docs/results/smollm2-two-sums
two-sums-gap:
	$(PY) recipes/plot_gap.py $(R2)-gap.png --teacher $(R2)-teacher.json \
		330=$(R2)-student-uncompressed.json,$(R2)-c2-c4-c16.json,$(R2)-vs-baselines.json \
		480=$(R2)-ce3.json 600=$(R2)-plain.json 787=$(R2)-plain2.json

# On a lent GPU (docs/training.md, "On a lent GPU"): the same teacher, and the student with 32
# traces a step for at most 5 minutes. `gpu-train-pack` writes .gpu-train/ (the base in parts
# sized to what a call carries beside the working tree; three wheels; these commands) and prints
# the calls that carry it; loadtests/gpu_train.sh runs it there. Not run on a GPU yet: the step
# count is a guess the first run's log will correct. A quarter of the student's sequences go
# without beacons (`--plain-share`): without them the CPU student unlearnt the uncompressed task
# (0%); with them two continuations got it back to 84.4% (docs/results-log.md, part 6).
GPU_TEACHER := --threads 16
GPU_STUDENT := --threads 16 --trace-batch 32 --trace-steps 700 --save-every 1000 --max-minutes 5 \
	--plain-share 0.25
GPU_FROM :=
gpu-train-pack:  # GPU_FROM=<an artifact a GPU run returned>: continue that student instead
	$(PY) loadtests/gpu/train_pack.py build \
		--teacher-extra "$(GPU_TEACHER)" --student-extra "$(GPU_STUDENT)" \
		$(if $(GPU_FROM),--continue-from $(GPU_FROM))
