"""HTTP transport: the streaming POST and the live bytes of its body.

Uses a ``requests.Session`` (proxies from the environment, connection reuse)
with ``stream=True``.  The body is read with ``response.raw.read1()``, which
returns whatever bytes have arrived, in every framing: chunked, no length with
``Connection: close``, or gzip.  (``iter_content(n)`` and ``SSEClient(response)``
wait for n bytes or the end of the body when it is not chunked, so events
would arrive only at the end.)  ``Accept-Encoding: identity`` asks the server
not to compress; a server that compresses anyway is decoded by urllib3.

Credentials never leave the template's origin: redirects are not followed by
requests (which re-sends every header but ``Authorization`` to another
host, and turns a POST into a GET on 301/302/303); :func:`post` follows only
307 and 308 on the same scheme, host and port, and stops with a clear error
otherwise.  Sessions, and the control of their connections (cancel at any
point, connect ahead), are in :mod:`chatpipe.connections`.

A :class:`Deadline` bounds a whole request, whatever the server does: the
connection (its timeout is cut to the time left), the response headers (a
watchdog shuts the connection when the time is up, so that headers sent a
byte at a time cannot hold it) and the body (:func:`iter_body` cuts the
socket's timeout to the time left).  The streaming POST (:func:`post`) and
the model list's GET (:func:`get`, :func:`read_body`) both go through
:func:`send`, the one place requests are sent.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import email.utils
import http.client
import ipaddress
import json
import re
import socket
import threading
import time
from typing import Any, Callable, Iterator, Mapping
from urllib.parse import urljoin, urlsplit

import requests
import requests.adapters
import urllib3
import urllib3.connection
import urllib3.exceptions
import urllib3.util

from chatpipe import __version__, connections, errors
from chatpipe.dialects.base import provider_error
from chatpipe.connections import _socket
from chatpipe.errors import StreamError
from chatpipe.templates import Request

# The retry rules are in chatpipe.errors; their names stay here too.
RETRYABLE_STATUSES = errors.RETRYABLE_STATUSES
NEVER_RETRIED = errors.NEVER_RETRIED

#: Bytes read from the socket at most per read; read1 returns sooner.
READ_SIZE = 65536

#: Bytes of an HTTP error body read at most.
ERROR_BODY_LIMIT = 1 << 20

#: Redirects followed at most (307 and 308 on the same origin only).
MAX_REDIRECTS = 5

#: What to do when a port of this machine refuses the connection, when the
#: template does not say (:attr:`chatpipe.templates.Request.refused_hint`).
REFUSED_HINT = ("no server is listening on that port of this machine: start it, "
                "or correct the template's url (or --url)")


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


class _Watchdog:
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

    def __enter__(self) -> "_Watchdog":
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


def safe_url(url: str) -> str:
    """URL for messages: scheme, host, port and path only, never a user
    name, password, query (which may hold a key) or fragment."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "?"
    return f"{parts.scheme}://{_host(url)}{parts.path}"


