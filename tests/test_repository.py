"""The repository stands on its own: nothing in it points at a file a reader who cloned it lacks."""
import ast
import os
import re
import shlex
import subprocess

import pytest

from conftest import ROOT

SKIP_DIRS = {".git", "out", "synth", "__pycache__", ".pytest_cache"}  # outputs, not the repository
# A relative path that climbs out of the checkout, a notes file that lived beside it, or an
# absolute path of the machine it was written on.
OUTSIDE = re.compile(r"\.\./|METHOD\.md|/(?:work|home|root|Users)/")


def repository_text_files():
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
        for name in sorted(files):
            if name not in SKIP_DIRS and not name.endswith((".png", ".pt", ".bin", ".pyc")):  # .git: a file in a worktree
                yield os.path.relpath(os.path.join(folder, name), ROOT)


@pytest.mark.parametrize("path", list(repository_text_files()))
def test_no_file_points_outside_the_repository(path):
    with open(os.path.join(ROOT, path), encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, start=1):
            assert not OUTSIDE.search(line), f"{path}:{lineno} points outside the repository: {line.strip()}"


def test_the_scan_sees_the_files_that_matter():
    files = set(repository_text_files())
    assert {"README.md", "Makefile", "docs/method.md", "model.py", "training.py", "tests/test_repository.py"} <= files


