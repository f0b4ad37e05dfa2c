"""bench.py: what it counts (form and arithmetic apart, intervals, the modelled speed-up) and what
it shows of ConfAdapt's gate (where answers part from k=1, the calibration)."""
import json
from functools import partial

import pytest
import torch

from bench import (PositionsFed, Strategy, Tally, auto_workers, calibration, clustered_interval, first_departures, majority,
                   merge_tallies, run_bench, sampled_columns, wilson_interval)
from common import emit_only
from conftest import TINY
from data import problems
from data.tokenizer import EOT, load_tokenizer, padded_vocab_size
from decode import Generation, generate_mtp, generate_ntp, generate_speculative
from model import GPT, GPTConfig, add_mask_token
from report import accuracy_at, speed_table


def test_bench_scores_form_and_arithmetic_apart(tiny_data):
    """bench.run_bench with two fake strategies: one writes the reference answers, one the same
    answers with a wrong '####' line (ill-formed and wrong, though every step is right)."""
    enc = load_tokenizer(str(tiny_data / "tokenizer.json"))
    eos = enc.encode(EOT, allowed_special={EOT})[0]
    tests = [json.loads(line) for line in open(tiny_data / "test.jsonl")][:10]
    answer_of = {tuple(enc.encode_ordinary(problems.format_prompt(t["question"]))): t["answer"] for t in tests}

    def writes(change):
        def decode(prompt_ids):
            text = " " + change(answer_of[tuple(prompt_ids)])
            return Generation(tokens=enc.encode_ordinary(text) + [eos], n_forward=1)
        return decode
    rows, _ = run_bench([Strategy("m", "reference", "ntp", writes(lambda a: a), 10, (1, 0), (1, 0)),
                         Strategy("m", "wrong final", "ntp", writes(lambda a: a.rsplit("#### ", 1)[0] + "#### 1000"),
                                  10, (1, 0), (1, 0))], tests, enc)
    assert [(r["accuracy"], r["well_formed"], r["steps_right"]) for r in rows] == [(100, 100, 100), (0, 0, 100)]


def test_merged_tallies_are_what_one_process_would_count():
    """Two shares of the problems, counted apart, then merged: counts add up, the kinds of step
    add up by kind, acceptance adds up by draft position (where only one share reached a position
    too), and the answers follow in problem order."""
    first = Tally(correct=2, well_formed=3, worked=4, worked_right=3, step_kinds={"+ 1d": [1, 3]}, tokens=10,
                  seconds=1.5, tpf=3.0, forwards=6, draft_forwards=2, steps=2, accepted=3, proposed_at=[2, 1],
                  accepted_at=[2, 1], outputs=[[1], [2]], chunks=[[1], [1]])
    second = Tally(correct=1, well_formed=1, worked=2, worked_right=2, step_kinds={"+ 1d": [0, 1], "* 2d": [1, 1]},
                   tokens=5, seconds=0.5, tpf=1.0, forwards=3, draft_forwards=1, steps=1, accepted=2,
                   proposed_at=[1, 1, 1], accepted_at=[1, 1, 0], outputs=[[3]], chunks=[[1]])
    assert merge_tallies([first, second]) == Tally(
        correct=3, well_formed=4, worked=6, worked_right=5, step_kinds={"+ 1d": [1, 4], "* 2d": [1, 1]}, tokens=15,
        seconds=2.0, tpf=4.0, forwards=9, draft_forwards=3, steps=3, accepted=5, proposed_at=[3, 2, 1],
        accepted_at=[3, 2, 0], outputs=[[1], [2], [3]], chunks=[[1], [1], [1]])
    assert first.step_kinds == {"+ 1d": [1, 3]} and first.proposed_at == [2, 1]  # the shares are left as they were


