"""
Tree verification: several guesses per mask, verified in one pass, still lossless (greedy).

A drafting strategy of decode.py stops at the first wrong guess. Here the student's masks give,
at each offset j, a distribution; the likeliest few tokens at each offset, arranged as a tree
(a node's children are guesses for the token after it), are verified in ONE pass: every node
is fed at position (last real + depth), in a cache slot of its own, seeing the prefix and its
own ancestors only (a tree attention mask: the same trick as the student's training layout,
model.mtp_layout). The verifier's greedy token after the root and after each node says which
path stands: the longest path whose every token is the verifier's choice at its parent, then
the verifier's own next token. The output is the verifier's greedy output, whatever the tree.

    python decode.py --draft out/student.pt --k 8 --tree 32 --show-chunks --prompt "..."
    python decode.py --ckpt out/student.pt --self-speculative --k 8 --tree 32 --show-chunks --prompt "..."

Medusa (Cai et al. 2024) verifies a fixed tree of its heads' top-k; EAGLE-2 grows one by the
draft's confidence. Ours grows best-first by the product of the masks' probabilities (the
chance a path stands, were the offsets independent) up to a node budget.

The cache: the accepted path's keys and values were computed at the right positions, seeing
the right tokens, so they are kept, moved to the slots a chain would have written
(KVCache.keep); every other node's are forgotten.
"""
import heapq

import torch

from decode import Generation, check_emits, check_k, check_prompt, forward_new, new_cache, room
from model import KVCache


def draft_tree(probs, budget, max_children=None):
    """A tree of at most `budget` guesses from per-offset distributions probs (depth, n_vocab):
    a node at depth d guesses the token at offset d, its children the token after it, chosen
    among the top `max_children` of offset d + 1 (None: any). Grown best-first by the product
    of the probabilities along the path. Returns (tokens, parents, scores), lists in the order
    the nodes were added, so a parent comes before its children; parents[i] = -1 for a child
    of the root (the last real token). max_children=1 gives the chain of each offset's argmax."""
    depth = len(probs)
    if depth == 0 or budget <= 0:
        return [], [], []
    width = probs.size(-1) if max_children is None else min(max_children, probs.size(-1))
    top_p, top_t = probs.float().topk(min(width, budget), dim=-1)  # (depth, width): a node needs at most budget ranks
    top_p, top_t = top_p.tolist(), top_t.tolist()
    tokens, parents, scores = [], [], []
    # A candidate: (-score, depth - 1, rank, parent). Popping the best and offering its first
    # child and its next sibling visits every node in the order of its score.
    heap = [(-top_p[0][0], 0, 0, -1)]
    while heap and len(tokens) < budget:
        neg, d, rank, parent = heapq.heappop(heap)
        score = -neg
        node = len(tokens)
        tokens.append(top_t[d][rank])
        parents.append(parent)
        scores.append(score)
        base = 1.0 if parent < 0 else scores[parent]
        if rank + 1 < len(top_p[d]):
            heapq.heappush(heap, (-base * top_p[d][rank + 1], d, rank + 1, parent))
        if d + 1 < depth:
            heapq.heappush(heap, (-score * top_p[d + 1][0], d + 1, 0, node))
    return tokens, parents, scores


def depths(parents):
    """The depth of each node (a child of the root: 1)."""
    out = []
    for p in parents:
        out.append(1 if p < 0 else out[p] + 1)
    return out


def ancestors(parents, device="cpu"):
    """(n, n) bool: [i, j] when node j is node i or one of its ancestors (the tree attention mask)."""
    sees = torch.zeros(len(parents), len(parents), dtype=torch.bool, device=device)
    for i, p in enumerate(parents):
        if p >= 0:
            sees[i] = sees[p]
        sees[i, i] = True
    return sees


def forward_tree(model, cache, seq, tokens, parents):
    """One pass over the new tokens of `seq` and a forest of extra tokens hanging from its last
    token: tokens[i]'s parent is tokens[parents[i]] (-1: the last token of seq). The real tokens
    are fed as decode.forward_new feeds them; extra token i at position len(seq) - 1 + its depth,
    in slot len(seq) + i, seeing the prefix and its ancestors. Returns the logits
    (1 + len(tokens), n_vocab): row 0 after the last real token, row 1 + i after token i."""
    start, real = cache.length, seq[cache.length:]
    n_real = len(real)
    device = cache.k.device
    end = len(seq) + len(tokens)                                                   # slots written after the pass
    pos = torch.tensor(list(range(start, len(seq))) + [len(seq) - 1 + d for d in depths(parents)], device=device)
    slots = torch.arange(start, end, device=device)                                # (n,)
    attn_mask = torch.arange(end, device=device) <= slots[:, None]                 # (n, end): causal over slots
    attn_mask[n_real:, len(seq):] = ancestors(parents, device)  # an extra token sees the prefix, its ancestors, itself
    idx = torch.tensor([real + list(tokens)], device=device)                      # (1, n)
    logits, _ = model(idx, pos=pos, attn_mask=attn_mask, cache=cache, slots=slots)
    return logits[0, n_real - 1:]


