"""
The decoding strategies of decode.py over a batch of prompts at once: what a server does, and
where the accelerations stop paying (bench_batch.py). Read decode.py first: each function here
is its batch-1 namesake, step for step, with a loop over the rows where that one has a single
sequence, and every row's tokens are the batch-1 function's (tests/test_batched.py). Greedy
decoding only.

What batching changes:
- Rows stand at different points: their prompts differ in length, and a pass advances each row
  by its own number of tokens (ConfAdapt's run, a speculative step's accepted drafts). So the
  cache keeps a length per row (`RowCache.lengths`), and each row's tokens are fed at its own
  positions: `model.forward` takes positions of shape (B, T).
- A pass feeds every row's new tokens (and masks or drafts) padded on the right to the widest
  row. The padding costs a full position each; no real token sees it (it stands after the
  row's tokens), and later passes write over the cache slots it wrote.
- A row that has finished leaves the batch: its cache row is dropped (`RowCache.keep`, one copy
  of the cache), so it costs nothing in the passes that follow.

Each function returns a Generation per prompt (in the prompts' order) and the RowCache of each
model it ran, the deciding model's first: their counts of positions are what bench_batch.py reports.
"""
import torch

from common import UserError
from decode import Generation, check_k, check_masks, check_prompt
from model import KVCache


class RowCache:
    """A KV cache for a batch whose rows stand at different points. Row i of the cache holds the
    first lengths[i] tokens of its sequence; lowering lengths[i] forgets the slots after them
    (masks, rejected drafts), as KVCache.truncate does for one sequence. Counts the positions
    its passes computed: the rows' own tokens (`fed`), the padding of the first pass (`prompt_padded`:
    the prompts padded to the longest) and of the later ones (`padded`)."""

    def __init__(self, model, batch_size):
        self.model = model
        self.cache = KVCache(model.config, batch_size, model.lm_head.weight.device, model.lm_head.weight.dtype)
        self.lengths = [0] * batch_size
        self.fed = self.prompt_padded = self.padded = 0
        self.passes = []  # (rows, width, n_keys) of every pass: what bench_batch.py's cost model reads

    def forward(self, feeds, n_bidirectional=None):
        """One pass of the model over every row: row i feeds the tokens feeds[i] (possibly none) at
        the positions after its first lengths[i]. Returns the logits (B, W, vocab_size), W the widest
        feed: row i's j-th token's prediction is logits[i, j]. `n_bidirectional`: per row, how many
        of its last tokens see each other both ways (the masks of a --bidirectional student)."""
        B, W = len(feeds), max(len(f) for f in feeds)
        device, block_size = self.cache.k.device, self.model.config.block_size
        idx = torch.tensor([f + [0] * (W - len(f)) for f in feeds], device=device)            # (B, W)
        # No real token is ever fed at the context's last slot: a row stops once its sequence fills
        # the context, and the token that fills it is emitted, never fed. So padding that would run
        # past the context can be parked there without overwriting a real token's keys/values.
        pos = torch.tensor(self.lengths, device=device)[:, None] + torch.arange(W, device=device)  # (B, W)
        pos = pos.clamp(max=block_size - 1)
        n_keys = max(length + len(f) for length, f in zip(self.lengths, feeds))              # the last real slot + 1
        assert n_keys < block_size, "a real token in the context's last slot, where the padding may stand"
        attn_mask = torch.arange(n_keys, device=device) <= pos[:, :, None]                  # (B, W, n_keys)
        for i, n in enumerate(n_bidirectional or []):
            if n > 1:  # the row's last n tokens see each other whole
                end = self.lengths[i] + len(feeds[i])
                attn_mask[i, len(feeds[i]) - n:len(feeds[i]), end - n:end] = True
        logits, _ = self.model(idx, pos=pos, attn_mask=attn_mask, cache=self.cache)
        self.lengths = [length + len(f) for length, f in zip(self.lengths, feeds)]
        self.fed += sum(len(f) for f in feeds)
        if self.passes:
            self.padded += sum(W - len(f) for f in feeds)
        else:
            self.prompt_padded = sum(W - len(f) for f in feeds)
        self.passes.append((B, W, n_keys))
        return logits

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

    def __init__(self, prompts, models):
        for p in prompts:
            check_prompt(p, models[0])
        self.block_size = models[0].config.block_size
        self.seqs = [list(p) for p in prompts]
        self.outs = [Generation(tokens=[]) for _ in prompts]
        self.running = list(range(len(prompts)))
        self.caches = [RowCache(m, len(prompts)) for m in models]

    def step(self, r, chunk, eos_id, max_new_tokens, drafted=None, accepted=None):
        """Prompt r's pass emitted `chunk` (cut at EOS and max_new_tokens by Generation.emit), which
        then joins its sequence. True when the row is done: EOS, max_new_tokens or a full context."""
        out = self.outs[r]
        out.n_forward += 1
        if out.emit(chunk, eos_id, max_new_tokens, drafted, accepted):
            return True
        self.seqs[r] += chunk
        return len(self.seqs[r]) >= self.block_size

    def drop(self, finished):
        """finished[i]: whether the i-th running row is done."""
        keep = [i for i, done in enumerate(finished) if not done]
        self.running = [self.running[i] for i in keep]
        for c in self.caches:
            c.keep(keep)


