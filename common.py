"""
What every script needs and a reader of the method may skip: one-line errors and checks of
command-line flags, the choice of device, and checkpoints.
"""
import argparse
import hashlib
import math
import os
from dataclasses import asdict

import torch

from data.tokenizer import load_tokenizer
from experiments import add_mask_adapter
from model import GPT, GPTConfig, mask_tokens


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
        raise UserError(f"no checkpoint at {path}: train one first (make demo, or the README's step by step)")
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
    if ckpt["kind"] == "student":
        ckpt.setdefault("mask_per_offset", False)  # students distilled before it was a choice had one <MTP>
        ckpt.setdefault("temperatures", None)      # ... and no fitted temperatures for ConfAdapt's gate
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
    config = {k: v for k, v in ckpt["config"].items() if k in GPTConfig.__dataclass_fields__}  # (and older fields)
    model = GPT(GPTConfig(**config))
    adapter_rank = ckpt.get("args", {}).get("adapter_rank", 0) if ckpt["kind"] == "student" else 0
    if adapter_rank:  # a student distilled with --adapter_rank (experiments.py)
        add_mask_adapter(model, adapter_rank, ckpt["mask_id"])
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval()


def load_for_decoding(path, device, kinds=CHECKPOINT_KINDS):
    """(model, tokenizer, checkpoint dict) of a checkpoint, ready to decode: its logits cover
    the tokenizer's ids only (emit_only)."""
    ckpt = load_checkpoint(path, kinds=kinds, device=device)
    enc = tokenizer_from_checkpoint(ckpt)
    return emit_only(model_from_checkpoint(ckpt, device), enc.n_vocab), enc, ckpt


def emit_only(model, n_vocab):
    """Cut `model`'s logits to the first n_vocab ids, the tokenizer's, once for every decoding
    strategy: the vocabulary is padded to a multiple of 64 and a student's <MTP> masks take the
    first free slots (model.add_mask_token), and none of those may ever be emitted. A forward
    hook, so the model stays as it is; applying it again only sets n_vocab. Returns the model,
    `model.n_vocab` set (decode.check_emits looks for it)."""
    if not hasattr(model, "n_vocab"):
        model.register_forward_hook(cut_logits)
    model.n_vocab = n_vocab
    return model


def cut_logits(model, inputs, output):  # emit_only's hook (a module-level function: bench workers pickle it)
    logits, loss = output
    return logits[..., :model.n_vocab], loss


def check_same_tokenizer(ckpt, other, path, other_path):
    if ckpt["tokenizer_md5"] != other["tokenizer_md5"]:
        raise UserError(f"{other_path} and {path} were trained with different tokenizers: "
                        f"a draft must speak the target's vocabulary")


def student_mask_ids(ckpt):
    """The ids of a student's masks by block offset, k_max - 1 of them (decode.generate_mtp)."""
    return mask_tokens(ckpt["mask_id"], ckpt["k_max"] - 1, ckpt["mask_per_offset"])


def student_k(k, ckpt, path, flag="--k"):
    """k for a student: default its k_max; more positions than it was trained on is refused
    (masks past k_max were never trained, so their guesses would be noise)."""
    if k is None:
        return ckpt["k_max"]
    if k > ckpt["k_max"]:
        raise UserError(f"{flag} {k} is more than the {ckpt['k_max']} positions {path} was trained to predict: "
                        f"use {flag} {ckpt['k_max']} or less")
    return k
