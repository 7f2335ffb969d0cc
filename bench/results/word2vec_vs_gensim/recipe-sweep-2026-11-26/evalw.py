"""wordsim353 Spearman and questions-words accuracy computed as gensim's ``evaluate_word_pairs``
and ``evaluate_word_analogies`` do (upper-cased lookups in the first 300k words, pairs or
questions with an unknown word skipped), with numpy and scipy only: the sweep host had no gensim.
Both figures were checked equal to gensim's on the same vectors."""

import numpy as np
from scipy.stats import spearmanr


def ok_vocab(words, restrict=300000):
    """Upper-cased word -> row; the most frequent spelling wins."""
    vocab = {}
    for i, w in reversed(list(enumerate(words[:restrict]))):
        vocab[w.upper()] = i
    return vocab


def unit_rows(vecs):
    return vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)


def wordsim(words, vecs, path):
    """(Spearman of cosine against the human scores, percent of pairs out of vocabulary)."""
    vocab, unit = ok_vocab(words), unit_rows(vecs)
    gold, model, oov, total = [], [], 0, 0
    for line in open(path, encoding="utf-8"):
        parts = line.rstrip("\n").split("\t")
        if line.startswith("#") or len(parts) != 3:
            continue
        a, b = parts[0].upper(), parts[1].upper()
        total += 1
        if a not in vocab or b not in vocab:
            oov += 1
            continue
        gold.append(float(parts[2]))
        model.append(float(unit[vocab[a]] @ unit[vocab[b]]))
    return float(spearmanr(gold, model)[0]), 100.0 * oov / total


def analogies(words, vecs, path):
    """Share of a:b::c:d questions whose nearest word to b - a + c (a, b, c left out) is d."""
    vocab, unit = ok_vocab(words), unit_rows(vecs)
    questions = []
    for line in open(path, encoding="utf-8"):
        ws = line.upper().split()
        if not line.startswith(":") and len(ws) == 4 and all(w in vocab for w in ws):
            questions.append([vocab[w] for w in ws])
    if not questions:
        return 0.0
    q, correct = np.array(questions), 0
    for i in range(0, len(q), 512):
        blk = q[i:i + 512]
        target = unit_rows(unit[blk[:, 1]] - unit[blk[:, 0]] + unit[blk[:, 2]])
        sims = target @ unit.T
        for j in range(3):
            sims[np.arange(len(blk)), blk[:, j]] = -np.inf
        correct += int((sims.argmax(1) == blk[:, 3]).sum())
    return correct / len(q)
