"""sparsemb.vectors: every format round trip, vocabulary layout, missing rows, specials, the cache,
malformed files, and the Embedding it builds. Files are small and written by the tests."""

from __future__ import annotations

import gzip
import os
import struct

import numpy as np
import pytest
import torch

import sparsemb
from sparsemb import _vector_formats
from sparsemb import vectors as sv
from sparsemb.vectors import (
    VectorFormatError,
    Vectors,
    embedding_from_vectors,
    load_vectors,
    save_glove,
    save_word2vec,
)

WORDS = ["the", "cat", "sat", "on", "mat", "café", "日本"]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """No test writes to the user's cache directory."""
    monkeypatch.setenv("SPARSEMB_CACHE_DIR", str(tmp_path / "default-cache"))


def table(rows: int, dim: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)


def write(path, text: str | bytes):
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


SAVERS = {
    "glove": lambda p, w, a: save_glove(p, w, a),
    "word2vec": lambda p, w, a: save_word2vec(p, w, a),
    "word2vec_binary": lambda p, w, a: save_word2vec(p, w, a, binary=True),
}


# -- round trips -----------------------------------------------------------------------------
@pytest.mark.parametrize("dim", [1, 3, 17])
@pytest.mark.parametrize("fmt", list(SAVERS))
@pytest.mark.parametrize("suffix", [".txt", ".gz"])
def test_round_trip_every_format(tmp_path, fmt, dim, suffix):
    array = table(len(WORDS), dim)
    path = tmp_path / f"vectors{suffix}"
    SAVERS[fmt](path, WORDS, torch.from_numpy(array))
    for format in ("auto", fmt):
        got = load_vectors(path, format, cache=False)
        assert got.format == fmt
        assert got.words == WORDS and got.index == {w: i for i, w in enumerate(WORDS)}
        assert got.weight.dtype == torch.float32
        torch.testing.assert_close(got.weight, torch.from_numpy(array), rtol=0, atol=0)
        assert (got.found, got.missing_words, got.dim) == (len(WORDS), [], dim)


def test_fasttext_vec_is_word2vec_text(tmp_path):
    array = table(3, 4)
    path = tmp_path / "wiki.vec"
    save_word2vec(path, WORDS[:3], array)
    got = load_vectors(path, "fasttext", cache=False)
    assert got.format == "word2vec" and got.words == WORDS[:3]
    np.testing.assert_array_equal(got.weight.numpy(), array)


def test_word2vec_binary_built_byte_by_byte(tmp_path):
    """The binary format as defined: header line, then word bytes, a space, dim little-endian
    float32, and an optional newline (records 1 and 3 have it, record 2 does not)."""
    rows = [("king", (0.5, -1.25, 3.0)), ("reine", (1e-3, 2.0, -0.0)), ("naïve", (7.0, 8.5, 9.0))]
    data = b"3 3\n"
    for i, (word, values) in enumerate(rows):
        data += word.encode() + b" " + struct.pack("<3f", *values) + (b"" if i == 1 else b"\n")
    path = write(tmp_path / "GoogleNews-like.bin", data)
    for format in ("auto", "word2vec_binary"):
        got = load_vectors(path, format, cache=False)
        assert got.format == "word2vec_binary"
        assert got.words == [w for w, _ in rows]
        expected = torch.tensor([v for _, v in rows], dtype=torch.float32)
        torch.testing.assert_close(got.weight, expected, rtol=0, atol=0)
    # save_word2vec(binary=True) writes exactly these bytes (with every newline)
    out = tmp_path / "again.bin"
    save_word2vec(out, got.words, got.weight, binary=True)
    assert out.read_bytes() == b"3 3\n" + b"".join(
        w.encode() + b" " + struct.pack("<3f", *v) + b"\n" for w, v in rows
    )


