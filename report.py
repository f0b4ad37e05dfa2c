"""
bench.py's tables and pictures, from the rows it measured: the markdown tables (every row, the
curves at matched tokens per pass, the wrong steps by kind, where answers first part from k=1,
the student's calibration, the ablations side by side), the Pareto picture (paper figure 5),
the answers one box per forward pass (paper figure 1), the calibration picture, and the
ablations' curves and agreement; and `python report.py DIR...`: several benches' tokens/s side
by side.
"""
import json
import os
import sys
import textwrap


def write_outputs(args, rows, strategies, tallies, students, problems, enc, eos_id, device, minutes, calib=None):
    """bench.{json,md}, pareto.png and chunks.png (and calibration.{json,png} from `calib`,
    bench.calibration's result), or with --compare ablations.{json,md,png} and agreement.png;
    then the table on screen and the rows as one JSON line."""
    os.makedirs(args.out_dir, exist_ok=True)
    stem = "ablations" if args.compare else "bench"
    ckpts = {name: ckpt for name, (_, ckpt) in students.items()}
    if args.compare:
        table = (comparison_table(rows, ckpts) + "\n\nEvery row:\n\n" + markdown_table(rows) + "\n\n"
                 + step_table(rows[0]))
    else:
        table = markdown_table(rows) + "\n\n" + matched_table(rows) + "\n\n" + step_table(rows[0])
        table += "\n\n" + departure_table(rows)
        if calib is not None:
            table += "\n\n" + calibration_table(**calib)
    command = "python bench.py " + " ".join(sys.argv[1:])
    workers = f", {args.workers} processes of one thread each" if args.workers > 1 else ""
    with open(os.path.join(args.out_dir, f"{stem}.json"), "w") as f:
        json.dump(rows, f, indent=1)
    with open(os.path.join(args.out_dir, f"{stem}.md"), "w") as f:
        f.write(f"Measured on {device}{workers} with `{command.strip()}` ({minutes:.1f} min).\n\n{table}\n")
    title = f"{len(problems)} held-out problems, {device}, batch 1"
    written = [f"{stem}.json", f"{stem}.md", "ablations.png" if args.compare else "pareto.png"]
    if args.compare:
        ablation_plot(rows, os.path.join(args.out_dir, "ablations.png"), title)
        agreement_plot(ckpts, os.path.join(args.out_dir, "agreement.png"))
        written.append("agreement.png")
    else:
        pareto_plot(rows, os.path.join(args.out_dir, "pareto.png"), title)
        confadapt = [(s, t) for s, t in zip(strategies, tallies) if s.family == "ConfAdapt"]
        if confadapt:  # the tau closest to the paper's 0.9
            s, t = min(confadapt, key=lambda pair: abs(pair[0].tau - 0.9))
            examples = [(p["question"], chunk_texts(enc, tokens, sizes, eos_id), len(tokens))
                        for p, tokens, sizes in list(zip(problems, t.outputs, t.chunks))[:args.n_chunks]]
            chunks_plot(examples, os.path.join(args.out_dir, "chunks.png"),
                        f"How the student wrote held-out answers: {s.name}, one box per forward pass")
            written.append("chunks.png")
        if calib is not None:
            with open(os.path.join(args.out_dir, "calibration.json"), "w") as f:
                json.dump({"bins": calib["bins"], "sums": calib["sums"].tolist(),
                           "calibrated": None if calib["calibrated"] is None else calib["calibrated"].tolist(),
                           "columns": ["predictions", "confidence", "equal to the k=1 token",
                                       "equal to the teacher's"]}, f)
            calibration_plot(calib["sums"], os.path.join(args.out_dir, "calibration.png"), title, calib["calibrated"])
            written += ["calibration.json", "calibration.png"]
    print("\n" + table + "\n")
    print(f"{minutes:.1f} min; wrote " + ", ".join(os.path.join(args.out_dir, w) for w in written))
    print(json.dumps(rows))


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


CURVES = ("ConfAdapt", "ConfAdapt, calibrated", "static k")  # the student's families of rows that form a curve


def student_curves(rows, model):
    """A student's curves of accuracy against tokens per forward pass: its ConfAdapt rows (tau
    moving; with fitted temperatures, a second such curve) and its static-k rows (k moving).
    A curve it has no rows for is left out."""
    curves = {family: [r for r in rows if r["model"] == model and r["family"] == family] for family in CURVES}
    return {family: curve for family, curve in curves.items() if curve}


