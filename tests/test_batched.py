"""Batched decoding (batched.py): every row of a batch gets, token for token and step for step,
what the batch-1 decoder of decode.py gives its prompt alone. The models are in float64: a
batch changes the shapes of the matrix products, and so the rounding of their last bits, which
in float32 could flip a near tie of a random model's logits."""
import functools
from collections import Counter

import pytest
import torch

from batched import (generate_mtp_batch, generate_mtp_speculative_batch, generate_ntp_batch,
                     generate_self_speculative_batch, generate_speculative_batch, generate_tree_mtp_speculative_batch,
                     generate_tree_self_speculative_batch)
from common import emit_only
from conftest import MASK, MASKS, N_VOCAB, SMALL, TINY
from decode import generate_mtp, generate_mtp_speculative, generate_ntp, generate_self_speculative, generate_speculative
from model import GPT, GPTConfig, add_mask_token
from test_decode import sharpened
from tree import generate_tree_mtp_speculative, generate_tree_self_speculative

MAX_NEW = 30
# Prompts of different lengths; the last ones run into the context's end (TINY: 64 tokens)
# before MAX_NEW tokens, so rows finish at different steps.
PROMPT_LENS = [9, 3, 20, 58, 5, 40, 61, 12]


def model(config, seed, rotary=False):
    torch.manual_seed(seed)
    return emit_only(GPT(GPTConfig(**{**config.__dict__, "rotary": rotary})).double().eval(), N_VOCAB)


def noisy_copy(original, seed, scale):
    torch.manual_seed(seed)
    copy = emit_only(GPT(original.config).double().eval(), N_VOCAB)
    copy.load_state_dict({k: v + scale * torch.randn_like(v) for k, v in original.state_dict().items()})
    return copy


@functools.cache
def models(rotary):
    """A target, its student (a noisy copy with the mask token) and a draft model."""
    target = model(TINY, 0, rotary=rotary)
    student = add_mask_token(noisy_copy(target, 1, 0.01), MASK, torch.Generator().manual_seed(0))
    draft = model(SMALL, 5, rotary=rotary)
    return target, student, draft


@functools.cache
def student_per_offset(rotary):
    """A student with a mask token per block offset, whose masks tell each other apart: seeing each
    other both ways (--bidirectional) changes some of their guesses."""
    target = models(rotary)[0]
    return add_mask_token(noisy_copy(target, 2, 0.01), MASK, torch.Generator().manual_seed(0), count=7)


PER_OFFSET = list(range(MASK, MASK + 7))


@functools.cache
def sharp_models(rotary):
    """A sharpened target (test_decode.sharpened), so a key from the wrong slot of a tree shows; its student."""
    target = sharpened(model(TINY, 0, rotary=rotary))
    return target, add_mask_token(noisy_copy(target, 1, 0.01), MASK, torch.Generator().manual_seed(0))


