"""examples/fasttext.py in smoke mode on a tiny corpus: it trains (the loss goes down), builds
vectors for unseen words from their n-grams and writes a .vec file sparsemb.vectors reads."""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path

import pytest
import torch

from sparsemb.vectors import load_vectors

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "fasttext.py"


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("fasttext_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def corpus(tmp_path):
    rng = random.Random(0)
    animals, places = ["cat", "cats", "dog", "dogs"], ["mat", "roof", "tree", "pond"]
    lines = [f"the {rng.choice(animals)} sat on the {rng.choice(places)}" for _ in range(300)]
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def test_fnv1a_matches_the_reference_values(example):
    assert example.fnv1a("") == 0x811C9DC5  # the offset basis
    assert example.fnv1a("a") == 0xE40C292C  # published FNV-1a 32-bit test vector
    assert example.fnv1a("foobar") == 0xBF9CF968


@pytest.mark.parametrize("baseline", [None, "torch"])
def test_smoke(example, corpus, tmp_path, baseline):
    threads = torch.get_num_threads()
    out = tmp_path / "out"
    argv = ["--smoke", "--corpus", str(corpus), "--out", str(out), "--steps", "30",
            "--batch-size", "64", "--buckets", "5000", "--probe", "cat",
            "--unseen", "catdog", "--threads", "1"]
    try:
        summary = example.main(argv + (["--baseline", baseline] if baseline else []))
    finally:
        torch.set_num_threads(threads)
    assert summary["loss_last_quarter"] < summary["loss_first_quarter"]
    assert summary["unseen"] == ["catdog"] and set(summary["neighbours"]) == {"cat", "catdog"}
    vectors = load_vectors(summary["vectors"], cache=False, progress=False)
    assert len(vectors) == summary["vocab_size"] and vectors.dim == summary["dim"]
    assert summary["steps_per_s"] > 0
