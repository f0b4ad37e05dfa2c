"""compiled.py: every strategy of decode.py on compiled models gives the plain models' tokens."""
from functools import partial

import pytest
import torch

from compiled import CompiledDecoder
from conftest import MASK, MASKS, N_VOCAB, SMALL
from decode import generate_mtp, generate_mtp_speculative, generate_ntp, generate_self_speculative, generate_speculative
from gates import calibrated_confidence, run_confidence
from model import KVCache, add_mask_token
from test_decode import perturbed_copy, random_model


def seeded():
    return torch.Generator().manual_seed(0)


def every_strategy(target, student, draft):
    """Each decoding strategy as prompt -> Generation, as bench.py and decode.py run them."""
    common = dict(max_new_tokens=40, eos_id=-1)
    mtp = dict(mask_ids=MASKS, **common)
    sample = dict(temperature=0.8, top_k=20)
    return {
        "ntp": lambda p: generate_ntp(target, p, **common),
        "ntp sampling": lambda p: generate_ntp(target, p, generator=seeded(), **sample, **common),
        "static k=3": lambda p: generate_mtp(student, p, k=3, **mtp),
        "ConfAdapt": lambda p: generate_mtp(student, p, k=3, tau=0.03, **mtp),
        "ConfAdapt, run gate": lambda p: generate_mtp(student, p, k=3, tau=0.001, pick=run_confidence, **mtp),
        "ConfAdapt, calibrated": lambda p: generate_mtp(student, p, k=3, tau=0.03,
                                                        pick=partial(calibrated_confidence, temperatures=[1.0, 0.7, 1.3]),
                                                        **mtp),
        "ConfAdapt sampling": lambda p: generate_mtp(student, p, k=3, tau=0.03, **sample, **mtp, generator=seeded()),
        "ConfAdapt, bidirectional": lambda p: generate_mtp(student, p, k=3, tau=0.03, bidirectional=True, **mtp),
        "speculative": lambda p: generate_speculative(target, draft, p, gamma=3, **common),
        "speculative sampling": lambda p: generate_speculative(target, draft, p, gamma=3, **sample, **common,
                                                               generator=seeded()),
        "self-speculative": lambda p: generate_self_speculative(student, p, k=3, **mtp),
        "self-speculative sampling": lambda p: generate_self_speculative(student, p, k=3, **sample, **mtp,
                                                                         generator=seeded()),
        "MTP-drafted speculative": lambda p: generate_mtp_speculative(target, student, p, k=3, **mtp),
        "MTP-drafted sampling": lambda p: generate_mtp_speculative(target, student, p, k=3, **sample, **mtp,
                                                                   generator=seeded()),
    }


@pytest.mark.slow
@pytest.mark.parametrize("prompt_len", [5, 50])  # 50: runs into the context end, where passes stop padding
def test_compiled_decoding_emits_the_plain_tokens(prompt_len):
    """decode.py --compile: every strategy run on CompiledDecoder models (fixed-width passes
    through torch.compile, inductor's CPU code here; CUDA graphs on a GPU are the same code)
    gives the same tokens, in the same steps, as on the plain models. Each decoder has one KV
    cache, at one address, for every generation: each strategy after the first decodes over what
    the last one left in it. One-layer models: compiling takes time in proportion to the layers."""
    target = random_model(SMALL, 0)
    student = perturbed_copy(target, 1, 0.01)
    add_mask_token(student, MASK, torch.Generator().manual_seed(0))
    draft = perturbed_copy(target, 1, 0.02)
    prompt = torch.randint(0, N_VOCAB, (prompt_len,), generator=torch.Generator().manual_seed(3)).tolist()
    plain = every_strategy(target, student, draft)
    decoders = [CompiledDecoder(model) for model in (target, student, draft)]
    compiled = every_strategy(*decoders)
    caches = [(d.new_cache(), d.new_cache().k.data_ptr(), d.new_cache().v.data_ptr()) for d in decoders]
    chunk_sizes = set()
    for name in plain:
        a, b = plain[name](prompt), compiled[name](prompt)
        assert b.tokens == a.tokens, name
        assert (b.chunks, b.n_forward, b.n_draft_forward) == (a.chunks, a.n_forward, a.n_draft_forward), name
        chunk_sizes |= set(a.chunks[:-1])
    assert len(chunk_sizes) >= 3  # passes fed varying numbers of real tokens, so the padding varied
    assert all(decoder.graphs for decoder in decoders)  # the passes did run compiled, not plainly
    assert [(d.cache, d.cache.k.data_ptr(), d.cache.v.data_ptr()) for d in decoders] == caches  # never moved