def matched_table(rows, model="student", matched=(1.5, 2.0, 2.5, 3.0, 3.5)):
    """The student's ConfAdapt and static-k curves read at the same tokens per forward pass: the
    paper's Pareto comparison, without comparing a tau to a k."""
    curves = student_curves(rows, model)
    if len(curves) < 2:
        return ""
    lines = [f"Accuracy % of the {model}'s curves at matched tokens per forward pass (linear between rows; "
             "- outside the curve):", "", "| tokens/forward | " + " | ".join(str(m) for m in matched) + " |",
             "|---|" + "---|" * len(matched)]
    for family, curve in curves.items():
        cells = [accuracy_at(curve, m) for m in matched]
        lines.append(f"| {family} | " + " | ".join("-" if c is None else str(c) for c in cells) + " |")
    return "\n".join(lines)


def departure_table(rows):
    """Where the student's multi-token answers first part from its own k=1 answers, by kind of
    token and by place in the pass (bench.first_departures)."""
    rows = [r for r in rows if "first_departure" in r]
    if not rows:
        return ""
    places = sorted({int(p) for r in rows for p in r["first_departure"]["place"]})
    lines = ["Where the student's answers first part from its own k=1 answers: the first differing token is "
             "the k=1 answer's next one (dropped), its previous one (repeated) or another; and its place in its "
             "pass (1: the pass's first token):", "",
             "| row | answers that part | dropped | repeated | other | " + " | ".join(f"place {p}" for p in places)
             + " |", "|---|---|---|---|---|" + "---|" * len(places)]
    for r in rows:
        d = r["first_departure"]
        cells = [r["strategy"], d["answers"], d["dropped"], d["repeated"], d["other"]]
        cells += [d["place"].get(p, d["place"].get(str(p), 0)) for p in places]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def calibration_table(sums, bins, calibrated=None):
    """bench.calibration as a table: for block position j and confidence bin, the share of the
    student's tokens equal to its k=1 answer's, and to the teacher's, with their count; and
    the same table for the confidences at the fitted temperatures, if the student has them."""
    head = [f"[{lo}, {hi})" if hi < 1 else f"[{lo}, 1]" for lo, hi in zip(bins, bins[1:])]
    lines = []
    for view, intro in ((sums, "What tau means: the student's confidence at block position j (a mask's, j >= 2) "
                         "against how often its token is its own k=1 answer's / the teacher's next token, "
                         "teacher-forced along the k=1 answers (% / %, and how many tokens):"),
                        (calibrated, "The same, with the confidences at the student's fitted temperatures "
                         "(what ConfAdapt's calibrated gate compares with tau):")):
        if view is None:
            continue
        lines += ["", intro, "", "| j | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]
        for j, row in enumerate(view.tolist(), start=1):
            cells = [f"{100 * k1 / n:.1f} / {100 * t / n:.1f} ({n:.0f})" if n else "-" for n, _, k1, t in row]
            lines.append(f"| {j} | " + " | ".join(cells) + " |")
    return "\n".join(lines[1:])


def calibration_plot(sums, path, title, calibrated=None):
    """The reliability picture: for each block position j, the share of tokens equal to the
    student's own k=1 answer (left) and to the teacher's choice (middle) against the mean
    confidence of each bin; and (right, if the student has fitted temperatures) the left panel
    again with the confidences at those temperatures. On the diagonal, a confidence of 0.9 is
    right 90% of the time."""
    plt = pyplot()
    panels = [(sums, 2, "equal to the student's own k=1 token"), (sums, 3, "equal to the teacher's next token")]
    if calibrated is not None:
        panels.append((calibrated, 2, "equal to the k=1 token, at the fitted temperatures"))
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 5), sharey=True)
    colors = plt.cm.viridis([j / max(1, len(sums) - 1) for j in range(len(sums))])
    for ax, (view, column, label) in zip(axes, panels):
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
        for j, (row, color) in enumerate(zip(view.tolist(), colors), start=1):
            kept = [b for b in row if b[0] >= 20]  # bins of fewer tokens are noise
            ax.plot([b[1] / b[0] for b in kept], [b[column] / b[0] for b in kept], marker="o", markersize=3,
                    color=color, label=f"j = {j}")
        ax.set_xlabel("the student's confidence (mean of the bin)")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("share of tokens")
    axes[0].legend(fontsize=8)
    fig.suptitle("What tau means: " + title)
    save_figure(plt, fig, path)


