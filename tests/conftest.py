"""Shared by every test file: tiny model shapes, the flags of a tiny training run, a tiny dataset
made once per test session, and a helper to run scripts as a user would."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # the tests import the scripts' modules (model, decode, ...)


from model import GPTConfig  # noqa: E402 (needs ROOT on the path)

# Models built in the tests: a tokenizer of N_VOCAB ids padded to VOCAB slots; <MTP> takes the
# first free slot. SMALL is the draft beside a TINY target.
N_VOCAB, VOCAB = 120, 128
MASK = N_VOCAB
MASKS = [MASK] * 8  # a one-<MTP> student's masks by block offset (decode.generate_mtp(mask_ids=...))
TINY = GPTConfig(block_size=64, vocab_size=VOCAB, n_layer=2, n_head=2, n_embd=32)
SMALL = GPTConfig(block_size=64, vocab_size=VOCAB, n_layer=1, n_head=1, n_embd=16)

# A training run of train_ntp.py small enough for a test (a few seconds per 30 steps).
TINY_RUN = ["--n_layer", "2", "--n_head", "2", "--n_embd", "32", "--block_size", "64", "--batch_size", "8",
            "--eval_iters", "2", "--warmup_iters", "5", "--lr", "3e-3", "--device", "cpu"]
TORCHRUN_2 = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]  # two processes, one machine


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
    from common import save_checkpoint
    from model import GPT
    tokenizer = str(data_dir / "tokenizer.json")
    config = GPTConfig(**{**TINY.__dict__, "vocab_size": padded_vocab_size(load_tokenizer(tokenizer))})
    save_checkpoint(str(path), GPT(config), "teacher", tokenizer)
    return str(path)
