"""
Train a GPT with next-token prediction (NTP): the teacher, and the small draft model that
speculative decoding uses. nanoGPT's training loop, read top to bottom.

    python train_ntp.py                          # CPU-sized teacher -> out/teacher.pt
    python train_ntp.py --preset draft           # CPU-sized draft model -> out/draft.pt
    python train_ntp.py --preset teacher_gpu     # one-GPU teacher (torch.compile; bf16 where the GPU has it, else fp16)
    python train_ntp.py --resume                 # continue from the checkpoint in --out
    torchrun --nproc_per_node=2 train_ntp.py     # data parallel (gloo on CPU, nccl on GPU)

Any preset value can be overridden by its flag, e.g. `--max_iters 500 --lr 1e-3`.
"""
import argparse
import os
import sys
import time

import numpy as np
import torch
from tqdm import tqdm

from data.tokenizer import EOT, load_tokenizer, padded_vocab_size
from common import HelpFormatter, UserError, check_flags, model_from_checkpoint, tokenizer_from_checkpoint
from model import GPT, GPTConfig
from training import (add_training_flags, all_ranks_mean, any_process_stopped, autocast_context, check_memory,
                      finish, get_batch, get_lr, gradient_scaler, load_tokens, open_run, parse_with_presets,
                      resolve_precision, restore_run, save_run, settings_line, setup_processes, skipped_steps_line,
                      stop_on_signals, wrap_model)

# teacher and draft fit a 2-core CPU (docs/notebook.md: how the teacher's settings were chosen); the _gpu
# presets are one-GPU sizes. The draft model has >= 4x fewer parameters than its teacher.
# The teachers are rotary, as the paper's Llama and Qwen models are: a mask then knows its distance from
# the last real token in every attention score, and the student's far masks learn far better than with
# GPT-2's learned positions (docs/notebook.md, "ConfAdapt that keeps the student's accuracy").
PRESETS = {
    "teacher": dict(kind="teacher", out="out/teacher.pt", n_layer=4, n_head=4, n_embd=128, rotary=True,
                    batch_size=16, grad_accum=1, max_iters=5400, lr=4e-3, min_lr=2e-4, warmup_iters=100),
    "draft": dict(kind="draft", out="out/draft.pt", n_layer=2, n_head=2, n_embd=64,
                  batch_size=16, grad_accum=1, max_iters=1500, lr=3e-3, min_lr=1e-4, warmup_iters=100),
    "teacher_gpu": dict(kind="teacher", out="out/teacher.pt", n_layer=8, n_head=8, n_embd=512, rotary=True,
                        batch_size=64, grad_accum=1, max_iters=5000, lr=1e-3, min_lr=1e-4,
                        warmup_iters=200, compile=True),
    "draft_gpu": dict(kind="draft", out="out/draft.pt", n_layer=4, n_head=4, n_embd=256,
                      batch_size=64, grad_accum=1, max_iters=3000, lr=1.5e-3, min_lr=1e-4,
                      warmup_iters=200, compile=True),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="teacher",
                   help="a tested set of the flags below (they show its values); any flag overrides it")
    p.add_argument("--kind", choices=["teacher", "draft"], help="what the checkpoint is for")
    p.add_argument("--out", help="where the checkpoint goes")
    p.add_argument("--data_dir", default="data/synth", help="tokenizer.json, train.bin and val.bin")
    p.add_argument("--loss_on", choices=["all", "answers"], default="all",
                   help="train on every token, or only on the answers of question/answer documents")
    g = p.add_argument_group("the model")
    g.add_argument("--n_layer", type=int, help="transformer blocks")
    g.add_argument("--n_head", type=int, help="attention heads per block")
    g.add_argument("--n_embd", type=int, help="width of the residual stream (a multiple of --n_head)")
    g.add_argument("--block_size", type=int, default=256, help="context length in tokens")
    g.add_argument("--dropout", type=float, default=0.0, help="dropout rate, in [0, 1)")
    g.add_argument("--rotary", action=argparse.BooleanOptionalAction, default=False,
                   help="rotary position embeddings instead of learned ones (a mask then knows its distance "
                   "from the last real token in every attention score)")
    add_training_flags(p, weight_decay=0.1, eval_iters=20)
    p.add_argument("--beta1", type=float, default=0.9, help="AdamW beta1, in [0, 1)")
    p.add_argument("--beta2", type=float, default=0.95, help="AdamW beta2, in [0, 1)")
    args = parse_with_presets(p, PRESETS, "teacher", argv)
    check_flags(args, positive=("n_layer", "n_head", "n_embd", "block_size"), fractions=("dropout", "beta1", "beta2"))
    if args.n_embd % args.n_head:
        raise UserError(f"--n_embd {args.n_embd} must be a multiple of --n_head {args.n_head}")
    return args


