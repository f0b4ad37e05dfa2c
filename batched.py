"""
The decoding strategies of decode.py over a batch of prompts at once: what a server does, and
where the accelerations stop paying (bench_batch.py). Read decode.py first: each function here
is its batch-1 namesake with a loop over the rows where that one has a single sequence, and it
takes its decisions with the same functions (decode.pick_block, confadapt_emits, accept_greedy,
next_drafts, room), so every row's tokens are the batch-1 function's (tests/test_batched.py).
Greedy decoding only: sampling is decode.py's (and bench.py --temperature's), one sequence at a time.

What batching changes:
- Rows stand at different points: their prompts differ in length, and a pass advances each row
  by its own number of tokens (ConfAdapt's run, a speculative step's accepted drafts). So the
  cache keeps a length per row (`RowCache.lengths`), and each row's tokens are fed at its own
  positions: `model.forward` takes positions of shape (B, T).
- A pass feeds every row's new tokens (and masks or drafts) padded on the right to the widest
  row. The padding costs a full position each and stands at the context's last slot, which no
  real token ever takes and no real token ever sees.
- A row that has finished leaves the batch: its cache row is dropped (`RowCache.keep`, one copy
  of the cache), so it costs nothing in the passes that follow.

Each function returns a Generation per prompt, in the prompts' order.
"""
import torch

from decode import (Generation, accept_greedy, check_draft, check_emits, check_k, check_prompt, confadapt_emits,
                    next_drafts, pick_block, room, see_each_other)
from model import KVCache
from tree import accept_tree, ancestors, depths, draft_tree, emitted, masks_after, self_tree_feed


def padding_slot(config):
    """Where a batch's padding stands: the context's last position (RowCache.forward says why)."""
    return config.block_size - 1


class RowCache:
    """A KV cache for a batch whose rows stand at different points. Row i of the cache holds the
    first lengths[i] tokens of its sequence; lowering lengths[i] forgets the slots after them
    (masks, rejected drafts), as KVCache.truncate does for one sequence. `scratch`: slots past
    the context, for the trees of tree.py (KVCache's)."""

    def __init__(self, model, batch_size, scratch=0):
        check_emits(model)
        self.model = model
        self.cache = KVCache(model.config, batch_size, model.lm_head.weight.device, model.lm_head.weight.dtype,
                             scratch)
        self.lengths = [0] * batch_size

    def forward(self, feeds, n_bidirectional=None, trees=None):
        """One pass of the model over every row: row i feeds the tokens feeds[i] (possibly none) at
        the positions after its first lengths[i]. Returns the logits (B, W, n_vocab), W the widest
        feed: row i's j-th token's prediction is logits[i, j]. `n_bidirectional`: per row, how many
        of its last tokens see each other both ways (the masks of a --bidirectional student).
        `trees`: per row, the parents of the last len(trees[i]) tokens of its feed, a forest that
        hangs from its last real token, fed as tree.forward_tree feeds one (none: [])."""
        W = max(len(f) for f in feeds)
        device, pad = self.cache.k.device, padding_slot(self.model.config)
        idx = torch.tensor([f + [0] * (W - len(f)) for f in feeds], device=device)            # (B, W)
        # A row stops once its sequence fills the context, and the token that fills it is emitted,
        # never fed: so the context's last position never holds a real token, and the padding stands
        # there, its keys and values in the cache's last slot (past every slot a real token takes).
        j = torch.arange(W, device=device)                                                   # (W,)
        start = torch.tensor(self.lengths, device=device)[:, None]                           # (B, 1)
        fed = torch.tensor([len(f) for f in feeds], device=device)[:, None]                  # (B, 1)
        pos = torch.where(j < fed, start + j, pad)                                           # (B, W)
        slots = torch.where(j < fed, start + j, self.cache.k.size(3) - 1)                   # (B, W)
        n_keys = max(length + len(f) for length, f in zip(self.lengths, feeds))              # the last real slot + 1
        assert n_keys < self.cache.k.size(3), "a real token in the slot where the padding stands"
        attn_mask = torch.arange(n_keys, device=device) <= slots[:, :, None]                # (B, W, n_keys)
        for i, n in enumerate(n_bidirectional or []):
            if n > 1:  # the row's last n tokens see each other whole
                see_each_other(attn_mask[i], n, len(feeds[i]), self.lengths[i] + len(feeds[i]))
        for i, parents in enumerate(trees or []):
            if parents:  # node t at position (last real + its depth), seeing the prefix, its ancestors, itself
                seq_len, end = self.lengths[i] + len(feeds[i]) - len(parents), self.lengths[i] + len(feeds[i])
                pos[i, seq_len - self.lengths[i]:len(feeds[i])] = seq_len - 1 + torch.tensor(depths(parents))
                attn_mask[i, seq_len - self.lengths[i]:len(feeds[i]), seq_len:end] = ancestors(parents, device)
        logits, _ = self.model(idx, pos=pos, attn_mask=attn_mask, cache=self.cache, slots=slots)
        self.lengths = [length + len(f) for length, f in zip(self.lengths, feeds)]
        return logits

    def keep_path(self, i, slots, start):
        """Row i keeps its first `start` slots, then the entries of `slots` (a tree's accepted
        path, as KVCache.keep)."""
        self.cache.k[:, i, :, start:start + len(slots)] = self.cache.k[:, i, :, slots]
        self.cache.v[:, i, :, start:start + len(slots)] = self.cache.v[:, i, :, slots]
        self.lengths[i] = start + len(slots)

    def keep(self, rows):
        """Keep only these rows (indices into the current batch, in increasing order): the rows that
        finished stop costing anything in later passes. With every row kept it copies nothing."""
        if len(rows) < len(self.lengths):
            self.cache.k, self.cache.v = self.cache.k[:, rows], self.cache.v[:, rows]
            self.lengths = [self.lengths[i] for i in rows]