def make_dry_run(*args):
    """The commands `make <args>` would run, one per string (continuation lines joined)."""
    r = subprocess.run(["make", "-n", "-B", *args], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return [line.strip() for line in r.stdout.replace("\\\n", " ").splitlines()]


def scripts_run_by(*args):
    """(script, its arguments) for each Python script of the repository that `make <args>` runs."""
    runs = []
    for command in make_dry_run(*args):
        words = shlex.split(command)
        if len(words) > 1 and words[1].endswith(".py"):
            runs.append((words[1], words[2:]))
    return runs


def flag_parsers():
    """Each script's own flag parser, by the path the Makefile runs it with."""
    import bench
    import bench_batch
    import distill_mtp
    import report
    import train_ntp
    from data import prepare
    return {"train_ntp.py": train_ntp.parse_args, "distill_mtp.py": distill_mtp.parse_args,
            "bench.py": bench.parse_args, "data/prepare.py": prepare.parse_args, "bench_batch.py": bench_batch.parse_args,
            "report.py": report.parse_args}


@pytest.mark.parametrize("target", [["demo"], ["demo", "GPU=1"], ["gpu-check"], ["ablations"], ["batch"]])
def test_the_makefile_gives_the_scripts_flags_they_accept(target):
    parse = flag_parsers()
    runs = scripts_run_by(*target)
    assert runs, target
    for script, argv in runs:
        assert script in parse, f"make {' '.join(target)} runs {script}: add its parse_args to flag_parsers()"
        parse[script](argv)  # an unknown flag or preset, or a value that cannot work, exits or raises here


def test_make_demo_runs_every_stage_script():
    """The parse test above sees the data stage too, not only the training and the bench."""
    assert {script for script, _ in scripts_run_by("demo")} == {
        "data/prepare.py", "train_ntp.py", "distill_mtp.py", "bench.py"}


# --------------------------------------------------------------------------------------
# A stage reruns when what it is made from changes: its rule must list, besides its inputs,
# its script and every module of this repository that the script imports, directly or not.

def module_file(name, folder, root):
    """The file under `root` that `import name` means, looked for in `folder` (where a script run
    as `python data/prepare.py` finds its neighbours) and then at the root; None if the module is
    not one of ours (torch, numpy, os, ...)."""
    for base in (folder, root):
        for candidate in (name.replace(".", "/") + ".py", name.replace(".", "/") + "/__init__.py"):
            path = os.path.join(base, candidate)
            if os.path.isfile(path):
                return os.path.relpath(path, root)
    return None


def imported_modules(script, root=ROOT):
    """The repository's modules that `script` (a path relative to `root`) imports, directly or
    through another of them, read with `ast` (nothing is imported). Every import statement
    counts, also one inside a function or an if: a module loaded late still changes the output."""
    found, todo = set(), [script]
    while todo:
        path = todo.pop()
        folder = os.path.dirname(os.path.join(root, path))
        with open(os.path.join(root, path), encoding="utf-8") as f:
            tree = ast.parse(f.read(), filename=path)
        names = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names += [(alias.name, folder) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = folder
                for _ in range(node.level - 1):  # from ..x import y
                    base = os.path.dirname(base)
                if node.level and not node.module:  # from . import x
                    names += [(alias.name, base) for alias in node.names]
                    continue
                module = node.module or ""
                # `from data import tokenizer` imports the module data/tokenizer.py
                names += [(module, base)] + [(f"{module}.{alias.name}", base) for alias in node.names]
        for name, where in names:
            target = module_file(name, where, root)
            if target and target != script and target not in found:
                found.add(target)
                todo.append(target)
    return found


def make_rules():
    """{target: (prerequisites, recipe lines)} of the Makefile's rules, with the variables of the
    prerequisites expanded, as make itself reads them (its database, `make -p`)."""
    r = subprocess.run(["make", "-p", "-n", "-r", "-R", "-f", "Makefile", "clean"], cwd=ROOT, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    rules, target = {}, None
    for line in r.stdout.splitlines():
        rule = re.match(r"^([^#\s=:][^=:]*?)\s*:(?![:=])\s*(.*)$", line)
        if rule:
            target = rule.group(1)
            rules[target] = (rule.group(2).split(), [])
        elif line.startswith("\t") and target:
            rules[target][1].append(line.strip())
        elif not line.strip():
            target = None
    return rules


def stage_rules():
    """(target, prerequisites, scripts) of every rule that makes a file by running our scripts."""
    rules = make_rules()
    phony = set(rules.get(".PHONY", ((), ()))[0])
    stages = []
    for target, (prerequisites, recipe) in rules.items():
        scripts = sorted({word for line in recipe for word in line.split()
                          if word.endswith(".py") and os.path.isfile(os.path.join(ROOT, word))})
        if scripts and target not in phony:
            stages.append((target, prerequisites, scripts))
    return stages


def test_the_stage_rules_are_all_seen():
    assert {target for target, _, _ in stage_rules()} == {
        "data/synth/train.bin", "out/teacher.pt", "out/draft.pt", "out/student.pt", "out/bench.json", "out/batch.json",
        "out/sampling.json", "out/ablations/student_%.pt", "out/ablations/teacher_learned_positions.pt",
        "out/ablations/student_learned_positions.pt"}


def test_every_stage_lists_the_modules_its_script_imports():
    missing = []
    for target, prerequisites, scripts in stage_rules():
        for script in scripts:
            lacking = sorted(({script} | imported_modules(script)) - set(prerequisites))
            if lacking:
                missing.append(f"the rule for {target} runs {script} but does not list {' '.join(lacking)}")
    assert not missing, "\n".join(missing)


def test_the_import_reader_follows_every_kind_of_import(tmp_path):
    """A small tree of its own, so that the refactors of the real scripts do not move it."""
    files = {
        "run.py": "import os, torch\nfrom lib import helper\nimport pkg.deep as deep\n",
        "lib.py": "def helper():\n    from pkg import late  # imported when called: still a dependency\n",
        "pkg/deep.py": "from .sibling import x\nfrom . import other\n",
        "pkg/sibling.py": "x = 1\n", "pkg/other.py": "", "pkg/late.py": "from .. import lib\n",
        "pkg/unused.py": "",
        "tools/script.py": "try:\n    from neighbour import y\nexcept ImportError:\n    pass\n",
        "tools/neighbour.py": "import lib\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert imported_modules("run.py", str(tmp_path)) == {
        "lib.py", "pkg/deep.py", "pkg/sibling.py", "pkg/other.py", "pkg/late.py"}
    assert imported_modules("tools/script.py", str(tmp_path)) == {"tools/neighbour.py", "lib.py", "pkg/late.py"}


def test_the_bench_reaches_the_data_modules_through_the_import_reader():
    assert {"decode.py", "report.py", "model.py", "common.py", "data/check.py", "data/problems.py",
            "data/tokenizer.py"} <= imported_modules("bench.py")
    assert imported_modules("data/prepare.py") == {"data/problems.py", "data/tokenizer.py"}


def test_make_demo_gpu_switches_on_the_gpu_presets():
    import distill_mtp
    import train_ntp
    gpu = scripts_run_by("demo", "GPU=1")
    presets = {(script, argv[argv.index("--preset") + 1]) for script, argv in gpu if "--preset" in argv}
    assert presets == {("train_ntp.py", "teacher_gpu"), ("train_ntp.py", "draft_gpu"), ("distill_mtp.py", "gpu")}
    for script, name in presets:
        assert (train_ntp if script == "train_ntp.py" else distill_mtp).PRESETS[name]["compile"], name


def test_make_gpu_check_benches_its_own_models_plain_and_compiled():
    """Plain in the auto processes and in one, compiled (one process: CUDA graphs): the graphs'
    gain is the compiled bench's tokens/s over the plain one-process bench's."""
    runs = scripts_run_by("gpu-check")
    outs = [argv[argv.index("--out") + 1] for script, argv in runs if script in ("train_ntp.py", "distill_mtp.py")]
    benches = [argv for script, argv in runs if script == "bench.py"]
    assert all(out.startswith("out/gpu-check/") for out in outs) and len(outs) == 3  # never the demo's models
    assert [("--compile" in argv, argv[argv.index("--workers") + 1] if "--workers" in argv else "auto")
            for argv in benches] == [(False, "auto"), (False, "1"), (True, "auto")]
    assert len({argv[argv.index("--out_dir") + 1] for argv in benches}) == 3
    for argv in benches:
        assert all(argv[argv.index(flag) + 1] in outs for flag in ("--teacher", "--draft", "--student"))
