"""
Decoding strategies, one function each, all returning a `Generation` with the same stats.

    python decode.py --ckpt out/teacher.pt --prompt "Mia has 12 apples and buys 30 more. How many apples does she have?"
    python decode.py --ckpt out/teacher.pt --temperature 0.8 --top_k 20 --prompt "..."
    python decode.py --ckpt out/student.pt --tau 0.9 --show-chunks --prompt "..."   # ConfAdapt
    python decode.py --ckpt out/student.pt --tau 0.9 --temperature 1 --show-chunks --prompt "..."  # ... sampled
    python decode.py --ckpt out/student.pt --static --k 3 --prompt "..."            # static k
    python decode.py --draft out/draft.pt --gamma 4 --show-chunks --prompt "..."    # speculative
    python decode.py --ckpt out/student.pt --self-speculative --k 4 --prompt "..."  # self-speculative
    python decode.py --draft out/student.pt --k 4 --show-chunks --prompt "..."      # MTP-drafted speculative
    python decode.py --draft out/student.pt --tree 16 --show-tree --prompt "..."   # ... verifying a tree (tree.py)

Next-token prediction (NTP) pays one forward pass per token. The student emits several tokens
per pass with its <MTP> masks (static k, ConfAdapt); speculative decoding lets a cheaper
proposer draft tokens that the model deciding the output verifies in one pass (lossless).
Every strategy samples above --temperature 0: the speculative ones stay lossless in
distribution (rejection sampling); static k and ConfAdapt sample each position on its own.
Every strategy feeds its model through `forward_new`, which keeps the KV cache holding a
prefix of the accepted tokens, so throwing away masks or rejected drafts is a `cache.truncate`.
What a strategy decides (how many tokens a pass may feed, how many ConfAdapt emits, which
drafts stand) is one function each, below the strategies; batched.py calls the same ones.

The models' logits cover the tokenizer's ids only: `common.load_for_decoding` cuts off the
vocabulary's padding and the student's <MTP> masks (`common.emit_only`), so no strategy can
emit them. `--compile` runs the same strategies on compiled models (compiled.py).
"""
import argparse
import math
import sys
import time
from dataclasses import dataclass, field
from functools import partial

import torch

from common import (HelpFormatter, UserError, check_flags, check_same_tokenizer, load_for_decoding, pick_device,
                    student_k, student_mask_ids)
from data.problems import format_prompt
from data.tokenizer import EOT
from compiled import CompiledDecoder
from model import KVCache


@dataclass
class Generation:
    tokens: list                                  # new tokens (prompt excluded), ending at EOS if one came
    n_forward: int = 0                            # passes of the model whose output this is
    n_draft_forward: int = 0                      # passes of a model that only proposes drafts
    chunks: list = field(default_factory=list)    # tokens emitted by each step
    drafted: list = field(default_factory=list)   # speculative strategies: drafts proposed at each step
    accepted: list = field(default_factory=list)  # ... and how many of them (a leading run) were accepted

    @property
    def tokens_per_forward(self):
        """The paper's acceleration factor: tokens per pass of the model whose output this is."""
        return len(self.tokens) / max(1, self.n_forward)

    def emit(self, chunk, eos_id, max_new_tokens, drafted=None, accepted=None):
        """Append one step's tokens, cut at EOS and at max_new_tokens. True when the generation is over."""
        chunk = chunk[:max_new_tokens - len(self.tokens)]
        if eos_id in chunk:
            chunk = chunk[:chunk.index(eos_id) + 1]
        self.tokens += chunk
        self.chunks.append(len(chunk))
        if drafted is not None:
            self.drafted.append(drafted)
            self.accepted.append(accepted)
        return chunk[-1] == eos_id or len(self.tokens) >= max_new_tokens