def test_sampled_columns_count_by_problem():
    """Three problems, three samples each: the mean accuracy over samples, the distinct samples
    per problem, the majority of the first m samples (earliest on a tie) and the verifier's
    log-probability per token, by hand."""
    t = Tally(outputs=[[1, 2], [1, 2], [3], [4], [5], [5], [6, 6], [7], [8]],
              answers=["5", "5", "6", "1", "2", "2", "9", "3", "3"],
              right=[True, True, False, False, True, True, False, True, True],
              logprobs=[-1.0, -1.0, -2.0, -1.0, -1.0, -1.0, -4.0, -1.0, -1.0], forwards=18, tokens=11)
    t.correct = sum(t.right)
    c = sampled_columns(t, 3)
    assert c["distinct_per_problem"] == round((2 + 2 + 3) / 3, 2)
    # m=1: first samples right, wrong, wrong. m=2: ties go to the first: right, wrong, wrong.
    # m=3: "5" twice (right), "2" twice (right), "3" twice (right).
    assert c["vote_accuracy"] == [33.3, 33.3, 100.0]
    assert c["logprob_per_token"] == round(-13.0 / 11, 3) and c["passes_per_sample"] == 2.0
    assert c["accuracy_95"] == [66.7, 66.7]  # every problem 2 of 3: resampling problems cannot move it


@pytest.mark.parametrize("answers, winner", [(["1", "2", "2"], "2"), (["1", "2"], "1"), ([None, None, "3"], None),
                                             (["4"], "4")])
def test_the_majority_is_the_commonest_answer_and_the_earliest_on_a_tie(answers, winner):
    assert majority(answers) == winner


def test_the_clustered_interval_widens_when_a_problems_samples_agree():
    """Ten problems of four samples: all four right or all four wrong is one draw per problem,
    not four, so its interval is wider than that of the same 20 of 40 right spread evenly."""
    together = clustered_interval([4] * 5 + [0] * 5, [4] * 10, 100)
    spread = clustered_interval([2] * 10, [4] * 10, 100)
    assert spread == [50.0, 50.0] and together[0] < 30 and together[1] > 70


@pytest.mark.parametrize("device, cores, workers", [
    ("cpu", 1, 1), ("cpu", 2, 2), ("cpu", 16, 2),           # a second thread shares nothing; a second process does
    ("cuda", 2, 2), ("cuda:1", 16, 8), ("cuda", 64, 8),     # one per core, up to 8, keep one GPU busy
    ("mps", 8, 1)])
def test_auto_workers_follow_the_device_and_its_cores(monkeypatch, device, cores, workers):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: cores)
    assert auto_workers(device) == workers
    # --compile: CUDA graphs on a GPU, one process; the CPU's compiled code gains from two as the plain
    assert auto_workers(device, compiled=True) == (1 if device.startswith("cuda") else workers)


@pytest.mark.slow
def test_two_workers_count_what_one_counts(tiny_data):
    """The problems shared out between two processes: the same rows as one process gives, timings
    apart, and every answer in problem order. A strategy on fewer problems than the others (as
    the no-cache row) and one with drafts (counted by draft position) are merged too."""
    enc = load_tokenizer(str(tiny_data / "tokenizer.json"))
    eos = enc.encode(EOT, allowed_special={EOT})[0]
    config = GPTConfig(**{**TINY.__dict__, "vocab_size": padded_vocab_size(enc)})
    torch.manual_seed(0)
    teacher, draft = GPT(config).eval(), GPT(config).eval()
    student = add_mask_token(GPT(config).eval(), enc.n_vocab, torch.Generator().manual_seed(0))
    teacher, draft, student = (emit_only(m, enc.n_vocab) for m in (teacher, draft, student))
    shared = dict(max_new_tokens=12, eos_id=eos)
    counted = PositionsFed()  # the positions the teacher computes, counted in each worker, added up
    teacher.register_forward_pre_hook(counted, with_kwargs=True)
    ntp = Strategy("teacher", "ntp greedy", "ntp", partial(generate_ntp, teacher, **shared), 7, (1, 0), (1, 0),
                   positions=counted)
    strategies = [ntp,
                  Strategy("student", "static k=3", "static k", partial(generate_mtp, student, mask_ids=[enc.n_vocab] * 2,
                                                                          k=3, **shared), 2, (1, 0), (1, 0)),
                  Strategy("teacher + draft", "speculative gamma=3", "speculative",
                           partial(generate_speculative, teacher, draft, gamma=3, **shared), 7, (1, 1), (1, 1),
                           reference=ntp, positions=counted)]
    tests = [json.loads(line) for line in open(tiny_data / "test.jsonl")][:7]
    one_rows, one = run_bench(strategies, tests, enc, workers=1)
    two_rows, two = run_bench(strategies, tests, enc, workers=2)
    timing = ("tokens_per_second", "speedup")
    assert [{k: v for k, v in r.items() if k not in timing} for r in two_rows] == \
        [{k: v for k, v in r.items() if k not in timing} for r in one_rows]
    assert [len(t.outputs) for t in two] == [7, 2, 7]
    assert two_rows[0]["positions_per_forward"] == 1.0 and two_rows[2]["positions_per_forward"] > 1
    for a, b in zip(one, two):
        assert (a.outputs, a.chunks, a.proposed_at, a.accepted_at) == (b.outputs, b.chunks, b.proposed_at,
                                                                       b.accepted_at)


