"""
Train a GPT with next-token prediction (NTP): the teacher, and the small draft model that
speculative decoding uses. nanoGPT's training loop, read top to bottom.

    python train_ntp.py                          # CPU-sized teacher -> out/teacher.pt
    python train_ntp.py --preset draft           # CPU-sized draft model -> out/draft.pt
    python train_ntp.py --preset teacher_gpu     # one-GPU teacher (bf16, torch.compile)
    python train_ntp.py --resume                 # continue from the checkpoint in --out
    torchrun --nproc_per_node=2 train_ntp.py     # data parallel (gloo on CPU, nccl on GPU)

Any preset value can be overridden by its flag, e.g. `--max_iters 500 --lr 1e-3`.
"""
import argparse
import contextlib
import math
import os
import shlex
import signal
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from data.tokenizer import EOT, load_tokenizer, padded_vocab_size
from model import (GPT, GPTConfig, UserError, discard_unfinished_write, load_checkpoint, model_from_checkpoint,
                   pick_device, save_checkpoint, set_aside_existing, tokenizer_from_checkpoint)

# Tuned on the 2-core CPU machines this project is developed on (see README for the runs).
# The draft model has >= 4x fewer parameters than the teacher.
PRESETS = {
    "teacher": dict(kind="teacher", out="out/teacher.pt", n_layer=4, n_head=4, n_embd=128,
                    batch_size=16, grad_accum=1, max_iters=5400, lr=4e-3, min_lr=2e-4, warmup_iters=100,
                    bf16=True),
    "draft": dict(kind="draft", out="out/draft.pt", n_layer=2, n_head=2, n_embd=64,
                  batch_size=16, grad_accum=1, max_iters=1500, lr=3e-3, min_lr=1e-4, warmup_iters=100),
    "teacher_gpu": dict(kind="teacher", out="out/teacher.pt", n_layer=8, n_head=8, n_embd=512,
                        batch_size=64, grad_accum=1, max_iters=5000, lr=1e-3, min_lr=1e-4,
                        warmup_iters=200, compile=True),
    "draft_gpu": dict(kind="draft", out="out/draft.pt", n_layer=4, n_head=4, n_embd=256,
                      batch_size=64, grad_accum=1, max_iters=3000, lr=1.5e-3, min_lr=1e-4,
                      warmup_iters=200, compile=True),
}
# lr_decay_iters: where the cosine ends; 0 means at max_iters.
DEFAULTS = dict(data_dir="data/synth", block_size=256, dropout=0.0, weight_decay=0.1, beta1=0.9,
                beta2=0.95, grad_clip=1.0, eval_interval=250, eval_iters=20, seed=1337,
                device="auto", compile=False, bf16=None, loss_on="all", lr_decay_iters=0)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="teacher")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint at --out")
    for key, value in {**DEFAULTS, **PRESETS["teacher_gpu"]}.items():
        if key == "compile":
            p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                           help="torch.compile the model")
        elif key == "bf16":
            p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                           help="bf16 autocast (default: on CUDA only; CPUs with bf16 units gain too)")
        elif key == "loss_on":
            p.add_argument("--loss_on", choices=["all", "answers"], default=None,
                           help="train on every token, or only on the answers of question/answer documents")
        elif key == "kind":
            p.add_argument("--kind", choices=["teacher", "draft"], default=None, help="what the checkpoint is for")
        else:
            p.add_argument(f"--{key}", type=type(value), default=None, help=f"(preset or {DEFAULTS.get(key, '-')})")
    args = p.parse_args(argv)
    for key, value in {**DEFAULTS, **PRESETS[args.preset]}.items():  # flags override the preset
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.lr_decay_iters = args.lr_decay_iters or args.max_iters
    return args


def get_lr(step, args):
    """Linear warm-up, then cosine decay to min_lr (nanoGPT)."""
    if step < args.warmup_iters:
        return args.lr * (step + 1) / args.warmup_iters
    progress = min(1.0, (step - args.warmup_iters) / max(1, args.lr_decay_iters - args.warmup_iters))
    return args.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (args.lr - args.min_lr)


