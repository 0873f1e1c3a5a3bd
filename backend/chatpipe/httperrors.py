"""What a failed HTTP request means, in words: the one place that says it.

A connection that failed (:func:`connect_error`), a request that failed
before its response headers arrived (:func:`request_error`), a body that
broke off (:func:`failure_reason`), an HTTP error response
(:func:`http_error`: the provider's own message, the 404 hint, whether and
when to retry).  URLs in messages are shown by :func:`safe_url` and
:func:`host_of`: never a user name, password or query.  Requests are sent
by :mod:`chatpipe.transport`.
"""

from __future__ import annotations

import datetime
import email.utils
import http.client
import ipaddress
import json
import re
import socket
from typing import Any, Iterator, Mapping
from urllib.parse import urlsplit

import requests
import urllib3.exceptions

from chatpipe.dialects.providererrors import provider_error
from chatpipe.errors import NEVER_RETRIED, RETRYABLE_STATUSES, StreamError

#: Bytes of an HTTP error body read at most.
ERROR_BODY_LIMIT = 1 << 20

#: What to do when a port of this machine refuses the connection, when the
#: template does not say (:attr:`chatpipe.templates.Request.refused_hint`).
REFUSED_HINT = ("no server is listening on that port of this machine: start it, "
                "or correct the template's url (or --url)")


def safe_url(url: str) -> str:
    """URL for messages: scheme, host, port and path only, never a user
    name, password, query (which may hold a key) or fragment."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "?"
    return f"{parts.scheme}://{host_of(url)}{parts.path}"


def host_of(url: str) -> str:
    """URL's host and port for messages: never its user name or password."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        return host + (f":{parts.port}" if parts.port else "") or "?"
    except ValueError:
        return "?"


def request_error(err: requests.exceptions.RequestException, url: str, host: str,
                  connect_timeout: float, read_timeout: float,
                  refused_hint: str | None) -> StreamError:
    """The :class:`StreamError` for ERR, a request to URL (HOST, as
    :func:`host_of` shows it) that failed before its response headers
    arrived: a connection that failed (see :func:`connect_error`), no
    headers within READ_TIMEOUT seconds (retryable), an invalid URL."""
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
        return StreamError(f"invalid endpoint URL ({host}): {failure_reason(err)}")
    return StreamError(f"request to {host} failed: {failure_reason(err)}")


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
    (:func:`chatpipe.transport.post`) and model lists (:mod:`chatpipe.models`):

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
    host = host_of(url)
    details = {"kind": "connect", "host": host}
    if isinstance(err, requests.exceptions.ConnectTimeout):
        return StreamError(f"cannot connect to {host}: no answer within {connect_timeout:g} s "
                           "(connect_timeout)", retryable=True, details=details)
    unresolved = _find(err, (socket.gaierror, urllib3.exceptions.NameResolutionError))
    if unresolved is not None:
        return StreamError(f"cannot connect to {host}: the host name does not resolve "
                           f"({failure_reason(unresolved)})")
    refused = _find(err, (ConnectionRefusedError,))
    if (refused is not None and not isinstance(err, requests.exceptions.ProxyError)
            and is_loopback(urlsplit(url).hostname or "")):
        return StreamError(f"cannot connect to {host}: {failure_reason(refused)}",
                           details={**details, "hint": refused_hint or REFUSED_HINT})
    return StreamError(f"cannot connect to {host}: {failure_reason(err)}", retryable=True,
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


def failure_reason(err: BaseException) -> str:
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
    :func:`chatpipe.dialects.providererrors.provider_error`), from a JSON body or an
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