@pytest.mark.parametrize("correct, n, interval", [
    (50, 100, (40.4, 59.6)),    # Wilson's 95% interval, computed by hand
    (0, 10, (0.0, 27.8)),       # never below 0 ...
    (10, 10, (72.2, 100.0)),    # ... nor above 100, and not of zero width at the edges
])
def test_accuracy_intervals_are_wilson_95(correct, n, interval):
    assert wilson_interval(correct, n) == list(interval)


def test_accuracy_is_read_off_a_curve_at_matched_tokens_per_forward():
    curve = [dict(tokens_per_forward=t, accuracy=a) for t, a in ((3.0, 40.0), (1.0, 90.0), (2.0, 70.0))]
    assert accuracy_at(curve, 1.5) == 80.0 and accuracy_at(curve, 2.5) == 55.0 and accuracy_at(curve, 2.0) == 70.0
    assert accuracy_at(curve, 3.5) is None and accuracy_at(curve, 0.5) is None


def test_the_modelled_speedup_counts_the_parameters_read(tiny_data):
    """By hand, for 12 tokens. Sizes (ours, then the large pair): teacher 6 and 8e9, draft 1 and 1e9.
    Teacher NTP: 12 passes, 1x. Speculative, 4 teacher + 8 draft passes: 4*6 + 8*1 = 32 = 5.33
    teacher passes -> 2.25x; 4*8e9 + 8*1e9 = 5 8B passes -> 2.4x. The draft alone, 12 passes:
    2 or 1.5 teacher passes -> 6x or 8x. MTP-drafted, 4 + 4 passes of teacher-sized models -> 1.5x.
    The student, 4 passes (its masks ride along for free) -> 3x."""
    enc = load_tokenizer(str(tiny_data / "tokenizer.json"))
    eos = enc.encode(EOT, allowed_special={EOT})[0]
    problem = [{"question": "Mia has 2 apples. How many apples does she have?", "answer": "#### 2"}]

    def fake(model, n_forward, n_draft_forward, sizes, large):
        decode = lambda ids: Generation(tokens=list(range(11)) + [eos], n_forward=n_forward,  # noqa: E731
                                        n_draft_forward=n_draft_forward)
        return Strategy(model, "-", "ntp", decode, 1, sizes, large)
    rows, _ = run_bench([fake("teacher", 12, 0, (6, 0), (8e9, 0)), fake("teacher + draft", 4, 8, (6, 1), (8e9, 1e9)),
                      fake("draft", 12, 0, (1, 0), (1e9, 0)), fake("teacher + student", 4, 4, (6, 6), (8e9, 8e9)),
                      fake("student", 4, 0, (6, 0), (8e9, 0))], problem, enc)
    assert [(r["modelled_ours"], r["modelled_large"]) for r in rows] == \
        [(1.0, 1.0), (2.25, 2.4), (6.0, 8.0), (1.5, 1.5), (3.0, 3.0)]


