"""Bad input: every row of docs/errors.md is run as written and must print exactly its line."""
import os
import re
import shlex
import shutil

import pytest
import torch

from conftest import ROOT, run_script
from data.tokenizer import load_tokenizer, padded_vocab_size
from common import save_checkpoint
from model import GPT, GPTConfig
from training import memory_available


def error_table():
    """(what was tried, command, expected output) for every row of docs/errors.md."""
    rows = []
    with open(os.path.join(ROOT, "docs", "errors.md")) as f:
        for line in f:
            cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
            if len(cells) == 3 and cells[1].startswith("`python"):
                rows.append(tuple(c.strip("`").strip() for c in cells))
    return rows


@pytest.fixture(scope="module")
def places(tiny_data, tmp_path_factory):
    """The files the placeholders of docs/errors.md name."""
    d = tmp_path_factory.mktemp("errors")
    tokenizer = str(tiny_data / "tokenizer.json")
    enc = load_tokenizer(tokenizer)
    model = GPT(GPTConfig(block_size=64, vocab_size=padded_vocab_size(enc), n_layer=1, n_head=2, n_embd=16))

    def tokenizer_copy(name):  # a copy of the real tokenizer file in a folder of its own
        os.makedirs(d / name)
        shutil.copy(tokenizer, d / name / "tokenizer.json")
        return str(d / name / "tokenizer.json")

    p = {"DIR": str(d), "DATA": str(tiny_data), "TEACHER": str(d / "teacher.pt"), "DRAFT": str(d / "draft.pt"),
         "STUDENT": str(d / "student.pt"), "CORRUPT": str(d / "corrupt.pt"), "STRANGER": str(d / "stranger.pt"),
         "CHANGED": str(d / "changed.pt"), "MOVED": str(d / "moved.pt"), "BAD_JSONL": str(d / "bad.jsonl"),
         "SHORT_RUN": str(d / "short_run.pt"), "LONG": "many words " * 40, "NO_FIELDS": str(d / "no_fields.jsonl"),
         "EMPTY": str(d / "empty.jsonl"),
         "MEMORY": f"{memory_available('cpu') / 2**30:.0f}"}
    save_checkpoint(p["TEACHER"], model, "teacher", tokenizer)
    save_checkpoint(p["DRAFT"], model, "draft", tokenizer)
    save_checkpoint(p["STUDENT"], model, "student", tokenizer, mask_id=enc.n_vocab, k_max=4, bidirectional=False,
                    step=0, args={"max_iters": 0})
    with open(p["TEACHER"], "rb") as f:
        open(p["CORRUPT"], "wb").write(f.read()[:2000])
    stranger = tokenizer_copy("stranger")
    open(stranger, "a").write(" ")
    save_checkpoint(p["STRANGER"], model, "draft", stranger)
    save_checkpoint(p["CHANGED"], model, "teacher", tokenizer_copy("changed"))
    open(d / "changed" / "tokenizer.json", "a").write(" ")
    save_checkpoint(p["MOVED"], model, "teacher", tokenizer_copy("moved"))
    os.remove(d / "moved" / "tokenizer.json")
    open(p["BAD_JSONL"], "w").write('{"question": "a", "answer": "b"}\nnot json\n')
    open(p["NO_FIELDS"], "w").write('{"text": "Mia has 3 apples."}\n')
    open(p["EMPTY"], "w").write("\n")
    r = run_script("train_ntp.py", "--data_dir", str(tiny_data), "--out", p["SHORT_RUN"], "--max_iters", "2",
                   "--eval_iters", "1", "--device", "cpu")
    assert r.returncode == 0, r.stderr[-2000:]
    return p


@pytest.mark.parametrize("what, command, expected", error_table(), ids=[row[0] for row in error_table()])
def test_a_bad_input_gets_one_line_saying_what_to_do(places, what, command, expected):
    if "--device cuda" in command and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")

    def fill(text):
        return re.sub(r"\$([A-Z_]+)", lambda m: places[m.group(1)], text)

    args = shlex.split(fill(command))
    assert args[0] == "python"
    r = run_script(*args[1:], warm=True)
    assert r.returncode == 1, (what, r.stdout[-500:], r.stderr[-2000:])
    assert r.stderr.strip() == fill(expected), what  # the whole output: one line, no traceback


def test_the_table_covers_every_kind_of_bad_input():
    tried = " ".join(row[0] for row in error_table())
    for case in ("does not exist", "corrupt", "a student where a teacher", "a teacher where a student",
                 "another tokenizer", "longer than the context", "empty prompt", "tau above 1", "tau of 0",
                 "k below 1", "k larger", "gamma below 1", "unknown device", "CUDA", "bad line",
                 "heads do not divide", "no sequences", "learning rate of 0", "infinite learning rate",
                 "final learning rate above the peak", "dropout of 1", "negative warm-up",
                 "seed too large", "no steps", "negative prefix loss", "longer than the teacher's context",
                 "no new tokens", "among no tokens", "bench of no problems", "gamma of 0", "never fill",
                 "smaller than the bytes", "no training problems", "without questions and answers", "with no problems",
                 "too long for memory"):
        assert case in tried, case
