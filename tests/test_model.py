"""The GPT: the KV cache, explicit positions with a custom mask, checkpoints, NTP decoding."""
import pytest
import torch

from conftest import TINY, run_script
from data.tokenizer import load_tokenizer, padded_vocab_size
from decode import generate_ntp
from common import emit_only, UserError, load_checkpoint, model_from_checkpoint, save_checkpoint, tokenizer_from_checkpoint
from model import GPT, GPTConfig, KVCache


@pytest.fixture(params=[False, True], ids=["learned positions", "rotary"])
def model(request):
    torch.manual_seed(0)
    return emit_only(GPT(GPTConfig(**{**TINY.__dict__, "rotary": request.param})).eval(), TINY.vocab_size)


def test_rotary_scores_depend_only_on_distances():
    """Shift every position by the same amount: a rotary model computes the same thing (a
    model with learned positions does not)."""
    torch.manual_seed(0)
    idx = torch.randint(0, TINY.vocab_size, (1, 20))
    for rotary in (True, False):
        model = GPT(GPTConfig(**{**TINY.__dict__, "rotary": rotary})).eval()
        shifted, _ = model(idx, pos=torch.arange(7, 27))
        assert torch.allclose(shifted, model(idx)[0], atol=1e-5) == rotary


@pytest.mark.parametrize("chunks", [[40], [1] * 40, [10, 1, 1, 28], [25, 15]])
def test_cached_forward_equals_uncached(model, chunks):
    idx = torch.randint(0, TINY.vocab_size, (2, sum(chunks)))
    full, _ = model(idx)
    cache, pieces, start = KVCache(TINY, batch_size=2), [], 0
    for n in chunks:  # feed the same sequence in pieces through the cache, each at its positions
        pieces.append(model(idx[:, start:start + n], pos=torch.arange(start, start + n), cache=cache)[0])
        start += n
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)


def test_stale_slots_are_overwritten_like_a_fresh_cache(model):
    idx = torch.randint(0, TINY.vocab_size, (1, 30))
    rejected = torch.randint(0, TINY.vocab_size, (1, 5))
    cache = KVCache(TINY)
    model(idx[:, :20], pos=torch.arange(20), cache=cache)
    model(rejected, pos=torch.arange(20, 25), cache=cache)  # e.g. a rejected speculative draft ...
    cache.truncate(20)
    after, _ = model(idx[:, 20:], pos=torch.arange(20, 30), cache=cache)  # ... written over at its positions
    torch.testing.assert_close(after, model(idx)[0][:, 20:], atol=1e-5, rtol=1e-5)


def test_a_cache_is_only_truncated_backwards_and_needs_positions(model):
    cache = KVCache(TINY)
    cache.length = 20
    cache.truncate(12)
    assert cache.length == 12
    with pytest.raises(ValueError, match="cannot truncate"):
        cache.truncate(13)
    with pytest.raises(ValueError, match="needs the positions"):
        model(torch.zeros(1, 3, dtype=torch.long), cache=cache)


@pytest.mark.parametrize("start", [11, 13, 0])
def test_a_cached_pass_must_start_at_the_caches_length(model, start):
    """A pass whose positions start past the cache's length would attend over slots never written
    (or stale), one that starts before it would leave later stale slots counted as written: both
    are refused; one that starts there moves the length past its tokens."""
    cache = KVCache(TINY)
    model(torch.zeros(1, 12, dtype=torch.long), pos=torch.arange(12), cache=cache)
    assert cache.length == 12
    with pytest.raises(ValueError, match="from the cache's length 12 on, got positions from"):
        model(torch.zeros(1, 3, dtype=torch.long), pos=torch.arange(start, start + 3), cache=cache)
    model(torch.zeros(1, 3, dtype=torch.long), pos=torch.arange(12, 15), cache=cache)
    assert cache.length == 15


