"""`--help` shows each flag with the value a run will use. Where the default it shows stands for
something else (None, auto, or a number that parse_args replaces), the flag's help says in words
what it stands for, as in `--k ... (None: its k_max)`."""
import importlib
import inspect
import os
import re
import sys

import pytest

from conftest import ROOT

# Every script with a command line, and the arguments it needs besides --help (a preset each).
SCRIPTS = [
    *[("train_ntp.py", ["--preset", name]) for name in ("teacher", "draft", "teacher_gpu", "draft_gpu")],
    *[("distill_mtp.py", ["--preset", name]) for name in ("cpu", "gpu")],
    ("decode.py", ["--prompt", "How many?"]),
    ("bench.py", []),
    ("bench_batch.py", []),
    ("report.py", ["out"]),
    ("data/prepare.py", []),
    ("data/check.py", []),
]
SENTINEL_WORDS = ("None", "auto")  # defaults that a run replaces by a value when it starts


def test_every_script_is_checked():
    """A new script with flags must join SCRIPTS, and so must every preset."""
    import distill_mtp
    import train_ntp
    scripts = set()
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in {".git", "out", "tests", "synth", "__pycache__"}]
        for name in files:
            path = os.path.join(folder, name)
            text = open(path, encoding="utf-8").read() if name.endswith(".py") else ""
            if '__name__ == "__main__"' in text and "ArgumentParser(" in text:
                scripts.add(os.path.relpath(path, ROOT))
    assert scripts == {script for script, _ in SCRIPTS}
    for script, module in (("train_ntp.py", train_ntp), ("distill_mtp.py", distill_mtp)):
        assert {argv[1] for name, argv in SCRIPTS if name == script} == set(module.PRESETS), script


def call_parse_args(script, argv, monkeypatch):
    """The script's parse_args on `argv`, as its command line would have it."""
    module = importlib.import_module(script[:-3].replace("/", "."))
    if inspect.signature(module.parse_args).parameters:
        return module.parse_args(argv)
    monkeypatch.setattr(sys, "argv", [script, *argv])  # a parse_args that reads sys.argv itself
    return module.parse_args()


def help_entries(script, argv, monkeypatch, capsys):
    """(the flag's name as parse_args stores it, its help text, the default shown) for each flag
    of `script --help` that shows a default."""
    monkeypatch.setenv("COLUMNS", "10000")  # one line per help text: nothing wrapped in the middle of a value
    with pytest.raises(SystemExit) as exit:
        call_parse_args(script, [*argv, "--help"], monkeypatch)
    assert exit.value.code == 0
    text = capsys.readouterr().out
    lines = text.split("\n")
    first = next(i for i, line in enumerate(lines) if re.match(r"(options|optional arguments|positional arguments):$",
                                                               line))
    entries = []  # (the flag as invoked, the lines of its help)
    for line in lines[first:]:
        if re.match(r"  \S", line):  # a flag's first line; a long one has its help on the next line
            invocation, *help_lines = re.split(r"\s{2,}", line.strip(), maxsplit=1)
            entries.append((invocation, help_lines))
        elif line.startswith("   ") and entries:
            entries[-1][1].append(line.strip())
    found = []
    for invocation, help_lines in entries:
        help_text = " ".join(help_lines)
        shown = re.search(r"\(default: (.*)\)$", help_text)
        if not shown or invocation.startswith("-h"):
            continue
        first_name = invocation.split(",")[0].split()[0]
        dest = first_name.lstrip("-").replace("-", "_")
        found.append((dest, help_text[:shown.start()].strip(), shown.group(1)))
    assert found, text
    return found


def as_shown(value):
    """A parsed value written as --help writes a default (lists as the comma list they came from)."""
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def explains(help_text, shown):
    """Whether the help says what the value `shown` stands for: `None: ...`, `0 = ...`, `auto
    (...)`, `0 means ...`; a number matches its other spellings (0 for 0.0)."""
    said = r"\s*(?::|=|\(|means\b)"
    if re.search(rf"(?<![\w.]){re.escape(shown)}(?![\w.]){said}", help_text):
        return True
    try:
        number = float(shown)
    except ValueError:
        return False
    return any(float(n) == number for n in re.findall(rf"(?<![\w.])(-?\d+(?:\.\d+)?)(?![\w.]){said}", help_text))


@pytest.mark.parametrize("script, argv", SCRIPTS, ids=[" ".join([s, *a[:2]]) for s, a in SCRIPTS])
def test_help_shows_the_value_a_run_uses_or_says_what_it_stands_for(script, argv, monkeypatch, capsys):
    args = vars(call_parse_args(script, argv, monkeypatch))
    given = {word.lstrip("-").replace("-", "_") for word in argv if word.startswith("--")}
    unexplained = []
    for dest, help_text, shown in help_entries(script, argv, monkeypatch, capsys):
        assert dest in args, (script, dest)
        if dest in given:  # --preset X: its default is the preset a run without the flag uses
            continue
        used = as_shown(args[dest])
        if " " in shown and shown != used:  # a default shown in words, e.g. "generate synthetic problems"
            continue
        if (shown in SENTINEL_WORDS or shown != used) and not explains(help_text, shown):
            unexplained.append(f"--{dest} shows {shown}" + (f" but a run uses {used}" if shown != used else "")
                               + f": its help ({help_text!r}) must say what {shown} stands for")
    assert not unexplained, f"{script} {' '.join(argv)}:\n" + "\n".join(unexplained)


def test_explains_reads_what_the_helps_say():
    assert explains("student: positions read per pass (None: its k_max)", "None")
    assert explains("step where the cosine ends (0: at --max_iters)", "0")
    assert explains("0 = greedy", "0.0")
    assert explains("auto (cuda, then mps, then cpu), cpu, cuda", "auto")
    assert not explains("teacher: speculative decoding with this draft checkpoint", "None")
    assert not explains("step where the cosine ends", "0")
    assert not explains("clip the gradient norm to this (10: no clipping)", "0")
