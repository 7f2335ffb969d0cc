"""Fuzzed vector files: mutations of small valid GloVe / word2vec text / word2vec binary /
fastText files must load exactly as a strict reference parser reads them, or raise a
``VectorFormatError`` naming the file; never another exception, a hang, or an allocation the
file cannot back.

The fuzz and the hostile files run in a subprocess under an address-space limit (the import of
torch alone needs a few GiB of it, so the limit is set after the import, at the process's size
plus a margin) and a wall-clock timeout. ``python tests/test_vectors_fuzz.py N SEED`` runs it
by hand.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest

BOM = b"\xef\xbb\xbf"
MAX_LINE = 1 << 20  # sparsemb._vector_formats.MAX_LINE_BYTES, restated by the reference
MARGIN = 768 << 20  # address space allowed beyond the process's size after importing torch


# -- the reference: a strict, slow reading of the formats ------------------------------------
class Bad(Exception):
    """The reference rejects the file."""


def _number(token: bytes) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return b"_" not in token


def _word(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Bad("not utf-8") from exc


def _header(line: bytes, binary: bool) -> tuple[int, int]:
    parts = line.split()
    if len(parts) != 2 or not (parts[0].isdigit() and parts[1].isdigit()):
        raise Bad("header")
    count, dim = int(parts[0]), int(parts[1])
    need = 4 * dim + 2 if binary else 2 * dim + 1
    if dim < 1 or ((not binary or not count) and need > MAX_LINE):
        raise Bad("dim")
    return count, dim


def _text_record(line: bytes, dim: int) -> tuple[str, list[float]]:
    """The vector is the last ``dim`` fields; the word, all fields before them."""
    tokens = line.split()
    if len(tokens) == dim + 1:
        head, tail = tokens[:1], tokens[1:]
    elif len(tokens) > dim + 1 and not _number(tokens[-dim - 1]):
        head, tail = tokens[:-dim], tokens[-dim:]
    else:
        raise Bad("dimension")
    if not all(_number(t) for t in tail):
        raise Bad("value")
    return _word(b" ".join(head)), [float(t) for t in tail]


def reference(data: bytes, fmt: str, gz: bool) -> tuple[list[str], np.ndarray]:
    """(words, float32 rows) of a whole file, a repeated word keeping its first vector."""
    if gz:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise Bad("gzip") from exc
    if data.startswith(BOM):
        data = data[len(BOM):]
    records: list[tuple[str, list[float]]] = []
    if fmt == "word2vec_binary":
        first, _, rest = data.partition(b"\n")
        count, dim = _header(first, True)
        pos = 0
        for _ in range(count):
            space = rest.find(b" ", pos)
            if space < 0:
                raise Bad("truncated")
            raw = rest[pos:space].lstrip(b"\n")
            if not raw or b"\n" in raw or len(rest) < space + 1 + 4 * dim:
                raise Bad("record")
            records.append((_word(raw), list(struct.unpack_from(f"<{dim}f", rest, space + 1))))
            pos = space + 1 + 4 * dim
        if rest[pos:].strip():
            raise Bad("trailing data")
    else:
        lines = data.split(b"\n")
        if any(len(line) + 1 > MAX_LINE for line in lines) or not lines[0].strip():
            raise Bad("long or blank first line")
        if fmt == "glove":
            tokens = lines[0].split()
            if len(tokens) < 2:
                raise Bad("short first line")
            trailing = 0
            while trailing < len(tokens) - 1 and _number(tokens[-1 - trailing]):
                trailing += 1
            dim, count = trailing or len(tokens) - 1, None
        else:
            count, dim = _header(lines[0], False)
            lines = lines[1:]
        records = [_text_record(line, dim) for line in lines if line.strip()]
        if count is not None and len(records) != count:
            raise Bad("count")
    words, rows = [], []
    for word, vec in records:
        if word not in words:
            words.append(word)
            rows.append(vec)
    return words, np.array(rows, dtype=np.float32).reshape(len(rows), dim)


# -- valid files and their mutations ---------------------------------------------------------
def _valid(rng: random.Random) -> tuple[bytes, str, bool]:
    """A small valid file: (bytes before gzip, format, gzipped)."""
    fmt = rng.choice(["glove", "word2vec", "word2vec_binary", "fasttext"])
    dim, n = rng.randint(1, 4), rng.randint(1, 5)
    words = rng.sample(["the", "cat", "sat", "on", "mat", "café", "日本", "new york", "a.b"], n)
    if fmt == "word2vec_binary":
        words = [w.replace(" ", "_") for w in words]
    vecs = [[round(rng.uniform(-3, 3), rng.randint(0, 4)) for _ in range(dim)] for _ in words]
    if fmt == "word2vec_binary":
        body = b"".join(w.encode() + b" " + struct.pack(f"<{dim}f", *v) + b"\n"
                        for w, v in zip(words, vecs, strict=True))
    else:
        end = " \n" if fmt == "fasttext" else "\n"  # fastText and C word2vec: a trailing space
        body = "".join(f"{w} {' '.join(map(str, v))}{end}"
                       for w, v in zip(words, vecs, strict=True)).encode()
    head = b"" if fmt == "glove" else f"{len(words)} {dim}\n".encode()
    return head + body, fmt, rng.random() < 0.25


def _mutate(data: bytes, rng: random.Random) -> bytes:
    kind = rng.randrange(13)
    pos = rng.randrange(len(data) + 1)
    if kind == 0:
        return data[:pos]
    if kind in (1, 2):
        out = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            if out:
                out[rng.randrange(len(out))] = rng.randrange(256)
        return bytes(out)
    if kind == 3:
        return data[:pos] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 4))) + data[pos:]
    if kind == 4:  # a wrong header count or dimension
        first, _, rest = data.partition(b"\n")
        parts = first.split() or [b"1", b"1"]
        i = rng.randrange(len(parts))
        parts[i] = str(rng.choice([0, 1, 2, 7, 10**9, 2**40])).encode()
        return b" ".join(parts) + b"\n" + rest
    lines = data.split(b"\n")
    i = rng.randrange(len(lines))
    if kind == 5:
        lines.insert(i, lines[rng.randrange(len(lines))])  # a duplicate line
    elif kind == 6:
        lines[i] = b"\xff\xfe" + lines[i]  # not UTF-8
    elif kind == 7:
        return data.replace(b"\n", b"\r\n")
    elif kind == 8:
        return data.replace(b" ", b"\t", rng.randint(1, 3))
    elif kind == 9:
        return BOM + data
    elif kind == 10:
        lines.insert(i, rng.choice([b"", b" ", b"\t \r", b"  \t"]))  # blank-looking lines
    elif kind == 11:
        lines[i] = b"new york " + lines[i]  # a word with spaces
    else:
        lines[i] = lines[i].replace(b" ", b"  ")
    return b"\n".join(lines)


def _corrupt_gzip(blob: bytes, rng: random.Random) -> bytes:
    kind = rng.randrange(4)
    if kind == 0:
        return blob[:rng.randrange(len(blob))]
    if kind == 1:
        out = bytearray(blob)
        out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
        return bytes(out)
    if kind == 2:
        return blob + bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
    return blob


def _fuzz_one(rng: random.Random, path: Path) -> str | None:
    """Load one mutated file every way; a description of the failure, or None."""
    from sparsemb.vectors import VectorFormatError, load_vectors

    data, fmt, gz = _valid(rng)
    for _ in range(rng.randint(0, 2)):
        data = _mutate(data, rng)
    if gz:
        path = path.with_suffix(".gz")
        data = gzip.compress(data, mtime=0)
        data = _corrupt_gzip(data, rng) if rng.random() < 0.5 else data
    path.write_bytes(data)
    canonical = "word2vec" if fmt == "fasttext" else fmt
    try:
        expected = reference(data, canonical, gz)
    except Bad:
        expected = None
    vocab = ["cat", "new york", "zebra", "the"]
    for format, vocab_ in ((fmt, None), ("auto", None), (fmt, vocab)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                got = load_vectors(path, format, vocab=vocab_, missing="zeros", pad_token=None,
                                   cache=False, progress=False)
        except VectorFormatError as exc:
            if str(path) not in str(exc):
                return f"{format}: the error does not name the file: {exc}"
            if expected is not None:
                return f"{format} vocab={vocab_}: rejected a valid file: {exc}"
            continue
        except BaseException as exc:  # noqa: BLE001  (any other exception is the failure)
            return f"{format} vocab={vocab_}: {type(exc).__name__}: {exc}"
        if expected is None:
            if format == fmt and vocab_ is None:
                return f"{format}: accepted a file the reference rejects: {got.words}"
            continue  # auto may read another format; a vocabulary skips unwanted lines
        words, array = expected
        if format == "auto" and got.format != canonical:
            continue
        if vocab_ is None:
            if got.words != words or not np.array_equal(got.weight.numpy(), array,
                                                       equal_nan=True):
                return f"{format}: read {got.words} {got.weight.tolist()}, expected {words} " \
                       f"{array.tolist()}"
        else:
            for word in vocab_:
                want = array[words.index(word)] if word in words else np.zeros(array.shape[1])
                if not np.array_equal(got[word].numpy(), want.astype(np.float32),
                                      equal_nan=True):
                    return f"vocab: {word!r} read {got[word].tolist()}, expected {want.tolist()}"
    return None


def fuzz(count: int, seed: int, workdir: Path) -> list[str]:
    failures = []
    for case in range(count):
        rng = random.Random(f"{seed}-{case}")
        path = workdir / f"case{case}.vec"
        failure = _fuzz_one(rng, path)
        if failure is not None:
            failures.append(f"case {case}: {failure}")
        for leftover in workdir.iterdir():
            leftover.unlink()
    return failures


# -- hostile files: each once allocated, hung or blew up memory ------------------------------
def hostile(workdir: Path) -> list[str]:
    """Files that are small but claim or hold huge things; each must raise a VectorFormatError
    and keep peak memory near the process's (the RSS growth is reported)."""
    import resource

    from sparsemb.vectors import VectorFormatError, load_vectors

    line = b"w " + b"1 " * (32 << 20) + b"\n"  # one 64 MiB line
    cases = {
        "dim.txt": b"2 1000000000\na 1 2 3\n",
        "dim0.txt": b"0 1000000000\n",
        "dim.bin": b"2 1000000000\na \x00\x00\x80?\n",
        "count.txt": b"1000000000000 2\na 1 2\n",
        "longline.gz": gzip.compress(b"2 2\na 1 2\n" + line, compresslevel=1),
        "longfirst.gz": gzip.compress(line, compresslevel=1),
        "binword.gz": gzip.compress(b"1 1\n" + b"x" * (64 << 20), compresslevel=1),
    }
    failures = []
    for name, data in cases.items():
        path = workdir / name
        path.write_bytes(data)
        del data
        for fmt in ("auto", "glove", "word2vec", "word2vec_binary"):
            if name == "dim0.txt" and fmt == "glove":
                continue  # as GloVe it is a valid file: the word "0" and a 1-D vector
            for vocab in (None, ["a", "b"]):
                before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                try:
                    load_vectors(path, fmt, vocab=vocab, cache=False, progress=False)
                    failures.append(f"{name} {fmt}: loaded")
                except VectorFormatError as exc:
                    if str(path) not in str(exc):
                        failures.append(f"{name} {fmt}: error without the file name: {exc}")
                except BaseException as exc:  # noqa: BLE001
                    failures.append(f"{name} {fmt}: {type(exc).__name__}: {exc}"[:300])
                grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before  # KiB
                if grown > 64 << 10:
                    failures.append(f"{name} {fmt} vocab={vocab}: RSS grew {grown >> 10} MiB")
        path.unlink()
    return failures


