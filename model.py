"""
The GPT every other file builds on: GPT-2's architecture (learned position embeddings,
pre-LayerNorm blocks, GELU MLP, tied input/output embeddings), as in nanoGPT; rotary position
embeddings as an option (`GPTConfig.rotary`), which our teacher presets use, as the paper's
models do (train_ntp.py).

Two additions, both for multi-token prediction:
- `forward` takes the position of every token and, optionally, a boolean attention mask: the
  MTP training layout appends blocks of <MTP> masks that stand at earlier positions and see
  only part of the sequence (distill_mtp.py builds it).
- A preallocated KV cache, written at the positions given. Decoding with masks and
  speculative decoding compute keys for tokens they later throw away; rolling back costs
  nothing, because the next forward writes its tokens over the stale slots.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class GPTConfig:
    block_size: int = 256   # context length
    vocab_size: int = 768   # the tokenizer's vocabulary padded to a multiple of 64
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = True       # biases in Linear and LayerNorm layers, as GPT-2
    rotary: bool = False    # rotary position embeddings (RoFormer) instead of GPT-2's learned ones


class KVCache:
    """Keys and values of every layer for every position of the context: slot t holds the
    token at position t. `length` counts the slots written so far: a pass of one sequence feeds
    the positions from `length` on and moves it past them (`advance`); a decoder forgets stale
    masks or rejected drafts by lowering it (`truncate`), and the next pass writes over them.
    (A batch whose rows stand at different points keeps a length per row: batched.RowCache.)"""

    def __init__(self, config, batch_size=1, device="cpu", dtype=torch.float32, scratch=0):
        # `scratch` slots past the context: where a tree of drafts puts the nodes it may not keep (tree.py)
        shape = (config.n_layer, batch_size, config.n_head, config.block_size + scratch, config.n_embd // config.n_head)
        self.k = torch.zeros(shape, device=device, dtype=dtype)  # (L, B, nh, block_size + scratch, hs)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0

    def advance(self, pos):
        """A pass of one sequence writes the slots `pos` (T,). They must start at `length`: the
        pass attends over the first slots up to its last position, so a gap would let it read
        stale slots and a step back would leave later stale slots counted as written."""
        start = int(pos[0])
        if start != self.length:
            raise ValueError(f"a cached pass must feed the positions from the cache's length {self.length} on, "
                             f"got positions from {start}: truncate the cache first, or feed the tokens in between")
        self.length = start + len(pos)

    def truncate(self, length):
        """Forget every slot from `length` on."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot truncate a cache of length {self.length} to {length}")
        self.length = length

    def keep(self, slots, start):
        """Move the entries of `slots` (a list, in order) to the slots from `start` on and forget
        every slot after them: the accepted path of a tree of drafts (tree.py), whose keys were
        computed at the right positions, seeing the right tokens, but stored in scattered slots."""
        self.k[:, :, :, start:start + len(slots)] = self.k[:, :, :, slots]  # the right side is a copy
        self.v[:, :, :, start:start + len(slots)] = self.v[:, :, :, slots]
        self.truncate(start + len(slots))


