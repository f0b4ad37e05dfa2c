"""
What the two training scripts share and a reader may skip, so that train_ntp.py and
distill_mtp.py each read top to bottom as the story of one run, their loops in sight:
flags and presets, the data stream and the lr schedule, processes and precision, and never
losing work (Ctrl-C/SIGTERM save, checkpoints set aside instead of overwritten, --resume).
"""
import argparse
import contextlib
import gc
import math
import os
import shlex
import signal
import sys
from typing import NamedTuple

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from common import UserError, check_flags, load_checkpoint, pick_device, save_checkpoint

# --------------------------------------------------------------------------------------
# Flags.


def add_training_flags(parser, weight_decay, eval_iters):
    """The flags of the optimization and of the run's machinery, the same in both training
    scripts. Those without a default here take their preset's value (parse_with_presets)."""
    g = parser.add_argument_group("optimization")
    g.add_argument("--batch_size", type=int, help="sequences per micro-batch")
    g.add_argument("--grad_accum", type=int, help="micro-batches per optimizer step (split over processes)")
    g.add_argument("--max_iters", type=int, help="optimizer steps")
    g.add_argument("--lr", type=float, help="peak learning rate (AdamW)")
    g.add_argument("--min_lr", type=float, help="learning rate at the end of the cosine")
    g.add_argument("--warmup_iters", type=int, help="steps of linear warm-up")
    g.add_argument("--lr_decay_iters", type=int, default=0, help="step where the cosine ends (0: at --max_iters)")
    g.add_argument("--weight_decay", type=float, default=weight_decay, help="AdamW weight decay of the matrices")
    g.add_argument("--grad_clip", type=float, default=1.0, help="clip the gradient norm to this (0: no clipping)")
    g = parser.add_argument_group("evaluation and machinery")
    g.add_argument("--eval_interval", type=int, default=250, help="steps between validations (each saves)")
    g.add_argument("--eval_iters", type=int, default=eval_iters, help="val batches per validation")
    g.add_argument("--seed", type=int, default=1337, help="seeds every random choice of the run")
    g.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps")
    g.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False, help="torch.compile the model")
    g.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="the autocast dtype of the forward passes; auto: bf16 where the device computes it "
                   "natively (a GPU of compute capability 8.0 or more, a CPU with bf16 units), fp16 with a "
                   "gradient scaler on an older GPU (a T4, a V100), fp32 elsewhere (native_precision)")
    g.add_argument("--resume", action="store_true", help="continue from the checkpoint at --out")


def parse_with_presets(parser, presets, default_preset, argv=None):
    """Parse `argv` with the chosen preset's values as the flags' defaults: a flag given on the
    command line wins, and `--preset X --help` shows what X will run with. The training flags
    are checked before any work starts."""
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--preset", default=default_preset)
    parser.set_defaults(**presets.get(first.parse_known_args(argv)[0].preset, {}))  # unknown: parse_args says so
    args = parser.parse_args(argv)
    check_flags(args, positive=("batch_size", "grad_accum", "max_iters", "lr", "eval_interval", "eval_iters"),
                non_negative=("min_lr", "warmup_iters", "lr_decay_iters", "weight_decay", "grad_clip", "seed"))
    if args.min_lr > args.lr:
        raise UserError(f"--min_lr ({args.min_lr}) must not exceed --lr ({args.lr}): the cosine decays from lr to min_lr")
    args.lr_decay_iters = args.lr_decay_iters or args.max_iters  # 0: the cosine ends at max_iters
    return args


def settings_line(args, **why):
    """Every setting of a run, resolved (preset, then flags), for the log; `why` adds a reason
    after a setting's value, e.g. how --precision auto decided."""
    return "settings: " + " ".join(f"{k}={v}" + (f" ({why[k]})" if k in why else "") for k, v in vars(args).items())


# --------------------------------------------------------------------------------------
# The data stream.

