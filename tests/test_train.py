"""Training: the loss goes down, resume is exact, torchrun matches one process, the precision
follows the hardware, fp16 trains with a gradient scaler; bench runs."""
import argparse
import json
import math

import pytest
import torch

from conftest import HUGE_LOSS_SCALE, TINY_RUN, TORCHRUN_2, run_script
from data.tokenizer import EOT, load_tokenizer
import distill_mtp
import train_ntp
import training
from common import load_checkpoint
from train_ntp import question_mask
from training import load_tokens


def train(data, out, *extra):
    r = run_script("train_ntp.py", "--data_dir", str(data), "--out", str(out), *TINY_RUN, *extra)
    assert r.returncode == 0, r.stderr[-2000:]
    return load_checkpoint(str(out))


@pytest.mark.slow
def test_a_short_training_run_lowers_the_loss(tiny_data, tmp_path):
    ckpt = train(tiny_data, tmp_path / "t.pt", "--max_iters", "80", "--eval_interval", "1000")
    uniform = math.log(ckpt["config"]["vocab_size"])  # an untrained model's loss
    assert ckpt["step"] == 80
    assert ckpt["val_loss"] < 0.6 * uniform


def test_loss_on_answers_leaves_out_exactly_the_questions(tiny_data):
    enc = load_tokenizer(str(tiny_data / "tokenizer.json"))
    eot_id = enc.encode(EOT, allowed_special={EOT})[0]
    data, _ = load_tokens(str(tiny_data), "val", eot_id, 64)
    no_loss = question_mask(data, eot_id, enc.encode_ordinary("Answer:"))
    kept = enc.decode(data[~no_loss].tolist()).split(EOT)[:-1]
    left_out = enc.decode(data[no_loss].tolist()).split("Answer:")[:-1]
    assert len(kept) == len(left_out) > 10
    for answer, question in zip(kept, left_out):
        assert answer.startswith(" ") and answer.strip().splitlines()[-1].startswith("####")
        assert question.startswith("Question: ") and "####" not in question


@pytest.mark.slow
def test_bf16_training_on_answers_lowers_the_loss(tiny_data, tmp_path):
    """Forced bf16, so it runs (emulated, slowly) on a CPU without bf16 units too: the tiny model
    keeps it to seconds there."""
    ckpt = train(tiny_data, tmp_path / "t.pt", "--max_iters", "60", "--eval_interval", "1000", "--precision", "bf16",
                 "--loss_on", "answers", "--block_size", "128")
    assert ckpt["val_loss"] < 0.6 * math.log(ckpt["config"]["vocab_size"])  # as the fp32 run above
    assert ckpt["scaler"] == {}  # bf16 has fp32's range: no loss scale


def fp16_train(data, out, *extra, huge_scale=False):
    r = run_script(*(HUGE_LOSS_SCALE if huge_scale else []), "train_ntp.py", "--data_dir", str(data),
                   "--out", str(out), *TINY_RUN, "--precision", "fp16", "--eval_interval", "1000", *extra)
    assert r.returncode == 0, r.stderr[-2000:]
    return load_checkpoint(str(out)), r.stdout


@pytest.mark.slow
def test_fp16_training_with_a_gradient_scaler_lowers_the_loss(tiny_data, tmp_path):
    """What a T4 or a V100 gets (--precision auto there): fp16 autocast, the loss scaled for the
    backward pass. fp16 autocast and the scaler run on the CPU too, so the step is tested here."""
    ckpt, stdout = fp16_train(tiny_data, tmp_path / "t.pt", "--max_iters", "60")
    assert "precision=fp16 (--precision fp16)" in stdout
    assert ckpt["val_loss"] < 0.6 * math.log(ckpt["config"]["vocab_size"])  # as the fp32 run above
    skipped = int(stdout.split("fp16: ")[1].split(" of 60 steps skipped")[0])
    assert ckpt["scaler"]["scale"] == 2.0 ** 16 / 2 ** skipped  # each skipped step counted (no growth in 2,000)
    assert len(ckpt["optimizer"]["state"]) > 0 and skipped < 10  # it trained
    assert all(w.dtype == torch.float32 for w in ckpt["model"].values())  # autocast: the weights stay fp32