class Batch:
    """The rows still decoding (`running`: indices into the prompts, in the caches' row order),
    every prompt's sequence and Generation, and one RowCache per model (the first: the model
    whose output it is)."""

    def __init__(self, prompts, models, max_new_tokens, scratch=(0, 0)):
        for p in prompts:
            check_prompt(p, models[0])
        self.block_size, self.max_new_tokens = models[0].config.block_size, max_new_tokens
        self.seqs = [list(p) for p in prompts]
        self.outs = [Generation(tokens=[]) for _ in prompts]
        self.running = list(range(len(prompts)))
        self.caches = [RowCache(m, len(prompts), n) for m, n in zip(models, scratch)]

    def room(self, r):
        """decode.room for prompt r: what its pass may feed after its last real token."""
        return room(len(self.seqs[r]), self.block_size, self.max_new_tokens - len(self.outs[r].tokens))

    def emit(self, r, chunk, eos_id, drafted=None, accepted=None):
        """Prompt r's step emitted `chunk` (cut at EOS and max_new_tokens by Generation.emit), which
        then joins its sequence. True when the row is done: EOS, max_new_tokens or a full context."""
        if self.outs[r].emit(chunk, eos_id, self.max_new_tokens, drafted, accepted):
            return True
        self.seqs[r] += chunk
        return len(self.seqs[r]) >= self.block_size

    def drop(self, finished):
        """finished[i]: whether the i-th running row is done."""
        keep = [i for i, done in enumerate(finished) if not done]
        self.running = [self.running[i] for i in keep]
        for c in self.caches:
            c.keep(keep)


