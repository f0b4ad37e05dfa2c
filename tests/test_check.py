"""The solution checker (data/check.py): what it accepts, and every way of being wrong it must catch."""
import random
import re

import pytest

from data import problems
from data.check import SENTENCES, WORKING, check_answer, step_kind


def reference_problems(n=300, seed=0):
    return problems.generate(n, seed)


def test_every_reference_answer_is_well_formed_and_right():
    for p in reference_problems(1000):
        checked = check_answer(p["question"], p["answer"], problems.final_answer(p["answer"]))
        assert checked.well_formed, (checked.problem, p)
        assert checked.steps_right == len(checked.steps) and checked.answer_right, p


def test_every_wording_is_written_by_the_generator_and_accepted():
    """Generate until each wording of each kind has appeared in an answer the checker accepts."""
    unseen = {r.pattern for _, r in SENTENCES}
    rng = random.Random(1)
    for _ in range(20_000):
        p = problems.make_problem(rng, rng.choice(problems.TEMPLATES))
        assert check_answer(p["question"], p["answer"]).well_formed, p
        for line in p["answer"].splitlines():
            unseen -= {r.pattern for _, r in SENTENCES if r.fullmatch(line)}
        if not unseen:
            break
    assert not unseen, f"never written: {sorted(unseen)[:3]}"


