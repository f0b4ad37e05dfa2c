"""
Distill the NTP teacher into a multi-token (MTP) student, online, with the critic loss
(Kirchenbauer et al. 2026, arXiv 2602.06019; ../shared/METHOD.md sections 3-4).

    python distill_mtp.py                       # CPU default: out/teacher.pt -> out/student.pt
    python distill_mtp.py --preset gpu          # one GPU (bf16, torch.compile)
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
import copy
import os
import signal
import sys
import time

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
import torch.distributed as dist
from tqdm import tqdm

from data.tokenizer import EOT
from model import (UserError, add_mask_token, discard_unfinished_write, load_checkpoint, model_from_checkpoint,
                   save_checkpoint, set_aside_existing, tokenizer_from_checkpoint)
from train_ntp import (all_ranks_mean, autocast_context, check_same_run, get_batch, get_lr, load_tokens, resume_command,
                       setup_distributed)

PRESETS = {
    # Denser prediction points than the paper's N / (2 k_max): each block adds only k-1 tokens
    # to a pass that reads the whole window anyway, so more points is more signal per second.
    # prefix_loss=3.0 is our one departure from the paper's main setting (which found a prefix
    # loss did not help its 4B-8B models): our 0.9M-parameter student forgets its next-token
    # skill without it, at any learning rate that teaches it the masks in minutes. 900 steps
    # each, 200 held-out problems (teacher: 94.0%), k = 1 accuracy / ConfAdapt(0.9) accuracy at
    # tokens per pass:  lr 5e-4, no prefix loss (the paper): 71.0 / 56.5 at 1.57;
    # lr 1e-4, none: 86.0 / 77.5 at 1.01 (learns no masks); lr 5e-4, prefix 1.0: 87.5 / 68.0
    # at 1.58 (the teacher's argmax as prefix target instead of the data's: 88.5 / 68.0);
    # lr 1.5e-3, prefix 1.0: 87.5 / 75.0 at 2.19; lr 1.5e-3, prefix 3.0: 93.5 / 77.5 at 2.16;
    # lr 3e-3, prefix 3.0: 88.0 / 71.5 at 2.37. `--prefix_loss 0` is the paper.
    "cpu": dict(batch_size=8, grad_accum=1, max_iters=2400, lr=1.5e-3, min_lr=1.5e-4, warmup_iters=100, points=32,
                prefix_loss=3.0, bf16=True),
    "gpu": dict(batch_size=64, grad_accum=1, max_iters=4000, lr=3e-4, min_lr=3e-5, warmup_iters=200,
                prefix_loss=3.0, compile=True),
}
DEFAULTS = dict(teacher="out/teacher.pt", out="out/student.pt", k_min=2, k_max=8, points=0,
                supervision="critic", teacher_readout="hard", prefix_loss=0.0, bidirectional=False,
                weight_decay=0.0, grad_clip=1.0, eval_interval=250, eval_iters=10, seed=1337,
                device="auto", compile=False, bf16=None, lr_decay_iters=0)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint at --out")
    p.add_argument("--show-mask", action="store_true", help="print the layout of a small example and exit")
    p.add_argument("--teacher", default=None, help="the NTP checkpoint to distill (default out/teacher.pt)")
    p.add_argument("--out", default=None, help="where the student goes (default out/student.pt)")
    p.add_argument("--k_min", type=int, default=None, help="smallest block size drawn (default 2)")
    p.add_argument("--k_max", type=int, default=None, help="largest block size drawn (default 8); "
                   "k_min = k_max trains a fixed k")
    p.add_argument("--points", type=int, default=None,
                   help="prediction points per window (default 0: N / (2 k_max), as the paper)")
    p.add_argument("--supervision", choices=["critic", "ground_truth"], default=None,
                   help="critic: the teacher scores the student's rollout (default); ground_truth: "
                   "plain cross-entropy against the data (the paper's 'offline MTP' baseline)")
    p.add_argument("--teacher_readout", choices=["hard", "soft"], default=None,
                   help="hard: the teacher's argmax as target (default); soft: KL to its distribution")
    p.add_argument("--prefix_loss", type=float, default=None,
                   help="weight of an extra NTP loss on the ground-truth positions (presets: 3.0; the paper: 0)")
    p.add_argument("--bidirectional", action=argparse.BooleanOptionalAction, default=None,
                   help="masks in a block see each other both ways (default: causal)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast (default: on CUDA only; CPUs with bf16 units gain too)")
    for key in ("batch_size", "grad_accum", "max_iters", "warmup_iters", "lr_decay_iters", "eval_interval",
                "eval_iters", "seed"):
        p.add_argument(f"--{key}", type=int, default=None)
    for key in ("lr", "min_lr", "weight_decay", "grad_clip"):
        p.add_argument(f"--{key}", type=float, default=None)
    p.add_argument("--device", default=None, help="auto, cpu, cuda or mps")
    args = p.parse_args(argv)
    for key, value in {**DEFAULTS, **PRESETS[args.preset]}.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.lr_decay_iters = args.lr_decay_iters or args.max_iters
    if not 1 <= args.k_min <= args.k_max:
        raise UserError(f"need 1 <= --k_min <= --k_max, got k_min={args.k_min}, k_max={args.k_max}")
    return args


# --------------------------------------------------------------------------------------
# The layout (paper Sec. 3, figures 2-4). The paper interleaves each mask block into the
# sequence; we append the blocks after it with explicit position ids. The visibility rules
# are the same, so the computation is the same, and one mask serves the whole batch.

def prediction_points(seq_len, k, n_points, offset):
    """M points i_m = offset + m * stride, each leaving room for k tokens after it (i_m + k < N+1)."""
    stride = max(1, seq_len // n_points)
    points = torch.arange(n_points) * stride + offset
    return points[points + k <= seq_len]


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
    mask[:N, :N] = torch.ones(N, N, dtype=torch.bool).tril()
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
# The critic loss.

def distill_loss(student, teacher, x, y, k, points, args, mask_id, n_vocab):
    """
    x, y: (B, N) ground-truth inputs and next tokens. Returns (loss, stats) where stats holds the
    per-block-position agreement of the rollout with the targets and the student's entropy.
    """
    B, N = x.shape
    device = x.device
    pos, mask, read = (t.to(device) for t in mtp_layout(N, k, points, args.bidirectional))
    M = len(points)
    masks = torch.full((B, M * (k - 1)), mask_id, dtype=x.dtype, device=device)
    logits, _ = student(torch.cat([x, masks], dim=1), pos=pos, attn_mask=mask)  # (B, L, V)
    s_logits = logits[:, read][..., :n_vocab]          # (B, M, k, V): the student's block predictions
    rollout = s_logits.argmax(-1)                      # (B, M, k), no gradient through the argmax

    if args.supervision == "critic":
        with torch.no_grad():
            proposed = rollout[:, :, :k - 1].reshape(B, M * (k - 1))  # y'_1 .. y'_{k-1} in the mask slots
            # The teacher is an NTP model: it reads the rollout causally even when the student's masks
            # see each other both ways (a bidirectional teacher would peek at the tokens it scores).
            t_mask = mtp_layout(N, k, points)[1].to(device) if args.bidirectional else mask
            t_logits, _ = teacher(torch.cat([x, proposed], dim=1), pos=pos, attn_mask=t_mask)
            t_logits = t_logits[:, read][..., :n_vocab].float()        # (B, M, k, V)
        targets = t_logits.argmax(-1)                                  # (B, M, k)
    else:  # ground truth: token j of block m is x_{i_m + j} = y_{i_m + j - 1}
        targets = y[:, points[:, None].to(device) + torch.arange(k, device=device)]  # (B, M, k)

    log_probs = F.log_softmax(s_logits.float(), dim=-1)  # (B, M, k, V)
    if args.supervision == "critic" and args.teacher_readout == "soft":
        loss = F.kl_div(log_probs, F.log_softmax(t_logits, -1), log_target=True, reduction="none").sum(-1).mean()
    else:
        loss = F.nll_loss(log_probs.view(-1, n_vocab), targets.reshape(-1))
    if args.prefix_loss > 0:  # optional: keep plain NTP on the ground truth (an ablation)
        loss = loss + args.prefix_loss * F.cross_entropy(logits[:, :N].float().reshape(-1, logits.size(-1)),
                                                         y.reshape(-1))
    with torch.no_grad():
        stats = {"agreement": (rollout == targets).float().mean(dim=(0, 1)),  # (k,) per block position
                 "entropy": -(log_probs.exp() * log_probs).sum(-1).mean()}
    return loss, stats


def make_student(teacher_ckpt, device, seed):
    """A copy of the teacher plus the <MTP> token in the first unused vocabulary slot."""
    enc = tokenizer_from_checkpoint(teacher_ckpt)
    mask_id = enc.n_vocab  # ids below are the tokenizer's own; the slots from here on are free
    student = model_from_checkpoint(teacher_ckpt, device)
    add_mask_token(student, mask_id, torch.Generator().manual_seed(seed))
    return student, mask_id, enc


def main(args):
    ddp, rank, world, local_rank, device = setup_distributed(args.device, args.grad_accum)
    master = rank == 0
    device_type = device.split(":")[0]
    log = print if master else (lambda *a, **k: None)
    torch.manual_seed(args.seed)

    teacher_ckpt = load_checkpoint(args.teacher, kinds=("teacher",), device=device)
    teacher = model_from_checkpoint(teacher_ckpt, device)  # frozen: eval mode, no gradients
    for p in teacher.parameters():
        p.requires_grad_(False)
    student, mask_id, enc = make_student(teacher_ckpt, device, args.seed)
    data_dir = os.path.dirname(teacher_ckpt["tokenizer"])
    eot_id = enc.encode(EOT, allowed_special={EOT})[0]
    block_size = teacher.config.block_size
    train_data, train_starts, _ = load_tokens(data_dir, "train", eot_id, block_size)
    val_data, val_starts, _ = load_tokens(data_dir, "val", eot_id, block_size)
    n_points = args.points or max(1, block_size // (2 * args.k_max))  # paper: M = N / (2 k_max)
    if args.k_max >= block_size:
        raise UserError(f"--k_max {args.k_max} must be smaller than the context ({block_size})")

    optimizer = student.configure_optimizers(args.weight_decay, args.lr, (0.9, 0.95), device_type)
    # Three independent streams (METHOD.md: the public code correlates k and the offset).
    data_gen = torch.Generator().manual_seed(args.seed)
    k_gen = torch.Generator().manual_seed(args.seed + 1)
    offset_gen = torch.Generator().manual_seed(args.seed + 2)
    step, loss_log = 0, []  # loss_log: the training loss of every step
    if master and discard_unfinished_write(args.out):
        log(f"removed {args.out}.tmp: a checkpoint write that was killed before it finished")
    if args.resume:
        ckpt = load_checkpoint(args.out, kinds=("student",), device=device)
        check_same_run(ckpt["args"], args, args.out)
        student.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        for g, name in ((data_gen, "data_gen"), (k_gen, "k_gen"), (offset_gen, "offset_gen")):
            g.set_state(ckpt[name])
        if "torch_rng" in ckpt:  # (checkpoints from before it was saved lack it)
            torch.set_rng_state(ckpt["torch_rng"])
        step, loss_log = ckpt["step"], ckpt.get("loss_log", [])
        log(f"resuming {args.out} at step {step}")
    else:
        moved_to = set_aside_existing(args.out) if master else None
        if moved_to:
            log(f"moved the existing {args.out} to {moved_to} (to continue a run, use --resume)")
    student.train()
    raw_student = student
    if args.compile:
        student = torch.compile(student)
    if ddp:
        student = DDP(student, device_ids=[local_rank] if device_type == "cuda" else None)
    autocast = autocast_context(device_type, args.bf16)

    # Agreement is always scored against the teacher's argmax, whatever the supervision, so the
    # curves of every variant (ground-truth supervision included) can be compared.
    critic_args = argparse.Namespace(**{**vars(args), "supervision": "critic", "teacher_readout": "hard"})

    @torch.no_grad()
    def validate():
        """Loss and per-position agreement with the teacher on fixed val batches at k = k_max."""
        raw_student.eval()
        gen = torch.Generator().manual_seed(0)
        losses, agree = [], torch.zeros(args.k_max)
        for _ in range(args.eval_iters):
            x, y = get_batch(val_data, val_starts, args.batch_size, block_size, gen)
            x, y = x.to(device), y.to(device)
            points = prediction_points(block_size, args.k_max, n_points, 0)
            with autocast:
                loss, stats = distill_loss(raw_student, teacher, x, y, args.k_max, points, args, mask_id, enc.n_vocab)
                if args.supervision != "critic":
                    _, stats = distill_loss(raw_student, teacher, x, y, args.k_max, points, critic_args, mask_id,
                                            enc.n_vocab)
            losses.append(loss.item())
            agree += stats["agreement"].cpu() / args.eval_iters
        raw_student.train()
        return sum(losses) / len(losses), agree

    def checkpoint(val_loss, agreement_log):
        save_checkpoint(args.out, raw_student, "student", teacher_ckpt["tokenizer"], step=step,
                        mask_id=mask_id, k_max=args.k_max, bidirectional=args.bidirectional,
                        optimizer=optimizer.state_dict(),
                        data_gen=data_gen.get_state(), k_gen=k_gen.get_state(),
                        offset_gen=offset_gen.get_state(), torch_rng=torch.get_rng_state(), loss_log=loss_log,
                        val_loss=val_loss,
                        agreement_log=agreement_log, args=dict(vars(args)))

    agreement_log = ckpt.get("agreement_log", []) if args.resume else []
    log(f"student: {raw_student.num_params() / 1e6:.2f}M parameters, <MTP> = id {mask_id}, "
        f"k ~ U[{args.k_min}, {args.k_max}], {n_points} prediction points per window, "
        f"{args.supervision} supervision{', ' + args.teacher_readout + ' teacher' if args.supervision == 'critic' else ''}")
    log(f"distilling {args.max_iters} steps on {device}{f' x {world} processes' if ddp else ''} -> {args.out}")
    stop = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.append(True))

    micro_steps = args.grad_accum // world
    bar = tqdm(total=args.max_iters, initial=step, desc="student", disable=not master, dynamic_ncols=True)
    t0, val_loss = time.time(), float("nan")
    # Validate at step 0 too (the starting agreement is the first point of the curves); a resumed
    # checkpoint was validated at its step already.
    evaluated_at = step if args.resume else -1
    while step < args.max_iters and not stop:
        if step % args.eval_interval == 0 and step != evaluated_at and master:
            val_loss, agree = validate()
            agreement_log.append({"step": step, "val_loss": val_loss, "agreement": [round(a, 4) for a in agree.tolist()]})
            bar.write(f"step {step}: val loss {val_loss:.4f}, agreement with the teacher by block position "
                      + " ".join(f"{a:.2f}" for a in agree.tolist()))
            if step > 0:
                checkpoint(val_loss, agreement_log)

        lr = get_lr(step, args)
        for group in optimizer.param_groups:
            group["lr"] = lr
        k = int(torch.randint(args.k_min, args.k_max + 1, (1,), generator=k_gen))
        stride = max(1, block_size // n_points)
        points = prediction_points(block_size, k, n_points, int(torch.randint(stride, (1,), generator=offset_gen)))
        x, y = get_batch(train_data, train_starts, args.batch_size * args.grad_accum, block_size, data_gen)
        loss_sum, entropy = 0.0, 0.0
        for i, micro in enumerate(range(rank, args.grad_accum, world)):
            xb = x[micro * args.batch_size:(micro + 1) * args.batch_size].to(device)
            yb = y[micro * args.batch_size:(micro + 1) * args.batch_size].to(device)
            if ddp:
                student.require_backward_grad_sync = i == micro_steps - 1
            with autocast:
                loss, stats = distill_loss(student, teacher, xb, yb, k, points, args, mask_id, enc.n_vocab)
            (loss / micro_steps).backward()
            loss_sum += loss.item() / micro_steps
            entropy += stats["entropy"].item() / micro_steps
        if args.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(student.parameters(), args.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if ddp:  # log the loss of the whole global batch, as one process would
            loss_sum = all_ranks_mean(loss_sum, device)
        step += 1
        loss_log.append(loss_sum)
        bar.update(1)
        bar.set_postfix(k=k, loss=f"{loss_sum:.3f}", entropy=f"{entropy:.2f}", lr=f"{lr:.1e}")
    bar.close()

    if master:
        val_loss, agree = validate()
        agreement_log.append({"step": step, "val_loss": val_loss, "agreement": [round(a, 4) for a in agree.tolist()]})
        checkpoint(val_loss, agreement_log)
        log(f"{'stopped' if stop else 'done'} at step {step}: val loss {val_loss:.4f}, agreement by position "
            + " ".join(f"{a:.2f}" for a in agree.tolist()) + f", {(time.time() - t0) / 60:.1f} min -> {args.out}")
        if stop:
            log(f"continue with: {resume_command(args)}")
    if ddp:
        dist.destroy_process_group()
    if stop:
        sys.exit(130)


if __name__ == "__main__":
    try:
        args = parse_args()
        show_mask() if args.show_mask else main(args)
    except UserError as e:
        sys.exit(f"error: {e}")