@pytest.mark.parametrize("prefix_len", [1, 7, 19])
def test_appended_block_with_positions_and_mask_equals_its_prefix_alone(model, prefix_len):
    """The layout MTP training uses: a block appended after the whole sequence, given the
    positions it stands for and a mask that shows it only the prefix, computes exactly what
    the prefix followed by the block computes on its own."""
    T, b = 24, 4
    seq = torch.randint(0, TINY.vocab_size, (1, T))
    block = torch.randint(0, TINY.vocab_size, (1, b))
    idx = torch.cat([seq, block], dim=1)                               # (1, T + b)
    pos = torch.cat([torch.arange(T), torch.arange(prefix_len, prefix_len + b)])
    mask = torch.zeros(T + b, T + b, dtype=torch.bool)
    mask[:T, :T] = torch.ones(T, T).tril().bool()                      # the sequence: plain causal
    mask[T:, :prefix_len] = True                                       # the block sees the prefix ...
    mask[T:, T:] = torch.ones(b, b).tril().bool()                      # ... and itself, causally
    logits, _ = model(idx, pos=pos, attn_mask=mask)
    alone, _ = model(torch.cat([seq[:, :prefix_len], block], dim=1))
    torch.testing.assert_close(logits[:, T:], alone[:, prefix_len:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits[:, :T], model(seq)[0], atol=1e-5, rtol=1e-5)  # blind to the block


def test_a_batched_mask_is_applied_per_row(model):
    idx = torch.randint(0, TINY.vocab_size, (2, 10))
    causal = torch.ones(10, 10).tril().bool()
    logits, _ = model(idx, attn_mask=causal.expand(2, 10, 10))
    torch.testing.assert_close(logits, model(idx)[0], atol=1e-5, rtol=1e-5)


def test_too_long_a_sequence_is_refused(model):
    with pytest.raises(ValueError, match="context of 64"):
        model(torch.zeros(1, 65, dtype=torch.long))


@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_cached_decoding_gives_the_same_tokens(model, temperature):
    prompt = torch.randint(0, TINY.vocab_size - 8, (12,)).tolist()
    model = emit_only(model, TINY.vocab_size - 8)  # as load_for_decoding cuts the logits to the tokenizer's ids
    runs = [generate_ntp(model, prompt, 30, eos_id=-1, temperature=temperature,
                         use_cache=use_cache, generator=torch.Generator().manual_seed(1))
            for use_cache in (True, False)]
    assert runs[0].tokens == runs[1].tokens
    assert len(runs[0].tokens) == 30 and runs[0].n_forward == 30
    assert max(runs[0].tokens) < TINY.vocab_size - 8  # padding slots are never emitted


def test_decoding_stops_at_eos_and_at_the_context(model):
    prompt = [3, 4, 5]
    first = generate_ntp(model, prompt, 10, eos_id=-1).tokens
    stopped = generate_ntp(model, prompt, 10, eos_id=first[3]).tokens
    assert stopped == first[:first.index(first[3]) + 1]
    full = generate_ntp(model, prompt, 1000, eos_id=-1)
    assert len(prompt) + len(full.tokens) == TINY.block_size


@pytest.mark.parametrize("prompt, message", [([], "empty"), (list(range(64)), "shorten the prompt")])
def test_bad_prompts_are_refused(model, prompt, message):
    with pytest.raises(UserError, match=message):
        generate_ntp(model, prompt, 10, eos_id=0)


def test_checkpoint_round_trip(model, tiny_data, tmp_path):
    path = str(tmp_path / "t.pt")
    save_checkpoint(path, torch.compile(model), "teacher", str(tiny_data / "tokenizer.json"), step=7)
    assert not (tmp_path / "t.pt.tmp").exists()
    ckpt = load_checkpoint(path, kinds=("teacher",))
    assert ckpt["step"] == 7 and ckpt["kind"] == "teacher"
    assert not any(k.startswith("_orig_mod.") for k in ckpt["model"])  # torch.compile's prefix is gone
    loaded = model_from_checkpoint(ckpt)
    idx = torch.randint(0, TINY.vocab_size, (1, 16))
    torch.testing.assert_close(loaded(idx)[0], model(idx)[0])
    assert tokenizer_from_checkpoint(ckpt).n_vocab > 0


def test_bad_checkpoints_give_one_clear_error(model, tiny_data, tmp_path):
    path = str(tmp_path / "t.pt")
    save_checkpoint(path, model, "draft", str(tiny_data / "tokenizer.json"))
    with pytest.raises(UserError, match="no checkpoint at"):
        load_checkpoint(str(tmp_path / "missing.pt"))
    with pytest.raises(UserError, match="is a draft checkpoint, but a teacher"):
        load_checkpoint(path, kinds=("teacher",))
    (tmp_path / "corrupt.pt").write_bytes(open(path, "rb").read()[:1000])
    with pytest.raises(UserError, match="not a readable checkpoint"):
        load_checkpoint(str(tmp_path / "corrupt.pt"))
    other = tmp_path / "other_tokenizer.json"
    other.write_text((tiny_data / "tokenizer.json").read_text().replace('"padded_vocab_size"', '"padded_vocab_size" '))
    with pytest.raises(UserError, match="not the one this model was trained with"):
        tokenizer_from_checkpoint(load_checkpoint(path), str(other))


def test_decode_cli_errors_are_one_line(tmp_path, tiny_data):
    enc = load_tokenizer(str(tiny_data / "tokenizer.json"))
    model = GPT(GPTConfig(block_size=64, vocab_size=padded_vocab_size(enc), n_layer=1, n_head=2, n_embd=16))
    r = run_script("decode.py", "--ckpt", str(tmp_path / "missing.pt"), "--prompt", "hi")
    assert r.returncode != 0 and r.stderr.startswith("error: no checkpoint") and "Traceback" not in r.stderr
    path = str(tmp_path / "t.pt")
    save_checkpoint(path, model, "teacher", str(tiny_data / "tokenizer.json"))
    r = run_script("decode.py", "--ckpt", path, "--prompt", "many words " * 40)
    assert r.returncode != 0 and "shorten the prompt" in r.stderr and "Traceback" not in r.stderr
    r = run_script("decode.py", "--ckpt", path, "--prompt", "How many?", "--max_new_tokens", "5", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("Question: How many?\nAnswer:")