def load_tokens(data_dir, split, eot_id, block_size, marker_ids=None):
    """The token stream of a split, the offsets where its documents start, and (given the
    ids of "Answer", ":") the question_mask of the tokens left out of the loss, else None."""
    path = os.path.join(data_dir, f"{split}.bin")
    if not os.path.exists(path):
        raise UserError(f"no {split} data at {path}: run `python data/prepare.py` first")
    data = np.memmap(path, dtype=np.uint16, mode="r")
    if len(data) <= block_size + 1:
        raise UserError(f"{path} has {len(data)} tokens, fewer than one window of {block_size + 1}")
    starts = np.concatenate([[0], np.flatnonzero(data == eot_id) + 1])
    no_loss = question_mask(data, starts, marker_ids) if marker_ids else None
    return data, starts[starts < len(data) - block_size - 1], no_loss


def question_mask(data, starts, marker_ids):
    """True on the tokens of each document up to and including its "Answer:" marker: the
    question, which --loss_on answers leaves out of the loss. Its names and numbers are
    random, yet the presets keep it in: predicting a question that repeats its names is
    where the model practises copying them (README, "The teacher"). Documents without a
    marker keep all tokens."""
    marker = np.flatnonzero((data[:-1] == marker_ids[0]) & (data[1:] == marker_ids[1]))  # "Answer", ":"
    doc = np.searchsorted(starts, marker, side="right") - 1  # the document each marker is in
    first = np.unique(doc, return_index=True)[1]  # only a document's first marker ends its question
    diff = np.zeros(len(data) + 1, dtype=np.int32)
    np.add.at(diff, starts[doc[first]], 1)
    np.add.at(diff, marker[first] + 2, -1)
    return np.cumsum(diff[:-1]) > 0


def get_batch(data, starts, n, block_size, generator, no_loss=None):
    """n windows of block_size + 1 tokens, each starting at a document's first token (a window
    that starts mid-problem would train on an answer whose question it cannot see).
    Returns inputs x and next-token targets y, (n, block_size) each; y is -1 (no loss) where
    `no_loss` is True at the target token."""
    ix = starts[torch.randint(len(starts), (n,), generator=generator).numpy()]
    x = torch.stack([torch.from_numpy(data[i:i + block_size].astype(np.int64)) for i in ix])
    y = torch.stack([torch.from_numpy(data[i + 1:i + 1 + block_size].astype(np.int64)) for i in ix])
    if no_loss is not None:
        y[torch.from_numpy(np.stack([no_loss[i + 1:i + 1 + block_size] for i in ix]))] = -1
    return x, y


@torch.no_grad()
def estimate_loss(model, data, starts, no_loss, args, device, autocast):
    """Mean loss on the same eval_iters batches every time (a fixed seed), so numbers compare
    (between runs with the same --loss_on)."""
    model.eval()
    generator = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(args.eval_iters):
        x, y = get_batch(data, starts, args.batch_size, args.block_size, generator, no_loss)
        with autocast:
            losses.append(model(x.to(device), y.to(device))[1].item())
    model.train()
    return sum(losses) / len(losses)


def setup_distributed(device_arg, grad_accum):
    """(ddp, rank, world, local_rank, device). Under torchrun: one process per device, nccl
    on GPUs and gloo on CPUs; otherwise one process on the chosen device."""
    if "RANK" not in os.environ:
        return False, 0, 1, 0, pick_device(device_arg)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    use_cuda = device_arg in ("auto", "cuda") and torch.cuda.is_available()
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    device = f"cuda:{local_rank}" if use_cuda else "cpu"
    if use_cuda:
        torch.cuda.set_device(device)
    if grad_accum % world:
        raise UserError(f"--grad_accum {grad_accum} must be a multiple of the {world} processes")
    return True, rank, world, local_rank, device


