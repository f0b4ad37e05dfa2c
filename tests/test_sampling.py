"""Sampling (temperature > 0) for every strategy: the speculative ones keep their verifier's
distribution, static k and ConfAdapt draw each position from its own, and every one of them is
its greedy self at temperature 0 and its own seeded self twice."""
from functools import partial

import pytest
import torch

import decode
from conftest import MASK, MASKS, N_VOCAB, SMALL
from decode import (generate_mtp, generate_mtp_speculative, generate_ntp, generate_self_speculative,
                    generate_speculative, pick_block, token_probs)
from gates import largest_confidence, sampled_at_1
from model import add_mask_token
from test_decode import perturbed_copy, random_model

TEMPERATURE, TOP_K, PROMPT = 0.3, 3, [3, 1, 4, 1, 5]


@pytest.fixture(scope="module")
def models(target, student):
    """(teacher, its student, a draft model): the student's masks are random, so its drafts
    follow distributions far from the teacher's and from its own next-token ones."""
    return target, student, random_model(SMALL, 5)


@pytest.fixture(scope="module")
def target():
    return random_model(SMALL, 0)


@pytest.fixture(scope="module")
def student(target):
    s = perturbed_copy(target, 1, 0.05)
    return add_mask_token(s, MASK, torch.Generator().manual_seed(0))


def every_strategy(target, student, draft, **sampling):
    """Each strategy of decode.py as prompt -> Generation, with the same sampling settings."""
    run = dict(max_new_tokens=24, eos_id=-1, **sampling)
    mtp = dict(mask_ids=MASKS, **run)
    return {
        "ntp": lambda p: generate_ntp(target, p, **run),
        "static k=3": lambda p: generate_mtp(student, p, k=3, **mtp),
        "ConfAdapt": lambda p: generate_mtp(student, p, k=4, tau=0.05, **mtp),
        "ConfAdapt, largest probability": lambda p: generate_mtp(student, p, k=4, tau=0.05, pick=largest_confidence,
                                                                 **mtp),
        "ConfAdapt, authors' sampling": lambda p: generate_mtp(student, p, k=4, tau=0.05,
                                                               pick=partial(sampled_at_1, tau=0.05), **mtp),
        "speculative": lambda p: generate_speculative(target, draft, p, gamma=3, **run),
        "self-speculative": lambda p: generate_self_speculative(student, p, k=4, **mtp),
        "MTP-drafted speculative": lambda p: generate_mtp_speculative(target, student, p, k=4, **mtp),
    }


def test_at_temperature_0_and_near_it_every_strategy_emits_its_greedy_tokens(models):
    """At temperature 0 the sampling arguments change nothing. Just above it every distribution
    is all but a point mass on the argmax, so the sampled path (draws, rejection sampling, the
    gate's confidence of the token drawn) must give the greedy tokens too: a draft verified
    against the wrong row, or a token drawn from the wrong position, would not. The one
    exception is why the method does not gate on the largest tempered probability: near
    temperature 0 that is 1 everywhere, and ConfAdapt turns into static k."""
    greedy = every_strategy(*models)
    static_k4 = generate_mtp(models[1], PROMPT, 24, -1, MASKS, k=4)
    for temperature in (0.0, 1e-4):
        sampled = every_strategy(*models, temperature=temperature, generator=torch.Generator().manual_seed(0))
        for name in greedy:
            a, b = greedy[name](PROMPT), sampled[name](PROMPT)
            if name == "ConfAdapt, largest probability" and temperature > 0:
                assert (b.tokens, b.chunks) == (static_k4.tokens, static_k4.chunks) != (a.tokens, a.chunks)
            else:
                assert (b.tokens, b.chunks) == (a.tokens, a.chunks), (name, temperature)


def test_the_same_seed_gives_the_same_tokens(models):
    def run(seed):
        strategies = every_strategy(*models, temperature=1.0, generator=torch.Generator().manual_seed(seed))
        return {name: decode_(PROMPT).tokens for name, decode_ in strategies.items()}
    first, again, other = run(0), run(0), run(1)
    assert first == again
    assert all(first[name] != other[name] for name in first)  # and the draws do depend on the seed


def pair_distribution(model, prompt, temperature, top_k):
    """The exact distribution of the first two tokens of `model`'s own sampling, (n_vocab, n_vocab)."""
    with torch.no_grad():
        first = token_probs(model(torch.tensor([prompt]))[0][0, -1], temperature, top_k)  # (n_vocab,)
        joint = torch.zeros(N_VOCAB, N_VOCAB)
        for t in first.nonzero()[:, 0].tolist():
            joint[t] = first[t] * token_probs(model(torch.tensor([prompt + [t]]))[0][0, -1], temperature, top_k)
    return joint


def first_pairs(generate, runs, seed=0):
    """The empirical distribution of the first two tokens over `runs` seeded generations."""
    g = torch.Generator().manual_seed(seed)
    counts = torch.zeros(N_VOCAB, N_VOCAB)
    for _ in range(runs):
        tokens = generate(g).tokens
        counts[tokens[0], tokens[1]] += 1
    return counts / runs


def total_variation(p, q):
    return 0.5 * float((p - q).abs().sum())