def test_text_variants(tmp_path):
    """C word2vec's trailing spaces, CRLF, tabs and runs of spaces, a BOM, a blank last line, and
    glove.840B's words containing spaces all read."""
    text = (
        "\ufeff4 2\r\n"
        "a 1 2 \r\n"
        "b\t3  4\n"
        "at name@example.com 5 6\n"
        ". . . 7 8\n"
        "\n"
    )
    got = load_vectors(write(tmp_path / "odd.txt", text), cache=False)
    assert got.format == "word2vec"
    assert got.words == ["a", "b", "at name@example.com", ". . ."]
    np.testing.assert_array_equal(got.weight.numpy(), [[1, 2], [3, 4], [5, 6], [7, 8]])


def test_save_precision(tmp_path):
    path = tmp_path / "v.txt"
    save_glove(path, ["a", "b"], np.array([[0.5, 0.25], [1 / 3, 2.0]], dtype=np.float32))
    lines = path.read_text().splitlines()
    assert lines[0] == "a 0.5 0.25"  # 6 digits read back exactly: the short form
    assert lines[1].split()[1] == f"{np.float32(1 / 3):.9g}"  # needs 9 digits
    save_glove(path, ["a", "b"], np.array([[0.5, 0.25], [1 / 3, 2.0]]), precision=3)
    assert path.read_text().splitlines()[1] == "b 0.333 2"


@pytest.mark.parametrize(
    "words, rows, message",
    [
        (["a b"], 1, "without whitespace"),
        ([""], 1, "non-empty"),
        (["a", "a"], 2, "appears twice"),
        (["a"], 2, "1 words for 2 vectors"),
    ],
)
def test_save_rejects_unwritable_words(tmp_path, words, rows, message):
    with pytest.raises(ValueError, match=message):
        save_word2vec(tmp_path / "v.txt", words, np.zeros((rows, 2), dtype=np.float32))
    assert not (tmp_path / "v.txt").exists()


# -- vocabulary, missing words, specials -----------------------------------------------------
@pytest.fixture
def glove_file(tmp_path):
    array = table(len(WORDS), 5, seed=1)
    path = tmp_path / "glove.txt"
    save_glove(path, WORDS, array)
    return path, array


def test_vocab_rows_follow_the_user_order(glove_file):
    path, array = glove_file
    vocab = ["mat", "dog", "the", "zebra", "日本"]
    got = load_vectors(path, vocab=vocab, missing="zeros", cache=False)
    assert got.words == vocab and got.index["the"] == 2
    assert got.found == 3 and got.missing_words == ["dog", "zebra"]
    for word in ("mat", "the", "日本"):
        np.testing.assert_array_equal(got[word].numpy(), array[WORDS.index(word)])
    assert not got["dog"].any() and not got["zebra"].any()


def test_vocab_mapping(glove_file):
    path, array = glove_file
    got = load_vectors(path, vocab={"cat": 1, "on": 0, "nope": 2}, cache=False)
    assert got.words == ["on", "cat", "nope"]
    np.testing.assert_array_equal(got.weight[:2].numpy(), array[[3, 1]])
    with pytest.raises(ValueError, match="rows must be 0..2"):
        load_vectors(path, vocab={"cat": 1, "on": 5, "nope": 2}, cache=False)


def test_vocab_errors(glove_file):
    path, _ = glove_file
    with pytest.raises(ValueError, match="lists 'cat' twice"):
        load_vectors(path, vocab=["cat", "on", "cat"], cache=False)
    with pytest.raises(TypeError, match="not a str"):
        load_vectors(path, vocab="cat", cache=False)
    with pytest.raises(ValueError, match="missing must be one of"):
        load_vectors(path, vocab=["cat"], missing="random", cache=False)


