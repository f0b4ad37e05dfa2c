"""Tree verification (tree.py): the tree grown best-first, one pass computing every node as if it
were alone, the accepted path's cache kept, and both tree strategies lossless, whatever the tree."""
import itertools

import pytest
import torch

from conftest import MASK, MASKS, N_VOCAB, TINY
from decode import generate_mtp_speculative, generate_ntp, generate_self_speculative
from model import KVCache
from test_decode import random_model, sharpened, student_of
from tree import (accept_tree, depths, draft_tree, forward_tree, generate_tree_mtp_speculative,
                  generate_tree_self_speculative, show_tree, tree_cache)


@pytest.fixture(scope="module")
def target():
    return sharpened(random_model(TINY, 0))


@pytest.fixture(scope="module")
def student(target):
    return student_of(target)


def prompt_of(length):
    return torch.randint(0, N_VOCAB, (length,), generator=torch.Generator().manual_seed(length)).tolist()


# --------------------------------------------------------------------------------------
# The tree.

@pytest.mark.parametrize("budget", [1, 5, 12, 40])
def test_draft_tree_holds_the_likeliest_paths_in_the_order_of_their_chance(budget):
    """With probabilities below 1 a path is never likelier than its prefix, so the `budget`
    likeliest paths (products of the offsets' probabilities) form a tree: draft_tree's."""
    probs = torch.softmax(torch.randn(3, 4, generator=torch.Generator().manual_seed(budget)), -1)  # (depth, V)
    paths = [p for d in (1, 2, 3) for p in itertools.product(range(4), repeat=d)]
    chance = {p: float(torch.prod(probs[torch.arange(len(p)), list(p)])) for p in paths}
    tokens, parents, scores = draft_tree(probs, budget)
    assert all(p < i for i, p in enumerate(parents))  # a parent comes before its children
    as_paths = []
    for t, p in zip(tokens, parents):
        as_paths.append((() if p < 0 else as_paths[p]) + (t,))
    assert set(as_paths) == set(sorted(paths, key=lambda p: -chance[p])[:budget])
    assert scores == pytest.approx([chance[p] for p in as_paths]) and scores == sorted(scores, reverse=True)


def test_draft_tree_keeps_to_max_children_and_one_wide_is_the_chain_of_argmaxes():
    probs = torch.softmax(torch.randn(4, 6, generator=torch.Generator().manual_seed(0)), -1)
    tokens, parents, _ = draft_tree(probs, 30, max_children=2)
    top2 = probs.topk(2, -1).indices.tolist()
    assert all(t in top2[d - 1] for t, d in zip(tokens, depths(parents)))
    assert draft_tree(probs, 10, max_children=1)[:2] == (probs.argmax(-1).tolist(), [-1, 0, 1, 2])


def test_accept_tree_follows_the_verifiers_choices_down_the_tree():
    #         root
    #        /    \
    #      7(0)   8(1)
    #      /  \      \
    #   9(2)  3(3)   4(4)
    tokens, parents = [7, 8, 9, 3, 4], [-1, -1, 0, 0, 1]
    verdict = lambda after: [after.get(i, 0) for i in range(-1, 5)]  # noqa: E731  (the verifier's token after each)
    assert accept_tree(verdict({-1: 8, 1: 4, 4: 5}), tokens, parents) == ([1, 4], 5)
    assert accept_tree(verdict({-1: 7, 0: 3, 3: 6}), tokens, parents) == ([0, 3], 6)
    assert accept_tree(verdict({-1: 7, 0: 5}), tokens, parents) == ([0], 5)  # no child of 7 is 5
    assert accept_tree(verdict({-1: 2}), tokens, parents) == ([], 2)         # nothing stands


def test_show_tree_draws_each_guess_under_its_parent_and_marks_the_path():
    text = show_tree(lambda t: f"t{t}", [7, 8, 9, 3], [-1, -1, 0, 0], [0.6, 0.3, 0.4, 0.1], [0, 3])
    assert text.splitlines() == ["* 't7' 0.60", "    't9' 0.40", "  * 't3' 0.10", "  't8' 0.30"]


# --------------------------------------------------------------------------------------
# One pass over the tree, and the cache after it.

def random_tree(n, seed):
    g = torch.Generator().manual_seed(seed)
    parents = [int(torch.randint(-1, i, (1,), generator=g)) for i in range(n)]  # any earlier node, or the root
    tokens = torch.randint(0, N_VOCAB, (n,), generator=g).tolist()
    return tokens, parents


