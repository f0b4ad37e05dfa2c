"""
Every decoding strategy side by side, on the same held-out problems, in the same run.

    python bench.py                                   # everything found in out/, 400 test problems
    python bench.py --n 100 --strategies ntp,confadapt,speculative --device cuda
    python bench.py --compare out/ablations/student_*.pt  # the ablations (make ablations)

Rows: the teacher's cached NTP greedy (the baseline; and without the cache), the draft
model, the student at static k = 1..5 and ConfAdapt over a tau sweep, speculative decoding
(draft -> teacher, several gamma), self-speculative decoding (the student verifies its own
mask drafts) and MTP-drafted speculative decoding (student drafts -> teacher verifies).
For each: exact-match accuracy on the '####' answer, the share of well-formed answers and of
worked steps that are right (data/check.py: an incoherent multi-token block shows up in the
first, a model that cannot add in the second), tokens per forward pass of the model
that decides the output, accepted drafts per step, draft passes, wall-clock tokens/s, the
speed-up over the baseline, the speed-up modelled for a machine where a pass costs only the
reading of the weights (a large model at batch 1; `modelled_speedup`), with our models' sizes
and with an 8B target and a 1B draft, and for lossless strategies the share of problems whose
output is token-for-token their reference's. --compile decodes with decode.py's compiled
path. The strategies run interleaved, problem by problem, so a slow patch of the machine
slows all of them alike instead of deciding the ranking. Every accuracy comes with its 95%
interval. Writes out/bench.json (a list of rows),
out/bench.md (the table; the student's ConfAdapt and static-k curves read at matched tokens
per pass; the baseline's wrong steps by kind), out/pareto.png and out/chunks.png (ConfAdapt
answers, one shaded box per forward pass: the paper's figure 1), prints the table, then the
rows as one JSON line. With --compare it measures only static k and ConfAdapt, for
each student given, and writes out/ablations.{json,md,png} and out/agreement.png.
"""
import argparse
import json
import os
import sys
import time

import torch
from tqdm import tqdm

from data.check import check_answer, step_kind
from data.problems import final_answer, format_prompt
from data.tokenizer import EOT
from decode import (check_same_tokenizer, generate_mtp, generate_mtp_speculative, generate_ntp,
                    generate_self_speculative, generate_speculative, load_for_decoding, student_k)
from model import HelpFormatter, UserError, check_flags, pick_device


def load_problems(path, n):
    if not os.path.exists(path):
        raise UserError(f"no test problems at {path}: run `python data/prepare.py` first")
    with open(path) as f:
        problems = [json.loads(line) for line in f if line.strip()]
    if len(problems) < n:
        print(f"note: {path} has {len(problems)} problems, fewer than --n {n}", file=sys.stderr)
    return problems[:n]