def strategies(rotary):
    """name -> (the batch-1 decoder, the batched one), both called as f(prompt(s), max_new, eos_id)."""
    target, student, draft = models(rotary)
    mtp = dict(mask_ids=MASKS)
    both_ways = dict(mask_ids=PER_OFFSET, k=4, bidirectional=True)
    return {
        "NTP": (lambda p, m, e: generate_ntp(target, p, m, e),
                lambda ps, m, e: generate_ntp_batch(target, ps, m, e)),
        "static k=3": (lambda p, m, e: generate_mtp(student, p, m, e, k=3, **mtp),
                       lambda ps, m, e: generate_mtp_batch(student, ps, m, e, k=3, **mtp)),
        "ConfAdapt": (lambda p, m, e: generate_mtp(student, p, m, e, k=4, tau=0.03, **mtp),
                      lambda ps, m, e: generate_mtp_batch(student, ps, m, e, k=4, tau=0.03, **mtp)),
        "static k=4, bidirectional": (
            lambda p, m, e: generate_mtp(student_per_offset(rotary), p, m, e, **both_ways),
            lambda ps, m, e: generate_mtp_batch(student_per_offset(rotary), ps, m, e, **both_ways)),
        "speculative": (lambda p, m, e: generate_speculative(target, draft, p, m, e, gamma=4),
                        lambda ps, m, e: generate_speculative_batch(target, draft, ps, m, e, gamma=4)),
        "self-speculative": (lambda p, m, e: generate_self_speculative(student, p, m, e, k=4, **mtp),
                             lambda ps, m, e: generate_self_speculative_batch(student, ps, m, e, k=4, **mtp)),
        "MTP-drafted": (lambda p, m, e: generate_mtp_speculative(target, student, p, m, e, k=4, **mtp),
                        lambda ps, m, e: generate_mtp_speculative_batch(target, student, ps, m, e, k=4, **mtp)),
        "tree MTP-drafted": (
            lambda p, m, e: generate_tree_mtp_speculative(*sharp_models(rotary), p, m, e, k=6, budget=12, **mtp),
            lambda ps, m, e: generate_tree_mtp_speculative_batch(*sharp_models(rotary), ps, m, e, k=6, budget=12, **mtp)),
        "tree self-speculative": (
            lambda p, m, e: generate_tree_self_speculative(sharp_models(rotary)[1], p, m, e, k=6, budget=12, **mtp),
            lambda ps, m, e: generate_tree_self_speculative_batch(sharp_models(rotary)[1], ps, m, e, k=6, budget=12,
                                                                  **mtp)),
    }


def prompts(n):
    g = torch.Generator().manual_seed(11)
    return [torch.randint(0, N_VOCAB, (length,), generator=g).tolist() for length in PROMPT_LENS[:n]]


def steps(out):
    return out.tokens, out.chunks, out.n_forward, out.n_draft_forward, out.drafted, out.accepted


@pytest.mark.parametrize("name", ["NTP", "static k=3", "ConfAdapt", "static k=4, bidirectional", "speculative",
                                  "self-speculative", "MTP-drafted", "tree MTP-drafted", "tree self-speculative"])
@pytest.mark.parametrize("batch_size, rotary", [(1, True), (3, True), (8, True), (8, False)],
                         ids=["B=1", "B=3", "B=8", "B=8, learned positions"])
def test_every_row_is_its_batch_1_generation(name, batch_size, rotary):
    one, batched = strategies(rotary)[name]
    rows = prompts(batch_size)
    # An end-of-sequence token that some rows emit and others do not: of the tokens in some but not
    # all of their free outputs, the one in the most.
    free = [set(one(p, MAX_NEW, -1).tokens) for p in rows]
    in_rows = Counter(t for tokens in free for t in tokens)
    eos_id = max((t for t in in_rows if in_rows[t] < len(rows)), key=lambda t: (in_rows[t], -t), default=-1)
    alone = [one(p, MAX_NEW, eos_id) for p in rows]
    together = batched(rows, MAX_NEW, eos_id)
    assert [steps(out) for out in together] == [steps(out) for out in alone]
    if batch_size == 8:  # rows did finish at different steps, some on EOS
        ended_on_eos = [out.tokens[-1] == eos_id for out in alone]
        assert len({out.n_forward for out in alone}) > 1 and any(ended_on_eos) and not all(ended_on_eos)


def test_the_bidirectional_case_can_tell_a_causal_decoder_apart():
    """The bidirectional student's output is not its causal one, so a batched decoder that dropped
    the masks' two-way view would fail the test above."""
    student, rows = student_per_offset(True), prompts(8)
    causal = [generate_mtp(student, p, MAX_NEW, -1, PER_OFFSET, k=4).tokens for p in rows]
    both_ways = [generate_mtp(student, p, MAX_NEW, -1, PER_OFFSET, k=4, bidirectional=True).tokens
                 for p in rows]
    assert causal != both_ways
