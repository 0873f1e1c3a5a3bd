"""HTTP transport: the streaming POST and the live bytes of its body.

Uses a ``requests.Session`` (proxies from the environment, connection reuse)
with ``stream=True``.  The body is read with ``response.raw.read1()``, which
returns whatever bytes have arrived, in every framing: chunked, no length with
``Connection: close``, or gzip.  (``iter_content(n)`` and ``SSEClient(response)``
wait for n bytes or the end of the body when it is not chunked, so events
would arrive only at the end.)  ``Accept-Encoding: identity`` asks the server
not to compress; a server that compresses anyway is decoded by urllib3.
"""

from __future__ import annotations

import datetime
import email.utils
import json
import re
import socket
import threading
import time
from typing import Any, Callable, Iterator, Mapping
from urllib.parse import urlsplit

import requests
import urllib3.exceptions

from chatpipe import __version__
from chatpipe.dialects.base import provider_error
from chatpipe.errors import Cancelled, StreamError
from chatpipe.templates import Request

#: HTTP statuses worth a retry (rate limits, overload, gateway trouble).
RETRYABLE_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504, 529})

#: HTTP statuses never retried, whatever the body says.
NEVER_RETRIED = frozenset({400, 401, 403, 404})

#: Bytes read from the socket at most per read; read1 returns sooner.
READ_SIZE = 65536

#: Bytes of an HTTP error body read at most.
ERROR_BODY_LIMIT = 1 << 20


def _host(url: str) -> str:
    parts = urlsplit(url)
    return parts.netloc or url


class Control:
    """Lets another thread cancel a running :func:`run`.

    :meth:`cancel` wakes a retry wait at once and shuts the socket of the
    response being read, so the reading thread stops within milliseconds.
    """

    def __init__(self) -> None:
        self.cancelled = threading.Event()
        self._lock = threading.Lock()
        self._response: requests.Response | None = None

    def attach(self, response: requests.Response | None) -> None:
        """Record RESPONSE as the one being read (None when done with it).

        Raises:
            Cancelled: :meth:`cancel` was already called.
        """
        with self._lock:
            self._response = response
            if self.cancelled.is_set() and response is not None:
                raise Cancelled()

    def cancel(self) -> None:
        """Cancel the stream: wake its waits and shut its socket."""
        with self._lock:
            self.cancelled.set()
            response = self._response
        if response is not None:
            sock = _socket(response.raw)
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def post(session: requests.Session, request: Request) -> requests.Response:
    """Send REQUEST and return the response once its headers have arrived.

    The body is not read: iterate :func:`iter_body` for it, and close the
    response when done.

    Raises:
        StreamError: no connection (retryable), a timeout (retryable), or an
            HTTP status >= 400 (message from the error body, see
            :func:`http_error`).
    """
    headers = {
        "Content-Type": "application/json",
        "Accept": "text/event-stream, application/x-ndjson, application/json",
        "Accept-Encoding": "identity",
        "User-Agent": f"chatpipe/{__version__}",
        **request.headers,
    }
    data = json.dumps(request.body, ensure_ascii=False).encode("utf-8")
    try:
        response = session.post(request.url, data=data, headers=headers, stream=True,
                                timeout=(request.connect_timeout, request.read_timeout))
    except requests.exceptions.ConnectTimeout:
        raise StreamError(f"cannot connect to {_host(request.url)}: no answer within "
                          f"{request.connect_timeout:g} s (connect_timeout)",
                          retryable=True) from None
    except requests.exceptions.ReadTimeout:
        raise StreamError(f"{_host(request.url)} sent no response headers within "
                          f"{request.read_timeout:g} s (read_timeout)", retryable=True) from None
    except requests.exceptions.InvalidURL as err:
        raise StreamError(f"invalid endpoint URL: {err}") from None
    except requests.exceptions.MissingSchema:
        raise StreamError("invalid endpoint URL: it must start with http:// or https://") from None
    except requests.exceptions.ConnectionError as err:
        raise StreamError(f"cannot connect to {_host(request.url)}: {_reason(err)}",
                          retryable=True) from None
    except requests.exceptions.RequestException as err:
        raise StreamError(f"request to {_host(request.url)} failed: {_reason(err)}") from None
    if response.status_code >= 400:
        try:
            raise http_error(response)
        finally:
            response.close()
    return response


def _reason(err: BaseException) -> str:
    """The innermost useful reason of a requests/urllib3 error, without the URL.

    For example "Connection refused" or "Name or service not known".
    """
    inner = err.args[0] if err.args and isinstance(err.args[0], BaseException) else err
    inner = getattr(inner, "reason", None) or inner
    cause: BaseException | None = inner
    while cause is not None:
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror
        cause = cause.__cause__ or cause.__context__
    return re.sub(r"^\w+\(host=.*?\): ", "", str(inner))


