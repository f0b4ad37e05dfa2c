"""
Measure decoding strategies side by side on held-out test problems.

    python bench.py                      # teacher, draft and student, 500 test problems
    python bench.py --n 100 --device cuda

For every model x strategy: exact-match accuracy on the '####' answer, tokens per forward
pass, wall-clock tokens/s, and the speed-up over the teacher's cached greedy NTP. The
strategies run interleaved, problem by problem, so a slow patch of the machine slows all of
them alike instead of deciding the ranking. Writes out/bench.json (a list of rows) and
out/bench.md, prints the table, then the rows as one JSON line.
"""
import argparse
import json
import os
import sys
import time

import torch
from tqdm import tqdm

from data.problems import final_answer, format_prompt
from data.tokenizer import EOT
from decode import generate_mtp, generate_ntp, load_for_decoding
from model import UserError, pick_device


def load_problems(path, n):
    if not os.path.exists(path):
        raise UserError(f"no test problems at {path}: run `python data/prepare.py` first")
    with open(path) as f:
        problems = [json.loads(line) for line in f if line.strip()]
    if len(problems) < n:
        print(f"note: {path} has {len(problems)} problems, fewer than --n {n}", file=sys.stderr)
    return problems[:n]


def run_bench(strategies, problems, enc, desc="bench"):
    """Run every strategy on each problem in turn. A strategy is a dict with `model`, `strategy`,
    `n` (how many of the problems it runs on) and `decode` (prompt ids -> Generation)."""
    eos_id = enc.encode(EOT, allowed_special={EOT})[0]
    for s in strategies:  # warm-up: the first call pays for allocations, not decoding
        s["decode"](enc.encode_ordinary(format_prompt(problems[0]["question"])))
        s.update(correct=0, done=0, tokens=0, seconds=0.0, tpf=0.0)
    bar = tqdm(problems, desc=desc, dynamic_ncols=True)
    for i, problem in enumerate(bar):
        prompt_ids = enc.encode_ordinary(format_prompt(problem["question"]))
        expected = final_answer(problem["answer"])
        for s in strategies:
            if i >= s["n"]:
                continue
            t0 = time.perf_counter()
            gen = s["decode"](prompt_ids)
            s["seconds"] += time.perf_counter() - t0
            text = enc.decode([t for t in gen.tokens if t != eos_id])
            s["correct"] += final_answer(text) == expected
            s["done"] += 1
            s["tokens"] += len(gen.tokens)
            s["tpf"] += gen.tokens_per_forward  # averaged per generation, as the paper does
        bar.set_postfix({f"{s['model']}/{s['strategy']}": f"{100 * s['correct'] / max(1, s['done']):.0f}%"
                         for s in strategies[:3]})
    rows = [{"model": s["model"], "strategy": s["strategy"], "n": s["done"],
             "accuracy": round(100 * s["correct"] / s["done"], 1),
             "tokens_per_forward": round(s["tpf"] / s["done"], 2),
             "tokens_per_second": round(s["tokens"] / s["seconds"], 1)} for s in strategies]
    base = rows[0]["tokens_per_second"]  # the first strategy is the baseline
    for r in rows:
        r["speedup"] = round(r["tokens_per_second"] / base, 2)
    return rows


def markdown_table(rows):
    cols = ["model", "strategy", "n", "accuracy", "tokens_per_forward", "tokens_per_second", "speedup"]
    head = ["model", "strategy", "problems", "accuracy %", "tokens/forward", "tokens/s", "speed-up"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default="out/teacher.pt")
    p.add_argument("--draft", default="out/draft.pt", help="measured too if the file exists")
    p.add_argument("--student", default="out/student.pt", help="measured too if the file exists")
    p.add_argument("--static_k", default="1,2,3,4,5", help="student: static k values")
    p.add_argument("--taus", default="0.6,0.7,0.8,0.9,0.95,0.99,0.995", help="student: ConfAdapt thresholds")
    p.add_argument("--test", default=None, help="test.jsonl (default: next to the teacher's tokenizer)")
    p.add_argument("--n", type=int, default=500, help="test problems")
    p.add_argument("--n_uncached", type=int, default=50, help="problems for the slow no-cache row")
    p.add_argument("--max_new_tokens", type=int, default=160)
    p.add_argument("--device", default="auto")
    p.add_argument("--out_dir", default="out")
    args = p.parse_args()
    if args.n < 1 or args.n_uncached < 0:
        raise UserError("--n must be >= 1 and --n_uncached >= 0")

    device = pick_device(args.device)
    torch.manual_seed(0)
    teacher, enc, ckpt = load_for_decoding(args.teacher, device, kinds=("teacher",))
    test_path = args.test or os.path.join(os.path.dirname(ckpt["tokenizer"]), "test.jsonl")
    problems = load_problems(test_path, args.n)
    eos_id = enc.encode(EOT, allowed_special={EOT})[0]

    def ntp(model, use_cache):
        return lambda ids: generate_ntp(model, ids, args.max_new_tokens, eos_id, enc.n_vocab, use_cache=use_cache)

    strategies = [dict(model="teacher", strategy="ntp greedy", n=len(problems), decode=ntp(teacher, True)),
                  dict(model="teacher", strategy="ntp greedy, no cache", n=args.n_uncached,
                       decode=ntp(teacher, False))]
    if os.path.exists(args.draft):
        draft, _, _ = load_for_decoding(args.draft, device, kinds=("draft",))
        strategies.append(dict(model="draft", strategy="ntp greedy", n=len(problems), decode=ntp(draft, True)))
    if os.path.exists(args.student):
        student, _, sckpt = load_for_decoding(args.student, device, kinds=("student",))

        def mtp(k, tau=None):
            return lambda ids: generate_mtp(student, ids, args.max_new_tokens, eos_id, enc.n_vocab,
                                            sckpt["mask_id"], k, tau)
        for k in [int(v) for v in args.static_k.split(",")]:
            strategies.append(dict(model="student", strategy=f"static k={k}", n=len(problems), decode=mtp(k)))
        for tau in [float(v) for v in args.taus.split(",")]:
            strategies.append(dict(model="student", strategy=f"ConfAdapt tau={tau}", n=len(problems),
                                   decode=mtp(sckpt["k_max"], tau)))
    print(f"benchmarking {len(strategies)} strategies on {len(problems)} problems from {test_path} on {device}")

    rows = run_bench([s for s in strategies if s["n"] > 0], problems, enc)
    os.makedirs(args.out_dir, exist_ok=True)
    table = markdown_table(rows)
    with open(os.path.join(args.out_dir, "bench.json"), "w") as f:
        json.dump(rows, f, indent=1)
    with open(os.path.join(args.out_dir, "bench.md"), "w") as f:
        f.write(f"Measured on {device} with `python bench.py --n {args.n}`.\n\n{table}\n")
    print("\n" + table + "\n")
    print(json.dumps(rows))


if __name__ == "__main__":
    try:
        main()
    except UserError as e:
        sys.exit(f"error: {e}")