def rotate(x, cos, sin):
    """Rotary position embedding (Su et al. 2021, RoFormer): turn each pair of channels of the
    queries or keys x (B, nh, T, hs) by an angle pos * frequency, whose cos and sin (T, hs/2),
    or (B, 1, T, hs/2) when each row has its own positions, `GPT.forward` looks up once per pass
    in tables made at init. A query-key score then depends on their positions only through the
    distance between them, so a mask always knows how far it stands from the last real token
    (the paper's Llama and Qwen models are rotary)."""
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)                      # (B, nh, T, hs/2) each
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class CausalSelfAttention(nn.Module):

    def __init__(self, config):
        super().__init__()
        assert config.n_embd % config.n_head == 0
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v at once
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head, self.n_embd, self.dropout = config.n_head, config.n_embd, config.dropout

    def forward(self, x, slots, rope, attn_mask, cache, layer):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        if rope is not None:  # the cache keeps the keys turned, as the next passes read them
            q, k = rotate(q, *rope), rotate(k, *rope)
        if cache is not None:  # write at the tokens' slots (their positions), then attend over the slots the mask covers
            if slots.dim() == 1:
                cache.k[layer, :, :, slots] = k.to(cache.k.dtype)
                cache.v[layer, :, :, slots] = v.to(cache.v.dtype)
            else:  # a position per row (batched.py): each row writes its own slots
                rows = torch.arange(B, device=x.device)[:, None]                        # (B, 1)
                cache.k[layer, rows, :, slots] = k.transpose(1, 2).to(cache.k.dtype)  # indexed as (B, T, nh, hs)
                cache.v[layer, rows, :, slots] = v.transpose(1, 2).to(cache.v.dtype)
            n_keys = attn_mask.size(-1)
            k = cache.k[layer, :, :, :n_keys].to(q.dtype)  # (B, nh, n_keys, hs)
            v = cache.v[layer, :, :, :n_keys].to(q.dtype)
        # Without a mask this is plain causal attention (the fused/flash kernel).
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                           dropout_p=self.dropout if self.training else 0.0,
                                           is_causal=attn_mask is None)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble the heads side by side
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, slots, rope, attn_mask, cache, layer):
        x = x + self.attn(self.ln_1(x), slots, rope, attn_mask, cache, layer)
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=None if config.rotary else nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # tied embeddings, as GPT-2
        if config.rotary:  # every position's angles, computed once: a pass only looks its positions up
            hs = config.n_embd // config.n_head
            inv_freq = 1.0 / 10000 ** (torch.arange(0, hs, 2).float() / hs)       # (hs/2,) the pairs' frequencies
            angle = torch.arange(config.block_size).float()[:, None] * inv_freq  # (block_size, hs/2)
            self.register_buffer("rope_cos", angle.cos(), persistent=False)
            self.register_buffer("rope_sin", angle.sin(), persistent=False)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # GPT-2: scale the residual projections by depth
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self):
        """Parameters, not counting position embeddings (as nanoGPT reports them)."""
        return sum(p.numel() for p in self.parameters()) - (0 if self.config.rotary else self.transformer.wpe.weight.numel())

    def forward(self, idx, targets=None, pos=None, attn_mask=None, cache=None, slots=None):
        """
        idx:       (B, T) token ids
        targets:   (B, T) next-token ids, -1 where no loss is wanted; returns the mean loss too
        pos:       (T,) the position of each token; default 0 .. T-1. With explicit positions T
                   may exceed block_size (the MTP layout's blocks reuse positions of the sequence).
                   (B, T): a position per row, for rows that stand at different points (batched.py)
        attn_mask: (T, T_keys) or (B, T, T_keys) bool, True = may attend. Default: causal; with
                   a cache, each token sees the slots up to its own position
        cache:     a KVCache: the tokens' keys/values are written at slots `pos` (required), and
                   the keys are its first T_keys slots. (T,) positions must start at
                   cache.length, and the pass moves it past them (KVCache.advance); inside a
                   torch.compile graph it does not, and the caller advances it
                   (compiled.CompiledDecoder)
        slots:     (T,) the cache slots the keys/values go to, when not `pos`: a tree of drafts
                   feeds several tokens at one position, each in a slot of its own (tree.py);
                   attn_mask then says which slots each token sees
        Returns (logits (B, T, vocab_size), loss or None).
        """
        B, T = idx.size()
        if pos is None:
            if cache is not None:
                raise ValueError("a forward with a KV cache needs the positions of its tokens")
            if T > self.config.block_size:
                raise ValueError(f"{T} tokens do not fit the model's context of {self.config.block_size} tokens")
            pos = torch.arange(T, device=idx.device)  # (T,)
        slots = pos if slots is None else slots
        if cache is not None and pos.dim() == 1 and not torch.compiler.is_compiling():
            cache.advance(slots)  # (a compiled pass advances it outside the graph: compiled.py)
        if cache is not None and attn_mask is None:
            # The keys end at the last position fed: the slots after it hold nothing this pass may see.
            n_keys = int(pos.max()) + 1
            attn_mask = torch.arange(n_keys, device=idx.device) <= pos[..., None]  # (T, n_keys) or (B, T, n_keys)
        if attn_mask is not None and attn_mask.dim() == 3:
            attn_mask = attn_mask[:, None]  # (B, 1, T, T_keys): the same mask for every head

        x = self.transformer.wte(idx)  # (B, T, C)
        if not self.config.rotary:  # else the positions enter in every attention score (rotate)
            x = x + self.transformer.wpe(pos)
        x = self.transformer.drop(x)
        rope = None
        if self.config.rotary:
            cos, sin = self.rope_cos[pos], self.rope_sin[pos]  # (T, hs/2) each, or (B, T, hs/2)
            rope = (cos, sin) if pos.dim() == 1 else (cos[:, None], sin[:, None])  # (B, 1, T, hs/2): every head alike
        for layer, block in enumerate(self.transformer.h):
            x = block(x, slots, rope, attn_mask, cache, layer)
        logits = self.lm_head(self.transformer.ln_f(x))  # (B, T, vocab_size)

        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        return logits, loss

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        # Decay the matrices (weights, embeddings); leave biases and LayerNorm gains alone.
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        fused = device_type == "cuda"  # one kernel for the whole update on GPU
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=fused)


