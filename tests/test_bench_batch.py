"""bench_batch.py: the cost model of a pass at scale, and a run end to end on tiny models."""
import json

import pytest

from bench_batch import GPU, LARGE, crossover, modelled_seconds
from common import save_checkpoint
from conftest import run_script
from data.tokenizer import load_tokenizer, padded_vocab_size
from model import GPT, GPTConfig

EIGHT_B = LARGE["8B"]


def test_a_pass_of_few_positions_costs_the_reading_of_the_weights():
    weights = 2 * EIGHT_B["params"] / GPU["bytes_per_s"]  # bf16: 2 bytes a weight
    one = modelled_seconds([(1, 1, 100)], EIGHT_B)
    assert weights < one < 1.01 * weights
    assert modelled_seconds([(8, 4, 100)], EIGHT_B) < 1.1 * one  # 32 positions: still about free


def test_a_pass_of_many_positions_costs_their_arithmetic():
    """Past the GPU's ridge (peak FLOP/s over bandwidth, ~300 positions for an H100) the time grows
    with the positions: doubling the rows or the width doubles it."""
    ridge = GPU["flops_per_s"] / GPU["bytes_per_s"]
    wide = modelled_seconds([(1024, 1, 100)], EIGHT_B)
    assert wide > 3 * modelled_seconds([(1, 1, 100)], EIGHT_B) and 1024 > 3 * ridge
    assert modelled_seconds([(2048, 1, 100)], EIGHT_B) == pytest.approx(2 * wide, rel=0.02)
    assert modelled_seconds([(1024, 2, 100)], EIGHT_B) == pytest.approx(2 * wide, rel=0.02)
    assert modelled_seconds([(512, 1, 100)], EIGHT_B, rows_scale=2) == pytest.approx(wide)


def test_crossover_is_the_first_batch_size_below_1x():
    assert crossover({1: 2.0, 4: 1.5, 16: 0.9, 64: 1.1}) == 16
    assert crossover({1: 2.0, 64: 1.0}) is None


@pytest.fixture(scope="module")
def tiny_models(tiny_data, tmp_path_factory):
    d = tmp_path_factory.mktemp("batch")
    tokenizer = str(tiny_data / "tokenizer.json")
    enc = load_tokenizer(tokenizer)
    config = GPTConfig(block_size=64, vocab_size=padded_vocab_size(enc), n_layer=1, n_head=2, n_embd=16,
                       rotary=True)
    paths = {kind: str(d / f"{kind}.pt") for kind in ("teacher", "draft", "student")}
    save_checkpoint(paths["teacher"], GPT(config), "teacher", tokenizer)
    save_checkpoint(paths["draft"], GPT(config), "draft", tokenizer)
    save_checkpoint(paths["student"], GPT(config), "student", tokenizer, mask_id=enc.n_vocab, k_max=4,
                    bidirectional=False, step=0, args={"max_iters": 0})
    return d, paths


def test_bench_batch_runs_end_to_end(tiny_models):
    d, paths = tiny_models
    r = run_script("bench_batch.py", "--teacher", paths["teacher"], "--draft", paths["draft"], "--student",
                   paths["student"], "--n", "6", "--batch_sizes", "1,3", "--max_new_tokens", "12", "--static_k", "2",
                   "--self_k", "2", "--mtp_k", "2", "--gamma", "2", "--model_batch_sizes", "1,3,300",
                   "--device", "cpu", "--out_dir", str(d))
    assert r.returncode == 0, r.stderr
    result = json.loads((d / "batch.json").read_text())
    rows = {(row["batch_size"], row["strategy"]): row for row in result["rows"]}
    names = ["NTP", "static k=2", "ConfAdapt tau=0.9", "self-speculative k=2", "speculative gamma=2",
             "MTP-drafted k=2", "tree self-speculative k=4 nodes=16 ends=4", "tree MTP-drafted k=4 nodes=16"]
    assert set(rows) == {(b, name) for b in (1, 3) for name in names}
    ntp = rows[1, "NTP"]
    assert (ntp["tokens_per_pass"], ntp["positions_per_token"], ntp["padding"], ntp["unused"]) == (1.0, 1.0, 0, 0)
    # After the first pass, which pads the prompts to the longest, NTP's rows all feed one token.
    assert rows[3, "NTP"]["padding"] == 0 and rows[3, "NTP"]["prompt_padding"] > 0
    assert rows[1, "speculative gamma=2"]["drafter_positions_per_token"] > 0  # the draft's passes, counted apart
    assert rows[1, "NTP"]["drafter_positions_per_token"] is None
    assert rows[1, "static k=2"]["positions_per_token"] > 1  # the masks and the re-fed tokens
    assert rows[1, "speculative gamma=2"]["identical_to_ntp"] == 100
    assert rows[3, "tree MTP-drafted k=4 nodes=16"]["identical_to_ntp"] == 100  # lossless in a batch too
    assert all(row["identical_to_batch_1"] == 100 for (b, _), row in rows.items() if b == 3)  # each row its batch-1 self
    assert set(result["modelled"]["NTP"]) == {"1", "3", "300"}
    assert (d / "batch.png").exists() and "stops paying" in (d / "batch.md").read_text()
