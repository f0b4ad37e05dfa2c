# The pipeline as file targets: a stage reruns only when what it is made from has changed.
#
#   make demo   install what is missing, then data -> teacher, draft -> student -> bench (CPU default)
#   make test   install what is missing, then run the test suite
#
# An interrupted training run keeps its checkpoint: finish it with
#   python train_ntp.py --preset teacher --resume   (then `make demo` again)

PYTHON ?= python3
DATA := data/synth

.PHONY: demo test install clean

demo: install out/bench.json
	@cat out/bench.md

install:
	@$(PYTHON) -c "import torch, numpy, tiktoken, tqdm, pytest, matplotlib" 2>/dev/null || $(PYTHON) -m pip install -r requirements.txt

$(DATA)/train.bin: data/prepare.py data/problems.py data/tokenizer.py
	$(PYTHON) data/prepare.py --out_dir $(DATA)

out/teacher.pt: $(DATA)/train.bin train_ntp.py model.py
	$(PYTHON) train_ntp.py --preset teacher

out/draft.pt: $(DATA)/train.bin train_ntp.py model.py
	$(PYTHON) train_ntp.py --preset draft

out/student.pt: out/teacher.pt distill_mtp.py
	$(PYTHON) distill_mtp.py

out/bench.json: out/teacher.pt out/draft.pt out/student.pt bench.py decode.py
	$(PYTHON) bench.py

test: install
	$(PYTHON) -m pytest -q

clean:
	rm -rf out $(DATA)