# With 600 runs over at most 9 pairs, an exact sampler's empirical distribution lies about 0.05
# from the truth in total variation (at most sum of sqrt(2 p / (pi n)) / 2 = 0.049); 0.1 leaves
# room. Letting every draft stand puts it 0.5 or more away.
RUNS, BOUND = 600, 0.1


def lossless_cases(target, student, draft):
    """The three drafting strategies, max_new_tokens=3 so that the second token is a draft that
    the verifier judges (the third pass is never reached)."""
    run = dict(max_new_tokens=3, eos_id=-1, mask_ids=MASKS, temperature=TEMPERATURE, top_k=TOP_K)
    return {
        "speculative": (target, lambda g: generate_speculative(target, draft, PROMPT, 3, -1, gamma=3, generator=g,
                                                               temperature=TEMPERATURE, top_k=TOP_K)),
        "self-speculative": (student, lambda g: generate_self_speculative(student, PROMPT, k=4, generator=g, **run)),
        "MTP-drafted speculative": (target, lambda g: generate_mtp_speculative(target, student, PROMPT, k=4,
                                                                               generator=g, **run)),
    }


@pytest.mark.parametrize("name", ["speculative", "self-speculative", "MTP-drafted speculative"])
def test_drafting_strategies_sample_their_verifiers_distribution(models, name, monkeypatch):
    """Over many seeded runs the first two tokens of speculative decoding with a draft model and
    MTP-drafted speculative decoding (verifier: the teacher) and of self-speculative decoding
    (verifier: the student's own k = 1) follow the verifier's own sampling, computed exactly; the
    drafts follow other distributions, which an acceptance that let every draft stand would show."""
    verifier, generate = lossless_cases(*models)[name]
    exact = pair_distribution(verifier, PROMPT, TEMPERATURE, TOP_K)
    assert total_variation(first_pairs(generate, RUNS), exact) < BOUND

    def accept_every_draft(logits, drafts, draft_probs, temperature, top_k, generator=None):  # the planted bug
        p = token_probs(logits, temperature, top_k)
        return len(drafts), int(torch.multinomial(p[-1], 1, generator=generator))
    monkeypatch.setattr(decode, "accept_sampled", accept_every_draft)
    assert total_variation(first_pairs(generate, RUNS // 4), exact) > 3 * BOUND


def test_static_k_samples_each_position_from_its_own_distribution(models):
    """One pass of static k = 2 draws token 1 after the last real token and token 2 at the mask,
    each from its own distribution, neither seeing the other's draw: the pair follows the product
    of the two marginals, which is not the student's joint distribution (the paper's "panda meat")."""
    _, student, _ = models
    with torch.no_grad():
        logits = student(torch.tensor([PROMPT + [MASK]]))[0][0, -2:, :N_VOCAB]  # (2, n_vocab)
    first, second = token_probs(logits, TEMPERATURE, TOP_K)
    product = first[:, None] * second[None, :]
    joint = pair_distribution(student, PROMPT, TEMPERATURE, TOP_K)
    assert total_variation(product, joint) > 2 * BOUND
    generate = partial(generate_mtp, student, PROMPT, 2, -1, MASKS, k=2, temperature=TEMPERATURE, top_k=TOP_K)
    assert total_variation(first_pairs(lambda g: generate(generator=g), RUNS), product) < BOUND


def test_a_sampled_pass_gates_on_the_students_own_probability_of_each_token_drawn():
    scores = 3 * torch.randn(5, N_VOCAB)  # (n, n_vocab): block positions 1..5 of a pass
    tokens, confidence = pick_block(scores, 0.7, 4, torch.Generator().manual_seed(0))
    top4 = scores.topk(4, dim=-1).indices
    assert all(t in row for t, row in zip(tokens.tolist(), top4.tolist()))  # drawn within the top 4
    torch.testing.assert_close(confidence, torch.softmax(scores, -1)[torch.arange(5), tokens])  # at temperature 1
    greedy_tokens, greedy_confidence = pick_block(scores)
    assert torch.equal(greedy_tokens, scores.argmax(-1))
    torch.testing.assert_close(greedy_confidence, torch.softmax(scores, -1).amax(-1))


def test_the_authors_sampling_samples_only_the_passes_that_emit_one_token(models):
    """gates.sampled_at_1: with a tau nothing reaches, every pass emits one token, sampled, as the
    student's own k = 1 sampling would; with a tau everything reaches, every pass is static k's
    greedy block."""
    _, student, _ = models
    run = dict(max_new_tokens=20, eos_id=-1, mask_ids=MASKS, temperature=1.0)
    for tau, reference in ((1.0, dict(k=1)), (1e-9, dict(k=4, temperature=0.0))):
        out = generate_mtp(student, PROMPT, k=4, tau=tau, pick=partial(sampled_at_1, tau=tau),
                           generator=torch.Generator().manual_seed(0), **run)
        expected = generate_mtp(student, PROMPT, generator=torch.Generator().manual_seed(0), **{**run, **reference})
        assert out.tokens == expected.tokens, tau


def test_every_pair_is_reachable_so_the_bound_is_not_vacuous(models):
    """The lossless test's distributions put mass on several pairs (not one sure pair, which any
    sampler would match)."""
    target, student, _ = models
    for verifier in (target, student):
        exact = pair_distribution(verifier, PROMPT, TEMPERATURE, TOP_K)
        assert int((exact > 0.02).sum()) >= 4 and float(exact.max()) < 0.8
