"""
Read a worked answer back against the generator's own wordings (data/problems.py).

    python data/check.py data/synth/test.jsonl     # every reference answer must pass

For a question and an answer (the model's, or the reference), `check_answer` says
- well-formed: every line is a working line, one of the generator's sentence wordings
  filled in with names, nouns and numbers of this question, or the final `#### n`; every
  operand is a number of the question or a result the answer wrote earlier; a working
  line is followed by the sentence of the same step; `#### n` repeats the last result.
  Half of one wording glued to half of another (what a multi-token block predicted
  position by position can write) matches no wording and is caught here.
- steps right: for each `a op b = c`, whether c is right and its working (if any) is the
  pupil's working of that step, column for column.
- answer right: whether `#### n` is the expected number (when one is given).
Arithmetic and form are scored apart, so a bench can tell a model that cannot add from
one whose blocks are incoherent.
"""
import argparse
import json
import os
import re
import string
import sys
from dataclasses import dataclass, field

if __package__:
    from .problems import GOODS, NAMES, SWEETS, WORDINGS, Retry, apply, final_answer, working
else:  # run as a script: python data/check.py
    from problems import GOODS, NAMES, SWEETS, WORDINGS, Retry, apply, final_answer, working

STEP = r"(?P<a>\d+) (?P<op>[-+*/]) (?P<b>\d+) = (?P<c>\d+)"
NAME = "|".join(NAMES)
SLOT_PATTERNS = {"e": STEP, "P": NAME, "Q": NAME, "items": "|".join(plural for _, plural in GOODS),
                 "sweets": "|".join(SWEETS), "n": r"\d+"}
COLUMN = r"\d+(?: [-+*/] \d+)+ = \d+(?: remainder \d+)?"
WORKING = re.compile(rf"(?P<a>\d+) (?P<op>[-+*/]) (?P<b>\d+): {COLUMN}(?:, {COLUMN})*")
FINAL = re.compile(r"#### (\d+)")


def wording_regex(wording):
    """'{P} pays {e} dollars for the {items}.' -> a regex with a named group per slot."""
    parts = []
    for text, slot, _, _ in string.Formatter().parse(wording):
        parts.append(re.escape(text))
        if slot is not None:
            parts.append(f"(?P<{slot}>{SLOT_PATTERNS[slot]})")  # names and nouns: the generator's own
    return re.compile("".join(parts))


SENTENCES = [(kind, wording_regex(w)) for kind, ws in WORDINGS.items() for w in ws]


@dataclass
class Checked:
    well_formed: bool = True
    problem: str = ""        # the first thing found wrong with the form ("" if none)
    steps: list = field(default_factory=list)  # (a, op, b, c, right) per step, in order
    final: int = None        # the number after ####
    answer_right: bool = None  # None when no expected answer was given

    @property
    def steps_right(self):
        return sum(s[4] for s in self.steps)

    def flag(self, problem):
        if self.well_formed:
            self.well_formed, self.problem = False, problem


def question_facts(question):
    """The numbers (with "twice"/"half" as 2) and the words a solution may restate."""
    numbers = {int(x) for x in re.findall(r"\d+", question)}
    if re.search(r"\b(twice|half)\b", question):
        numbers.add(2)
    return numbers, set(re.findall(r"[A-Za-z]+", question))


def true_result(a, op, b):
    try:
        return apply(a, op, b)
    except Retry:  # a step the generator never writes (a remainder, a negative or too large result)
        return None


def slot_problems(slots, numbers, words, results):
    """What is inconsistent in one reading of a sentence ("" if nothing): names and nouns
    must be the question's, numbers the question's, operands the question's or earlier results."""
    for slot in ("P", "Q", "items", "sweets"):
        if slots.get(slot) and slots[slot] not in words:
            return f"{slots[slot]!r} is not in the question"
    if slots.get("n") and int(slots["n"]) not in numbers:
        return f"{slots['n']} is not a number of the question"
    for x in (int(slots["a"]), int(slots["b"])):
        if x not in numbers and x not in results:
            return f"{x} is neither in the question nor an earlier result"
    return ""


