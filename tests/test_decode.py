"""Speculative, self-speculative and MTP-drafted decoding: lossless where they promise to be."""
from functools import partial

import pytest
import torch

from decode import (CompiledDecoder, accept_drafts, generate_mtp, generate_mtp_speculative, generate_ntp,
                    generate_self_speculative, generate_speculative, token_probs)
from conftest import MASK, MASKS, N_VOCAB, SMALL, TINY
from experiments import calibrated_confidence, run_confidence
from common import UserError
from model import GPT, GPTConfig, add_mask_token


def random_model(config, seed):
    torch.manual_seed(seed)
    return GPT(config).eval()


def perturbed_copy(model, seed, scale):
    """The same model with noise on every weight: its greedy choices agree with the original's
    often but not always, so drafts get a mix of acceptances and rejections."""
    torch.manual_seed(seed)
    copy = GPT(model.config).eval()
    copy.load_state_dict({k: v + scale * torch.randn_like(v) for k, v in model.state_dict().items()})
    return copy


@pytest.fixture(scope="module")
def target():
    return random_model(TINY, 0)


@pytest.fixture(scope="module")
def student(target):
    """A student of `target`: a noisy copy plus the mask token (random, so its drafts are imperfect)."""
    s = perturbed_copy(target, 1, 0.01)
    add_mask_token(s, MASK, torch.Generator().manual_seed(0))
    return s


def drafts_of(target):
    return {"itself": target, "a noisy copy": perturbed_copy(target, 1, 0.02), "a stranger": random_model(SMALL, 5)}


def acceptance_rate(out):
    return sum(out.accepted) / max(1, sum(out.drafted))


@pytest.mark.parametrize("gamma", [1, 3, 6])
@pytest.mark.parametrize("prompt_len, max_new", [(5, 40), (50, 40), (10, 3)])  # 50: runs into the context end
def test_speculative_greedy_equals_target_greedy(target, gamma, prompt_len, max_new):
    prompt = torch.randint(0, N_VOCAB, (prompt_len,), generator=torch.Generator().manual_seed(prompt_len)).tolist()
    reference = generate_ntp(target, prompt, max_new, eos_id=-1, n_vocab=N_VOCAB)
    rates = {}
    for name, draft in drafts_of(target).items():
        out = generate_speculative(target, draft, prompt, max_new, eos_id=-1, n_vocab=N_VOCAB, gamma=gamma)
        assert out.tokens == reference.tokens, name
        assert out.n_forward == len(out.chunks) and all(0 <= a <= d for a, d in zip(out.accepted, out.drafted))
        rates[name] = acceptance_rate(out)
    if max_new > 3:
        assert rates["itself"] == 1.0 and rates["a stranger"] < rates["itself"]


def test_speculative_stops_at_eos_like_the_target(target):
    prompt = [7, 8, 9]
    free = generate_ntp(target, prompt, 30, eos_id=-1, n_vocab=N_VOCAB).tokens
    eos = free[6]
    reference = generate_ntp(target, prompt, 30, eos_id=eos, n_vocab=N_VOCAB).tokens
    for draft in drafts_of(target).values():
        assert generate_speculative(target, draft, prompt, 30, eos_id=eos, n_vocab=N_VOCAB, gamma=4).tokens == reference


@pytest.mark.parametrize("k", [1, 2, 4, 8])
@pytest.mark.parametrize("prompt_len, max_new", [(5, 40), (50, 40)])
def test_self_speculative_equals_the_students_k1_greedy(student, k, prompt_len, max_new):
    prompt = torch.randint(0, N_VOCAB, (prompt_len,), generator=torch.Generator().manual_seed(1)).tolist()
    reference = generate_mtp(student, prompt, max_new, eos_id=-1, n_vocab=N_VOCAB, mask_ids=MASKS, k=1)
    out = generate_self_speculative(student, prompt, max_new, eos_id=-1, n_vocab=N_VOCAB, mask_ids=MASKS, k=k)
    assert out.tokens == reference.tokens
    assert out.n_forward <= reference.n_forward and MASK not in out.tokens