def autocast_context(device_type, bf16):
    """bf16 autocast when asked for (None: on CUDA only), else a context that does nothing."""
    if device_type == "cuda" if bf16 is None else bf16:
        return torch.autocast(device_type=device_type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def all_ranks_mean(value, device):
    """The mean of a float over every process of the run."""
    t = torch.tensor(value, device=device)
    dist.all_reduce(t)  # sum over ranks (gloo has no average)
    return t.item() / dist.get_world_size()


# Flags a resumed run may change; any other flag must be as the run began, or --resume would
# quietly continue a different run (another lr, another model, another variant).
MAY_CHANGE_ON_RESUME = {"resume", "preset", "out", "device", "compile", "max_iters", "lr_decay_iters",
                        "eval_interval", "eval_iters", "show_mask"}


def check_same_run(saved, args, path):
    changed = [k for k, v in vars(args).items() if k not in MAY_CHANGE_ON_RESUME and k in saved and saved[k] != v]
    if changed:
        raise UserError(f"{path} was trained with " + ", ".join(f"--{k} {saved[k]}" for k in changed)
                        + ", not " + ", ".join(f"--{k} {getattr(args, k)}" for k in changed)
                        + ": resume with the run's own flags (shown in the log), or start a new run")


def resume_command(args):
    """The command line that continues this run."""
    return shlex.join(["python", *sys.argv] + ([] if args.resume else ["--resume"]))


def main(args):
    ddp, rank, world, local_rank, device = setup_distributed(args.device, args.grad_accum)
    master = rank == 0
    device_type = device.split(":")[0]
    log = print if master else (lambda *a, **k: None)

    torch.manual_seed(args.seed)
    tokenizer_path = os.path.join(args.data_dir, "tokenizer.json")
    if not os.path.exists(tokenizer_path):
        raise UserError(f"no tokenizer at {tokenizer_path}: run `python data/prepare.py` first")
    enc = load_tokenizer(tokenizer_path)
    eot_id = enc.encode(EOT, allowed_special={EOT})[0]
    marker_ids = enc.encode_ordinary("Answer:") if args.loss_on == "answers" else None
    train_data, train_starts, train_no_loss = load_tokens(args.data_dir, "train", eot_id, args.block_size, marker_ids)
    val_data, val_starts, val_no_loss = load_tokens(args.data_dir, "val", eot_id, args.block_size, marker_ids)

    # The model: fresh, or the checkpoint we resume from (with its optimizer and data stream).
    step, ckpt = 0, None
    if master and discard_unfinished_write(args.out):
        log(f"removed {args.out}.tmp: a checkpoint write that was killed before it finished")
    if args.resume:
        ckpt = load_checkpoint(args.out, kinds=(args.kind,), device=device)
        check_same_run(ckpt["args"], args, args.out)
        tokenizer_from_checkpoint(ckpt, tokenizer_path)  # the data must be tokenized as before
        model = model_from_checkpoint(ckpt, device).train()
        step = ckpt["step"]
        log(f"resuming {args.out} at step {step}")
    else:
        moved_to = set_aside_existing(args.out) if master else None
        if moved_to:
            log(f"moved the existing {args.out} to {moved_to} (to continue a run, use --resume)")
        vocab_size = padded_vocab_size(enc)
        config = GPTConfig(block_size=args.block_size, vocab_size=vocab_size, n_layer=args.n_layer,
                           n_head=args.n_head, n_embd=args.n_embd, dropout=args.dropout)
        model = GPT(config).to(device)
    log(f"{args.kind}: {model.num_params() / 1e6:.2f}M parameters, {model.config}")
    optimizer = model.configure_optimizers(args.weight_decay, args.lr, (args.beta1, args.beta2), device_type)
    # One generator shared by all ranks: every rank draws the same global batch and trains on
    # its share, so N processes see exactly the batches one process would.
    generator = torch.Generator().manual_seed(args.seed)
    loss_log = []  # the training loss of every step, kept in the checkpoint
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        generator.set_state(ckpt["generator"])
        if "torch_rng" in ckpt:  # (checkpoints from before it was saved lack it)
            torch.set_rng_state(ckpt["torch_rng"])  # dropout's randomness, when dropout > 0
        loss_log = ckpt.get("loss_log", [])

    raw_model = model
    if args.compile:
        model = torch.compile(model)
    if ddp:
        model = DDP(model, device_ids=[local_rank] if device_type == "cuda" else None)
    autocast = autocast_context(device_type, args.bf16)

    def checkpoint(val_loss):
        save_checkpoint(args.out, raw_model, args.kind, tokenizer_path, step=step,
                        optimizer=optimizer.state_dict(), generator=generator.get_state(),
                        torch_rng=torch.get_rng_state(), loss_log=loss_log, val_loss=val_loss,
                        args={k: v for k, v in vars(args).items()})

    tokens_per_step = args.batch_size * args.grad_accum * args.block_size
    log(f"training {args.max_iters} steps of {tokens_per_step:,} tokens on {device}"
        f"{f' x {world} processes' if ddp else ''}; checkpoint -> {args.out}")
    # Ctrl-C (SIGINT) or SIGTERM: finish the step in flight, save, then exit.
    stop = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.append(True))

    micro_steps = args.grad_accum // world  # this rank's share of the gradient accumulation
    bar = tqdm(total=args.max_iters, initial=step, desc=args.kind, disable=not master, dynamic_ncols=True)
    t0, val_loss = time.time(), float("nan")
    evaluated_at = step  # step 0 needs no evaluation; a resumed checkpoint had one at its step
    while step < args.max_iters and not stop:
        if step % args.eval_interval == 0 and step != evaluated_at and master:
            val_loss = estimate_loss(raw_model, val_data, val_starts, val_no_loss, args, device, autocast)
            bar.write(f"step {step}: val loss {val_loss:.4f}")
            checkpoint(val_loss)

        lr = get_lr(step, args)
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y = get_batch(train_data, train_starts, args.batch_size * args.grad_accum, args.block_size, generator,
                         train_no_loss)
        mine = list(range(rank, args.grad_accum, world))  # micro-batches of this rank
        loss_sum = 0.0
        for i, micro in enumerate(mine):
            xb = x[micro * args.batch_size:(micro + 1) * args.batch_size].to(device)
            yb = y[micro * args.batch_size:(micro + 1) * args.batch_size].to(device)
            if ddp:  # all-reduce the gradients only once, after the last micro-batch
                model.require_backward_grad_sync = i == len(mine) - 1
            with autocast:
                _, loss = model(xb, yb)
            (loss / micro_steps).backward()
            loss_sum += loss.item() / micro_steps
        if args.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if ddp:  # log the loss of the whole global batch, as one process would
            loss_sum = all_ranks_mean(loss_sum, device)
        step += 1
        loss_log.append(loss_sum)
        bar.update(1)
        bar.set_postfix(loss=f"{loss_sum:.4f}", lr=f"{lr:.1e}")
    bar.close()

    if master:
        val_loss = estimate_loss(raw_model, val_data, val_starts, val_no_loss, args, device, autocast)
        checkpoint(val_loss)
        elapsed = time.time() - t0
        train_loss = f"{loss_log[-1]:.4f}" if loss_log else "-"
        log(f"{'stopped' if stop else 'done'} at step {step}: train loss {train_loss}, "
            f"val loss {val_loss:.4f}, {elapsed / 60:.1f} min -> {args.out}")
        if stop:
            log(f"continue with: {resume_command(args)}")
    if ddp:
        dist.destroy_process_group()
    if stop:
        sys.exit(130)


if __name__ == "__main__":
    try:
        main(parse_args())
    except UserError as e:
        sys.exit(f"error: {e}")
