"""
Prepare a dataset: problems -> tokenizer -> train.bin / val.bin / test.jsonl.

    python data/prepare.py                        # synthetic math problems (data/problems.py)
    python data/prepare.py --input gsm8k.jsonl    # your own question/answer pairs, or plain text

Writes into --out_dir (default data/synth):
    tokenizer.json   the BPE tokenizer (data/tokenizer.py), trained on the training split
    train.bin        uint16 token ids of the training documents, each ended by <|endoftext|>
                     (synthetic: the problems, plus --n_drill arithmetic drills if asked)
    val.bin          the same for the validation documents
    test.jsonl       held-out {"question", "answer"} pairs for bench.py

Splits are decided by a hash of the question text, so a question can never land in two
splits (a test question never appears in training, even if the generator repeats it).
"""
import argparse
import hashlib
import json
import os
import random
import sys
import time

import numpy as np

if __package__:  # imported as data.prepare (the tests parse the Makefile's flags with it)
    from .problems import drill, final_answer, format_document, generate
    from .tokenizer import EOT, load_tokenizer, save_tokenizer, train_bpe
else:  # run as a script: python data/prepare.py
    from problems import drill, final_answer, format_document, generate
    from tokenizer import EOT, load_tokenizer, save_tokenizer, train_bpe


def split_of(question, val_percent, test_percent):
    """'train', 'val' or 'test', fixed by the question text alone."""
    bucket = int(hashlib.md5(question.encode("utf-8")).hexdigest(), 16) % 100
    if bucket < test_percent:
        return "test"
    return "val" if bucket < test_percent + val_percent else "train"


def synthetic_splits(args):
    """Draw problems until every split has its quota; the test split holds distinct questions."""
    want = {"train": args.n_train, "val": args.n_val, "test": args.n_test}
    splits = {"train": [], "val": [], "test": []}
    seen_test = set()
    batch_seed = args.seed
    while any(len(splits[s]) < want[s] for s in splits):
        for p in generate(10_000, seed=batch_seed):
            s = split_of(p["question"], args.val_percent, args.test_percent)
            if len(splits[s]) >= want[s] or (s == "test" and p["question"] in seen_test):
                continue
            seen_test.add(p["question"]) if s == "test" else None
            splits[s].append(p)
        batch_seed += 1_000_003  # the next batch of problems, still a function of --seed
    rng = random.Random(args.seed - 1)
    splits["train"] += [{"text": drill(rng)} for _ in range(args.n_drill)]
    random.Random(args.seed).shuffle(splits["train"])  # drills spread through the stream
    return splits


def read_user_file(path):
    """Question/answer pairs from JSONL (GSM8K or MetaMathQA field names), or plain text."""
    if not os.path.exists(path):
        raise ValueError(f"{path} does not exist")
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    if not path.endswith(".jsonl"):
        # plain text: every paragraph is a document; there is nothing to score, so no test set
        paragraphs = [p.strip() for p in "\n".join(lines).split("\n\n") if p.strip()]
        if not paragraphs:
            raise ValueError(f"{path} contains no text")
        return [{"text": p} for p in paragraphs]
    pairs = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} line {lineno} is not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path} line {lineno} is not a JSON object")
        question = row.get("question", row.get("query"))
        answer = row.get("answer", row.get("response"))
        if not isinstance(question, str) or not isinstance(answer, str):
            raise ValueError(f"{path} line {lineno} needs string fields 'question' and 'answer' "
                             f"(GSM8K) or 'query' and 'response' (MetaMathQA)")
        pairs.append({"question": question, "answer": answer})
    if not pairs:
        raise ValueError(f"{path} contains no question/answer pairs")
    return pairs


def user_splits(args):
    splits = {"train": [], "val": [], "test": []}
    for row in read_user_file(args.input):
        key = row.get("question", row.get("text"))
        s = split_of(key, args.val_percent, args.test_percent)
        if s == "test" and "text" in row:
            s = "val"  # plain text has no answers to score
        splits[s].append(row)
    if not splits["train"]:
        raise ValueError(f"{args.input} is too small: no document fell into the training split")
    return splits