def path_to(node, parents):
    path = []
    while node >= 0:
        path.insert(0, node)
        node = parents[node]
    return path


@pytest.mark.parametrize("cached, n_new", [(0, 9), (9, 1), (6, 4)])  # tokens in the cache, real tokens the pass feeds
def test_every_node_of_a_tree_pass_gets_the_logits_of_its_path_fed_alone(target, cached, n_new):
    seq = prompt_of(cached + n_new)
    tokens, parents = random_tree(12, seed=cached)
    cache = tree_cache(target, len(tokens))
    if cached:
        forward_tree(target, cache, seq[:cached], [], [])
    logits = forward_tree(target, cache, seq, tokens, parents)  # (1 + 12, V)
    alone = lambda ids: target(torch.tensor([ids]))[0][0, -1]  # noqa: E731  (uncached, causal)
    assert torch.allclose(logits[0], alone(seq), atol=1e-5)
    for i in range(len(tokens)):
        assert torch.allclose(logits[1 + i], alone(seq + [tokens[j] for j in path_to(i, parents)]), atol=1e-5), i


def test_the_kept_path_reads_as_if_it_had_been_fed_as_a_chain(target):
    """KVCache.keep moves the accepted nodes' keys and values from their slots to the chain's:
    the next pass then sees exactly the prefix and the path."""
    seq = prompt_of(7)
    tokens, parents = random_tree(10, seed=3)
    path = path_to(9, parents)
    cache = tree_cache(target, len(tokens))
    forward_tree(target, cache, seq, tokens, parents)
    cache.keep([len(seq) + i for i in path], len(seq))
    assert cache.length == len(seq) + len(path)
    follows = seq + [tokens[i] for i in path]
    cached = forward_tree(target, cache, follows + [5, 6], [], [])[0]
    assert torch.allclose(cached, target(torch.tensor([follows + [5, 6]]))[0][0, -1], atol=1e-5)


def test_keep_of_a_short_path_forgets_what_lies_after_it():
    cache = KVCache(TINY, scratch=4)
    cache.k[:, :, :, :6] = torch.arange(6.0)[:, None]
    cache.length = 6
    cache.keep([5, 3], 2)
    assert cache.length == 4 and cache.k[0, 0, 0, :4, 0].tolist() == [0, 1, 5, 3]


# --------------------------------------------------------------------------------------
# Lossless, whatever the tree.

SHAPES = [dict(budget=1), dict(budget=4), dict(budget=16), dict(budget=64), dict(budget=16, max_children=2)]
PROMPTS = [(1, 40), (5, 40), (50, 40), (10, 3)]  # (prompt length, max_new): 50 runs into the end of the 64 context


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "-".join(f"{k}{v}" for k, v in s.items()))
@pytest.mark.parametrize("prompt_len, max_new", PROMPTS)
def test_tree_mtp_drafted_equals_the_teachers_greedy(target, student, shape, prompt_len, max_new):
    prompt = prompt_of(prompt_len)
    reference = generate_ntp(target, prompt, max_new, eos_id=-1)
    out = generate_tree_mtp_speculative(target, student, prompt, max_new, -1, MASKS, k=6, **shape)
    assert out.tokens == reference.tokens
    assert out.n_forward == len(out.chunks) and sum(out.chunks) == len(out.tokens)


@pytest.mark.parametrize("shape", SHAPES + [dict(budget=16, extra_ends=0), dict(budget=8, extra_ends=8)],
                         ids=lambda s: "-".join(f"{k}{v}" for k, v in s.items()))
@pytest.mark.parametrize("prompt_len, max_new", PROMPTS)
def test_tree_self_speculative_equals_the_students_k1_greedy(student, shape, prompt_len, max_new):
    prompt = prompt_of(prompt_len)
    reference = generate_ntp(student, prompt, max_new, eos_id=-1)
    out = generate_tree_self_speculative(student, prompt, max_new, -1, MASKS, k=6, **shape)
    assert out.tokens == reference.tokens
    assert out.n_forward == len(out.chunks) and sum(out.chunks) == len(out.tokens)


@pytest.mark.parametrize("strategy", ["mtp", "self"])
def test_a_tree_stops_at_eos_as_its_reference_does(target, student, strategy):
    """EOS inside an accepted path: the output ends there, as the reference's, whatever follows it."""
    prompt, verifier = prompt_of(5), (target if strategy == "mtp" else student)
    free = generate_ntp(verifier, prompt, 40, eos_id=-1).tokens
    for eos_id in sorted(set(free[3:20])):
        reference = generate_ntp(verifier, prompt, 40, eos_id=eos_id)
        if strategy == "mtp":
            out = generate_tree_mtp_speculative(target, student, prompt, 40, eos_id, MASKS, k=6, budget=16)
        else:
            out = generate_tree_self_speculative(student, prompt, 40, eos_id, MASKS, k=6, budget=16)
        assert out.tokens == reference.tokens and out.tokens[-1] == eos_id


