"""The documents' tables hold together: every row is as wide as its header, and the numbers the
prose or a second table derives from a bench table follow from that table's rows."""
import os
import re

import pytest

from conftest import ROOT

DOCUMENTS = ["README.md"] + sorted(os.path.join("docs", name) for name in os.listdir(os.path.join(ROOT, "docs"))
                                   if name.endswith(".md"))


def cells(line):
    """The cells of a Markdown table row; a | inside `code` does not split."""
    out, cell, in_code = [], "", False
    for char in line.strip()[1:]:  # after the row's opening |
        if char == "`":
            in_code = not in_code
        if char == "|" and not in_code:
            out.append(cell.strip())
            cell = ""
        else:
            cell += char
    return out


def tables(path):
    """(line number of the header, rows as lists of cells, the header first) of every table."""
    found, rows, start = [], [], None
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        lines = f.read().split("\n")
    for lineno, line in enumerate(lines + [""], start=1):
        if line.startswith("|"):
            start = start or lineno
            rows.append(cells(line))
        elif rows:
            found.append((start, rows))
            rows, start = [], None
    return found


@pytest.mark.parametrize("path", DOCUMENTS)
def test_every_table_row_is_as_wide_as_its_header(path):
    for start, rows in tables(path):
        assert len(rows) >= 2 and set("".join(rows[1])) <= set("-:"), f"{path}:{start}: no |---| line under the header"
        for i, row in enumerate(rows[1:], start=1):
            assert len(row) == len(rows[0]), f"{path}:{start + i}: {len(row)} cells under a header of {len(rows[0])}"


def table_with(path, first_header):
    """The one table of `path` whose header starts with these cells, as dicts by column."""
    matching = [rows for _, rows in tables(path) if rows[0][:len(first_header)] == first_header]
    assert len(matching) == 1, f"{path}: {len(matching)} tables start with {first_header}"
    header, *body = matching[0]
    return [dict(zip(header, row)) for row in body[1:]]  # body[0] is the |---| line


def accuracy_at(curve, x):
    """A curve's accuracy at x tokens per forward pass, linear between its two nearest points
    (report.py's reading, redone here from the printed rows); None outside the curve."""
    points = sorted(curve)
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 <= x <= x1:
            return y0 + (y1 - y0) * (x - x0) / max(x1 - x0, 1e-9)
    return None


# How each document's greedy bench table begins (the sampled bench's tables begin with "model",
# "strategy" too).
BENCH_HEADER = {"README.md": ["model", "strategy", "accuracy % (95% interval)", "well-formed %"],
                "docs/results.md": ["model", "strategy", "problems"]}


def test_the_matched_speed_table_follows_from_the_bench_rows():
    """docs/results.md's matched-speed table reads the student's rows of the bench table above it.
    The rows are printed rounded (0.1 point, 0.01 token per pass), so a cell may be off by 0.1."""
    bench = table_with("docs/results.md", BENCH_HEADER["docs/results.md"])
    curves = {"ConfAdapt": [], "ConfAdapt, calibrated": [], "static k": []}
    for row in bench:
        if row["model"] != "student":
            continue
        strategy = row["strategy"]
        family = ("static k" if strategy.startswith("static k=") else None if not strategy.startswith("ConfAdapt")
                  else "ConfAdapt, calibrated" if strategy.endswith(", calibrated") else "ConfAdapt")
        if family:
            curves[family].append((float(row["tokens/forward"]), float(row["accuracy % (95% interval)"].split()[0])))
    assert all(len(curve) >= 5 for curve in curves.values()), curves
    matched = table_with("docs/results.md", ["tokens/forward", "1.5"])
    assert [row["tokens/forward"] for row in matched] == list(curves)
    for row in matched:
        for x in ("1.5", "2.0", "2.5", "3.0", "3.5"):
            expected = accuracy_at(curves[row["tokens/forward"]], float(x))
            if expected is None:
                assert row[x] == "-", (row["tokens/forward"], x)
            else:
                assert row[x] != "-" and abs(float(row[x]) - expected) <= 0.1 + 1e-9, (row["tokens/forward"], x, expected)


@pytest.mark.parametrize("path", ["README.md", "docs/results.md"])
def test_how_much_cheaper_the_draft_is_comes_from_its_row(path):
    """A draft pass's cost against a teacher pass is the draft's NTP speed-up over the teacher's,
    in the bench table of the same document."""
    draft = [row for row in table_with(path, BENCH_HEADER[path]) if row["model"] == "draft"]
    assert len(draft) == 1, path
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        said = re.findall(r"only ([\d.]+)x cheaper per pass", " ".join(f.read().split()))
    assert said == [f"{float(draft[0]['speed-up']):.1f}"], (path, said, draft[0]["speed-up"])