@pytest.mark.parametrize("output, reference, sizes, expected", [
    ([1, 2, 3, 4], [1, 2, 3, 4], [2, 2], None),                        # the same answer
    ([1, 2, 4, 5], [1, 2, 3, 4, 5], [1, 3], ("dropped", 2)),           # 3 skipped: the 2nd pass's 2nd token
    ([1, 2, 2, 3], [1, 2, 3, 4], [2, 2], ("repeated", 1)),             # 2 written twice, a pass's first token
    ([1, 9, 3, 4], [1, 2, 3, 4], [4], ("other", 2)),
])
def test_first_departures_name_the_first_differing_token_and_its_place(output, reference, sizes, expected):
    d = first_departures([output], [sizes], [reference])
    if expected is None:
        assert d["answers"] == 0 and d["place"] == {}
    else:
        kind, place = expected
        assert d["answers"] == 1 and d[kind] == 1 and d["place"] == {place: 1}


def test_calibration_counts_every_block_position_against_the_k1_answer(tiny_data):
    """Along the student's own k=1 answers, a block after every answer position: each block
    position's prediction is counted once per block, in the bin of its confidence, and counted
    right where it equals the k=1 answer's token there and where it equals the teacher's next
    token, as running each block on its own says. With a student that is still a copy of its
    teacher, block position 1 is both: 100%."""
    enc = load_tokenizer(str(tiny_data / "tokenizer.json"))
    config = GPTConfig(**{**TINY.__dict__, "vocab_size": padded_vocab_size(enc)})  # a free slot for <MTP>
    torch.manual_seed(0)
    teacher = emit_only(GPT(config).eval(), enc.n_vocab)
    student = GPT(config).eval()
    student.load_state_dict(teacher.state_dict())
    mask_id, k = enc.n_vocab, 4
    student = emit_only(add_mask_token(student, mask_id, torch.Generator().manual_seed(0)), enc.n_vocab)
    tests = [json.loads(line) for line in open(tiny_data / "test.jsonl")][:3]
    prompts = [enc.encode_ordinary(problems.format_prompt(t["question"])) for t in tests]
    k1 = [generate_mtp(student, p, 20, eos_id=-1, mask_ids=[], k=1).tokens for p in prompts]
    tokens = sum(k1, [])
    with torch.no_grad():  # a mask read as the token the answers repeat most guesses some of them right
        student.transformer.wte.weight[mask_id] = student.transformer.wte.weight[max(tokens, key=tokens.count)]
    ckpt = {"k_max": k, "mask_id": mask_id, "mask_per_offset": False, "bidirectional": False, "temperatures": None}
    gate = calibration(student, ckpt, teacher, tests, k1, enc)
    assert gate["calibrated"] is None
    sums, bins = gate["sums"], gate["bins"]  # (k, bins, [n, confidence, equal to k=1, equal to the teacher])
    assert sums.shape == (k, len(bins) - 1, 4)
    right_k1, right_teacher, blocks = torch.zeros(k), torch.zeros(k), 0
    for prompt, answer in zip(prompts, k1):  # each block on its own
        x = prompt + answer
        teacher_next = teacher(torch.tensor([x]))[0][0].argmax(-1)  # (N,)
        for i in range(len(prompt) - 1, len(x) - k):
            guess = student(torch.tensor([x[:i + 1] + [mask_id] * (k - 1)]))[0][0, i:].argmax(-1)  # (k,)
            right_k1 += (guess == torch.tensor(x[i + 1:i + 1 + k])).float()
            right_teacher += (guess == teacher_next[i:i + k]).float()
            blocks += 1
    assert (sums[:, :, 0].sum(dim=1) == blocks).all()
    torch.testing.assert_close(sums[:, :, 2].sum(dim=1), right_k1)
    torch.testing.assert_close(sums[:, :, 3].sum(dim=1), right_teacher)
    assert right_k1[0] == right_teacher[0] == blocks and 0 < right_k1[1:].sum() < (k - 1) * blocks
    low, high = torch.tensor(bins[:-1]), torch.tensor(bins[1:])  # each bin's confidences lie between its edges
    assert (sums[:, :, 1] >= low * sums[:, :, 0] - 1e-4).all() and (sums[:, :, 1] <= high * sums[:, :, 0] + 1e-4).all()


