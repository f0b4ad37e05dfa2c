"""
ConfAdapt's gate, other ways: experiments that did not become the method, kept so that the
notebook's rows reproduce (docs/notebook.md names the command of each). Each is a `pick` for
decode.generate_mtp: it takes a pass's scores, (n, n_vocab) for block positions 1..n, and the
sampling settings, and returns the tokens and the confidences that ConfAdapt compares with
tau, (n,) each, as the method's decode.pick_block does.

- Two greedy gates (decode.py --gate run, --calibrated; bench.py --strategies calibrated): what
  a pass's confidence is before it is compared with tau. Both moved along the paper's curve,
  not above it.
- Two ways to sample (bench.py --temperature T --strategies largest,sampled_at_1): the gate
  reading the largest probability whatever token was drawn, and the authors' own sampling.
"""
import torch

from decode import confadapt_emits, pick_block, token_probs


def run_confidence(scores, temperature=0.0, top_k=None, generator=None):
    """decode.py --gate run: the product of the confidences up to each position, the student's
    own odds that the whole run is right, so a run of tokens each barely above tau stops sooner."""
    tokens, confidence = pick_block(scores, temperature, top_k, generator)
    return tokens, confidence.cumprod(0)


def calibrated_confidence(scores, temperature=0.0, top_k=None, generator=None, temperatures=()):
    """decode.py --calibrated: each position's confidence at the temperature fitted for it after
    distillation (distill_mtp.fit_temperatures), so that a confidence of tau is right about tau
    of the time at every position. Dividing by a temperature leaves every argmax as it is.
    Give it to generate_mtp as partial(calibrated_confidence, temperatures=...)."""
    tokens, _ = pick_block(scores, temperature, top_k, generator)
    t = torch.tensor(temperatures[:len(scores)], device=scores.device)[:, None]  # (n, 1)
    return tokens, torch.softmax(scores / t, dim=-1).gather(-1, tokens[:, None])[:, 0]


def largest_confidence(scores, temperature=0.0, top_k=None, generator=None):
    """bench.py --strategies largest: tokens sampled as pick_block samples them, but the gate
    reads each position's largest probability in the distribution it was drawn from, whatever
    token came: a position sure of its likeliest token lets an unlikely draw through."""
    tokens, _ = pick_block(scores, temperature, top_k, generator)
    probs = token_probs(scores, temperature, top_k) if temperature > 0 else torch.softmax(scores, dim=-1)
    return tokens, probs.amax(dim=-1)


def sampled_at_1(scores, temperature=0.0, top_k=None, generator=None, tau=None):
    """bench.py --strategies sampled_at_1: the authors' sampling under ConfAdapt (their
    generation code's conf_adapt_sample@1): the greedy gate and tokens, except that a pass whose
    run is one token samples that token at the temperature. Every multi-token run stays argmax,
    so the output is neither the greedy one nor a sample of the student's distribution.
    Give it to generate_mtp as partial(sampled_at_1, tau=tau)."""
    tokens, confidence = pick_block(scores)  # greedy
    if temperature > 0 and confadapt_emits(confidence, tau) == 1:
        first = torch.multinomial(token_probs(scores[:1], temperature, top_k), 1, generator=generator)[0]  # (1,)
        tokens = torch.cat([first, tokens[1:]])
    return tokens, confidence
