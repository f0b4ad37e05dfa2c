"""
Every decoding strategy side by side, on the same held-out problems, in the same run.

    python bench.py                                   # everything found in out/, 400 test problems
    python bench.py --n 100 --strategies ntp,confadapt,speculative --device cuda
    python bench.py --compare out/ablations/student_*.pt  # the ablations (make ablations)
    python bench.py --temperature 1 --samples 4          # the sampled bench (make sampling)

Rows: the teacher's NTP greedy (the baseline; and without the cache), the draft model, the
student at static k and ConfAdapt over a tau sweep (and the same sweep with its confidences
read at the temperatures fitted after distillation), speculative decoding (draft -> teacher),
self-speculative decoding (the student verifies its own mask drafts) and MTP-drafted
speculative decoding (student drafts -> teacher verifies). For each: accuracy on the '####'
answer with its 95% interval, the share of well-formed answers and of worked steps that are
right (data/check.py), tokens per forward pass of the model that decides the output, drafts
accepted per step, wall-clock tokens/s and speed-up, the speed-up modelled where a pass costs
only the reading of the weights (`modelled_speedup`), and for lossless strategies the share
of outputs identical to their reference's. The strategies run interleaved, problem by problem,
so a slow patch of the machine slows all of them alike; on a CPU, in two processes of one thread
each, which share out the problems (`run_bench`).
After the rows, what ConfAdapt's gate lets through: the student's calibration and where its
answers first part from its own k=1 answers (`calibration`, `first_departures`).
Writes out/bench.{json,md}, out/pareto.png, out/chunks.png and out/calibration.{json,png}
(report.py), prints the table, then the rows as one JSON line. --compare measures static k and ConfAdapt for each student
given, into out/ablations.{json,md,png} and out/agreement.png.

--temperature T > 0: the sampled bench. Every strategy samples, S samples of each problem, and
each row gets, beyond the above: the accuracy as the mean over samples (its interval resampling
problems), fidelity to the model's own distribution (the log-probability per token its verifier,
the teacher or the student's k = 1, gives its samples at T, beside the same for the verifier's
own samples: a lossless row matches it, a row too sure or too incoherent lies above or below),
distinct samples (token sequences) per problem among the S, and the majority vote of the S (self-consistency)
beside the passes it cost (`sampled_columns`). Writes out/sampling.{json,md,png} (report.py).
"""
import argparse
import json
import multiprocessing
import os
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Optional

import numpy as np
import torch
from tqdm import tqdm

from common import (HelpFormatter, UserError, check_flags, check_same_tokenizer, load_for_decoding, pick_device,
                    student_k, student_mask_ids)
from data.check import check_answer, step_kind
from data.problems import final_answer, format_prompt
from data.tokenizer import EOT
from compiled import CompiledDecoder
from decode import generate_mtp, generate_mtp_speculative, generate_ntp, generate_self_speculative, generate_speculative
from model import mtp_layout
from report import CURVES, write_outputs, write_sampled
from tree import generate_tree_mtp_speculative, generate_tree_self_speculative


@dataclass
class Strategy:
    model: str                        # whose output it is: "teacher", "student", "teacher + draft", ...
    name: str                         # "ConfAdapt tau=0.9"
    family: str                       # the curve it belongs to: "ntp", "static k", "ConfAdapt", ...
    decode: Callable                  # prompt ids -> Generation
    n: int                            # how many of the problems it runs on
    sizes: tuple                      # parameters of (the model whose passes decide, the drafter): modelled_speedup
    large: tuple                      # the same for a large pair: an 8B target, a 1B draft
    reference: Optional["Strategy"] = None  # lossless: the strategy whose output it reproduces token for token
    tau: Optional[float] = None       # ConfAdapt's threshold
    k: Optional[int] = None           # static k's k
    verifier: object = None           # the model whose own sampling a sampled row is measured against (fidelity)
    positions: object = None          # the PositionsFed of the model that decides (None: not counted)


class PositionsFed:
    """A forward pre-hook that counts the positions a model computes: rows x tokens of every pass,
    whatever fills them (new tokens, drafts, masks, a tree's guesses). A pass of a small model
    costs about the same whatever its width on a GPU, not on a CPU: the count says what a strategy
    spends, beside the passes it saves."""

    def __init__(self):
        self.n = 0

    def __call__(self, module, args, kwargs):
        self.n += (args[0] if args else kwargs["idx"]).numel()


@dataclass
class Tally:
    """What run_bench counts for one strategy."""
    correct: int = 0
    well_formed: int = 0
    worked: int = 0                   # worked steps (a op b = c) written ...
    worked_right: int = 0             # ... and right
    step_kinds: dict = field(default_factory=dict)  # "* 2d x 1d -> 3d": [wrong, written]
    tokens: int = 0
    positions: int = 0                # positions the deciding model computed after the prompts (PositionsFed)
    seconds: float = 0.0
    tpf: float = 0.0                  # the sum of each generation's tokens per forward pass
    forwards: int = 0
    draft_forwards: int = 0
    steps: int = 0                    # speculative strategies: verification steps ...
    accepted: int = 0                 # ... the drafts accepted in them ...
    proposed_at: list = field(default_factory=list)  # ... and by draft position j: steps that proposed a j-th draft
    accepted_at: list = field(default_factory=list)  # ... and steps where drafts 1..j all stood
    outputs: list = field(default_factory=list)      # every generation's tokens
    chunks: list = field(default_factory=list)       # ... and its tokens per step
    answers: list = field(default_factory=list)      # ... its '####' answer
    right: list = field(default_factory=list)        # ... whether that is the right one
    logprobs: list = field(default_factory=list)     # sampled: the verifier's log-probability of its tokens


LARGE = {"teacher": 8e9, "student": 8e9, "draft": 1e9}  # Llama-3.1-8B and Llama-3.2-1B's sizes


