"""wordsim353 Spearman and questions-words accuracy as gensim computes them (numpy + scipy)."""
import numpy as np
from scipy.stats import spearmanr


def load_txt(path):
    with open(path, encoding="utf-8") as f:
        n, d = map(int, f.readline().split())
        words, rows = [], []
        for line in f:
            parts = line.rstrip().split(" ")
            words.append(parts[0]); rows.append(np.array(parts[1:], dtype=np.float32))
    return words, np.stack(rows)


def ok_vocab(words, restrict=300000):
    vocab = {}
    for i, w in reversed(list(enumerate(words[:restrict]))):
        vocab[w.upper()] = i
    return vocab


def wordsim(words, vecs, path):
    vocab = ok_vocab(words)
    unit = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
    gold, model, oov, total = [], [], 0, 0
    for line in open(path, encoding="utf-8"):
        if line.startswith("#"):
            continue
        parts = line.rstrip("\n").split("\t")
        if len(parts) != 3:
            continue
        a, b, sim = parts[0].upper(), parts[1].upper(), float(parts[2])
        total += 1
        if a not in vocab or b not in vocab:
            oov += 1
            continue
        gold.append(sim); model.append(float(unit[vocab[a]] @ unit[vocab[b]]))
    return float(spearmanr(gold, model)[0]), 100.0 * oov / total


def analogies(words, vecs, path):
    vocab = ok_vocab(words)
    unit = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
    qs = []
    for line in open(path, encoding="utf-8"):
        if line.startswith(":"):
            continue
        ws = line.upper().split()
        if len(ws) != 4 or any(w not in vocab for w in ws):
            continue
        qs.append([vocab[w] for w in ws])
    if not qs:
        return 0.0
    q = np.array(qs)
    correct = 0
    for i in range(0, len(q), 512):
        blk = q[i:i + 512]
        mean = unit[blk[:, 1]] - unit[blk[:, 0]] + unit[blk[:, 2]]
        mean /= np.linalg.norm(mean, axis=1, keepdims=True)
        sims = mean @ unit.T
        for j in range(3):
            sims[np.arange(len(blk)), blk[:, j]] = -np.inf
        correct += int((sims.argmax(1) == blk[:, 3]).sum())
    return correct / len(q)
