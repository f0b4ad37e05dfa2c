"""
NTP, MTP and speculative decoding at batch sizes above 1: where each acceleration stops paying.

    python bench_batch.py                                  # make demo's models: `make batch`
    python bench_batch.py --batch_sizes 1,8 --n 64         # a quick look

bench.py decodes one problem at a time. There a pass of a small model costs about its fixed
overhead (on a GPU, about the reading of its weights), whatever the number of positions it
reads, so the k-1 extra positions of an MTP or verification pass are nearly free. In a batch a
pass carries B rows: the more rows, the more a pass costs arithmetic per position, and every
position a strategy computes without emitting a token from it costs real time: the masks and
drafts, the accepted tokens fed again, and the padding of every row to the pass's widest row
(a row that advances by its own number of tokens, as in ConfAdapt and self-speculative
decoding, makes the others wait in padding; in speculative and MTP-drafted decoding only the
drafter's passes pad, since every row's verification feeds its last token and its drafts, as
many as the others' until a row nears its end).

For each batch size B the problems are decoded B at a time (batched.py), by every strategy in
turn, batch by batch; one process with torch's threads. For each strategy and B: tokens/s
over all rows, the speed-up over NTP at the same B, tokens per pass of the model that decides,
the positions its passes computed after the prompts per token emitted (NTP: 1.0), their share
that was padding and the share that emitted nothing else (masks and drafts not emitted,
accepted tokens fed again), the drafter's positions per token where there is one, and the share
of answers identical to the strategy's batch-1 answers (in float32 a row's rounding depends a
little on its batch, so a near tie may go the other way). The first pass of a batch pads the
prompts to the longest one, the same for every strategy: reported apart. Beside it, the
same strategies modelled for an 8B target (1B draft) on one GPU (`modelled_seconds`), from the
passes this run made. Writes out/batch.{json,md,png}; prints the tables, then the rows as one
JSON line.
"""
import argparse
import json
import os
import sys
import time

import torch
from tqdm import tqdm

from batched import (generate_mtp_batch, generate_mtp_speculative_batch, generate_ntp_batch,
                     generate_self_speculative_batch, generate_speculative_batch, generate_tree_mtp_speculative_batch,
                     generate_tree_self_speculative_batch, padding_slot)
from bench import load_problems, parse_ints
from common import (HelpFormatter, UserError, check_flags, check_same_tokenizer, load_for_decoding, pick_device,
                    student_k, student_mask_ids)
from data.problems import final_answer, format_prompt
from data.tokenizer import EOT
from report import pyplot, save_figure

# --------------------------------------------------------------------------------------
# The cost model: a pass of B rows, W positions each, reading n_keys cached positions, costs the
# larger of reading (weights and KV cache) and computing (weights' and attention's FLOPs).

GPU = {"name": "H100 SXM", "bytes_per_s": 3.35e12, "flops_per_s": 989e12}  # HBM3 bandwidth, dense bf16 peak
LARGE = {  # bf16 weights; grouped-query attention: the KV cache holds n_kv_heads * head_size per layer
    "8B": {"params": 8.03e9, "n_layer": 32, "d_model": 4096, "kv_dim": 8 * 128},  # Llama-3.1-8B
    "1B": {"params": 1.24e9, "n_layer": 16, "d_model": 2048, "kv_dim": 8 * 64},   # Llama-3.2-1B
}


def modelled_seconds(passes, size, gpu=GPU, rows_scale=1.0):
    """What these passes, each (rows, width, n_keys), would take for a model of `size` (LARGE).
    Reading: the weights once per pass, each row's n_keys cached keys and values. Computing: 2
    FLOPs per weight per position, and attention's 4 * d_model per layer per (position, key).
    `rows_scale` gives each pass that many times its rows (batch sizes not measured).
    Approximations: `params` counts the input embeddings, which a pass looks up rather than
    multiplies (about 6% of an 8B model's FLOPs too many, for every strategy alike); every row
    attends to the pass's n_keys (the longest row's), as a padded batch does; and at these
    contexts (at most 256 tokens) the KV cache is a small part of the bytes read."""
    seconds = 0.0
    for rows, width, n_keys in passes:
        rows *= rows_scale
        read = 2 * size["params"] + rows * n_keys * size["n_layer"] * 2 * size["kv_dim"] * 2
        flops = rows * width * (2 * size["params"] + 4 * n_keys * size["d_model"] * size["n_layer"])
        seconds += max(read / gpu["bytes_per_s"], flops / gpu["flops_per_s"])
    return seconds


# --------------------------------------------------------------------------------------
# What the passes computed: a model wrapped in Counted counts it as the strategies run it.