@torch.no_grad()
def generate_ntp(model, prompt_ids, max_new_tokens, eos_id, temperature=0.0, top_k=None, use_cache=True,
                 generator=None):
    """Next-token prediction: one token per forward pass, until EOS, max_new_tokens or a full context.
    With the cache each pass feeds only the newest token; without it every pass re-reads the
    whole sequence: the same tokens, much more work."""
    check_prompt(prompt_ids, model)
    cache = new_cache(model) if use_cache else None
    out, seq = Generation(tokens=[]), list(prompt_ids)
    while len(seq) < model.config.block_size:
        if use_cache:
            logits = forward_new(model, cache, seq)[-1:]                                       # (1, n_vocab)
        else:
            logits = model(torch.tensor([seq], device=model.lm_head.weight.device))[0][0, -1:]
        out.n_forward += 1
        token, _ = draw(logits, temperature, top_k, generator)  # [token]
        if out.emit(token, eos_id, max_new_tokens):
            break
        seq += token
    return out


@torch.no_grad()
def generate_mtp(model, prompt_ids, max_new_tokens, eos_id, mask_ids, k, tau=None, bidirectional=False,
                 temperature=0.0, top_k=None, generator=None, pick=None):
    """Multi-token prediction with the student's <MTP> masks (paper Sec. 3.4 and 4.5-4.6).

    Every forward pass feeds the newly accepted tokens plus k-1 masks (mask_ids[:k-1]: the
    student's masks by block offset, one <MTP> id repeated for the paper's student) and reads
    k predictions from the last k positions (the last real token predicts token 1, mask j
    predicts token j+1): greedy, or above temperature 0 each position sampled from its own
    distribution (pick_block). Static k (tau=None) emits all k. ConfAdapt(tau) emits the
    longest leading run whose confidence, the probability the student gives its token, is
    >= tau, and always at least one token (confadapt_emits). (`pick` replaces pick_block: the
    experiments of gates.py.)
    Sampled, a block is not a sample of the student's joint distribution: each position is
    drawn from its own marginal, blind to what the positions before it drew (Sec. 3, the
    "panda meat" example). No verification corrects that; ConfAdapt's gate only limits it.
    The masks' cache entries are stale once their tokens are known, so the cache is cut back
    to the last real token; the accepted tokens are fed as real tokens on the next pass.
    `bidirectional`: the student was distilled with masks that see each other both ways."""
    check_prompt(prompt_ids, model)
    check_k(k, model, mask_ids=mask_ids, tau=tau)
    cache = new_cache(model)
    out, seq = Generation(tokens=[]), list(prompt_ids)
    while len(seq) < model.config.block_size:
        # The emitted tokens stay inside the context; masks past max_new_tokens are read, and emit cuts them.
        n_masks = min(k - 1, room(len(seq), model.config.block_size))
        logits = forward_new(model, cache, seq, mask_ids[:n_masks], bidirectional)  # (n_masks + 1, n_vocab)
        out.n_forward += 1
        cache.truncate(len(seq))  # forget the masks' keys/values
        tokens, sure = (pick or pick_block)(logits.float(), temperature, top_k, generator)  # (n_masks + 1,) each
        chunk = tokens[:confadapt_emits(sure, tau)].tolist()
        if out.emit(chunk, eos_id, max_new_tokens):
            break
        seq += chunk
    return out


@torch.no_grad()
def generate_speculative(target, draft, prompt_ids, max_new_tokens, eos_id, gamma, temperature=0.0, top_k=None,
                         generator=None):
    """Speculative decoding (Leviathan et al. 2023): the small draft model proposes gamma tokens
    one pass each, the target verifies all of them in one pass. Lossless: at temperature 0 the
    output is the target's greedy output (accept_greedy), above it the target's distribution
    (accept_sampled). Both caches hold a prefix of the accepted sequence; rejected drafts are cut off."""
    check_prompt(prompt_ids, target)
    check_k(gamma, target, "gamma")
    check_draft(target, draft)
    t_cache, d_cache = new_caches(target, draft)
    out, seq = Generation(tokens=[]), list(prompt_ids)
    while len(seq) < target.config.block_size:
        g = min(gamma, room(len(seq), target.config.block_size, max_new_tokens - len(out.tokens)))
        drafts, draft_probs = [], []
        for _ in range(g):  # the draft feeds its last draft and, after a full acceptance, the token after it
            logits = forward_new(draft, d_cache, seq + drafts)[-1:]  # (1, n_vocab)
            out.n_draft_forward += 1
            token, q = draw(logits, temperature, top_k, generator)
            drafts, draft_probs = drafts + token, draft_probs + q
        logits = forward_new(target, t_cache, seq, drafts)  # (g + 1, n_vocab)
        out.n_forward += 1
        n, token = accept(logits, drafts, draft_probs, temperature, top_k, generator)
        t_cache.truncate(len(seq) + n)                       # roll back the rejected drafts
        d_cache.truncate(min(d_cache.length, len(seq) + n))
        chunk = drafts[:n] + [token]
        if out.emit(chunk, eos_id, max_new_tokens, drafted=g, accepted=n):
            break
        seq += chunk
    return out


