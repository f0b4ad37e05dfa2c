"""
Distill the NTP teacher into a multi-token (MTP) student, online, with the critic loss
(Kirchenbauer et al. 2026, arXiv 2602.06019, Sec. 3.3 and 4; docs/method.md explains it).

    python distill_mtp.py                       # CPU default: out/teacher.pt -> out/student.pt
    python distill_mtp.py --preset gpu          # one GPU (torch.compile; bf16 where the GPU has it, else fp16)
    python distill_mtp.py --show-mask           # print the training layout and attention mask
    python distill_mtp.py --resume              # continue from the checkpoint at --out
    torchrun --nproc_per_node=2 distill_mtp.py  # data parallel

One step, for a batch of ground-truth windows x (B, N):
 1. draw k in [k_min, k_max] and M prediction points i_1 < ... < i_M (independent streams);
 2. student input: x, then for every point a block of k-1 <MTP> masks standing at positions
    i_m+1 .. i_m+k-1, which see x up to i_m and the earlier masks of their block;
 3. the student's predictions for block m are read at i_m (token 1) and at its masks
    (tokens 2..k); the rollout y' is their argmax;
 4. the frozen teacher reads the same layout with the masks replaced by y'_1..y'_{k-1}: its
    logits at i_m and at y'_j give its own next token after the true prefix + y'_1..y'_j;
 5. loss: cross-entropy of the student against the teacher's argmax (hard, default) or
    KL(teacher || student) (soft), averaged over every predicted position.
"""
import argparse
import os
import sys
import time
from functools import partial

import torch
import torch.nn.functional as F
from tqdm import tqdm

from common import HelpFormatter, UserError, check_flags, load_checkpoint, model_from_checkpoint, tokenizer_from_checkpoint
from data.tokenizer import EOT
from experiments import train_only_the_adapter
from model import add_mask_token, mask_tokens, mtp_layout
from training import (add_training_flags, all_ranks_mean, any_process_stopped, autocast_context, finish, get_batch,
                      get_lr, gradient_scaler, load_tokens, open_run, parse_with_presets, resolve_precision,
                      restore_run, save_run, settings_line, setup_processes, skipped_steps_line, stop_on_signals,
                      wrap_model)

