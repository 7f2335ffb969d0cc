"""Readers and writers for word-vector files: GloVe text, word2vec text and word2vec binary.

  glove            ``word v1 ... vD`` per line, no header.
  word2vec         a header line ``count dim``, then GloVe-style lines. fastText's ``.vec`` files
                   are this format.
  word2vec_binary  a header line ``count dim``, then per record: the word's bytes, one space,
                   ``dim`` little-endian float32 and an optional ``\\n`` (Mikolov's C tool and
                   gensim write the newline; the reader also takes files without it).

Files whose name ends in ``.gz`` are read and written through gzip. Reading streams the file as
bytes, so memory holds one buffer, never the file's text; a line's floats are parsed only when its
word is wanted, so filtering a multi-GB file by a vocabulary costs little more than reading it.
Malformed input raises ``VectorFormatError`` naming the file and the line (or binary record).
"""

from __future__ import annotations

import gzip
import io
import os
import uuid
import zlib
from collections.abc import Container, Iterator, Sequence
from pathlib import Path

import numpy as np

FORMATS = ("auto", "glove", "word2vec", "word2vec_binary", "fasttext")
_CANONICAL = {"glove": "glove", "word2vec": "word2vec", "fasttext": "word2vec",
              "word2vec_binary": "word2vec_binary"}
_BOM = b"\xef\xbb\xbf"
_CHUNK = 1 << 20  # bytes read at a time from binary files
_TICK_LINES = 1 << 13  # lines between progress-bar updates (a tell() is not free)
PROGRESS_MIN_BYTES = 8 << 20  # smaller files load without a progress bar
MAX_LINE_BYTES = 1 << 20  # a text line longer than this is rejected, not parsed (see below)
_DEFLATE_MAX_RATIO = 1032  # deflate expands a byte into at most this many
_GZIP_ERRORS = (EOFError, zlib.error, gzip.BadGzipFile)


class VectorFormatError(ValueError):
    """A malformed vector file. ``path`` and ``line`` (1-based, header included) or ``record``
    (1-based, binary files) say where; the message repeats them."""

    def __init__(
        self, path: str | os.PathLike, message: str, *, line: int | None = None,
        record: int | None = None,
    ) -> None:
        where = f"line {line}: " if line is not None else ""
        where = f"record {record}: " if record is not None else where
        super().__init__(f"{path}: {where}{message}")
        self.path, self.line, self.record = str(path), line, record


def canonical_format(format: str) -> str:
    """``fasttext`` -> ``word2vec``; validates the name (``auto`` is resolved by sniffing)."""
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    return _CANONICAL.get(format, format)


def _open_bytes(path: str | os.PathLike) -> tuple[io.BufferedReader, io.BufferedIOBase]:
    """(the raw file, for progress by position; the stream to read, gunzipped if ``.gz``)."""
    raw = open(path, "rb", buffering=_CHUNK)  # noqa: SIM115  (closed by the reader)
    if str(path).endswith(".gz"):
        return raw, gzip.GzipFile(fileobj=raw, mode="rb")
    return raw, raw


def _room(path: str | os.PathLike, raw: io.BufferedReader, used: int) -> int:
    """The most bytes that can follow the first ``used`` bytes of data: what is left of the
    file, or for ``.gz`` what deflate could expand the whole file into. Headers are checked
    against it before anything is sized by them."""
    size = os.fstat(raw.fileno()).st_size
    if str(path).endswith(".gz"):
        return size * _DEFLATE_MAX_RATIO
    return size - used


def _check_dim(path, count: int, dim: int, binary: bool, room: int) -> None:
    """Reject a header whose dimension the file cannot back: one record needs at least
    ``4 dim + 2`` bytes (binary) or ``2 dim + 1`` (text: a word and ``dim`` one-digit values),
    and a text record (or any record of an empty file) must fit in ``MAX_LINE_BYTES``."""
    if dim < 1:
        raise VectorFormatError(path, f"bad header: dimension {dim}", line=1)
    need = 4 * dim + 2 if binary else 2 * dim + 1
    if (not binary or not count) and need > MAX_LINE_BYTES:  # with no vector, nothing backs it
        raise VectorFormatError(
            path, f"bad header: dimension {dim} needs records over the {MAX_LINE_BYTES}-byte "
            "line limit (sparsemb._vector_formats.MAX_LINE_BYTES)", line=1,
        )
    if count and need > room:
        raise VectorFormatError(
            path, f"truncated or wrong header: a vector of dimension {dim} needs at least "
            f"{need} bytes, the file holds at most {room} after the header", line=1,
        )