def test_missing_rules(tmp_path):
    """zeros; mean: the mean of the vectors read; normal: N(0, s^2) with s the std of the values
    read, seeded."""
    rng = np.random.default_rng(0)
    array = (rng.standard_normal((200, 40)) * 3.0).astype(np.float32)
    words = [f"w{i}" for i in range(200)]
    path = tmp_path / "v.txt"
    save_word2vec(path, words, array, binary=True)
    vocab = words[:100] + [f"new{i}" for i in range(300)]

    zeros = load_vectors(path, vocab=vocab, missing="zeros", cache=False)
    assert zeros.found == 100 and len(zeros.missing_words) == 300
    assert not zeros.weight[100:].any()

    mean = load_vectors(path, vocab=vocab, missing="mean", cache=False)
    expected = array[:100].astype(np.float64).mean(0)
    np.testing.assert_allclose(mean.weight[100:].numpy(), np.tile(expected, (300, 1)), rtol=1e-5)

    normal = load_vectors(path, vocab=vocab, missing="normal", seed=3, cache=False)
    drawn = normal.weight[100:].numpy()
    assert abs(drawn.std() / array[:100].std() - 1) < 0.05 and abs(drawn.mean()) < 0.1
    np.testing.assert_array_equal(normal.weight[:100].numpy(), array[:100])
    again = load_vectors(path, vocab=vocab, missing="normal", seed=3, cache=False)
    torch.testing.assert_close(again.weight, normal.weight, rtol=0, atol=0)
    other = load_vectors(path, vocab=vocab, missing="normal", seed=4, cache=False)
    assert not torch.equal(other.weight[100:], normal.weight[100:])


def test_nothing_found_warns(glove_file):
    path, _ = glove_file
    with pytest.warns(UserWarning, match="none of the 2 vocabulary words"):
        got = load_vectors(path, vocab=["x", "y"], cache=False)
    assert got.found == 0 and got.weight.shape == (2, 5)


def test_specials_with_vocab(glove_file):
    path, array = glove_file
    got = load_vectors(
        path, vocab=["cat", "dog", "on"], specials={"<pad>": 0, "<unk>": 1}, cache=False
    )
    assert got.words == ["<pad>", "<unk>", "cat", "dog", "on"]
    assert got.padding_idx == 0 and not got.weight[0].any()
    assert got.missing_words == ["<unk>", "dog"]  # the padding row is neither found nor missing
    assert got.found == 2
    np.testing.assert_array_equal(got.weight[[2, 4]].numpy(), array[[1, 3]])
    # negative rows count from the end; a list puts the specials first
    got = load_vectors(path, vocab=["cat", "on"], specials={"<unk>": -1}, cache=False)
    assert got.words == ["cat", "on", "<unk>"] and got.padding_idx is None
    got = load_vectors(path, vocab=["cat"], specials=["<pad>", "<unk>"], cache=False)
    assert got.words == ["<pad>", "<unk>", "cat"]


def test_specials_without_vocab(tmp_path):
    """All the file's words in order, the specials spliced in; a special the file has keeps its
    vector."""
    array = table(4, 3)
    path = tmp_path / "v.txt"
    save_word2vec(path, ["a", "<unk>", "b", "c"], array)
    got = load_vectors(path, specials={"<pad>": 0, "<unk>": 2}, cache=False)
    assert got.words == ["<pad>", "a", "<unk>", "b", "c"]
    assert not got.weight[0].any() and got.padding_idx == 0
    np.testing.assert_array_equal(got.weight[1:].numpy(), array)
    assert got.found == 4 and got.missing_words == []
    got = load_vectors(path, specials={"<s>": -1}, missing="zeros", cache=False)
    assert got.words == ["a", "<unk>", "b", "c", "<s>"] and got.missing_words == ["<s>"]


def test_pad_token_in_vocab_is_zero(glove_file):
    path, _ = glove_file
    got = load_vectors(path, vocab=["[PAD]", "cat"], pad_token="[PAD]", cache=False)
    assert got.padding_idx == 0 and not got.weight[0].any() and got.missing_words == []