PRESETS = {
    # Denser prediction points than the paper's N / (2 k_max): each block adds only k-1 tokens
    # to a pass that reads the whole window anyway, so more points is more signal per second.
    # prefix_loss=3.0 is our one departure from the paper's main setting (which found a prefix
    # loss did not help its 4B-8B models): our small student forgets its next-token skill
    # without it, at any learning rate that teaches it the masks in minutes (docs/notebook.md).
    # `--prefix_loss 0` is the paper.
    "cpu": dict(batch_size=8, grad_accum=1, max_iters=2400, lr=1.5e-3, min_lr=1.5e-4, warmup_iters=100, points=32,
                prefix_loss=3.0),
    "gpu": dict(batch_size=64, grad_accum=1, max_iters=4000, lr=3e-4, min_lr=3e-5, warmup_iters=200,
                prefix_loss=3.0, compile=True),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu",
                   help="a tested set of the flags below (they show its values); any flag overrides it")
    p.add_argument("--show-mask", action="store_true", help="print the layout of a small example and exit")
    p.add_argument("--teacher", default="out/teacher.pt", help="the NTP checkpoint to distill")
    p.add_argument("--out", default="out/student.pt", help="where the student goes")
    g = p.add_argument_group("what the student learns (the paper's ablations switch these)")
    g.add_argument("--k_min", type=int, default=2, help="smallest block size drawn")
    g.add_argument("--k_max", type=int, default=8, help="largest block size drawn; k_min = k_max trains a fixed k")
    g.add_argument("--points", type=int, default=0,
                   help="prediction points per window (0: N / (2 k_max), as the paper)")
    g.add_argument("--supervision", choices=["critic", "ground_truth"], default="critic",
                   help="critic: the teacher scores the student's rollout; ground_truth: plain cross-entropy "
                   "against the data (the paper's 'offline MTP' baseline)")
    g.add_argument("--teacher_readout", choices=["hard", "soft"], default="hard",
                   help="hard: the teacher's argmax as target; soft: KL to its distribution")
    g.add_argument("--prefix_loss", type=float, default=0.0,
                   help="weight of an extra NTP loss on the ground-truth positions (the paper: 0)")
    g.add_argument("--prefix_target", choices=["data", "teacher"], default="data",
                   help="the prefix loss's target: the data's next token (cross-entropy), or the teacher's "
                   "distribution there (KL: self-distillation at k=1)")
    g.add_argument("--mask_per_offset", action=argparse.BooleanOptionalAction, default=False,
                   help="one mask token per block offset (<MTP_1> .. <MTP_k-1>) instead of one <MTP> for all")
    g.add_argument("--adapter_rank", type=int, default=0,
                   help="train only a rank-r update applied at the masks (Samragh et al. 2025), the teacher's "
                   "weights frozen, so the student's k=1 is the teacher; 0: train every weight (the paper)")
    g.add_argument("--bidirectional", action=argparse.BooleanOptionalAction, default=False,
                   help="masks in a block see each other both ways (else causal)")
    add_training_flags(p, weight_decay=0.0, eval_iters=10)
    args = parse_with_presets(p, PRESETS, "cpu", argv)
    check_flags(args, positive=("k_min",), non_negative=("points", "prefix_loss", "adapter_rank"))
    if args.adapter_rank and args.prefix_loss:
        raise UserError("with --adapter_rank the real tokens keep the teacher's weights, so a prefix loss has "
                        "nothing to keep: add --prefix_loss 0")
    if not args.k_min <= args.k_max:
        raise UserError(f"need 1 <= --k_min <= --k_max, got k_min={args.k_min}, k_max={args.k_max}")
    return args


# --------------------------------------------------------------------------------------
# The layout (paper Sec. 4.2-4.4, figures 2-4): where the blocks of masks stand and what they
# see is model.mtp_layout (the bench reads a student through it too); here, which k and which
# prediction points a step trains.

