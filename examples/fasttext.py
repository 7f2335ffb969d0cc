"""fastText-style skip-gram with subwords: a word's input vector pools its character n-grams.

Each word's input vector is ``sparsemb.EmbeddingBag(mode="mean")`` over its own row and the
rows of its character n-grams (n = 3..6 of ``<word>``, FNV-1a hashed into ``--buckets`` rows,
2,000,000 by default, as fastText), trained with negative sampling against a
``sparsemb.Embedding`` of output vectors and ``sparsemb.optim.SparseAdam``; a step touches only
the rows of its batch, so the 2M-bucket table costs nothing per step. Words never seen in
training still get a vector from their n-grams (the point of subwords). Same corpus as
``examples/word2vec.py`` (the standard library's docstrings and comments, or ``--corpus``).

    python examples/fasttext.py                       # sparsemb
    python examples/fasttext.py --baseline torch      # nn.EmbeddingBag(sparse=True) + SparseAdam
    python examples/fasttext.py --baseline torch-dense   # nn.EmbeddingBag + Adam (dense)
    python examples/fasttext.py --smoke               # tiny run for CI

Writes ``vectors_<provider>.vec`` (fastText's text format, read back by ``sparsemb.vectors``) and
``summary_<provider>.json`` to ``--out``; prints the loss, steps/s and nearest neighbours.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import sparsemb
from sparsemb.optim import SparseAdam
from sparsemb.vectors import load_vectors, save_word2vec


def _word2vec_module():
    """examples/word2vec.py, for its corpus, vocabulary and skip-gram pair helpers."""
    path = Path(__file__).resolve().parent / "word2vec.py"
    spec = importlib.util.spec_from_file_location("_sparsemb_word2vec_example", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


w2v = _word2vec_module()
PROVIDERS = ("sparsemb", "torch", "torch-dense")
UNSEEN = ("filenames", "threadsafe", "socketserver", "reopened", "listing")


def fnv1a(text: str) -> int:
    """32-bit FNV-1a hash of the UTF-8 bytes, as fastText hashes its n-grams."""
    h = 2166136261
    for byte in text.encode("utf-8"):
        h = ((h ^ byte) * 16777619) & 0xFFFFFFFF
    return h


def subword_rows(word: str, num_words: int, buckets: int, nmin: int = 3, nmax: int = 6):
    """Rows of the n-grams of ``<word>`` (n = nmin..nmax) in the input table: after the words."""
    marked = f"<{word}>"
    grams = {marked[i:i + n] for n in range(nmin, nmax + 1) for i in range(len(marked) - n + 1)}
    grams.discard(marked)  # the whole word has its own row
    return sorted(num_words + fnv1a(g) % buckets for g in grams)


class Subwords:
    """Every vocabulary word's bag of input rows (its own row first), as CSR arrays."""

    def __init__(self, words: list[str], buckets: int) -> None:
        bags = [[i, *subword_rows(w, len(words), buckets)] for i, w in enumerate(words)]
        self.rows = torch.tensor([r for bag in bags for r in bag], dtype=torch.int64)
        lengths = torch.tensor([len(bag) for bag in bags])
        self.starts = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
        self.num_words, self.buckets = len(words), buckets

    def bags(self, word_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(flat input rows, offsets) of the words ``word_ids`` (1-D)."""
        start, end = self.starts[word_ids], self.starts[word_ids + 1]
        lengths = end - start
        offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)[:-1]])
        within = torch.arange(int(lengths.sum())) - torch.repeat_interleave(offsets, lengths)
        return self.rows[torch.repeat_interleave(start, lengths) + within], offsets


class SubwordSkipGram(nn.Module):
    def __init__(self, bag_cls, table_cls, num_words, buckets, dim, sparse):
        super().__init__()
        self.inp = bag_cls(num_words + buckets, dim, mode="mean", sparse=sparse)
        self.out = table_cls(num_words, dim, sparse=sparse)
        with torch.no_grad():
            self.inp.weight.uniform_(-1 / dim, 1 / dim)
            self.out.weight.zero_()

    def forward(self, rows, offsets, context, negatives):
        v = self.inp(rows, offsets)  # (B, D): mean of each center word's rows
        u = self.out(torch.cat([context[:, None], negatives], dim=1))  # (B, 1 + K, D)
        scores = (u * v.unsqueeze(1)).sum(-1)
        return -(F.logsigmoid(scores[:, 0]) + F.logsigmoid(-scores[:, 1:]).sum(1)).mean()


def build(provider, num_words, buckets, dim, lr, device):
    if provider == "sparsemb":
        model = SubwordSkipGram(sparsemb.EmbeddingBag, sparsemb.Embedding, num_words, buckets,
                                dim, sparse=True)
        return model.to(device), SparseAdam(model.parameters(), lr=lr)
    sparse = provider == "torch"
    model = SubwordSkipGram(nn.EmbeddingBag, nn.Embedding, num_words, buckets, dim, sparse)
    rule = torch.optim.SparseAdam if sparse else torch.optim.Adam
    return model.to(device), rule(model.parameters(), lr=lr)


def word_vectors(model, subwords: Subwords, words: list[str], known: dict[str, int]):
    """Input vectors of ``words``: own row + n-grams when known, n-grams alone when unseen."""
    bags = [[known[w]] if w in known else [] for w in words]
    bags = [b + subword_rows(w, subwords.num_words, subwords.buckets)
            for b, w in zip(bags, words, strict=True)]
    rows = torch.tensor([r for b in bags for r in b], dtype=torch.int64)
    offsets = torch.tensor([0, *np.cumsum([len(b) for b in bags])[:-1].tolist()])
    device = model.inp.weight.device
    with torch.no_grad():
        return model.inp(rows.to(device), offsets.to(device)).float().cpu()


def nearest(vectors, query_vectors, queries, words, k=5):
    unit = F.normalize(vectors, dim=1)
    result = {}
    for word, q in zip(queries, F.normalize(query_vectors, dim=1), strict=True):
        sims = unit @ q
        top = torch.topk(sims, min(k + 1, sims.numel()))
        result[word] = [(words[i], round(s, 3)) for s, i in
                        zip(top.values.tolist(), top.indices.tolist(), strict=True)
                        if words[i] != word][:k]
    return result


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", type=Path)
    p.add_argument("--max-files", type=int)
    p.add_argument("--baseline", choices=PROVIDERS[1:])
    p.add_argument("--buckets", type=int, default=2_000_000)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--dim", type=int, default=100)
    p.add_argument("--window", type=int, default=5)
    p.add_argument("--negatives", type=int, default=5)
    p.add_argument("--lr", type=float, default=0.005)
    p.add_argument("--min-count", type=int, default=5)
    p.add_argument("--sample", type=float, default=1e-3)
    p.add_argument("--probe", nargs="*", default=list(w2v.PROBES))
    p.add_argument("--unseen", nargs="*", default=list(UNSEEN),
                   help="words to build from n-grams alone (skipped if in the vocabulary)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int)
    p.add_argument("--out", type=Path, default=w2v.DEFAULT_OUT)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="tiny run for CI")
    args = p.parse_args(argv)
    if args.smoke:
        small = {"max_files": 20, "steps": 40, "batch_size": 128, "dim": 16, "window": 3,
                 "min_count": 2, "lr": 0.02, "buckets": 20_000}
        for name, value in small.items():
            if getattr(args, name) == p.get_default(name):
                setattr(args, name, value)
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    provider, device = args.baseline or "sparsemb", torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.corpus is not None:
        docs = args.corpus.read_text(encoding="utf-8", errors="replace").splitlines()
    else:
        docs = w2v.stdlib_corpus(args.out, args.max_files, progress=False)
    tokens = w2v.tokenize_docs(docs)
    vocab = w2v.Vocab(tokens, args.min_count, None)
    ids, doc_ids = vocab.encode(tokens)
    keep = w2v.keep_probabilities(vocab.counts, args.sample)
    noise_table = torch.from_numpy(w2v.negative_table(vocab.counts)).to(device)
    subwords = Subwords(vocab.words, args.buckets)
    print(f"corpus: {len(docs)} documents, {ids.size} tokens, vocabulary {len(vocab.words)}, "
          f"{args.buckets:,} n-gram buckets, {subwords.rows.numel() / len(vocab.words):.1f} "
          "rows per word")
    model, optimizer = build(provider, len(vocab.words), args.buckets, args.dim, args.lr, device)
    print(f"{provider}: {type(model.inp).__module__}.{type(model.inp).__name__}"
          f"(sparse={model.inp.sparse}) + {type(optimizer).__name__}, device {device}")

    generator = torch.Generator(device=device).manual_seed(args.seed)
    losses, centers, cursor, batch = [], None, 0, args.batch_size
    warmup = min(10, args.steps // 10)
    elapsed = 0.0
    for step in range(args.steps):
        if centers is None or cursor + batch > centers.numel():  # a new epoch, not timed
            c, x = w2v.skipgram_pairs(ids, doc_ids, keep, args.window, rng)
            centers, contexts, cursor = torch.from_numpy(c), torch.from_numpy(x), 0
        tick = time.perf_counter()
        center, context = centers[cursor:cursor + batch], contexts[cursor:cursor + batch]
        cursor += batch
        rows, offsets = subwords.bags(center)
        noise = noise_table[torch.randint(noise_table.numel(), (batch, args.negatives),
                                          device=device, generator=generator)]
        optimizer.zero_grad(set_to_none=True)
        loss = model(rows.to(device), offsets.to(device), context.to(device), noise)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if step >= warmup:
            elapsed += time.perf_counter() - tick
    steps_per_s = (args.steps - warmup) / elapsed if elapsed > 0 else float("nan")

    vectors = word_vectors(model, subwords, vocab.words, vocab.index)
    shown = [w for w in args.probe if w in vocab.index]
    unseen = [w for w in args.unseen if w not in vocab.index]
    neighbours = nearest(vectors, vectors[[vocab.index[w] for w in shown]], shown, vocab.words)
    if unseen:
        built = word_vectors(model, subwords, unseen, {})
        neighbours.update(nearest(vectors, built, unseen, vocab.words))
    print("\nnearest neighbours (cosine; * = never seen, built from its n-grams):")
    for word, near in neighbours.items():
        mark = "*" if word in unseen else " "
        print(f" {mark}{word:>13}: " + ", ".join(f"{w} {s:.2f}" for w, s in near))

    path = args.out / f"vectors_{provider}.vec"
    save_word2vec(path, vocab.words, vectors, progress=False)
    assert load_vectors(path, cache=False, progress=False).words == vocab.words
    quarter = max(1, len(losses) // 4)
    first, last = float(np.mean(losses[:quarter])), float(np.mean(losses[-quarter:]))
    summary = {"provider": provider, "device": str(device), "steps": args.steps,
               "buckets": args.buckets, "dim": args.dim, "batch_size": batch,
               "vocab_size": len(vocab.words), "steps_per_s": steps_per_s,
               "loss_first_quarter": first, "loss_last_quarter": last,
               "neighbours": neighbours, "unseen": unseen, "vectors": str(path),
               "threads": torch.get_num_threads()}
    (args.out / f"summary_{provider}.json").write_text(json.dumps(summary, indent=1))
    print(f"\nvectors: {path} (fastText .vec)")
    print(f"loss: {first:.3f} (first quarter) -> {last:.3f} (last quarter)")
    print(f"{provider}: {steps_per_s:.1f} steps/s after {warmup} warm-up steps, "
          f"{args.buckets:,} buckets, on {device}, {torch.get_num_threads()} threads")
    summary["losses"] = losses
    return summary


if __name__ == "__main__":
    main()