@torch.no_grad()
def generate_self_speculative(model, prompt_ids, max_new_tokens, eos_id, mask_ids, k, temperature=0.0, top_k=None,
                              generator=None):
    """Self-speculative MTP (blockwise parallel decoding, Stern et al. 2018; one of the paper's
    directions for future research, Sec. 6). One pass of the student feeds: the new real tokens,
    the drafts its masks made last pass, and k-1 fresh masks. Its next-token predictions at the
    real and draft positions verify the drafts (accept); if all stand, the masks, which sit
    after the last draft, are the next drafts (next_drafts). Lossless: the output is the
    student's own k=1 output, greedy or, above temperature 0, in distribution (a draft is drawn
    from its mask's distribution and stands by rejection sampling)."""
    check_prompt(prompt_ids, model)
    check_k(k, model, mask_ids=mask_ids)
    cache = new_cache(model)
    out, seq, drafts, draft_probs = Generation(tokens=[]), list(prompt_ids), [], []
    while len(seq) < model.config.block_size:
        space = room(len(seq), model.config.block_size, max_new_tokens - len(out.tokens))  # drafts + masks
        drafts, draft_probs = drafts[:space], draft_probs[:space]
        n_masks = min(k - 1, space - len(drafts))
        logits = forward_new(model, cache, seq, drafts + mask_ids[:n_masks])  # (len(drafts) + n_masks + 1, n_vocab)
        out.n_forward += 1
        # After the last real token and each draft: the verdict; after each mask: the next drafts.
        n, token = accept(logits[:len(drafts) + 1], drafts, draft_probs, temperature, top_k, generator)
        cache.truncate(len(seq) + n)  # keep the accepted drafts, forget rejected ones and the masks
        chunk = drafts[:n] + [token]
        done = out.emit(chunk, eos_id, max_new_tokens, drafted=len(drafts), accepted=n)
        drafts, draft_probs = draw(next_drafts(logits, len(drafts), n), temperature, top_k, generator)
        if done:
            break
        seq += chunk
    return out


@torch.no_grad()
def generate_mtp_speculative(target, student, prompt_ids, max_new_tokens, eos_id, mask_ids, k, temperature=0.0,
                             top_k=None, generator=None):
    """MTP-drafted speculative decoding: the student drafts k tokens in ONE pass (its last real
    token and k-1 masks), the teacher verifies them in one pass. Lossless: the output is the
    teacher's greedy output, or above temperature 0 follows the teacher's distribution (each
    draft drawn from its position's distribution, verified by rejection sampling); the student
    only decides how many passes it takes."""
    check_prompt(prompt_ids, target)
    check_k(k, target, mask_ids=mask_ids)
    t_cache, s_cache = new_caches(target, student)
    out, seq = Generation(tokens=[]), list(prompt_ids)
    while len(seq) < target.config.block_size:
        g = min(k, room(len(seq), target.config.block_size, max_new_tokens - len(out.tokens)))
        drafts, draft_probs = [], []
        if g > 0:  # the student feeds <= k + 1 new tokens and k-1 masks
            s_logits = forward_new(student, s_cache, seq, mask_ids[:g - 1])  # (g, n_vocab)
            out.n_draft_forward += 1
            s_cache.truncate(len(seq))  # the masks are stale
            drafts, draft_probs = draw(s_logits, temperature, top_k, generator)
        logits = forward_new(target, t_cache, seq, drafts)  # (g + 1, n_vocab)
        out.n_forward += 1
        n, token = accept(logits, drafts, draft_probs, temperature, top_k, generator)
        t_cache.truncate(len(seq) + n)
        chunk = drafts[:n] + [token]
        if out.emit(chunk, eos_id, max_new_tokens, drafted=g, accepted=n):
            break
        seq += chunk
    return out