@pytest.mark.parametrize(
    "vocab, specials, error, message",
    [
        (["cat", "<unk>"], {"<unk>": 0}, ValueError, "both in vocab and in specials"),
        (["cat"], {"<unk>": 5}, ValueError, "outside a table of 2 rows"),
        (["cat"], {"<unk>": 0, "<pad>": -3}, ValueError, "share a row"),
        (["cat"], {"<unk>": 0.5}, TypeError, "rows must be ints"),
        (["cat"], "<unk>", TypeError, "not a str"),
    ],
)
def test_specials_errors(glove_file, vocab, specials, error, message):
    with pytest.raises(error, match=message):
        load_vectors(glove_file[0], vocab=vocab, specials=specials, cache=False)


def test_repeated_word_keeps_its_first_vector(tmp_path):
    path = write(tmp_path / "v.txt", "a 1 2\nb 3 4\na 5 6\n")
    with pytest.warns(UserWarning, match="1 repeated words"):
        got = load_vectors(path, cache=False)
    assert got.words == ["a", "b"]
    np.testing.assert_array_equal(got.weight.numpy(), [[1, 2], [3, 4]])
    got = load_vectors(path, vocab=["a"], cache=False)
    np.testing.assert_array_equal(got.weight.numpy(), [[1, 2]])


def test_max_words(glove_file):
    path, array = glove_file
    got = load_vectors(path, max_words=3, cache=False)
    assert got.words == WORDS[:3]
    got = load_vectors(path, vocab=["the", "mat"], max_words=3, missing="zeros", cache=False)
    assert got.found == 1 and got.missing_words == ["mat"]


def test_progress_bar_on_a_big_file(glove_file, monkeypatch, capsys):
    monkeypatch.setattr(_vector_formats, "PROGRESS_MIN_BYTES", 0)
    got = load_vectors(glove_file[0], cache=False, progress=True)
    assert got.words == WORDS


# -- cache -----------------------------------------------------------------------------------
def test_cache_hit_skips_the_parser_and_invalidates_on_change(tmp_path, monkeypatch):
    array = table(6, 4)
    path = tmp_path / "v.bin"
    save_word2vec(path, WORDS[:6], array, binary=True)
    cache = tmp_path / "cache"
    options = dict(vocab=["mat", "x", "the"], specials={"<pad>": 0}, cache=cache)
    first = load_vectors(path, **options)
    assert not first.from_cache
    assert len(list(cache.glob("*.npy"))) == 1 and len(list(cache.glob("*.json"))) == 1

    def no_parsing(*args, **kwargs):
        raise AssertionError("the file was parsed; expected a cache hit")

    with monkeypatch.context() as m:
        m.setattr(sv, "VectorReader", no_parsing)
        second = load_vectors(path, **options)
        assert second.from_cache
        assert (second.words, second.found, second.missing_words, second.padding_idx) == (
            first.words, first.found, first.missing_words, first.padding_idx
        )
        torch.testing.assert_close(second.weight, first.weight, rtol=0, atol=0)
        # the memory map is copy-on-write: writing the tensor leaves the cache as it was
        second.weight.add_(1)
        third = load_vectors(path, **options)
        torch.testing.assert_close(third.weight, first.weight, rtol=0, atol=0)
        with pytest.raises(AssertionError, match="was parsed"):
            load_vectors(path, **{**options, "missing": "zeros"})  # other options: a miss
        with pytest.raises(AssertionError, match="was parsed"):
            load_vectors(path, **{**options, "vocab": ["mat", "the"]})

    # the file changes: the entry is stale, the file is parsed again, the stale entry removed
    stat = path.stat()
    save_word2vec(path, WORDS[:6], array * 2, binary=True)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    calls = []
    real_reader = sv.VectorReader
    monkeypatch.setattr(sv, "VectorReader", lambda *a, **k: calls.append(1) or real_reader(*a, **k))
    fresh = load_vectors(path, **options)
    assert calls and not fresh.from_cache
    torch.testing.assert_close(fresh.weight, first.weight * 2)
    assert len(list(cache.glob("*.npy"))) == 1 and len(list(cache.glob("*.json"))) == 1