def run_bench(strategies, problems, enc):
    """Run every strategy on each problem in turn. A strategy is a dict with `model`, `strategy`,
    `family` (the curve it belongs to: "ntp", "static k", "ConfAdapt", ...), `n` (how many of the
    problems it runs on), `decode` (prompt ids -> Generation), `sizes` (parameters of the model
    whose passes are Generation.n_forward and of the one making n_draft_forward, for
    modelled_speedup), `large` (the same two as a large pair would have them) and optionally
    `reference` (the `model/strategy` whose output it promises to reproduce token for token) and
    `tau` (ConfAdapt). The first strategy is the baseline of the speed-ups."""
    eos_id = enc.encode(EOT, allowed_special={EOT})[0]
    for s in strategies:  # warm-up: the first call pays for allocations, not decoding
        s["decode"](enc.encode_ordinary(format_prompt(problems[0]["question"])))
        s.update(correct=0, tokens=0, seconds=0.0, tpf=0.0, forwards=0, draft_forwards=0, outputs=[], chunks=[],
                 steps=0, accepted=0, proposed_at=[], accepted_at=[], well_formed=0, worked=0, worked_right=0,
                 step_kinds={})
    bars = [tqdm(total=s["n"], desc=f"{s['model']} {s['strategy']}"[:36].ljust(36), position=i, leave=True,
                 dynamic_ncols=True, mininterval=1.0) for i, s in enumerate(strategies)]
    for i, problem in enumerate(problems):
        prompt_ids = enc.encode_ordinary(format_prompt(problem["question"]))
        expected = final_answer(problem["answer"])
        for s, bar in zip(strategies, bars):
            if i >= s["n"]:
                continue
            t0 = time.perf_counter()
            gen = s["decode"](prompt_ids)
            s["seconds"] += time.perf_counter() - t0
            answer = enc.decode([t for t in gen.tokens if t != eos_id])
            s["correct"] += final_answer(answer) == expected
            checked = check_answer(problem["question"], answer)  # data/check.py
            s["well_formed"] += checked.well_formed
            s["worked"] += len(checked.steps)
            s["worked_right"] += checked.steps_right
            for a, op, b, _, right in checked.steps:  # wrong steps by kind ("* 2d x 1d -> 3d")
                wrong_total = s["step_kinds"].setdefault(step_kind(a, op, b), [0, 0])
                wrong_total[0] += not right
                wrong_total[1] += 1
            s["outputs"].append(gen.tokens)
            s["chunks"].append(gen.chunks)
            s["tokens"] += len(gen.tokens)
            s["tpf"] += gen.tokens_per_forward  # averaged per generation, as the paper does
            s["forwards"] += gen.n_forward
            s["draft_forwards"] += gen.n_draft_forward
            for drafted, accepted in zip(gen.drafted, gen.accepted):  # speculative strategies only
                s["steps"] += 1
                s["accepted"] += accepted
                for j in range(drafted):  # acceptance by draft position: drafts past a rejection count as rejected
                    if j == len(s["proposed_at"]):
                        s["proposed_at"].append(0)
                        s["accepted_at"].append(0)
                    s["proposed_at"][j] += 1
                    s["accepted_at"][j] += j < accepted
            bar.update()
            bar.set_postfix(accuracy=f"{100 * s['correct'] / len(s['outputs']):.1f}%", refresh=False)
    for bar in bars:
        bar.close()
    return summarize(strategies)


def summarize(strategies):
    """One row of results per strategy (what bench.json holds), from run_bench's tallies."""
    outputs = {f"{s['model']}/{s['strategy']}": s["outputs"] for s in strategies}
    rows = []
    for s in strategies:
        done = len(s["outputs"])
        row = {"model": s["model"], "strategy": s["strategy"], "family": s["family"],
               "n": done, "accuracy": round(100 * s["correct"] / done, 1),
               "accuracy_95": wilson_interval(s["correct"], done),
               "well_formed": round(100 * s["well_formed"] / done, 1),
               "steps_right": round(100 * s["worked_right"] / max(1, s["worked"]), 1),
               "step_kinds": s["step_kinds"],
               "tokens_per_forward": round(s["tpf"] / done, 2),
               "forwards": round(s["forwards"] / done, 1), "draft_forwards": round(s["draft_forwards"] / done, 1),
               "accepted_per_step": round(s["accepted"] / s["steps"], 2) if s["steps"] else None,
               "acceptance_by_position": [round(a / p, 3) for a, p in zip(s["accepted_at"], s["proposed_at"])],
               "tokens_per_second": round(s["tokens"] / s["seconds"], 1), "identical": None}
        reference = outputs.get(s.get("reference"))
        if reference is not None:  # lossless strategies: the share of outputs equal to their reference
            row["identical"] = round(100 * sum(a == b for a, b in zip(s["outputs"], reference)) / done, 1)
        rows.append(row)
    base = rows[0]["tokens_per_second"]
    for r, s in zip(rows, strategies):
        r["speedup"] = round(r["tokens_per_second"] / base, 2)
        for column, sizes, teacher_size in (("modelled_ours", s["sizes"], strategies[0]["sizes"][0]),
                                            ("modelled_large", s["large"], strategies[0]["large"][0])):
            r[column] = round(modelled_speedup(s["tokens"], s["forwards"], s["draft_forwards"], *sizes,
                                               teacher_size), 2)
    return rows


# A named large pair for the modelled column: an 8B target (teacher, and a student distilled
# from it) with a 1B draft model, the sizes of Llama-3.1-8B and Llama-3.2-1B.
LARGE_PAIR = {"teacher": 8e9, "student": 8e9, "draft": 1e9}