def run_bench(strategies, problems, enc, workers=1, sampling=None):
    """Run every strategy on each problem in turn; returns one row of results per strategy (the
    first strategy is the baseline of the speed-ups) and the tallies behind them. With `workers`
    > 1 the problems are shared out, in consecutive runs, among that many processes of one thread
    each: a pass of a tiny model is mostly fixed per-pass cost, which a second thread does not
    share, so two single-thread processes decode about twice as much as one process of two.
    `sampling`: decode_share's, for a sampled bench."""
    workers = min(workers, len(problems))
    if workers == 1:
        tallies = decode_share(strategies, problems, enc, sampling=sampling)
    else:  # spawn, not fork: a process forked from one that has run torch's thread pool can hang
        starts = [len(problems) * w // workers for w in range(workers + 1)]
        jobs = [(strategies, problems[a:b], enc, a, w, workers, sampling)
                for w, (a, b) in enumerate(zip(starts, starts[1:]))]
        pool = multiprocessing.get_context("spawn").Pool(workers)
        try:
            shares = pool.starmap(decode_share, jobs)  # [worker][strategy]
        finally:  # let the workers exit on their own (not terminate them), so they release what they hold
            pool.close()
            pool.join()
        tallies = [merge_tallies(parts) for parts in zip(*shares)]
    return summarize(strategies, tallies, sampling and sampling["samples"]), tallies


def decode_share(strategies, problems, enc, first=0, worker=0, workers=1, sampling=None):
    """Every strategy's Tally over `problems` (the bench's problems from number `first` on),
    interleaved: each problem is decoded by every strategy before the next, so a slow patch of
    the machine slows all of them alike. `sampling` (bench.py --temperature): a dict of
    "samples" per problem, "seed", "temperature" and "device"; each sample's generator is seeded
    by the seed, the problem's number and the sample's, so the draws do not depend on how the
    problems were shared out, and every strategy gets the same seeds."""
    if workers > 1:
        torch.set_num_threads(1)
    samples = sampling["samples"] if sampling else 1
    generator = torch.Generator(device=sampling["device"]) if sampling else None
    eos_id = enc.encode(EOT, allowed_special={EOT})[0]
    todo = [min(len(problems), max(0, s.n - first)) for s in strategies]  # each runs on the bench's first s.n
    for s, n in zip(strategies, todo):  # warm-up: the first call pays for allocations, not decoding
        if n:
            s.decode(enc.encode_ordinary(format_prompt(problems[0]["question"])))
    tallies = [Tally() for _ in strategies]
    if workers == 1:  # a bar per strategy
        bars = [tqdm(total=n * samples, desc=f"{s.model} {s.name}"[:36].ljust(36), position=i, leave=True,
                     dynamic_ncols=True, mininterval=1.0) for i, (s, n) in enumerate(zip(strategies, todo))]
    else:  # a bar per worker, counting its problems times its strategies
        bars = [tqdm(total=sum(todo) * samples, desc=f"worker {worker + 1} of {workers}: {len(strategies)} strategies",
                     position=worker, leave=True, dynamic_ncols=True, mininterval=1.0)] * len(strategies)
    for i, problem in enumerate(problems):
        prompt_ids = enc.encode_ordinary(format_prompt(problem["question"]))
        for s, t, bar, n in zip(strategies, tallies, bars, todo):
            if i >= n:
                continue
            for sample in range(samples):
                draws = {}
                if sampling:  # this sample's own seed
                    draws["generator"] = generator.manual_seed(sampling["seed"] * 10**6 + (first + i) * 1000 + sample)
                fed = s.positions.n if s.positions is not None else None
                t0 = time.perf_counter()
                gen = s.decode(prompt_ids, **draws)
                t.seconds += time.perf_counter() - t0
                if s.positions is not None:  # the prompt's positions but its last, which predicts the first new token
                    t.positions += s.positions.n - fed - (len(prompt_ids) - 1)
                count(t, gen, problem, enc, eos_id)
                if sampling:
                    t.logprobs.append(log_probability(s.verifier, prompt_ids, gen.tokens, sampling["temperature"]))
                bar.update()
            if workers == 1:
                bar.set_postfix(accuracy=f"{100 * t.correct / len(t.outputs):.1f}%", refresh=False)
    for bar in set(bars):
        bar.close()
    return tallies


def count(t, gen, problem, enc, eos_id):
    """Add one generation to its strategy's Tally."""
    answer = enc.decode([token for token in gen.tokens if token != eos_id])
    t.answers.append(final_answer(answer))
    t.right.append(t.answers[-1] == final_answer(problem["answer"]))
    t.correct += t.right[-1]
    checked = check_answer(problem["question"], answer)  # data/check.py
    t.well_formed += checked.well_formed
    t.worked += len(checked.steps)
    t.worked_right += checked.steps_right
    for a, op, b, _, right in checked.steps:
        wrong_written = t.step_kinds.setdefault(step_kind(a, op, b), [0, 0])
        wrong_written[0] += not right
        wrong_written[1] += 1
    t.outputs.append(gen.tokens)
    t.chunks.append(gen.chunks)
    t.tokens += len(gen.tokens)
    t.tpf += gen.tokens_per_forward  # averaged per generation, as the paper does
    t.forwards += gen.n_forward
    t.draft_forwards += gen.n_draft_forward
    for drafted, accepted in zip(gen.drafted, gen.accepted):  # speculative strategies only
        t.steps += 1
        t.accepted += accepted
        for j in range(drafted):  # drafts past a rejection count as rejected
            if j == len(t.proposed_at):
                t.proposed_at.append(0)
                t.accepted_at.append(0)
            t.proposed_at[j] += 1
            t.accepted_at[j] += j < accepted


@torch.no_grad()
def log_probability(model, prompt_ids, tokens, temperature):
    """The total log-probability that `model` sampling at `temperature` (over every token, no
    top-k) gives to `tokens` after the prompt: one pass over the whole sequence."""
    device = model.lm_head.weight.device
    logits, _ = model(torch.tensor([prompt_ids + tokens], device=device))           # (1, N, n_vocab)
    scores = logits[0, len(prompt_ids) - 1:-1].float() / temperature                 # (len(tokens), n_vocab)
    chosen = torch.tensor(tokens, device=device)[:, None]
    return float(torch.log_softmax(scores, dim=-1).gather(-1, chosen).sum())


def merge_tallies(parts):
    """One strategy's tallies from consecutive shares of the problems, as one process would
    have counted them all: counts add up, the per-problem lists follow in problem order."""
    total = Tally()
    for t in parts:
        for name, value in vars(t).items():
            mine = getattr(total, name)
            if name == "step_kinds":
                for kind, (wrong, written) in value.items():
                    pair = mine.setdefault(kind, [0, 0])
                    pair[0], pair[1] = pair[0] + wrong, pair[1] + written
            elif name in ("proposed_at", "accepted_at"):  # by draft position
                mine += [0] * (len(value) - len(mine))
                for j, v in enumerate(value):
                    mine[j] += v
            elif isinstance(value, list):  # per generation
                mine.extend(value)
            else:
                setattr(total, name, mine + value)
    return total


def summarize(strategies, tallies, samples=None):
    """One row of results per strategy (what bench.json holds), from run_bench's tallies.
    `samples`: a sampled bench's samples per problem, which adds the sampled columns (sampled_columns)."""
    outputs = {id(s): t.outputs for s, t in zip(strategies, tallies)}
    rows = []
    for s, t in zip(strategies, tallies):
        done = len(t.outputs)
        row = {"model": s.model, "strategy": s.name, "family": s.family,
               "n": done, "accuracy": round(100 * t.correct / done, 1),
               "accuracy_95": wilson_interval(t.correct, done),
               "well_formed": round(100 * t.well_formed / done, 1),
               "steps_right": round(100 * t.worked_right / max(1, t.worked), 1),
               "step_kinds": t.step_kinds,
               "tokens_per_forward": round(t.tpf / done, 2),
               "positions_per_forward": round(t.positions / t.forwards, 1) if s.positions is not None else None,
               "forwards": round(t.forwards / done, 1), "draft_forwards": round(t.draft_forwards / done, 1),
               "accepted_per_step": round(t.accepted / t.steps, 2) if t.steps else None,
               "acceptance_by_position": [round(a / p, 3) for a, p in zip(t.accepted_at, t.proposed_at)],
               "tokens_per_second": round(t.tokens / t.seconds, 1), "identical": None}
        reference = outputs.get(id(s.reference))
        if reference is not None and samples is None:  # lossless strategies: outputs equal to their reference's
            row["identical"] = round(100 * sum(a == b for a, b in zip(t.outputs, reference)) / done, 1)
        if samples is not None:
            row.update(sampled_columns(t, samples))
        rows.append(row)
    base = rows[0]["tokens_per_second"]
    for r, s, t in zip(rows, strategies, tallies):
        r["speedup"] = round(r["tokens_per_second"] / base, 2)
        for column, sizes, teacher_size in (("modelled_ours", s.sizes, strategies[0].sizes[0]),
                                            ("modelled_large", s.large, strategies[0].large[0])):
            r[column] = round(modelled_speedup(t.tokens, t.forwards, t.draft_forwards, *sizes, teacher_size), 2)
    return rows


def sampled_columns(t, samples):
    """What S samples of each problem say beyond the accuracy: the accuracy as the mean over
    samples, with an interval that resamples problems (a problem's samples are not independent);
    fidelity to the verifier's own distribution, the mean log-probability per token it gives the
    row's samples; how many distinct token sequences each problem's samples wrote (the data branches, so
    the model's own sampling writes several wordings); and the majority vote over each problem's
    first m samples (self-consistency), m = 1..S, beside the passes it cost."""
    n_problems = len(t.outputs) // samples
    per_problem = lambda values: [values[i * samples:(i + 1) * samples] for i in range(n_problems)]  # noqa: E731
    right, lengths = per_problem(t.right), per_problem([len(tokens) for tokens in t.outputs])
    logprobs, outputs, answers = per_problem(t.logprobs), per_problem(t.outputs), per_problem(t.answers)
    votes = [[r[a.index(majority(a[:m]))] for a, r in zip(answers, right)]  # right if the winner's samples are
             for m in range(1, samples + 1)]
    return {"samples": samples,
            "accuracy_95": clustered_interval([sum(r) for r in right], [samples] * n_problems, 100),
            "logprob_per_token": round(sum(t.logprobs) / t.tokens, 3),
            "logprob_95": clustered_interval([sum(p) for p in logprobs], [sum(n) for n in lengths], 1, 3),
            "distinct_per_problem": round(sum(len(set(map(tuple, o))) for o in outputs) / n_problems, 2),
            "vote_accuracy": [round(100 * sum(v) / n_problems, 1) for v in votes],
            "vote_95": wilson_interval(sum(votes[-1]), n_problems),
            "passes_per_sample": round(t.forwards / len(t.outputs), 1)}


def majority(answers):
    """The answer most of them gave, the earliest on a tie (None, no answer, counts as one too)."""
    return max(answers, key=lambda a: (answers.count(a), -answers.index(a)))


def clustered_interval(numerators, denominators, scale=1, digits=1, resamples=2000):
    """The 95% interval of sum(numerators) / sum(denominators) * scale when each problem gives one
    numerator and one denominator (its samples' right answers and their number; its log-probability
    and its tokens): a percentile bootstrap that resamples problems, not samples."""
    a, b = np.array(numerators, dtype=float), np.array(denominators, dtype=float)
    picks = np.random.default_rng(0).integers(0, len(a), size=(resamples, len(a)))
    ratios = a[picks].sum(axis=1) / b[picks].sum(axis=1) * scale
    return [round(float(np.percentile(ratios, 2.5)), digits), round(float(np.percentile(ratios, 97.5)), digits)]


def modelled_speedup(tokens, forwards, draft_forwards, target_size, drafter_size, teacher_size):
    """The speed-up a large model would see at batch 1, where a forward pass costs the time to
    read the weights (memory-bound), whatever the number of positions it reads (so the
    student's extra <MTP> positions, and a whole no-cache re-read, are nearly free): tokens
    emitted per parameter read, over the teacher's NTP (one token per teacher-sized read).
    A pass of the target reads target_size parameters, a pass of the drafter drafter_size."""
    parameters_read = forwards * target_size + draft_forwards * drafter_size
    return tokens / (parameters_read / teacher_size)


def wilson_interval(correct, n, z=1.96):
    """The 95% interval of an accuracy measured as correct / n (Wilson's score interval for a
    binomial proportion), in percent. Two rows whose intervals overlap are not told apart."""
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * (p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5 / (1 + z * z / n)
    return [round(100 * max(0.0, centre - half), 1), round(100 * min(1.0, centre + half), 1)]


# --------------------------------------------------------------------------------------
# What ConfAdapt's gate lets through: how far a confidence can be trusted, and where its
# answers first part from the student's own k=1 answers.

CONFIDENCE_BINS = (0.0, 0.5, 0.8, 0.9, 0.95, 0.99, 0.999, 1.0)


@torch.no_grad()
def calibration(student, ckpt, teacher, problems, k1_answers, enc, bins=CONFIDENCE_BINS):
    """What tau means. Along each of the student's own k=1 answers, a block of k_max-1 masks
    after every answer position, all blocks of an answer in one pass (model.mtp_layout). The models are
    load_for_decoding's: their logits cover the tokenizer's ids only.
    Returns {"bins", "sums", "calibrated"}: sums (k_max, len(bins) - 1, 4) by block position j
    and bin of the student's confidence (its largest probability) of: predictions, confidence,
    predictions equal to the k=1 answer's token there, and equal to the teacher's next token
    there (after the k=1 answer so far). Where a position is calibrated, agreement equals mean
    confidence. "calibrated": the same with the confidences read at the student's fitted
    temperatures (None if it has none): what ConfAdapt's calibrated gate compares with tau."""
    k, device = ckpt["k_max"], teacher.lm_head.weight.device
    views = {"sums": torch.ones(k)}  # the temperature of every block position in each view
    if ckpt["temperatures"] is not None:
        views["calibrated"] = torch.tensor(ckpt["temperatures"])
    sums = {name: torch.zeros(k, len(bins) - 1, 4) for name in views}
    edges = torch.tensor(bins[1:-1])
    for problem, answer in zip(problems, k1_answers):
        prompt = enc.encode_ordinary(format_prompt(problem["question"]))
        x = torch.tensor(prompt + answer)                                 # (N,)
        points = torch.arange(len(prompt) - 1, len(x) - k)                # (M,) blocks the answer covers whole
        if len(points) == 0:
            continue
        pos, mask, read = mtp_layout(len(x), k, points, ckpt["bidirectional"])
        masks = torch.tensor(student_mask_ids(ckpt) * len(points))
        idx = torch.cat([x, masks])[None].to(device)                      # (1, N + M (k-1))
        logits, _ = student(idx, pos=pos.to(device), attn_mask=mask.to(device))
        scores = logits[0, read].float().cpu()                           # (M, k, n_vocab)
        token = scores.argmax(dim=-1)                                    # (M, k)
        ahead = points[:, None] + torch.arange(1, k + 1)                 # (M, k): where block token j stands
        teacher_next = teacher(x[None].to(device))[0][0].argmax(-1).cpu()  # (N,)
        for name, temperatures in views.items():
            confidence = torch.softmax(scores / temperatures[:, None], dim=-1).amax(dim=-1)  # (M, k)
            b = torch.bucketize(confidence, edges, right=True)          # (M, k) the bin of each
            for j in range(k):
                for column, weight in enumerate((torch.ones(len(points)), confidence[:, j],
                                                 (token[:, j] == x[ahead[:, j]]).float(),
                                                 (token[:, j] == teacher_next[ahead[:, j] - 1]).float())):
                    sums[name][j, :, column] += torch.bincount(b[:, j], weights=weight, minlength=len(bins) - 1)
    return {"bins": bins, "calibrated": None, **sums}


def first_departures(outputs, chunks, references):
    """Where each answer first parts from its reference (the student's k=1 answer to the same
    problem): the kind of its first differing token, "dropped" (the reference's next token: one
    was skipped, as a missing line break), "repeated" (the reference's previous token, as a
    digit written twice) or "other", and its place in its pass (1: the pass's first token)."""
    kinds, places = {"dropped": 0, "repeated": 0, "other": 0}, {}
    for out, sizes, ref in zip(outputs, chunks, references):
        d = next((i for i, (a, b) in enumerate(zip(out, ref)) if a != b), None)
        if d is None:
            continue  # the same answer (or one ends early: no token differs)
        kind = ("dropped" if d + 1 < len(ref) and out[d] == ref[d + 1] else
                "repeated" if d > 0 and out[d] == ref[d - 1] else "other")
        kinds[kind] += 1
        start = 0  # the first token of the pass that wrote token d
        for size in sizes:
            if d < start + size:
                break
            start += size
        places[d - start + 1] = places.get(d - start + 1, 0) + 1
    return {"answers": sum(kinds.values()), **kinds, "place": dict(sorted(places.items()))}


# --------------------------------------------------------------------------------------
# Which strategies, on which models.

def build_strategies(args, teacher, teacher_ckpt, n, shared, device):
    """The strategies to run, the teacher's cached NTP greedy first: the baseline of every
    speed-up. Returns (strategies, {name: (student, its checkpoint)}: the --compare variants, or
    the student)."""
    chosen, T = set(args.strategies), teacher.num_params()
    decoder = CompiledDecoder if args.compile else (lambda model: model)  # how every strategy runs a model
    teacher_decoder = decoder(teacher)
    counters = {}

    def positions(model):  # one PositionsFed per model; with --compile none (a graph would guard on its count)
        if not args.compile and id(model) not in counters:
            counters[id(model)] = PositionsFed()
            model.register_forward_pre_hook(counters[id(model)], with_kwargs=True)
        return counters.get(id(model))

    ntp = "ntp greedy" if args.temperature == 0 else "ntp sampling"
    by_teacher = Strategy("teacher", ntp, "ntp", partial(generate_ntp, teacher_decoder, **shared), n,
                          (T, 0), (LARGE["teacher"], 0), verifier=teacher,  # the baseline, and the reference of
                          positions=positions(teacher))  # the lossless strategies that verify with the teacher
    strategies = [by_teacher]
    greedy = dict(max_new_tokens=shared["max_new_tokens"], eos_id=shared["eos_id"])  # tree.py's strategies
    if args.compare:
        students = {}
        for path in args.compare:
            name = variant_name(path)
            if name in students:
                raise UserError(f"two students are named {name!r}: --compare needs distinct file names")
            students[name] = load_student(path, args, teacher_ckpt, device)
            strategies += mtp_strategies(name, decoder(students[name][0]), students[name][1], args.static_k,
                                         args.taus, n, shared, chosen, positions(students[name][0]))
        return strategies, students

    if "no_cache" in chosen and args.n_uncached:
        strategies.append(Strategy("teacher", "ntp greedy, no cache", "ntp",
                                   partial(generate_ntp, teacher, use_cache=False, **shared),
                                   min(n, args.n_uncached), (T, 0), (LARGE["teacher"], 0), reference=by_teacher,
                                   verifier=teacher, positions=positions(teacher)))
    draft = student = None
    if os.path.exists(args.draft) and {"draft", "speculative"} & chosen:
        draft, _, draft_ckpt = load_for_decoding(args.draft, device, kinds=("draft",))
        check_same_tokenizer(teacher_ckpt, draft_ckpt, args.teacher, args.draft)
        D, draft_decoder = draft.num_params(), decoder(draft)
    if os.path.exists(args.student) and {"static", "confadapt", "self_speculative", "mtp_speculative",
                                         "tree_self_speculative", "tree_mtp_speculative"} & chosen:
        student, student_ckpt = load_student(args.student, args, teacher_ckpt, device)
        S, student_decoder, mask_ids = student.num_params(), decoder(student), student_mask_ids(student_ckpt)
    if draft is not None and "draft" in chosen:
        strategies.append(Strategy("draft", ntp, "ntp", partial(generate_ntp, draft_decoder, **shared), n,
                                   (D, 0), (LARGE["draft"], 0), verifier=draft, positions=positions(draft)))
    if student is not None:
        static_k = args.static_k if "static" in chosen else []
        counted = positions(student)
        student_rows = mtp_strategies("student", student_decoder, student_ckpt, static_k,
                                      args.taus if "confadapt" in chosen else [], n, shared, chosen, counted)
        if {"self_speculative", "tree_self_speculative"} & chosen:
            if 1 not in static_k:  # their reference: the student's own k=1 output
                student_rows += mtp_strategies("student", student_decoder, student_ckpt, [1], [], n, shared,
                                               positions=counted)
            k1 = next(s for s in student_rows if s.k == 1)
            student_rows += [Strategy("student", f"self-speculative k={k}", "self-speculative",
                                      partial(generate_self_speculative, student_decoder, mask_ids=mask_ids, k=k,
                                              **shared), n, (S, 0), (LARGE["student"], 0), reference=k1,
                                      verifier=student, positions=counted)
                             for k in (args.self_k if "self_speculative" in chosen else [])]
            k = student_ckpt["k_max"]
            student_rows += [Strategy("student", f"tree self-speculative k={k} nodes={nodes} ends={ends}",
                                      "tree self-speculative",
                                      partial(generate_tree_self_speculative, student, mask_ids=mask_ids, k=k,
                                              budget=nodes, extra_ends=nodes if ends == "all" else ends, **greedy),
                                      n, (S, 0), (LARGE["student"], 0), reference=k1, verifier=student,
                                      positions=counted)
                             for nodes, ends in (args.tree_self if "tree_self_speculative" in chosen else [])]
        strategies += student_rows
    if draft is not None and "speculative" in chosen:
        strategies += [Strategy("teacher + draft", f"speculative gamma={gamma}", "speculative",
                                partial(generate_speculative, teacher_decoder, draft_decoder, gamma=gamma, **shared), n,
                                (T, D), (LARGE["teacher"], LARGE["draft"]), reference=by_teacher, verifier=teacher,
                                positions=positions(teacher))
                       for gamma in args.gammas]
    if student is not None and "mtp_speculative" in chosen:
        strategies += [Strategy("teacher + student", f"MTP-drafted speculative k={k}", "MTP-drafted speculative",
                                partial(generate_mtp_speculative, teacher_decoder, student_decoder, mask_ids=mask_ids,
                                        k=k, **shared), n,
                                (T, S), (LARGE["teacher"], LARGE["student"]), reference=by_teacher, verifier=teacher,
                                positions=positions(teacher))
                       for k in args.mtp_k]
    if student is not None and "tree_mtp_speculative" in chosen:
        k = student_ckpt["k_max"]
        strategies += [Strategy("teacher + student", f"tree MTP-drafted k={k} nodes={nodes}", "tree MTP-drafted",
                                partial(generate_tree_mtp_speculative, teacher, student, mask_ids=mask_ids, k=k,
                                        budget=nodes, **greedy), n,
                                (T, S), (LARGE["teacher"], LARGE["student"]), reference=by_teacher, verifier=teacher,
                                positions=positions(teacher))
                       for nodes in args.tree_mtp]
    return strategies, {} if student is None else {"student": (student, student_ckpt)}


def mtp_strategies(model, student, ckpt, static_k, taus, n, shared, experiments=(), positions=None):
    """A student's static-k rows (k moving) and ConfAdapt rows (tau moving, k = its k_max). Each
    of the gates.py experiments named in `experiments` adds the ConfAdapt rows again with its
    `pick` (the same taus, another curve): "calibrated" (if the student has fitted temperatures),
    "largest" and "sampled_at_1" (sampled benches). `student` is the model the strategies run
    (CompiledDecoder with --compile), and the verifier of their samples; `positions` counts its passes."""
    mtp = dict(mask_ids=student_mask_ids(ckpt), bidirectional=ckpt["bidirectional"], **shared)
    sizes, large = (student.num_params(), 0), (LARGE["student"], 0)
    curves = [("", "ConfAdapt", lambda tau: None)]  # (name suffix, family, tau -> pick)
    if set(experiments) & {"calibrated", "largest", "sampled_at_1"}:
        import gates as experiment  # loaded only when a row asks for it
        if "calibrated" in experiments and ckpt["temperatures"] is not None:
            curves.append((", calibrated", "ConfAdapt, calibrated",
                          lambda tau: partial(experiment.calibrated_confidence, temperatures=ckpt["temperatures"])))
        if "largest" in experiments:
            curves.append((", largest probability", "ConfAdapt, largest probability",
                          lambda tau: experiment.largest_confidence))
        if "sampled_at_1" in experiments:
            curves.append((", authors' sampling", "ConfAdapt, authors' sampling",
                          lambda tau: partial(experiment.sampled_at_1, tau=tau)))
    return ([Strategy(model, f"static k={k}", "static k", partial(generate_mtp, student, k=k, **mtp), n, sizes, large,
                      k=k, verifier=student, positions=positions)
             for k in static_k]
            + [Strategy(model, f"ConfAdapt tau={tau}{suffix}", family,
                        partial(generate_mtp, student, k=ckpt["k_max"], tau=tau, pick=pick(tau), **mtp),
                        n, sizes, large, tau=tau, verifier=student, positions=positions)
               for suffix, family, pick in curves for tau in taus])


def load_student(path, args, teacher_ckpt, device):
    """(student, its checkpoint), checked against the teacher's tokenizer and the k flags."""
    student, _, ckpt = load_for_decoding(path, device, kinds=("student",))
    check_same_tokenizer(teacher_ckpt, ckpt, args.teacher, path)
    runs = set(args.strategies) if not args.compare else {"static"}  # --compare: static k and ConfAdapt rows only
    checked = [("--static_k", args.static_k if "static" in runs else []),
               ("--self_k", args.self_k if "self_speculative" in runs else []),
               ("--mtp_k", args.mtp_k if "mtp_speculative" in runs else [])]
    for flag, ks in checked:
        for k in ks:
            student_k(k, ckpt, path, flag)  # no more positions than it was trained for
    if ckpt["step"] < ckpt["args"]["max_iters"]:
        print(f"note: {path} stopped at step {ckpt['step']} of {ckpt['args']['max_iters']}: finish it with "
              f"--resume and the flags it was started with", file=sys.stderr)
    return student, ckpt


def variant_name(path):
    """out/ablations/student_ground_truth.pt -> ground_truth"""
    name = os.path.splitext(os.path.basename(path))[0]
    return name[len("student_"):] if name.startswith("student_") else name


def load_problems(path, n):
    """The first n problems of a test.jsonl, each checked to have a question and an answer."""
    if not os.path.exists(path):
        raise UserError(f"no test problems at {path}: run `python data/prepare.py` first")
    problems = []
    with open(path) as f:
        for lineno, line in enumerate(f, start=1):
            if len(problems) == n:
                break
            if not line.strip():
                continue
            try:
                problem = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path} line {lineno} is not valid JSON ({e.msg})") from None
            missing = [key for key in ("question", "answer")
                       if not isinstance(problem, dict) or not isinstance(problem.get(key), str)]
            if missing:
                raise UserError(f"{path} line {lineno} has no {' and no '.join(repr(k) for k in missing)} text: "
                                f"give the test.jsonl that data/prepare.py writes")
            problems.append(problem)
    if not problems:
        raise UserError(f"{path} holds no problems: give the test.jsonl that data/prepare.py writes")
    if len(problems) < n:
        print(f"note: {path} has {len(problems)} problems, fewer than --n {n}", file=sys.stderr)
    return problems


# --------------------------------------------------------------------------------------
# The command line.

STRATEGIES = ["ntp", "no_cache", "draft", "static", "confadapt", "calibrated", "speculative", "self_speculative",
              "mtp_speculative", "tree_self_speculative", "tree_mtp_speculative", "largest", "sampled_at_1"]
TREES = ("tree_self_speculative", "tree_mtp_speculative")  # tree.py's: greedy, and not through the compiled decoder
SAMPLING_ONLY = ("largest", "sampled_at_1")  # gates.py's ways to sample: the same as ConfAdapt's greedy rows at T = 0
# What a bench runs where its flags do not say. The greedy bench: every row of the lessons (the
# calibrated gate is an experiment: results.md). The sampled bench (--temperature > 0) decodes
# --samples of each problem, so it runs fewer rows, to stay within 10 minutes on two cores: the
# rows the others are measured against (the teacher's and the student's own sampling, static
# k = 1), and one row of each strategy that the student's masks run. The trees: self-speculative
# at one budget with the next masks after 4 and 8 nodes beyond the likeliest path's end, and after
# every node (where they hang decides more than the budget: docs/notebook.md); MTP-drafted at two.
DEFAULTS = {"greedy": dict(strategies=",".join(s for s in STRATEGIES if s not in ("calibrated",) + SAMPLING_ONLY),
                           static_k="1,2,3,4,5", taus="0.6,0.8,0.9,0.95,0.99,0.999", self_k="4,8", mtp_k="4,8",
                           tree_self="16:4,16:8,16:all", tree_mtp="16,64", samples=1),
            "sampled": dict(strategies="ntp,static,confadapt,self_speculative,mtp_speculative",
                            static_k="1,3", taus="0.9", self_k="8", mtp_k="4", tree_self="", tree_mtp="", samples=4)}


def parse_ints(text, flag):
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise UserError(f"{flag} takes comma-separated integers, got {text!r}") from None
    if min(values) < 1:
        raise UserError(f"{flag} values must be >= 1, got {text!r}")
    return values


def parse_tree_rows(text):
    """--tree_self: "16:4,32:all" -> [(16, 4), (32, "all")]."""
    rows = []
    for item in text.split(","):
        nodes, _, ends = item.partition(":")
        if not (nodes.isdigit() and int(nodes) >= 1 and (ends == "all" or ends.isdigit())):
            raise UserError(f"--tree_self takes NODES:ENDS pairs (NODES >= 1, ENDS a number or all), e.g. 16:4,32:all; "
                            f"got {text!r}")
        rows.append((int(nodes), ends if ends == "all" else int(ends)))
    return rows


def parse_taus(text):
    try:
        taus = [float(v) for v in text.split(",")]
    except ValueError:
        raise UserError(f"--taus takes comma-separated numbers in (0, 1], got {text!r}") from None
    if not all(0 < t <= 1 for t in taus):
        raise UserError(f"every ConfAdapt tau must lie in (0, 1], got {text!r}")
    return taus


def parse_args(argv=None):
    """The flags, every number among them checked before anything is loaded."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--teacher", default="out/teacher.pt", help="the NTP model: the baseline and the verifier")
    p.add_argument("--draft", default="out/draft.pt", help="measured too if the file exists")
    p.add_argument("--student", default="out/student.pt", help="measured too if the file exists")
    p.add_argument("--compare", nargs="+", metavar="STUDENT",
                   help="ablations: static k and ConfAdapt rows for each of these students (named by their file: "
                   "student_NAME.pt), written to ablations.{json,md,png} and agreement.png instead (None: no "
                   "comparison, the bench of --teacher, --draft and --student)")
    greedy, sampled = DEFAULTS["greedy"], DEFAULTS["sampled"]
    p.add_argument("--strategies", default=None,
                   help=f"which families to run, of {','.join(STRATEGIES)} (the teacher's cached NTP always runs: it is "
                   f"the baseline; {' and '.join(SAMPLING_ONLY)}: gates.py's ways to sample, with --temperature) "
                   f"(None: {greedy['strategies']}; sampled: {sampled['strategies']})")
    p.add_argument("--static_k", default=None, help="student: static k values (k=1 is the student's NTP) "
                   f"(None: {greedy['static_k']}; sampled: {sampled['static_k']})")
    p.add_argument("--taus", default=None, help=f"student: ConfAdapt thresholds (None: {greedy['taus']}; "
                   f"sampled: {sampled['taus']})")
    p.add_argument("--gammas", default="4", help="speculative: draft tokens per step")
    p.add_argument("--self_k", default=None, help="self-speculative: positions read per pass "
                   f"(None: {greedy['self_k']}; sampled: {sampled['self_k']})")
    p.add_argument("--mtp_k", default=None, help="MTP-drafted speculative: tokens the student drafts per pass "
                   f"(None: {greedy['mtp_k']}; sampled: {sampled['mtp_k']})")
    p.add_argument("--tree_self", default=None, help="tree self-speculative (tree.py, k = the student's k_max): "
                   "NODES:ENDS per row, the guesses verified per pass and how many nodes beyond the likeliest path's "
                   f"end get the next masks, a number or all (None: {greedy['tree_self']})")
    p.add_argument("--tree_mtp", default=None, help="tree MTP-drafted speculative (tree.py, k = the student's k_max): "
                   f"the guesses the teacher verifies per pass, one row each (None: {greedy['tree_mtp']})")
    p.add_argument("--test", default=None, help="test.jsonl (None: next to the teacher's tokenizer)")
    p.add_argument("--n", type=int, default=400, help="test problems (the first n of the test file)")
    p.add_argument("--n_uncached", type=int, default=50, help="problems for the slow no-cache row")
    p.add_argument("--max_new_tokens", type=int, default=256, help="at most (the context ends generation too)")
    p.add_argument("--n_chunks", type=int, default=3, help="held-out answers drawn in chunks.png")
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps")
    p.add_argument("--workers", default="auto", help="processes that decode at once, one thread each, the problems "
                   "shared out among them (run_bench); auto: 2 on a CPU with two cores or more, one per core up to 8 on a "
                   "GPU (1 with --compile: CUDA graphs), else 1")
    p.add_argument("--compile", action="store_true", help="every strategy decodes with fixed-shape passes through "
                   "torch.compile, as CUDA graphs on a GPU (decode.py --compile): the same tokens up to rounding "
                   "(docs/results.md: what it gave)")
    p.add_argument("--temperature", type=float, default=0.0, help="0: the greedy bench; above 0 every strategy "
                   "samples, --samples per problem, into sampling.{json,md,png} (the sampled bench)")
    p.add_argument("--top_k", type=int, default=None, help="sampled bench: sample among the k likeliest tokens "
                   "(None: all)")
    p.add_argument("--samples", type=int, default=None, help="sampled bench: samples of each problem "
                   f"(None: {sampled['samples']})")
    p.add_argument("--seed", type=int, default=0, help="sampled bench: seeds every sample's draws")
    p.add_argument("--out_dir", default="out", help="where the results go")
    args = p.parse_args(argv)
    check_flags(args, positive=("n", "max_new_tokens"), non_negative=("n_uncached", "n_chunks", "temperature"))
    defaults = DEFAULTS["sampled" if args.temperature > 0 else "greedy"]
    for flag, value in defaults.items():
        if getattr(args, flag) is None:
            setattr(args, flag, value)
    if args.temperature == 0 and args.samples > 1:
        raise UserError("greedy decoding writes the same answer every time: give --temperature > 0 for --samples")
    if args.samples < 1 or (args.top_k is not None and args.top_k < 1):
        raise UserError("--samples and --top_k must be >= 1")
    if args.samples > 1000:  # each sample's seed is seed * 10**6 + problem * 1000 + sample (decode_share)
        raise UserError("--samples above 1000 would reuse the seeds of the next problem's samples")
    if args.temperature > 0 and args.compare:
        raise UserError("--compare runs the greedy bench of the ablations: drop --temperature")
    args.strategies = args.strategies.split(",")
    unknown = sorted(set(args.strategies) - set(STRATEGIES))
    if unknown:
        raise UserError(f"unknown strategies {', '.join(unknown)}: choose from {', '.join(STRATEGIES)}")
    if args.temperature == 0 and set(SAMPLING_ONLY) & set(args.strategies):
        raise UserError(f"{' and '.join(SAMPLING_ONLY)} are ways to sample: give --temperature > 0")
    if args.temperature > 0 and set(TREES) & set(args.strategies):
        raise UserError("tree verification (tree.py) is greedy: drop the tree strategies or --temperature")
    if args.compile and set(TREES) & set(args.strategies):
        print("note: --compile leaves out the tree rows: a tree pass's attention mask is not one the compiled "
              "decoder takes", file=sys.stderr)
        args.strategies = [s for s in args.strategies if s not in TREES]
    args.static_k, args.taus = parse_ints(args.static_k, "--static_k"), parse_taus(args.taus)
    args.gammas, args.self_k = parse_ints(args.gammas, "--gammas"), parse_ints(args.self_k, "--self_k")
    args.mtp_k = parse_ints(args.mtp_k, "--mtp_k")
    args.tree_mtp = parse_ints(args.tree_mtp, "--tree_mtp") if args.tree_mtp else []
    args.tree_self = parse_tree_rows(args.tree_self) if args.tree_self else []
    if args.workers != "auto":
        args.workers = parse_ints(args.workers, "--workers")[0]
    return args


def auto_workers(device, compiled=False):
    """Decoding processes for --workers auto. A pass of these models is mostly fixed cost on the CPU side
    (Python, dispatch, kernel launches), which one more thread does not share but one more process does:
    two on a CPU of two cores or more, and on a GPU one per core up to 8, eight processes keeping one GPU
    busier than one (both measured: docs/notebook.md, docs/results.md). Compiled on a GPU, one: CUDA
    graphs launch a pass's kernels as one (compiled.py), the cost the processes were sharing out;
    whether more processes still help there (the strategies' own Python) is not measured: --workers N."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if device == "cpu":
        return min(2, cores)
    if device.startswith("cuda"):
        return 1 if compiled else min(8, cores)
    return 1


def main(args):
    device = pick_device(args.device)
    torch.manual_seed(0)
    teacher, enc, teacher_ckpt = load_for_decoding(args.teacher, device, kinds=("teacher",))
    test_path = args.test or os.path.join(os.path.dirname(teacher_ckpt["tokenizer"]), "test.jsonl")
    problems = load_problems(test_path, args.n)
    eos_id = enc.encode(EOT, allowed_special={EOT})[0]
    shared = dict(max_new_tokens=args.max_new_tokens, eos_id=eos_id, temperature=args.temperature, top_k=args.top_k)
    strategies, students = build_strategies(args, teacher, teacher_ckpt, len(problems), shared, device)
    if args.workers == "auto":
        args.workers = auto_workers(device, args.compile)
    args.workers = min(args.workers, len(problems))
    sampling = None
    if args.temperature > 0:
        sampling = dict(samples=args.samples, seed=args.seed, temperature=args.temperature, device=device)
    print(f"benchmarking {len(strategies)} strategies on {len(problems)} problems from {test_path} on {device}, "
          f"interleaved problem by problem" + (f", in {args.workers} processes of one thread" if args.workers > 1
                                               else "")
          + (f"; sampling at temperature {args.temperature}" + (f", top {args.top_k}" if args.top_k else "")
             + f", {args.samples} samples of each problem" if sampling else ""))
    t0 = time.time()
    rows, tallies = run_bench(strategies, problems, enc, args.workers, sampling)
    if sampling:
        write_sampled(args, rows, strategies, tallies, problems, device, (time.time() - t0) / 60)
        return
    calib = None
    k1 = {s.model: t.outputs for s, t in zip(strategies, tallies) if s.k == 1}
    if "student" in k1 and not args.compare:  # what ConfAdapt's gate lets through
        for row, s, t in zip(rows, strategies, tallies):
            if s.model == "student" and s.family in CURVES and s.k != 1:
                row["first_departure"] = first_departures(t.outputs, t.chunks, k1["student"])
        print("the student's confidence against its own k=1 answers, teacher-forced ...")
        calib = calibration(*students["student"], teacher, problems, k1["student"], enc)
    write_outputs(args, rows, strategies, tallies, students, problems, enc, eos_id, device, (time.time() - t0) / 60,
                  calib)


if __name__ == "__main__":
    try:
        main(parse_args())
    except UserError as e:
        sys.exit(f"error: {e}")