def markdown_table(rows):
    cols = ["model", "strategy", "n", "accuracy", "well_formed", "steps_right", "tokens_per_forward",
            "positions_per_forward", "accepted_per_step", "draft_forwards", "tokens_per_second", "speedup", "modelled_ours", "modelled_large",
            "identical"]
    head = ["model", "strategy", "problems", "accuracy % (95% interval)", "well-formed %", "steps right %", "tokens/forward",
            "positions/forward", "accepted drafts/step", "draft passes/problem", "tokens/s", "speed-up", "modelled speed-up, our sizes",
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
    "ConfAdapt, calibrated": ("tab:cyan", "d"),
    "speculative": ("tab:green", "^"), "self-speculative": ("tab:purple", "v"),
    "MTP-drafted speculative": ("tab:orange", "P"),
    "tree self-speculative": ("tab:pink", "v"), "tree MTP-drafted": ("tab:olive", "P"),
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
            if family in CURVES:  # a curve: the same model as k or tau moves
                ax.plot([r[x] for r in fam], [r["accuracy"] for r in fam], color=color, alpha=0.4)
            ax.scatter([r[x] for r in fam], [r["accuracy"] for r in fam], color=color, marker=marker, label=family)
            if hollow:
                ax.scatter([r[hollow] for r in fam], [r["accuracy"] for r in fam], facecolors="none",
                           edgecolors=color, marker=marker)
            for r in fam:
                tag = r["model"] if family == "ntp" else r["strategy"].split(" ")[-1]  # k=3, tau=0.9, gamma=2
                if family.startswith("tree"):  # nodes=32 ends=4 -> n32 e4
                    tag = " ".join(w for w in r["strategy"].split(" ") if w.startswith(("nodes=", "ends=")))
                    tag = tag.replace("nodes=", "n").replace("ends=", "e")
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

def comparison_table(rows, students, matched=(2.5, 3.0, 3.5, 4.0)):
    """One line per variant: accuracy % with its 95% interval and well-formed % at k = 1 and at
    ConfAdapt tau = 0.9 (with its tokens per forward), then the accuracy of its ConfAdapt and its
    static-k curves read at matched tokens per forward (a variant that emits more tokens per pass
    at one tau is compared at the same speed, not the same tau), then its last validation
    agreement with the teacher by block position."""
    def cell(r):
        return f"{with_interval(r)}, {r['well_formed']}" if r else ""

    families = [f for f in CURVES if any(r["family"] == f for r in rows)]
    head = (["variant", "k=1: acc (95%), well-formed", "tau=0.9: acc (95%), well-formed", "tau=0.9: tokens/forward"]
            + [f"at {m} tokens/forward: {' / '.join(families)}" for m in matched]
            + ["val agreement with teacher by position"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, ckpt in students.items():
        mine = {r["strategy"]: r for r in rows if r["model"] == name}
        k1, tau = mine.get("static k=1"), mine.get("ConfAdapt tau=0.9")
        curves = student_curves(rows, name)
        line = [name, cell(k1), cell(tau), str(tau["tokens_per_forward"]) if tau else ""]
        for m in matched:
            cells = (accuracy_at(curves.get(f, []), m) for f in families)
            line.append(" / ".join("-" if a is None else str(a) for a in cells))
        line.append(" ".join(f"{a:.2f}" for a in ckpt["agreement_log"][-1]["agreement"]))
        lines.append("| " + " | ".join(line) + " |")
    return "\n".join(lines)


def ablation_plot(rows, path, title):
    """Accuracy against tokens per forward, a colour per variant: ConfAdapt as a solid curve
    over tau (dotted with fitted temperatures), static k as a dashed one; the teacher as a black star."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 5.5))
    teacher = rows[0]
    ax.scatter([1.0], [teacher["accuracy"]], color="black", marker="*", s=120, label="teacher NTP", zorder=3)
    variants = list(dict.fromkeys(r["model"] for r in rows[1:]))
    for variant, color in zip(variants, plt.cm.tab10.colors):
        for family, style, marker in (("ConfAdapt", "-", "o"), ("ConfAdapt, calibrated", ":", "d"),
                                      ("static k", "--", "s")):
            fam = [r for r in rows if r["model"] == variant and r["family"] == family]
            if not fam:
                continue
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
# The sampled bench (bench.py --temperature T): what each strategy does to the model's
# distribution, beside the greedy bench's rows where the same folder holds them.

SAMPLED_STYLE = {**FAMILY_STYLE, "ConfAdapt, largest probability": ("tab:brown", "X"),
                 "ConfAdapt, authors' sampling": ("tab:pink", "*")}


def write_sampled(args, rows, strategies, tallies, problems, device, minutes):
    """sampling.{json,md,png}, then the table on screen and the rows as one JSON line."""
    os.makedirs(args.out_dir, exist_ok=True)
    greedy_path = os.path.join(args.out_dir, "bench.json")
    greedy = {}
    if os.path.exists(greedy_path):  # the greedy bench of the same models: its rows by (model, strategy)
        with open(greedy_path) as f:
            greedy = {(r["model"], r["strategy"]): r for r in json.load(f)}
    for r in rows:
        r["verifier_logprob"] = own_logprob(rows, r)
        g = greedy.get((r["model"], r["strategy"].replace("ntp sampling", "ntp greedy")))
        r["greedy"] = None if g is None else {key: g[key] for key in ("accuracy", "tokens_per_forward")}
    sampling = f"temperature {args.temperature}" + (f", top {args.top_k}" if args.top_k else "")
    table = sampled_table(rows, args.samples)
    command = "python bench.py " + " ".join(sys.argv[1:])
    workers = f", {args.workers} processes of one thread each" if args.workers > 1 else ""
    with open(os.path.join(args.out_dir, "sampling.json"), "w") as f:
        json.dump(rows, f, indent=1)
    with open(os.path.join(args.out_dir, "sampling.md"), "w") as f:
        f.write(f"Measured on {device}{workers} with `{command.strip()}` ({minutes:.1f} min): {len(problems)} "
                f"problems, {args.samples} samples each, {sampling}.\n\n{table}\n")
    sampled_plot(rows, args.samples, os.path.join(args.out_dir, "sampling.png"),
                 f"{len(problems)} held-out problems, {args.samples} samples each, {sampling}, {device}, batch 1")
    print("\n" + table + "\n")
    print(f"{minutes:.1f} min; wrote " + ", ".join(os.path.join(args.out_dir, f"sampling.{ext}")
                                                 for ext in ("json", "md", "png")))
    print(json.dumps(rows))


def own_logprob(rows, row):
    """The log-probability per token that a row's verifier gives its own samples: the student's
    k = 1 row for the student's rows, the draft model's NTP row for its own, the teacher's NTP
    row for the teacher's and the speculative ones (None if not run)."""
    model = {"student": "student", "draft": "draft"}.get(row["model"], "teacher")
    own = next((r for r in rows if r["model"] == model and r["strategy"] in ("ntp sampling", "static k=1")), None)
    return None if own is None else own["logprob_per_token"]


def sampled_table(rows, samples):
    head = ["model", "strategy", "accuracy % (95% interval)", "greedy accuracy %", "well-formed %", "tokens/forward",
            "speed-up", "modelled speed-up", "verifier's log-prob/token (95% interval)", "... of its own samples",
            "distinct samples of " + str(samples), f"majority of {samples} % (95% interval)", "passes/sample"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["model"], r["strategy"], with_interval(r), r["greedy"] and r["greedy"]["accuracy"], r["well_formed"],
                 r["tokens_per_forward"], r["speedup"], r["modelled_ours"],
                 f"{r['logprob_per_token']} ({r['logprob_95'][0]} to {r['logprob_95'][1]})", r["verifier_logprob"],
                 r["distinct_per_problem"], f"{r['vote_accuracy'][-1]} ({r['vote_95'][0]}-{r['vote_95'][1]})",
                 r["passes_per_sample"]]
        lines.append("| " + " | ".join("" if c is None else str(c) for c in cells) + " |")
    return "\n".join(lines)


def sampled_plot(rows, samples, path, title):
    """Left: accuracy against tokens per forward pass, sampled (filled) and greedy (hollow, from
    the greedy bench), one marker per strategy, a line from greedy to sampled. Right: the majority
    vote over each problem's first m samples, m = 1..S, against the passes those m samples took
    (of the model that decides: a speculative row's draft passes are not counted)."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 5.5))
    for r in rows:
        color, marker = SAMPLED_STYLE.get(r["family"], ("grey", "o"))
        x, y = r["tokens_per_forward"], r["accuracy"]
        left.scatter([x], [y], color=color, marker=marker)
        if r["greedy"]:
            gx, gy = r["greedy"]["tokens_per_forward"], r["greedy"]["accuracy"]
            left.scatter([gx], [gy], facecolors="none", edgecolors=color, marker=marker)
            left.plot([gx, x], [gy, y], color=color, lw=0.8, alpha=0.5)
        left.annotate(f"{r['model'].split(' ')[-1]} {r['strategy']}".replace("ntp sampling", "ntp"), (x, y),
                      fontsize=7, xytext=(3, 3), textcoords="offset points", color=color)
        passes = [m * r["passes_per_sample"] for m in range(1, samples + 1)]
        right.plot(passes, r["vote_accuracy"], color=color, marker=marker, ms=4,
                   label=f"{r['model']}: {r['strategy']}")
    left.set_xlabel("tokens per forward pass (of the model that decides)", fontsize=9)
    left.set_ylabel("accuracy, mean over samples (%): sampled filled, greedy hollow")
    right.set_xlabel(f"forward passes per problem for m = 1..{samples} samples", fontsize=9)
    right.set_ylabel("accuracy of the majority answer of m samples (%)")
    right.legend(fontsize=7)
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    save_figure(plt, fig, path)


# --------------------------------------------------------------------------------------
# Several benches of the same rows side by side (make gpu-check: plain, one process, compiled).

# What may differ between two runs of the same rows: the timings, and positions/forward, which a
# compiled bench does not count (bench.PositionsFed would make its graphs guard on the count).
TIMINGS = ("tokens_per_second", "speedup", "positions_per_forward")


def speed_table(runs):
    """runs: [(name, rows of bench.json)], the first the reference. A row per strategy: its
    tokens per pass, then each run's tokens/s and speed-up over its own NTP, and its tokens/s
    over the first run's; the last column says whether every field but the timings is the same
    in every run (the same answers, in the same passes)."""
    first_name, first_rows = runs[0]
    head = ["model", "strategy", "tokens/forward"]
    for name, _ in runs:
        head.append(f"{name}: tokens/s (speed-up)")
    head += [f"{name} / {first_name}" for name, _ in runs[1:]] + ["same answers"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in first_rows:
        key = (row["model"], row["strategy"])
        twins = [next((r for r in rows if (r["model"], r["strategy"]) == key), None) for _, rows in runs]
        if None in twins:
            continue  # a row not in every run
        cells = [row["model"], row["strategy"], str(row["tokens_per_forward"])]
        cells += [f"{t['tokens_per_second']:,.0f} ({t['speedup']})" for t in twins]
        cells += [f"{t['tokens_per_second'] / row['tokens_per_second']:.2f}" for t in twins[1:]]
        same = all({k: v for k, v in t.items() if k not in TIMINGS} == {k: v for k, v in row.items() if k not in TIMINGS}
                   for t in twins)
        lines.append("| " + " | ".join(cells + ["yes" if same else "no"]) + " |")
    return "\n".join(lines)


def parse_args(argv=None):
    import argparse
    from common import HelpFormatter
    p = argparse.ArgumentParser(description="Several bench.py runs of the same rows side by side: each row's "
                                "tokens/s in each run, and over the first run's (make gpu-check prints it).",
                                formatter_class=HelpFormatter)
    p.add_argument("dirs", nargs="+", metavar="DIR", help="bench.py --out_dir folders, each with a bench.json; "
                   "the first is the reference")
    p.add_argument("--out", default=None, help="also write the table to this markdown file (None: print it only)")
    return p.parse_args(argv)


def main(args):
    for d in args.dirs:
        if not os.path.exists(os.path.join(d, "bench.json")):
            sys.exit(f"error: no {os.path.join(d, 'bench.json')}: run bench.py with --out_dir {d} first")
    table = speed_table([(d, json.load(open(os.path.join(d, "bench.json")))) for d in args.dirs])
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main(parse_args())
