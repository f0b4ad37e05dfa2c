"""The dataset: what the generator promises, the tokenizer, the splits, and user files."""
import json
import random
import re

import numpy as np
import pytest

from conftest import run_script
from data import problems
from data.tokenizer import EOT, load_tokenizer, padded_vocab_size


def test_the_generator_has_the_promised_breadth():
    assert len(problems.FAMILIES) >= 4
    assert len(problems.TEMPLATES) >= 20


@pytest.mark.parametrize("template", problems.TEMPLATES, ids=lambda t: t.__name__)
def test_every_template_meets_the_difficulty_floor(template):
    rng = random.Random(0)
    for _ in range(50):
        p = problems.make_problem(rng, template)
        steps = problems.STEP.findall(p["answer"])
        assert 2 <= len(steps) <= 4, p
        for a, op, b, c in steps:
            a, b, c = int(a), int(b), int(c)
            assert c == {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[op], p  # arithmetic is right
            if op == "/":
                assert a % b == 0, p  # division is exact
            assert 0 <= c <= 999, p  # intermediate results have at most 3 digits
        assert max(int(x) for x in re.findall(r"\d+", p["question"])) <= 99, p  # inputs: 2 digits
        last_line = p["answer"].splitlines()[-1]
        assert last_line == f"#### {steps[-1][3]}", p  # the answer is the last step's result


def test_all_four_operations_appear():
    ops = {op for p in problems.generate(500, seed=1) for _, op, _, _ in problems.STEP.findall(p["answer"])}
    assert ops == {"+", "-", "*", "/"}


def test_generation_is_deterministic_in_the_seed():
    assert problems.generate(100, seed=3) == problems.generate(100, seed=3)
    assert problems.generate(100, seed=3) != problems.generate(100, seed=4)


@pytest.mark.parametrize("text, expected", [
    ("#### 48", "48"),
    ("so 2 + 2 = 4\n#### 1,234", "1234"),
    ("The answer is: 17", "17"),
    ("no answer here", None),
])
def test_final_answer(text, expected):
    assert problems.final_answer(text) == expected


def test_prepare_writes_disjoint_splits(tiny_data):
    enc = load_tokenizer(str(tiny_data / "tokenizer.json"))
    train_text = enc.decode(np.fromfile(tiny_data / "train.bin", dtype=np.uint16).tolist())
    val_text = enc.decode(np.fromfile(tiny_data / "val.bin", dtype=np.uint16).tolist())
    test = [json.loads(line) for line in open(tiny_data / "test.jsonl")]
    assert len(test) == 50
    assert len({t["question"] for t in test}) == 50  # distinct test questions
    for t in test:
        assert t["question"] not in train_text and t["question"] not in val_text


def test_prepare_is_deterministic(tiny_data, tmp_path):
    r = run_script("data/prepare.py", "--out_dir", str(tmp_path), "--n_train", "2000", "--n_val", "200",
                   "--n_test", "50", "--seed", "7")
    assert r.returncode == 0, r.stderr
    for name in ("train.bin", "val.bin", "test.jsonl", "tokenizer.json"):
        assert (tmp_path / name).read_bytes() == (tiny_data / name).read_bytes(), name


@pytest.mark.parametrize("text", [
    "Question: Mia buys 4 pens at 12 dollars each.\nAnswer: 4 * 12 = 48\n#### 48",
    "unseen words: zyzzyva, naïve café, emoji 🙂, tabs\tand  spaces",
    "",
])
def test_tokenizer_round_trip(tiny_data, text):
    enc = load_tokenizer(str(tiny_data / "tokenizer.json"))
    assert enc.decode(enc.encode_ordinary(text)) == text


def test_tokenizer_keeps_digits_single_and_pads_the_vocabulary(tiny_data):
    enc = load_tokenizer(str(tiny_data / "tokenizer.json"))
    for token in enc.encode_ordinary("12 * 345 = 4140, 2026"):
        piece = enc.decode([token])
        assert not (any(c.isdigit() for c in piece) and len(piece) > 1), piece
    assert enc.encode(EOT, allowed_special={EOT}) == [enc.n_vocab - 1]
    assert padded_vocab_size(enc) % 64 == 0 and padded_vocab_size(enc) > enc.n_vocab  # free slots exist


@pytest.mark.parametrize("fields", [("question", "answer"), ("query", "response")], ids=["gsm8k", "metamathqa"])
def test_prepare_reads_user_jsonl(tmp_path, fields):
    q, a = fields
    rows = [{q: f"What is {i} plus {i}?", a: f"{i} + {i} = {2 * i}\n#### {2 * i}"} for i in range(400)]
    (tmp_path / "mine.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    r = run_script("data/prepare.py", "--input", str(tmp_path / "mine.jsonl"), "--out_dir", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    test = [json.loads(line) for line in open(tmp_path / "out" / "test.jsonl")]
    assert test and all(set(t) == {"question", "answer"} for t in test)


def test_prepare_reads_plain_text(tmp_path):
    (tmp_path / "story.txt").write_text("\n\n".join(f"Paragraph {i} of a story." for i in range(300)))
    r = run_script("data/prepare.py", "--input", str(tmp_path / "story.txt"), "--out_dir", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out" / "train.bin").stat().st_size > 0


@pytest.mark.parametrize("content, message", [
    ('{"question": "a", "answer": "b"}\nnot json\n', "line 2 is not valid JSON"),
    ('{"question": "a", "answer": "b"}\n{"prompt": "a"}\n', "line 2 needs string fields"),
    ('[1, 2]\n', "line 1 is not a JSON object"),
])
def test_prepare_names_the_bad_line(tmp_path, content, message):
    (tmp_path / "bad.jsonl").write_text(content)
    r = run_script("data/prepare.py", "--input", str(tmp_path / "bad.jsonl"), "--out_dir", str(tmp_path / "out"))
    assert r.returncode != 0
    assert message in r.stderr and "Traceback" not in r.stderr


def test_prepare_reports_a_missing_input(tmp_path):
    r = run_script("data/prepare.py", "--input", str(tmp_path / "nope.jsonl"), "--out_dir", str(tmp_path / "out"))
    assert r.returncode != 0 and "does not exist" in r.stderr and "Traceback" not in r.stderr