def prediction_points(seq_len, k, n_points, offset):
    """M points i_m = offset + m * stride, each leaving room for k tokens after it (i_m + k < N+1)."""
    stride = max(1, seq_len // n_points)
    points = torch.arange(n_points) * stride + offset
    return points[points + k <= seq_len]


def draw_block(k_min, k_max, seq_len, n_points, k_gen, offset_gen):
    """A step's k ~ U[k_min, k_max] and its prediction points, evenly spaced from a random offset
    (paper Sec. 4.4: every block size is trained, at every place in the window)."""
    k = int(torch.randint(k_min, k_max + 1, (1,), generator=k_gen))
    stride = max(1, seq_len // n_points)
    return k, prediction_points(seq_len, k, n_points, int(torch.randint(stride, (1,), generator=offset_gen)))


def show_mask():
    """Print a small layout as text, like the paper's figures 2-4: N = 8, k = 3, points 2 and 5."""
    N, k, points = 8, 3, torch.tensor([2, 5])
    pos, mask, read = mtp_layout(N, k, points)
    names = [f"x{i}" for i in range(N)] + [f"M{m + 1}.{j}" for m in range(len(points)) for j in range(1, k)]
    print(f"Training layout: N={N} ground-truth tokens, k={k}, prediction points i = {points.tolist()}.")
    print("Each row is a query, each column a key; '#' = may attend. Masks 'Mm.j' stand at position i_m + j.\n")
    print(" " * 13 + " ".join(f"{n:>4}" for n in names))
    for r, n in enumerate(names):
        print(f"{n:>5} (pos {pos[r]:>2}) " + " ".join(f"{'#' if mask[r, c] else '.':>4}" for c in range(len(names))))
    print("\nBlock m predicts tokens i_m+1 .. i_m+k, read at slots:",
          {f"block {m + 1}": [names[s] for s in read[m].tolist()] for m in range(len(points))})
    print("The teacher reads the same layout with M m.j replaced by the student's j-th token.")


# --------------------------------------------------------------------------------------
# The critic loss (paper Sec. 3.3, eq. 2-3): the teacher scores the student's own rollout.

def distill_loss(student, teacher, x, y, k, points, mask_ids, n_vocab, prefix_loss=0.0):
    """The paper's critic loss with a hard teacher, plus our prefix loss.
    x, y: (B, N) ground-truth inputs and next tokens; k: tokens per block; points: (M,)
    prediction points; mask_ids: the student's masks by block offset (k-1 of them are used);
    n_vocab: the tokenizer's ids, which a block's tokens are; prefix_loss: the weight of plain
    NTP on the ground truth (0: the paper). The paper's ablations are this loss with one piece
    swapped (ablations.py). Returns (loss, stats: rollout_stats)."""
    logits, blocks = student_blocks(student, x, k, points, mask_ids, n_vocab)  # (B, L, V), (B, M, k, n_vocab)
    rollout = blocks.argmax(-1)                                                # (B, M, k), no gradient through it
    targets = critic(teacher, x, rollout, points, n_vocab)[1].argmax(-1)  # the teacher's next token after x + y'
    loss = F.cross_entropy(blocks.flatten(0, 2).float(), targets.flatten())
    if prefix_loss > 0:
        loss = loss + prefix_loss * prefix_cross_entropy(logits, y)
    return loss, rollout_stats(rollout, targets, blocks)


def student_blocks(student, x, k, points, mask_ids, n_vocab, bidirectional=False):
    """The student's pass over the layout: x, then a block of k-1 masks per prediction point.
    Returns its logits (B, L, V) and its predictions for each block, (B, M, k, n_vocab), read at
    i_m and at the block's masks."""
    masks = torch.tensor(mask_ids[:k - 1], dtype=x.dtype, device=x.device).expand(x.size(0), len(points), k - 1)
    logits, blocks = read_layout(student, x, masks, mtp_layout(x.size(1), k, points, bidirectional))  # masks (B, M, k-1)
    return logits, blocks[..., :n_vocab]


@torch.no_grad()
def critic(teacher, x, rollout, points, n_vocab):
    """The frozen teacher reads the layout with each block's masks replaced by the student's
    rollout y'_1 .. y'_{k-1}, causally (an NTP model; were the student's masks bidirectional, it
    would otherwise see the tokens it scores): its logits at i_m and at y'_j score token j+1.
    Returns its logits at every slot, (B, L, V), and at the blocks, (B, M, k, n_vocab) in fp32."""
    k = rollout.size(-1)
    t_all, t_blocks = read_layout(teacher, x, rollout[:, :, :k - 1], mtp_layout(x.size(1), k, points))
    return t_all, t_blocks[..., :n_vocab].float()


def read_layout(model, x, fill, layout):
    """One pass of `model` over the training layout: x (B, N), then fill (B, M, k-1) in the
    blocks' slots (the student's masks, or its rollout for the critic). Returns the logits at
    every slot, (B, L, V), and at the places block m's token j is read, (B, M, k, V)."""
    pos, mask, read = (t.to(x.device) for t in layout)
    logits, _ = model(torch.cat([x, fill.reshape(x.size(0), -1)], dim=1), pos=pos, attn_mask=mask)
    return logits, logits[:, read]


def prefix_cross_entropy(logits, y):
    """Plain NTP on the ground truth's own slots (docs/method.md: our student forgets its next-token
    skill without it), over the whole padded vocabulary, as the teacher was trained."""
    N = y.size(1)
    return F.cross_entropy(logits[:, :N].flatten(0, 1).float(), y.flatten())


@torch.no_grad()
def rollout_stats(rollout, targets, blocks):
    """The agreement of the rollout with the targets by block position, (k,), and the student's
    mean entropy at the blocks."""
    log_probs = F.log_softmax(blocks.float(), dim=-1)  # (B, M, k, n_vocab)
    return {"agreement": (rollout == targets).float().mean(dim=(0, 1)),
            "entropy": -(log_probs.exp() * log_probs).sum(-1).mean()}


# A confidence that means what tau says: one temperature per block position, fitted on the
# validation batches after training (the student's weights do not change).
TEMPERATURE_GRID = torch.logspace(-1.0, 1.0, 81)  # 0.1 .. 10, each 6% above the last


def fit_temperatures(logits, targets, grid=TEMPERATURE_GRID):
    """Temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks"), one
    temperature per block position j: T_j minimises the cross-entropy of softmax(logits / T_j)
    against the critic's targets. A position whose confidence runs ahead of how often it is
    right gets T_j > 1, which lowers its confidence; dividing by T_j leaves every argmax as it is,
    so only ConfAdapt's gate sees it (gates.calibrated_confidence).
    logits (n, k, V), targets (n, k). Returns k floats."""
    temperatures = []
    for j in range(logits.size(1)):
        z, t = logits[:, j].float(), targets[:, j]  # (n, V), (n,)
        nll = torch.stack([F.cross_entropy(z / T, t) for T in grid])  # (len(grid),)
        temperatures.append(round(float(grid[nll.argmin()]), 3))
    return temperatures


@torch.no_grad()
def validate(student, teacher, val_data, val_starts, n_points, mask_ids, n_vocab, loss_fn, args, device, autocast):
    """On fixed val batches at k = k_max: the run's loss; the agreement of the student's rollout
    with the critic's targets by block position, (k_max,), and the gate's temperatures fitted to
    them (fit_temperatures). Agreement is the critic's whatever the loss trains (ground-truth
    supervision included), so the curves of every variant compare."""
    student.eval()
    block_size = teacher.config.block_size
    gen = torch.Generator().manual_seed(0)
    losses, agree, logits, targets = [], torch.zeros(args.k_max), [], []
    for _ in range(args.eval_iters):
        x, y = get_batch(val_data, val_starts, args.batch_size, block_size, gen)
        x, y = x.to(device), y.to(device)
        points = prediction_points(block_size, args.k_max, n_points, 0)
        with autocast:
            loss, _ = loss_fn(student, teacher, x, y, args.k_max, points, mask_ids, n_vocab)
            _, blocks = student_blocks(student, x, args.k_max, points, mask_ids, n_vocab, args.bidirectional)
            critics = critic(teacher, x, blocks.argmax(-1), points, n_vocab)[1].argmax(-1)  # (B, M, k_max)
        losses.append(loss.item())
        agree += (blocks.argmax(-1) == critics).float().mean(dim=(0, 1)).cpu() / args.eval_iters
        logits.append(blocks.flatten(0, 1).cpu())  # (B M, k, n_vocab)
        targets.append(critics.flatten(0, 1).cpu())
    student.train()
    return sum(losses) / len(losses), agree, fit_temperatures(torch.cat(logits), torch.cat(targets))


def chosen_loss(args):
    """The loss this run trains: distill_loss, or with an ablation's flag, its variant (ablations.py)."""
    if (args.supervision, args.teacher_readout, args.prefix_target, args.bidirectional) == ("critic", "hard", "data",
                                                                                            False):
        return distill_loss
    from ablations import ablation_loss  # an experiment beside the method, loaded when its flag is given
    return ablation_loss(args.supervision, args.teacher_readout, args.prefix_target, args.bidirectional)


def load_teacher_and_student(path, device, seed, mask_per_offset=False, k_max=2, adapter_rank=0):
    """The frozen teacher (eval mode, no gradients), its checkpoint and tokenizer, and the
    student: a copy of it plus the <MTP> token in the first unused vocabulary slot (with
    `mask_per_offset`, k_max - 1 of them). With `adapter_rank` the student trains only its
    mask-gated adapter and the masks' embedding rows; every other weight stays the teacher's."""
    teacher_ckpt = load_checkpoint(path, kinds=("teacher",), device=device)
    teacher = model_from_checkpoint(teacher_ckpt, device)
    if k_max >= teacher.config.block_size:
        raise UserError(f"--k_max {k_max} must be smaller than the context ({teacher.config.block_size})")
    for p in teacher.parameters():
        p.requires_grad_(False)
    enc = tokenizer_from_checkpoint(teacher_ckpt)
    mask_id = enc.n_vocab  # ids below are the tokenizer's own; the slots from here on are free
    student = model_from_checkpoint(teacher_ckpt, device)
    n_masks = k_max - 1 if mask_per_offset else 1
    try:
        add_mask_token(student, mask_id, torch.Generator().manual_seed(seed), count=n_masks)
    except ValueError as e:
        raise UserError(f"{e}: train the teacher with the padded vocabulary data/prepare.py writes") from None
    if adapter_rank:  # an experiment (experiments.py)
        train_only_the_adapter(student, adapter_rank, mask_id)
    return teacher, teacher_ckpt, enc, student, mask_id


def main(args):
    procs = setup_processes(args.device, args.grad_accum)
    log = print if procs.master else (lambda *a, **k: None)
    precision_why = resolve_precision(args, procs.device)  # auto becomes bf16, fp16 or fp32 here, on every rank
    log(settings_line(args, precision=precision_why))
    torch.manual_seed(args.seed)
    teacher, teacher_ckpt, enc, student, mask_id = load_teacher_and_student(
        args.teacher, procs.device, args.seed, args.mask_per_offset, args.k_max, args.adapter_rank)
    block_size = teacher.config.block_size
    data_dir, eot_id = os.path.dirname(teacher_ckpt["tokenizer"]), enc.encode(EOT, allowed_special={EOT})[0]
    (train_data, train_starts), (val_data, val_starts) = (load_tokens(data_dir, split, eot_id, block_size)
                                                          for split in ("train", "val"))
    n_points = args.points or max(1, block_size // (2 * args.k_max))  # paper: M = N / (2 k_max)
    mask_ids = mask_tokens(mask_id, args.k_max - 1, args.mask_per_offset)  # the masks of a block, by offset
    loss_fn = partial(chosen_loss(args), prefix_loss=args.prefix_loss)

    optimizer = student.configure_optimizers(args.weight_decay, args.lr, (0.9, 0.95), procs.device_type)
    # Three independent random streams: the data, k, and the points' offset. (Drawing k and the
    # offset from one stream correlates them, so some offsets would only ever meet some k.)
    data_gen, k_gen, offset_gen = (torch.Generator().manual_seed(args.seed + i) for i in range(3))
    generators = {"data_gen": data_gen, "k_gen": k_gen, "offset_gen": offset_gen}
    scaler = gradient_scaler(args.precision, procs.device_type)  # fp16's loss scale; off for bf16 and fp32
    step, loss_log, agreement_log = 0, [], []  # the loss of every step; agreement at every validation
    ckpt = open_run(args, "student", procs, log)
    if ckpt is not None:
        student.load_state_dict(ckpt["model"])
        step, loss_log = restore_run(ckpt, optimizer, scaler, generators)
        agreement_log = ckpt["agreement_log"]
    student.train()
    raw_student, student = student, wrap_model(student, args, procs)
    autocast = autocast_context(procs.device_type, args.precision)

    def validate_and_log():  # the student's val loss and agreement now, kept in agreement_log
        val_loss, agree, temperatures = validate(raw_student, teacher, val_data, val_starts, n_points, mask_ids,
                                                 enc.n_vocab, loss_fn, args, procs.device, autocast)
        agreement_log.append({"step": step, "val_loss": val_loss, "agreement": [round(a, 4) for a in agree.tolist()],
                              "temperatures": temperatures})
        return val_loss, " ".join(f"{a:.2f}" for a in agree.tolist())

    def checkpoint(val_loss):
        save_run(args.out, raw_student, "student", teacher_ckpt["tokenizer"], step, optimizer, scaler, generators,
                 loss_log, args, mask_id=mask_id, mask_per_offset=args.mask_per_offset, k_max=args.k_max,
                 bidirectional=args.bidirectional, val_loss=val_loss,
                 agreement_log=agreement_log, temperatures=agreement_log[-1]["temperatures"])

    log(f"student: {raw_student.num_params() / 1e6:.2f}M parameters, <MTP> = id {mask_id}, k ~ U[{args.k_min}, "
        f"{args.k_max}], {n_points} prediction points per window, {args.supervision} supervision"
        + (f", {args.teacher_readout} teacher" if args.supervision == "critic" else "") + f"; distilling "
        f"{args.max_iters} steps on {procs.device}{f' x {procs.world} processes' if procs.ddp else ''} -> {args.out}")
    stop = stop_on_signals()
    bar = tqdm(total=args.max_iters, initial=step, desc="student", disable=not procs.master, dynamic_ncols=True)
    t0, first_step, evaluated_at = time.time(), step, step if args.resume else -1  # -1: validate at step 0 too
    skipped = 0  # fp16 steps whose gradients overflowed
    mine = range(procs.rank, args.grad_accum, procs.world)  # the micro-batches of this process
    while step < args.max_iters and not any_process_stopped(stop, procs):
        if step % args.eval_interval == 0 and step != evaluated_at and procs.master:
            val_loss, agreement = validate_and_log()
            bar.write(f"step {step}: val loss {val_loss:.4f}, agreement with the teacher by block position {agreement}")
            if step > 0:
                checkpoint(val_loss)

        # One optimizer step: one k and one set of prediction points for the whole global batch.
        lr = get_lr(step, args)
        for group in optimizer.param_groups:
            group["lr"] = lr
        k, points = draw_block(args.k_min, args.k_max, block_size, n_points, k_gen, offset_gen)
        x, y = get_batch(train_data, train_starts, args.batch_size * args.grad_accum, block_size, data_gen)
        loss_sum, entropy = 0.0, 0.0
        for i, micro in enumerate(mine):
            rows = slice(micro * args.batch_size, (micro + 1) * args.batch_size)
            if procs.ddp:  # all-reduce the gradients only once, after the last micro-batch
                student.require_backward_grad_sync = i == len(mine) - 1
            with autocast:
                loss, stats = loss_fn(student, teacher, x[rows].to(procs.device), y[rows].to(procs.device), k,
                                      points, mask_ids, enc.n_vocab)
            scaler.scale(loss / len(mine)).backward()  # fp16: scaled up, so small gradients stay above zero
            loss_sum += loss.item() / len(mine)
            entropy += stats["entropy"].item() / len(mine)
        if args.grad_clip > 0:
            scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
            torch.nn.utils.clip_grad_norm_(student.parameters(), args.grad_clip)
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
        bar.set_postfix(k=k, loss=f"{loss_sum:.3f}", entropy=f"{entropy:.2f}", lr=f"{lr:.1e}")
    bar.close()

    if procs.master:
        val_loss, agreement = validate_and_log()
        checkpoint(val_loss)
        seconds = time.time() - t0  # evaluations and compilation included
        log(f"{'stopped' if stop else 'done'} at step {step}: val loss {val_loss:.4f}, agreement by position "
            f"{agreement}, {(step - first_step) * args.batch_size * args.grad_accum * block_size / seconds:,.0f} "
            f"window tokens/s, {seconds / 60:.1f} min -> {args.out}"
            "\nConfAdapt's temperatures by block position (decode.py --calibrated): "
            + " ".join(f"{t:.2f}" for t in agreement_log[-1]["temperatures"])
            + skipped_steps_line(scaler, skipped, step - first_step))
    del student  # the DDP wrapper holds the process group, which finish() shuts down
    finish(bool(stop), args, procs, log)


if __name__ == "__main__":
    try:
        args = parse_args()
        show_mask() if args.show_mask else main(args)
    except UserError as e:
        sys.exit(f"error: {e}")