def test_the_calibrated_view_rebins_the_same_tokens_at_the_fitted_temperatures(tiny_data):
    """The calibrated view reads each block position at its own temperature: a position at 1 is
    the plain view, a colder one is the plain view of a student whose logits are divided by that
    temperature. Every token is still counted once and agrees as often; only its confidence,
    so its bin, moves."""
    enc = load_tokenizer(str(tiny_data / "tokenizer.json"))
    config = GPTConfig(**{**TINY.__dict__, "vocab_size": padded_vocab_size(enc)})
    torch.manual_seed(0)
    student = emit_only(add_mask_token(GPT(config).eval(), enc.n_vocab, torch.Generator().manual_seed(0)), enc.n_vocab)
    teacher = emit_only(GPT(config).eval(), enc.n_vocab)
    tests = [json.loads(line) for line in open(tiny_data / "test.jsonl")][:3]
    k1 = [generate_mtp(student, enc.encode_ordinary(problems.format_prompt(t["question"])), 20, eos_id=-1,
                       mask_ids=[], k=1).tokens for t in tests]
    ckpt = {"k_max": 4, "mask_id": enc.n_vocab, "mask_per_offset": False, "bidirectional": False}
    last_cold = calibration(student, {**ckpt, "temperatures": [1.0, 1.0, 1.0, 0.05]}, teacher, tests, k1, enc)
    plain, sharp = last_cold["sums"], last_cold["calibrated"]
    assert torch.equal(sharp[:3], plain[:3])  # positions at temperature 1: the plain view
    assert not torch.equal(sharp[3], plain[3])
    assert torch.equal(plain.sum(1)[:, [0, 2, 3]], sharp.sum(1)[:, [0, 2, 3]])  # the same tokens, as often right
    assert sharp[3, :, 1].sum() > plain[3, :, 1].sum()  # a cold temperature raises the confidences
    handle = student.lm_head.register_forward_hook(lambda module, inputs, logits: logits / 0.05)
    cooled = calibration(student, {**ckpt, "temperatures": None}, teacher, tests, k1, enc)["sums"]
    handle.remove()
    torch.testing.assert_close(sharp[3], cooled[3])


def test_the_speed_table_sets_each_row_beside_its_twin_in_every_run():
    """report.py DIR...: tokens/s over the first run's, and whether the answers are the same
    (every field but the timings)."""
    def row(strategy, tokens_per_second, accuracy=90.0):
        return {"model": "teacher", "strategy": strategy, "tokens_per_forward": 1.0, "accuracy": accuracy,
                "tokens_per_second": tokens_per_second, "speedup": 1.0, "positions_per_forward": None}
    plain = [row("ntp greedy", 100.0), row("static k=3", 200.0)]
    compiled = [row("static k=3", 500.0), row("ntp greedy", 300.0, accuracy=89.5)]  # another order, one answer differs
    lines = speed_table([("plain", plain), ("compiled", compiled), ("plain again", plain)]).splitlines()
    assert lines[0] == ("| model | strategy | tokens/forward | plain: tokens/s (speed-up) | compiled: tokens/s (speed-up) "
                        "| plain again: tokens/s (speed-up) | compiled / plain | plain again / plain | same answers |")
    assert lines[2] == "| teacher | ntp greedy | 1.0 | 100 (1.0) | 300 (1.0) | 100 (1.0) | 3.00 | 1.00 | no |"
    assert lines[3] == "| teacher | static k=3 | 1.0 | 200 (1.0) | 500 (1.0) | 200 (1.0) | 2.50 | 1.00 | yes |"