def leading_run(drafts, target):
    """How many leading drafts equal the target's greedy tokens (decode.accept_drafts, greedy)."""
    n = 0
    while n < len(drafts) and drafts[n] == target[n]:
        n += 1
    return n


@torch.no_grad()
def generate_ntp_batch(model, prompts, max_new_tokens, eos_id, n_vocab):
    """decode.generate_ntp, greedy, over a batch. Returns a Generation per prompt and the RowCache
    (its counts of positions)."""
    batch = Batch(prompts, [model])
    cache = batch.caches[0]
    while batch.running:
        feeds = [batch.seqs[r][length:] for r, length in zip(batch.running, cache.lengths)]
        logits = cache.forward(feeds)                                                        # (B, W, V)
        last = torch.tensor([len(f) - 1 for f in feeds])                                     # (B,)
        tokens = logits[torch.arange(len(feeds)), last, :n_vocab].argmax(-1).tolist()       # (B,)
        batch.drop([batch.step(r, [token], eos_id, max_new_tokens) for r, token in zip(batch.running, tokens)])
    return batch.outs, cache


@torch.no_grad()
def generate_mtp_batch(model, prompts, max_new_tokens, eos_id, n_vocab, mask_ids, k, tau=None, bidirectional=False):
    """decode.generate_mtp over a batch: static k (tau=None) or ConfAdapt(tau). Each row feeds its
    new tokens and k-1 masks and emits its own number of tokens."""
    check_k(k, model)
    check_masks(mask_ids, k)
    if tau is not None and not 0 < tau <= 1:
        raise UserError(f"tau must be in (0, 1], got {tau}")
    batch = Batch(prompts, [model])
    cache = batch.caches[0]
    while batch.running:
        n_masks = [min(k, batch.block_size - len(batch.seqs[r])) - 1 for r in batch.running]
        feeds = [batch.seqs[r][length:] + mask_ids[:m] for r, length, m in zip(batch.running, cache.lengths, n_masks)]
        logits = cache.forward(feeds, n_masks if bidirectional else None)                   # (B, W, V)
        probability, tokens = torch.softmax(logits[..., :n_vocab].float(), dim=-1).max(dim=-1)  # (B, W)
        sure = (probability >= tau).tolist() if tau is not None else None                   # (B, W)
        tokens = tokens.tolist()
        finished = []
        for i, (r, feed, m) in enumerate(zip(batch.running, feeds, n_masks)):
            cache.lengths[i] = len(batch.seqs[r])  # forget the masks' keys/values
            read = slice(len(feed) - m - 1, len(feed))  # the last real token and the masks
            n_emit = m + 1
            if tau is not None:  # ConfAdapt: stop before the first position below tau, emit at least one
                n_emit = max(1, next((j for j, ok in enumerate(sure[i][read]) if not ok), n_emit))
            finished.append(batch.step(r, tokens[i][read][:n_emit], eos_id, max_new_tokens))
        batch.drop(finished)
    return batch.outs, cache


@torch.no_grad()
def generate_speculative_batch(target, draft, prompts, max_new_tokens, eos_id, n_vocab, gamma):
    """decode.generate_speculative, greedy, over a batch: gamma passes of the draft model, each
    over every row that still drafts, then one pass of the target verifies every row's drafts."""
    check_k(gamma, target, "gamma")
    if draft.config.block_size < target.config.block_size:
        raise UserError("the draft model's context is shorter than the target's: train it with the same block_size")
    batch = Batch(prompts, [target, draft])
    t_cache, d_cache = batch.caches
    while batch.running:
        g = [min(gamma, batch.block_size - len(batch.seqs[r]) - 1, max_new_tokens - len(batch.outs[r].tokens) - 1)
             for r in batch.running]
        drafts = [[] for _ in batch.running]
        for j in range(max(g)):  # a row that drafts fewer than max(g) feeds nothing: padding only
            # What the draft's cache lacks: on the first pass the prompt, or the target's token of the
            # last step (after a full acceptance also the last draft, never fed); then the newest draft.
            feeds = [(batch.seqs[r] + d)[length:] if j < gi else []
                     for r, length, d, gi in zip(batch.running, d_cache.lengths, drafts, g)]
            logits = d_cache.forward(feeds)                                                  # (B, W, V)
            last = torch.tensor([max(0, len(f) - 1) for f in feeds])                         # (B,)
            proposed = logits[torch.arange(len(feeds)), last, :n_vocab].argmax(-1).tolist()  # (B,)
            for i, r in enumerate(batch.running):
                if j < g[i]:
                    drafts[i].append(proposed[i])
                    batch.outs[r].n_draft_forward += 1
        feeds = [batch.seqs[r][length:] + d for r, length, d in zip(batch.running, t_cache.lengths, drafts)]
        verdict = t_cache.forward(feeds)[..., :n_vocab].argmax(-1).tolist()                 # (B, W)
        finished = []
        for i, (r, feed, d) in enumerate(zip(batch.running, feeds, drafts)):
            target_tokens = verdict[i][len(feed) - len(d) - 1:len(feed)]  # after the last real token, then each draft
            n = leading_run(d, target_tokens)
            t_cache.lengths[i] = len(batch.seqs[r]) + n  # roll back the rejected drafts
            d_cache.lengths[i] = min(d_cache.lengths[i], len(batch.seqs[r]) + n)
            finished.append(batch.step(r, d[:n] + [target_tokens[n]], eos_id, max_new_tokens, len(d), n))
        batch.drop(finished)
    return batch.outs, t_cache, d_cache


