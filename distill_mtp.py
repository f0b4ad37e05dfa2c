"""
Distill the NTP teacher into a multi-token (MTP) student, online, with the critic loss
(Kirchenbauer et al. 2026, arXiv 2602.06019, Sec. 3.3 and 4; docs/method.md explains it).

    python distill_mtp.py                       # CPU default: out/teacher.pt -> out/student.pt
    python distill_mtp.py --preset gpu          # one GPU (torch.compile; bf16 where the GPU has it)
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
                      get_lr, load_tokens, open_run, parse_with_presets, resolve_bf16, restore_run, save_run,
                      settings_line, setup_processes, stop_on_signals, wrap_model)

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
    prefix_loss: the weight of plain NTP on the ground truth (0: the paper).
    Returns (loss, stats): the agreement of the rollout with the targets by block position,
    (k,), the student's mean entropy, and its block logits and targets (for fit_temperatures)."""
    N = x.size(1)
    logits, s_logits, layout = student_blocks(student, x, k, points, mask_ids, n_vocab)  # (B, L, V), (B, M, k, V)
    rollout = s_logits.argmax(-1)                                      # (B, M, k), no gradient through it
    t_logits, _ = teacher_scores(teacher, x, rollout, layout, n_vocab)  # (B, M, k, V)
    targets = t_logits.argmax(-1)  # the teacher's own next token after the true prefix + y'_1..y'_j
    log_probs = F.log_softmax(s_logits.float(), dim=-1)                # (B, M, k, V)
    loss = F.nll_loss(log_probs.view(-1, n_vocab), targets.reshape(-1))
    if prefix_loss > 0:  # keep plain NTP on the ground truth (docs/notebook.md: the student forgets without it)
        loss = loss + prefix_loss * F.cross_entropy(logits[:, :N].float().reshape(-1, logits.size(-1)),
                                                    y.reshape(-1))
    return loss, rollout_stats(rollout, targets, log_probs, s_logits)


def student_blocks(student, x, k, points, mask_ids, n_vocab, bidirectional=False):
    """The student's pass over the layout: x, then a block of k-1 masks per prediction point.
    Returns its logits (B, L, V), its predictions for each block (B, M, k, n_vocab), read at i_m
    and at the block's masks, and the layout (pos, mask, read) on x's device."""
    B, device = x.size(0), x.device
    pos, mask, read = (t.to(device) for t in mtp_layout(x.size(1), k, points, bidirectional))
    masks = torch.tensor(list(mask_ids[:k - 1]) * len(points), dtype=x.dtype, device=device)
    masks = masks.expand(B, -1)  # (B, M (k-1)): block after block
    logits, _ = student(torch.cat([x, masks], dim=1), pos=pos, attn_mask=mask)  # (B, L, V)
    return logits, logits[:, read][..., :n_vocab], (pos, mask, read)


@torch.no_grad()
def teacher_scores(teacher, x, rollout, layout, n_vocab):
    """The critic: the frozen teacher reads the layout with each block's masks replaced by the
    student's rollout y'_1 .. y'_{k-1}; its logits at i_m and at y'_j score token j+1.
    Returns them, (B, M, k, n_vocab) in fp32, and its logits at every slot, (B, L, V)."""
    pos, mask, read = layout
    B, M, k = rollout.shape
    proposed = rollout[:, :, :k - 1].reshape(B, M * (k - 1))  # y'_1 .. y'_{k-1} in the mask slots
    t_all, _ = teacher(torch.cat([x, proposed], dim=1), pos=pos, attn_mask=mask)  # (B, L, V)
    return t_all[:, read][..., :n_vocab].float(), t_all


@torch.no_grad()
def rollout_stats(rollout, targets, log_probs, s_logits):
    return {"agreement": (rollout == targets).float().mean(dim=(0, 1)),  # (k,) per block position
            "entropy": -(log_probs.exp() * log_probs).sum(-1).mean(),
            "logits": s_logits.detach(), "targets": targets}  # (B, M, k, V), (B, M, k): for fit_temperatures


ABLATION_DEFAULTS = dict(supervision="critic", teacher_readout="hard", prefix_target="data", bidirectional=False)