def mtp_drafters(target, student):
    """Students of every kind of quality: a noisy copy of the target, one whose masks are
    <MTP> ids per offset, and an unrelated model (a stranger, its drafts mostly wrong)."""
    per_offset = perturbed_copy(target, 2, 0.01)
    add_mask_token(per_offset, MASK, torch.Generator().manual_seed(0), count=7)
    stranger = add_mask_token(random_model(SMALL, 5), MASK, torch.Generator().manual_seed(0))
    return {"a noisy copy": (student, MASKS), "masks per offset": (per_offset, list(range(MASK, MASK + 7))),
            "a stranger": (stranger, MASKS)}


@pytest.mark.parametrize("k", [1, 3, 8])
@pytest.mark.parametrize("prompt_len, max_new", [(5, 40), (50, 40)])
def test_mtp_drafted_speculative_equals_teacher_greedy_whatever_the_drafter(target, student, k, prompt_len, max_new):
    prompt = torch.randint(0, N_VOCAB, (prompt_len,), generator=torch.Generator().manual_seed(2)).tolist()
    reference = generate_ntp(target, prompt, max_new, eos_id=-1, n_vocab=N_VOCAB)
    rates = {}
    for name, (drafter, mask_ids) in mtp_drafters(target, student).items():
        out = generate_mtp_speculative(target, drafter, prompt, max_new, eos_id=-1, n_vocab=N_VOCAB,
                                       mask_ids=mask_ids, k=k)
        assert out.tokens == reference.tokens, name
        assert out.n_draft_forward <= out.n_forward  # one student pass per teacher pass (none on the last step)
        rates[name] = acceptance_rate(out)
    if k > 1 and prompt_len == 5:
        assert rates["a stranger"] < rates["a noisy copy"]  # the drafters differ; the output does not


def total_variation(p, q):
    return 0.5 * (p - q).abs().sum().item()


@pytest.mark.parametrize("top_k", [None, 3])
def test_rejection_sampling_keeps_the_target_distribution(top_k):
    """Draw d from q, verify it against p: the emitted token must follow p, not q."""
    V, trials = 6, 20000
    p_logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, 0.3], [0.0] * V])  # row 0 verifies the draft
    q_logits = torch.tensor([-1.0, 0.5, 2.0, 1.0, 0.0, 0.3])
    p, q = token_probs(p_logits[0], 1.0, top_k, V), token_probs(q_logits, 1.0, top_k, V)
    assert total_variation(p, q) > 0.3  # a sampler that ignored the verdict would be far off
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(V)
    for d in torch.multinomial(q, trials, replacement=True, generator=g).tolist():
        n, token = accept_drafts(p_logits, [d], [q], 1.0, top_k, V, g)
        counts[d if n == 1 else token] += 1
    assert total_variation(counts / trials, p) < 0.015


def test_speculative_sampling_follows_the_target_end_to_end(target):
    """The first sampled token of speculative decoding, over many runs, has the target's distribution."""
    temperature, top_k, runs, prompt = 0.3, 4, 2000, [3, 1, 4, 1, 5]
    draft = random_model(SMALL, 5)
    p = token_probs(target(torch.tensor([prompt]))[0][0, -1].detach(), temperature, top_k, N_VOCAB)
    q = token_probs(draft(torch.tensor([prompt]))[0][0, -1].detach(), temperature, top_k, N_VOCAB)
    assert total_variation(p, q) > 0.3
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(N_VOCAB)
    for _ in range(runs):
        out = generate_speculative(target, draft, prompt, 2, eos_id=-1, n_vocab=N_VOCAB, gamma=1,
                                   temperature=temperature, top_k=top_k, generator=g)
        counts[out.tokens[0]] += 1
    assert total_variation(counts / runs, p) < 0.05