# --------------------------------------------------------------------------------------
# The decisions a strategy takes after a pass, the same for one sequence (here) and for each
# row of a batch (batched.py calls these).

def confadapt_emits(confidence, tau):
    """How many of a pass's predictions to emit, given their confidences (n,). ConfAdapt(tau)
    (Sec. 4.6): the leading run whose confidence is >= tau, and always at least one token, so
    every pass makes progress. tau=None: static k, all of them."""
    if tau is None:
        return len(confidence)
    below = (confidence < tau).nonzero()
    return max(1, int(below[0]) if len(below) else len(confidence))


def pick_block(scores, temperature=0.0, top_k=None, generator=None):
    """The tokens of a student's pass and ConfAdapt's confidence in each, from its scores
    (..., n_vocab). Greedy: the argmax and its probability (the paper's gate). Sampled (scores
    (n, n_vocab)): each position drawn from its own tempered distribution, and the confidence
    the probability the student's own softmax (temperature 1, every token) gives the token
    drawn: as temperature goes to 0 it becomes the greedy gate, and a token the model thinks
    unlikely stops the run however the sampler sharpened or cut its distribution, the point
    where the masks after it, which predicted as if the likely token came, stop being trusted.
    (gates.largest_confidence gates on the largest tempered probability instead: docs/notebook.md.)"""
    if temperature == 0:
        probability, tokens = torch.softmax(scores, dim=-1).max(dim=-1)
        return tokens, probability
    tokens = torch.multinomial(token_probs(scores, temperature, top_k), 1, generator=generator)  # (n, 1)
    return tokens[:, 0], torch.softmax(scores, dim=-1).gather(-1, tokens)[:, 0]


def accept(logits, drafts, draft_probs, temperature, top_k, generator=None):
    """Which drafts stand, given the verifier's logits (len(drafts) + 1, n_vocab) after the last
    real token and after each draft: accept_greedy at temperature 0, accept_sampled above it."""
    if temperature == 0:
        return accept_greedy(drafts, logits.argmax(-1).tolist())
    return accept_sampled(logits, drafts, draft_probs, temperature, top_k, generator)


def accept_greedy(drafts, verdict):
    """Greedy verification. `verdict`: the verifier's greedy token after the last real token and
    after each draft (len(drafts) + 1). Returns (accepted, next_token): how many leading drafts
    equal the verifier's own choice, and its token after them (a correction, or a bonus token
    when all stood). The output is then the verifier's greedy output, token for token."""
    n = 0
    while n < len(drafts) and drafts[n] == verdict[n]:
        n += 1
    return n, verdict[n]


def accept_sampled(logits, drafts, draft_probs, temperature, top_k, generator=None):
    """Verification by rejection sampling (Leviathan et al. 2023, Alg. 1). logits: the verifier's
    (len(drafts) + 1, n_vocab), row j after the drafts before j; draft_probs: the distribution q
    each draft was drawn from. Draft d stands with probability min(1, p(d) / q(d)); at the first
    rejection the token is drawn from norm(max(0, p - q)). Every emitted token is then
    distributed exactly as p, whatever q was. Returns (accepted, next_token), as accept_greedy."""
    p = token_probs(logits, temperature, top_k)  # (len(drafts) + 1, n_vocab)
    for j, (d, q) in enumerate(zip(drafts, draft_probs)):
        if torch.rand((), device=p.device, generator=generator) * q[d] < p[j, d]:  # r < p(d) / q(d)
            continue
        residual = (p[j] - q).clamp(min=0)
        residual = residual if residual.sum() > 0 else p[j]  # p == q up to rounding: nothing to correct
        return j, int(torch.multinomial(residual / residual.sum(), 1, generator=generator))
    return len(drafts), int(torch.multinomial(p[-1], 1, generator=generator))


