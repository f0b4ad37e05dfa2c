"""
Decoding through torch.compile (decode.py --compile, bench.py --compile), as gpt-fast compiles
its decode step: from outside, so the strategies of decode.py stay as they are.

torch.compile reuses a graph only for the shapes it was compiled for, so each cached pass is
padded to the narrowest of COMPILED_WIDTHS that holds it: a handful of graphs per model. The
padding sits after the pass's tokens, which never see it, and later passes write over its
cache slots. A pass without a cache, a wider one (the prompt) or one that would pad past the
context runs the model as it is. The tokens are the plain model's, except where rounding
decides a near tie (tests/test_compiled.py). One sequence at a time (positions of shape (T,));
batched.py's passes run the plain model.

On a GPU the graphs are CUDA graphs (mode="reduce-overhead"). A pass of a small model is a few
dozen small kernels, and launching each from Python costs more than running it; a CUDA graph
records the launches of one pass once and replays them as one. A replay reads and writes the
addresses it was recorded with, so everything a pass touches stays where it is: the weights,
the decoder's one KV cache (allocated once, reused by every generation: new_cache) and the
inputs, which torch.compile copies into buffers of its own. The cache is marked static: a pass
writes it, and torch.compile skips the CUDA graph of a pass that writes an input it may not
keep in place (tests/test_compiled.py asks inductor). On the CPU the same code runs without
the graphs.
"""
import types

import torch

from model import KVCache

COMPILED_WIDTHS = (1, 2, 4, 8, 16)  # the widest: a student's k_max of 8, its k-1 masks after up to k new tokens


class CompiledDecoder:
    """A model for decode.py's strategies whose cached passes run through torch.compile."""

    def __init__(self, model):
        self.model, self.config, self.lm_head = model, model.config, model.lm_head
        self.num_params, self.n_vocab = model.num_params, getattr(model, "n_vocab", None)
        self.graphs = {}  # width -> the model's forward compiled for passes of that many tokens
        self.cuda_graphs = model.lm_head.weight.device.type == "cuda"
        self.cache = None  # the one KV cache of every generation (new_cache)

    def new_cache(self):
        """The decoder's KV cache, emptied (decode.new_cache asks for it): the same buffers every
        generation, so a CUDA graph recorded in one replays in the next. One generation at a
        time per decoder: a strategy's two models are two decoders."""
        if self.cache is None:
            weight = self.model.lm_head.weight
            self.cache = KVCache(self.config, 1, weight.device, weight.dtype)
            for buffer in (self.cache.k, self.cache.v):  # a graph writes them: they must stay where it was recorded
                torch._dynamo.mark_static_address(buffer)
        self.cache.truncate(0)
        return self.cache

    def __call__(self, idx, pos=None, attn_mask=None, cache=None):
        T, block_size = idx.size(1), self.config.block_size
        width = next((w for w in COMPILED_WIDTHS if w >= T), None)
        if cache is None or cache is not self.cache or width is None or cache.length + width > block_size:
            return self.model(idx, pos=pos, attn_mask=attn_mask, cache=cache)
        # decode.forward_new feeds the positions from the cache's length on: taking them from there, a
        # Python int, spares reading `pos` back from the GPU, which would wait for it
        start = cache.length
        cache.length = start + T  # KVCache.advance, outside the graph
        pos = torch.arange(start, start + width, device=idx.device)                   # (width,)
        idx = torch.cat([idx, idx.new_zeros(1, width - T)], dim=1)                     # (1, width)
        # Fixed shapes: the keys are the whole cache; each token sees the slots up to its own
        # position, or what the pass's own mask (T, n_keys) says.
        full_mask = torch.arange(block_size, device=idx.device) <= pos[:, None]         # (width, block_size)
        if attn_mask is not None:
            full_mask[:T, :attn_mask.size(-1)] = attn_mask
        torch.compiler.cudagraph_mark_step_begin()  # this pass is done with the last one's outputs
        logits, loss = self.graph(width)(idx, pos, full_mask, cache)
        # A graph's outputs live in its buffers, which its next replay overwrites: a copy is the caller's to keep.
        return logits[:, :T].clone(), loss

    def graph(self, width):
        """Dynamo keeps the graphs it compiled for one function together and checks them in turn
        on every call; with a bench's models and widths, that check would cost more than a small
        model's pass. A copy of the function per model and width keeps it to one graph and one check."""
        if width not in self.graphs:
            def forward(idx, pos, attn_mask, cache):
                return self.model(idx, pos=pos, attn_mask=attn_mask, cache=cache)
            code = forward.__code__.replace(co_name=f"forward_width_{width}")
            self.graphs[width] = torch.compile(types.FunctionType(code, forward.__globals__, closure=forward.__closure__),
                                               dynamic=False, mode="reduce-overhead" if self.cuda_graphs else None)
        return self.graphs[width]

    def __getstate__(self):  # compiled graphs do not pickle: a bench worker compiles its own, and makes its own cache
        return {**self.__dict__, "graphs": {}, "cache": None}