class Counted:
    """A model that counts its passes: (rows, width, n_keys) of each, what the cost model reads,
    and the positions fed: the rows' own tokens (`fed`) and the padding, of the first pass (the
    prompts padded to the longest: `prompt_padded`) and of the later ones (`padded`). A pass's
    padding is what batched.RowCache parks at batched.padding_slot."""

    def __init__(self, model):
        self.model, self.config, self.lm_head = model, model.config, model.lm_head
        self.n_vocab = getattr(model, "n_vocab", None)
        self.reset()

    def reset(self):
        self.passes, self.fed, self.prompt_padded, self.padded = [], 0, 0, 0

    def __call__(self, idx, pos, attn_mask, cache, slots=None):
        rows, width = idx.shape
        real = int((pos != padding_slot(self.config)).sum())
        if self.passes:
            self.padded += rows * width - real
        else:
            self.prompt_padded = rows * width - real
        self.fed += real
        self.passes.append((rows, width, attn_mask.size(-1)))
        return self.model(idx, pos=pos, attn_mask=attn_mask, cache=cache, slots=slots)


# The strategies: each runs its models wrapped in Counted.

def build_strategies(args, teacher, draft, student, student_ckpt, eos_id):
    """[(name, the 8B-scale sizes (decider, drafter), its Counted models (decider, drafter or None),
    decode(prompts, max_new_tokens) -> a Generation per prompt)]: NTP first."""
    mtp = dict(eos_id=eos_id, mask_ids=student_mask_ids(student_ckpt))
    strategies = []

    def add(name, sizes, models, decode):  # decode(*the Counted models, prompts, max_new_tokens)
        counted = [Counted(m) for m in models]
        strategies.append((name, sizes, (counted + [None])[:2], lambda p, m: decode(*counted, p, m)))
    add("NTP", ("8B", None), [teacher], lambda t, p, m: generate_ntp_batch(t, p, m, eos_id))
    add(f"static k={args.static_k}", ("8B", None), [student],
        lambda s, p, m: generate_mtp_batch(s, p, m, k=args.static_k, **mtp))
    add(f"ConfAdapt tau={args.tau}", ("8B", None), [student],
        lambda s, p, m: generate_mtp_batch(s, p, m, k=student_ckpt["k_max"], tau=args.tau, **mtp))
    add(f"self-speculative k={args.self_k}", ("8B", None), [student],
        lambda s, p, m: generate_self_speculative_batch(s, p, m, k=args.self_k, **mtp))
    add(f"speculative gamma={args.gamma}", ("8B", "1B"), [teacher, draft],
        lambda t, d, p, m: generate_speculative_batch(t, d, p, m, eos_id, gamma=args.gamma))
    add(f"MTP-drafted k={args.mtp_k}", ("8B", "8B"), [teacher, student],
        lambda t, s, p, m: generate_mtp_speculative_batch(t, s, p, m, k=args.mtp_k, **mtp))
    k, nodes, ends = student_ckpt["k_max"], args.tree_nodes, args.tree_ends  # tree.py's, at the student's k_max
    add(f"tree self-speculative k={k} nodes={nodes} ends={ends}", ("8B", None), [student],
        lambda s, p, m: generate_tree_self_speculative_batch(s, p, m, k=k, budget=nodes, extra_ends=ends, **mtp))
    add(f"tree MTP-drafted k={k} nodes={nodes}", ("8B", "8B"), [teacher, student],
        lambda t, s, p, m: generate_tree_mtp_speculative_batch(t, s, p, m, k=k, budget=nodes, **mtp))
    return strategies


