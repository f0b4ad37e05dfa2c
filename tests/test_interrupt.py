"""Never lose work. A real training process is killed (SIGKILL in the middle of a step, SIGKILL
half-way through writing a checkpoint) or interrupted (Ctrl-C, or SIGTERM as a job scheduler or
`kill` sends); `--resume` must then finish the very run an uninterrupted process finishes: same
step count, same loss curve, same weights."""
import os

import pytest
import torch

from conftest import TINY_RUN, TORCHRUN_2, run_script, untrained_teacher
from common import load_checkpoint

# Runs a training script with one thing changed: at the `at`-th call of a function every step
# (or every checkpoint write) makes, the process signals itself. The signal is real; only the
# moment is chosen, so the test does not depend on timing.
INTERRUPT = r"""
import io, os, runpy, signal, sys
import torch
how, at, script = sys.argv[1], int(sys.argv[2]), sys.argv[3]
sys.argv = sys.argv[3:]
calls = 0

def on_call(original, act):
    def wrapped(*args, **kwargs):
        global calls
        calls += 1
        if calls == at:
            return act(original, *args, **kwargs)
        return original(*args, **kwargs)
    return wrapped

def kill_mid_step(clip, *args, **kwargs):  # gradients computed, the update not yet made
    os.kill(os.getpid(), signal.SIGKILL)

def stop_with(sig):  # a signal the run must survive: it finishes the step, saves and exits
    def send(clip, *args, **kwargs):
        os.kill(os.getpid(), sig)
        return clip(*args, **kwargs)
    return send

def kill_mid_write(save, obj, f, *args, **kwargs):  # half the bytes reach the disk, then death
    buf = io.BytesIO()
    save(obj, buf)
    f.write(buf.getvalue()[:len(buf.getvalue()) // 2])
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)

if how == "write":
    torch.save = on_call(torch.save, kill_mid_write)
else:
    act = {"kill": kill_mid_step, "ctrl-c": stop_with(signal.SIGINT), "sigterm": stop_with(signal.SIGTERM)}[how]
    torch.nn.utils.clip_grad_norm_ = on_call(torch.nn.utils.clip_grad_norm_, act)
runpy.run_path(script, run_name="__main__")
"""

TINY = [*TINY_RUN, "--max_iters", "30", "--lr_decay_iters", "30", "--eval_interval", "10",
        "--dropout", "0.1"]  # dropout draws from torch's RNG: a resume must restore it too


def same_run(a, b):
    assert a["step"] == b["step"]
    assert a["loss_log"] == pytest.approx(b["loss_log"], rel=1e-6, abs=1e-7)  # the loss curve, step by step
    for name, weight in a["model"].items():
        torch.testing.assert_close(b["model"][name], weight, atol=1e-6, rtol=1e-5, msg=name)


@pytest.fixture(scope="module")
def straight(tiny_data, tmp_path_factory):
    """The reference: the same 30-step run, never interrupted."""
    out = tmp_path_factory.mktemp("straight") / "t.pt"
    r = run_script("train_ntp.py", "--data_dir", str(tiny_data), "--out", str(out), *TINY)
    assert r.returncode == 0, r.stderr[-2000:]
    return load_checkpoint(str(out))


# (how, at, the exit status, the step of the checkpoint left behind). Checkpoints are written at
# steps 10, 20 and 30; a kill loses the steps since the last one, Ctrl-C and SIGTERM save the step
# they arrive in.
@pytest.mark.slow
@pytest.mark.parametrize("how, at, status, saved_step", [
    ("kill", 16, -9, 10),     # SIGKILL during step 16
    ("write", 2, -9, 10),     # SIGKILL half-way through writing the step-20 checkpoint
    ("ctrl-c", 16, 130, 16),  # SIGINT during step 16: the step finishes, is saved, the process exits
    ("sigterm", 16, 130, 16),  # SIGTERM likewise (left to its default, it would end the process at once: -15)
])
def test_an_interrupted_run_resumes_into_the_same_run(tiny_data, tmp_path, straight, how, at, status, saved_step):
    train = ["train_ntp.py", "--data_dir", str(tiny_data), "--out", str(tmp_path / "t.pt"), *TINY]
    r = run_script("-c", INTERRUPT, how, str(at), *train)
    assert r.returncode == status, r.stderr[-2000:]
    left = load_checkpoint(str(tmp_path / "t.pt"))  # loads: no corrupt checkpoint was left
    assert left["step"] == saved_step and len(left["loss_log"]) == saved_step
    assert os.path.exists(tmp_path / "t.pt.tmp") == (how == "write")
    if how in ("ctrl-c", "sigterm"):
        assert "continue with: python train_ntp.py" in r.stdout
    if how == "sigterm":
        return  # it left the same checkpoint as Ctrl-C, whose resume follows

    r = run_script(*train, "--resume")
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"resuming {tmp_path / 't.pt'} at step {saved_step}" in r.stdout
    assert ("removed" in r.stdout) == (how == "write") and not os.path.exists(tmp_path / "t.pt.tmp")
    same_run(straight, load_checkpoint(str(tmp_path / "t.pt")))


@pytest.mark.slow
def test_a_killed_distillation_resumes_into_the_same_run(tiny_data, tmp_path):
    distill = ["distill_mtp.py", "--teacher", untrained_teacher(tiny_data, tmp_path / "teacher.pt"), "--k_max", "4", "--batch_size", "4",
               "--eval_iters", "2", "--eval_interval", "4", "--max_iters", "12", "--device", "cpu"]
    r = run_script(*distill, "--out", str(tmp_path / "straight.pt"))
    assert r.returncode == 0, r.stderr[-2000:]
    r = run_script("-c", INTERRUPT, "kill", "7", *distill, "--out", str(tmp_path / "s.pt"))
    assert r.returncode == -9 and load_checkpoint(str(tmp_path / "s.pt"))["step"] == 4
    r = run_script(*distill, "--out", str(tmp_path / "s.pt"), "--resume")
    assert r.returncode == 0, r.stderr[-2000:]
    straight, resumed = load_checkpoint(str(tmp_path / "straight.pt")), load_checkpoint(str(tmp_path / "s.pt"))
    same_run(straight, resumed)
    assert resumed["agreement_log"] == straight["agreement_log"]


@pytest.mark.slow
def test_ctrl_c_reaching_one_process_of_a_torchrun_run_stops_them_all_at_one_step(tiny_data, tmp_path):
    """Under torchrun each process gets its own signal, maybe a step after another. Here only
    rank 1 gets Ctrl-C (during step 16): rank 0 must leave the loop at the same step, or it
    waits forever for rank 1's gradients of step 17."""
    harness = tmp_path / "interrupt_rank_1.py"
    harness.write_text("import os, sys; sys.path.insert(0, os.getcwd())\n"  # as `python -c` has it
                       + INTERRUPT.replace("if calls == at:", "if calls == at and os.environ['RANK'] == '1':"))
    train = ["train_ntp.py", "--data_dir", str(tiny_data), "--out", str(tmp_path / "t.pt"), *TINY, "--grad_accum", "2"]
    r = run_script(*TORCHRUN_2, str(harness), "ctrl-c", "16", *train, timeout=120)
    assert r.returncode != 0  # torchrun reports a worker's exit status 130 as a failure
    assert "exitcode  : 130" in r.stderr, r.stderr[-2000:]
    assert "continue with: python train_ntp.py" in r.stdout, r.stdout[-2000:]
    left = load_checkpoint(str(tmp_path / "t.pt"))
    assert left["step"] == 16 and len(left["loss_log"]) == 16