def verify(batch, t_cache, drafts, eos_id):
    """The verifying pass of both speculative strategies: the target feeds each row's new tokens
    and drafts, and each row keeps its accepted drafts and the target's next token (accept_greedy)."""
    feeds = [batch.seqs[r][length:] + d for r, length, d in zip(batch.running, t_cache.lengths, drafts)]
    verdict = t_cache.forward(feeds).argmax(-1).tolist()                                     # (B, W)
    finished = []
    for i, (r, feed, d) in enumerate(zip(batch.running, feeds, drafts)):
        batch.outs[r].n_forward += 1
        n, token = accept_greedy(d, verdict[i][len(feed) - len(d) - 1:len(feed)])  # after the last real token on
        t_cache.lengths[i] = len(batch.seqs[r]) + n  # roll back the rejected drafts
        finished.append(batch.emit(r, d[:n] + [token], eos_id, len(d), n))
    return finished


@torch.no_grad()
def generate_ntp_batch(model, prompts, max_new_tokens, eos_id):
    """decode.generate_ntp, greedy, over a batch."""
    batch = Batch(prompts, [model], max_new_tokens)
    cache = batch.caches[0]
    while batch.running:
        feeds = [batch.seqs[r][length:] for r, length in zip(batch.running, cache.lengths)]
        logits = cache.forward(feeds)                                                        # (B, W, n_vocab)
        last = torch.tensor([len(f) - 1 for f in feeds])                                     # (B,)
        tokens = logits[torch.arange(len(feeds)), last].argmax(-1).tolist()                 # (B,)
        finished = []
        for r, token in zip(batch.running, tokens):
            batch.outs[r].n_forward += 1
            finished.append(batch.emit(r, [token], eos_id))
        batch.drop(finished)
    return batch.outs


@torch.no_grad()
def generate_mtp_batch(model, prompts, max_new_tokens, eos_id, mask_ids, k, tau=None, bidirectional=False):
    """decode.generate_mtp over a batch: static k (tau=None) or ConfAdapt(tau). Each row feeds its
    new tokens and k-1 masks and emits its own number of tokens."""
    check_k(k, model, mask_ids=mask_ids, tau=tau)
    batch = Batch(prompts, [model], max_new_tokens)
    cache = batch.caches[0]
    while batch.running:
        n_masks = [min(k - 1, room(len(batch.seqs[r]), batch.block_size)) for r in batch.running]  # as decode's: no cap
        feeds = [batch.seqs[r][length:] + mask_ids[:m] for r, length, m in zip(batch.running, cache.lengths, n_masks)]
        logits = cache.forward(feeds, n_masks if bidirectional else None)                   # (B, W, n_vocab)
        tokens, probability = pick_block(logits.float())                                    # (B, W) each
        finished = []
        for i, (r, feed, m) in enumerate(zip(batch.running, feeds, n_masks)):
            batch.outs[r].n_forward += 1
            cache.lengths[i] = len(batch.seqs[r])  # forget the masks' keys/values
            read = slice(len(feed) - m - 1, len(feed))  # the last real token and the masks
            chunk = tokens[i, read][:confadapt_emits(probability[i, read], tau)].tolist()
            finished.append(batch.emit(r, chunk, eos_id))
        batch.drop(finished)
    return batch.outs


@torch.no_grad()
def generate_speculative_batch(target, draft, prompts, max_new_tokens, eos_id, gamma):
    """decode.generate_speculative, greedy, over a batch: gamma passes of the draft model, each
    over every row that still drafts, then one pass of the target verifies every row's drafts."""
    check_k(gamma, target, "gamma")
    check_draft(target, draft)
    batch = Batch(prompts, [target, draft], max_new_tokens)
    t_cache, d_cache = batch.caches
    while batch.running:
        g = [min(gamma, batch.room(r)) for r in batch.running]
        drafts = [[] for _ in batch.running]
        for j in range(max(g)):  # a row that drafts fewer than max(g) feeds nothing: padding only
            # What the draft's cache lacks: on the first pass the prompt, or the target's token of the
            # last step (after a full acceptance also the last draft, never fed); then the newest draft.
            feeds = [(batch.seqs[r] + d)[length:] if j < gi else []
                     for r, length, d, gi in zip(batch.running, d_cache.lengths, drafts, g)]
            logits = d_cache.forward(feeds)                                                  # (B, W, n_vocab)
            last = torch.tensor([max(0, len(f) - 1) for f in feeds])                         # (B,)
            proposed = logits[torch.arange(len(feeds)), last].argmax(-1).tolist()           # (B,)
            for i, r in enumerate(batch.running):
                if j < g[i]:
                    drafts[i].append(proposed[i])
                    batch.outs[r].n_draft_forward += 1
        finished = verify(batch, t_cache, drafts, eos_id)
        for i, r in enumerate(batch.running):
            d_cache.lengths[i] = min(d_cache.lengths[i], t_cache.lengths[i])  # nor the draft's beyond the accepted
        batch.drop(finished)
    return batch.outs