def _host(url: str) -> str:
    """URL's host and port for messages: never its user name or password."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        return host + (f":{parts.port}" if parts.port else "") or "?"
    except ValueError:
        return "?"


def _origin(url: str) -> tuple[str, str | None, int | None]:
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme.lower())
    return parts.scheme.lower(), (parts.hostname or "").lower(), port


def post(session: requests.Session, request: Request,
         deadline: Deadline | None = None) -> requests.Response:
    """Send REQUEST and return the response once its headers have arrived.

    The body is not read: iterate :func:`iter_body` for it, and close the
    response when done.  A 307 or 308 redirect to the same origin (scheme,
    host, port) is followed with the same method, body and headers; any
    other redirect is an error, so that the API key never goes to another
    host and the request is never changed into a GET.  DEADLINE, if given,
    bounds the connection and the wait for the headers (see :func:`send`).

    Raises:
        StreamError: see :func:`send`.
    """
    headers = {
        "Content-Type": "application/json",
        "Accept": "text/event-stream, application/x-ndjson, application/json",
        "Accept-Encoding": "identity",
        "User-Agent": f"chatpipe/{__version__}",
        **request.headers,
    }
    data = json.dumps(request.body, ensure_ascii=False).encode("utf-8")
    return send(session, "POST", request.url, headers=headers, data=data,
                timeout=(request.connect_timeout, request.read_timeout),
                deadline=deadline, refused_hint=request.refused_hint)


def get(session: requests.Session, url: str, *, headers: Mapping[str, str],
        params: Mapping[str, str] | None, timeout: tuple[float, float],
        deadline: Deadline | None = None,
        refused_hint: str | None = None) -> requests.Response:
    """GET URL with HEADERS and the query PARAMS; return the response once
    its headers have arrived (read the body with :func:`read_body`).
    Redirects are followed on the same origin only (see :func:`send`).

    Raises:
        StreamError: see :func:`send`.
    """
    return send(session, "GET", url, headers=headers, params=params, timeout=timeout,
                deadline=deadline, refused_hint=refused_hint)


#: The redirects each method follows (on the same origin only): a POST
#: only those that keep the method and the body.
_FOLLOWED = {"POST": frozenset({307, 308}), "GET": frozenset({301, 302, 303, 307, 308})}


def send(session: requests.Session, method: str, url: str, *, headers: Mapping[str, str],
         timeout: tuple[float, float], data: bytes | None = None,
         params: Mapping[str, str] | None = None, deadline: Deadline | None = None,
         refused_hint: str | None = None) -> requests.Response:
    """Send one HTTP request (METHOD, URL, HEADERS, DATA, query PARAMS) and
    return the response once its headers have arrived; the one place
    chatpipe sends a request.

    TIMEOUT is ``(connect, read)`` seconds.  DEADLINE, if given, bounds
    the whole exchange: the connect timeout and the read timeout are cut
    to the time left, and a watchdog shuts the connection when it passes
    (a server that sends its headers a byte at a time is cut off too).
    Redirects are followed only to the same origin (scheme, host, port),
    a POST's only when they are 307 or 308 (the same method and body), so
    that the API key never goes to another host.  An HTTP error status is
    raised, the response closed.

    Raises:
        StreamError: no connection (see :func:`connect_error`: retryable
            unless the host name does not resolve or this machine refused
            it), a timeout (retryable), the deadline passed (not
            retryable), a redirect not followed, an invalid URL, or an
            HTTP status >= 400 (message from the error body, see
            :func:`http_error`).
    """
    followed = _FOLLOWED.get(method, frozenset())
    for _ in range(MAX_REDIRECTS + 1):
        response = _send(session, method, url, data, headers, params, timeout, deadline,
                         refused_hint)
        if not response.is_redirect:
            break
        response.close()
        target = urljoin(url, response.headers["location"])
        if response.status_code not in followed or _origin(target) != _origin(url):
            kinds = "307 and 308 redirects" if method == "POST" else "redirects"
            raise StreamError(
                f"the endpoint redirected (HTTP {response.status_code}) to {_host(target)}"
                f"{urlsplit(target).path}: chatpipe follows only {kinds} "
                "on the same host, so that the API key stays with it; set the template's "
                "url to the new address", status=response.status_code)
        url = target
        params = None  # the query is in the Location
    else:
        raise StreamError(f"the endpoint redirected more than {MAX_REDIRECTS} times")
    if response.status_code >= 400:
        try:
            raise http_error(response)
        finally:
            response.close()
    return response


def _send(session: requests.Session, method: str, url: str, data: bytes | None,
          headers: Mapping[str, str], params: Mapping[str, str] | None,
          timeout: tuple[float, float], deadline: Deadline | None,
          refused_hint: str | None) -> requests.Response:
    """One request of :func:`send`, redirects not followed; errors mapped."""
    host = _host(url)
    connect_timeout, read_timeout = timeout
    watchdog = None
    if deadline is not None:
        left = deadline.check()
        timeout = (min(connect_timeout, left), min(read_timeout, left))
        watchdog = _Watchdog(deadline, connections.current_control())
    try:
        with connections.controlled_by(watchdog) if watchdog else contextlib.nullcontext():
            with watchdog if watchdog else contextlib.nullcontext():
                return session.request(method, url, data=data, params=params,
                                       headers=dict(headers), stream=True,
                                       allow_redirects=False, timeout=timeout)
    except requests.exceptions.RequestException as err:
        if watchdog is not None and (watchdog.expired or deadline.left() <= 0.05):
            raise deadline.error() from None
        raise _request_error(err, url, host, connect_timeout, read_timeout,
                             refused_hint) from None
    except ValueError as err:
        raise StreamError(f"invalid endpoint URL ({host}): {_reason(err)}") from None


def _request_error(err: requests.exceptions.RequestException, url: str, host: str,
                   connect_timeout: float, read_timeout: float,
                   refused_hint: str | None) -> StreamError:
    """The :class:`StreamError` for ERR, a request to URL that failed
    before its response headers arrived."""
    if isinstance(err, requests.exceptions.ConnectionError):
        return connect_error(err, url, connect_timeout, refused_hint)
    if isinstance(err, requests.exceptions.ReadTimeout):
        return StreamError(f"{host} sent no response headers within "
                           f"{read_timeout:g} s (read_timeout)", retryable=True)
    if isinstance(err, requests.exceptions.MissingSchema):
        return StreamError("invalid endpoint URL: it must start with http:// or https://, "
                           f"e.g. https://{url}")
    if isinstance(err, requests.exceptions.InvalidSchema):
        return StreamError(f"invalid endpoint URL: the scheme {urlsplit(url).scheme}:// is not "
                           "supported; use http:// or https://")
    if isinstance(err, requests.exceptions.InvalidURL):
        return StreamError(f"invalid endpoint URL ({host}): {_reason(err)}")
    return StreamError(f"request to {host} failed: {_reason(err)}")


def is_loopback(host: str) -> bool:
    """Whether HOST, a URL's host name or IP address (an IPv6 address with
    or without brackets), is this machine's loopback: 127.0.0.0/8, ::1
    (also IPv4-mapped), ``localhost`` or a name under ``.localhost``
    (RFC 6761).  Other names are not resolved: False."""
    host = host.strip("[]").rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return False
    return (getattr(address, "ipv4_mapped", None) or address).is_loopback


def connect_error(err: requests.exceptions.ConnectionError, url: str, connect_timeout: float,
                  refused_hint: str | None = None) -> StreamError:
    """The :class:`StreamError` for ERR, a connection to URL that failed
    before a request was sent (requests' ``ConnectionError``, which
    includes ``ConnectTimeout``, ``SSLError`` and ``ProxyError``).

    The one place that says what a failed connection means, for requests
    (:func:`post`) and model lists (:mod:`chatpipe.models`):

    - a host name that does not resolve: not retryable;
    - a connection refused by this machine (a loopback host, see
      :func:`is_loopback`, not through a proxy): nothing listens on that
      port, and nothing will a few seconds later, so it is not retryable,
      and its ``hint`` says what to do: REFUSED_HINT (the template's, e.g.
      how to start the local model server) or :data:`REFUSED_HINT`;
    - anything else (refused by another host, no answer within
      CONNECT_TIMEOUT seconds, a TLS failure): retryable.

    All but the first have the ``details`` ``{"kind": "connect", "host":
    "HOST:PORT"}`` (and ``hint``).
    """
    host = _host(url)
    details = {"kind": "connect", "host": host}
    if isinstance(err, requests.exceptions.ConnectTimeout):
        return StreamError(f"cannot connect to {host}: no answer within {connect_timeout:g} s "
                           "(connect_timeout)", retryable=True, details=details)
    unresolved = _find(err, (socket.gaierror, urllib3.exceptions.NameResolutionError))
    if unresolved is not None:
        return StreamError(f"cannot connect to {host}: the host name does not resolve "
                           f"({_reason(unresolved)})")
    refused = _find(err, (ConnectionRefusedError,))
    if (refused is not None and not isinstance(err, requests.exceptions.ProxyError)
            and is_loopback(urlsplit(url).hostname or "")):
        return StreamError(f"cannot connect to {host}: {_reason(refused)}",
                           details={**details, "hint": refused_hint or REFUSED_HINT})
    return StreamError(f"cannot connect to {host}: {_reason(err)}", retryable=True,
                       details=details)


def _causes(err: BaseException) -> Iterator[BaseException]:
    """ERR and the exceptions inside it (arguments, ``reason``, causes), outermost first."""
    seen: set[int] = set()
    todo = [err]
    while todo:
        exc = todo.pop(0)
        if exc is None or id(exc) in seen:
            continue
        seen.add(id(exc))
        yield exc
        todo.extend(a for a in exc.args if isinstance(a, BaseException))
        todo.extend(e for e in (getattr(exc, "reason", None), exc.__cause__, exc.__context__)
                    if isinstance(e, BaseException))


def _find(err: BaseException, kinds: tuple[type, ...]) -> BaseException | None:
    return next((e for e in _causes(err) if isinstance(e, kinds)), None)


def _reason(err: BaseException) -> str:
    """The innermost useful reason of a requests/urllib3 error, as a phrase
    without the URL: for example "Connection refused", "the server closed
    the connection in the middle of the response"."""
    for exc in _causes(err):
        if isinstance(exc, (http.client.IncompleteRead, urllib3.exceptions.IncompleteRead)):
            return "the server closed the connection in the middle of the response"
        if isinstance(exc, http.client.RemoteDisconnected):
            return "the server closed the connection without answering"
        if isinstance(exc, OSError) and exc.strerror:
            return exc.strerror
    for exc in _causes(err):
        text = exc.args[0] if exc.args and isinstance(exc.args[0], str) else ""
        if text:
            return re.sub(r"^\w+\(host=.*?\): |^<.*?>: ", "", text)
    return type(err).__name__