def document(row):
    return row["text"] if "text" in row else format_document(row["question"], row["answer"])


def write_bin(enc, rows, path):
    eot = enc.encode(EOT, allowed_special={EOT})
    ids = []
    for doc in enc.encode_ordinary_batch([document(r) for r in rows]):
        ids.extend(doc + eot)
    arr = np.array(ids, dtype=np.uint16)  # our vocabularies are far below 2**16
    arr.tofile(path + ".tmp")
    os.replace(path + ".tmp", path)
    return len(arr)


def check_args(args):
    """Numbers that cannot make a dataset, refused before any work (raises ValueError)."""
    for flag in ("n_train", "n_val", "n_test"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    if args.n_drill < 0:
        raise ValueError(f"--n_drill must be >= 0, got {args.n_drill}")
    for flag in ("val_percent", "test_percent"):  # 0 would never fill the split: the generator would run forever
        if not 1 <= getattr(args, flag) <= 49:
            raise ValueError(f"--{flag} must be in [1, 49], got {getattr(args, flag)}")
    if args.vocab_size < 257:
        raise ValueError(f"--vocab_size must be >= 257 (256 bytes + the end-of-text token), got {args.vocab_size}")


def parse_args(argv=None):
    """The flags, checked before any work (raises ValueError for numbers that cannot work)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out_dir", default="data/synth", help="where to write the files (default: %(default)s)")
    p.add_argument("--input", default=None, help="a .jsonl of question/answer pairs, or a text file "
                   "(default: generate synthetic problems)")
    p.add_argument("--seed", type=int, default=1337, help="seeds the generator (default: %(default)s)")
    p.add_argument("--n_train", type=int, default=100_000, help="synthetic training problems (default: %(default)s)")
    p.add_argument("--n_drill", type=int, default=0, help="synthetic arithmetic drill documents added to the "
                   "training split, see docs/data.md (default: %(default)s)")
    p.add_argument("--n_val", type=int, default=2_000, help="synthetic validation problems (default: %(default)s)")
    p.add_argument("--n_test", type=int, default=1_000,
                   help="synthetic test problems, distinct questions (default: %(default)s)")
    p.add_argument("--val_percent", type=int, default=5, help="share of questions hashed to val (default: %(default)s)")
    p.add_argument("--test_percent", type=int, default=5,
                   help="share of questions hashed to test (default: %(default)s)")
    p.add_argument("--vocab_size", type=int, default=768,
                   help="BPE size (at most) before padding to a multiple of 64 (default: %(default)s)")
    args = p.parse_args(argv)
    check_args(args)
    return args


def main():
    t0 = time.time()
    try:
        args = parse_args()
        splits = user_splits(args) if args.input else synthetic_splits(args)
    except ValueError as e:
        sys.exit(f"error: {e}")
    source = args.input or "the synthetic generator (data/problems.py)"
    print(f"problems from {source}: " + ", ".join(f"{s} {len(r):,}" for s, r in splits.items()))

    os.makedirs(args.out_dir, exist_ok=True)
    tok_path = os.path.join(args.out_dir, "tokenizer.json")
    train_texts = [document(r) for r in splits["train"][:50_000]]  # plenty to learn a few hundred merges
    save_tokenizer(train_bpe(train_texts, args.vocab_size), tok_path)
    enc = load_tokenizer(tok_path)
    print(f"tokenizer: {enc.n_vocab} tokens (digits are single tokens) -> {tok_path}")

    for split in ("train", "val"):
        n_tokens = write_bin(enc, splits[split], os.path.join(args.out_dir, f"{split}.bin"))
        print(f"{split}.bin: {n_tokens:,} tokens")
    test_path = os.path.join(args.out_dir, "test.jsonl")
    with open(test_path + ".tmp", "w") as f:
        for r in splits["test"]:
            if final_answer(r["answer"]) is not None:  # only problems we can score
                f.write(json.dumps({"question": r["question"], "answer": r["answer"]}) + "\n")
    os.replace(test_path + ".tmp", test_path)
    print(f"test.jsonl: {len(splits['test']):,} held-out problems")
    print(f"done in {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