@pytest.mark.slow
def test_fp16_skips_the_steps_whose_gradients_overflow(tiny_data, tmp_path):
    """Every step overflows at a loss scale of 2^40..2^38: the scaler skips them all (AdamW never
    stepped, so it has no moments) and halves the scale each time."""
    ckpt, stdout = fp16_train(tiny_data, tmp_path / "t.pt", "--max_iters", "3", huge_scale=True)
    assert ckpt["step"] == 3 and ckpt["optimizer"]["state"] == {}
    assert ckpt["scaler"]["scale"] == 2.0 ** 37
    assert "fp16: 3 of 3 steps skipped (gradients overflowed), loss scale now 1.37439e+11" in stdout


@pytest.mark.slow
def test_fp16_resume_restores_the_loss_scale(tiny_data, tmp_path):
    """From 2^40 the first steps are skipped until the scale has come down; a run stopped among
    them and resumed must go on from its scale, not from a new one (which would skip them again)."""
    schedule = ["--lr_decay_iters", "40"]
    straight, stdout = fp16_train(tiny_data, tmp_path / "a.pt", "--max_iters", "40", *schedule, huge_scale=True)
    skipped = int(stdout.split("fp16: ")[1].split(" of")[0])
    assert 10 < skipped < 40  # some steps skipped, and the later ones trained
    fp16_train(tiny_data, tmp_path / "b.pt", "--max_iters", "10", *schedule, huge_scale=True)
    resumed, _ = fp16_train(tiny_data, tmp_path / "b.pt", "--max_iters", "40", "--resume", *schedule, huge_scale=True)
    assert resumed["scaler"] == straight["scaler"]
    assert resumed["loss_log"] == pytest.approx(straight["loss_log"], abs=1e-5)
    for name, weight in straight["model"].items():
        torch.testing.assert_close(resumed["model"][name], weight, atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("saved", [{}, None])  # a bf16 or fp32 run's scaler state; a checkpoint from before fp16
def test_a_run_continued_in_fp16_after_another_precision_starts_a_new_scale(saved):
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    ckpt = {"optimizer": optimizer.state_dict(), "step": 7, "loss_log": [1.0], "torch_rng": torch.get_rng_state()}
    if saved is not None:
        ckpt["scaler"] = saved
    scaler = training.gradient_scaler("fp16", "cpu")
    assert training.restore_run(ckpt, optimizer, scaler, {}) == (7, [1.0])
    assert scaler.get_scale() == 2.0 ** 16  # GradScaler's first scale


@pytest.mark.parametrize("device, hardware, flag, precision, why", [
    ("cpu", True, "auto", "bf16", "auto: this CPU has bf16 units"),
    ("cpu", False, "auto", "fp32", "auto: this CPU has no bf16 units"),
    ("cpu", False, "bf16", "bf16", "--precision bf16"),  # forced: emulated, slow, but asked for
    ("cpu", True, "fp32", "fp32", "--precision fp32"),
    ("cuda", (9, 0), "auto", "bf16", "auto: CUDA compute capability 9.0 computes bf16"),   # H100
    ("cuda", (8, 0), "auto", "bf16", "auto: CUDA compute capability 8.0 computes bf16"),   # A100
    ("cuda", (7, 5), "auto", "fp16",                                                       # T4
     "auto: CUDA compute capability 7.5 has no bf16 (from 8.0): fp16 with a gradient scaler"),
    ("cuda", (7, 0), "auto", "fp16",                                                       # V100
     "auto: CUDA compute capability 7.0 has no bf16 (from 8.0): fp16 with a gradient scaler"),
    ("cuda", (7, 5), "fp32", "fp32", "--precision fp32"),
    ("mps", None, "auto", "fp32", "auto: mps: fp32"),
])
def test_the_precision_follows_the_hardware_unless_forced(monkeypatch, device, hardware, flag, precision, why):
    """--precision auto asks the hardware (the probes patched: the machine running the test
    decides nothing); the scaler is on exactly for fp16."""
    monkeypatch.setattr(training, "cpu_has_bf16_units", lambda: hardware)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: hardware)
    args = argparse.Namespace(precision=flag)
    assert training.resolve_precision(args, device) == why and args.precision == precision
    assert f"precision={precision} ({why})" in training.settings_line(args, precision=why)
    assert training.gradient_scaler(args.precision, "cpu").is_enabled() == (precision == "fp16")