def http_error(response: requests.Response) -> StreamError:
    """Make a :class:`StreamError` for an HTTP error RESPONSE.

    The message is the provider's own (see
    :func:`chatpipe.dialects.base.provider_error`), from a JSON body or an
    error event in a server-sent event body; otherwise the HTTP reason
    phrase and what the body was (empty, HTML, text).  The status is not
    repeated in the message: it is the error's ``status``.
    """
    status = response.status_code
    reason = response.reason or ""
    retryable = status in RETRYABLE_STATUSES
    try:
        raw = response.raw.read(ERROR_BODY_LIMIT, decode_content=True) or b""
    except Exception:  # the body is only for the message
        raw = b""
    text = raw.decode("utf-8", "replace").strip()
    message, overloaded = provider_error(_error_payload(text))
    if status not in NEVER_RETRIED:
        retryable = retryable or overloaded
    reason = reason or "error"
    own = bool(message)
    if not message:
        if not text:
            message = f"{reason} (the response had no body)"
        elif text.lstrip().startswith("<"):
            message = f"{reason}: the server answered with an HTML page"
        else:
            # Whole: the output cuts long messages after redacting secrets.
            message = f"{reason}: {text}"
    if status == 404:
        message += not_found_hint(response.url or "", own)
    return StreamError(message, status=status, retryable=retryable,
                       retry_after=retry_after(response.headers, _error_payload(text)))