def measure(strategies, problems, enc, batch_size, max_new_tokens):
    """Every strategy over the problems, batch_size at a time, strategies interleaved batch by
    batch (a slow patch of the machine slows all alike). Returns a tally per strategy."""
    prompts = [enc.encode_ordinary(format_prompt(p["question"])) for p in problems]
    batches = [list(range(a, min(a + batch_size, len(problems)))) for a in range(0, len(problems), batch_size)]
    for _, _, _, decode in strategies:  # warm-up: the first passes at a new shape pay for allocations
        decode([prompts[i] for i in batches[0]], 4)
    tallies = [dict(seconds=0.0, tokens=0, passes=[], draft_passes=[], fed=0, padded=0, prompt_padded=0, first_pass=0,
                    prompt=0, draft_fed=0, draft_padded=0, row_passes=0, outputs=[None] * len(problems))
               for _ in strategies]
    bar = tqdm(total=len(batches) * len(strategies), desc=f"batch size {batch_size}", dynamic_ncols=True,
               mininterval=1.0)
    for rows in batches:
        for (name, _, (decider, drafter), decode), t in zip(strategies, tallies):
            for counted in (decider, drafter):
                if counted:
                    counted.reset()
            t0 = time.perf_counter()
            outs = decode([prompts[i] for i in rows], max_new_tokens)
            t["seconds"] += time.perf_counter() - t0
            for i, out in zip(rows, outs):
                t["outputs"][i] = out.tokens
                t["tokens"] += len(out.tokens)
                t["row_passes"] += out.n_forward
                t["prompt"] += len(prompts[i]) - 1  # the last prompt token predicts the first new one
            t["passes"] += decider.passes
            t["fed"] += decider.fed
            t["padded"] += decider.padded
            t["prompt_padded"] += decider.prompt_padded
            t["first_pass"] += decider.passes[0][0] * decider.passes[0][1]  # rows * width
            if drafter:
                t["draft_passes"] += drafter.passes
                t["draft_fed"] += drafter.fed
                t["draft_padded"] += drafter.padded
            bar.update()
    bar.close()
    return tallies


def summarize(strategies, tallies, batch_size, problems, enc, eos_id, alone=None):
    """One row per strategy at this batch size; `alone`: the batch-1 tallies, for the share of
    answers identical to them."""
    rows = []
    for (name, sizes, _, _), t in zip(strategies, tallies):
        n = len(problems)
        texts = [enc.decode([tok for tok in out if tok != eos_id]) for out in t["outputs"]]
        correct = sum(final_answer(text) == final_answer(p["answer"]) for text, p in zip(texts, problems))
        computed = t["fed"] - t["prompt"] + t["padded"]  # positions computed past the prompts
        drafter = t["draft_fed"] - t["prompt"] + t["draft_padded"] if sizes[1] else None
        row = {"batch_size": batch_size, "strategy": name, "n": n, "accuracy": round(100 * correct / n, 1),
               "tokens_per_second": round(t["tokens"] / t["seconds"], 1),
               "tokens_per_pass": round(t["tokens"] / t["row_passes"], 2),
               "positions_per_token": round(computed / t["tokens"], 2),
               "padding": round(100 * t["padded"] / computed, 1),
               "unused": round(100 * (t["fed"] - t["prompt"] - t["tokens"]) / computed, 1),
               "drafter_positions_per_token": None if drafter is None else round(drafter / t["tokens"], 2),
               "prompt_padding": round(100 * t["prompt_padded"] / t["first_pass"], 1),
               "identical_to_batch_1": None if alone is None else round(100 * sum(
                   a == b for a, b in zip(t["outputs"], alone[name]["outputs"])) / n, 1)}
        rows.append(row)
    base = rows[0]["tokens_per_second"]
    for r in rows:
        r["speedup"] = round(r["tokens_per_second"] / base, 2)
    return rows


def modelled(strategies, tallies_by_b, batch_sizes):
    """The speed-ups over NTP modelled for the 8B pair on GPU, at each batch size of
    `batch_sizes`: from the passes measured at that batch size, or else at the largest measured
    batch size below it, with each pass's rows scaled up (their widths as measured)."""
    table = {name: {} for name, _, _, _ in strategies}
    for b in batch_sizes:
        source = max(m for m in tallies_by_b if m <= b)  # batch size 1 is always measured
        scale = b / source
        speed = {}
        for (name, (decider, drafter), _, _), t in zip(strategies, tallies_by_b[source]):
            seconds = modelled_seconds(t["passes"], LARGE[decider], rows_scale=scale)
            if drafter:
                seconds += modelled_seconds(t["draft_passes"], LARGE[drafter], rows_scale=scale)
            speed[name] = t["tokens"] * scale / seconds
        for name in table:
            table[name][b] = round(speed[name] / speed[strategies[0][0]], 2)
    return table


def crossover(speedups):
    """The first batch size at which a strategy is slower than NTP (a speed-up below 1), or None."""
    return next((b for b, s in sorted(speedups.items()) if s < 1.0), None)


# --------------------------------------------------------------------------------------
# The outputs.