def _header(line: bytes) -> tuple[int, int] | None:
    """``(count, dim)`` when ``line`` is a word2vec header (two non-negative integers)."""
    parts = line.split()
    if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
        return int(parts[0]), int(parts[1])
    return None


def _is_number(token: bytes) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return b"_" not in token  # float() takes "1_0"; numpy's parser does not


def _split_record(tokens: list[bytes], dim: int) -> tuple[list[bytes], list[bytes]] | None:
    """(word fields, value fields) of a whitespace-split line: the vector is the last ``dim``
    fields, the word everything before them (glove.840B has words with spaces, ``new york``).
    None when that reading fails: too few fields, or a number just before the last ``dim``."""
    if len(tokens) == dim + 1:
        return tokens[:1], tokens[1:]
    if len(tokens) > dim + 1 and not _is_number(tokens[-dim - 1]):
        return tokens[:-dim], tokens[-dim:]
    return None


def _trailing_numbers(tokens: list[bytes]) -> int:
    """GloVe's dimension, read off its first line: the number of numeric fields at its end,
    leaving at least one field for the word."""
    n = 0
    while n < len(tokens) - 1 and _is_number(tokens[-1 - n]):
        n += 1
    return n


def _read_line(stream, path, lineno: int) -> bytes:
    """The next line (b"" at the end), refusing one over ``MAX_LINE_BYTES`` before it is held
    whole: no real vector line comes near it, and a hostile one would cost its length many
    times over."""
    line = stream.readline(MAX_LINE_BYTES + 1)
    if len(line) > MAX_LINE_BYTES:
        raise VectorFormatError(
            path, f"longer than {MAX_LINE_BYTES} bytes: not a vector record (raise "
            "sparsemb._vector_formats.MAX_LINE_BYTES to read it)", line=lineno,
        )
    return line


def _gzip_error(path, exc: BaseException) -> VectorFormatError:
    return VectorFormatError(path, f"corrupt or truncated gzip data ({type(exc).__name__}: {exc})")


def sniff_format(path: str | os.PathLike) -> str:
    """Guess ``glove`` / ``word2vec`` / ``word2vec_binary`` from the first two records.

    A first line of two integers is a word2vec header; the first non-blank record after it is
    text when it splits into a word and ``dim`` numbers, binary otherwise. Without that header
    the file is GloVe (so a GloVe file of 1-D vectors whose first word is an integer needs
    ``format="glove"``).
    """
    raw, stream = _open_bytes(path)
    try:
        with raw, stream:
            first = _read_line(stream, path, 1)
            if first.startswith(_BOM):
                first = first[len(_BOM):]
            header = _header(first)
            if header is None:
                if not first.strip():
                    raise VectorFormatError(path, "the file is empty", line=1)
                return "glove"
            count, dim = header
            if count == 0 or dim == 0:
                return "word2vec"
            probe = stream.read(min(max(1 << 16, 48 * dim), MAX_LINE_BYTES))
    except _GZIP_ERRORS as exc:
        raise _gzip_error(path, exc) from exc
    # blank lines after a header are text (a binary record starts with its word)
    probe = probe.lstrip(b" \t\r\n").split(b"\n", 1)[0]
    tokens = probe.split()
    if len(tokens) > dim and all(_is_number(t) for t in tokens[-dim:]):
        return "word2vec"
    return "word2vec_binary"


