"""
The GPT every other file builds on: GPT-2's architecture (learned position embeddings,
pre-LayerNorm blocks, GELU MLP, tied input/output embeddings), as in nanoGPT.

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


class KVCache:
    """Keys and values of every layer for every position of the context: slot t holds the
    token at position t. `length` is the decoder's count of the slots written so far; it
    forgets stale masks or rejected drafts by lowering it, and the next pass writes over them."""

    def __init__(self, config, batch_size=1, device="cpu", dtype=torch.float32):
        shape = (config.n_layer, batch_size, config.n_head, config.block_size, config.n_embd // config.n_head)
        self.k = torch.zeros(shape, device=device, dtype=dtype)  # (L, B, nh, block_size, hs)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0

    def truncate(self, length):
        """Forget every slot from `length` on."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot truncate a cache of length {self.length} to {length}")
        self.length = length


class CausalSelfAttention(nn.Module):

    def __init__(self, config):
        super().__init__()
        assert config.n_embd % config.n_head == 0
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v at once
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head, self.n_embd, self.dropout = config.n_head, config.n_embd, config.dropout

    def forward(self, x, pos, attn_mask, cache, layer):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        if cache is not None:  # write at the tokens' positions, then attend over the slots the mask covers
            cache.k[layer, :, :, pos] = k.to(cache.k.dtype)
            cache.v[layer, :, :, pos] = v.to(cache.v.dtype)
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

    def forward(self, x, pos, attn_mask, cache, layer):
        x = x + self.attn(self.ln_1(x), pos, attn_mask, cache, layer)
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # tied embeddings, as GPT-2
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
        return sum(p.numel() for p in self.parameters()) - self.transformer.wpe.weight.numel()

    def forward(self, idx, targets=None, pos=None, attn_mask=None, cache=None):
        """
        idx:       (B, T) token ids
        targets:   (B, T) next-token ids, -1 where no loss is wanted; returns the mean loss too
        pos:       (T,) the position of each token; default 0 .. T-1. With explicit positions T
                   may exceed block_size (the MTP layout's blocks reuse positions of the sequence)
        attn_mask: (T, T_keys) or (B, T, T_keys) bool, True = may attend. Default: causal; with
                   a cache, each token sees the slots up to its own position
        cache:     a KVCache: the tokens' keys/values are written at slots `pos` (required), and
                   the keys are its first T_keys slots
        Returns (logits (B, T, vocab_size), loss or None).
        """
        B, T = idx.size()
        if pos is None:
            if cache is not None:
                raise ValueError("a forward with a KV cache needs the positions of its tokens")
            if T > self.config.block_size:
                raise ValueError(f"{T} tokens do not fit the model's context of {self.config.block_size} tokens")
            pos = torch.arange(T, device=idx.device)  # (T,)
        if cache is not None and attn_mask is None:
            # The keys end at the last position fed: the slots after it hold nothing this pass
            # may see. Compiled, they are the whole cache, because compiled shapes are fixed.
            n_keys = self.config.block_size if torch.compiler.is_compiling() else int(pos.max()) + 1
            attn_mask = torch.arange(n_keys, device=idx.device) <= pos[:, None]  # (T, n_keys)
        if attn_mask is not None and attn_mask.dim() == 3:
            attn_mask = attn_mask[:, None]  # (B, 1, T, T_keys): the same mask for every head

        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))  # (B, T, C)
        for layer, block in enumerate(self.transformer.h):
            x = block(x, pos, attn_mask, cache, layer)
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


def add_mask_token(model, mask_id, generator=None):
    """Give the <MTP> mask token an unused vocabulary slot (docs/method.md, "The student").

    Its embedding row is drawn from the mean and spread of the rows in use (ids < mask_id),
    so it starts as a typical-looking token rather than the random init of an unused slot.
    The embeddings are tied, so this is also its output row: decoding never emits ids from
    the tokenizer's vocabulary size on (decode.pick_token), the mask included."""
    if mask_id >= model.config.vocab_size:
        raise ValueError(f"no free vocabulary slot for <MTP>: the tokenizer uses {mask_id} ids and "
                         f"the model has {model.config.vocab_size}")
    with torch.no_grad():
        rows = model.transformer.wte.weight[:mask_id]  # (mask_id, n_embd)
        noise = torch.randn(rows.size(1), generator=generator).to(rows.device)
        model.transformer.wte.weight[mask_id] = rows.mean(0) + rows.std(0) * noise
    return model
