"""Story files: the TinyStories text format (each story followed by a line holding exactly <|endoftext|>), read in
chunks and checked to be UTF-8 text, and streamed where a whole corpus is read (`StoryFiles`, one kind of
`StreamedStories`: stories read again from their source at each pass)."""

from __future__ import annotations

import codecs
import copy
import gzip
import itertools
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from ..errors import SLMError

SEPARATOR = re.compile(rb"^<\|endoftext\|>[ \t\r]*(?:\n|\Z)", re.MULTILINE)
READ_CHUNK = 16 << 20  # bytes read from a text file at a time


class StreamedStories:
    """Stories read again from their source at each pass: never all in memory, whatever the source's size.

    It answers what the data pipeline asks of a `datasets.Dataset` of stories (`len`, `select` of a subset, `iter`
    in batches of `{"text": [...]}`), each by reading the source again: memory stays that of one read buffer and one
    batch. `len` is one pass, counted once. A selection keeps one byte per story (which stories it holds), not the
    stories. Subclasses say how a pass reads the source (`_read`).
    """

    def __init__(self, limit: int | None = None, keep: np.ndarray | None = None):
        self.limit, self.keep = limit, keep
        self._count = None if keep is None else int(keep.sum())

    def __len__(self) -> int:
        if self._count is None:
            self._count = sum(1 for _ in self._all_stories())
        return self._count

    def select(self, indices) -> StreamedStories:
        """The stories at `indices` (positions in this collection), in source order."""
        positions = np.flatnonzero(self.keep) if self.keep is not None else np.arange(len(self))
        keep = np.zeros(len(positions) if self.keep is None else len(self.keep), dtype=bool)
        keep[positions[np.asarray(indices, dtype=np.int64)]] = True
        selected = copy.copy(self)
        selected.keep, selected._count = keep, int(keep.sum())
        return selected

    def iter(self, batch_size: int) -> Iterator[dict[str, list]]:
        """Batches of `batch_size` stories, as `datasets.Dataset.iter` gives them."""
        stories = self._all_stories()
        if self.keep is not None:
            stories = itertools.compress(stories, self.keep)
        while batch := list(itertools.islice(stories, batch_size)):
            yield {"text": batch}

    def _all_stories(self) -> Iterator:
        stories = self._read()
        return stories if self.limit is None else itertools.islice(stories, self.limit)

    def _read(self) -> Iterator:
        raise NotImplementedError


class StoryFiles(StreamedStories):
    """The stories of TinyStories-format text files, streamed (`iter_stories`). Counting them (`len`) also checks
    every story is UTF-8 text, so a bad file is refused before anything is written."""

    def __init__(self, paths: Sequence[Path], limit: int | None = None, keep: np.ndarray | None = None):
        super().__init__(limit, keep)
        self.paths = list(paths)

    def _read(self) -> Iterator[str]:
        return itertools.chain.from_iterable(iter_stories(path) for path in self.paths)


def read_stories(path: str | os.PathLike, limit: int | None = None) -> list[str]:
    """The stories of a TinyStories-format text file (.txt or .txt.gz), at most `limit` of them: `iter_stories`."""
    return list(itertools.islice(iter_stories(path), limit))


def iter_stories(path: str | os.PathLike) -> Iterator[str]:
    """The stories of a TinyStories-format text file (.txt or .txt.gz), one at a time: each story followed by a line
    holding exactly <|endoftext|>. Stories are stripped of surrounding whitespace; empty ones are skipped.

    The file is read in chunks; `SLMError` names the file and the byte offset of a NUL byte (a binary file) or of
    the first byte that is not UTF-8 (offsets count decompressed bytes for .gz files).
    """
    path = Path(path)
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as file:
            buffer, buffer_offset, at_end = b"", 0, False
            while not at_end:
                chunk = file.read(READ_CHUNK)
                at_end = not chunk
                buffer += chunk
                start = 0
                for match in SEPARATOR.finditer(buffer):
                    if not at_end and match.end() == len(buffer):
                        break  # the separator line may go on in the next chunk
                    if story := _story(path, buffer[start:match.start()], buffer_offset + start):
                        yield story
                    start = match.end()
                if at_end and (story := _story(path, buffer[start:], buffer_offset + start)):
                    yield story
                buffer, buffer_offset = buffer[start:], buffer_offset + start
    except (OSError, EOFError) as error:  # gzip.BadGzipFile is an OSError
        raise SLMError(f"cannot read {path}: {error}") from error


def _story(path: Path, raw: bytes, offset: int) -> str:
    if offset == 0 and raw.startswith(codecs.BOM_UTF8):
        raw, offset = raw[len(codecs.BOM_UTF8):], len(codecs.BOM_UTF8)
    return _decode_utf8(raw, path, offset).strip()


def _decode_utf8(raw: bytes, path: Path, offset: int, final: bool = True, decoder=None) -> str:
    """Decode `raw` (found at byte `offset` of `path`); `SLMError` at the first invalid byte or NUL byte, whichever
    comes first. With an incremental `decoder`, `raw` may end inside a character (unless `final`)."""
    nul = raw.find(b"\0")
    valid = raw if nul < 0 else raw[:nul]
    try:
        text = decoder.decode(valid, final=final and nul < 0) if decoder else valid.decode("utf-8")
    except UnicodeDecodeError as error:
        start = error.start - (len(error.object) - len(valid))  # an incremental decoder prepends held-back bytes
        raise SLMError(f"{path} is not UTF-8 text: byte 0x{error.object[error.start]:02x} at byte offset "
                       f"{offset + start} is invalid") from error
    if nul >= 0:
        raise SLMError(f"{path} looks binary, not UTF-8 text (NUL byte at byte offset {offset + nul})")
    return text


def check_utf8_file(path: Path) -> None:
    """Raise `SLMError` naming the byte offset of the first NUL byte or invalid UTF-8 byte in a text-based file."""
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    offset = 0
    with open(path, "rb") as file:
        while chunk := file.read(READ_CHUNK):
            _decode_utf8(chunk, path, offset, final=False, decoder=decoder)
            offset += len(chunk)
    _decode_utf8(b"", path, offset, final=True, decoder=decoder)
