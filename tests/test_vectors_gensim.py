"""Round trips with gensim's KeyedVectors (``pip install sparsemb[gensim]``): we read what gensim
writes and gensim reads what we write, text and binary. Skipped without gensim."""

from __future__ import annotations

import numpy as np
import pytest

from sparsemb.vectors import load_vectors, save_word2vec

gensim_models = pytest.importorskip("gensim.models")

WORDS = ["the", "cat", "sat", "café", "日本", "<unk>"]


@pytest.fixture
def array():
    return np.random.default_rng(7).standard_normal((len(WORDS), 17)).astype(np.float32)


@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize("suffix", [".txt", ".gz"])
def test_we_read_what_gensim_writes(tmp_path, array, binary, suffix):
    kv = gensim_models.KeyedVectors(vector_size=array.shape[1])
    kv.add_vectors(WORDS, array.copy())
    path = tmp_path / f"gensim{suffix}"
    kv.save_word2vec_format(str(path), binary=binary)
    got = load_vectors(path, cache=False, pad_token=None)
    assert got.format == ("word2vec_binary" if binary else "word2vec")
    assert got.words == WORDS
    if binary:
        np.testing.assert_array_equal(got.weight.numpy(), array)
    else:  # gensim writes "%f"-style text: compare with what gensim itself reads back
        back = gensim_models.KeyedVectors.load_word2vec_format(str(path), binary=False)
        np.testing.assert_array_equal(got.weight.numpy(), back.vectors)


@pytest.mark.parametrize("binary", [False, True])
def test_gensim_reads_what_we_write(tmp_path, array, binary):
    path = tmp_path / "ours.bin"
    save_word2vec(path, WORDS, array, binary=binary)
    kv = gensim_models.KeyedVectors.load_word2vec_format(str(path), binary=binary)
    assert list(kv.index_to_key) == WORDS
    np.testing.assert_array_equal(kv.vectors, array)  # our text is exact for float32
