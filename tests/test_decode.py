"""Speculative, self-speculative and MTP-drafted decoding: lossless where they promise to be."""
import pytest
import torch

from decode import (accept_sampled, generate_mtp, generate_mtp_speculative, generate_ntp, generate_self_speculative,
                    generate_speculative, token_probs)
from conftest import MASK, MASKS, N_VOCAB, SMALL, TINY
from common import UserError, emit_only
from model import GPT, GPTConfig, add_mask_token


def random_model(config, seed):
    torch.manual_seed(seed)
    return emit_only(GPT(config).eval(), N_VOCAB)


def perturbed_copy(model, seed, scale):
    """The same model with noise on every weight: its greedy choices agree with the original's
    often but not always, so drafts get a mix of acceptances and rejections."""
    torch.manual_seed(seed)
    copy = emit_only(GPT(model.config).eval(), N_VOCAB)
    copy.load_state_dict({k: v + scale * torch.randn_like(v) for k, v in model.state_dict().items()})
    return copy


@pytest.fixture(scope="module")
def target():
    return random_model(TINY, 0)


def student_of(target):
    """A student of `target`: a noisy copy plus the mask token (random, so its drafts are imperfect)."""
    s = perturbed_copy(target, 1, 0.01)
    add_mask_token(s, MASK, torch.Generator().manual_seed(0))
    return s


def sharpened(model):
    """`model` with its matrices scaled up tenfold: its greedy continuations vary with the context
    (a fresh random model's repeat one token), so a key or value from the wrong cache slot shows."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(10)
    return model


@pytest.fixture(scope="module")
def student(target):
    return student_of(target)


def drafts_of(target):
    return {"itself": target, "a noisy copy": perturbed_copy(target, 1, 0.02), "a stranger": random_model(SMALL, 5)}


def acceptance_rate(out):
    return sum(out.accepted) / max(1, sum(out.drafted))


@pytest.mark.parametrize("gamma", [1, 3, 6])
@pytest.mark.parametrize("prompt_len, max_new", [(5, 40), (50, 40), (10, 3)])  # 50: runs into the context end
def test_speculative_greedy_equals_target_greedy(target, gamma, prompt_len, max_new):
    prompt = torch.randint(0, N_VOCAB, (prompt_len,), generator=torch.Generator().manual_seed(prompt_len)).tolist()
    reference = generate_ntp(target, prompt, max_new, eos_id=-1)
    rates = {}
    for name, draft in drafts_of(target).items():
        out = generate_speculative(target, draft, prompt, max_new, eos_id=-1, gamma=gamma)
        assert out.tokens == reference.tokens, name
        assert out.n_forward == len(out.chunks) and all(0 <= a <= d for a, d in zip(out.accepted, out.drafted))
        rates[name] = acceptance_rate(out)
    if max_new > 3:
        assert rates["itself"] == 1.0 and rates["a stranger"] < rates["itself"]


def test_speculative_stops_at_eos_like_the_target(target):
    prompt = [7, 8, 9]
    free = generate_ntp(target, prompt, 30, eos_id=-1).tokens
    eos = free[6]
    reference = generate_ntp(target, prompt, 30, eos_id=eos).tokens
    for draft in drafts_of(target).values():
        assert generate_speculative(target, draft, prompt, 30, eos_id=eos, gamma=4).tokens == reference


@pytest.mark.parametrize("k", [1, 2, 4, 8])
@pytest.mark.parametrize("prompt_len, max_new", [(5, 40), (50, 40)])
def test_self_speculative_equals_the_students_k1_greedy(student, k, prompt_len, max_new):
    prompt = torch.randint(0, N_VOCAB, (prompt_len,), generator=torch.Generator().manual_seed(1)).tolist()
    reference = generate_mtp(student, prompt, max_new, eos_id=-1, mask_ids=MASKS, k=1)
    # A random student's masks guess nothing right. Read as the token its k=1 output repeats
    # most, they guess that token, so some drafts stand and some do not.
    student = perturbed_copy(student, 0, 0.0)
    with torch.no_grad():
        student.transformer.wte.weight[MASK] = student.transformer.wte.weight[max(reference.tokens,
                                                                                  key=reference.tokens.count)]
    out = generate_self_speculative(student, prompt, max_new, eos_id=-1, mask_ids=MASKS, k=k)
    assert out.tokens == reference.tokens and MASK not in out.tokens
    assert out.n_forward == len(out.chunks) and all(0 <= a <= d for a, d in zip(out.accepted, out.drafted))
    if k == 1:  # no masks, so nothing to draft: one pass per token, as k = 1
        assert out.n_forward == reference.n_forward and sum(out.drafted) == 0
    else:  # its drafts did stand, so it took fewer passes than k = 1
        assert sum(out.accepted) > 0 and out.n_forward < reference.n_forward
        assert out.n_forward == reference.n_forward - sum(out.accepted)  # each accepted draft saves a pass


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
    reference = generate_ntp(target, prompt, max_new, eos_id=-1)
    rates = {}
    for name, (drafter, mask_ids) in mtp_drafters(target, student).items():
        out = generate_mtp_speculative(target, drafter, prompt, max_new, eos_id=-1,
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
    p, q = token_probs(p_logits[0], 1.0, top_k), token_probs(q_logits, 1.0, top_k)
    assert total_variation(p, q) > 0.3  # a sampler that ignored the verdict would be far off
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(V)
    for d in torch.multinomial(q, trials, replacement=True, generator=g).tolist():
        n, token = accept_sampled(p_logits, [d], [q], 1.0, top_k, g)
        counts[d if n == 1 else token] += 1
    assert total_variation(counts / trials, p) < 0.015


@pytest.mark.parametrize("call, message", [
    (lambda t, s: generate_speculative(t, t, [1, 2], 5, -1, gamma=0), "gamma must be >= 1"),
    (lambda t, s: generate_speculative(t, GPT(GPTConfig(**{**TINY.__dict__, "block_size": 16})), [1, 2], 5, -1,
                                       gamma=2), "context is shorter"),
    (lambda t, s: generate_self_speculative(s, [1, 2], 5, -1, MASKS, k=0), "k must be >= 1"),
    (lambda t, s: generate_mtp_speculative(t, s, [1, 2], 5, -1, MASKS, k=64), "does not fit"),
    (lambda t, s: generate_mtp_speculative(t, s, [], 5, -1, MASKS, k=2), "prompt is empty"),
    (lambda t, s: generate_mtp(s, [1, 2], 5, -1, [MASK], k=3), "k=3 reads k-1 masks"),
    (lambda t, s: generate_ntp(GPT(TINY), [1, 2], 5, -1), "logits cover the padded vocabulary"),
    (lambda t, s: generate_speculative(t, GPT(SMALL), [1, 2], 5, -1, gamma=2), "logits cover the padded vocabulary"),
])
def test_bad_speculative_settings_are_refused(target, student, call, message):
    with pytest.raises(UserError, match=message):
        call(target, student)