def test_cache_default_dir_and_off(glove_file, tmp_path):
    path, _ = glove_file
    assert sv.default_cache_dir() == tmp_path / "default-cache"
    assert not load_vectors(path).from_cache
    assert load_vectors(path).from_cache
    assert not load_vectors(path, cache=False).from_cache
    assert list((tmp_path / "default-cache").glob("glove.txt-*.npy"))


def test_cache_of_a_whole_file(glove_file, tmp_path):
    path, array = glove_file
    load_vectors(path, cache=tmp_path / "c")
    hit = load_vectors(path, cache=tmp_path / "c")
    assert hit.from_cache and hit.words == WORDS and hit.index["café"] == 5
    np.testing.assert_array_equal(hit.weight.numpy(), array)


# -- malformed files -------------------------------------------------------------------------
BIN_OK = b"2 2\nab " + struct.pack("<2f", 1, 2) + b"\ncd " + struct.pack("<2f", 3, 4) + b"\n"
MALFORMED = [
    ("glove", b"a 1 2 3\nb 4 5 6\nc 7 8\n", "line 3", "wrong dimension: 2 values after the word, "
     "expected 3 (the dimension set by line 1)"),
    ("glove", b"a 1 2 3\nb 4 5 6 7\n", "line 2", "4 values after the word, expected 3"),
    ("glove", b"a 1 2\nb 4 abc\n", "line 2", "non-numeric value 'abc' in field 3"),
    ("glove", b"a 1 x\n", "line 1", "non-numeric value 'x' in field 3"),
    ("glove", b"", "line 1", "empty"),
    ("glove", b"word\n", "line 1", "expected 'word v1 v2 ...'"),
    ("word2vec", b"a 1 2\nb 3 4\n", "line 1", "bad word2vec header 'a 1 2'"),
    ("word2vec", b"2 x\na 1 2\n", "line 1", "bad word2vec header"),
    ("word2vec", b"2 0\n", "line 1", "dimension 0"),
    ("word2vec", b"3 2\na 1 2\nb 3 4\n", "line 4", "truncated: the header announces 3 vectors, "
     "the file has 2"),
    ("word2vec", b"1 2\na 1 2\nb 3 4\n", "line 3", "more vectors than the header's count of 1"),
    ("word2vec", b"2 2\na 1 2\nb 3 4 5\n", "line 3", "expected 2 (the dimension in the header)"),
    ("word2vec", b"1 2\n\xff\xfe 1 2\n", "line 2", "is not valid utf-8"),
    ("word2vec_binary", b"2 2\n", "line 1", "truncated or wrong header: a vector of "
     "dimension 2 needs at least 10 bytes, the file holds at most 0 after the header"),
    ("word2vec_binary", b"2 2\n" + b"\n" * 10, "record 1", "truncated: the file ends before it"),
    ("word2vec_binary", BIN_OK[:-6], "record 2", "truncated: 'cd' needs 8 bytes of float32, the "
     "file ends after 3"),
    ("word2vec_binary", BIN_OK[:-10], "record 2", "file ends inside its word"),
    ("word2vec_binary", BIN_OK + b"ef", "record 3", "data after the header's 2 vectors"),
    ("word2vec_binary", b"x y\n", "line 1", "bad word2vec_binary header"),
]


@pytest.mark.parametrize("fmt, data, where, message", MALFORMED)
def test_malformed_files_name_the_line(tmp_path, fmt, data, where, message):
    path = write(tmp_path / "bad.vec", data)
    with pytest.raises(VectorFormatError) as info:
        load_vectors(path, fmt, cache=False)
    text = str(info.value)
    assert text.startswith(f"{path}: {where}: "), text
    assert message in text, text
    assert isinstance(info.value, ValueError) and info.value.path == str(path)
    number = int(where.split()[1])
    assert (info.value.line if where.startswith("line") else info.value.record) == number


def test_decoding_errors_are_options(tmp_path):
    path = write(tmp_path / "v.txt", b"1 2\ncaf\xe9 1 2\n")
    with pytest.raises(VectorFormatError, match=r"line 2: the word 'caf\\xe9' is not valid"):
        load_vectors(path, cache=False)
    assert load_vectors(path, encoding="latin-1", cache=False).words == ["café"]
    assert load_vectors(path, errors="replace", cache=False).words == ["caf\ufffd"]