def question_mask(data, eot_id, marker_ids):
    """True on the tokens of each document up to and including its "Answer:" marker: the
    question, which --loss_on answers leaves out of the loss. Its names and numbers are
    random, yet the presets keep it in: predicting a question that repeats its names is
    where the model practises copying them (docs/notebook.md). Documents without a
    marker keep all tokens."""
    starts = np.concatenate([[0], np.flatnonzero(data == eot_id) + 1])  # every document's first token
    marker = np.flatnonzero((data[:-1] == marker_ids[0]) & (data[1:] == marker_ids[1]))  # "Answer", ":"
    doc = np.searchsorted(starts, marker, side="right") - 1  # the document each marker is in
    first = np.unique(doc, return_index=True)[1]  # only a document's first marker ends its question
    diff = np.zeros(len(data) + 1, dtype=np.int32)
    np.add.at(diff, starts[doc[first]], 1)
    np.add.at(diff, marker[first] + 2, -1)
    return np.cumsum(diff[:-1]) > 0


def load_data(args, procs):
    """The tokenizer's path and itself, then for the train and the val split: the token stream,
    where its documents start, and where --loss_on leaves the loss out (None: nowhere)."""
    tokenizer_path = os.path.join(args.data_dir, "tokenizer.json")
    if not os.path.exists(tokenizer_path):
        raise UserError(f"no tokenizer at {tokenizer_path}: run `python data/prepare.py` first")
    enc = load_tokenizer(tokenizer_path)
    check_memory(args, padded_vocab_size(enc), procs)
    eot_id = enc.encode(EOT, allowed_special={EOT})[0]
    splits = []
    for split in ("train", "val"):
        data, starts = load_tokens(args.data_dir, split, eot_id, args.block_size)
        no_loss = question_mask(data, eot_id, enc.encode_ordinary("Answer:")) if args.loss_on == "answers" else None
        splits.append((data, starts, no_loss))
    return tokenizer_path, enc, *splits


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


