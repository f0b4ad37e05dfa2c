# The pipeline as file targets: a stage reruns only when what it is made from has changed.
#
#   make demo   install what is missing, then data -> teacher, draft -> student -> bench (CPU default)
#   make test   install what is missing, then run the test suite
#   make ablations   one student per variant of the paper's ablations, then one comparison (86 min with bf16 units)
#   make demo GPU=1  the same pipeline with the one-GPU presets (torch.compile, fused AdamW, bf16 where the GPU has it, else fp16)
#   make gpu-check   run this first on a GPU: the GPU presets end to end in a few minutes (out/gpu-check)
#   make batch  after make demo: every strategy at batch sizes 1, 4, 16 and 64 (out/batch.{json,md,png})
#   make sampling  after make demo: every strategy sampling, 4 samples of each problem (out/sampling.{json,md,png})
#
# An interrupted training run keeps its checkpoint and prints the command that finishes it
# (its own flags plus --resume); run that, then `make demo` again.

PYTHON ?= python3
DATA := data/synth
ifeq ($(GPU),1)
TEACHER_PRESET := teacher_gpu
DRAFT_PRESET := draft_gpu
STUDENT_PRESET := gpu
else
TEACHER_PRESET := teacher
DRAFT_PRESET := draft
STUDENT_PRESET := cpu
endif

# Each stage's script and the modules of this project it imports, directly or through another:
# a change to any of them reruns the stage (tests/test_repository.py reads the imports and
# checks that every rule lists them).
PREPARE_PY := data/prepare.py data/problems.py data/tokenizer.py
TRAIN_PY := train_ntp.py training.py common.py model.py experiments.py data/tokenizer.py
DISTILL_PY := distill_mtp.py ablations.py training.py common.py model.py experiments.py data/tokenizer.py
BENCH_PY := bench.py decode.py tree.py gates.py compiled.py report.py common.py model.py experiments.py data/check.py \
	data/problems.py data/tokenizer.py
BATCH_PY := bench_batch.py batched.py bench.py decode.py tree.py gates.py compiled.py report.py common.py model.py experiments.py \
	data/check.py data/problems.py data/tokenizer.py

.PHONY: demo test install clean ablations gpu-check batch sampling

demo: install out/bench.json
	@cat out/bench.md

install:
	@$(PYTHON) -c "import torch, numpy, tiktoken, tqdm, pytest, xdist, matplotlib" 2>/dev/null || $(PYTHON) -m pip install -r requirements.txt

$(DATA)/train.bin: $(PREPARE_PY)
	$(PYTHON) data/prepare.py --out_dir $(DATA)

out/teacher.pt: $(DATA)/train.bin $(TRAIN_PY)
	$(PYTHON) train_ntp.py --preset $(TEACHER_PRESET)

out/draft.pt: $(DATA)/train.bin $(TRAIN_PY)
	$(PYTHON) train_ntp.py --preset $(DRAFT_PRESET)

out/student.pt: out/teacher.pt $(DISTILL_PY)
	$(PYTHON) distill_mtp.py --preset $(STUDENT_PRESET)

out/bench.json: out/teacher.pt out/draft.pt out/student.pt $(BENCH_PY)
	$(PYTHON) bench.py

# Batch sizes above 1: where each acceleration stops paying (bench_batch.py), beside a model of
# an 8B target on one GPU.
batch: install out/batch.json
	@cat out/batch.md

out/batch.json: out/teacher.pt out/draft.pt out/student.pt $(BATCH_PY)
	$(PYTHON) bench_batch.py

# Sampling at temperature T: which strategies keep the model's distribution, and what the
# student's blocks do to it (bench.py --temperature). Its picture sets each row beside its greedy
# self, from out/bench.json.
TEMPERATURE ?= 1.0
sampling: install out/sampling.json
	@cat out/sampling.md

out/sampling.json: out/teacher.pt out/draft.pt out/student.pt out/bench.json $(BENCH_PY)
	$(PYTHON) bench.py --temperature $(TEMPERATURE)

