"""The repository stands on its own: nothing in it points at a file a reader who cloned it lacks."""
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
    """(script, its arguments) for each of our Python scripts that `make <args>` runs."""
    runs = []
    for command in make_dry_run(*args):
        words = shlex.split(command)
        if len(words) > 1 and words[1] in ("train_ntp.py", "distill_mtp.py", "bench.py"):
            runs.append((words[1], words[2:]))
    return runs


@pytest.mark.parametrize("target", [["demo"], ["demo", "GPU=1"], ["gpu-check"], ["ablations"]])
def test_the_makefile_gives_the_scripts_flags_they_accept(target):
    import bench
    import distill_mtp
    import train_ntp
    parse = {"train_ntp.py": train_ntp.parse_args, "distill_mtp.py": distill_mtp.parse_args,
             "bench.py": bench.parse_args}
    runs = scripts_run_by(*target)
    assert runs, target
    for script, argv in runs:
        parse[script](argv)  # an unknown flag or preset, or a value that cannot work, exits here


def test_make_demo_gpu_switches_on_the_gpu_presets():
    import distill_mtp
    import train_ntp
    gpu = scripts_run_by("demo", "GPU=1")
    presets = {(script, argv[argv.index("--preset") + 1]) for script, argv in gpu if "--preset" in argv}
    assert presets == {("train_ntp.py", "teacher_gpu"), ("train_ntp.py", "draft_gpu"), ("distill_mtp.py", "gpu")}
    for script, name in presets:
        assert (train_ntp if script == "train_ntp.py" else distill_mtp).PRESETS[name]["compile"], name


def test_make_gpu_check_benches_its_own_models_plain_and_compiled():
    runs = scripts_run_by("gpu-check")
    outs = [argv[argv.index("--out") + 1] for script, argv in runs if script != "bench.py"]
    benches = [argv for script, argv in runs if script == "bench.py"]
    assert all(out.startswith("out/gpu-check/") for out in outs) and len(outs) == 3  # never the demo's models
    assert sorted("--compile" in argv for argv in benches) == [False, True]
    for argv in benches:
        assert all(argv[argv.index(flag) + 1] in outs for flag in ("--teacher", "--draft", "--student"))
