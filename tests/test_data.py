"""The dataset: what the generator promises, the tokenizer, the splits, and user files."""
import json
import random
import re

import numpy as np
import pytest

from conftest import run_script
from data import problems
from data.check import check_answer
from data.tokenizer import EOT, load_tokenizer, padded_vocab_size


def test_the_generator_has_the_promised_breadth():
    assert len(problems.FAMILIES) >= 6
    assert len(problems.TEMPLATES) >= 24


@pytest.mark.parametrize("template", problems.TEMPLATES, ids=lambda t: t.__name__)
def test_every_template_meets_the_difficulty_floor(template):
    rng = random.Random(0)
    for _ in range(50):
        p = problems.make_problem(rng, template)
        checked = check_answer(p["question"], p["answer"])
        assert checked.well_formed, (checked.problem, p)
        assert 2 <= len(checked.steps) <= 4, p
        for a, op, b, c, right in checked.steps:
            assert right, p  # the arithmetic and its working are right
            if op == "/":
                assert a % b == 0, p  # division is exact
            assert 0 <= c <= 999, p  # intermediate results have at most 3 digits
        assert max(int(x) for x in re.findall(r"\d+", p["question"])) <= 99, p  # inputs: 2 digits
        assert p["answer"].splitlines()[-1] == f"#### {checked.steps[-1][3]}", p  # the last step's result


def test_all_four_operations_appear():
    ops = {s[1] for p in problems.generate(500, seed=1) for s in check_answer(p["question"], p["answer"]).steps}
    assert ops == {"+", "-", "*", "/"}


def test_generation_is_deterministic_in_the_seed():
    assert problems.generate(100, seed=3) == problems.generate(100, seed=3)
    assert problems.generate(100, seed=3) != problems.generate(100, seed=4)


# --- the answers branch: the question fixes the answer, not the text ---

def solutions(template, n_texts=400, seed=0):
    """One question of `template` and `n_texts` solutions written for it with different seeds."""
    question, steps = problems.draw(random.Random(seed), template)
    return question, steps, [problems.write_solution(steps, random.Random(i)) for i in range(n_texts)]


def test_every_sentence_kind_has_at_least_three_wordings():
    assert all(len(ws) >= 3 for ws in problems.WORDINGS.values())


def test_every_kind_is_used_by_a_template():
    used = {s.kind for t in problems.TEMPLATES for s in problems.draw(random.Random(0), t)[1]}
    assert used == set(problems.WORDINGS)


@pytest.mark.parametrize("template", [problems.shop_two_items, problems.share_pizza, problems.rate_two_legs,
                                      problems.age_older_twice, problems.cmp_more_fewer, problems.cmp_scores],
                         ids=lambda t: t.__name__)
def test_independent_steps_come_in_both_orders(template):
    question, _, texts = solutions(template)
    orders = {tuple((op, tuple(sorted((a, b)))) for a, op, b, _, _ in check_answer(question, t).steps) for t in texts}
    assert len(orders) >= 2  # e.g. the pens first, or the books first
    assert len({t.splitlines()[-1] for t in texts}) == 1  # and always the same answer


def test_commutative_operands_come_in_both_orders():
    _, steps, texts = solutions(problems.shop_change)
    k, p = int(steps[0].a), int(steps[0].b)
    assert any(f"{k} * {p} = " in t for t in texts) and any(f"{p} * {k} = " in t for t in texts)


@pytest.mark.parametrize("template", [problems.shop_change, problems.share_pizza, problems.age_future],
                         ids=lambda t: t.__name__)
def test_solution_count_is_what_the_generator_writes(template):
    """solution_count (whose log2 docs/data.md reports as bits per solution) is exactly the
    number of distinct texts that writing the same question many times produces."""
    _, steps, texts = solutions(template, n_texts=4000)
    assert len(set(texts)) == problems.solution_count(steps)


# --- the pupil's working ---

@pytest.mark.parametrize("a, op, b, expected", [
    (345, "+", 278, "345 + 278: 5 + 8 = 13, 4 + 7 + 1 = 12, 3 + 2 + 1 = 6"),
    (395, "+", 28, "395 + 28: 5 + 8 = 13, 9 + 2 + 1 = 12, 3 + 1 = 4"),
    (345, "+", 21, "345 + 21: 5 + 1 = 6, 4 + 2 = 6"),     # the 3 is brought down
    (50, "+", 70, "50 + 70: 0 + 0 = 0, 5 + 7 = 12"),
    (4, "+", 5, None),                                     # a one-digit fact: done in the head
    (345, "-", 278, "345 - 278: 15 - 8 = 7, 14 - 7 - 1 = 6, 3 - 2 - 1 = 0"),
    (100, "-", 1, "100 - 1: 10 - 1 = 9, 10 - 1 = 9, 1 - 1 = 0"),
    (66, "-", 9, "66 - 9: 16 - 9 = 7, 6 - 1 = 5"),
    (34, "*", 7, "34 * 7: 4 * 7 = 28, 3 * 7 + 2 = 23"),
    (7, "*", 34, "7 * 34: 4 * 7 = 28, 3 * 7 + 2 = 23"),    # the longer number goes column by column
    (108, "*", 4, "108 * 4: 8 * 4 = 32, 0 * 4 + 3 = 3, 1 * 4 = 4"),
    (31, "*", 7, "31 * 7: 1 * 7 = 7, 3 * 7 = 21"),
    (7, "*", 8, None),
    (9, "-", 4, None),
    (84, "/", 7, "84 / 7: 8 / 7 = 1 remainder 1, 14 / 7 = 2"),
    (252, "/", 6, "252 / 6: 25 / 6 = 4 remainder 1, 12 / 6 = 2"),
    (816, "/", 8, "816 / 8: 8 / 8 = 1, 1 / 8 = 0 remainder 1, 16 / 8 = 2"),
    (63, "/", 3, "63 / 3: 6 / 3 = 2, 3 / 3 = 1"),
    (56, "/", 8, None),                                    # a one-digit quotient: a times-table fact
    (96, "/", 12, None),
])
def test_working_is_written_as_a_pupil_writes_it(a, op, b, expected):
    assert problems.working(a, op, b) == expected


def read_off(a, op, b, line):
    """The result a reader gets from the working alone: the column values, units first (the
    last column in full), then the digits brought down; division reads its quotients in order."""
    values = [int(col.split(" = ")[1].split(" remainder")[0]) for col in line.split(": ")[1].split(", ")]
    if op == "/":
        return int("".join(map(str, values)))
    longer = max(str(a), str(b), key=len)
    written = str(values[-1]) + "".join(str(v % 10) for v in reversed(values[:-1]))
    if op == "-":
        written = str(values[-1]) + "".join(str(v) for v in reversed(values[:-1]))
    return int(longer[:len(longer) - len(values)] + written)


@pytest.mark.parametrize("op", ["+", "-", "*", "/"])
def test_every_working_adds_up_and_gives_the_result(op):
    for a in range(1, 1000, 7):
        for b in range(1, 100):
            try:
                c = problems.apply(a, op, b)
            except problems.Retry:
                continue
            line = problems.working(a, op, b)
            if line is None:
                continue
            for col in line.split(": ")[1].split(", "):  # each column is right arithmetic
                lhs, rhs = col.split(" = ")
                assert eval(lhs.replace("/", "//")) == int(rhs.split(" remainder ")[0]), line
            assert read_off(a, op, b, line) == c, line


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