def test_a_cache_not_the_decoders_own_runs_the_plain_model():
    """A graph writes the buffers it was compiled (or, on a GPU, recorded) with: a pass with
    any other cache, or none, must not go through it."""
    model = random_model(SMALL, 0)
    decoder = CompiledDecoder(model)
    other = KVCache(model.config)
    idx = torch.tensor([[5, 6, 7]])
    logits, _ = decoder(idx, pos=torch.arange(3), cache=other)
    assert other.length == 3 and not decoder.graphs and decoder.cache is None
    torch.testing.assert_close(logits, model(idx)[0])
    decoder(idx)  # no cache
    assert not decoder.graphs
    assert decoder.new_cache() is decoder.new_cache() and decoder.cache.length == 0


def test_one_decoder_cannot_be_both_target_and_drafter():
    """Its one cache cannot hold two sequences: refused before any pass, not decoded wrongly."""
    decoder = CompiledDecoder(random_model(SMALL, 0))
    with pytest.raises(ValueError, match="one compiled decoder, whose one KV cache cannot hold both"):
        generate_speculative(decoder, decoder, [1, 2, 3], max_new_tokens=4, eos_id=-1, gamma=2)
    with pytest.raises(ValueError, match="one compiled decoder"):
        generate_mtp_speculative(decoder, decoder, [1, 2, 3], max_new_tokens=4, eos_id=-1, mask_ids=MASKS, k=2)


class GraphChecked(Exception):
    """Raised from inside inductor once it has told which inputs a graph writes and which are static."""


@pytest.mark.slow
@pytest.mark.parametrize("cache_marked_static", [True, False])  # False: what the check catches
def test_cuda_graphs_would_not_be_skipped_for_writing_the_cache(monkeypatch, cache_marked_static):
    """A CUDA graph may write only inputs at fixed addresses: torch.compile skips the graphs of a
    pass that writes any other input ("skipping cudagraphs due to mutated inputs") and runs it
    plainly, slowly and without a word. A decoding pass writes the KV cache, so the decoder marks
    its cache static. There is no GPU here: inductor is asked (through its internals, as torch
    2.13 has them) which inputs the compiled pass writes and which are static, with the check
    that would refuse a CPU graph switched off."""
    import torch._inductor.config as inductor_config
    import torch._inductor.cudagraph_utils as cudagraph_utils
    if not hasattr(cudagraph_utils, "check_for_mutation_ignore_cuda_graph_managed_tensor"):
        pytest.skip("this torch checks a graph's inputs elsewhere")
    told = []

    def check(gm, mutated_inputs, mutated_input_idxs, static_input_idxs):
        told.append((set(mutated_input_idxs), set(static_input_idxs)))
        raise GraphChecked

    monkeypatch.setattr(cudagraph_utils, "check_for_mutation_ignore_cuda_graph_managed_tensor", check)
    monkeypatch.setattr(cudagraph_utils, "check_multiple_devices_or_any_cpu_nodes", lambda mapping: None)
    monkeypatch.setattr(inductor_config.triton, "cudagraph_support_input_mutation", False)
    monkeypatch.setattr(inductor_config, "fx_graph_cache", False)  # compile now, so that the check runs
    if not cache_marked_static:
        monkeypatch.setattr(torch._dynamo, "mark_static_address", lambda tensor, guard=False: None)
    decoder = CompiledDecoder(random_model(SMALL, 0))
    decoder.cuda_graphs = True  # what a GPU model gets: mode="reduce-overhead"
    with pytest.raises(Exception):  # GraphChecked, perhaps wrapped by dynamo
        generate_ntp(decoder, [1, 2, 3], max_new_tokens=2, eos_id=-1)
    (written, static), = told
    assert len(written) == 2  # the cache's keys and values
    assert (written <= static) == cache_marked_static