def markdown(rows, model_table, measured_cross, batch_sizes):
    def cell(value):
        return "-" if value is None else value
    lines = ["| batch | strategy | accuracy % | tokens/s | speed-up over NTP | tokens/pass | positions/token "
             "| padding % | other unused % | drafter positions/token | identical to batch 1 % |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['batch_size']} | {r['strategy']} | {r['accuracy']} | {r['tokens_per_second']:,.0f} | "
                     f"{r['speedup']} | {r['tokens_per_pass']} | {r['positions_per_token']} | {r['padding']} | "
                     f"{r['unused']} | {cell(r['drafter_positions_per_token'])} | "
                     f"{cell(r['identical_to_batch_1'])} |")
    by_b = {}
    for r in rows:
        by_b.setdefault(r["batch_size"], r)  # NTP's row: every strategy's first pass pads the same prompts
    lossless = [r for r in rows if "identical_to_ntp" in r]
    lines += ["", "The first pass of a batch pads the prompts to the longest (not in the padding column); NTP's "
              "share of padding there: " + ", ".join(f"B={b} {r['prompt_padding']}%" for b, r in by_b.items()) + ".",
              "The lossless rows' answers identical to NTP's at the same batch size: "
              + ", ".join(f"{r['strategy']} at B={r['batch_size']}: {r['identical_to_ntp']}%" for r in lossless)
              + ".", "", "Where each stops paying (the first batch size with a speed-up below 1), measured here: "
              + "; ".join(f"{name}: {'none up to ' + str(max(batch_sizes)) if b is None else b}"
                          for name, b in list(measured_cross.items())[1:]), ""]
    model_bs = sorted(next(iter(model_table.values())))
    lines += [f"Modelled, an 8B target (1B draft) on one {GPU['name']} ({GPU['bytes_per_s'] / 1e12:.2f} TB/s, "
              f"{GPU['flops_per_s'] / 1e12:.0f} TFLOP/s bf16), from this run's passes (at a batch size not "
              "measured, those of the largest measured one below it, with more rows):", "",
              "| strategy | " + " | ".join(f"B={b}" for b in model_bs) + " | stops paying at |",
              "|---|" + "---|" * (len(model_bs) + 1)]
    for name, speedups in list(model_table.items())[1:]:  # NTP, the baseline, is 1.0 throughout
        b = crossover(speedups)
        lines.append(f"| {name} | " + " | ".join(str(speedups[b2]) for b2 in model_bs)
                     + f" | {'none up to ' + str(max(model_bs)) if b is None else 'B=' + str(b)} |")
    return "\n".join(lines)


def batch_plot(rows, model_table, path, title):
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    names = list(model_table)
    for name in names:
        mine = [r for r in rows if r["strategy"] == name]
        axes[0].plot([r["batch_size"] for r in mine], [r["speedup"] for r in mine], marker="o", label=name)
        axes[1].plot(list(model_table[name]), list(model_table[name].values()), marker="o", label=name)
    for ax, label in ((axes[0], "measured here"), (axes[1], f"modelled: 8B target, 1B draft, one {GPU['name']}")):
        ax.axhline(1.0, color="black", lw=1, ls="--")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.set_ylabel("speed-up over NTP at the same batch size")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    save_figure(plt, fig, path, rect=(0, 0, 1, 0.95))


# --------------------------------------------------------------------------------------
# The command line.

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--teacher", default="out/teacher.pt", help="the NTP model: the baseline and the verifier")
    p.add_argument("--draft", default="out/draft.pt", help="the draft model of speculative decoding")
    p.add_argument("--student", default="out/student.pt", help="the MTP student")
    p.add_argument("--batch_sizes", default="1,4,16,64", help="prompts decoded at once (1 is needed: the reference)")
    p.add_argument("--static_k", type=int, default=3, help="static k's k")
    p.add_argument("--tau", type=float, default=0.9, help="ConfAdapt's threshold, with the student's k_max")
    p.add_argument("--self_k", type=int, default=4, help="self-speculative: positions read per pass")
    p.add_argument("--gamma", type=int, default=4, help="speculative: draft tokens per step")
    p.add_argument("--mtp_k", type=int, default=4, help="MTP-drafted speculative: tokens the student drafts per pass")
    p.add_argument("--tree_nodes", type=int, default=16, help="the tree strategies (tree.py, k = the student's "
                   "k_max): guesses verified per pass")
    p.add_argument("--tree_ends", type=int, default=4, help="tree self-speculative: nodes beyond the likeliest "
                   "path's end that get the next masks")
    p.add_argument("--test", default=None, help="test.jsonl (None: next to the teacher's tokenizer)")
    p.add_argument("--n", type=int, default=384, help="test problems (the first n): a multiple of every batch size "
                   "keeps every batch full")
    p.add_argument("--max_new_tokens", type=int, default=256, help="at most (the context ends generation too)")
    p.add_argument("--model_batch_sizes", default="1,4,16,64,128,256,512,1024",
                   help="batch sizes of the modelled 8B table")
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps")
    p.add_argument("--out_dir", default="out", help="where batch.{json,md,png} go")
    args = p.parse_args(argv)
    check_flags(args, positive=("static_k", "self_k", "gamma", "mtp_k", "tree_nodes", "n", "max_new_tokens"),
                non_negative=("tree_ends",))
    args.batch_sizes = sorted(set(parse_ints(args.batch_sizes, "--batch_sizes")))
    args.model_batch_sizes = sorted(set(parse_ints(args.model_batch_sizes, "--model_batch_sizes")))
    if args.batch_sizes[0] != 1:
        raise UserError("--batch_sizes must include 1: each strategy's batch-1 answers are the reference")
    if not 0 < args.tau <= 1:
        raise UserError(f"--tau must lie in (0, 1], got {args.tau}")
    return args


