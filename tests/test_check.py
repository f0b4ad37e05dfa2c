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