def main(args):
    procs = setup_processes(args.device, args.grad_accum)
    log = print if procs.master else (lambda *a, **k: None)
    precision_why = resolve_precision(args, procs.device)  # auto becomes bf16, fp16 or fp32 here, on every rank
    log(settings_line(args, precision=precision_why))

    torch.manual_seed(args.seed)
    tokenizer_path, enc, train, val = load_data(args, procs)
    train_data, train_starts, train_no_loss = train
    val_data, val_starts, val_no_loss = val

    # The model: fresh, or the checkpoint we resume from (with its optimizer and data stream).
    ckpt = open_run(args, args.kind, procs, log)
    if ckpt is not None:
        tokenizer_from_checkpoint(ckpt, tokenizer_path)  # the data must be tokenized as before
        model = model_from_checkpoint(ckpt, procs.device).train()
    else:
        config = GPTConfig(block_size=args.block_size, vocab_size=padded_vocab_size(enc), n_layer=args.n_layer,
                           n_head=args.n_head, n_embd=args.n_embd, dropout=args.dropout, rotary=args.rotary)
        model = GPT(config).to(procs.device)
    log(f"{args.kind}: {model.num_params() / 1e6:.2f}M parameters, {model.config}")
    optimizer = model.configure_optimizers(args.weight_decay, args.lr, (args.beta1, args.beta2), procs.device_type)
    # One generator shared by all ranks: every rank draws the same global batch and trains on
    # its share, so N processes see exactly the batches one process would.
    generator = torch.Generator().manual_seed(args.seed)
    scaler = gradient_scaler(args.precision, procs.device_type)  # fp16's loss scale; off for bf16 and fp32
    step, loss_log = 0, []  # loss_log: the training loss of every step, kept in the checkpoint
    if ckpt is not None:
        step, loss_log = restore_run(ckpt, optimizer, scaler, {"generator": generator})
    raw_model, model = model, wrap_model(model, args, procs)
    autocast = autocast_context(procs.device_type, args.precision)

    def checkpoint(val_loss):
        save_run(args.out, raw_model, args.kind, tokenizer_path, step, optimizer, scaler, {"generator": generator},
                 loss_log, args, val_loss=val_loss)

    tokens_per_step = args.batch_size * args.grad_accum * args.block_size
    log(f"training {args.max_iters} steps of {tokens_per_step:,} tokens on {procs.device}"
        f"{f' x {procs.world} processes' if procs.ddp else ''}; checkpoint -> {args.out}")
    stop = stop_on_signals()
    bar = tqdm(total=args.max_iters, initial=step, desc=args.kind, disable=not procs.master, dynamic_ncols=True)
    t0, first_step, val_loss, skipped = time.time(), step, float("nan"), 0  # skipped: fp16 steps that overflowed
    evaluated_at = step  # step 0 needs no evaluation; a resumed checkpoint had one at its step
    mine = range(procs.rank, args.grad_accum, procs.world)  # the micro-batches of this process
    while step < args.max_iters and not any_process_stopped(stop, procs):
        if step % args.eval_interval == 0 and step != evaluated_at and procs.master:
            val_loss = estimate_loss(raw_model, val_data, val_starts, val_no_loss, args, procs.device, autocast)
            bar.write(f"step {step}: val loss {val_loss:.4f}")
            checkpoint(val_loss)

        # One optimizer step on a global batch of batch_size * grad_accum windows.
        lr = get_lr(step, args)
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y = get_batch(train_data, train_starts, args.batch_size * args.grad_accum, args.block_size, generator,
                         train_no_loss)  # (batch_size * grad_accum, block_size) each
        loss_sum = 0.0
        for i, micro in enumerate(mine):
            rows = slice(micro * args.batch_size, (micro + 1) * args.batch_size)
            if procs.ddp:  # all-reduce the gradients only once, after the last micro-batch
                model.require_backward_grad_sync = i == len(mine) - 1
            with autocast:
                _, loss = model(x[rows].to(procs.device), y[rows].to(procs.device))
            scaler.scale(loss / len(mine)).backward()  # fp16: scaled up, so small gradients stay above zero
            loss_sum += loss.item() / len(mine)
        if args.grad_clip > 0:
            scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        scale = scaler.get_scale()
        scaler.step(optimizer)  # fp16: skipped if a gradient overflowed (inf or nan), else optimizer.step()
        scaler.update()  # fp16: the scale halved after an overflow
        skipped += scaler.get_scale() < scale  # update() lowers the scale exactly when step() skipped
        optimizer.zero_grad(set_to_none=True)
        if procs.ddp:  # log the loss of the whole global batch, as one process would
            loss_sum = all_ranks_mean(loss_sum, procs.device)

        step += 1
        loss_log.append(loss_sum)
        bar.update(1)
        bar.set_postfix(loss=f"{loss_sum:.4f}", lr=f"{lr:.1e}")
    bar.close()

    if procs.master:
        val_loss = estimate_loss(raw_model, val_data, val_starts, val_no_loss, args, procs.device, autocast)
        checkpoint(val_loss)
        train_loss = f"{loss_log[-1]:.4f}" if loss_log else "-"
        seconds = time.time() - t0  # evaluations and compilation included
        log(f"{'stopped' if stop else 'done'} at step {step}: train loss {train_loss}, val loss {val_loss:.4f}, "
            f"{(step - first_step) * tokens_per_step / seconds:,.0f} tokens/s, {seconds / 60:.1f} min -> {args.out}"
            + skipped_steps_line(scaler, skipped, step - first_step))
    del model  # the DDP wrapper holds the process group, which finish() shuts down
    finish(bool(stop), args, procs, log)


if __name__ == "__main__":
    try:
        main(parse_args())
    except UserError as e:
        sys.exit(f"error: {e}")
