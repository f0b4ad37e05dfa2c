"""
A small byte-level BPE tokenizer, trained on our own corpus and served by tiktoken.

tiktoken encodes fast but cannot train, so we learn the merges here (the classic
algorithm: repeatedly merge the most frequent adjacent pair) and hand tiktoken the result.

Two choices matter for this project:
- The split pattern puts every digit in a token of its own. A model that sees "48" as one
  token must memorise 48 as a symbol; with digits it can learn column arithmetic.
- The vocabulary is padded to a multiple of 64, always with at least one unused slot: the
  MTP student takes a free id for its `<MTP>` mask token (see model.py).

The tokenizer is saved as one JSON file (pattern, merged tokens in rank order, special
tokens, padded size) that `load_tokenizer` turns back into a `tiktoken.Encoding`.
"""
import base64
import collections
import json
import os
import re

import tiktoken

# Words with their leading space, single digits, runs of punctuation, whitespace. Plain
# ASCII classes, so Python's `re` (training) and tiktoken's regex engine (encoding) agree.
SPLIT_PATTERN = r"""'(?:s|t|re|ve|m|ll|d)| ?[A-Za-z]+|[0-9]| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+"""
EOT = "<|endoftext|>"
PAD_TO = 64


def train_bpe(texts, vocab_size):
    """Learn `vocab_size - 256 - 1` merges on `texts`; return the tokens (bytes) in rank order."""
    n_merges = vocab_size - 256 - 1  # 256 single bytes, the merges, and <|endoftext|>
    if n_merges < 0:
        raise ValueError(f"vocab_size must be at least 257 (256 bytes + {EOT}), got {vocab_size}")
    words = collections.Counter()  # merges never cross a split, so count each distinct piece once
    for text in texts:
        words.update(re.findall(SPLIT_PATTERN, text))
    pieces = {tuple(bytes([b]) for b in w.encode("utf-8")): c for w, c in words.items()}
    tokens = [bytes([b]) for b in range(256)]
    for _ in range(n_merges):
        pairs = collections.Counter()
        for piece, count in pieces.items():
            for pair in zip(piece, piece[1:]):
                pairs[pair] += count
        if not pairs:
            break  # every piece is a single token already
        a, b = max(pairs, key=lambda p: (pairs[p], p))  # ties broken deterministically
        new = a + b
        tokens.append(new)
        merged = {}
        for piece, count in pieces.items():
            out, i = [], 0
            while i < len(piece):
                if i + 1 < len(piece) and piece[i] == a and piece[i + 1] == b:
                    out.append(new)
                    i += 2
                else:
                    out.append(piece[i])
                    i += 1
            merged[tuple(out)] = merged.get(tuple(out), 0) + count
        pieces = merged
    return tokens


def make_encoding(tokens, name="mtp-bpe"):
    ranks = {tok: rank for rank, tok in enumerate(tokens)}
    return tiktoken.Encoding(name=name, pat_str=SPLIT_PATTERN, mergeable_ranks=ranks,
                             special_tokens={EOT: len(tokens)})


def padded_vocab_size(enc):
    """The model's vocabulary: the tokenizer's plus at least one free slot (for <MTP>),
    rounded up to a multiple of 64."""
    return -(-(enc.n_vocab + 1) // PAD_TO) * PAD_TO


def save_tokenizer(tokens, path):
    blob = {"pattern": SPLIT_PATTERN, "special_tokens": {EOT: len(tokens)},
            "tokens": [base64.b64encode(t).decode("ascii") for t in tokens]}
    blob["padded_vocab_size"] = padded_vocab_size(make_encoding(tokens))
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(blob, f)
    os.replace(tmp, path)


def load_tokenizer(path):
    """The tiktoken.Encoding saved at `path` by data/prepare.py."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no tokenizer at {path}: run `python data/prepare.py` first")
    with open(path) as f:
        blob = json.load(f)
    return make_encoding([base64.b64decode(t) for t in blob["tokens"]])
