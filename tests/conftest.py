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


def untrained_teacher(data_dir, path):
    """Save a small random GPT over the dataset at `path` as a teacher checkpoint: the
    distillation tests check mechanics, which need no trained teacher. Returns `path`."""
    from data.tokenizer import load_tokenizer, padded_vocab_size
    from model import GPT, GPTConfig, save_checkpoint
    tokenizer = str(data_dir / "tokenizer.json")
    config = GPTConfig(block_size=64, vocab_size=padded_vocab_size(load_tokenizer(tokenizer)), n_layer=2, n_head=2,
                       n_embd=32)
    save_checkpoint(str(path), GPT(config), "teacher", tokenizer)
    return str(path)