def main(args):
    device = pick_device(args.device)
    teacher, enc, teacher_ckpt = load_for_decoding(args.teacher, device, kinds=("teacher",))
    draft, _, draft_ckpt = load_for_decoding(args.draft, device, kinds=("draft",))
    check_same_tokenizer(teacher_ckpt, draft_ckpt, args.teacher, args.draft)
    student, _, student_ckpt = load_for_decoding(args.student, device, kinds=("student",))
    check_same_tokenizer(teacher_ckpt, student_ckpt, args.teacher, args.student)
    for flag in ("static_k", "self_k", "mtp_k"):
        student_k(getattr(args, flag), student_ckpt, args.student, "--" + flag)  # no more than it was trained for
    if student_ckpt["bidirectional"]:
        raise UserError(f"{args.student} was distilled with --bidirectional blocks; the speculative strategies draft "
                        f"with causal ones: give a causal student")
    test_path = args.test or os.path.join(os.path.dirname(teacher_ckpt["tokenizer"]), "test.jsonl")
    problems = load_problems(test_path, args.n)
    eos_id = enc.encode(EOT, allowed_special={EOT})[0]
    strategies = build_strategies(args, teacher, draft, student, student_ckpt, eos_id)
    print(f"{len(strategies)} strategies on {len(problems)} problems from {test_path} on {device} "
          f"({torch.get_num_threads()} threads), at batch sizes {', '.join(map(str, args.batch_sizes))}")

    t0, rows, tallies_by_b = time.time(), [], {}
    for b in args.batch_sizes:
        tallies_by_b[b] = measure(strategies, problems, enc, b, args.max_new_tokens)
        alone = None if b == 1 else {name: t for (name, _, _, _), t in zip(strategies, tallies_by_b[1])}
        rows += summarize(strategies, tallies_by_b[b], b, problems, enc, eos_id, alone)
    for r in rows:  # the lossless ones: identical to NTP's answers at the same batch size
        if r["strategy"].startswith(("speculative", "MTP-drafted", "tree MTP-drafted")):
            ntp = tallies_by_b[r["batch_size"]][0]["outputs"]
            mine = tallies_by_b[r["batch_size"]][[s[0] for s in strategies].index(r["strategy"])]["outputs"]
            r["identical_to_ntp"] = round(100 * sum(a == b for a, b in zip(mine, ntp)) / len(ntp), 1)
    minutes = (time.time() - t0) / 60
    measured_cross = {name: crossover({r["batch_size"]: r["speedup"] for r in rows if r["strategy"] == name})
                      for name, _, _, _ in strategies}
    model_table = modelled(strategies, tallies_by_b, args.model_batch_sizes)

    os.makedirs(args.out_dir, exist_ok=True)
    table = markdown(rows, model_table, measured_cross, args.batch_sizes)
    command = "python bench_batch.py " + " ".join(sys.argv[1:])
    with open(os.path.join(args.out_dir, "batch.md"), "w") as f:
        f.write(f"Measured on {device} ({torch.get_num_threads()} threads) with `{command.strip()}` "
                f"({minutes:.1f} min).\n\n{table}\n")
    with open(os.path.join(args.out_dir, "batch.json"), "w") as f:
        json.dump({"rows": rows, "modelled": model_table, "gpu": GPU, "crossover_measured": measured_cross}, f,
                  indent=1)
    batch_plot(rows, model_table, os.path.join(args.out_dir, "batch.png"),
               f"Speed-up over NTP as the batch grows: {len(problems)} held-out problems")
    print("\n" + table + "\n")
    print(f"{minutes:.1f} min; wrote " + ", ".join(os.path.join(args.out_dir, f"batch.{e}") for e in ("json", "md",
                                                                                                      "png")))
    print(json.dumps(rows))


if __name__ == "__main__":
    try:
        main(parse_args())
    except UserError as e:
        sys.exit(f"error: {e}")