@pytest.mark.parametrize("script", [train_ntp, distill_mtp])
def test_every_preset_leaves_the_precision_to_the_hardware(script, capsys):
    """No preset forces a precision: on a CPU without bf16 units a forced bf16 is emulated, many
    times slower than fp32, and fp16 needs a GPU to be fast. `--help` says so: the default it
    shows is the word auto."""
    for name in script.PRESETS:
        assert "precision" not in script.PRESETS[name], name
        assert script.parse_args(["--preset", name]).precision == "auto"
        with pytest.raises(SystemExit):
            script.parse_args(["--preset", name, "--help"])
        help_text = " ".join(capsys.readouterr().out.split())
        assert "--precision {auto,bf16,fp16,fp32} the autocast dtype of the forward passes; auto: bf16" in help_text
        assert "(default: auto)" in help_text.split("--precision {auto,bf16,fp16,fp32} the")[1].split("--")[0]


@pytest.mark.slow
def test_compiled_training_computes_the_eager_losses(tiny_data, tmp_path):
    """--compile (inductor compiles for the CPU here): the same steps, the same losses. One layer:
    compiling takes time in proportion to the layers."""
    eager = train(tiny_data, tmp_path / "e.pt", "--max_iters", "5", "--eval_interval", "1000", "--n_layer", "1")
    compiled = train(tiny_data, tmp_path / "c.pt", "--max_iters", "5", "--eval_interval", "1000", "--n_layer", "1",
                     "--compile")
    assert compiled["loss_log"] == pytest.approx(eager["loss_log"], rel=1e-4)
    assert compiled["val_loss"] == pytest.approx(eager["val_loss"], rel=1e-4)


