"""
Decoding strategies, one function each, all returning a `Generation` with the same stats.

    python decode.py --ckpt out/teacher.pt --prompt "Mia has 12 apples and buys 30 more. How many apples does she have?"
    python decode.py --ckpt out/teacher.pt --temperature 0.8 --top_k 20 --prompt "..."
    python decode.py --ckpt out/student.pt --tau 0.9 --show-chunks --prompt "..."   # ConfAdapt
    python decode.py --ckpt out/student.pt --static --k 3 --prompt "..."            # static k

Next-token prediction (NTP): one forward pass per token. With the KV cache each pass feeds
only the newest token; the keys/values of the earlier ones are read from the cache.
Without it every pass re-reads the whole sequence: same tokens, much more work.
"""
import argparse
import sys
import time
from dataclasses import dataclass, field

import torch

from data.problems import format_prompt
from data.tokenizer import EOT
from model import KVCache, UserError, load_checkpoint, model_from_checkpoint, pick_device, tokenizer_from_checkpoint


@dataclass
class Generation:
    tokens: list                                 # new tokens (prompt excluded), ending at EOS if one came
    n_forward: int = 0                           # forward passes of the model
    chunks: list = field(default_factory=list)   # tokens emitted by each forward pass

    @property
    def tokens_per_forward(self):
        return len(self.tokens) / max(1, self.n_forward)


def pick_token(logits, temperature, top_k, n_vocab, generator=None):
    """The next token from (vocab_size,) logits: argmax at temperature 0, else a sample.
    Ids from n_vocab on are padding slots (and later the <MTP> mask): never emitted."""
    logits = logits[:n_vocab]
    if temperature == 0:
        return int(torch.argmax(logits))
    logits = logits / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits.float(), dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


def check_prompt(prompt_ids, model):
    if len(prompt_ids) == 0:
        raise UserError("the prompt is empty: give some text to continue")
    if len(prompt_ids) >= model.config.block_size:
        raise UserError(f"the prompt is {len(prompt_ids)} tokens but the model's context holds "
                        f"{model.config.block_size}: shorten the prompt")


@torch.no_grad()
def generate_ntp(model, prompt_ids, max_new_tokens, eos_id, n_vocab, temperature=0.0, top_k=None,
                 use_cache=True, generator=None):
    """Next-token prediction: one token per forward pass, until EOS, max_new_tokens or a full context."""
    check_prompt(prompt_ids, model)
    device = model.lm_head.weight.device
    seq = torch.tensor([prompt_ids], device=device)  # (1, T)
    cache = KVCache(model.config, 1, device, model.lm_head.weight.dtype) if use_cache else None
    out = Generation(tokens=[])
    feed = seq  # what the next forward reads: the whole prompt first, then one token at a time
    while len(out.tokens) < max_new_tokens and seq.size(1) < model.config.block_size:
        logits, _ = model(feed if use_cache else seq, cache=cache)  # (1, T, vocab_size)
        out.n_forward += 1
        token = pick_token(logits[0, -1], temperature, top_k, n_vocab, generator)
        out.tokens.append(token)
        out.chunks.append(1)
        if token == eos_id:
            break
        feed = torch.tensor([[token]], device=device)
        seq = torch.cat([seq, feed], dim=1)
    return out


@torch.no_grad()
def generate_mtp(model, prompt_ids, max_new_tokens, eos_id, n_vocab, mask_id, k, tau=None):
    """Multi-token prediction with the student's <MTP> mask (METHOD.md section 5).

    Every forward pass feeds the newly accepted tokens plus k-1 masks and reads k greedy
    predictions from the last k positions (the last real token predicts token 1, mask j
    predicts token j+1). Static k (tau=None) emits all k. ConfAdapt(tau) emits the longest
    leading run whose confidence (max softmax) is >= tau, always at least one token.
    The masks' cache entries are stale once their tokens are known, so the cache is cut back
    to the last real token; the accepted tokens are fed as real tokens on the next pass."""
    check_prompt(prompt_ids, model)
    if k < 1:
        raise UserError(f"k must be >= 1, got {k}")
    if tau is not None and not 0 < tau <= 1:
        raise UserError(f"tau must be in (0, 1], got {tau}")
    device = model.lm_head.weight.device
    cache = KVCache(model.config, 1, device, model.lm_head.weight.dtype)
    out = Generation(tokens=[])
    feed = list(prompt_ids)
    while len(out.tokens) < max_new_tokens:
        room = model.config.block_size - cache.length - len(feed)  # slots left for masks
        if room < 0:
            break
        n_masks = min(k - 1, room)
        idx = torch.tensor([feed + [mask_id] * n_masks], device=device)  # (1, len(feed) + n_masks)
        logits, _ = model(idx, cache=cache)
        out.n_forward += 1
        cache.truncate(cache.length - n_masks)             # forget the masks' keys/values
        probs = torch.softmax(logits[0, -(n_masks + 1):, :n_vocab].float(), dim=-1)  # (n_masks + 1, n_vocab)
        confidence, tokens = probs.max(dim=-1)
        n_emit = n_masks + 1
        if tau is not None:  # ConfAdapt: stop before the first position below tau
            below = (confidence < tau).nonzero()
            n_emit = max(1, int(below[0]) if len(below) else n_emit)
        chunk = tokens[:n_emit].tolist()[:max_new_tokens - len(out.tokens)]
        if eos_id in chunk:
            chunk = chunk[:chunk.index(eos_id) + 1]
        out.tokens += chunk
        out.chunks.append(len(chunk))
        if chunk[-1] == eos_id or cache.length + len(chunk) >= model.config.block_size:
            break
        feed = chunk
    return out