def next_drafts(verdict, n_drafts, accepted):
    """Self-speculative decoding: the masks' predictions (what a pass read after the drafts'
    places: tokens, or logits rows) follow the last draft, i.e. the verifier's token after it;
    they hold only if every draft stood. Otherwise the next pass drafts afresh (none)."""
    return verdict[n_drafts + 1:] if accepted == n_drafts else verdict[:0]


def room(seq_len, block_size, left=math.inf):
    """How many tokens a pass may feed after the last real token (drafts, masks). The context
    must hold what they could emit (one more than their number: a pass also emits the last real
    token's prediction), and with `left` tokens still to emit, none is fed beyond what can be."""
    return min(block_size - seq_len, left) - 1


def token_probs(logits, temperature, top_k):
    """The sampling distribution (..., n_vocab): softmax(logits / temperature) over the top_k tokens."""
    logits = logits.float() / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1)), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.softmax(logits, dim=-1)


def draw(logits, temperature, top_k, generator=None):
    """One token per row of (n, n_vocab) logits: the argmax at temperature 0, else a sample of
    token_probs. Returns (tokens, probs), two lists of n: probs[j] is the distribution token j
    was drawn from (None when greedy), which accept_sampled needs of a draft."""
    if temperature == 0:
        return logits.argmax(-1).tolist(), [None] * len(logits)
    probs = token_probs(logits, temperature, top_k)  # (n, n_vocab)
    return torch.multinomial(probs, 1, generator=generator)[:, 0].tolist(), list(probs)


# --------------------------------------------------------------------------------------
# The cache: every strategy feeds its models through forward_new.

def new_cache(model):
    """An empty KV cache for one generation, on the model's device and in its dtype; a compiled
    decoder's own, at fixed addresses (compiled.CompiledDecoder.new_cache)."""
    check_emits(model)
    if hasattr(model, "new_cache"):
        return model.new_cache()
    return KVCache(model.config, 1, model.lm_head.weight.device, model.lm_head.weight.dtype)


def new_caches(target, drafter):
    """A cache each for a target and its drafter, which must be two: a compiled decoder has one
    cache, and in both roles it would be handed out twice."""
    t_cache, d_cache = new_cache(target), new_cache(drafter)
    if t_cache is d_cache:
        raise ValueError("the target and the drafter are one compiled decoder, whose one KV cache cannot hold both "
                         "sequences: wrap the model in a CompiledDecoder for each role")
    return t_cache, d_cache


def forward_new(model, cache, seq, extra=(), bidirectional=False):
    """The one piece of KV-cache logic every strategy shares. The cache holds the keys/values
    of the first cache.length tokens of `seq` (accepted tokens); feed the rest of `seq`, then
    `extra` (drafts or <MTP> masks), at the positions that follow (the pass moves cache.length
    past them). Returns the logits of the last len(extra) + 1 tokens, (len(extra) + 1, n_vocab):
    row j predicts the token after seq + extra[:j]. Rolling back rejected drafts or stale masks
    is then `cache.truncate(...)`. The attention is causal, unless `bidirectional`: then the
    extra tokens also see each other both ways (the masks of a student distilled with
    --bidirectional, read as it was trained)."""
    start, tokens = cache.length, seq[cache.length:] + list(extra)
    n = len(tokens)
    device = cache.k.device
    idx = torch.tensor([tokens], device=device)               # (1, n)
    pos = torch.arange(start, start + n, device=device)       # (n,)
    attn_mask = None  # the model's default: each token sees the slots up to its own position
    if bidirectional and len(extra) > 1:
        attn_mask = torch.arange(start + n, device=device) <= pos[:, None]  # (n, start + n)
        see_each_other(attn_mask, len(extra), n, start + n)
    logits, _ = model(idx, pos=pos, attn_mask=attn_mask, cache=cache)
    return logits[0, n - len(extra) - 1:]


def see_each_other(attn_mask, n, fed, end):
    """Let the last n of the `fed` tokens of a pass, whose keys end at slot `end`, see each other
    both ways: the block of a --bidirectional student, as distillation showed it (model.mtp_layout).
    attn_mask (fed or more, end or more) bool, changed in place."""
    attn_mask[fed - n:fed, end - n:end] = True


