"""Pretrained word vectors in and out: GloVe, word2vec (text and binary) and fastText ``.vec``.

    vecs = load_vectors("glove.6B.100d.txt", vocab=my_words, specials={"<pad>": 0, "<unk>": 1})
    emb = embedding_from_vectors(vecs, freeze=False, padding_idx="<pad>", sparse=True)
    save_word2vec("trained.txt", vecs.words, emb.weight)

Rows follow the user's vocabulary (or the file's order when none is given). Vocabulary words the
file lacks get a documented initial value (``missing``); the ``pad_token`` row is zeros. Files
are streamed (see ``sparsemb._vector_formats``) and the result is cached as a memory-mapped
``.npy`` plus a JSON word list, keyed by the file's identity (path, inode, size, mtime, ctime and
a hash of its first and last MiB) and every option, so loading the same file the same way again
takes a fraction of a second.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import uuid
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from sparsemb import _vector_formats as formats
from sparsemb._vector_formats import FORMATS, VectorFormatError, VectorReader
from sparsemb.nn import Embedding

MISSING_RULES = ("normal", "zeros", "mean")
CACHE_VERSION = 2
_HASH_BYTES = 1 << 20  # the cache key hashes this much of the file's head and of its tail
_BLOCK_BYTES = 64 << 20  # all-words loads collect rows in blocks of about this size

__all__ = [
    "FORMATS",
    "MISSING_RULES",
    "VectorFormatError",
    "Vectors",
    "default_cache_dir",
    "embedding_from_vectors",
    "load_vectors",
    "save_glove",
    "save_word2vec",
]


@dataclass(eq=False)
class Vectors:
    """Loaded vectors: ``weight[index[word]]`` is ``word``'s vector, ``words[row]`` its word.

    ``found`` counts the rows whose vector came from the file; ``missing_words`` lists the rows
    initialised by the ``missing`` rule instead (the padding row is in neither).
    """

    words: list[str]
    index: dict[str, int]
    weight: Tensor
    found: int
    missing_words: list[str]
    dim: int
    path: str | None = None
    format: str | None = None
    padding_idx: int | None = None
    from_cache: bool = field(default=False, repr=False)

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: object) -> bool:
        return word in self.index

    def __getitem__(self, word: str) -> Tensor:
        return self.weight[self.index[word]]

    def __repr__(self) -> str:
        return (
            f"Vectors({len(self.words)} words, dim={self.dim}, found={self.found}, "
            f"missing={len(self.missing_words)}, path={self.path!r})"
        )

    def to_embedding(self, **kwargs) -> Embedding:
        """``embedding_from_vectors(self, **kwargs)``."""
        return embedding_from_vectors(self, **kwargs)


def default_cache_dir() -> Path:
    """``$SPARSEMB_CACHE_DIR``, else ``$XDG_CACHE_HOME/sparsemb/vectors``, else
    ``~/.cache/sparsemb/vectors``."""
    if os.environ.get("SPARSEMB_CACHE_DIR"):
        return Path(os.environ["SPARSEMB_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sparsemb" / "vectors"


def load_vectors(
    path: str | os.PathLike,
    format: str = "auto",
    *,
    vocab: Sequence[str] | Mapping[str, int] | None = None,
    specials: Sequence[str] | Mapping[str, int] | None = None,
    missing: str = "normal",
    pad_token: str | None = "<pad>",
    max_words: int | None = None,
    cache: bool | str | os.PathLike = True,
    progress: bool = True,
    seed: int = 0,
    encoding: str = "utf-8",
    errors: str = "strict",
) -> Vectors:
    """Read a vector file into a vocabulary and a float32 ``(rows, dim)`` tensor.

    format: ``auto`` (sniffed: a ``count dim`` header line means word2vec, text or binary by
        its first record; no header means GloVe), ``glove``, ``word2vec``, ``word2vec_binary``
        or ``fasttext`` (``.vec`` files: word2vec text). ``.gz`` files are gunzipped on the fly.
    vocab: the words to keep, row ``i`` for the ``i``-th word (or a ``word -> row`` mapping);
        only these words' floats are parsed. None keeps every word in the file's order (a word
        repeated in the file keeps its first vector, with a warning).
    specials: words placed at given rows, e.g. ``{"<pad>": 0, "<unk>": 1}`` (negative rows count
        from the end); a list puts them first. The other rows follow in vocabulary/file order.
        A special found in the file takes the file's vector.
    missing: the vector of a row the file lacks. ``normal``: drawn from N(0, s^2), s the std of
        all values read from the file (1 when none was found), seeded by ``seed``; ``zeros``;
        ``mean``: the mean of the vectors read.
    pad_token: this word's row, if the table has one, is zeros (``Vectors.padding_idx``);
        a warning says when that replaces a vector from the file (pass None to keep it).
    max_words: read only the first ``max_words`` vectors of the file (files list frequent words
        first).
    cache: True keeps the result under ``default_cache_dir()``, a path keeps it in that
        directory (e.g. the one holding the file), False reads the file every time. An entry is
        reused only for the same file (path, inode, size, mtime, ctime, and a hash of its
        first and last MiB) and options, and memory-mapped
        copy-on-write, so training a table built from it never writes to the cache.
    progress: a byte-count progress bar on stderr while reading files over 8 MiB.
    encoding, errors: how the words' bytes are decoded (see ``bytes.decode``).

    Raises ``VectorFormatError`` (a ValueError) naming the line or record of a malformed file;
    lines of unwanted words are skipped unparsed, so only wanted lines are checked.
    """
    path = os.fspath(path)
    formats.canonical_format(format)
    if missing not in MISSING_RULES:
        raise ValueError(f"missing must be one of {MISSING_RULES}, got {missing!r}")
    if max_words is not None and max_words < 0:
        raise ValueError(f"max_words must be >= 0, got {max_words}")
    layout = _Layout(vocab, specials)
    options = {
        "format": format, "vocab": layout.digest, "specials": layout.specials_key,
        "missing": missing, "pad_token": pad_token, "max_words": max_words, "seed": seed,
        "encoding": encoding, "errors": errors,
    }
    entry = _CacheEntry(cache, path, options) if cache is not False else None
    if entry is not None:
        hit = entry.load()
        if hit is not None:
            return hit

    reader = VectorReader(
        path, format, wanted=layout.rows, encoding=encoding, errors=errors, limit=max_words,
        progress=progress,
    )
    with reader:
        if layout.rows is not None:
            words, array, found = _read_vocab(reader, layout)
        else:
            words, array, found = _read_all(reader, layout)
    index = {word: row for row, word in enumerate(words)}
    padding_idx = index.get(pad_token) if pad_token is not None else None
    missing_rows = np.flatnonzero(~found)
    if padding_idx is not None:
        if found[padding_idx]:
            warnings.warn(
                f"{path} has a vector for {pad_token!r}; pad_token={pad_token!r} sets its row "
                "to zeros (pass pad_token=None to keep the file's vector)",
                stacklevel=2,
            )
        missing_rows = missing_rows[missing_rows != padding_idx]
        array[padding_idx] = 0
        found[padding_idx] = False  # the padding row is neither found nor missing
    if layout.rows is not None and len(words) and not found.any():
        warnings.warn(
            f"none of the {len(words)} vocabulary words is in {path} (format {reader.format}); "
            f"every row follows missing={missing!r}",
            stacklevel=2,
        )
    _fill_missing(array, found, missing_rows, missing, seed)
    vectors = Vectors(
        words=words,
        index=index,
        weight=torch.from_numpy(array),
        found=int(found.sum()),
        missing_words=[words[r] for r in missing_rows.tolist()],
        dim=reader.dim,
        path=path,
        format=reader.format,
        padding_idx=padding_idx,
    )
    if entry is not None:
        entry.store(vectors, array)
    return vectors


def embedding_from_vectors(
    source: str | os.PathLike | Vectors,
    *,
    freeze: bool = True,
    padding_idx: int | str | None = None,
    max_norm: float | None = None,
    norm_type: float = 2.0,
    scale_grad_by_freq: bool = False,
    sparse: bool = False,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    **load_options,
) -> Embedding:
    """A ``sparsemb.Embedding`` holding the vectors of ``source`` (a file or a ``Vectors``).

    The table arguments are ``Embedding.from_pretrained``'s; ``padding_idx`` may also name a
    word (``padding_idx="<pad>"``). ``load_options`` go to ``load_vectors`` when ``source`` is a
    path (``vocab``, ``specials``, ``missing``, ``cache``...). The table shares memory with
    ``Vectors.weight`` unless ``device``/``dtype`` make a copy, as ``from_pretrained`` does.
    """
    if isinstance(source, Vectors):
        if load_options:
            raise TypeError(
                f"load options {sorted(load_options)} need a path; these vectors are loaded"
            )
        vectors = source
    else:
        vectors = load_vectors(source, **load_options)
    if isinstance(padding_idx, str):
        if padding_idx not in vectors.index:
            raise ValueError(f"padding_idx={padding_idx!r} is not a word of these vectors")
        padding_idx = vectors.index[padding_idx]
    weight = vectors.weight
    if device is not None or dtype is not None:
        weight = weight.to(device=device, dtype=dtype)
    return Embedding.from_pretrained(
        weight,
        freeze=freeze,
        padding_idx=padding_idx,
        max_norm=max_norm,
        norm_type=norm_type,
        scale_grad_by_freq=scale_grad_by_freq,
        sparse=sparse,
    )


def save_word2vec(
    path: str | os.PathLike,
    words: Sequence[str] | Vectors,
    weight: Tensor | np.ndarray | None = None,
    *,
    binary: bool = False,
    precision: int | None = None,
    progress: bool = True,
) -> None:
    """Write word2vec text (``binary=False``; what fastText's ``.vec`` is) or binary.

    ``words`` (unique, no whitespace) name the rows of ``weight``; pass a ``Vectors`` alone to
    write it back. Text values carry ``precision`` significant digits; the default writes 6 when
    they read back exactly and 9 (exact for float32) otherwise. ``.gz`` paths are gzipped.
    """
    words, array = _words_and_array(words, weight)
    fmt = "word2vec_binary" if binary else "word2vec"
    formats.write_vectors(path, words, array, fmt, precision=precision, progress=progress)


def save_glove(
    path: str | os.PathLike,
    words: Sequence[str] | Vectors,
    weight: Tensor | np.ndarray | None = None,
    *,
    precision: int | None = None,
    progress: bool = True,
) -> None:
    """Write GloVe text: ``word v1 ... vD`` per line, no header (arguments as ``save_word2vec``)."""
    words, array = _words_and_array(words, weight)
    formats.write_vectors(path, words, array, "glove", precision=precision, progress=progress)


# -- layout: which word goes to which row ----------------------------------------------------
class _Layout:
    """The rows the user fixed: vocabulary order plus specials at their positions.

    ``rows`` maps each wanted word to its row when a vocabulary is given (None: keep the whole
    file, and ``specials`` positions are resolved once the file's word count is known).
    """

    def __init__(self, vocab, specials) -> None:
        if specials is None:
            specials = {}
        elif isinstance(specials, str):
            raise TypeError("specials must be a list of words or a {word: row} mapping, not a str")
        elif not isinstance(specials, Mapping):
            specials = {word: row for row, word in enumerate(_unique(specials, "specials"))}
        for word, row in specials.items():
            if isinstance(row, bool) or not isinstance(row, int):
                raise TypeError(f"special {word!r} has row {row!r}; rows must be ints")
        self.specials: dict[str, int] = dict(specials)
        self.specials_key = sorted(self.specials.items())
        self.rows: dict[str, int] | None = None
        self.digest = None
        if vocab is None:
            return
        if isinstance(vocab, str):
            raise TypeError("vocab must be a list of words or a {word: row} mapping, not a str")
        if isinstance(vocab, Mapping):
            placed = dict(vocab)
            self.digest = _digest(sorted(placed.items()))
        else:
            words = _unique(vocab, "vocab")
            self.digest = _digest(words)
            placed = None
        total = len(words if placed is None else placed) + len(self.specials)
        fixed = self.resolve_specials(total)
        if placed is None:
            clash = next((w for w in words if w in fixed), None)
            if clash is not None:
                raise ValueError(f"{clash!r} is both in vocab and in specials; list it once")
            taken = set(fixed.values())
            free = (row for row in range(total) if row not in taken)
            placed = dict(zip(words, free, strict=True))
        else:
            for word in fixed:
                if word in placed:
                    raise ValueError(f"{word!r} is both in vocab and in specials; list it once")
            for word, row in placed.items():
                if isinstance(row, bool) or not isinstance(row, int):
                    raise TypeError(f"vocab[{word!r}] = {row!r}; rows must be ints")
        placed.update(fixed)
        if sorted(placed.values()) != list(range(total)):
            raise ValueError(
                f"the vocabulary's rows must be 0..{total - 1}, each used once "
                "(vocab mapping and specials together)"
            )
        self.rows = placed

    def resolve_specials(self, total: int) -> dict[str, int]:
        resolved = {}
        for word, row in self.specials.items():
            if not -total <= row < total:
                raise ValueError(
                    f"special {word!r} at row {row} is outside a table of {total} rows"
                )
            resolved[word] = row % total
        if len(set(resolved.values())) != len(resolved):
            raise ValueError(f"two specials share a row: {resolved}")
        return resolved


def _unique(words, what: str) -> list[str]:
    words = list(words)
    seen: dict[str, int] = {}
    for i, word in enumerate(words):
        if not isinstance(word, str):
            raise TypeError(f"{what}[{i}] is {type(word).__name__}, expected str")
        if word in seen:
            raise ValueError(f"{what} lists {word!r} twice (positions {seen[word]} and {i})")
        seen[word] = i
    return words


def _digest(obj) -> str:
    text = json.dumps(obj, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


# -- reading ---------------------------------------------------------------------------------
def _read_vocab(reader: VectorReader, layout: _Layout):
    """Rows in the user's layout; stops once every wanted word was found."""
    rows = layout.rows
    assert rows is not None
    words = [""] * len(rows)
    for word, row in rows.items():
        words[row] = word
    array = np.zeros((len(rows), reader.dim), dtype=np.float32)
    found = np.zeros(len(rows), dtype=bool)
    remaining = len(rows)
    for word, vec in reader:
        row = rows[word]
        if found[row]:
            continue  # a word repeated in the file keeps its first vector
        array[row] = vec
        found[row] = True
        remaining -= 1
        if not remaining:
            break
    return words, array, found


def _read_all(reader: VectorReader, layout: _Layout):
    """Every word of the file in file order, with the specials spliced in at their rows."""
    dim, specials = reader.dim, layout.specials
    block_rows = max(1, _BLOCK_BYTES // (4 * dim))
    blocks: list[np.ndarray] = []
    block, used = None, block_rows
    file_words: list[str] = []
    seen: set[str] = set()
    special_vecs: dict[str, np.ndarray] = {}
    repeated = 0
    for word, vec in reader:
        if word in specials:
            special_vecs.setdefault(word, np.array(vec, dtype=np.float32))
            continue
        if word in seen:
            repeated += 1
            continue
        seen.add(word)
        if used == block_rows:
            block, used = np.empty((block_rows, dim), dtype=np.float32), 0
            blocks.append(block)
        block[used] = vec
        used += 1
        file_words.append(word)
    del seen
    if repeated:
        warnings.warn(
            f"{reader.path}: {repeated} repeated words kept their first vector", stacklevel=3
        )
    total = len(file_words) + len(specials)
    fixed = layout.resolve_specials(total)
    array = np.empty((total, dim), dtype=np.float32)
    found = np.ones(total, dtype=bool)
    if fixed:
        slots = np.setdiff1d(np.arange(total), np.fromiter(fixed.values(), dtype=np.int64))
        words = [""] * total
        for word, row in zip(file_words, slots.tolist(), strict=True):
            words[row] = word
    else:
        slots, words = None, file_words
    start = 0
    while blocks:  # copy block by block, freeing each, so the peak stays near one table
        block = blocks.pop(0)
        n = min(block.shape[0], len(file_words) - start)
        if slots is None:
            array[start:start + n] = block[:n]
        else:
            array[slots[start:start + n]] = block[:n]
        start += n
        del block
    for word, row in fixed.items():
        words[row] = word
        if word in special_vecs:
            array[row] = special_vecs[word]
        else:
            found[row] = False
    return words, array, found


def _fill_missing(
    array: np.ndarray, found: np.ndarray, rows: np.ndarray, rule: str, seed: int
) -> None:
    if rows.size == 0:
        return
    dim = array.shape[1]
    if rule == "zeros":
        array[rows] = 0
        return
    total, total_sq, count = np.zeros(dim), np.zeros(dim), 0
    step = max(1, _BLOCK_BYTES // (8 * dim))
    for start in range(0, array.shape[0], step):  # float64 moments, one block at a time
        block = array[start:start + step][found[start:start + step]].astype(np.float64)
        total += block.sum(0)
        total_sq += np.square(block).sum(0)
        count += block.shape[0]
    if rule == "mean":
        array[rows] = total / count if count else 0.0
        return
    if count:
        mean = total.sum() / (count * dim)
        std = float(np.sqrt(max(total_sq.sum() / (count * dim) - mean * mean, 0.0)))
    else:
        std = 1.0  # nothing read: torch.nn.Embedding's own N(0, 1)
    generator = torch.Generator().manual_seed(seed)
    array[rows] = (torch.randn(rows.size, dim, generator=generator) * std).numpy()


def _words_and_array(words, weight) -> tuple[Sequence[str], np.ndarray]:
    if isinstance(words, Vectors):
        if weight is not None:
            raise TypeError("pass either a Vectors or words and weight, not both")
        words, weight = words.words, words.weight
    if weight is None:
        raise TypeError("weight is required with a list of words")
    if isinstance(weight, Tensor):
        weight = weight.detach().to("cpu", torch.float32).numpy()
    return words, np.asarray(weight, dtype=np.float32)


# -- cache -----------------------------------------------------------------------------------
def _file_identity(path: str) -> dict:
    """What the cache trusts to tell a file from its rewrite: its inode, size, mtime and ctime
    (``cp -p``, ``rsync -t`` and ``touch -d`` keep size and mtime, but a rewrite changes the
    ctime and usually the inode), plus a hash of its first and last MiB."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        stat = os.fstat(f.fileno())
        digest.update(f.read(_HASH_BYTES))
        if stat.st_size > _HASH_BYTES:
            f.seek(max(_HASH_BYTES, stat.st_size - _HASH_BYTES))
            digest.update(f.read(_HASH_BYTES))
    return {
        "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "ctime_ns": stat.st_ctime_ns,
        "inode": stat.st_ino, "device": stat.st_dev, "head_tail_sha256": digest.hexdigest(),
    }


_META_TYPES = {
    "version": int, "source": str, "stat": dict, "path": (str, type(None)),
    "format": (str, type(None)), "dim": int, "found": int, "missing_words": list,
    "padding_idx": (int, type(None)), "words": list,
}


def _check_meta(meta) -> None:
    """Raise ValueError unless ``meta`` has every key of an entry with the right types."""
    if not isinstance(meta, dict):
        raise ValueError(f"expected a JSON object, got {type(meta).__name__}")
    for key, kind in _META_TYPES.items():
        if key not in meta:
            raise ValueError(f"no {key!r}")
        if not isinstance(meta[key], kind) or isinstance(meta[key], bool):
            raise ValueError(f"{key!r} is {type(meta[key]).__name__}")
    for key in ("words", "missing_words"):
        if not all(isinstance(word, str) for word in meta[key]):
            raise ValueError(f"{key!r} holds a non-string")


class _CacheEntry:
    """``<dir>/<file name>-<path hash>-<key>.npy`` + ``.json``; the key covers the file's path
    and identity (``_file_identity``) and every option. Storing an entry removes this file's
    stale entries; an unreadable entry is ignored with a warning and rewritten."""

    def __init__(self, cache, path: str, options: dict) -> None:
        self.dir = default_cache_dir() if cache is True else Path(cache)
        self.source = os.path.abspath(path)
        self.stat = _file_identity(path)
        key = _digest([CACHE_VERSION, self.source, self.stat, options])[:20]
        stem = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(path).name)[:80]
        self.prefix = f"{stem}-{_digest(self.source)[:8]}-"
        self.npy = self.dir / f"{self.prefix}{key}.npy"
        self.meta = self.dir / f"{self.prefix}{key}.json"

    def load(self) -> Vectors | None:
        try:
            with open(self.meta, encoding="utf-8") as f:
                meta = json.load(f)
        except FileNotFoundError:
            return None  # no entry: the usual miss
        except (OSError, ValueError) as exc:
            return self._corrupt(exc)
        if not isinstance(meta, dict):
            return self._corrupt(ValueError(f"a JSON {type(meta).__name__}, not an object"))
        if meta.get("version") != CACHE_VERSION:
            return None  # another version's entry; the next store replaces it
        try:
            _check_meta(meta)
            if meta["stat"] != self.stat or meta["source"] != self.source:
                return None
            rows = len(meta["words"])
            array = np.load(self.npy, mmap_mode="c" if rows else None, allow_pickle=False)
            if array.shape != (rows, meta["dim"]) or array.dtype != np.float32:
                raise ValueError(f"array of shape {array.shape} and dtype {array.dtype}")
            padding_idx = meta["padding_idx"]
            if padding_idx is not None and not 0 <= padding_idx < rows:
                raise ValueError(f"padding_idx {padding_idx} outside {rows} rows")
        except (OSError, ValueError) as exc:
            return self._corrupt(exc)
        words = meta["words"]
        return Vectors(
            words=words,
            index={word: row for row, word in enumerate(words)},
            weight=torch.from_numpy(array),  # copy-on-write: writable, the file stays as is
            found=meta["found"],
            missing_words=meta["missing_words"],
            dim=meta["dim"],
            path=meta["path"],
            format=meta["format"],
            padding_idx=padding_idx,
            from_cache=True,
        )

    def _corrupt(self, exc: Exception) -> None:
        warnings.warn(
            f"ignoring the unreadable cache entry {self.meta} ({exc}); reading the file again",
            stacklevel=4,
        )
        return None

    def store(self, vectors: Vectors, array: np.ndarray) -> None:
        meta = {
            "version": CACHE_VERSION, "source": self.source, "stat": self.stat,
            "path": vectors.path, "format": vectors.format, "dim": vectors.dim,
            "found": vectors.found, "missing_words": vectors.missing_words,
            "padding_idx": vectors.padding_idx, "words": vectors.words,
        }
        tmp = f".tmp{uuid.uuid4().hex}"  # unique per writer: processes and threads
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            with open(str(self.npy) + tmp, "wb") as f:
                np.save(f, array)
            with open(str(self.meta) + tmp, "w", encoding="utf-8") as f:
                json.dump(meta, f, ensure_ascii=False)
            os.replace(str(self.npy) + tmp, self.npy)
            os.replace(str(self.meta) + tmp, self.meta)  # the .json last: it marks a whole entry
        except OSError as exc:
            warnings.warn(f"could not cache vectors in {self.dir}: {exc}", stacklevel=3)
            for leftover in (str(self.npy) + tmp, str(self.meta) + tmp):
                if os.path.exists(leftover):
                    os.remove(leftover)
            return
        self._remove_stale()

    def _remove_stale(self) -> None:
        for other in self.dir.glob(f"{glob.escape(self.prefix)}*.json"):
            if other == self.meta:
                continue
            try:
                with open(other, encoding="utf-8") as f:
                    meta = json.load(f)
                if (isinstance(meta, dict) and meta.get("source") == self.source
                        and meta.get("stat") == self.stat):
                    continue  # the same file loaded with other options: still valid
                other.unlink()
                other.with_suffix(".npy").unlink(missing_ok=True)
            except (OSError, ValueError):
                continue
