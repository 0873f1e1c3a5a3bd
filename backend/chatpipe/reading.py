"""Reading a response within a deadline: the time a whole request may
take (:class:`Deadline`), the watchdog that holds it while the response
headers are awaited (:class:`Watchdog`), and the live bytes of a body
(:func:`iter_body`, :func:`read_body`, :func:`drain`).

The body is read with ``response.raw.read1()``, which returns whatever bytes
have arrived, in every framing: chunked, no length with ``Connection:
close``, or gzip.  (``iter_content(n)`` and ``SSEClient(response)`` wait for
n bytes or the end of the body when it is not chunked, so events would
arrive only at the end.)  Requests are sent by :mod:`chatpipe.transport`.
"""

from __future__ import annotations

import dataclasses
import socket
import threading
import time
from typing import Any, Callable, Iterator

import requests
import urllib3.exceptions

from chatpipe.connections import socket_of
from chatpipe.errors import StreamError
from chatpipe.httperrors import failure_reason

#: Bytes read from the socket at most per read; read1 returns sooner.
READ_SIZE = 65536


@dataclasses.dataclass(frozen=True)
class Deadline:
    """The time by which a whole request must be done.

    Attributes:
        at: a ``time.monotonic()`` value.
        seconds: how long the request was given, for messages.
        what: what ran past it, the start of the error's message, e.g.
            ``"the stream ended early: it"``.
    """

    at: float
    seconds: float
    what: str = "the stream ended early: it"

    @classmethod
    def after(cls, seconds: float, what: str = "the stream ended early: it",
              start: float | None = None) -> "Deadline":
        """A deadline SECONDS after START (a ``time.monotonic()`` value,
        default now); WHAT is as for the attribute."""
        start = time.monotonic() if start is None else start
        return cls(start + seconds, seconds, what)

    def left(self) -> float:
        """Seconds left, negative when passed."""
        return self.at - time.monotonic()

    def error(self) -> StreamError:
        """The (not retryable) :class:`StreamError` saying that the
        deadline passed: WHAT ran past its deadline of N s."""
        return StreamError(f"{self.what} ran past its deadline of {self.seconds:g} s "
                           "(chatpipe.deadline)", details={"kind": "deadline"})

    def check(self) -> float:
        """Seconds left.

        Raises:
            StreamError: none are (see :meth:`error`).
        """
        left = self.left()
        if left <= 0:
            raise self.error()
        return left


class Watchdog:
    """Shuts the connection a request is sent on when DEADLINE passes, so
    that no server can hold the request past it (before the response
    headers, where socket timeouts only bound each wait for bytes).

    Used as the sending thread's control (see
    :func:`chatpipe.connections.controlled_by`); it passes the connection
    on to OUTER, the control already there (a cancellable stream's), so
    that cancelling still works.
    """

    def __init__(self, deadline: Deadline, outer: Any) -> None:
        self.expired = False
        self._deadline = deadline
        self._outer = outer
        self._connection: Any = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True,
                                        name="chatpipe-deadline")

    def sending(self, connection: Any) -> None:
        """Record CONNECTION (a urllib3 connection) as the one to shut."""
        self._connection = connection
        if self._outer is not None:
            self._outer.sending(connection)

    def __enter__(self) -> "Watchdog":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._done.set()

    def _watch(self) -> None:
        if self._done.wait(max(0.0, self._deadline.left())):
            return
        self.expired = True
        # The connection may still be opening: shut it as soon as it is there.
        while not self._done.is_set():
            sock = getattr(self._connection, "sock", None)
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self._done.wait(0.05)



def iter_body(response: requests.Response, read_timeout: float,
              deadline: Deadline | None = None,
              before_read: Callable[[], None] | None = None,
              what: str = "the stream ended early") -> Iterator[bytes]:
    """Yield RESPONSE's body bytes as they arrive (decoded if gzip/deflate).

    Args:
        response: from :func:`chatpipe.transport.send`.
        read_timeout: the idle timeout (seconds) set by
            :func:`chatpipe.transport.send`; here only for the message.
        deadline: when the body is cut off, however busy it is (keep-alive
            comments and bytes dripped one at a time do not extend it):
            the socket's timeout is cut to the time left before each read.
        before_read: called before each read from the socket, e.g. to flush
            the output decoded so far before waiting.
        what: the start of the messages of a broken or idle body.
    Raises:
        StreamError: the connection broke (retryable), went idle for longer
            than the read timeout (retryable), or the deadline passed (see
            :meth:`Deadline.error`).
    """
    raw = response.raw
    read1 = raw.read1
    sock = None
    try:
        while True:
            if deadline is not None:
                left = deadline.check()
                if left < read_timeout:
                    sock = sock or socket_of(raw)
                    if sock is not None:
                        sock.settimeout(left)
            if before_read is not None:
                before_read()
            chunk = read1(READ_SIZE, decode_content=True)
            if not chunk:
                return
            yield chunk
    except urllib3.exceptions.ReadTimeoutError:
        if deadline is not None and deadline.left() <= 0.05:
            raise deadline.error() from None
        raise StreamError(f"{what}: no data from the server for "
                          f"{read_timeout:g} s (read_timeout)", retryable=True) from None
    except (urllib3.exceptions.ProtocolError, urllib3.exceptions.DecodeError,
            urllib3.exceptions.SSLError, OSError) as err:
        if deadline is not None and deadline.left() <= 0.05:
            raise deadline.error() from None
        raise StreamError(f"{what}: {failure_reason(err)}", retryable=True) from None


def read_body(response: requests.Response, limit: int, read_timeout: float,
              deadline: Deadline | None = None, what: str = "the response ended early") -> bytes:
    """Read RESPONSE's whole body (decoded) through :func:`iter_body`, so
    that DEADLINE bounds it; return at most LIMIT + 1 bytes (more than
    LIMIT means it was too long: the rest is not read).

    Raises:
        StreamError: see :func:`iter_body` (WHAT starts its messages).
    """
    parts: list[bytes] = []
    size = 0
    for chunk in iter_body(response, read_timeout, deadline, what=what):
        parts.append(chunk)
        size += len(chunk)
        if size > limit:
            break
    return b"".join(parts)[:limit + 1]


def drain(response: requests.Response, timeout: float = 1.0) -> None:
    """Read what is left of RESPONSE's body (usually just the end of the
    chunked framing), so that its connection can serve the next request.

    Gives up silently after TIMEOUT seconds of silence or on any error: the
    connection is then closed instead of reused.
    """
    sock = socket_of(response.raw)
    try:
        if sock is not None:
            sock.settimeout(timeout)
        while response.raw.read1(READ_SIZE, decode_content=True):
            pass
    except Exception:
        pass