@pytest.mark.parametrize("k", [2, 4, 8])
@pytest.mark.parametrize("prompt_len, max_new", PROMPTS)
def test_a_one_wide_tree_is_the_chain_pass_for_pass(target, student, k, prompt_len, max_new):
    """max_children = 1 grows each offset's argmax, one after the other: the chain. Self-speculative
    with masks only at the likeliest path's end (extra_ends = 0) hangs them where the chain does."""
    prompt = prompt_of(prompt_len)
    pairs = [(generate_mtp_speculative(target, student, prompt, max_new, -1, MASKS, k=k),
              generate_tree_mtp_speculative(target, student, prompt, max_new, -1, MASKS, k=k, budget=k,
                                            max_children=1)),
             (generate_self_speculative(student, prompt, max_new, -1, MASKS, k=k),
              generate_tree_self_speculative(student, prompt, max_new, -1, MASKS, k=k, budget=k, max_children=1,
                                             extra_ends=0))]
    for chain, one_wide in pairs:
        assert one_wide.tokens == chain.tokens and one_wide.chunks == chain.chunks
        assert (one_wide.n_forward, one_wide.n_draft_forward) == (chain.n_forward, chain.n_draft_forward)
        assert one_wide.accepted == chain.accepted


def test_the_trees_record_the_paths_that_stood(target, student):
    trees = []
    out = generate_tree_mtp_speculative(target, student, prompt_of(5), 40, -1, MASKS, k=6, budget=16, trees=trees)
    assert len(trees) == out.n_forward
    start = 0
    for (tokens, parents, scores, path), size in list(zip(trees, out.chunks))[:-1]:  # the last may be cut short
        assert len(tokens) == len(parents) == len(scores)
        assert path == (path_to(path[-1], parents) if path else [])  # a path from the root
        assert [tokens[i] for i in path] == out.tokens[start:start + size - 1]  # then the teacher's own token
        start += size


class SecondGuess(torch.nn.Module):
    """A student whose every mask ranks the reference's next token second (and, as a drafter
    only, every position: `every_row`): the paths that stand then run through nodes other than the
    first ones grown, so a strategy that kept the wrong slots in its cache (or took the wrong
    path) would show, and a tree must beat the chain."""

    def __init__(self, model, reference, every_row=False):  # reference: the prompt and the reference's tokens
        super().__init__()
        self.model, self.reference, self.every_row = model, reference, every_row
        self.config, self.lm_head, self.n_vocab = model.config, model.lm_head, model.n_vocab

    def forward(self, idx, pos=None, attn_mask=None, cache=None, slots=None):
        logits, loss = self.model(idx, pos=pos, attn_mask=attn_mask, cache=cache, slots=slots)  # (1, T, n_vocab)
        logits = logits.clone()
        for j in range(idx.size(1)) if self.every_row else (idx[0] == MASK).nonzero().flatten().tolist():
            p = int(pos[j])  # a token at position p guesses the token at p + 1
            right = self.reference[p + 1] if p + 1 < len(self.reference) else 0
            logits[0, j] = 0.0
            logits[0, j, (right + 1) % N_VOCAB], logits[0, j, right] = 5.0, 4.0
        return logits, loss


@pytest.mark.parametrize("prompt_len", [5, 30])
def test_trees_take_the_second_guesses_the_chain_cannot(target, student, prompt_len):
    prompt = prompt_of(prompt_len)
    for verifier in (target, student):
        reference = generate_ntp(verifier, prompt, 40, eos_id=-1).tokens
        drafter = SecondGuess(student, prompt + reference, every_row=verifier is target)
        if verifier is target:
            chain = generate_mtp_speculative(target, drafter, prompt, 40, -1, MASKS, k=6)
            tree = generate_tree_mtp_speculative(target, drafter, prompt, 40, -1, MASKS, k=6, budget=32)
        else:
            chain = generate_self_speculative(drafter, prompt, 40, -1, MASKS, k=6)
            tree = generate_tree_self_speculative(drafter, prompt, 40, -1, MASKS, k=6, budget=32)
        assert chain.tokens == tree.tokens == reference
        assert tree.tokens_per_forward > chain.tokens_per_forward + 1
