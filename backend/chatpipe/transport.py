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
"""

from __future__ import annotations

import datetime
import email.utils
import http.client
import ipaddress
import json
import re
import socket
import time
from typing import Any, Callable, Iterator, Mapping
from urllib.parse import urljoin, urlsplit

import requests
import requests.adapters
import urllib3
import urllib3.connection
import urllib3.exceptions
import urllib3.util

from chatpipe import __version__
from chatpipe.dialects.base import provider_error
from chatpipe.connections import _socket
from chatpipe.errors import StreamError
from chatpipe.templates import Request

#: HTTP statuses worth a retry (rate limits, overload, gateway trouble).
RETRYABLE_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504, 529})

#: HTTP statuses never retried, whatever the body says.
NEVER_RETRIED = frozenset({400, 401, 403, 404})

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


def post(session: requests.Session, request: Request) -> requests.Response:
    """Send REQUEST and return the response once its headers have arrived.

    The body is not read: iterate :func:`iter_body` for it, and close the
    response when done.  A 307 or 308 redirect to the same origin (scheme,
    host, port) is followed with the same method, body and headers; any
    other redirect is an error, so that the API key never goes to another
    host and the request is never changed into a GET.

    Raises:
        StreamError: no connection (see :func:`connect_error`: retryable
            unless the host name does not resolve or this machine refused
            it), a timeout (retryable), a redirect not followed, an invalid
            URL, or an HTTP status >= 400 (message from the error body, see
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
    url = request.url
    for _ in range(MAX_REDIRECTS + 1):
        response = _send(session, request, url, data, headers)
        if not response.is_redirect:
            break
        response.close()
        target = urljoin(url, response.headers["location"])
        if response.status_code not in (307, 308) or _origin(target) != _origin(url):
            raise StreamError(
                f"the endpoint redirected (HTTP {response.status_code}) to {_host(target)}"
                f"{urlsplit(target).path}: chatpipe follows only 307 and 308 redirects "
                "on the same host, so that the API key stays with it; set the template's "
                "url to the new address", status=response.status_code)
        url = target
    else:
        raise StreamError(f"the endpoint redirected more than {MAX_REDIRECTS} times")
    if response.status_code >= 400:
        try:
            raise http_error(response)
        finally:
            response.close()
    return response


def _send(session: requests.Session, request: Request, url: str, data: bytes,
          headers: dict[str, str]) -> requests.Response:
    """One POST of :func:`post`, redirects not followed; errors mapped."""
    host = _host(url)
    try:
        return session.post(url, data=data, headers=headers, stream=True,
                            allow_redirects=False,
                            timeout=(request.connect_timeout, request.read_timeout))
    except requests.exceptions.ConnectionError as err:
        raise connect_error(err, url, request.connect_timeout, request.refused_hint) from None
    except requests.exceptions.ReadTimeout:
        raise StreamError(f"{host} sent no response headers within "
                          f"{request.read_timeout:g} s (read_timeout)", retryable=True) from None
    except requests.exceptions.MissingSchema:
        raise StreamError("invalid endpoint URL: it must start with http:// or https://, "
                          f"e.g. https://{url}") from None
    except requests.exceptions.InvalidSchema:
        raise StreamError(f"invalid endpoint URL: the scheme {urlsplit(url).scheme}:// is not "
                          "supported; use http:// or https://") from None
    except (requests.exceptions.InvalidURL, ValueError) as err:
        raise StreamError(f"invalid endpoint URL ({host}): {_reason(err)}") from None
    except requests.exceptions.RequestException as err:
        raise StreamError(f"request to {host} failed: {_reason(err)}") from None


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
    if not message:
        if not text:
            message = f"{reason} (the response had no body)"
        elif text.lstrip().startswith("<"):
            message = f"{reason}: the server answered with an HTML page"
        else:
            # Whole: the output cuts long messages after redacting secrets.
            message = f"{reason}: {text}"
    return StreamError(message, status=status, retryable=retryable,
                       retry_after=retry_after(response.headers, _error_payload(text)))


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
        raise StreamError(f"the stream ended early: {_reason(err)}",
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