# --------------------------------------------------------------------------------------
# Checks: a bad setting gets one sentence, before any pass.

def check_emits(model):
    """A model whose logits still cover the vocabulary's padding and the <MTP> masks could emit them."""
    if getattr(model, "n_vocab", None) is None:
        raise UserError("the model's logits cover the padded vocabulary, <MTP> masks included: load it with "
                        "common.load_for_decoding, or cut them with common.emit_only(model, n_vocab)")


def check_prompt(prompt_ids, model):
    check_emits(model)
    if len(prompt_ids) == 0:
        raise UserError("the prompt is empty: give some text to continue")
    if len(prompt_ids) >= model.config.block_size:
        raise UserError(f"the prompt is {len(prompt_ids)} tokens but the model's context holds "
                        f"{model.config.block_size}: shorten the prompt")


def check_k(k, model, name="k", mask_ids=None, tau=None):
    """k (or gamma) positions per pass; with mask_ids, the k-1 masks they read; ConfAdapt's tau."""
    if k < 1:
        raise UserError(f"{name} must be >= 1, got {k}")
    if k >= model.config.block_size:
        raise UserError(f"{name}={k} does not fit the model's context of {model.config.block_size} tokens")
    if mask_ids is not None and len(mask_ids) < k - 1:
        raise UserError(f"k={k} reads k-1 masks, but {len(mask_ids)} mask ids were given")
    if tau is not None and not 0 < tau <= 1:
        raise UserError(f"tau must be in (0, 1], got {tau}")


def check_draft(target, draft):
    if draft.config.block_size < target.config.block_size:
        raise UserError("the draft model's context is shorter than the target's: train it with the same block_size")


# --------------------------------------------------------------------------------------
# The command line.

def show_chunks(enc, out, eos_id):
    """Each step's tokens in brackets, then how many. Speculative steps show the accepted
    drafts, a '|', then the verifying model's own token: [drafts|token]n."""
    pieces, start = [], 0
    for step, size in enumerate(out.chunks):
        chunk = [t for t in out.tokens[start:start + size] if t != eos_id]
        if out.drafted:
            n = min(out.accepted[step], len(chunk))
            pieces.append(f"[{enc.decode(chunk[:n])}|{enc.decode(chunk[n:])}]{size}")
        else:
            pieces.append(f"[{enc.decode(chunk)}]{size}")
        start += size
    return "".join(pieces)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--ckpt", default="out/teacher.pt", help="checkpoint to decode with")
    p.add_argument("--prompt", required=True, default=argparse.SUPPRESS,
                   help="a question (wrapped as 'Question: ...\\nAnswer:')")
    p.add_argument("--raw", action="store_true", help="feed --prompt as it is, without the question wrapper")
    p.add_argument("--max_new_tokens", type=int, default=256, help="at most this many tokens (the context ends "
                   "generation too)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top_k", type=int, default=None, help="sample among the k most likely tokens (None: all)")
    p.add_argument("--no_cache", action="store_true", help="recompute the whole sequence every step")
    p.add_argument("--k", type=int, default=None, help="student: positions read per pass (None: its k_max)")
    p.add_argument("--tau", type=float, default=0.9, help="student: ConfAdapt confidence threshold in (0, 1]")
    p.add_argument("--gate", choices=["token", "run"], default="token",
                   help="student: ConfAdapt asks tau of each token's confidence (the paper), or of the product of "
                   "the confidences up to it")
    p.add_argument("--calibrated", action="store_true",
                   help="student: ConfAdapt reads each position's confidence at the temperature fitted for it after "
                   "distillation, so that tau means the same at every position")
    p.add_argument("--static", action="store_true", help="student: emit all k tokens of every pass")
    p.add_argument("--self-speculative", action="store_true",
                   help="student: draft with the masks, verify the drafts on the next pass (lossless)")
    p.add_argument("--draft", default=None, help="teacher: speculative decoding with this draft checkpoint "
                   "(a draft model; or a student, which drafts --k tokens in one pass; None: no draft, --ckpt "
                   "decodes alone)")
    p.add_argument("--gamma", type=int, default=4, help="speculative: tokens the draft model proposes per step")
    p.add_argument("--tree", type=int, default=None, metavar="NODES",
                   help="self-speculative and MTP-drafted: verify a tree of this many guesses per pass, grown from "
                   "the masks' likeliest tokens (tree.py; greedy; None: a chain of one guess per mask)")
    p.add_argument("--show-chunks", action="store_true", help="mark the tokens of each step")
    p.add_argument("--show-tree", action="store_true", help="with --tree: print the first pass's tree, the accepted "
                   "path marked")
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps")
    p.add_argument("--compile", action="store_true", help="fixed-shape passes through torch.compile, as CUDA graphs "
                   "on a GPU (compiled.py): the same tokens up to rounding, the first passes waiting for the compiler "
                   "(docs/results.md)")
    p.add_argument("--seed", type=int, default=1337, help="seeds sampling (temperature > 0)")
    args = p.parse_args()
    check_flags(args, positive=("max_new_tokens",), non_negative=("temperature",))
    if args.calibrated and args.gate == "run":
        raise UserError("--calibrated and --gate run are two different gates: give one of them")
    if args.top_k is not None and args.top_k < 1:
        raise UserError(f"--top_k must be >= 1, got {args.top_k}")
    if args.tree is not None and args.tree < 1:
        raise UserError(f"--tree takes the number of guesses per pass, >= 1, got {args.tree}")
    if args.show_tree and args.tree is None:
        raise UserError("--show-tree prints the tree of --tree: give --tree NODES too")
    return args