def tree_cache(model, n_fed):
    """A KV cache with room for a pass that feeds `n_fed` tree tokens after a full context: a
    node's slot is not its position, and nodes that will not stand may lie past the context."""
    check_emits(model)
    return KVCache(model.config, 1, model.lm_head.weight.device, model.lm_head.weight.dtype, scratch=n_fed)


def accept_tree(verdict, tokens, parents):
    """Greedy verification of a tree. verdict: the verifier's greedy token after the root and
    after each node (1 + len(tokens)). Returns (path, next_token): the nodes of the longest path
    from the root whose every token is the verifier's choice at its parent, and the verifier's
    token after it (a correction, or a bonus token)."""
    children = {}
    for i, p in enumerate(parents):
        children.setdefault(p, {})[tokens[i]] = i  # a parent's guesses are distinct tokens
    path, node = [], -1
    while verdict[node + 1] in children.get(node, {}):
        node = children[node][verdict[node + 1]]
        path.append(node)
    return path, verdict[node + 1]


def emitted(tokens, parents, path, token):
    """What a verified tree emits: the path's tokens, then the verifier's own; and what
    Generation.emit counts of the step (drafted: the tree's depth; accepted: the path's length)."""
    return [tokens[i] for i in path] + [token], dict(drafted=max(depths(parents), default=0), accepted=len(path))


@torch.no_grad()
def generate_tree_mtp_speculative(target, student, prompt_ids, max_new_tokens, eos_id, mask_ids, k, budget,
                                  max_children=None, trees=None):
    """MTP-drafted speculative decoding with a tree: the student's one pass (its last real token
    and k-1 masks) gives a distribution for each of the next k tokens; a tree of `budget` guesses
    grown from them is verified by the teacher in one pass. Lossless: the teacher's greedy output.
    `trees`: a list that gets each pass's (tokens, parents, scores, path), for show_tree."""
    check_prompt(prompt_ids, target)
    check_k(k, target, mask_ids=mask_ids)
    t_cache, s_cache = tree_cache(target, budget), new_cache(student)
    out, seq = Generation(tokens=[]), list(prompt_ids)
    while len(seq) < target.config.block_size:
        g = min(k, room(len(seq), target.config.block_size, max_new_tokens - len(out.tokens)))  # deepest guess
        tokens, parents, scores = [], [], []
        if g > 0:
            s_logits = forward_new(student, s_cache, seq, mask_ids[:g - 1])  # (g, n_vocab)
            out.n_draft_forward += 1
            s_cache.truncate(len(seq))  # the masks are stale
            tokens, parents, scores = draft_tree(torch.softmax(s_logits.float(), -1), budget, max_children)
        logits = forward_tree(target, t_cache, seq, tokens, parents)  # (1 + len(tokens), n_vocab)
        out.n_forward += 1
        path, token = accept_tree(logits.argmax(-1).tolist(), tokens, parents)
        t_cache.keep([len(seq) + i for i in path], len(seq))
        if trees is not None:
            trees.append((tokens, parents, scores, path))
        chunk, counts = emitted(tokens, parents, path, token)
        if out.emit(chunk, eos_id, max_new_tokens, **counts):
            break
        seq += chunk
    return out


@torch.no_grad()
def generate_tree_self_speculative(model, prompt_ids, max_new_tokens, eos_id, mask_ids, k, budget,
                                   max_children=None, extra_ends=4, trees=None):
    """Self-speculative decoding with a tree. One pass of the student feeds the new real tokens,
    a tree of guesses grown from the masks of its last pass, and k-1 fresh masks after some of
    the tree's nodes: the next pass's drafts must follow the path that stands, which this pass
    does not know yet. Masks hang after the deepest node of the likeliest path (with a one-wide
    tree, the chain's place: decode.generate_self_speculative) and after the `extra_ends` other
    nodes likeliest to end the path (the root included: no guess stands), each scored by the
    chance of reaching it times the chance none of its children is the verifier's token. If the
    path ends where no masks hang, the next pass only drafts (extra_ends >= budget: masks after
    every node, so that never happens). Lossless: the student's k = 1 greedy output. `trees`: as
    generate_tree_mtp_speculative's."""
    check_prompt(prompt_ids, model)
    check_k(k, model, mask_ids=mask_ids)
    extra_ends = min(extra_ends, budget)  # beyond the budget: no more places to hang masks
    cache = tree_cache(model, budget + (1 + extra_ends) * (k - 1))  # the tree and its masks
    out, seq = Generation(tokens=[]), list(prompt_ids)
    probs = None  # (k-1, n_vocab): the distributions the next tree is grown from
    while len(seq) < model.config.block_size:
        space = room(len(seq), model.config.block_size, max_new_tokens - len(out.tokens))
        tokens, parents, scores, fed, fed_parents, groups = self_tree_feed(probs, space, budget, max_children,
                                                                           extra_ends, mask_ids, k)
        logits = forward_tree(model, cache, seq, fed, fed_parents)  # (1 + len(fed), n_vocab)
        out.n_forward += 1
        path, token = accept_tree(logits[:1 + len(tokens)].argmax(-1).tolist(), tokens, parents)
        cache.keep([len(seq) + i for i in path], len(seq))
        probs = masks_after(path, groups, logits)
        if trees is not None:
            trees.append((tokens, parents, scores, path))
        chunk, counts = emitted(tokens, parents, path, token)
        if out.emit(chunk, eos_id, max_new_tokens, **counts):
            break
        seq += chunk
    return out


