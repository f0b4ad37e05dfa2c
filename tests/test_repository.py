"""The repository stands on its own: nothing in it points at a file a reader who cloned it lacks."""
import os
import re

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
            if not name.endswith((".png", ".pt", ".bin", ".pyc")):
                yield os.path.relpath(os.path.join(folder, name), ROOT)


@pytest.mark.parametrize("path", list(repository_text_files()))
def test_no_file_points_outside_the_repository(path):
    with open(os.path.join(ROOT, path), encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, start=1):
            assert not OUTSIDE.search(line), f"{path}:{lineno} points outside the repository: {line.strip()}"


def test_the_scan_sees_the_files_that_matter():
    files = set(repository_text_files())
    assert {"README.md", "Makefile", "docs/method.md", "model.py", "training.py", "tests/test_repository.py"} <= files