def load_tokens(data_dir, split, eot_id, block_size):
    """The token stream of a split and the offsets where its documents start (only those with
    a full window of block_size + 1 tokens after them)."""
    path = os.path.join(data_dir, f"{split}.bin")
    if not os.path.exists(path):
        raise UserError(f"no {split} data at {path}: run `python data/prepare.py` first")
    data = np.memmap(path, dtype=np.uint16, mode="r")
    if len(data) <= block_size + 1:
        raise UserError(f"{path} has {len(data)} tokens, fewer than one window of {block_size + 1}")
    starts = np.concatenate([[0], np.flatnonzero(data == eot_id) + 1])
    return data, starts[starts < len(data) - block_size - 1]


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


# --------------------------------------------------------------------------------------
# Processes and precision.

class Processes(NamedTuple):
    """Where this process runs: under torchrun one of `world` processes, else the only one."""
    ddp: bool
    rank: int
    world: int
    local_rank: int
    device: str

    @property
    def master(self):  # rank 0 evaluates, logs and writes the checkpoint
        return self.rank == 0

    @property
    def device_type(self):
        return self.device.split(":")[0]


def setup_processes(device_arg, grad_accum):
    """Under torchrun: one process per device, nccl on GPUs and gloo on CPUs; otherwise one
    process on the chosen device."""
    if "RANK" not in os.environ:
        return Processes(False, 0, 1, 0, pick_device(device_arg))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    use_cuda = device_arg in ("auto", "cuda") and torch.cuda.is_available()
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    device = f"cuda:{local_rank}" if use_cuda else "cpu"
    if use_cuda:
        torch.cuda.set_device(device)
    if grad_accum % world:
        raise UserError(f"--grad_accum {grad_accum} must be a multiple of the {world} processes")
    return Processes(True, rank, world, local_rank, device)


def wrap_model(model, args, procs):
    """The model the training step calls: compiled if asked, inside DDP under torchrun. Keep the
    unwrapped one for evaluation and checkpoints (its parameters are the same tensors)."""
    if args.compile:
        model = torch.compile(model)
    if procs.ddp:
        model = DDP(model, device_ids=[procs.local_rank] if procs.device_type == "cuda" else None)
    return model


PRECISIONS = ("auto", "bf16", "fp16", "fp32")