def self_tree_feed(probs, space, budget, max_children, extra_ends, mask_ids, k):
    """What a pass of tree self-speculative decoding feeds after the new real tokens: the tree
    grown from `probs` (the masks of the last pass, or None), then k-1 masks after each of
    mask_places' ends, as many as `space` (decode.room) allows. Returns (tokens, parents, scores)
    of the tree, (fed, fed_parents) of the whole forest, and groups: {end: (index in fed of its
    first mask, number of masks)}."""
    tokens, parents, scores = [], [], []
    if probs is not None and space > 0:
        tokens, parents, scores = draft_tree(probs[:space], budget, max_children)
    fed, fed_parents, groups = list(tokens), list(parents), {}
    node_depth = depths(parents)
    for end in mask_places(tokens, parents, scores, probs, extra_ends):
        n_masks = min(k - 1, space - (0 if end < 0 else node_depth[end]))
        if n_masks <= 0:
            continue
        groups[end] = (len(fed), n_masks)
        for j in range(n_masks):
            fed_parents.append(end if j == 0 else len(fed) - 1)
            fed.append(mask_ids[j])
    return tokens, parents, scores, fed, fed_parents, groups


def masks_after(path, groups, logits):
    """The distributions the next tree grows from: the masks hung after the accepted path's end
    (logits: the pass's, (1 + len(fed), n_vocab)), or None if none hang there."""
    end = path[-1] if path else -1
    if end not in groups:
        return None
    first, n_masks = groups[end]
    return torch.softmax(logits[1 + first:1 + first + n_masks].float(), -1)  # (n_masks, n_vocab)


def mask_places(tokens, parents, scores, probs, extra_ends):
    """Where the next drafts' masks hang: after the deepest node of the likeliest path (the root
    when there is no tree), then after the `extra_ends` nodes likeliest to end the path: the
    chance of reaching a node (its score; the root's is 1) times the chance that the verifier's
    token after it is none of its children's (1 - the sum of their probabilities)."""
    if not tokens:
        return [-1]
    line = [-1]  # the likeliest path: from the root, always the best-scored child
    best_child = {}
    for i, p in enumerate(parents):
        if p not in best_child or scores[i] > scores[best_child[p]]:
            best_child[p] = i
    while line[-1] in best_child:
        line.append(best_child[line[-1]])
    ends = [line[-1]]
    node_depth = depths(parents)
    covered = {}  # the probability a node's children hold the verifier's token, by the masks' distributions
    for i, p in enumerate(parents):
        covered[p] = covered.get(p, 0.0) + float(probs[node_depth[i] - 1, tokens[i]])
    reach = lambda i: 1.0 if i < 0 else scores[i]  # noqa: E731
    others = sorted((i for i in [-1] + list(range(len(tokens))) if i != ends[0]),
                    key=lambda i: -reach(i) * (1 - covered.get(i, 0.0)))
    return ends + others[:extra_ends]


def show_tree(token_text, tokens, parents, scores, path):
    """A tree as text, each node indented under its parent with its score (draft_tree's), the
    siblings in the order they were added (likeliest first), the accepted path marked with '*'.
    token_text: id -> str."""
    children = {}
    for i, p in enumerate(parents):
        children.setdefault(p, []).append(i)
    lines, stack, accepted = [], list(reversed(children.get(-1, []))), set(path)
    while stack:  # depth first
        node = stack.pop()
        lines.append("  " * (depths(parents)[node] - 1) + ("* " if node in accepted else "  ")
                     + f"{token_text(tokens[node])!r} {scores[node]:.2f}")
        stack += reversed(children.get(node, []))
    return "\n".join(lines)
