"""Connections: sessions whose requests can be cancelled at any point, and
connections opened ahead of the first request.

requests and urllib3 give no handle on the connection a request waits on
before its response headers arrive.  :func:`new_session` mounts an adapter
whose urllib3 connections tell the sending thread's :class:`Control` which
connection carries the request (see :func:`controlled_by`), so that
:meth:`Control.cancel` can shut it in every state.  :func:`preconnect` opens
the endpoint's connection (TCP and TLS) before the first request.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from typing import Any

import requests
import requests.adapters
import urllib3
import urllib3.connection
import urllib3.util

from chatpipe.errors import Cancelled


_sending = threading.local()


@contextlib.contextmanager
def controlled_by(control: "Control | None"):
    """Within the block, requests this thread sends can be cancelled by
    CONTROL even before their response headers arrive (sessions from
    :func:`new_session` only)."""
    previous = getattr(_sending, "control", None)
    _sending.control = control
    try:
        yield
    finally:
        _sending.control = previous


def current_control() -> "Control | None":
    """The control of the requests this thread sends, set by
    :func:`controlled_by`, or None."""
    return getattr(_sending, "control", None)


class _Reachable:
    """Mixin for urllib3 connections: tells the sending thread's
    :class:`Control` which connection carries its request, and keeps an
    idle TLS connection that only received session tickets."""

    def request(self, *args, **kwargs):  # urllib3.connection.HTTPConnection.request
        control = getattr(_sending, "control", None)
        if control is not None:
            control.sending(self)
        return super().request(*args, **kwargs)

    @property
    def is_connected(self) -> bool:
        """Whether the connection is open and has nothing unread.

        urllib3 takes a readable idle socket for a dropped connection.  A
        TLS 1.3 server sends session tickets after the handshake, which
        make the socket readable with no data for the application, so a
        connection opened ahead (:func:`preconnect`) would be thrown away.
        A non-blocking TLS read consumes such records: only an end of file
        or real data means the connection is done with.
        """
        sock = self.sock
        if sock is None:
            return False
        if not urllib3.util.wait_for_read(sock, timeout=0.0):
            return True
        if not isinstance(sock, ssl.SSLSocket):
            return False
        timeout = sock.gettimeout()
        try:
            sock.settimeout(0.0)
            sock.recv(1)               # data or end of file: not reusable
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return not urllib3.util.wait_for_read(sock, timeout=0.0)
        except OSError:
            pass
        finally:
            try:
                sock.settimeout(timeout)
            except OSError:
                pass
        return False


class _HTTPConnection(_Reachable, urllib3.connection.HTTPConnection):
    pass


class _HTTPSConnection(_Reachable, urllib3.connection.HTTPSConnection):
    pass


class _HTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


_POOLS = {"http": _HTTPPool, "https": _HTTPSPool}


class _Adapter(requests.adapters.HTTPAdapter):
    """requests' adapter with connections a :class:`Control` can shut."""

    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _POOLS

    def proxy_manager_for(self, proxy, **kwargs):
        manager = super().proxy_manager_for(proxy, **kwargs)
        if hasattr(manager, "pool_classes_by_scheme"):
            manager.pool_classes_by_scheme = _POOLS
        return manager


def new_session() -> requests.Session:
    """A ``requests.Session`` (proxies and certificates from the
    environment, connection reuse) whose requests a :class:`Control` can
    cancel at any point; see :func:`controlled_by`."""
    session = requests.Session()
    session.mount("http://", _Adapter())
    session.mount("https://", _Adapter())
    return session


class Control:
    """Lets another thread cancel a running :func:`run`.

    :meth:`cancel` wakes a retry wait at once and shuts the socket of the
    response being read, so the reading thread stops within milliseconds.
    """

    def __init__(self) -> None:
        self.cancelled = threading.Event()
        self._lock = threading.Lock()
        self._response: requests.Response | None = None
        self._connection: Any = None

    def sending(self, connection: Any) -> None:
        """Record CONNECTION (a urllib3 connection) as the one a request of
        this stream is being sent on, so that :meth:`cancel` can shut it
        while the response headers are awaited.

        Raises:
            Cancelled: :meth:`cancel` was already called.
        """
        with self._lock:
            self._connection = connection
            if self.cancelled.is_set():
                raise Cancelled()

    def attach(self, response: requests.Response | None) -> None:
        """Record RESPONSE as the one being read (None when done with it).

        Raises:
            Cancelled: :meth:`cancel` was already called.
        """
        with self._lock:
            self._response = response
            if response is None:
                # Done with its connection: back in the pool, it may carry
                # another stream's request, which a cancel must not shut.
                self._connection = None
            if self.cancelled.is_set() and response is not None:
                raise Cancelled()

    def cancel(self) -> None:
        """Cancel the stream: wake its waits and shut its socket, whether
        the response is being read or its headers are still awaited."""
        with self._lock:
            self.cancelled.set()
            response, connection = self._response, self._connection
        sock = socket_of(response.raw) if response is not None else None
        sock = sock or getattr(connection, "sock", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def preconnect(session: requests.Session, url: str, timeout: float) -> bool:
    """Open a connection (TCP, and TLS for https) to URL's endpoint in
    SESSION's pool, so that the next request to it skips the handshakes.

    Proxies and certificates are those a request would use, and the request
    is prepared as a real one is (``Session.prepare_request``: the session's
    headers, ``.netrc``), though never sent, so that the first real request
    finds that work done too (the first ``prepare_request`` of a process
    imports ``netrc``: ~2 ms).  Returns True
    if a new connection was opened, False if one was already there or it
    could not be done (any error is swallowed: the next request reports it).
    urllib3 has no public call for this; the pool's ``_get_conn`` and
    ``_put_conn`` are used, and anything unexpected just skips it.
    """
    try:
        settings = session.merge_environment_settings(url, {}, None, None, None)
        adapter = session.get_adapter(url)
        prepared = session.prepare_request(requests.Request("POST", url))
        pool = adapter.get_connection_with_tls_context(prepared, settings["verify"],
                                                       settings["proxies"], settings["cert"])
        conn = pool._get_conn(timeout=timeout)
    except Exception:
        return False
    try:
        if getattr(conn, "is_connected", False):
            return False
        conn.timeout = timeout
        conn.connect()
        return True
    except Exception:
        conn.close()
        return False
    finally:
        pool._put_conn(conn)


def socket_of(raw) -> Any:
    """The socket under a urllib3 response, to shorten its timeout, or None."""
    connection = getattr(raw, "connection", None)
    return getattr(connection, "sock", None)
