"""Shared fixtures: a tiny dataset made once per test session, and a helper to run scripts."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # the tests import the scripts' modules (model, decode, ...)


def run_script(*args, cwd=ROOT, timeout=300):
    """Run `python <args>` as a user would; returns the CompletedProcess (never raises on failure)."""
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A small synthetic dataset (tokenizer, train.bin, val.bin, test.jsonl) in a temp dir."""
    out = tmp_path_factory.mktemp("data")
    r = run_script("data/prepare.py", "--out_dir", str(out), "--n_train", "2000", "--n_val", "200",
                   "--n_test", "50", "--seed", "7")
    assert r.returncode == 0, r.stderr
    return out