@torch.no_grad()
def generate_self_speculative_batch(model, prompts, max_new_tokens, eos_id, n_vocab, mask_ids, k):
    """decode.generate_self_speculative over a batch: each row feeds its new tokens, the drafts
    its masks made last pass and k-1 fresh masks."""
    check_k(k, model)
    check_masks(mask_ids, k)
    batch = Batch(prompts, [model])
    cache = batch.caches[0]
    drafts = {r: [] for r in batch.running}  # by prompt: the drafts its masks made last pass
    while batch.running:
        feeds, n_masks = [], []
        for r, length in zip(batch.running, cache.lengths):
            seq = batch.seqs[r]
            room = min(batch.block_size - len(seq), max_new_tokens - len(batch.outs[r].tokens)) - 1  # drafts + masks
            drafts[r] = drafts[r][:room]
            n_masks.append(min(k - 1, room - len(drafts[r])))
            feeds.append(seq[length:] + drafts[r] + mask_ids[:n_masks[-1]])
        verdict = cache.forward(feeds)[..., :n_vocab].argmax(-1).tolist()                   # (B, W)
        finished = []
        for i, (r, feed, m) in enumerate(zip(batch.running, feeds, n_masks)):
            d = drafts[r]
            first = len(feed) - m - len(d) - 1  # the last real token's place in the feed
            n = leading_run(d, verdict[i][first:])
            cache.lengths[i] = len(batch.seqs[r]) + n  # keep the accepted drafts, forget rejected ones and the masks
            finished.append(batch.step(r, d[:n] + [verdict[i][first + n]], eos_id, max_new_tokens, len(d), n))
            # The masks' drafts follow the last draft: they stand only if every draft stood.
            drafts[r] = verdict[i][first + len(d) + 1:len(feed)] if n == len(d) else []
        batch.drop(finished)
    return batch.outs, cache


@torch.no_grad()
def generate_mtp_speculative_batch(target, student, prompts, max_new_tokens, eos_id, n_vocab, mask_ids, k):
    """decode.generate_mtp_speculative over a batch: one student pass drafts every row's k tokens,
    one teacher pass verifies them."""
    check_k(k, target)
    check_masks(mask_ids, k)
    batch = Batch(prompts, [target, student])
    t_cache, s_cache = batch.caches
    while batch.running:
        g = [min(k, batch.block_size - len(batch.seqs[r]) - 1, max_new_tokens - len(batch.outs[r].tokens) - 1)
             for r in batch.running]
        drafts = [[] for _ in batch.running]
        if max(g) > 0:  # a row with nothing to draft (its last step) feeds nothing: padding only
            feeds = [batch.seqs[r][length:] + mask_ids[:gi - 1] if gi > 0 else []
                     for r, length, gi in zip(batch.running, s_cache.lengths, g)]
            proposed = s_cache.forward(feeds)[..., :n_vocab].argmax(-1).tolist()            # (B, W)
            for i, r in enumerate(batch.running):
                if g[i] > 0:
                    drafts[i] = proposed[i][len(feeds[i]) - g[i]:len(feeds[i])]
                    batch.outs[r].n_draft_forward += 1
                    s_cache.lengths[i] = len(batch.seqs[r])  # the masks are stale
        feeds = [batch.seqs[r][length:] + d for r, length, d in zip(batch.running, t_cache.lengths, drafts)]
        verdict = t_cache.forward(feeds)[..., :n_vocab].argmax(-1).tolist()                 # (B, W)
        finished = []
        for i, (r, feed, d) in enumerate(zip(batch.running, feeds, drafts)):
            target_tokens = verdict[i][len(feed) - len(d) - 1:len(feed)]
            n = leading_run(d, target_tokens)
            t_cache.lengths[i] = len(batch.seqs[r]) + n
            finished.append(batch.step(r, d[:n] + [target_tokens[n]], eos_id, max_new_tokens, len(d), n))
        batch.drop(finished)
    return batch.outs, t_cache, s_cache