@pytest.mark.parametrize("call, message", [
    (lambda t, s: generate_speculative(t, t, [1, 2], 5, -1, N_VOCAB, gamma=0), "gamma must be >= 1"),
    (lambda t, s: generate_speculative(t, GPT(GPTConfig(**{**TINY.__dict__, "block_size": 16})), [1, 2], 5, -1,
                                       N_VOCAB, gamma=2), "context is shorter"),
    (lambda t, s: generate_self_speculative(s, [1, 2], 5, -1, N_VOCAB, MASKS, k=0), "k must be >= 1"),
    (lambda t, s: generate_mtp_speculative(t, s, [1, 2], 5, -1, N_VOCAB, MASKS, k=64), "does not fit"),
    (lambda t, s: generate_mtp_speculative(t, s, [], 5, -1, N_VOCAB, MASKS, k=2), "prompt is empty"),
    (lambda t, s: generate_mtp(s, [1, 2], 5, -1, N_VOCAB, [MASK], k=3), "k=3 reads k-1 masks"),
])
def test_bad_speculative_settings_are_refused(target, student, call, message):
    with pytest.raises(UserError, match=message):
        call(target, student)


def every_strategy(target, student, draft):
    """Each decoding strategy as prompt -> Generation, as bench.py and decode.py run them."""
    common = dict(max_new_tokens=40, eos_id=-1, n_vocab=N_VOCAB)
    mtp = dict(mask_ids=MASKS, **common)
    sample = dict(temperature=0.8, top_k=20)
    return {
        "ntp": lambda p: generate_ntp(target, p, **common),
        "ntp sampling": lambda p: generate_ntp(target, p, generator=torch.Generator().manual_seed(0), **sample,
                                               **common),
        "static k=3": lambda p: generate_mtp(student, p, k=3, **mtp),
        "ConfAdapt": lambda p: generate_mtp(student, p, k=3, tau=0.03, **mtp),
        "ConfAdapt, run gate": lambda p: generate_mtp(student, p, k=3, tau=0.001, confidence=run_confidence, **mtp),
        "ConfAdapt, calibrated": lambda p: generate_mtp(student, p, k=3, tau=0.03,
                                                        confidence=partial(calibrated_confidence,
                                                                           temperatures=[1.0, 0.7, 1.3]), **mtp),
        "ConfAdapt, bidirectional": lambda p: generate_mtp(student, p, k=3, tau=0.03, bidirectional=True, **mtp),
        "speculative": lambda p: generate_speculative(target, draft, p, gamma=3, **common),
        "speculative sampling": lambda p: generate_speculative(target, draft, p, gamma=3, **sample, **common,
                                                               generator=torch.Generator().manual_seed(0)),
        "self-speculative": lambda p: generate_self_speculative(student, p, k=3, **mtp),
        "MTP-drafted speculative": lambda p: generate_mtp_speculative(target, student, p, k=3, **mtp),
    }


@pytest.mark.slow
@pytest.mark.parametrize("prompt_len", [5, 50])  # 50: runs into the context end, where passes stop padding
def test_compiled_decoding_emits_the_plain_tokens(prompt_len):
    """decode.py --compile: every strategy run on CompiledDecoder models (fixed-width passes
    through torch.compile, inductor's CPU code here) gives the same tokens, in the same steps,
    as on the plain models. One-layer models: compiling takes time in proportion to the layers."""
    target = random_model(SMALL, 0)
    student = perturbed_copy(target, 1, 0.01)
    add_mask_token(student, MASK, torch.Generator().manual_seed(0))
    draft = perturbed_copy(target, 1, 0.02)
    prompt = torch.randint(0, N_VOCAB, (prompt_len,), generator=torch.Generator().manual_seed(3)).tolist()
    plain = every_strategy(target, student, draft)
    decoders = [CompiledDecoder(model) for model in (target, student, draft)]
    compiled = every_strategy(*decoders)
    chunk_sizes = set()
    for name in plain:
        a, b = plain[name](prompt), compiled[name](prompt)
        assert b.tokens == a.tokens, name
        assert (b.chunks, b.n_forward, b.n_draft_forward) == (a.chunks, a.n_forward, a.n_draft_forward), name
        chunk_sizes |= set(a.chunks[:-1])
    assert len(chunk_sizes) >= 3  # passes fed varying numbers of real tokens, so the padding varied
    assert all(decoder.graphs for decoder in decoders)  # the passes did run compiled, not plainly
