"""
The GPT every other file builds on: GPT-2's architecture (learned position embeddings,
pre-LayerNorm blocks, GELU MLP, tied input/output embeddings), as in nanoGPT, so the weights
map one-to-one onto other GPT-2 implementations.

Two additions over a plain GPT, both needed for multi-token prediction:
- `forward` accepts explicit position ids and a boolean attention mask. The MTP training
  layout appends blocks of <MTP> mask tokens after a sequence; each block must carry the
  positions it stands for and see only part of the sequence (distill_mtp.py builds that).
- A KV cache written by absolute position that can be truncated. Decoding with masks and
  speculative decoding both compute keys/values for tokens they later throw away; rolling
  back is just lowering `cache.length`, and the next forward overwrites the stale slots.

Also here, because every script needs them: checkpoint save/load, device selection, the
one-line errors (`UserError`) and the checks and help format of command-line flags.
"""
import argparse
import hashlib
import math
import os
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from data.tokenizer import load_tokenizer


class UserError(Exception):
    """A problem the user can fix (missing file, wrong checkpoint, bad flag).
    Scripts print it as one sentence instead of a traceback."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """--help keeps the script's docstring as written and shows every flag's default."""


def check_flags(args, positive=(), non_negative=(), fractions=()):
    """Refuse flag values that cannot work, before any work starts, with one line saying what to
    use (instead of an exception from deep inside torch, minutes later). A --seed must fit the
    random generators: 0 <= seed < 2**32. Counts and rates must be finite."""
    for flag in positive:
        if not getattr(args, flag) > 0:
            raise UserError(f"--{flag} must be > 0, got {getattr(args, flag)}")
    for flag in non_negative:
        if not getattr(args, flag) >= 0:
            raise UserError(f"--{flag} must be >= 0, got {getattr(args, flag)}")
    for flag in (*positive, *non_negative):
        if not math.isfinite(getattr(args, flag)):   # an lr of inf trains to NaN without a word
            raise UserError(f"--{flag} must be a finite number, got {getattr(args, flag)}")
    for flag in fractions:
        if not 0 <= getattr(args, flag) < 1:
            raise UserError(f"--{flag} must be in [0, 1), got {getattr(args, flag)}")
    if not 0 <= getattr(args, "seed", 0) < 2**32:
        raise UserError(f"--seed must be in [0, 2**32), got {args.seed}")


@dataclass
class GPTConfig:
    block_size: int = 256   # context length
    vocab_size: int = 768   # the tokenizer's vocabulary padded to a multiple of 64
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = True       # biases in Linear and LayerNorm layers, as GPT-2


def causal_mask(T, start=0, device=None):
    """(T, start + T) bool, True = may attend: the query at slot start + i sees slots
    0 .. start + i. start > 0 is a forward that continues after `start` cached slots."""
    return torch.ones(T, start + T, dtype=torch.bool, device=device).tril(diagonal=start)


class KVCache:
    """Keys and values of every layer, preallocated for `block_size` positions.

    Slot t holds the keys/values of the token at position t. `length` counts the valid
    slots; a forward of T tokens writes slots [length, length + T) and advances it.
    `width` (the fixed-shape decode step of decode.py --compile): every pass feeds exactly
    `width` tokens, padded; the padding writes the `width` spare slots after the context.
    """

    def __init__(self, config, batch_size=1, device="cpu", dtype=torch.float32, width=None):
        hs = config.n_embd // config.n_head
        n_slots = config.block_size + (width or 0)
        shape = (config.n_layer, batch_size, config.n_head, n_slots, hs)
        self.k = torch.zeros(shape, device=device, dtype=dtype)  # (L, B, nh, n_slots, hs)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0
        self.width = width

    def truncate(self, length):
        """Forget every slot from `length` on (rejected drafts, stale <MTP> masks)."""
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

    def forward(self, x, attn_mask=None, cache=None, layer=0, slots=None):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        if slots is not None:  # fixed shapes: write by slot, attend over every slot (attn_mask says which)
            cache.k[layer, :, :, slots] = k
            cache.v[layer, :, :, slots] = v
            k, v = cache.k[layer].to(q.dtype), cache.v[layer].to(q.dtype)  # (B, nh, n_slots, hs)
        elif cache is not None:
            start = cache.length
            cache.k[layer, :, :, start:start + T] = k
            cache.v[layer, :, :, start:start + T] = v
            k = cache.k[layer, :, :, :start + T].to(q.dtype)  # (B, nh, start + T, hs)
            v = cache.v[layer, :, :, :start + T].to(q.dtype)
        # Without a mask or cache this is plain causal attention (the fused/flash kernel).
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                           dropout_p=self.dropout if self.training else 0.0,
                                           is_causal=attn_mask is None and cache is None)
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

    def forward(self, x, attn_mask=None, cache=None, layer=0, slots=None):
        x = x + self.attn(self.ln_1(x), attn_mask, cache, layer, slots)
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

    def forward(self, idx, targets=None, pos=None, attn_mask=None, cache=None, slots=None):
        """
        idx:       (B, T) token ids
        targets:   (B, T) next-token ids, -1 where no loss is wanted; returns the mean loss too
        pos:       (T,) or (B, T) position ids; default: consecutive, starting after the cache
        attn_mask: (T, T_keys) or (B, T, T_keys) bool, True = may attend; default: causal
        cache:     a KVCache; the T tokens are written after its `length` valid slots
        slots:     (T,) cache slots to write instead, with attn_mask over all of them: the
                   fixed-shape step of decode.py --compile (the caller keeps cache.length)
        Returns (logits (B, T, vocab_size), loss or None).
        """
        B, T = idx.size()
        start = cache.length if cache is not None and slots is None else 0
        if slots is not None:
            pos = slots.clamp(max=self.config.block_size - 1)  # the padding past the context reuses the last position
        elif pos is None:
            if start + T > self.config.block_size:
                raise ValueError(f"{start + T} tokens do not fit the model's context of "
                                 f"{self.config.block_size} tokens")
            pos = torch.arange(start, start + T, device=idx.device)  # (T,)
        # With explicit positions (the MTP layout) T may exceed block_size: the appended
        # blocks reuse positions of the sequence; only the positions must fit the context.
        if cache is not None and slots is None and attn_mask is None and T > 1:
            attn_mask = causal_mask(T, start, idx.device)  # causal with an offset: (T, start + T)
        if attn_mask is not None and attn_mask.dim() == 3:
            attn_mask = attn_mask[:, None]  # (B, 1, T, T_keys): the same mask for every head

        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))  # (B, T, C)
        for layer, block in enumerate(self.transformer.h):
            x = block(x, attn_mask, cache, layer, slots)
        logits = self.lm_head(self.transformer.ln_f(x))  # (B, T, vocab_size)
        if cache is not None and slots is None:
            cache.length = start + T

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
        raise UserError(f"no free vocabulary slot for <MTP>: the tokenizer uses {mask_id} ids and "
                        f"the model has {model.config.vocab_size}")
    with torch.no_grad():
        rows = model.transformer.wte.weight[:mask_id]  # (mask_id, n_embd)
        noise = torch.randn(rows.size(1), generator=generator).to(rows.device)
        model.transformer.wte.weight[mask_id] = rows.mean(0) + rows.std(0) * noise
    return model


# --------------------------------------------------------------------------------------
# Checkpoints. A checkpoint is a dict of plain types and tensors, so it loads with
# torch.load(weights_only=True): unpickling arbitrary objects from a file is unsafe.

CHECKPOINT_KINDS = ("teacher", "draft", "student")


def clean_state_dict(model):
    """The state dict without the prefixes torch.compile ('_orig_mod.') and DDP ('module.') add."""
    out = {}
    for k, v in model.state_dict().items():
        for prefix in ("module.", "_orig_mod."):
            k = k.removeprefix(prefix)
        out[k] = v
    return out


def file_md5(path):
    with open(path, "rb") as f:
        return hashlib.md5(f.read()).hexdigest()


def save_checkpoint(path, model, kind, tokenizer, **extra):
    """Write atomically: a crash mid-write leaves the previous checkpoint intact.
    `tokenizer` is the path of the tokenizer.json the model was trained with."""
    assert kind in CHECKPOINT_KINDS, kind
    ckpt = {"kind": kind, "config": asdict(model.config), "model": clean_state_dict(model),
            "tokenizer": tokenizer, "tokenizer_md5": file_md5(tokenizer), **extra}
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        torch.save(ckpt, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)  # atomic on POSIX and Windows



def load_checkpoint(path, kinds=CHECKPOINT_KINDS, device="cpu"):
    """The checkpoint dict at `path`, checked to be one of `kinds`."""
    if not os.path.isfile(path):
        raise UserError(f"no checkpoint at {path}: train one first (see the README's pipeline)")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception:
        raise UserError(f"{path} is not a readable checkpoint (corrupt or cut short?): "
                        f"delete it and train again") from None
    if not isinstance(ckpt, dict) or ckpt.get("kind") not in CHECKPOINT_KINDS:
        raise UserError(f"{path} is not a checkpoint written by this project")
    if ckpt["kind"] not in kinds:
        raise UserError(f"{path} is a {ckpt['kind']} checkpoint, but a {' or '.join(kinds)} "
                        f"checkpoint is needed here")
    return ckpt


def tokenizer_from_checkpoint(ckpt, path=None):
    """The tokenizer the checkpoint was trained with (or `path`), checked to be the same file."""
    path = path or ckpt["tokenizer"]
    if not os.path.isfile(path):
        raise UserError(f"the tokenizer this model was trained with is missing ({path}, relative to the folder "
                        f"training ran in): run from that folder, or rerun data/prepare.py with the same settings")
    enc = load_tokenizer(path)
    if file_md5(path) != ckpt["tokenizer_md5"]:
        raise UserError(f"the tokenizer at {path} is not the one this model was trained with "
                        f"(was data/prepare.py rerun with other settings?): retrain, or restore it")
    return enc


def model_from_checkpoint(ckpt, device="cpu"):
    model = GPT(GPTConfig(**ckpt["config"]))
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval()


def pick_device(name="auto"):
    """'auto' picks cuda, then mps, then cpu; an explicit device must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if torch.backends.mps.is_available() else "cpu"
    kind = name.split(":")[0]
    if kind not in ("cpu", "cuda", "mps"):
        raise UserError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps")
    if kind == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for, but PyTorch sees no CUDA GPU here: use --device cpu")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps was asked for, but this machine has no MPS: use --device cpu")
    return name