def add_mask_token(model, mask_id, generator=None, count=1):
    """Give the <MTP> mask token an unused vocabulary slot (docs/method.md, "The student"); with
    `count` > 1, one mask token per block offset, in the slots mask_id .. mask_id + count - 1.

    Each embedding row is drawn from the mean and spread of the rows in use (ids < mask_id),
    so it starts as a typical-looking token rather than the random init of an unused slot.
    The embeddings are tied, so this is also its output row: decoding never emits ids from
    the tokenizer's vocabulary size on (common.emit_only), the masks included."""
    if mask_id + count > model.config.vocab_size:
        raise ValueError(f"no free vocabulary slot for {count} <MTP> token(s): the tokenizer uses {mask_id} ids "
                         f"and the model has {model.config.vocab_size}")
    with torch.no_grad():
        rows = model.transformer.wte.weight[:mask_id]  # (mask_id, n_embd)
        noise = torch.randn(count, rows.size(1), generator=generator).to(rows.device)  # (count, n_embd)
        model.transformer.wte.weight[mask_id:mask_id + count] = rows.mean(0) + rows.std(0) * noise
    return model


def mask_tokens(mask_id, n, per_offset=False):
    """The ids of a block's n masks: the one <MTP> id n times, or (a student distilled with
    --mask_per_offset) mask_id + j - 1 for the mask j places after the last real token."""
    return [mask_id + j if per_offset else mask_id for j in range(n)]


# The student's training layout (paper Sec. 4.2-4.4, figures 2-4). The paper interleaves each
# block of masks into the sequence; we append the blocks after it with explicit position ids.
# The visibility rules are the same, so the computation is the same, and one mask serves the
# whole batch (distill_mtp.py trains on it; bench.py reads a student's confidences through it).

def mtp_layout(seq_len, k, points, bidirectional=False):
    """
    seq_len: N ground-truth tokens; points: (M,) prediction points; k: tokens per block.
    Returns
      pos  (N + M(k-1),) position ids: 0..N-1, then i_m+1 .. i_m+k-1 for block m
      mask (L, L) bool, True = may attend: the ground truth is plain causal and blind to every
           mask; a mask of block m sees the ground truth up to i_m and its block's earlier masks
      read (M, k) where in the layout the prediction of token j of block m is read: i_m for
           token 1, the block's masks for tokens 2..k
    """
    N, M, b = seq_len, len(points), k - 1  # b masks per block
    L = N + M * b
    mask = torch.zeros(L, L, dtype=torch.bool)
    mask[:N, :N] = torch.ones(N, N, dtype=torch.bool).tril()  # the ground truth: causal
    pos = [torch.arange(N)]
    read = torch.empty(M, k, dtype=torch.long)
    within = torch.ones(b, b, dtype=torch.bool)
    within = within if bidirectional else within.tril()
    for m, i in enumerate(points.tolist()):
        s = N + m * b  # block m's first slot in the layout
        pos.append(torch.arange(i + 1, i + k))
        mask[s:s + b, :i + 1] = True      # the true prefix x_0 .. x_i
        mask[s:s + b, s:s + b] = within   # the block's own masks
        read[m, 0] = i
        read[m, 1:] = torch.arange(s, s + b)
    return torch.cat(pos), mask, read