@torch.no_grad()
def generate_self_speculative_batch(model, prompts, max_new_tokens, eos_id, mask_ids, k):
    """decode.generate_self_speculative over a batch: each row feeds its new tokens, the drafts
    its masks made last pass and k-1 fresh masks."""
    check_k(k, model, mask_ids=mask_ids)
    batch = Batch(prompts, [model], max_new_tokens)
    cache = batch.caches[0]
    drafts = {r: [] for r in batch.running}  # by prompt: the drafts its masks made last pass
    while batch.running:
        feeds, n_masks = [], []
        for r, length in zip(batch.running, cache.lengths):
            space = batch.room(r)  # drafts + masks
            drafts[r] = drafts[r][:space]
            n_masks.append(min(k - 1, space - len(drafts[r])))
            feeds.append(batch.seqs[r][length:] + drafts[r] + mask_ids[:n_masks[-1]])
        verdicts = cache.forward(feeds).argmax(-1).tolist()                                  # (B, W)
        finished = []
        for i, (r, feed, m) in enumerate(zip(batch.running, feeds, n_masks)):
            batch.outs[r].n_forward += 1
            d = drafts[r]
            verdict = verdicts[i][len(feed) - m - len(d) - 1:len(feed)]  # after the last real token on
            n, token = accept_greedy(d, verdict)
            cache.lengths[i] = len(batch.seqs[r]) + n  # keep the accepted drafts, forget rejected ones and the masks
            finished.append(batch.emit(r, d[:n] + [token], eos_id, len(d), n))
            drafts[r] = next_drafts(verdict, len(d), n)
        batch.drop(finished)
    return batch.outs


@torch.no_grad()
def generate_mtp_speculative_batch(target, student, prompts, max_new_tokens, eos_id, mask_ids, k):
    """decode.generate_mtp_speculative over a batch: one student pass drafts every row's k tokens,
    one teacher pass verifies them."""
    check_k(k, target, mask_ids=mask_ids)
    batch = Batch(prompts, [target, student], max_new_tokens)
    t_cache, s_cache = batch.caches
    while batch.running:
        g = [min(k, batch.room(r)) for r in batch.running]
        drafts = [[] for _ in batch.running]
        if max(g) > 0:  # a row with nothing to draft (its last step) feeds nothing: padding only
            feeds = [batch.seqs[r][length:] + mask_ids[:gi - 1] if gi > 0 else []
                     for r, length, gi in zip(batch.running, s_cache.lengths, g)]
            proposed = s_cache.forward(feeds).argmax(-1).tolist()                           # (B, W)
            for i, r in enumerate(batch.running):
                if g[i] > 0:
                    drafts[i] = proposed[i][len(feeds[i]) - g[i]:len(feeds[i])]
                    batch.outs[r].n_draft_forward += 1
                    s_cache.lengths[i] = len(batch.seqs[r])  # the masks are stale
        batch.drop(verify(batch, t_cache, drafts, eos_id))
    return batch.outs