def test_unwanted_lines_are_not_parsed(tmp_path):
    """With a vocabulary only the wanted lines' values are read (and checked)."""
    path = write(tmp_path / "v.txt", "a 1 2\nbad 1 oops 3\nb 3 4\n")
    got = load_vectors(path, vocab=["b", "a"], cache=False)
    np.testing.assert_array_equal(got.weight.numpy(), [[3, 4], [1, 2]])
    with pytest.raises(VectorFormatError, match="line 2"):
        load_vectors(path, vocab=["bad"], cache=False)


def test_sniffing(tmp_path):
    assert _vector_formats.sniff_format(write(tmp_path / "a", "3 2\nx 1 2\n")) == "word2vec"
    assert _vector_formats.sniff_format(write(tmp_path / "b", "x 1 2\n")) == "glove"
    assert _vector_formats.sniff_format(write(tmp_path / "c", BIN_OK)) == "word2vec_binary"
    gz = tmp_path / "d.gz"
    with gzip.open(gz, "wb") as f:
        f.write(BIN_OK)
    assert _vector_formats.sniff_format(gz) == "word2vec_binary"
    with pytest.raises(ValueError, match="format must be one of"):
        load_vectors(gz, "npy", cache=False)


# -- the Embedding ---------------------------------------------------------------------------
@pytest.mark.parametrize("freeze", [True, False])
def test_embedding_from_vectors_equals_from_pretrained(glove_file, freeze):
    path, _ = glove_file
    vectors = load_vectors(path, vocab=["cat", "on", "the"], specials=["<pad>"], cache=False)
    ours = embedding_from_vectors(vectors, freeze=freeze, padding_idx="<pad>", sparse=True)
    theirs = torch.nn.Embedding.from_pretrained(
        vectors.weight.clone(), freeze=freeze, padding_idx=0, sparse=True
    )
    assert type(ours) is sparsemb.Embedding
    assert ours.weight.requires_grad is (not freeze)
    assert (ours.padding_idx, ours.sparse, ours.num_embeddings, ours.embedding_dim) == (
        theirs.padding_idx, theirs.sparse, theirs.num_embeddings, theirs.embedding_dim
    )
    torch.testing.assert_close(ours.weight, theirs.weight, rtol=0, atol=0)
    idx = torch.tensor([[0, 3, 1], [2, 2, 0]])
    torch.testing.assert_close(ours(idx), theirs(idx), rtol=0, atol=0)
    if not freeze:
        ours(idx).sum().backward()
        theirs(idx).sum().backward()
        torch.testing.assert_close(ours.weight.grad.to_dense(), theirs.weight.grad.to_dense())


def test_embedding_from_a_path_in_one_call(glove_file):
    path, array = glove_file
    emb = embedding_from_vectors(
        path, vocab=["mat", "the"], specials={"<pad>": 0}, padding_idx=0, max_norm=1.0,
        freeze=False, cache=False, dtype=torch.float64,
    )
    assert isinstance(emb, sparsemb.Embedding) and emb.max_norm == 1.0 and emb.padding_idx == 0
    assert emb.weight.dtype == torch.float64 and emb.weight.shape == (3, 5)
    np.testing.assert_array_equal(emb.weight[1:].detach().numpy(), array[[4, 0]])
    assert isinstance(load_vectors(path, cache=False).to_embedding(), sparsemb.Embedding)
    with pytest.raises(ValueError, match="'<nope>' is not a word"):
        embedding_from_vectors(path, padding_idx="<nope>", cache=False)
    with pytest.raises(TypeError, match="need a path"):
        embedding_from_vectors(load_vectors(path, cache=False), vocab=["a"])


