"""Bytes to events: server-sent events (via sseclient-py) and NDJSON lines.

This is the lower of the two stream layers, as in openai-python's
``_streaming``: it knows framing, not meaning.  The dialects
(:mod:`chatpipe.dialects`) give the events their meaning.

sseclient-py does the SSE parsing.  Three of its gaps are handled around it,
on the bytes it is given, without a parser of our own:

- a UTF-8 byte order mark before the first field (sseclient-py would take
  ``\\ufeffdata`` for an unknown field and drop the first event) is removed;
- line endings are normalised to LF, so a stream that mixes CRLF, LF and CR
  still has its blank lines seen (sseclient-py only recognises ``\\n\\n``,
  ``\\r\\r`` and ``\\r\\n\\r\\n`` at the end of an event);
- invalid UTF-8 is replaced by U+FFFD before sseclient-py sees it (it
  decodes each line strictly and would raise).

Spec: https://html.spec.whatwg.org/multipage/server-sent-events.html
"""

from __future__ import annotations

import codecs
from typing import Iterable, Iterator

from sseclient import SSEClient

BOM = codecs.BOM_UTF8

def valid_utf8(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Yield CHUNKS with invalid UTF-8 sequences replaced by U+FFFD.

    ASCII chunks pass untouched; others go through an incremental decoder,
    which keeps a character split across chunks whole.
    """
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    pending = False
    for chunk in chunks:
        if not pending and chunk.isascii():
            yield chunk
            continue
        text = decoder.decode(chunk)
        pending = bool(decoder.getstate()[0])
        if text:
            yield text.encode("utf-8")
    tail = decoder.decode(b"", final=True)
    if tail:
        yield tail.encode("utf-8")


class Line:
    """One NDJSON line, shaped like an sseclient-py ``Event`` for the dialects.

    Attributes:
        event: always ``"message"``.
        data: the line's text (without its line ending).
    """

    __slots__ = ("data",)
    event = "message"

    def __init__(self, data: str) -> None:
        self.data = data


def strip_bom(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Yield CHUNKS without a UTF-8 byte order mark at the very start.

    A BOM split across the first chunks is recognised too.
    """
    it = iter(chunks)
    head = b""
    for chunk in it:
        head += chunk
        if len(head) >= len(BOM) or not BOM.startswith(head):
            break
    if head.startswith(BOM):
        head = head[len(BOM):]
    if head:
        yield head
    yield from it


def normalise_newlines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Yield CHUNKS with CRLF and lone CR turned into LF.

    A CR at the end of a chunk is held back until the next chunk shows
    whether an LF follows it.
    """
    held_cr = False
    for chunk in chunks:
        if held_cr:
            chunk = b"\r" + chunk
        if b"\r" not in chunk:
            held_cr = False
            if chunk:
                yield chunk
            continue
        held_cr = chunk.endswith(b"\r")
        if held_cr:
            chunk = chunk[:-1]
        chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        if chunk:
            yield chunk
    if held_cr:
        yield b"\n"


def sse_events(chunks: Iterable[bytes]) -> Iterator:
    """Yield the server-sent events (sseclient-py ``Event`` objects) of CHUNKS.

    Each event has ``.event`` (``"message"`` by default), ``.data`` (data
    lines joined by LF), ``.id`` and ``.retry``.  Comments are skipped.  An
    event not ended by a blank line is still yielded at the end of the body.
    """
    source = normalise_newlines(valid_utf8(strip_bom(chunks)))
    return SSEClient(source, char_enc="utf-8").events()


def ndjson_lines(chunks: Iterable[bytes]) -> Iterator[Line]:
    """Yield each non-blank line of an NDJSON body as a :class:`Line`.

    A last line without a line ending is yielded at the end of the body.
    Work is linear in the body's length, however the lines are split.
    """
    pending: list[bytes] = []
    for chunk in valid_utf8(strip_bom(chunks)):
        start = 0
        while (end := chunk.find(b"\n", start)) >= 0:
            piece = chunk[start:end]
            if pending:
                pending.append(piece)
                piece = b"".join(pending)
                pending.clear()
            if piece.strip():
                yield Line(piece.decode("utf-8").rstrip("\r"))
            start = end + 1
        if start < len(chunk):
            pending.append(chunk[start:])
    if pending:
        last = b"".join(pending)
        if last.strip():
            yield Line(last.decode("utf-8").rstrip("\r"))
