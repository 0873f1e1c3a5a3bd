"""HTTP transport: the one HTTP client, which sends every request chatpipe makes.

Uses a ``requests.Session`` (proxies from the environment, connection reuse)
with ``stream=True``.  :func:`send` is the one place requests are sent: the
streaming POST (:func:`post`) and the model list's GET (:func:`get`) both go
through it, and so does anything later.  Its response's body is read by
:mod:`chatpipe.reading` (the live bytes, within a :class:`Deadline`);
what a failure means, in words, is said by :mod:`chatpipe.httperrors`.
``Accept-Encoding: identity`` asks the server not to compress; a server
that compresses anyway is decoded by urllib3.

Credentials never leave the template's origin: redirects are not followed by
requests (which re-sends every header but ``Authorization`` to another
host, and turns a POST into a GET on 301/302/303); :func:`send` follows
them only on the same scheme, host and port (a POST's only when they are
307 or 308) and stops with a clear error otherwise.  Sessions, and the
control of their connections (cancel at any point, connect ahead), are in
:mod:`chatpipe.connections`.

A :class:`Deadline` bounds a whole request, whatever the server does: the
connection (its timeout is cut to the time left), the response headers (a
:class:`~chatpipe.reading.Watchdog` shuts the connection when the time is
up, so that headers sent a byte at a time cannot hold it) and the body
(:func:`chatpipe.reading.iter_body` cuts the socket's timeout to the time
left).

Public names for messages: :func:`host_of` and :func:`safe_url` (a URL
without its credentials or query), :func:`origin_of`.
"""

from __future__ import annotations

import contextlib
import json
from typing import Mapping
from urllib.parse import urljoin, urlsplit

import requests

from chatpipe import __version__, connections
from chatpipe.errors import StreamError
from chatpipe.httperrors import failure_reason, host_of, http_error, request_error, safe_url
from chatpipe.reading import Deadline, Watchdog
from chatpipe.templates import Request

__all__ = ["MAX_REDIRECTS", "Deadline", "get", "host_of", "origin_of", "post", "safe_url",
           "send"]

#: Redirects followed at most (on the same origin only).
MAX_REDIRECTS = 5


def origin_of(url: str) -> tuple[str, str | None, int | None]:
    """URL's origin: its scheme, host and port (the scheme's default when
    it names none), lower case; what a redirect must keep to be followed."""
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme.lower())
    return parts.scheme.lower(), (parts.hostname or "").lower(), port


def post(session: requests.Session, request: Request,
         deadline: Deadline | None = None) -> requests.Response:
    """Send REQUEST and return the response once its headers have arrived.

    The body is not read: iterate :func:`chatpipe.reading.iter_body` for it, and close the
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
    its headers have arrived (read the body with :func:`chatpipe.reading.read_body`).
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
        StreamError: no connection (see :func:`chatpipe.httperrors.connect_error`: retryable
            unless the host name does not resolve or this machine refused
            it), a timeout (retryable), the deadline passed (not
            retryable), a redirect not followed, an invalid URL, or an
            HTTP status >= 400 (message from the error body, see
            :func:`chatpipe.httperrors.http_error`).
    """
    followed = _FOLLOWED.get(method, frozenset())
    for _ in range(MAX_REDIRECTS + 1):
        response = _send(session, method, url, data, headers, params, timeout, deadline,
                         refused_hint)
        if not response.is_redirect:
            break
        response.close()
        target = urljoin(url, response.headers["location"])
        if response.status_code not in followed or origin_of(target) != origin_of(url):
            kinds = "307 and 308 redirects" if method == "POST" else "redirects"
            raise StreamError(
                f"the endpoint redirected (HTTP {response.status_code}) to {host_of(target)}"
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
    host = host_of(url)
    connect_timeout, read_timeout = timeout
    watchdog = None
    if deadline is not None:
        left = deadline.check()
        timeout = (min(connect_timeout, left), min(read_timeout, left))
        watchdog = Watchdog(deadline, connections.current_control())
    try:
        with connections.controlled_by(watchdog) if watchdog else contextlib.nullcontext():
            with watchdog if watchdog else contextlib.nullcontext():
                return session.request(method, url, data=data, params=params,
                                       headers=dict(headers), stream=True,
                                       allow_redirects=False, timeout=timeout)
    except requests.exceptions.RequestException as err:
        if watchdog is not None and (watchdog.expired or deadline.left() <= 0.05):
            raise deadline.error() from None
        raise request_error(err, url, host, connect_timeout, read_timeout,
                             refused_hint) from None
    except ValueError as err:
        raise StreamError(f"invalid endpoint URL ({host}): {failure_reason(err)}") from None