def test_save_a_loaded_vectors_object(glove_file, tmp_path):
    path, array = glove_file
    vectors = load_vectors(path, cache=False)
    assert isinstance(vectors, Vectors) and len(vectors) == len(WORDS) and "cat" in vectors
    out = tmp_path / "out.txt"
    save_word2vec(out, vectors)
    np.testing.assert_array_equal(load_vectors(out, cache=False).weight.numpy(), array)


# -- hostile and real-world files ------------------------------------------------------------
def gz(path, data: bytes):
    path.write_bytes(gzip.compress(data, mtime=0))
    return path


@pytest.mark.parametrize("fmt", ["auto", "word2vec", "word2vec_binary"])
@pytest.mark.parametrize("vocab", [None, ["a", "b"]])
@pytest.mark.parametrize("suffix", [".txt", ".gz"])
def test_a_header_dim_the_file_cannot_hold(tmp_path, fmt, vocab, suffix):
    """29 bytes claiming dim 10^9: a clear error, before anything is sized by the header."""
    data = b"2 1000000000\na 1 2 3\n"
    path = tmp_path / f"v{suffix}"
    gz(path, data) if suffix == ".gz" else write(path, data)
    with pytest.raises(VectorFormatError, match=r"line 1: .*dimension 1000000000") as info:
        load_vectors(path, fmt, vocab=vocab, cache=False)
    assert info.value.path == str(path)


@pytest.mark.parametrize("cut", ["truncated", "flipped", "not gzip", "trailing"])
def test_corrupt_gzip_is_a_format_error(tmp_path, cut):
    blob = gzip.compress(b"3 2\na 1 2\nb 3 4\nc 5 6\n" * 1, mtime=0)
    data = {
        "truncated": blob[:-9],
        "flipped": blob[:-6] + bytes([blob[-6] ^ 0xFF]) + blob[-5:],  # in the CRC
        "not gzip": b"3 2\na 1 2\n",
        "trailing": blob + b"\x01\x02",
    }[cut]
    path = write(tmp_path / "v.vec.gz", data)
    for fmt in ("auto", "word2vec"):
        with pytest.raises(VectorFormatError, match="corrupt or truncated gzip") as info:
            load_vectors(path, fmt, cache=False)
        assert info.value.path == str(path)


def test_words_with_spaces_under_a_vocabulary_and_on_line_1(tmp_path):
    """glove.840B style: the vector is the last dim fields, the word everything before."""
    glove = write(tmp_path / "g.txt", "new york 0.5 1\na 1 2\nsan  jose\t3 4\n")
    got = load_vectors(glove, cache=False)
    assert got.words == ["new york", "a", "san jose"] and got.dim == 2
    np.testing.assert_array_equal(got.weight.numpy(), [[0.5, 1], [1, 2], [3, 4]])
    got = load_vectors(glove, vocab=["san jose", "new york"], cache=False)
    assert got.found == 2
    np.testing.assert_array_equal(got.weight.numpy(), [[3, 4], [0.5, 1]])
    w2v = write(tmp_path / "w.txt", "2 2\nnew york 0.5 1\na 1 2\n")
    got = load_vectors(w2v, vocab=["new york"], cache=False)
    np.testing.assert_array_equal(got.weight.numpy(), [[0.5, 1]])


