"""Story files: the TinyStories text format (each story followed by a line holding exactly <|endoftext|>), read in
chunks and checked to be UTF-8 text."""

from __future__ import annotations

import codecs
import gzip
import os
import re
from collections.abc import Sequence
from pathlib import Path

from ..errors import SLMError

SEPARATOR = re.compile(rb"^<\|endoftext\|>[ \t\r]*(?:\n|\Z)", re.MULTILINE)
READ_CHUNK = 64 << 20  # bytes read from a text file at a time


def read_text_files(paths: Sequence[Path], limit: int | None) -> list[str]:
    stories: list[str] = []
    for path in paths:
        stories.extend(read_stories(path, None if limit is None else limit - len(stories)))
        if limit is not None and len(stories) >= limit:
            break
    return stories


def read_stories(path: str | os.PathLike, limit: int | None = None) -> list[str]:
    """The stories of a TinyStories-format text file (.txt or .txt.gz): each story followed by a line holding
    exactly <|endoftext|>. Stories are stripped of surrounding whitespace; empty ones are skipped.

    The file is read in chunks; `SLMError` names the file and the byte offset of a NUL byte (a binary file) or of
    the first byte that is not UTF-8 (offsets count decompressed bytes for .gz files).
    """
    path = Path(path)
    stories: list[str] = []
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as file:
            buffer, buffer_offset, at_end = b"", 0, False
            while not at_end and (limit is None or len(stories) < limit):
                chunk = file.read(READ_CHUNK)
                at_end = not chunk
                buffer += chunk
                start = 0
                for match in SEPARATOR.finditer(buffer):
                    if not at_end and match.end() == len(buffer):
                        break  # the separator line may go on in the next chunk
                    _add_story(stories, path, buffer[start:match.start()], buffer_offset + start)
                    start = match.end()
                if at_end:
                    _add_story(stories, path, buffer[start:], buffer_offset + start)
                buffer, buffer_offset = buffer[start:], buffer_offset + start
    except (OSError, EOFError) as error:  # gzip.BadGzipFile is an OSError
        raise SLMError(f"cannot read {path}: {error}") from error
    return stories[:limit] if limit is not None else stories


def _add_story(stories: list[str], path: Path, raw: bytes, offset: int) -> None:
    if offset == 0 and raw.startswith(codecs.BOM_UTF8):
        raw, offset = raw[len(codecs.BOM_UTF8):], len(codecs.BOM_UTF8)
    text = _decode_utf8(raw, path, offset).strip()
    if text:
        stories.append(text)


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