def ablation_loss(student, teacher, x, y, k, points, mask_ids, n_vocab, prefix_loss=0.0, *, supervision="critic",
                  teacher_readout="hard", prefix_target="data", bidirectional=False):
    """distill_loss with the paper's ablations and ours switched (distill_mtp.py's flags of the
    same names; make ablations): `supervision="ground_truth"` the data's tokens as targets (the
    paper's offline MTP); `teacher_readout="soft"` KL to the teacher's distribution instead of
    its argmax; `bidirectional` masks that see their whole block; `prefix_target="teacher"`
    the prefix loss as KL to the teacher at the real tokens. With none switched it is distill_loss."""
    N = x.size(1)
    logits, s_logits, layout = student_blocks(student, x, k, points, mask_ids, n_vocab, bidirectional)
    rollout = s_logits.argmax(-1)                                       # (B, M, k)
    if supervision == "critic":
        # The teacher is an NTP model: it reads the rollout causally even when the student's masks
        # see each other both ways (a bidirectional teacher would peek at the tokens it scores).
        causal = (layout[0], mtp_layout(N, k, points)[1].to(x.device), layout[2]) if bidirectional else layout
        t_logits, t_all = teacher_scores(teacher, x, rollout, causal, n_vocab)  # (B, M, k, V), (B, L, V)
        targets = t_logits.argmax(-1)
    else:  # ground truth: token j of block m is x_{i_m + j} = y_{i_m + j - 1}
        targets = y[:, points[:, None].to(x.device) + torch.arange(k, device=x.device)]  # (B, M, k)
    log_probs = F.log_softmax(s_logits.float(), dim=-1)  # (B, M, k, V)
    if supervision == "critic" and teacher_readout == "soft":
        loss = F.kl_div(log_probs, F.log_softmax(t_logits, -1), log_target=True, reduction="none").sum(-1).mean()
    else:
        loss = F.nll_loss(log_probs.view(-1, n_vocab), targets.reshape(-1))
    if prefix_loss > 0 and prefix_target == "data":
        loss = loss + prefix_loss * F.cross_entropy(logits[:, :N].float().reshape(-1, logits.size(-1)),
                                                    y.reshape(-1))
    elif prefix_loss > 0:  # the teacher's own next-token distribution at the real tokens
        with torch.no_grad():  # the ground truth sees no mask, so the critic's pass already holds it
            t_real = t_all[:, :N] if supervision == "critic" else teacher(x)[0]  # (B, N, V)
            t_real = F.log_softmax(t_real[..., :n_vocab].float(), dim=-1)
        s_real = F.log_softmax(logits[:, :N, :n_vocab].float(), dim=-1)  # (B, N, n_vocab)
        loss = loss + prefix_loss * F.kl_div(s_real, t_real, log_target=True, reduction="none").sum(-1).mean()
    return loss, rollout_stats(rollout, targets, log_probs, s_logits)


# A confidence that means what tau says: one temperature per block position, fitted on the
# validation batches after training (the student's weights do not change).
TEMPERATURE_GRID = torch.logspace(-1.0, 1.0, 81)  # 0.1 .. 10, each 6% above the last


def fit_temperatures(logits, targets, grid=TEMPERATURE_GRID):
    """Temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks"), one
    temperature per block position j: T_j minimises the cross-entropy of softmax(logits / T_j)
    against the critic's targets. A position whose confidence runs ahead of how often it is
    right gets T_j > 1, which lowers its confidence; dividing by T_j leaves every argmax as it is,
    so only ConfAdapt's gate sees it (experiments.calibrated_confidence).
    logits (n, k, V), targets (n, k). Returns k floats."""
    temperatures = []
    for j in range(logits.size(1)):
        z, t = logits[:, j].float(), targets[:, j]  # (n, V), (n,)
        nll = torch.stack([F.cross_entropy(z / T, t) for T in grid])  # (len(grid),)
        temperatures.append(round(float(grid[nll.argmin()]), 3))
    return temperatures


@torch.no_grad()
def validate(student, teacher, val_data, val_starts, n_points, mask_ids, n_vocab, loss_fn, args, device, autocast):
    """Loss, per-position agreement with the teacher, (k_max,), and the gate's temperatures
    (fit_temperatures), on fixed val batches at k = k_max. Agreement is scored against the
    teacher's argmax whatever the supervision, so the curves of every variant (ground-truth
    supervision included) compare."""
    student.eval()
    block_size = teacher.config.block_size
    gen = torch.Generator().manual_seed(0)
    losses, agree, logits, targets = [], torch.zeros(args.k_max), [], []
    for _ in range(args.eval_iters):
        x, y = get_batch(val_data, val_starts, args.batch_size, block_size, gen)
        x, y = x.to(device), y.to(device)
        points = prediction_points(block_size, args.k_max, n_points, 0)
        with autocast:
            loss, stats = loss_fn(student, teacher, x, y, args.k_max, points, mask_ids, n_vocab)
            if args.supervision != "critic":
                _, stats = ablation_loss(student, teacher, x, y, args.k_max, points, mask_ids, n_vocab,
                                         bidirectional=args.bidirectional)
        losses.append(loss.item())
        agree += stats["agreement"].cpu() / args.eval_iters
        logits.append(stats["logits"].flatten(0, 1).cpu())  # (B M, k, V)
        targets.append(stats["targets"].flatten(0, 1).cpu())
    student.train()
    return sum(losses) / len(losses), agree, fit_temperatures(torch.cat(logits), torch.cat(targets))