@pytest.mark.slow
def test_the_gpu_presets_run_on_the_cpu(tiny_data, tmp_path):
    """What `make demo GPU=1` switches on besides CUDA itself, for two steps each on the CPU: the
    GPU presets' widths and batch layout in both training scripts, and the distillation step
    through torch.compile (train_ntp.py's compiled step is test_compiled_training_computes_the_
    eager_losses's; bf16 autocast is test_bf16_training_on_answers_lowers_the_loss's: turned on
    here, it would make a CPU without bf16 units emulate these widths' matmuls for minutes). One
    layer instead of the presets' 8 and 4: compiling takes time in proportion to the layers, and
    every layer is the same code."""
    few = ["--max_iters", "2", "--batch_size", "2", "--eval_iters", "1", "--device", "cpu", "--precision", "fp32"]
    for preset, path in (("teacher_gpu", "t.pt"), ("draft_gpu", "d.pt")):
        r = run_script("train_ntp.py", "--preset", preset, "--data_dir", str(tiny_data), "--out", str(tmp_path / path),
                       "--n_layer", "1", "--no-compile", *few, timeout=900)
        assert r.returncode == 0, r.stderr[-2000:]
    assert load_checkpoint(str(tmp_path / "d.pt"))["config"]["n_embd"] == 256
    teacher = load_checkpoint(str(tmp_path / "t.pt"))
    assert (teacher["config"]["n_head"], teacher["config"]["n_embd"], teacher["step"]) == (8, 512, 2)
    r = run_script("distill_mtp.py", "--preset", "gpu", "--teacher", str(tmp_path / "t.pt"),
                   "--out", str(tmp_path / "s.pt"), *few, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "compile=True" in r.stdout, r.stdout[:2000]
    student = load_checkpoint(str(tmp_path / "s.pt"))
    assert student["step"] == 2 and math.isfinite(student["val_loss"])


@pytest.mark.slow
def test_resume_continues_exactly_where_it_stopped(tiny_data, tmp_path):
    schedule = ["--lr_decay_iters", "30", "--eval_interval", "10"]
    straight = train(tiny_data, tmp_path / "a.pt", "--max_iters", "30", *schedule)
    train(tiny_data, tmp_path / "b.pt", "--max_iters", "15", *schedule)
    assert load_checkpoint(str(tmp_path / "b.pt"))["step"] == 15
    resumed = train(tiny_data, tmp_path / "b.pt", "--max_iters", "30", "--resume", *schedule)
    assert resumed["step"] == 30
    for name, weight in straight["model"].items():  # same data, same updates: the same model
        torch.testing.assert_close(resumed["model"][name], weight, atol=1e-6, rtol=1e-5, msg=name)
    assert resumed["val_loss"] == pytest.approx(straight["val_loss"], abs=1e-5)


@pytest.mark.slow
def test_torchrun_with_two_processes_matches_one_process(tiny_data, tmp_path):
    common = ["--max_iters", "10", "--grad_accum", "2", "--eval_interval", "1000"]
    single = train(tiny_data, tmp_path / "one.pt", *common)
    r = run_script(*TORCHRUN_2, "train_ntp.py", "--data_dir", str(tiny_data), "--out", str(tmp_path / "two.pt"),
                   *TINY_RUN, *common)
    assert r.returncode == 0, r.stderr[-2000:]
    double = load_checkpoint(str(tmp_path / "two.pt"))
    assert double["step"] == 10
    assert double["loss_log"] == pytest.approx(single["loss_log"], abs=1e-4)  # every step's global-batch loss
    assert double["val_loss"] == pytest.approx(single["val_loss"], abs=1e-4)


@pytest.mark.slow
def test_the_same_seed_gives_the_same_run_and_the_same_text(tiny_data, tmp_path):
    a = train(tiny_data, tmp_path / "a.pt", "--max_iters", "10", "--eval_interval", "1000")
    b = train(tiny_data, tmp_path / "b.pt", "--max_iters", "10", "--eval_interval", "1000")
    other = train(tiny_data, tmp_path / "c.pt", "--max_iters", "10", "--eval_interval", "1000", "--seed", "7")
    assert a["loss_log"] == b["loss_log"] and a["loss_log"] != other["loss_log"]
    for name, weight in a["model"].items():
        assert torch.equal(b["model"][name], weight), name

    def decode(*flags):
        r = run_script("decode.py", "--ckpt", str(tmp_path / "a.pt"), "--prompt", "How many?", "--max_new_tokens",
                       "20", "--device", "cpu", *flags)
        assert r.returncode == 0, r.stderr[-2000:]
        return r.stdout
    assert decode() == decode()  # greedy: no randomness at all
    sampled = decode("--temperature", "1.0", "--seed", "3")
    assert sampled == decode("--temperature", "1.0", "--seed", "3")
    assert sampled != decode("--temperature", "1.0", "--seed", "4")


@pytest.mark.parametrize("flags, message", [
    (["--data_dir", "/nonexistent"], "no tokenizer at /nonexistent/tokenizer.json: run `python data/prepare.py`"),
    (["--resume", "--out", "/nonexistent/t.pt"], "no checkpoint at /nonexistent/t.pt"),
    (["--device", "cuda"] if not torch.cuda.is_available() else ["--device", "tpu"], "--device"),
])
def test_training_errors_are_one_line(tiny_data, flags, message):
    r = run_script("train_ntp.py", "--data_dir", str(tiny_data), *flags)
    assert r.returncode != 0
    assert message in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_a_fresh_run_sets_an_existing_checkpoint_aside(tiny_data, tmp_path):
    train(tiny_data, tmp_path / "t.pt", "--max_iters", "3")
    r = run_script("train_ntp.py", "--data_dir", str(tiny_data), "--out", str(tmp_path / "t.pt"), *TINY_RUN,
                   "--max_iters", "1")
    assert r.returncode == 0 and f"moved the existing {tmp_path / 't.pt'} to {tmp_path / 't.pt'}.old" in r.stdout
    assert load_checkpoint(str(tmp_path / "t.pt.old"))["step"] == 3  # the earlier run survives
    assert load_checkpoint(str(tmp_path / "t.pt"))["step"] == 1
    r = run_script("train_ntp.py", "--data_dir", str(tiny_data), "--out", str(tmp_path / "t.pt"), *TINY_RUN,
                   "--max_iters", "2")
    assert r.returncode == 0 and f"to {tmp_path / 't.pt'}.old1" in r.stdout  # .old is taken: never overwritten
    assert [load_checkpoint(str(tmp_path / f))["step"] for f in ("t.pt.old", "t.pt.old1", "t.pt")] == [3, 1, 2]


def test_resuming_a_draft_as_a_teacher_is_refused(tiny_data, tmp_path):
    train(tiny_data, tmp_path / "d.pt", "--max_iters", "2", "--kind", "draft")
    r = run_script("train_ntp.py", "--data_dir", str(tiny_data), "--out", str(tmp_path / "d.pt"), "--resume", *TINY_RUN)
    assert r.returncode != 0 and "is a draft checkpoint, but a teacher" in r.stderr


@pytest.mark.slow
def test_bench_writes_the_promised_rows(tiny_data, tmp_path):
    train(tiny_data, tmp_path / "teacher.pt", "--max_iters", "20")
    train(tiny_data, tmp_path / "draft.pt", "--max_iters", "5", "--kind", "draft")
    r = run_script("bench.py", "--teacher", str(tmp_path / "teacher.pt"), "--draft", str(tmp_path / "draft.pt"),
                   "--student", str(tmp_path / "no_student.pt"), "--n", "4", "--n_uncached", "2", "--max_new_tokens", "20", "--device", "cpu",
                   "--out_dir", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.load(open(tmp_path / "out" / "bench.json"))
    assert [(row["model"], row["strategy"]) for row in rows] == [
        ("teacher", "ntp greedy"), ("teacher", "ntp greedy, no cache"), ("draft", "ntp greedy"),
        ("teacher + draft", "speculative gamma=4")]
    for row in rows:
        assert {"model", "strategy", "accuracy", "well_formed", "steps_right", "tokens_per_forward",
                "tokens_per_second", "speedup"} <= set(row)
        assert row["tokens_per_second"] > 0 and 0 <= row["well_formed"] <= 100 and 0 <= row["steps_right"] <= 100
    assert all(row["tokens_per_forward"] == 1.0 for row in rows[:3])
    assert rows[1]["identical"] == rows[3]["identical"] == 100.0  # lossless
    assert (tmp_path / "out" / "pareto.png").stat().st_size > 0
    assert "| teacher | ntp greedy |" in (tmp_path / "out" / "bench.md").read_text()
    assert "Worked steps of teacher ntp greedy, by kind" in (tmp_path / "out" / "bench.md").read_text()
    assert json.loads(r.stdout.strip().splitlines()[-1]) == rows  # the last line is the JSON


def test_a_data_dir_without_token_files_is_named(tiny_data, tmp_path):
    (tmp_path / "tokenizer.json").write_bytes((tiny_data / "tokenizer.json").read_bytes())
    r = run_script("train_ntp.py", "--data_dir", str(tmp_path), *TINY_RUN)
    assert r.returncode != 0 and f"no train data at {tmp_path}/train.bin" in r.stderr and "Traceback" not in r.stderr