def modelled_speedup(tokens, forwards, draft_forwards, target_size, drafter_size, teacher_size):
    """The speed-up a large model would see at batch 1, where a forward pass costs the time to
    read the weights (memory-bound), whatever the number of positions it reads (so the
    student's extra <MTP> positions, and a whole no-cache re-read, are nearly free): tokens
    emitted per parameter read, over the teacher's NTP (one token per teacher-sized read).
    A pass of the target reads target_size parameters, a pass of the drafter drafter_size."""
    parameters_read = forwards * target_size + draft_forwards * drafter_size
    return tokens / (parameters_read / teacher_size)


def wilson_interval(correct, n, z=1.96):
    """The 95% interval of an accuracy measured as correct / n (Wilson's score interval for a
    binomial proportion), in percent. Two rows whose intervals overlap are not told apart."""
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * (p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5 / (1 + z * z / n)
    return [round(100 * max(0.0, centre - half), 1), round(100 * min(1.0, centre + half), 1)]


def with_interval(row):
    """'82.8 (78.7-86.1)': a row's accuracy % and its 95% interval."""
    return f"{row['accuracy']} ({row['accuracy_95'][0]}-{row['accuracy_95'][1]})"


def accuracy_at(rows, tokens_per_forward):
    """Accuracy read off a curve (rows of one model and family) at a given tokens per forward pass,
    interpolated linearly between its two nearest points; None outside the curve."""
    points = sorted((r["tokens_per_forward"], r["accuracy"]) for r in rows)
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 <= tokens_per_forward <= x1:
            return round(y0 + (y1 - y0) * (tokens_per_forward - x0) / max(x1 - x0, 1e-9), 1)
    return None


def student_curves(rows, model):
    """A student's two curves of accuracy against tokens per forward pass: its ConfAdapt rows
    (tau moving) and its static-k rows (k moving)."""
    return {family: [r for r in rows if r["model"] == model and r["family"] == family]
            for family in ("ConfAdapt", "static k")}


def matched_table(rows, model="student", matched=(1.5, 2.0, 2.5, 3.0, 3.5)):
    """The student's ConfAdapt and static-k curves read at the same tokens per forward pass: the
    paper's Pareto comparison, without comparing a tau to a k."""
    curves = student_curves(rows, model)
    if not all(curves.values()):
        return ""
    lines = [f"Accuracy % of the {model}'s curves at matched tokens per forward pass (linear between rows; "
             "- outside the curve):", "", "| tokens/forward | " + " | ".join(str(m) for m in matched) + " |",
             "|---|" + "---|" * len(matched)]
    for family, curve in curves.items():
        cells = [accuracy_at(curve, m) for m in matched]
        lines.append(f"| {family} | " + " | ".join("-" if c is None else str(c) for c in cells) + " |")
    return "\n".join(lines)


def markdown_table(rows):
    cols = ["model", "strategy", "n", "accuracy", "well_formed", "steps_right", "tokens_per_forward",
            "accepted_per_step", "draft_forwards", "tokens_per_second", "speedup", "modelled_ours", "modelled_large",
            "identical"]
    head = ["model", "strategy", "problems", "accuracy % (95% interval)", "well-formed %", "steps right %", "tokens/forward",
            "accepted drafts/step", "draft passes/problem", "tokens/s", "speed-up", "modelled speed-up, our sizes",
            "modelled speed-up, 8B + 1B", "identical to reference %"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = {**r, "draft_forwards": r["draft_forwards"] or None,
                 "accuracy": with_interval(r)}
        lines.append("| " + " | ".join("" if cells[c] is None else str(cells[c]) for c in cols) + " |")
    return "\n".join(lines)


def step_table(row):
    """Which worked steps a row gets wrong, by operator and digits (data/check.py's step_kind)."""
    lines = [f"Worked steps of {row['model']} {row['strategy']}, by kind:", "",
             "| step | count | wrong % |", "|---|---|---|"]
    for kind, (wrong, total) in sorted(row["step_kinds"].items()):
        lines.append(f"| `{kind}` | {total} | {100 * wrong / total:.1f} |")
    return "\n".join(lines)


def pyplot():
    """matplotlib's pyplot, drawing to files only (no screen needed); imported when a plot is made."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(plt, fig, path, rect=(0, 0, 1, 1)):
    fig.tight_layout(rect=rect)
    fig.savefig(path, dpi=120)
    plt.close(fig)


FAMILY_STYLE = {  # how each family is drawn in the Pareto picture
    "ntp": ("black", "o"), "static k": ("tab:red", "s"), "ConfAdapt": ("tab:blue", "D"),
    "speculative": ("tab:green", "^"), "self-speculative": ("tab:purple", "v"),
    "MTP-drafted speculative": ("tab:orange", "P"),
}


def pareto_plot(rows, path, title):
    """Accuracy against acceleration, one marker per row, like the paper's figure 5: by tokens per
    forward pass (the paper's x-axis); by wall-clock speed-up, measured (filled) and modelled for
    our sizes (hollow: what this machine would give if a pass cost only reading the weights); and
    modelled for an 8B target with a 1B draft."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(17, 5), sharey=True)
    panels = ((axes[0], "tokens_per_forward", None, "tokens per forward pass (of the model that decides)"),
              (axes[1], "speedup", "modelled_ours", "speed-up over teacher NTP greedy: measured (filled), "
               "modelled (hollow)"),
              (axes[2], "modelled_large", None, "modelled speed-up, 8B target + 1B draft, batch 1"))
    for ax, x, hollow, label in panels:
        for family, (color, marker) in FAMILY_STYLE.items():
            fam = [r for r in rows if r["family"] == family and r["strategy"] != "ntp greedy, no cache"]
            if not fam:
                continue
            if family in ("static k", "ConfAdapt"):  # a curve: the same model as k or tau moves
                ax.plot([r[x] for r in fam], [r["accuracy"] for r in fam], color=color, alpha=0.4)
            ax.scatter([r[x] for r in fam], [r["accuracy"] for r in fam], color=color, marker=marker, label=family)
            if hollow:
                ax.scatter([r[hollow] for r in fam], [r["accuracy"] for r in fam], facecolors="none",
                           edgecolors=color, marker=marker)
            for r in fam:
                tag = r["model"] if family == "ntp" else r["strategy"].split(" ")[-1]  # k=3, tau=0.9, gamma=2
                ax.annotate(tag.replace("tau=", "").replace("gamma", "γ"), (r[x], r["accuracy"]), fontsize=7,
                            xytext=(3, 3), textcoords="offset points", color=color)
        ax.axvline(1.0, color="grey", lw=0.5)
        ax.set_xlabel(label, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy on held-out problems (%)")
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    save_figure(plt, fig, path)


def chunk_texts(enc, tokens, sizes, eos_id):
    """A generation's tokens cut into its passes' chunks: [(text, tokens in the pass)], EOS dropped."""
    texts, start = [], 0
    for size in sizes:
        texts.append((enc.decode([t for t in tokens[start:start + size] if t != eos_id]), size))
        start += size
    return texts


def chunks_plot(examples, path, title, cols=96, fontsize=8):
    """The paper's figure 1: held-out answers as a student wrote them, each forward pass's tokens
    on one shaded box, darker the more tokens the pass emitted. examples: a list of (question,
    [(text, tokens) of each pass's chunk], tokens in all). NTP needs one pass per token of the same text."""
    import textwrap
    from matplotlib.patches import Rectangle
    lines = []  # (plain text, its colour, [(col, text, tokens in its pass)]) per line of the picture
    for question, chunks, n_tokens in examples:
        n_passes = len(chunks)
        lines.append((f"{n_tokens} tokens in {n_passes} passes ({n_tokens / n_passes:.2f} per pass); "
                      f"NTP greedy needs {n_tokens} passes for them", "tab:blue", []))
        lines += [(text, "black", []) for text in textwrap.wrap("Question: " + question, cols)]
        segments, col = [], 0
        for text, size in chunks:
            for i, part in enumerate(text.split("\n")):
                if i > 0:  # a newline inside the chunk: the rest starts a line of its own
                    lines.append(("", None, segments))
                    segments, col = [], 0
                while part:
                    room = cols - col
                    if room == 0:
                        lines.append(("", None, segments))
                        segments, col = [], 0
                        room = cols
                    piece, part = part[:room], part[room:]
                    segments.append((col, piece, size))
                    col += len(piece)
        lines += [("", None, segments), ("", None, [])]
    plt = pyplot()
    char_w, line_h = 0.602 * fontsize / 72, 1.45 * fontsize / 72  # inches: DejaVu Sans Mono's advance, a line
    fig = plt.figure(figsize=((cols + 2) * char_w, (len(lines) + 2) * line_h))
    ax = fig.add_axes([0, 0, 1, 1])
    ax.set_xlim(-1, cols + 1)
    ax.set_ylim(len(lines) + 1.5, -0.5)
    ax.axis("off")
    ax.text(0, 0, title, fontsize=fontsize + 1, fontweight="bold", va="center")
    shade = plt.cm.Blues
    for row, (text, color, segments) in enumerate(lines, start=1):
        if text:
            ax.text(0, row, text, fontsize=fontsize, va="center", family="monospace", color=color)
        for col, piece, size in segments:
            ax.add_patch(Rectangle((col, row - 0.45), len(piece), 0.9, facecolor=shade(0.15 + 0.1 * min(size, 8)),
                                   edgecolor="white", linewidth=0.8))
            ax.text(col, row, piece, fontsize=fontsize, va="center", family="monospace",
                    color="white" if size >= 5 else "black")
    fig.savefig(path, dpi=150)
    plt.close(fig)


# --------------------------------------------------------------------------------------
# --compare: the paper's ablations, one curve per distilled student (make ablations).

def variant_name(path):
    """out/ablations/student_ground_truth.pt -> ground_truth"""
    name = os.path.splitext(os.path.basename(path))[0]
    return name[len("student_"):] if name.startswith("student_") else name


def comparison_table(rows, students, matched=(1.5, 2.0, 2.5, 3.0)):
    """One line per variant: accuracy % with its 95% interval and well-formed % at k = 1 and at
    ConfAdapt tau = 0.9 (with its tokens per forward), then the accuracy of its ConfAdapt and its
    static-k curves read at matched tokens per forward (a variant that emits more tokens per pass
    at one tau is compared at the same speed, not the same tau), then its last validation
    agreement with the teacher by block position."""
    def cell(r):
        return f"{with_interval(r)}, {r['well_formed']}" if r else ""

    head = (["variant", "k=1: acc (95%), well-formed", "tau=0.9: acc (95%), well-formed", "tau=0.9: tokens/forward"]
            + [f"at {m} tokens/forward: ConfAdapt / static k" for m in matched]
            + ["val agreement with teacher by position"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, ckpt in students.items():
        mine = {r["strategy"]: r for r in rows if r["model"] == name}
        k1, tau = mine.get("static k=1"), mine.get("ConfAdapt tau=0.9")
        curves = student_curves(rows, name).values()
        line = [name, cell(k1), cell(tau), str(tau["tokens_per_forward"]) if tau else ""]
        for m in matched:
            line.append(" / ".join("-" if a is None else str(a) for a in (accuracy_at(c, m) for c in curves)))
        line.append(" ".join(f"{a:.2f}" for a in ckpt["agreement_log"][-1]["agreement"]))
        lines.append("| " + " | ".join(line) + " |")
    return "\n".join(lines)


def ablation_plot(rows, path, title):
    """Accuracy against tokens per forward, a colour per variant: ConfAdapt as a solid curve
    over tau, static k as a dashed one; the teacher as a black star."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 5.5))
    teacher = rows[0]
    ax.scatter([1.0], [teacher["accuracy"]], color="black", marker="*", s=120, label="teacher NTP", zorder=3)
    variants = list(dict.fromkeys(r["model"] for r in rows[1:]))
    for variant, color in zip(variants, plt.cm.tab10.colors):
        for family, style, marker in (("ConfAdapt", "-", "o"), ("static k", "--", "s")):
            fam = [r for r in rows if r["model"] == variant and r["family"] == family]
            ax.plot([r["tokens_per_forward"] for r in fam], [r["accuracy"] for r in fam], style, marker=marker,
                    color=color, markersize=4, label=f"{variant} ({family})")
    ax.set_xlabel("tokens per forward pass")
    ax.set_ylabel("accuracy on held-out problems (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(title)
    save_figure(plt, fig, path)


def agreement_plot(students, path):
    """The per-position agreement with the teacher that distill_mtp.py logged at every validation:
    a panel per block position j, a line per variant. The critic trains exactly this quantity."""
    plt = pyplot()
    k_max = max(len(c["agreement_log"][0]["agreement"]) for c in students.values())
    cols = 4
    fig, axes = plt.subplots((k_max + cols - 1) // cols, cols, figsize=(12, 3 * ((k_max + cols - 1) // cols)),
                             sharex=True, sharey=True, squeeze=False)
    for (name, ckpt), color in zip(students.items(), plt.cm.tab10.colors):
        log = ckpt["agreement_log"]
        for j in range(len(log[0]["agreement"])):
            axes.flat[j].plot([e["step"] for e in log], [e["agreement"][j] for e in log], color=color,
                              label=name if j == 0 else None)
    for j, ax in enumerate(axes.flat):
        ax.set_title(f"block position {j + 1}" + (" (the next token)" if j == 0 else ""), fontsize=9)
        ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("distillation step")
    for ax in axes[:, 0]:
        ax.set_ylabel("agreement with teacher")
    fig.legend(loc="lower center", ncol=len(students), fontsize=8)
    save_figure(plt, fig, path, rect=(0, 0.06, 1, 1))  # room below for the legend


# --------------------------------------------------------------------------------------

STRATEGIES = ["ntp", "no_cache", "draft", "static", "confadapt", "speculative", "self_speculative", "mtp_speculative"]


def parse_ints(text, flag):
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise UserError(f"{flag} takes comma-separated integers, got {text!r}") from None
    if min(values) < 1:
        raise UserError(f"{flag} values must be >= 1, got {text!r}")
    return values


def parse_taus(text):
    try:
        taus = [float(v) for v in text.split(",")]
    except ValueError:
        raise UserError(f"--taus takes comma-separated numbers in (0, 1], got {text!r}") from None
    if not all(0 < t <= 1 for t in taus):
        raise UserError(f"every ConfAdapt tau must lie in (0, 1], got {text!r}")
    return taus


def parse_args(argv=None):
    """The flags, every number among them checked before anything is loaded."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--teacher", default="out/teacher.pt", help="the NTP model: the baseline and the verifier")
    p.add_argument("--draft", default="out/draft.pt", help="measured too if the file exists")
    p.add_argument("--student", default="out/student.pt", help="measured too if the file exists")
    p.add_argument("--compare", nargs="+", metavar="STUDENT",
                   help="ablations: static k and ConfAdapt rows for each of these students (named by their file: "
                   "student_NAME.pt), written to ablations.{json,md,png} and agreement.png instead")
    p.add_argument("--strategies", default=",".join(STRATEGIES),
                   help="which families to run (the teacher's cached NTP greedy always runs: it is the baseline)")
    p.add_argument("--static_k", default="1,2,3,4,5", help="student: static k values (k=1 is the student's NTP)")
    p.add_argument("--taus", default="0.6,0.8,0.9,0.95,0.99", help="student: ConfAdapt thresholds")
    p.add_argument("--gammas", default="2,4", help="speculative: draft tokens per step")
    p.add_argument("--self_k", default="4", help="self-speculative: positions read per pass")
    p.add_argument("--mtp_k", default="4", help="MTP-drafted speculative: tokens the student drafts per pass")
    p.add_argument("--test", default=None, help="test.jsonl (None: next to the teacher's tokenizer)")
    p.add_argument("--n", type=int, default=400, help="test problems (400: the default run fits in 10 CPU minutes)")
    p.add_argument("--n_uncached", type=int, default=50, help="problems for the slow no-cache row")
    p.add_argument("--max_new_tokens", type=int, default=256, help="at most (the context ends generation too)")
    p.add_argument("--n_chunks", type=int, default=3, help="held-out answers drawn in chunks.png")
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps")
    p.add_argument("--compile", action="store_true", help="every strategy decodes with fixed-shape passes through "
                   "torch.compile (decode.py --compile): the same tokens; faster on a GPU, we expect, but "
                   "slower on our 2-core CPU (README)")
    p.add_argument("--out_dir", default="out", help="where the results go")
    args = p.parse_args(argv)
    check_flags(args, positive=("n", "max_new_tokens"), non_negative=("n_uncached", "n_chunks"))
    args.strategies = args.strategies.split(",")
    unknown = sorted(set(args.strategies) - set(STRATEGIES))
    if unknown:
        raise UserError(f"unknown strategies {', '.join(unknown)}: choose from {', '.join(STRATEGIES)}")
    args.static_k, args.taus = parse_ints(args.static_k, "--static_k"), parse_taus(args.taus)
    args.gammas, args.self_k = parse_ints(args.gammas, "--gammas"), parse_ints(args.self_k, "--self_k")
    args.mtp_k = parse_ints(args.mtp_k, "--mtp_k")
    return args


def build_strategies(args, teacher, ckpt, n, common, device):
    """The strategies to run (run_bench's dicts), the teacher's cached NTP greedy first: the
    baseline of every speed-up. Returns (strategies, {variant name: checkpoint} for --compare)."""
    chosen = set(args.strategies)
    TEACHER = "teacher/ntp greedy"  # the reference of the lossless strategies that verify with the teacher
    sizes = {"teacher": teacher.num_params()}  # and the draft's and student's, once loaded

    def row(model, strategy, family, decode, target, drafter=None, reference=None, n=n, tau=None, target_size=None):
        """target: "teacher", "draft" or "student", whose passes decide the output; drafter: the one
        that only proposes (its passes are the draft passes)."""
        return dict(model=model, strategy=strategy, family=family, n=n, decode=decode, reference=reference, tau=tau,
                    sizes=(target_size or sizes[target], sizes.get(drafter, 0)),
                    large=(LARGE_PAIR[target], LARGE_PAIR.get(drafter, 0)))

    def mtp_rows(model, student, sckpt, static_k, taus):
        """A student's static-k and ConfAdapt rows."""
        mtp = dict(mask_id=sckpt["mask_id"], bidirectional=sckpt["bidirectional"], **common)
        size = student.num_params()
        return ([row(model, f"static k={k}", "static k", lambda ids, k=k: generate_mtp(
                    student, ids, k=k, **mtp), "student", target_size=size) for k in static_k]
                + [row(model, f"ConfAdapt tau={tau}", "ConfAdapt", lambda ids, tau=tau: generate_mtp(
                    student, ids, k=sckpt["k_max"], tau=tau, **mtp), "student", tau=tau, target_size=size)
                   for tau in taus])

    def load_student(path):
        student, _, sckpt = load_for_decoding(path, device, kinds=("student",))
        check_same_tokenizer(ckpt, sckpt, args.teacher, path)
        for k in args.static_k:
            student_k(k, sckpt, path, "--static_k")  # no more positions than it was trained for
        if sckpt["step"] < sckpt["args"]["max_iters"]:
            print(f"note: {path} stopped at step {sckpt['step']} of {sckpt['args']['max_iters']}: finish it with "
                  f"--resume and the flags it was started with", file=sys.stderr)
        return student, sckpt

    strategies = [row("teacher", "ntp greedy", "ntp", lambda ids: generate_ntp(teacher, ids, **common), "teacher")]
    students = {}
    if args.compare:
        for path in args.compare:
            name = variant_name(path)
            if name in students:
                raise UserError(f"two students are named {name!r}: --compare needs distinct file names")
            student, students[name] = load_student(path)
            strategies += mtp_rows(name, student, students[name], args.static_k, args.taus)
        return strategies, students

    if "no_cache" in chosen and args.n_uncached:
        strategies.append(row("teacher", "ntp greedy, no cache", "ntp", reference=TEACHER, n=min(n, args.n_uncached),
                              decode=lambda ids: generate_ntp(teacher, ids, use_cache=False, **common),
                              target="teacher"))
    draft = student = None
    if os.path.exists(args.draft) and {"draft", "speculative"} & chosen:
        draft, _, dckpt = load_for_decoding(args.draft, device, kinds=("draft",))
        check_same_tokenizer(ckpt, dckpt, args.teacher, args.draft)
        sizes["draft"] = draft.num_params()
    if os.path.exists(args.student) and {"static", "confadapt", "self_speculative", "mtp_speculative"} & chosen:
        student, sckpt = load_student(args.student)
        mask_id = sckpt["mask_id"]
        sizes["student"] = student.num_params()
    if draft is not None and "draft" in chosen:
        strategies.append(row("draft", "ntp greedy", "ntp", lambda ids: generate_ntp(draft, ids, **common), "draft"))
    if student is not None:
        static_k = args.static_k if "static" in chosen else []
        strategies += mtp_rows("student", student, sckpt, static_k, args.taus if "confadapt" in chosen else [])
        if "self_speculative" in chosen:
            if 1 not in static_k:  # its reference: the student's own k=1 greedy output
                strategies += mtp_rows("student", student, sckpt, [1], [])
            for k in args.self_k:
                strategies.append(row("student", f"self-speculative k={k}", "self-speculative",
                                      lambda ids, k=k: generate_self_speculative(student, ids, mask_id=mask_id, k=k,
                                                                                 **common),
                                      "student", reference="student/static k=1"))
    if draft is not None and "speculative" in chosen:
        for gamma in args.gammas:
            strategies.append(row("teacher + draft", f"speculative gamma={gamma}", "speculative",
                                  lambda ids, g=gamma: generate_speculative(teacher, draft, ids, gamma=g, **common),
                                  "teacher", "draft", reference=TEACHER))
    if student is not None and "mtp_speculative" in chosen:
        for k in args.mtp_k:
            strategies.append(row("teacher + student", f"MTP-drafted speculative k={k}", "MTP-drafted speculative",
                                  lambda ids, k=k: generate_mtp_speculative(teacher, student, ids, mask_id=mask_id,
                                                                            k=k, **common),
                                  "teacher", "student", reference=TEACHER))
    return strategies, students


def write_outputs(args, rows, strategies, students, problems, enc, eos_id, device, minutes):
    """bench.{json,md}, pareto.png and chunks.png, or with --compare ablations.{json,md,png} and
    agreement.png; then the table on screen and the rows as one JSON line."""
    os.makedirs(args.out_dir, exist_ok=True)
    stem = "ablations" if args.compare else "bench"
    if args.compare:
        table = (comparison_table(rows, students) + "\n\nEvery row:\n\n" + markdown_table(rows) + "\n\n"
                 + step_table(rows[0]))
    else:
        table = markdown_table(rows) + "\n\n" + matched_table(rows) + "\n\n" + step_table(rows[0])
    command = "python bench.py " + " ".join(sys.argv[1:])
    with open(os.path.join(args.out_dir, f"{stem}.json"), "w") as f:
        json.dump(rows, f, indent=1)
    with open(os.path.join(args.out_dir, f"{stem}.md"), "w") as f:
        f.write(f"Measured on {device} with `{command.strip()}` ({minutes:.1f} min).\n\n{table}\n")
    title = f"{len(problems)} held-out problems, {device}, batch 1"
    written = [f"{stem}.json", f"{stem}.md", "ablations.png" if args.compare else "pareto.png"]
    if args.compare:
        ablation_plot(rows, os.path.join(args.out_dir, "ablations.png"), title)
        agreement_plot(students, os.path.join(args.out_dir, "agreement.png"))
        written.append("agreement.png")
    else:
        pareto_plot(rows, os.path.join(args.out_dir, "pareto.png"), title)
        confadapt = [s for s in strategies if s["family"] == "ConfAdapt"]
        if confadapt:  # the tau closest to the paper's 0.9
            s = min(confadapt, key=lambda s: abs(s["tau"] - 0.9))
            examples = [(p["question"], chunk_texts(enc, tokens, sizes, eos_id), len(tokens))
                        for p, tokens, sizes in list(zip(problems, s["outputs"], s["chunks"]))[:args.n_chunks]]
            chunks_plot(examples, os.path.join(args.out_dir, "chunks.png"),
                        f"How the student wrote held-out answers: {s['strategy']}, one box per forward pass")
            written.append("chunks.png")
    print("\n" + table + "\n")
    print(f"{minutes:.1f} min; wrote " + ", ".join(os.path.join(args.out_dir, w) for w in written))
    print(json.dumps(rows))


def main():
    args = parse_args()
    device = pick_device(args.device)
    torch.manual_seed(0)
    teacher, enc, ckpt = load_for_decoding(args.teacher, device, kinds=("teacher",))
    test_path = args.test or os.path.join(os.path.dirname(ckpt["tokenizer"]), "test.jsonl")
    problems = load_problems(test_path, args.n)
    eos_id = enc.encode(EOT, allowed_special={EOT})[0]
    common = dict(max_new_tokens=args.max_new_tokens, eos_id=eos_id, n_vocab=enc.n_vocab, compiled=args.compile)
    strategies, students = build_strategies(args, teacher, ckpt, len(problems), common, device)
    print(f"benchmarking {len(strategies)} strategies on {len(problems)} problems from {test_path} on {device}, "
          f"interleaved problem by problem")
    t0 = time.time()
    rows = run_bench(strategies, problems, enc)
    write_outputs(args, rows, strategies, students, problems, enc, eos_id, device, (time.time() - t0) / 60)


if __name__ == "__main__":
    try:
        main()
    except UserError as e:
        sys.exit(f"error: {e}")