def main(count: int, seed: int) -> None:
    """Run the hostile files and the fuzz under an address-space limit; print the failures as
    JSON."""
    import resource
    import tempfile

    import sparsemb.vectors  # noqa: F401  (torch: imported before the limit)

    with open("/proc/self/status") as f:
        size = next(int(row.split()[1]) << 10 for row in f if row.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (size + MARGIN, resource.RLIM_INFINITY))
    with tempfile.TemporaryDirectory() as tmp:
        failures = hostile(Path(tmp)) + fuzz(count, seed, Path(tmp))
    print(json.dumps(failures))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc and RLIMIT_AS")
def test_fuzzed_and_hostile_files_under_a_memory_limit():
    """About 1500 mutated files (seeded) plus the hostile files, in a few seconds."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import test_vectors_fuzz as t; "
            "t.main(int(sys.argv[2]), int(sys.argv[3]))")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", code, str(Path(__file__).parent), "1500", "20260510"],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    failures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not failures, "\n".join(failures[:20]) + f"\n({len(failures)} failures)"


def test_reference_reads_the_valid_files():
    """The fuzz's oracle is itself checked: unmutated files parse, and to the values written."""
    for case in range(200):
        rng = random.Random(case)
        data, fmt, _ = _valid(rng)
        words, array = reference(data, "word2vec" if fmt == "fasttext" else fmt, False)
        assert len(words) == array.shape[0] >= 1


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1500,
         int(sys.argv[2]) if len(sys.argv) > 2 else 0)
