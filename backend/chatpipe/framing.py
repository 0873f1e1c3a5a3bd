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
  decodes each line strictly and would raise);
- sseclient-py joins the pieces of an unfinished event by repeated ``bytes``
  concatenation (quadratic time), and holds an event that never ends whole
  (unbounded memory): it is given whole events (:func:`event_chunks`), and
  an event longer than ``max_event_bytes`` is an error.

Spec: https://html.spec.whatwg.org/multipage/server-sent-events.html
"""

from __future__ import annotations

import codecs
from typing import Iterable, Iterator

from sseclient import SSEClient

from chatpipe.errors import StreamError

BOM = codecs.BOM_UTF8

#: The blank line that ends a server-sent event, once line endings are LF.
_BOUNDARY = b"\n\n"


def too_large(what: str, max_event_bytes: int) -> StreamError:
    """The (not retryable) :class:`StreamError` for WHAT (``"an event"``,
    ``"a line"``, ``"a JSON document"``) longer than MAX_EVENT_BYTES bytes."""
    return StreamError(f"the server sent {what} larger than {max_event_bytes} bytes "
                       "(chatpipe.max_event_bytes); raise it in the template if that "
                       "is expected")

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


def event_chunks(chunks: Iterable[bytes], max_event_bytes: int) -> Iterator[bytes]:
    """Yield the bytes of CHUNKS (LF line endings only, see
    :func:`normalise_newlines`) re-cut at event boundaries: each piece
    yielded ends with a blank line (``\\n\\n``, which may arrive split
    across chunks), but for the rest of the body at its end.

    The bytes of an unfinished event are held (at most MAX_EVENT_BYTES)
    until its boundary arrives, then given whole: sseclient-py joins the
    pieces of an event by repeated ``bytes`` concatenation, which is
    quadratic in the number of pieces; whole events keep it linear.  Nothing
    is delayed, since no event can be parsed before its boundary.  A chunk
    that ends on a boundary (the usual case) passes untouched.

    The size of an event is the number of bytes between two boundaries.
    Only the event that spans from earlier chunks into this one needs
    counting: the events that lie inside one chunk are no longer than it,
    and are looked at only when the chunk itself is longer than the limit.
    Work per chunk: two ``bytes.find`` calls and at most one copy.

    Raises:
        StreamError: an event longer than MAX_EVENT_BYTES (not retryable),
            raised before its bytes reach the SSE parser.
    """
    held: list[bytes] = []  # the pieces of the unfinished event
    since = 0  # their length in bytes
    newline = False  # whether the previous chunk ended with LF
    for chunk in chunks:
        if newline and chunk[:1] == b"\n":  # a boundary split LF | LF
            first, after = 0, 1
        else:
            first = chunk.find(_BOUNDARY)
            after = first + 2
        newline = chunk[-1:] == b"\n"
        if first < 0:
            since += len(chunk)
            if since > max_event_bytes:
                raise too_large("an event", max_event_bytes)
            held.append(chunk)
            continue
        if since + first > max_event_bytes:
            raise too_large("an event", max_event_bytes)
        tail = max(after, chunk.rfind(_BOUNDARY) + 2)  # just after the last boundary
        if len(chunk) > max_event_bytes:  # rare: look at the events inside the chunk
            start = after
            while (end := chunk.find(_BOUNDARY, start, tail)) >= 0:
                if end - start > max_event_bytes:
                    raise too_large("an event", max_event_bytes)
                start = end + 2
        since = len(chunk) - tail
        if since > max_event_bytes:
            raise too_large("an event", max_event_bytes)
        head = chunk if since == 0 else chunk[:tail]
        if held:
            held.append(head)
            head = b"".join(held)
            held.clear()
        yield head
        if since:
            held.append(chunk[tail:])
    if held:
        yield b"".join(held)


def sse_events(chunks: Iterable[bytes], max_event_bytes: int) -> Iterator:
    """Yield the server-sent events (sseclient-py ``Event`` objects) of CHUNKS.

    Each event has ``.event`` (``"message"`` by default), ``.data`` (data
    lines joined by LF), ``.id`` and ``.retry``.  Comments are skipped.  An
    event not ended by a blank line is still yielded at the end of the body.

    Raises:
        StreamError: an event (comments included) longer than
            MAX_EVENT_BYTES bytes; see :func:`event_chunks`.
    """
    source = event_chunks(normalise_newlines(valid_utf8(strip_bom(chunks))), max_event_bytes)
    return SSEClient(source, char_enc="utf-8").events()


def ndjson_lines(chunks: Iterable[bytes], max_event_bytes: int) -> Iterator[Line]:
    """Yield each non-blank line of an NDJSON body as a :class:`Line`.

    A last line without a line ending is yielded at the end of the body.
    Work is linear in the body's length, however the lines are split, and
    no more than MAX_EVENT_BYTES bytes of an unfinished line are kept.

    Raises:
        StreamError: a line longer than MAX_EVENT_BYTES bytes (not retryable).
    """
    pending: list[bytes] = []
    held = 0  # bytes in pending
    for chunk in valid_utf8(strip_bom(chunks)):
        start = 0
        while (end := chunk.find(b"\n", start)) >= 0:
            if held + end - start > max_event_bytes:
                raise too_large("a line", max_event_bytes)
            piece = chunk[start:end]
            if pending:
                pending.append(piece)
                piece = b"".join(pending)
                pending.clear()
                held = 0
            if piece.strip():
                yield Line(piece.decode("utf-8").rstrip("\r"))
            start = end + 1
        if start < len(chunk):
            held += len(chunk) - start
            if held > max_event_bytes:
                raise too_large("a line", max_event_bytes)
            pending.append(chunk[start:])
    if pending:
        last = b"".join(pending)
        if last.strip():
            yield Line(last.decode("utf-8").rstrip("\r"))