# Every GPU setting at a few hundred steps, then the bench on 50 problems three ways: plain in
# one process per core (up to 8: bench.auto_workers), plain in one process, and with the
# compiled decoder (CUDA graphs, one process): it prints training tokens/s (the "done" lines),
# decoding tokens/s and the tables, then each row's tokens/s in the three (report.py). Its models are far from trained: it checks the machinery and
# the speed, not accuracy.
CHECK := out/gpu-check
CHECK_ITERS ?= 300
CHECK_N ?= 50
DEVICE ?= auto
CHECK_BENCH = --n $(CHECK_N) --n_uncached 10 --static_k 1,3 --taus 0.9 --gammas 4 --device $(DEVICE) \
	--teacher $(CHECK)/teacher.pt --draft $(CHECK)/draft.pt --student $(CHECK)/student.pt
gpu-check: install $(DATA)/train.bin
	$(PYTHON) train_ntp.py --preset teacher_gpu --max_iters $(CHECK_ITERS) --device $(DEVICE) --out $(CHECK)/teacher.pt
	$(PYTHON) train_ntp.py --preset draft_gpu --max_iters $(CHECK_ITERS) --device $(DEVICE) --out $(CHECK)/draft.pt
	$(PYTHON) distill_mtp.py --preset gpu --max_iters $(CHECK_ITERS) --device $(DEVICE) \
		--teacher $(CHECK)/teacher.pt --out $(CHECK)/student.pt
	$(PYTHON) bench.py $(CHECK_BENCH) --out_dir $(CHECK)
	$(PYTHON) bench.py $(CHECK_BENCH) --out_dir $(CHECK)/one-process --workers 1
	$(PYTHON) bench.py $(CHECK_BENCH) --out_dir $(CHECK)/compiled --compile
	$(PYTHON) report.py $(CHECK)/one-process $(CHECK) $(CHECK)/compiled --out $(CHECK)/speeds.md

# The paper's ablations (its ablation table; our findings are in docs/ablations.md): every variant is the
# preset student with one thing changed, distilled from the same teacher with the same seed and
# steps; `main` is out/student.pt itself. `paper` drops our one departure (the prefix loss) and
# is the paper's main setting: critic, hard teacher, k ~ U[2, 8]. fixed_k trains k = k_max = 8 only.
# learned_positions is the one variant with another teacher: the same preset with GPT-2's learned
# position embeddings instead of rotary ones, and its student.
VARIANTS := main paper ground_truth soft fixed_k bidirectional learned_positions
FLAGS_paper := --prefix_loss 0
FLAGS_ground_truth := --supervision ground_truth
FLAGS_soft := --teacher_readout soft
FLAGS_fixed_k := --k_min 8 --k_max 8
FLAGS_bidirectional := --bidirectional
STUDENTS := $(VARIANTS:%=out/ablations/student_%.pt)

out/ablations/student_main.pt: out/student.pt
	mkdir -p out/ablations && cp out/student.pt $@

out/ablations/student_%.pt: out/teacher.pt $(DISTILL_PY)
	$(PYTHON) distill_mtp.py --preset $(STUDENT_PRESET) $(FLAGS_$*) --out $@

out/ablations/teacher_learned_positions.pt: $(DATA)/train.bin $(TRAIN_PY)
	$(PYTHON) train_ntp.py --preset $(TEACHER_PRESET) --no-rotary --out $@

out/ablations/student_learned_positions.pt: out/ablations/teacher_learned_positions.pt $(DISTILL_PY)
	$(PYTHON) distill_mtp.py --preset $(STUDENT_PRESET) --teacher $< --out $@

ablations: install $(STUDENTS)
	$(PYTHON) bench.py --compare $(STUDENTS) --n 400 --static_k 1,2,3,4,5 --taus 0.8,0.9,0.95,0.99 \
		--strategies ntp,static,confadapt

# Two pytest workers (pytest-xdist): without them the suite keeps one core busy at a time; with
# worksteal, one that runs out of tests takes the other's, so neither sits idle at the end.
test: install
	$(PYTHON) -m pytest -q -n 2 --dist worksteal

clean:
	rm -rf out $(DATA)