def load_for_decoding(path, device, kinds=("teacher", "draft", "student")):
    """(model, tokenizer, checkpoint dict) of a checkpoint, ready to decode."""
    ckpt = load_checkpoint(path, kinds=kinds, device=device)
    return model_from_checkpoint(ckpt, device), tokenizer_from_checkpoint(ckpt), ckpt


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", default="out/teacher.pt", help="checkpoint to decode with")
    p.add_argument("--prompt", required=True, help="a question (wrapped as 'Question: ...\\nAnswer:')")
    p.add_argument("--raw", action="store_true", help="feed --prompt as it is, without the question wrapper")
    p.add_argument("--max_new_tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top_k", type=int, default=None, help="sample among the k most likely tokens")
    p.add_argument("--no_cache", action="store_true", help="recompute the whole sequence every step")
    p.add_argument("--k", type=int, default=None, help="student: positions read per pass (default: its k_max)")
    p.add_argument("--tau", type=float, default=0.9, help="student: ConfAdapt confidence threshold in (0, 1]")
    p.add_argument("--static", action="store_true", help="student: emit all k tokens of every pass")
    p.add_argument("--show-chunks", action="store_true", help="mark the tokens of each forward pass")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.add_argument("--seed", type=int, default=1337)
    args = p.parse_args()
    if args.temperature < 0:
        raise UserError(f"--temperature must be >= 0, got {args.temperature}")
    if args.top_k is not None and args.top_k < 1:
        raise UserError(f"--top_k must be >= 1, got {args.top_k}")
    if args.max_new_tokens < 1:
        raise UserError(f"--max_new_tokens must be >= 1, got {args.max_new_tokens}")

    device = pick_device(args.device)
    model, enc, ckpt = load_for_decoding(args.ckpt, device)
    text = args.prompt if args.raw else format_prompt(args.prompt.strip())
    prompt_ids = enc.encode_ordinary(text) if args.prompt.strip() else []
    eos_id = enc.encode(EOT, allowed_special={EOT})[0]
    generator = torch.Generator(device=device).manual_seed(args.seed)

    t0 = time.time()
    if ckpt["kind"] == "student":
        k = args.k or ckpt["k_max"]
        out = generate_mtp(model, prompt_ids, args.max_new_tokens, eos_id, enc.n_vocab, ckpt["mask_id"], k,
                           tau=None if args.static else args.tau)
        how = f"static k={k}" if args.static else f"ConfAdapt tau={args.tau}, k_max={k}"
    else:
        out = generate_ntp(model, prompt_ids, args.max_new_tokens, eos_id, enc.n_vocab, args.temperature,
                           args.top_k, use_cache=not args.no_cache, generator=generator)
        how = "NTP " + ("greedy" if args.temperature == 0 else f"sampling at temperature {args.temperature}")
    elapsed = time.time() - t0
    tokens = [t for t in out.tokens if t != eos_id]
    if args.show_chunks:  # each forward pass's tokens in brackets, followed by how many there were
        pieces, start = [], 0
        for size in out.chunks:
            chunk = [t for t in out.tokens[start:start + size] if t != eos_id]
            pieces.append(f"[{enc.decode(chunk)}]{size}")
            start += size
        print(text + "".join(pieces))
    else:
        print(text + enc.decode(tokens))
    print(f"\n[{how}: {len(out.tokens)} tokens in {out.n_forward} forward passes = "
          f"{out.tokens_per_forward:.2f} tokens/forward (effective k), "
          f"{len(out.tokens) / elapsed:.0f} tokens/s on {device}]", file=sys.stderr)


if __name__ == "__main__":
    try:
        main()
    except UserError as e:
        sys.exit(f"error: {e}")