def cpu_has_bf16_units():
    """Whether this CPU has bf16 instructions (AVX-512 BF16 or AMX) and oneDNN, which runs torch's
    CPU matmuls, uses them (ONEDNN_MAX_CPU_ISA=AVX2 forbids it: the way to time a CPU without)."""
    try:
        units = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
        return bool(units and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch without these probes (they are private): fp32 is safe
        return False


def native_precision(device):
    """(precision, why): what --precision auto trains `device` in. bf16 has fp32's range, so it
    needs nothing else, but only a device with bf16 units computes it fast: elsewhere it is
    emulated, and a CPU without them (most laptops: Intel Core, AMD Zen 2/3, Apple M1) runs a
    bf16 matmul 15-70x slower than fp32. A GPU from before compute capability 8.0 (T4, V100) has
    no bf16 but fast fp16 tensor cores. fp16's range is small: in the backward pass the gradients
    that flow through fp16 activations round to zero below 6e-8 and overflow above 65,504, so
    it trains with a gradient scaler (gradient_scaler)."""
    kind = device.split(":")[0]
    if kind == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        if major >= 8:
            return "bf16", f"CUDA compute capability {major}.{minor} computes bf16"
        return "fp16", f"CUDA compute capability {major}.{minor} has no bf16 (from 8.0): fp16 with a gradient scaler"
    if kind == "cpu":
        if cpu_has_bf16_units():
            return "bf16", "this CPU has bf16 units"
        return "fp32", "this CPU has no bf16 units"
    return "fp32", f"{kind}: fp32"


def resolve_precision(args, device):
    """Turn --precision auto into bf16, fp16 or fp32 for `device`; returns the reason the
    settings line shows."""
    if args.precision != "auto":
        return f"--precision {args.precision}"
    args.precision, why = native_precision(device)
    return f"auto: {why}"


def autocast_context(device_type, precision):
    """Autocast to bf16 or fp16 (matmuls in the low precision, softmax and losses in fp32), or a
    context that does nothing for fp32. The weights stay fp32 either way, and so do checkpoints."""
    if precision in ("bf16", "fp16"):
        return torch.autocast(device_type=device_type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
    return contextlib.nullcontext()


def gradient_scaler(precision, device_type):
    """fp16's gradient scaler (torch.amp.GradScaler): the loss is multiplied by a large scale
    before the backward pass, so that small gradients stay above fp16's smallest number, and
    divided out of the (fp32) weight gradients before the step. A step whose gradients
    overflowed (inf or nan) is skipped and the scale halved; after 2,000 steps without one it
    doubles. For bf16 and fp32 it is switched off: scale(), unscale_() and update() do nothing,
    and step() is optimizer.step()."""
    return torch.amp.GradScaler(device_type, enabled=precision == "fp16")


def skipped_steps_line(scaler, skipped, steps):
    """The line after a run's last one that says how many of its steps fp16 skipped ("" without fp16)."""
    if not scaler.is_enabled():
        return ""
    return f"\nfp16: {skipped} of {steps} steps skipped (gradients overflowed), loss scale now {scaler.get_scale():g}"


def memory_available(device):
    """Bytes of memory the device has (the machine's RAM for CPUs and Apple's unified memory),
    or None where it cannot be told."""
    if device.startswith("cuda"):
        return torch.cuda.mem_get_info(device)[1]
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(args, vocab_size, procs):
    """Refuse a model and batch whose training step cannot fit in memory, before any work: the
    kernel would kill the run minutes later, without a word. The activations kept for the
    backward pass grow with every token of the micro-batch: about 24 floats per layer and
    channel (the attention's and the MLP's inputs and outputs) and 2 per vocabulary entry (the
    logits and their softmax): a rough count, enough to tell a run that fits from one that
    cannot."""
    available = memory_available(procs.device)
    if available is None:
        return
    per_token = 4 * (24 * args.n_layer * args.n_embd + 2 * vocab_size)  # bytes, fp32
    sharing = int(os.environ.get("LOCAL_WORLD_SIZE", 1)) if procs.device_type != "cuda" else 1  # one RAM for all
    needed = args.batch_size * args.block_size * per_token * sharing
    if needed > available:
        raise UserError(f"--block_size {args.block_size} with --batch_size {args.batch_size} needs about "
                        f"{needed / 2**30:.0f} GiB for one training step, more than the {available / 2**30:.0f} GiB "
                        f"this machine has: use a smaller --block_size or --batch_size")


# --------------------------------------------------------------------------------------
# The learning rate, and the loss of a step over every process.

def get_lr(step, args):
    """Linear warm-up, then cosine decay to min_lr (nanoGPT)."""
    if step < args.warmup_iters:
        return args.lr * (step + 1) / args.warmup_iters
    progress = min(1.0, (step - args.warmup_iters) / max(1, args.lr_decay_iters - args.warmup_iters))
    return args.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (args.lr - args.min_lr)


def all_ranks_mean(value, device):
    """The mean of a float over every process of the run."""
    t = torch.tensor(value, device=device)
    dist.all_reduce(t)  # sum over ranks (gloo has no average)
    return t.item() / dist.get_world_size()


# --------------------------------------------------------------------------------------
# Never losing work.

def stop_on_signals():
    """A list that gets an entry on Ctrl-C (SIGINT) or SIGTERM: the loop finishes the step in
    flight, saves, and exits, instead of dying mid-write."""
    stop = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.append(True))
    return stop


def any_process_stopped(stop, procs):
    """Whether this run must stop, for every process alike. Under torchrun each process gets its
    own signal, and one may get it a step after another: if they left the loop at different
    steps, one would wait forever for the others' gradients. So all of them say whether they
    were stopped, and when any was, every `stop` gets an entry. One tiny all-reduce per step."""
    if procs.ddp:
        stopped = torch.tensor(float(bool(stop)), device=procs.device)
        dist.all_reduce(stopped)
        if stopped.item() > 0 and not stop:
            stop.append(True)
    return bool(stop)


def set_aside_existing(path):
    """A fresh run first moves a checkpoint already at `path` to `path`.old (or .old1, .old2, ...
    if that is taken): starting over by mistake, instead of --resume, must not destroy a run.
    Returns where it went, or None if there was nothing at `path`."""
    if not os.path.exists(path):
        return None
    target, n = path + ".old", 1
    while os.path.exists(target):
        target, n = f"{path}.old{n}", n + 1
    os.replace(path, target)
    return target


def open_run(args, kind, procs, log):
    """The checkpoint to continue from with --resume (checked to be this run), else None, after
    moving a checkpoint already at --out aside. Either way, the leftover of a killed write goes."""
    if procs.master and os.path.exists(args.out + ".tmp"):
        os.remove(args.out + ".tmp")
        log(f"removed {args.out}.tmp: a checkpoint write that was killed before it finished")
    if args.resume:
        ckpt = load_checkpoint(args.out, kinds=(kind,), device=procs.device)
        check_same_run(ckpt["args"], args, args.out)
        log(f"resuming {args.out} at step {ckpt['step']}")
        return ckpt
    moved_to = set_aside_existing(args.out) if procs.master else None
    if moved_to:
        log(f"moved the existing {args.out} to {moved_to} (to continue a run, use --resume)")
    return None


# Flags a resumed run may change; any other flag must be as the run began, or --resume would
# quietly continue a different run (another lr, another model, another variant).
# The machine's own settings (device, compile, precision) may change too: a run may continue elsewhere.
MAY_CHANGE_ON_RESUME = {"resume", "preset", "out", "device", "compile", "precision", "max_iters", "lr_decay_iters",
                        "eval_interval", "eval_iters"}


def check_same_run(saved, args, path):
    changed = [k for k, v in vars(args).items() if k not in MAY_CHANGE_ON_RESUME and k in saved and saved[k] != v]
    if changed:
        raise UserError(f"{path} was trained with " + ", ".join(f"--{k} {saved[k]}" for k in changed)
                        + ", not " + ", ".join(f"--{k} {getattr(args, k)}" for k in changed)
                        + ": resume with the run's own flags (shown in the log), or start a new run")


def save_run(path, raw_model, kind, tokenizer, step, optimizer, scaler, generators, loss_log, args, **extra):
    """A checkpoint that can both be decoded with and resumed from: the model, and everything
    that makes the continued run the same as one that never stopped (optimizer moments, fp16's
    loss scale, the random streams, the loss so far, the flags)."""
    save_checkpoint(path, raw_model, kind, tokenizer, step=step, optimizer=optimizer.state_dict(),
                    scaler=scaler.state_dict(),  # {} when the scaler is off (bf16, fp32)
                    **{name: g.get_state() for name, g in generators.items()}, torch_rng=torch.get_rng_state(),
                    loss_log=loss_log, args=dict(vars(args)), **extra)


def restore_run(ckpt, optimizer, scaler, generators):
    """Put a checkpoint's optimizer, loss scale and random streams back; returns (step, loss_log).
    A run that continues in fp16 after bf16 or fp32 (on another machine) starts a new scale."""
    optimizer.load_state_dict(ckpt["optimizer"])
    if scaler.is_enabled() and ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    for name, g in generators.items():
        g.set_state(ckpt[name])
    torch.set_rng_state(ckpt["torch_rng"])  # dropout's randomness, when dropout > 0
    return ckpt["step"], ckpt["loss_log"]


def resume_command(args):
    """The command line that continues this run."""
    return shlex.join(["python", *sys.argv] + ([] if args.resume else ["--resume"]))


def finish(stopped, args, procs, log):
    """End the run: close the processes' group, and after a stop say how to continue and exit
    with 130 (as a Ctrl-C would). Call it after dropping the DDP-wrapped model."""
    if stopped:
        log(f"continue with: {resume_command(args)}")
    if procs.ddp:
        # Leave together, and only once nothing holds the process group (the caller has dropped
        # its DDP wrapper): otherwise gloo can abort a process at exit ("terminate called
        # without an active exception") while another still shuts down.
        dist.barrier()
        gc.collect()  # in case the wrapper sits in a reference cycle
        dist.destroy_process_group()
    if stopped:
        sys.exit(130)
