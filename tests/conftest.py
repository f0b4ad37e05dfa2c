"""Shared by every test file: tiny model shapes, the flags of a tiny training run, a tiny dataset
made once per test session, and a helper to run scripts as a user would."""
import json
import os
import select
import subprocess
import sys
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # the tests import the scripts' modules (model, decode, ...)


from model import GPTConfig  # noqa: E402 (needs ROOT on the path)

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two workers on two cores: a thread each (and each script a test starts)
    # keeps them from taking turns on cores that both want.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch  # noqa: E402
    torch.set_num_threads(1)

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
# `python HUGE_LOSS_SCALE script.py ...`: the script with fp16's loss scale starting at 2^40 instead
# of 2^16. A tiny model's gradients then overflow fp16 (its largest number is 65,504) for the
# first steps, so the gradient scaler has steps to skip, which the default scale gives it rarely.
# (The class becomes a functools.partial: fine for the scripts, which only call it.)
HUGE_LOSS_SCALE = ["-c", "import functools, runpy, sys, torch; "
                   "torch.amp.GradScaler = functools.partial(torch.amp.GradScaler, init_scale=2.0 ** 40); "
                   "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"]


def run_script(*args, cwd=ROOT, timeout=300, warm=False):
    """Run `python <args>` as a user would; returns the CompletedProcess (never raises on failure).
    warm=True forks it from a Python that has imported torch already (tests/warm_python.py): the
    same process a user starts, a second or two sooner, for scripts that stop early."""
    if not warm:
        return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    global _warm_python
    if _warm_python is None or _warm_python.poll() is not None:
        _warm_python = subprocess.Popen([sys.executable, os.path.join(ROOT, "tests", "warm_python.py")],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    with tempfile.TemporaryDirectory() as d:
        out, err = os.path.join(d, "stdout"), os.path.join(d, "stderr")
        _warm_python.stdin.write(json.dumps([list(args), str(cwd), out, err]) + "\n")
        _warm_python.stdin.flush()
        if not select.select([_warm_python.stdout], [], [], timeout)[0]:
            _warm_python.kill()
            raise subprocess.TimeoutExpired(args, timeout)
        returncode = int(_warm_python.stdout.readline())
        return subprocess.CompletedProcess(args, returncode, open(out).read(), open(err).read())


_warm_python = None  # started by the first run_script(..., warm=True) of each test process


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