def not_found_hint(url: str, provider_message: bool = False) -> str:
    """What to add to the message of a 404 from URL: which URL answered it
    (see :func:`safe_url`: no credentials, no query), and, when its path
    has ``//`` or a doubled ``/v1`` (a base URL such as
    ``LITELLM_BASE_URL`` that ends in ``/`` or ``/v1`` joined to a path
    that adds it again), the URL it was likely meant to be.  With
    PROVIDER_MESSAGE (the provider said what is missing, e.g. a model),
    only the likely URL is added, if any: "" when the path looks right."""
    where = safe_url(url)
    path = urlsplit(url).path if where != "?" else ""
    fixed = re.sub(r"/{2,}", "/", path)
    fixed = re.sub(r"(/v\d+(?:beta\d*|alpha\d*)?)(?:\1)+(?=/|$)", r"\1", fixed)
    if provider_message and fixed == path:
        return ""
    hint = f" ({where} answered 404"
    if fixed != path:
        doubled = "//" if "//" in path else "a doubled " + re.search(
            r"(/v\d+(?:beta\d*|alpha\d*)?)\1", path).group(1)
        hint += (f": its path has {doubled}, which a base URL ending in / or /v1 (such as "
                 "LITELLM_BASE_URL) gives when the template adds them again; the URL was "
                 f"likely meant to be {where[:len(where) - len(path)]}{fixed}")
    return hint + ")"


def _error_payload(text: str) -> Any:
    """The JSON payload of an error body: the body itself, or the first
    ``data:`` line of a server-sent event body that holds an error."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        pass
    for line in text.splitlines():
        if line.startswith("data:"):
            try:
                payload = json.loads(line[5:])
            except (ValueError, RecursionError):
                continue
            if provider_error(payload)[0]:
                return payload
    return None


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
              deadline: Deadline | None = None,
              before_read: Callable[[], None] | None = None,
              what: str = "the stream ended early") -> Iterator[bytes]:
    """Yield RESPONSE's body bytes as they arrive (decoded if gzip/deflate).

    Args:
        response: from :func:`send`.
        read_timeout: the idle timeout (seconds) set by :func:`send`; here
            only for the message.
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
        if deadline is not None and deadline.left() <= 0.05:
            raise deadline.error() from None
        raise StreamError(f"{what}: no data from the server for "
                          f"{read_timeout:g} s (read_timeout)", retryable=True) from None
    except (urllib3.exceptions.ProtocolError, urllib3.exceptions.DecodeError,
            urllib3.exceptions.SSLError, OSError) as err:
        if deadline is not None and deadline.left() <= 0.05:
            raise deadline.error() from None
        raise StreamError(f"{what}: {_reason(err)}", retryable=True) from None


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
    sock = _socket(response.raw)
    try:
        if sock is not None:
            sock.settimeout(timeout)
        while response.raw.read1(READ_SIZE, decode_content=True):
            pass
    except Exception:
        pass