def http_error(response: requests.Response) -> StreamError:
    """Make a :class:`StreamError` for an HTTP error RESPONSE.

    The message is the provider's own (see
    :func:`chatpipe.dialects.base.provider_error`); otherwise it says what
    the body was (empty, HTML, text) along with the status.
    """
    status = response.status_code
    reason = response.reason or ""
    retryable = status in RETRYABLE_STATUSES
    try:
        raw = response.raw.read(ERROR_BODY_LIMIT, decode_content=True) or b""
    except Exception:  # the body is only for the message
        raw = b""
    text = raw.decode("utf-8", "replace").strip()
    try:
        payload = json.loads(text)
    except (ValueError, RecursionError):
        payload = None
    message, overloaded = provider_error(payload)
    if status not in NEVER_RETRIED:
        retryable = retryable or overloaded
    if not message:
        if not text:
            message = f"HTTP {status} {reason} with an empty body".replace("  ", " ")
        elif text.lstrip().startswith("<"):
            message = f"HTTP {status} {reason}: the server answered with an HTML page"
        else:
            # Whole: the output cuts long messages after redacting secrets.
            message = f"HTTP {status} {reason}: {text}"
    return StreamError(message, status=status, retryable=retryable,
                       retry_after=retry_after(response.headers, payload))


def retry_after(headers: Mapping[str, str], payload: Any = None) -> float | None:
    """Return the seconds to wait that an error response asks for, or None.

    Looks at ``retry-after-ms`` (milliseconds; OpenAI, Anthropic),
    ``Retry-After`` (seconds or an HTTP date, RFC 9110 section 10.2.3) and,
    in a Gemini error body, ``error.details[].retryDelay`` (e.g. ``"2.5s"``).
    """
    value = headers.get("retry-after-ms")
    if value:
        try:
            return max(0.0, float(value) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError):
                when = None
            if when is not None:
                now = datetime.datetime.now(when.tzinfo or datetime.timezone.utc)
                return max(0.0, (when - now).total_seconds())
    if isinstance(payload, list) and payload:
        payload = payload[0]
    err = payload.get("error") if isinstance(payload, dict) else None
    for detail in (err.get("details") or ()) if isinstance(err, dict) else ():
        delay = detail.get("retryDelay") if isinstance(detail, dict) else None
        if isinstance(delay, str) and delay.endswith("s"):
            try:
                return max(0.0, float(delay[:-1]))
            except ValueError:
                pass
    return None


def iter_body(response: requests.Response, read_timeout: float,
              deadline: float | None = None,
              before_read: Callable[[], None] | None = None) -> Iterator[bytes]:
    """Yield RESPONSE's body bytes as they arrive (decoded if gzip/deflate).

    Args:
        response: from :func:`post`.
        read_timeout: the idle timeout (seconds) set by :func:`post`; here
            only for the message.
        deadline: a ``time.monotonic()`` value after which the stream is cut
            off, however busy it is (keep-alive comments do not extend it).
        before_read: called before each read from the socket, e.g. to flush
            the output decoded so far before waiting.
    Raises:
        StreamError: the connection broke (retryable), went idle for longer
            than the read timeout (retryable), or the deadline passed.
    """
    raw = response.raw
    read1 = raw.read1
    sock = None
    try:
        while True:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise _deadline_error()
                if left < read_timeout:
                    sock = sock or _socket(raw)
                    if sock is not None:
                        sock.settimeout(left)
            if before_read is not None:
                before_read()
            chunk = read1(READ_SIZE, decode_content=True)
            if not chunk:
                return
            yield chunk
    except urllib3.exceptions.ReadTimeoutError:
        if deadline is not None and time.monotonic() >= deadline - 0.05:
            raise _deadline_error() from None
        raise StreamError("the stream ended early: no data from the server for "
                          f"{read_timeout:g} s (read_timeout)", retryable=True) from None
    except (urllib3.exceptions.ProtocolError, urllib3.exceptions.DecodeError,
            urllib3.exceptions.SSLError, OSError) as err:
        raise StreamError(f"the stream ended early: connection lost ({_reason(err)})",
                          retryable=True) from None


def drain(response: requests.Response, timeout: float = 1.0) -> None:
    """Read what is left of RESPONSE's body (usually just the end of the
    chunked framing), so that its connection can serve the next request.

    Gives up silently after TIMEOUT seconds of silence or on any error: the
    connection is then closed instead of reused.
    """
    sock = _socket(response.raw)
    try:
        if sock is not None:
            sock.settimeout(timeout)
        while response.raw.read1(READ_SIZE, decode_content=True):
            pass
    except Exception:
        pass


def _deadline_error() -> StreamError:
    return StreamError("the stream ended early: it ran past its deadline "
                       "(chatpipe.deadline seconds)")


def _socket(raw) -> Any:
    """The socket under a urllib3 response, to shorten its timeout, or None."""
    connection = getattr(raw, "connection", None)
    return getattr(connection, "sock", None)