@torch.no_grad()
def generate_tree_mtp_speculative_batch(target, student, prompts, max_new_tokens, eos_id, mask_ids, k, budget,
                                        max_children=None):
    """tree.generate_tree_mtp_speculative over a batch: one student pass gives every row's masks,
    each row grows its own tree, one teacher pass verifies every row's tree."""
    check_k(k, target, mask_ids=mask_ids)
    batch = Batch(prompts, [target, student], max_new_tokens, scratch=(budget, 0))
    t_cache, s_cache = batch.caches
    while batch.running:
        g = [min(k, batch.room(r)) for r in batch.running]
        trees = [([], [], []) for _ in batch.running]  # (tokens, parents, scores) by row
        if max(g) > 0:
            feeds = [batch.seqs[r][length:] + mask_ids[:gi - 1] if gi > 0 else []
                     for r, length, gi in zip(batch.running, s_cache.lengths, g)]
            probs = torch.softmax(s_cache.forward(feeds).float(), -1)                      # (B, W, n_vocab)
            for i, r in enumerate(batch.running):
                if g[i] > 0:
                    trees[i] = draft_tree(probs[i, len(feeds[i]) - g[i]:len(feeds[i])], budget, max_children)
                    batch.outs[r].n_draft_forward += 1
                    s_cache.lengths[i] = len(batch.seqs[r])  # the masks are stale
        feeds = [batch.seqs[r][length:] + tokens for r, length, (tokens, _, _) in zip(batch.running, t_cache.lengths,
                                                                                       trees)]
        verdict = t_cache.forward(feeds, trees=[parents for _, parents, _ in trees]).argmax(-1).tolist()  # (B, W)
        finished = []
        for i, (r, feed, (tokens, parents, _)) in enumerate(zip(batch.running, feeds, trees)):
            batch.outs[r].n_forward += 1
            path, token = accept_tree(verdict[i][len(feed) - len(tokens) - 1:len(feed)], tokens, parents)
            t_cache.keep_path(i, [len(batch.seqs[r]) + p for p in path], len(batch.seqs[r]))
            chunk, counts = emitted(tokens, parents, path, token)
            finished.append(batch.emit(r, chunk, eos_id, **counts))
        batch.drop(finished)
    return batch.outs


@torch.no_grad()
def generate_tree_self_speculative_batch(model, prompts, max_new_tokens, eos_id, mask_ids, k, budget,
                                         max_children=None, extra_ends=4):
    """tree.generate_tree_self_speculative over a batch: each row feeds its new tokens, the tree
    grown from its last pass's masks and the masks hung after some of its nodes (tree.self_tree_feed)."""
    check_k(k, model, mask_ids=mask_ids)
    extra_ends = min(extra_ends, budget)
    batch = Batch(prompts, [model], max_new_tokens, scratch=(budget + (1 + extra_ends) * (k - 1),))
    cache = batch.caches[0]
    probs = {r: None for r in batch.running}  # by prompt: the masks' distributions of its last pass
    while batch.running:
        plans = [self_tree_feed(probs[r], batch.room(r), budget, max_children, extra_ends, mask_ids, k)
                 for r in batch.running]  # (tokens, parents, scores, fed, fed_parents, groups) by row
        feeds = [batch.seqs[r][length:] + plan[3] for r, length, plan in zip(batch.running, cache.lengths, plans)]
        logits = cache.forward(feeds, trees=[plan[4] for plan in plans])                   # (B, W, n_vocab)
        finished = []
        for i, (r, feed, (tokens, parents, _, fed, _, groups)) in enumerate(zip(batch.running, feeds, plans)):
            batch.outs[r].n_forward += 1
            row = logits[i, len(feed) - len(fed) - 1:len(feed)]  # after the last real token on: (1 + len(fed), n_vocab)
            path, token = accept_tree(row[:1 + len(tokens)].argmax(-1).tolist(), tokens, parents)
            cache.keep_path(i, [len(batch.seqs[r]) + p for p in path], len(batch.seqs[r]))
            probs[r] = masks_after(path, groups, row)
            chunk, counts = emitted(tokens, parents, path, token)
            finished.append(batch.emit(r, chunk, eos_id, **counts))
        batch.drop(finished)
    return batch.outs