@pytest.mark.parametrize("first", [True, False])
def test_an_absurdly_long_line_is_refused_before_it_is_read(tmp_path, first):
    line = b"w " + b"1 " * (_vector_formats.MAX_LINE_BYTES // 2 + 1) + b"\n"
    data = line if first else b"2 2\na 1 2\n" + line
    path = gz(tmp_path / "long.gz", data)
    with pytest.raises(VectorFormatError, match="longer than 1048576 bytes") as info:
        load_vectors(path, cache=False)
    assert info.value.line == (1 if first else 3)


def test_a_rewrite_keeping_size_and_mtime_is_not_served_from_the_cache(tmp_path):
    """cp -p / rsync -t / touch -d: same size and mtime, other content."""
    path = tmp_path / "v.bin"
    save_word2vec(path, WORDS[:3], table(3, 4), binary=True)
    stat = path.stat()
    first = load_vectors(path, cache=tmp_path / "c")
    assert load_vectors(path, cache=tmp_path / "c").from_cache
    save_word2vec(path, WORDS[:3], table(3, 4, seed=9), binary=True)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns
    again = load_vectors(path, cache=tmp_path / "c")
    assert not again.from_cache
    np.testing.assert_array_equal(again.weight.numpy(), table(3, 4, seed=9))
    assert not torch.equal(again.weight, first.weight)


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda meta: {**meta, "words": 5},
        lambda meta: {k: v for k, v in meta.items() if k != "dim"},
        lambda meta: {**meta, "found": "many"},
        lambda meta: {**meta, "padding_idx": 99},
        lambda meta: [meta],
        lambda meta: "not json {",
    ],
    ids=["words-int", "no-dim", "found-str", "padding-out-of-range", "list", "bad-json"],
)
def test_a_corrupt_cache_entry_is_ignored_with_a_warning(glove_file, tmp_path, corrupt):
    import json

    path, array = glove_file
    load_vectors(path, cache=tmp_path / "c")
    (meta_path,) = (tmp_path / "c").glob("*.json")
    meta = corrupt(json.loads(meta_path.read_text()))
    meta_path.write_text(meta if isinstance(meta, str) else json.dumps(meta))
    with pytest.warns(UserWarning, match="unreadable cache entry"):
        got = load_vectors(path, cache=tmp_path / "c")
    assert not got.from_cache and got.words == WORDS
    np.testing.assert_array_equal(got.weight.numpy(), array)
    assert load_vectors(path, cache=tmp_path / "c").from_cache  # rewritten


def test_concurrent_loads_in_threads_do_not_collide(glove_file, tmp_path):
    import threading
    import warnings

    path, array = glove_file
    for attempt in range(5):
        barrier = threading.Barrier(8)
        results = []

        def load(cache=tmp_path / f"c{attempt}", barrier=barrier, results=results):
            barrier.wait()
            results.append(load_vectors(path, cache=cache, progress=False))

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            threads = [threading.Thread(target=load) for _ in range(8)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        assert not [str(w.message) for w in caught]
        assert len(results) == 8
        for got in results:
            np.testing.assert_array_equal(got.weight.numpy(), array)


def test_blank_and_whitespace_lines(tmp_path):
    """A blank line after the header is text, not binary; whitespace-only lines are blank."""
    path = write(tmp_path / "v.txt", "2 2\n\na 1 2\n\t \nb 3 4\n  \n")
    got = load_vectors(path, cache=False)
    assert got.format == "word2vec" and got.words == ["a", "b"]
    np.testing.assert_array_equal(got.weight.numpy(), [[1, 2], [3, 4]])
    glove = write(tmp_path / "g.txt", "a 1\n\t \nb 2\n")
    assert load_vectors(glove, "glove", cache=False).words == ["a", "b"]


def test_pad_token_warns_when_it_replaces_a_vector_from_the_file(tmp_path):
    path = write(tmp_path / "v.txt", "<pad> 1 2\na 3 4\n")
    with pytest.warns(UserWarning, match="has a vector for '<pad>'"):
        got = load_vectors(path, cache=False)
    assert got.padding_idx == 0 and not got.weight[0].any()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kept = load_vectors(path, pad_token=None, cache=False)
        np.testing.assert_array_equal(kept.weight.numpy(), [[1, 2], [3, 4]])
        other = write(tmp_path / "w.txt", "a 3 4\n")
        load_vectors(other, vocab=["a"], specials={"<pad>": 0}, cache=False)  # not in the file


def test_importing_vectors_does_not_import_tqdm_auto():
    """tqdm.auto (slow to import: it probes for notebooks) loads only with a progress bar."""
    code = ("import sys; import sparsemb.vectors; "
            "assert 'tqdm.auto' not in sys.modules, 'tqdm.auto imported'")
    import subprocess
    import sys

    subprocess.run([sys.executable, "-c", code], check=True)