class VectorReader:
    """Stream ``(word, vector)`` records from a vector file.

    ``wanted``: when given, only records whose word is in it are yielded (their floats alone are
    parsed). ``limit``: stop after that many records of the file (wanted or not). Yielded vectors
    are float32 arrays of length ``dim``; a binary record's array is a view of the read buffer,
    valid until the next record, so copy it to keep it. Use as a context manager.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        format: str = "auto",
        *,
        wanted: Container[str] | None = None,
        encoding: str = "utf-8",
        errors: str = "strict",
        limit: int | None = None,
        progress: bool = True,
    ) -> None:
        fmt = canonical_format(format)
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        self.path = str(path)
        self.format = sniff_format(path) if fmt == "auto" else fmt
        self.wanted, self.encoding, self.errors = wanted, encoding, errors
        self.limit = limit
        self.count: int | None = None  # records announced by a word2vec header
        self.records = 0  # records read so far, wanted or not
        self._pending: tuple[str, np.ndarray] | None = None  # GloVe's first record
        self._raw, self._stream = _open_bytes(path)
        self._bar = None
        try:
            size = os.fstat(self._raw.fileno()).st_size
            if progress and size >= PROGRESS_MIN_BYTES:
                from tqdm.auto import tqdm  # lazily: importing tqdm.auto takes a while

                self._bar = tqdm(total=size, unit="B", unit_scale=True, unit_divisor=1024,
                                 desc=Path(path).name, leave=False)
            self._seen = 0
            self._read_head()
        except _GZIP_ERRORS as exc:
            self.close()
            raise _gzip_error(self.path, exc) from exc
        except BaseException:
            self.close()
            raise

    # -- setup ------------------------------------------------------------------------------
    def _read_head(self) -> None:
        first = _read_line(self._stream, self.path, 1)
        used = len(first)
        if first.startswith(_BOM):
            first = first[len(_BOM):]
        if not first.strip():
            raise VectorFormatError(self.path, "the file is empty or starts with a blank line",
                                    line=1)
        self._lineno = 1
        if self.format == "glove":
            tokens = first.split()
            if len(tokens) < 2:
                raise VectorFormatError(
                    self.path, f"expected 'word v1 v2 ...', got {_show(first)}", line=1
                )
            # the numeric fields at the end; none: report the first bad value (_diagnose)
            self.dim = _trailing_numbers(tokens) or len(tokens) - 1
            self._dim_source = "the dimension set by line 1"
            word, vec = self._diagnose(first, 1)  # checks every value of the first line
            self.records = 1
            if self.wanted is None or word in self.wanted:
                self._pending = (word, vec)
            return
        header = _header(first)
        if header is None:
            raise VectorFormatError(
                self.path,
                f"bad {self.format} header {_show(first)}: expected 'count dim', two integers "
                "(a GloVe file has no header: pass format='glove')",
                line=1,
            )
        self.count, self.dim = header
        binary = self.format == "word2vec_binary"
        _check_dim(self.path, self.count, self.dim, binary, _room(self.path, self._raw, used))
        self._dim_source = "the dimension in the header"

    # -- iteration --------------------------------------------------------------------------
    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        records = self._iter_binary() if self.format == "word2vec_binary" else self._iter_text()
        try:
            yield from records
        except _GZIP_ERRORS as exc:
            raise _gzip_error(self.path, exc) from exc

    def _done(self) -> bool:
        return self.limit is not None and self.records >= self.limit

    def _iter_text(self) -> Iterator[tuple[str, np.ndarray]]:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            if self.limit is None or self.limit >= 1:
                yield pending
        if self._done():
            return
        wanted, dim, count, path = self.wanted, self.dim, self.count, self.path
        stream = self._stream
        encoding, errors, fromstring, f32 = self.encoding, self.errors, np.fromstring, np.float32
        lineno = self._lineno
        while line := _read_line(stream, path, lineno + 1):
            lineno += 1
            if not lineno % _TICK_LINES:
                self._tick()
            body = line.rstrip()
            if not body:
                continue  # blank (or whitespace-only) lines are not records
            space = body.find(b" ")
            raw_word = body[:space]
            # The fast path: one space after the word and between values, nothing else
            # (C word2vec's trailing space and CRLF are stripped above).
            if space > 0 and body.count(b" ") == dim and len(raw_word.split()) == 1:
                try:
                    word = raw_word.decode(encoding, errors)
                except UnicodeDecodeError as exc:
                    raise self._decode_error(exc, lineno) from exc
                if wanted is not None and word not in wanted:
                    vec = None
                else:
                    try:
                        vec = fromstring(body[space + 1:], dtype=f32, sep=" ")
                    except ValueError:
                        vec = None
                    if vec is None or vec.size != dim:
                        word, vec = self._diagnose(body, lineno)
            elif wanted is None or self._maybe_wanted(body, lineno):
                word, vec = self._diagnose(body, lineno)
            else:
                vec = None
            self.records += 1
            if count is not None and self.records > count:
                raise VectorFormatError(
                    self.path, f"more vectors than the header's count of {count}", line=lineno
                )
            if vec is not None and (wanted is None or word in wanted):
                yield word, vec
            if self._done():
                break
        self._lineno = lineno
        self._tick()
        if count is not None and self.records < count and not self._done():
            raise VectorFormatError(
                self.path,
                f"truncated: the header announces {count} vectors, the file has {self.records}",
                line=lineno + 1,
            )

    def _maybe_wanted(self, body: bytes, lineno: int) -> bool:
        """Whether an irregular line (tabs, runs of spaces, a word with spaces, a wrong field
        count) may hold a wanted word: its first field or its word as ``_split_record`` reads
        it. Such lines are checked in full; the others are skipped unparsed."""
        tokens = body.split()
        split = _split_record(tokens, self.dim)
        candidates = {tokens[0]} if split is None else {tokens[0], b" ".join(split[0])}
        try:
            return any(w.decode(self.encoding, self.errors) in self.wanted for w in candidates)
        except UnicodeDecodeError as exc:
            raise self._decode_error(exc, lineno) from exc

    def _iter_binary(self) -> Iterator[tuple[str, np.ndarray]]:
        count, dim, wanted = self.count, self.dim, self.wanted
        assert count is not None
        nbytes = 4 * dim
        encoding, errors, frombuffer, f32le = self.encoding, self.errors, np.frombuffer, "<f4"
        stream = self._stream
        buf, pos, offset = b"", 0, stream.tell()  # offset: where buf[0] sits in the file
        for record in range(1, count + 1):
            if self._done():
                return
            while (space := buf.find(b" ", pos)) < 0:
                more = stream.read(_CHUNK)
                if not more:
                    where = "inside its word" if buf[pos:].strip() else "before it"
                    raise VectorFormatError(
                        self.path,
                        f"truncated: the file ends {where} (the header announces {count} "
                        f"vectors) at byte {offset + len(buf)}",
                        record=record,
                    )
                offset, buf, pos = offset + pos, buf[pos:] + more, 0
                self._tick()
                if len(buf) > 2 * _CHUNK:
                    raise VectorFormatError(
                        self.path, f"no word ending in a space within {len(buf)} bytes of byte "
                        f"{offset}: not a word2vec binary record",
                        record=record,
                    )
            raw_word = buf[pos:space].lstrip(b"\n")  # the newline that ends the previous record
            if not raw_word or b"\n" in raw_word:
                raise VectorFormatError(
                    self.path,
                    f"expected a word at byte {offset + pos}, got {_show(buf[pos:space + 1])} "
                    f"(is the dimension {dim} in the header right?)",
                    record=record,
                )
            start = space + 1
            while len(buf) < start + nbytes:
                more = stream.read(max(_CHUNK, nbytes))
                if not more:
                    got = len(buf) - start
                    raise VectorFormatError(
                        self.path,
                        f"truncated: {_show(raw_word)} needs {nbytes} bytes of float32, the file "
                        f"ends after {got}",
                        record=record,
                    )
                offset, buf, start, space = offset + pos, buf[pos:] + more, start - pos, space - pos
                pos = 0
                self._tick()
            try:
                word = raw_word.decode(encoding, errors)
            except UnicodeDecodeError as exc:
                raise VectorFormatError(
                    self.path,
                    f"the word {_show(raw_word)} is not valid {encoding} ({exc.reason}); "
                    "pass errors='replace' or another encoding",
                    record=record,
                ) from exc
            pos = start + nbytes
            self.records = record
            if wanted is None or word in wanted:
                yield word, frombuffer(buf, dtype=f32le, count=dim, offset=start)
        if self._done():
            return
        tail = buf[pos:] + stream.read(_CHUNK)
        self._tick()
        if tail.strip():
            raise VectorFormatError(
                self.path, f"data after the header's {count} vectors: {_show(tail.lstrip()[:40])}",
                record=count + 1,
            )

    # -- errors -----------------------------------------------------------------------------
    def _diagnose(self, line: bytes, lineno: int) -> tuple[str, np.ndarray]:
        """The slow path for a line the fast parser rejected: return its record when it is
        valid after all (tabs, runs of spaces, a word containing spaces as in glove.840B), or
        raise the error that names what is wrong."""
        tokens, dim = line.split(), self.dim
        split = _split_record(tokens, dim)
        if split is None:
            values = len(tokens) - 1
            got = f"{values} value" + ("" if values == 1 else "s")
            raise VectorFormatError(
                self.path, f"wrong dimension: {got} after the word, expected {dim} "
                f"({self._dim_source}): {_show(line)}",
                line=lineno,
            )
        head, tail = split
        for field, token in enumerate(tail, start=len(head) + 1):
            if not _is_number(token):
                raise VectorFormatError(
                    self.path, f"non-numeric value {_show(token)} in field {field}", line=lineno
                )
        raw_word = b" ".join(head)
        try:
            word = raw_word.decode(self.encoding, self.errors)
        except UnicodeDecodeError as exc:
            raise self._decode_error(exc, lineno) from exc
        return word, np.array([float(t) for t in tail], dtype=np.float32)

    def _decode_error(self, exc: UnicodeDecodeError, lineno: int) -> VectorFormatError:
        return VectorFormatError(
            self.path,
            f"the word {_show(exc.object)} is not valid {self.encoding} ({exc.reason}); pass "
            "errors='replace' or another encoding",
            line=lineno,
        )

    # -- progress and cleanup ---------------------------------------------------------------
    def _tick(self) -> None:
        if self._bar is None:
            return
        pos = self._raw.tell()
        self._bar.update(pos - self._seen)
        self._seen = pos

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._stream is not self._raw:
            self._stream.close()
        self._raw.close()

    def __enter__(self) -> VectorReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _show(data: bytes, limit: int = 60) -> str:
    """A short printable form of raw bytes for error messages."""
    text = data.decode("utf-8", "backslashreplace").rstrip("\r\n")
    text = text if len(text) <= limit else text[:limit] + "..."
    return "'" + text.replace("\n", "\\n").replace("\r", "\\r") + "'"


# -- writing ---------------------------------------------------------------------------------
def _check_words(words: Sequence[str], rows: int) -> None:
    if len(words) != rows:
        raise ValueError(f"{len(words)} words for {rows} vectors; they must match")
    seen: set[str] = set()
    for i, word in enumerate(words):
        if not isinstance(word, str) or not word or any(c.isspace() for c in word):
            raise ValueError(
                f"word {i} ({word!r}) cannot be written: words must be non-empty strings "
                "without whitespace"
            )
        if word in seen:
            raise ValueError(f"word {word!r} appears twice; vector files need unique words")
        seen.add(word)


def _row_formatter(dim: int, precision: int | None):
    """Row -> text. ``precision`` None writes each row with 6 significant digits when that reads
    back to the same float32 values, else 9 (always exact for float32)."""
    if precision is not None:
        fmt = " ".join([f"%.{int(precision)}g"] * dim)
        return lambda row: fmt % tuple(row.tolist())
    short, exact = " ".join(["%.6g"] * dim), " ".join(["%.9g"] * dim)

    def format_row(row: np.ndarray) -> str:
        values = tuple(row.tolist())
        text = short % values
        back = np.fromstring(text, dtype=np.float32, sep=" ")
        return text if np.array_equal(back, row) else exact % values

    return format_row


def write_vectors(
    path: str | os.PathLike,
    words: Sequence[str],
    array: np.ndarray,
    format: str,
    *,
    precision: int | None = None,
    progress: bool = True,
) -> None:
    """Write ``words`` and the float32 rows of ``array`` in ``format`` (not ``auto``)."""
    fmt = canonical_format(format)
    if fmt == "auto":
        raise ValueError("pick a format to write: glove, word2vec or word2vec_binary")
    if array.ndim != 2:
        raise ValueError(f"vectors must be 2-D (words, dim), got shape {array.shape}")
    _check_words(words, array.shape[0])
    rows, dim = array.shape
    if dim < 1:
        raise ValueError("vectors need at least one dimension")
    opener = gzip.open if str(path).endswith(".gz") else open
    tmp = f"{path}.tmp{uuid.uuid4().hex}"  # unique per writer, threads included
    from tqdm.auto import tqdm  # lazily: importing tqdm.auto takes a while

    bar = tqdm(total=rows, unit="vec", desc=Path(path).name, leave=False,
               disable=not progress or rows * dim < PROGRESS_MIN_BYTES // 8)
    try:
        with opener(tmp, "wb") as out:
            if fmt != "glove":
                out.write(f"{rows} {dim}\n".encode())
            if fmt == "word2vec_binary":
                for start in range(0, rows, 4096):
                    block = np.ascontiguousarray(array[start:start + 4096], dtype="<f4")
                    out.write(b"".join(
                        words[start + i].encode() + b" " + block[i].tobytes() + b"\n"
                        for i in range(block.shape[0])
                    ))
                    bar.update(block.shape[0])
            else:
                format_row = _row_formatter(dim, precision)
                for start in range(0, rows, 4096):
                    block = np.asarray(array[start:start + 4096], dtype=np.float32)
                    out.write("".join(
                        f"{words[start + i]} {format_row(block[i])}\n"
                        for i in range(block.shape[0])
                    ).encode())
                    bar.update(block.shape[0])
        os.replace(tmp, path)
    finally:
        bar.close()
        if os.path.exists(tmp):
            os.remove(tmp)