def glued(problem):
    """Every answer made by replacing one sentence with the first half (in words) of one of its
    wordings glued to the second half of another wording of the same kind, same slots. A glue
    that happens to be a wording itself ("There are {e} slices" from "There are {e} slices
    left" and "... slices") is a sentence the generator writes, and is left out."""
    lines = problem["answer"].splitlines()
    for i, line in enumerate(lines):
        for kind, regex in SENTENCES:
            m = regex.fullmatch(line)
            if not m:
                continue
            slots = {k: v for k, v in m.groupdict().items() if k not in ("a", "op", "b", "c")}
            fills = [w.format(**slots) for w in problems.WORDINGS[kind] if set(re.findall(r"{(\w+)}", w)) <= set(slots)]
            for first in fills:
                for second in fills:
                    head, tail = first.split(" "), second.split(" ")
                    mixture = " ".join(head[:len(head) // 2] + tail[len(tail) // 2:])
                    if not any(r.fullmatch(mixture) for _, r in SENTENCES):
                        yield "\n".join(lines[:i] + [mixture] + lines[i + 1:])


def test_glued_wordings_are_flagged():
    n_mixtures = 0
    for p in reference_problems(200):
        for answer in glued(p):
            n_mixtures += 1
            checked = check_answer(p["question"], answer)
            assert not checked.well_formed, answer
    assert n_mixtures > 500  # the test saw plenty of mixtures


def last_step_line(answer):
    lines = answer.splitlines()
    return lines, len(lines) - 2  # the line before '#### n' states the last step


def test_wrong_arithmetic_is_a_wrong_step_not_a_form_error():
    p = reference_problems()[0]
    lines, i = last_step_line(p["answer"])
    c = int(lines[-1].split()[-1])
    lines[i] = lines[i].replace(f"= {c}", f"= {c + 1}")
    lines[-1] = f"#### {c + 1}"
    checked = check_answer(p["question"], "\n".join(lines), expected=c)
    assert checked.well_formed, checked.problem  # consistently wrong is still well-formed
    assert checked.steps_right == len(checked.steps) - 1
    assert checked.answer_right is False


def test_wrong_working_makes_its_step_wrong():
    for p in reference_problems():
        lines = p["answer"].splitlines()
        i = next((j for j, line in enumerate(lines) if WORKING.fullmatch(line)), None)
        if i is None:
            continue
        first_value = re.search(r"= (\d+)", lines[i])  # the first column's result
        lines[i] = lines[i][:first_value.start(1)] + str(int(first_value[1]) + 1) + lines[i][first_value.end(1):]
        checked = check_answer(p["question"], "\n".join(lines), problems.final_answer(p["answer"]))
        assert checked.well_formed and checked.answer_right
        assert checked.steps_right == len(checked.steps) - 1, lines
        return
    pytest.fail("no answer with working among the reference problems")


@pytest.mark.parametrize("change, problem", [
    (lambda lines: lines[:-1] + ["#### 1000"], "is not the last result"),
    (lambda lines: lines[:-1], "no final"),
    (lambda lines: lines + ["#### 5"], "text after the final answer"),
    (lambda lines: [lines[0].replace(".", " and more.")] + lines[1:], "not one of the generator's wordings"),
    (lambda lines: [lines[0]] + lines, "written twice"),
])
def test_form_errors_are_flagged(change, problem):
    p = next(p for p in reference_problems() if not WORKING.fullmatch(p["answer"].splitlines()[0]))
    checked = check_answer(p["question"], "\n".join(change(p["answer"].splitlines())))
    assert not checked.well_formed and problem in checked.problem, checked.problem


def test_names_and_numbers_must_come_from_the_question():
    p = next(p for p in reference_problems() if p["answer"].startswith("The ") and "cost" in p["answer"])
    question = p["question"]
    numbers = re.findall(r"\d+", p["answer"].splitlines()[0])
    stranger = str(next(x for x in range(2, 99) if str(x) not in question and str(x) not in p["answer"]))
    bad = p["answer"].replace(f"{numbers[0]} * ", f"{stranger} * ", 1)
    assert "neither in the question" in check_answer(question, bad).problem
    p = next(p for p in reference_problems() if any(n in p["answer"] for n in problems.NAMES))
    person = next(n for n in problems.NAMES if n in p["answer"])
    stranger = next(n for n in problems.NAMES if n not in p["question"])
    bad = p["answer"].replace(person, stranger)
    assert "is not in the question" in check_answer(p["question"], bad).problem


@pytest.mark.parametrize("a, op, b, kind", [
    (34, "*", 7, "* 2d x 1d -> 3d"),
    (4, "*", 12, "* 1d x 2d -> 2d"),
    (345, "-", 78, "- 3d - 2d -> 3d"),
    (84, "/", 7, "/ 2d / 1d -> 2d"),
    (48, "+", 75, "+ 2d + 2d -> 3d"),
])
def test_step_kind(a, op, b, kind):
    assert step_kind(a, op, b) == kind


def test_bench_scores_form_and_arithmetic_apart(tiny_data):
    """bench.run_bench with two fake strategies: one writes the reference answers, one the same
    answers with a wrong '####' line (ill-formed and wrong, though every step is right)."""
    import json
    from bench import Strategy, run_bench
    from data.tokenizer import EOT, load_tokenizer
    from decode import Generation
    enc = load_tokenizer(str(tiny_data / "tokenizer.json"))
    eos = enc.encode(EOT, allowed_special={EOT})[0]
    tests = [json.loads(line) for line in open(tiny_data / "test.jsonl")][:10]
    answer_of = {tuple(enc.encode_ordinary(problems.format_prompt(t["question"]))): t["answer"] for t in tests}

    def writes(change):
        def decode(prompt_ids):
            text = " " + change(answer_of[tuple(prompt_ids)])
            return Generation(tokens=enc.encode_ordinary(text) + [eos], n_forward=1)
        return decode
    rows, _ = run_bench([Strategy("m", "reference", "ntp", writes(lambda a: a), 10, (1, 0), (1, 0)),
                         Strategy("m", "wrong final", "ntp", writes(lambda a: a.rsplit("#### ", 1)[0] + "#### 1000"),
                                  10, (1, 0), (1, 0))], tests, enc)
    assert [(r["accuracy"], r["well_formed"], r["steps_right"]) for r in rows] == [(100, 100, 100), (0, 0, 100)]


@pytest.mark.parametrize("correct, n, interval", [
    (50, 100, (40.4, 59.6)),    # Wilson's 95% interval, computed by hand
    (0, 10, (0.0, 27.8)),       # never below 0 ...
    (10, 10, (72.2, 100.0)),    # ... nor above 100, and not of zero width at the edges
])
def test_accuracy_intervals_are_wilson_95(correct, n, interval):
    from bench import wilson_interval
    assert wilson_interval(correct, n) == list(interval)


def test_accuracy_is_read_off_a_curve_at_matched_tokens_per_forward():
    from report import accuracy_at
    curve = [dict(tokens_per_forward=t, accuracy=a) for t, a in ((3.0, 40.0), (1.0, 90.0), (2.0, 70.0))]
    assert accuracy_at(curve, 1.5) == 80.0 and accuracy_at(curve, 2.5) == 55.0 and accuracy_at(curve, 2.0) == 70.0
    assert accuracy_at(curve, 3.5) is None and accuracy_at(curve, 0.5) is None


def test_the_modelled_speedup_counts_the_parameters_read(tiny_data):
    """By hand, for 12 tokens. Sizes (ours, then the large pair): teacher 6 and 8e9, draft 1 and 1e9.
    Teacher NTP: 12 passes, 1x. Speculative, 4 teacher + 8 draft passes: 4*6 + 8*1 = 32 = 5.33
    teacher passes -> 2.25x; 4*8e9 + 8*1e9 = 5 8B passes -> 2.4x. The draft alone, 12 passes:
    2 or 1.5 teacher passes -> 6x or 8x. MTP-drafted, 4 + 4 passes of teacher-sized models -> 1.5x.
    The student, 4 passes (its masks ride along for free) -> 3x."""
    from bench import Strategy, run_bench
    from data.tokenizer import EOT, load_tokenizer
    from decode import Generation
    enc = load_tokenizer(str(tiny_data / "tokenizer.json"))
    eos = enc.encode(EOT, allowed_special={EOT})[0]
    problem = [{"question": "Mia has 2 apples. How many apples does she have?", "answer": "#### 2"}]

    def fake(model, n_forward, n_draft_forward, sizes, large):
        decode = lambda ids: Generation(tokens=list(range(11)) + [eos], n_forward=n_forward,  # noqa: E731
                                        n_draft_forward=n_draft_forward)
        return Strategy(model, "-", "ntp", decode, 1, sizes, large)
    rows, _ = run_bench([fake("teacher", 12, 0, (6, 0), (8e9, 0)), fake("teacher + draft", 4, 8, (6, 1), (8e9, 1e9)),
                      fake("draft", 12, 0, (1, 0), (1e9, 0)), fake("teacher + student", 4, 4, (6, 6), (8e9, 8e9)),
                      fake("student", 4, 0, (6, 0), (8e9, 0))], problem, enc)
    assert [(r["modelled_ours"], r["modelled_large"]) for r in rows] == \
        [(1.0, 1.0), (2.25, 2.4), (6.0, 8.0), (1.5, 1.5), (3.0, 3.0)]