def check_answer(question, answer, expected=None):
    """Check one answer (the text after "Answer:"); see the module docstring."""
    out = Checked()
    numbers, words = question_facts(question)
    results = []                          # what the answer wrote as results, in order
    lines = answer.strip().split("\n")
    pending = None                        # a working line waiting for its sentence
    seen = set()
    for i, line in enumerate(lines):
        final = FINAL.fullmatch(line)
        if final:
            out.final = int(final.group(1))
            if i != len(lines) - 1:
                out.flag(f"line {i + 1}: text after the final answer")
            break
        work = WORKING.fullmatch(line)
        if work:
            if pending:
                out.flag(f"line {i + 1}: two working lines in a row")
            pending = (int(work["a"]), work["op"], int(work["b"]), line)
            continue
        candidates = [m.groupdict() for _, r in SENTENCES for m in [r.fullmatch(line)] if m]
        if not candidates:
            out.flag(f"line {i + 1}: not one of the generator's wordings: {line!r}")
            continue
        # Wordings can overlap ("{P} buys ..." and "That buys ..."): the line is well-formed if
        # one reading of it fills every slot consistently.
        problems = [slot_problems(slots, numbers, words, results) for slots in candidates]
        slots, problem = min(zip(candidates, problems), key=lambda sp: sp[1] != "")
        if problem:
            out.flag(f"line {i + 1}: {problem}")
        a, op, b, c = int(slots["a"]), slots["op"], int(slots["b"]), int(slots["c"])
        if line in seen:
            out.flag(f"line {i + 1}: a step written twice")
        seen.add(line)
        written_work = None
        if pending:
            if pending[:3] != (a, op, b):
                out.flag(f"line {i + 1}: the working above is for another step")
            written_work, pending = pending[3], None
        right = c == true_result(a, op, b) and written_work in (None, working(a, op, b))
        out.steps.append((a, op, b, c, right))
        results.append(c)
    if pending:
        out.flag("a working line with no step after it")
    if out.final is None:
        out.flag("no final '#### n' line")
    elif not results:
        out.flag("no worked step")
    elif out.final != results[-1]:
        out.flag(f"the final answer {out.final} is not the last result {results[-1]}")
    if expected is not None:
        out.answer_right = out.final is not None and str(out.final) == str(expected)
    return out


def step_kind(a, op, b):
    """The kind of a step by operator and digits, e.g. "* 2d x 1d -> 3d" (the true result's
    digits), for tables of which steps a model gets wrong."""
    sign = "x" if op == "*" else op
    c = true_result(a, op, b)
    return f"{op} {len(str(a))}d {sign} {len(str(b))}d -> " + (f"{len(str(c))}d" if c is not None else "?")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("path", nargs="?", default="data/synth/test.jsonl",
                   help="a .jsonl of question/answer pairs (default: %(default)s)")
    return p.parse_args(argv)


def main():
    path = parse_args().path
    if not os.path.exists(path):
        sys.exit(f"error: no answers at {path}: run `python data/prepare.py` first, or name a .jsonl file")
    rows = [json.loads(line) for line in open(path) if line.strip()]
    checked = [check_answer(r["question"], r["answer"], final_answer(r["answer"])) for r in rows]
    bad = [(r, c) for r, c in zip(rows, checked) if not c.well_formed]
    n_steps = sum(len(c.steps) for c in checked)
    print(f"{path}: {len(rows)} answers, {100 * (len(rows) - len(bad)) / len(rows):.1f}% well-formed, "
          f"{100 * sum(c.steps_right for c in checked) / max(1, n_steps):.1f}% of {n_steps} steps right")
    for r, c in bad[:5]:
        print(f"  {c.problem}\n    {r['question']}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