def main(args):
    device = pick_device(args.device)
    model, enc, ckpt = load_for_decoding(args.ckpt, device)
    drafter, dckpt = None, None
    if args.draft:
        drafter, _, dckpt = load_for_decoding(args.draft, device, kinds=("draft", "student"))
    check_decode_flags(args, ckpt, dckpt)
    if args.compile:
        model, drafter = CompiledDecoder(model), drafter and CompiledDecoder(drafter)
    text = args.prompt if args.raw else format_prompt(args.prompt.strip())
    prompt_ids = enc.encode_ordinary(text) if args.prompt.strip() else []
    eos_id = enc.encode(EOT, allowed_special={EOT})[0]
    generator = torch.Generator(device=device).manual_seed(args.seed)
    shared = dict(prompt_ids=prompt_ids, max_new_tokens=args.max_new_tokens, eos_id=eos_id)
    sampling = dict(temperature=args.temperature, top_k=args.top_k, generator=generator)

    t0 = time.time()
    if args.tree is not None:  # tree.py's strategies: greedy, one pass per tree
        import tree  # beside the core: loaded when its flag asks
        trees = []
        if args.self_speculative:
            k = student_k(args.k, ckpt, args.ckpt)
            out = tree.generate_tree_self_speculative(model, mask_ids=student_mask_ids(ckpt), k=k, budget=args.tree,
                                                      trees=trees, **shared)
            how = f"tree self-speculative, k={k}, {args.tree} guesses per pass"
        else:
            k = student_k(args.k, dckpt, args.draft)
            out = tree.generate_tree_mtp_speculative(model, drafter, mask_ids=student_mask_ids(dckpt), k=k,
                                                     budget=args.tree, trees=trees, **shared)
            how = f"tree MTP-drafted speculative, student drafts k={k}, {args.tree} guesses per pass"
    elif dckpt is not None and dckpt["kind"] == "student":
        k = student_k(args.k, dckpt, args.draft)
        out = generate_mtp_speculative(model, drafter, mask_ids=student_mask_ids(dckpt), k=k, **sampling, **shared)
        how = f"MTP-drafted speculative, student drafts k={k} per pass"
    elif dckpt is not None:
        out = generate_speculative(model, drafter, gamma=args.gamma, **sampling, **shared)
        how = f"speculative, gamma={args.gamma}"
    elif args.self_speculative:
        k = student_k(args.k, ckpt, args.ckpt)
        out = generate_self_speculative(model, mask_ids=student_mask_ids(ckpt), k=k, **sampling, **shared)
        how = f"self-speculative, k={k}"
    elif ckpt["kind"] == "student":
        from gates import calibrated_confidence, run_confidence  # experiments, loaded when their flag asks
        k, tau = student_k(args.k, ckpt, args.ckpt), None if args.static else args.tau
        pick = (partial(calibrated_confidence, temperatures=ckpt["temperatures"]) if args.calibrated
                else run_confidence if args.gate == "run" else None)
        out = generate_mtp(model, mask_ids=student_mask_ids(ckpt), k=k, tau=tau, bidirectional=ckpt["bidirectional"],
                           pick=pick, **sampling, **shared)
        how = (f"static k={k}" if args.static else f"ConfAdapt tau={args.tau} ({args.gate} gate"
               + (", calibrated" if args.calibrated else "") + f"), k_max={k}")
    else:
        out = generate_ntp(model, use_cache=not args.no_cache, **sampling, **shared)
        how = "NTP"
    how += ", greedy" if args.temperature == 0 else f", sampling at temperature {args.temperature}" + (
        f", top {args.top_k}" if args.top_k else "")
    elapsed = time.time() - t0
    print(text + (show_chunks(enc, out, eos_id) if args.show_chunks
                  else enc.decode([t for t in out.tokens if t != eos_id])))
    if args.show_tree:
        first = next((t for t in trees if t[0]), None)  # the first pass that verified a tree
        if first is None:
            print("\nNo pass verified a tree: the answer ended before any guess was drafted.")
        else:
            print("\nThe first tree verified (each guess with the product of the masks' probabilities along its "
                  "path; * marks the path accepted):\n" + tree.show_tree(lambda token: enc.decode([token]), *first))
    drafts = f", {sum(out.accepted)}/{sum(out.drafted)} drafts accepted" if out.drafted else ""
    drafts += f", {out.n_draft_forward} draft passes" if out.n_draft_forward else ""
    print(f"\n[{how}: {len(out.tokens)} tokens in {out.n_forward} forward passes = "
          f"{out.tokens_per_forward:.2f} tokens/forward (effective k){drafts}, "
          f"{len(out.tokens) / elapsed:.0f} tokens/s on {device}]", file=sys.stderr)