def load_teacher_and_student(path, device, seed, mask_per_offset=False, k_max=2, adapter_rank=0):
    """The frozen teacher (eval mode, no gradients), its checkpoint and tokenizer, and the
    student: a copy of it plus the <MTP> token in the first unused vocabulary slot (with
    `mask_per_offset`, k_max - 1 of them). With `adapter_rank` the student trains only its
    mask-gated adapter and the masks' embedding rows; every other weight stays the teacher's."""
    teacher_ckpt = load_checkpoint(path, kinds=("teacher",), device=device)
    teacher = model_from_checkpoint(teacher_ckpt, device)
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
    bf16_why = resolve_bf16(args, procs.device)  # --bf16 auto becomes True or False here, on every rank
    log(settings_line(args, bf16=bf16_why))
    torch.manual_seed(args.seed)

    teacher, teacher_ckpt, enc, student, mask_id = load_teacher_and_student(
        args.teacher, procs.device, args.seed, args.mask_per_offset, args.k_max, args.adapter_rank)
    block_size = teacher.config.block_size
    if args.k_max >= block_size:
        raise UserError(f"--k_max {args.k_max} must be smaller than the context ({block_size})")
    data_dir, eot_id = os.path.dirname(teacher_ckpt["tokenizer"]), enc.encode(EOT, allowed_special={EOT})[0]
    train_data, train_starts = load_tokens(data_dir, "train", eot_id, block_size)
    val_data, val_starts = load_tokens(data_dir, "val", eot_id, block_size)
    n_points = args.points or max(1, block_size // (2 * args.k_max))  # paper: M = N / (2 k_max)
    mask_ids = mask_tokens(mask_id, args.k_max - 1, args.mask_per_offset)  # the masks of a block, by offset
    ablations = {name: getattr(args, name) for name, default in ABLATION_DEFAULTS.items()
                 if getattr(args, name) != default}  # the flags that switch away from distill_loss
    loss_fn = partial(ablation_loss if ablations else distill_loss, prefix_loss=args.prefix_loss, **ablations)

    optimizer = student.configure_optimizers(args.weight_decay, args.lr, (0.9, 0.95), procs.device_type)
    # Three independent random streams: the data, k, and the points' offset. (Drawing k and the
    # offset from one stream correlates them, so some offsets would only ever meet some k.)
    data_gen, k_gen, offset_gen = (torch.Generator().manual_seed(args.seed + i) for i in range(3))
    generators = {"data_gen": data_gen, "k_gen": k_gen, "offset_gen": offset_gen}
    step, loss_log, agreement_log = 0, [], []  # the loss of every step; agreement at every validation
    ckpt = open_run(args, "student", procs, log)
    if ckpt is not None:
        student.load_state_dict(ckpt["model"])
        step, loss_log = restore_run(ckpt, optimizer, generators)
        agreement_log = ckpt["agreement_log"]
    student.train()
    raw_student, student = student, wrap_model(student, args, procs)
    autocast = autocast_context(procs.device_type, args.bf16)

    def validate_and_log():  # the student's val loss and agreement now, kept in agreement_log
        val_loss, agree, temperatures = validate(raw_student, teacher, val_data, val_starts, n_points, mask_ids,
                                                 enc.n_vocab, loss_fn, args, procs.device, autocast)
        agreement_log.append({"step": step, "val_loss": val_loss, "agreement": [round(a, 4) for a in agree.tolist()],
                              "temperatures": temperatures})
        return val_loss, " ".join(f"{a:.2f}" for a in agree.tolist())

    def checkpoint(val_loss):
        save_run(args.out, raw_student, "student", teacher_ckpt["tokenizer"], step, optimizer, generators, loss_log,
                 args, mask_id=mask_id, mask_per_offset=args.mask_per_offset, k_max=args.k_max,
                 bidirectional=args.bidirectional, val_loss=val_loss,
                 agreement_log=agreement_log, temperatures=agreement_log[-1]["temperatures"])

    log(f"student: {raw_student.num_params() / 1e6:.2f}M parameters, <MTP> = id {mask_id}, "
        f"k ~ U[{args.k_min}, {args.k_max}], {n_points} prediction points per window, "
        f"{args.supervision} supervision" + (f", {args.teacher_readout} teacher" if args.supervision == "critic" else ""))
    log(f"distilling {args.max_iters} steps on {procs.device}{f' x {procs.world} processes' if procs.ddp else ''}"
        f" -> {args.out}")
    stop = stop_on_signals()
    bar = tqdm(total=args.max_iters, initial=step, desc="student", disable=not procs.master, dynamic_ncols=True)
    t0, first_step = time.time(), step
    evaluated_at = step if args.resume else -1  # validate at step 0 too: the curves' first point
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
            (loss / len(mine)).backward()
            loss_sum += loss.item() / len(mine)
            entropy += stats["entropy"].item() / len(mine)
        if args.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(student.parameters(), args.grad_clip)
        optimizer.step()
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
        windows_per_second = (step - first_step) * args.batch_size * args.grad_accum / seconds
        log(f"{'stopped' if stop else 'done'} at step {step}: val loss {val_loss:.4f}, agreement by position "
            f"{agreement}, {windows_per_second * block_size:,.0f} window tokens/s, {seconds / 60:.1f} min -> {args.out}")
        log("ConfAdapt's temperatures by block position (decode.py --calibrated): "
            + " ".join(f"{t:.2f}" for t in agreement_log[-1]["temperatures"]))
    del student  # the DDP wrapper holds the process group, which finish() shuts down
    finish(bool(stop), args, procs, log)


if __name__ == "__main__":
    try:
        args = parse_args()
        show_mask() if args.show_mask else main(args)
    except UserError as e:
        sys.exit(f"error: {e}")