def check_decode_flags(args, ckpt, dckpt):
    """Refuse the combinations of checkpoints and flags that cannot decode, in one sentence each."""
    if args.draft and ckpt["kind"] != "teacher":
        raise UserError(f"--draft needs a teacher as --ckpt, but {args.ckpt} is a {ckpt['kind']}")
    if dckpt is not None:
        check_same_tokenizer(ckpt, dckpt, args.ckpt, args.draft)
        if dckpt["kind"] == "student" and dckpt["bidirectional"]:
            raise UserError(f"{args.draft} was distilled with --bidirectional blocks; MTP-drafted speculative "
                            f"decoding drafts with causal ones: draft with a causal student")
    if args.self_speculative and ckpt["kind"] != "student":
        raise UserError(f"--self-speculative needs a student as --ckpt, but {args.ckpt} is a {ckpt['kind']}")
    if args.self_speculative and ckpt["bidirectional"]:
        raise UserError(f"{args.ckpt} was distilled with --bidirectional blocks; self-speculative decoding drafts "
                        f"with causal ones: use ConfAdapt or static k with it")
    if args.tree is not None:
        if not (args.self_speculative or (dckpt is not None and dckpt["kind"] == "student")):
            raise UserError("--tree verifies a student's guesses: give --self-speculative with a student as --ckpt, "
                            "or a student as --draft")
        if args.temperature > 0:
            raise UserError("tree verification here is greedy: drop --temperature (or --tree, for the chain that samples)")
        if args.compile:
            raise UserError("--tree feeds a tree attention mask the compiled decoder does not take: drop --compile")
    confadapt = ckpt["kind"] == "student" and not (args.self_speculative or args.static)
    if args.calibrated and confadapt and ckpt["temperatures"] is None:
        raise UserError(f"{args.ckpt} has no fitted temperatures (it was distilled before they were): "
                        f"drop --calibrated, or distill it again")


if __name__ == "__main__":
    try:
        main(parse_args())
    except UserError as e:
        sys.exit(f"error: {e}")
