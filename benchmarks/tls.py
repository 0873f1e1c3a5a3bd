"""HTTPS with latency for the first-token benchmark: a certificate, a TLS
server and a latency-injecting TCP proxy, all on 127.0.0.1.

- :func:`make_certificates` writes a throw-away certificate authority and a
  certificate for ``127.0.0.1`` and ``localhost`` signed by it (with the
  ``cryptography`` package when it is installed, else the ``openssl``
  command).  Clients trust the CA file: ``REQUESTS_CA_BUNDLE`` for chatpipe,
  ``--cacert`` for curl.
- :class:`TLSBenchServer` is :class:`benchmarks.server.BenchServer` (the
  same handler, the same answers) over TLS; the handshake runs in the
  connection's own thread.
- :class:`LatencyProxy` forwards TCP connections to a port, holding the
  data of each direction ``delay`` seconds (25 ms: a 50 ms round trip),
  without limiting throughput and in order.  A real client waits a round
  trip for the TCP handshake (SYN, SYN-ACK) before it can send anything;
  on 127.0.0.1 that handshake is instant, so the proxy holds the first
  bytes a client sends on a new connection one round trip longer (see
  ``tcp_handshake``).  It counts the connections whose client has finished
  its TLS handshake (:meth:`LatencyProxy.wait_handshakes`), so that a
  benchmark knows when a pre-connection is ready.

Standard library only, but for ``cryptography`` (optional).
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import shutil
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

from benchmarks.server import _Handler, _Server


def make_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """Write ca.pem, server.pem and server.key into FOLDER; return their paths.

    The server certificate is for IP 127.0.0.1 and DNS localhost, valid for a
    day, signed by the CA in ca.pem.
    """
    ca, cert, key = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    try:
        _with_cryptography(ca, cert, key)
    except ImportError:
        if not shutil.which("openssl"):
            raise RuntimeError("neither the cryptography package nor openssl is installed")
        _with_openssl(folder, ca, cert, key)
    return ca, cert, key


def _with_cryptography(ca_path: Path, cert_path: Path, key_path: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "chatpipe bench CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))


def _with_openssl(folder: Path, ca: Path, cert: Path, key: Path) -> None:
    ca_key = folder / "ca.key"
    csr = folder / "server.csr"
    ext = folder / "server.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                   "basicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\n")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(ca_key), "-out", str(ca), "-days", "1", "-subj", "/CN=chatpipe bench CA",
        "-addext", "basicConstraints=critical,CA:TRUE,pathlen:0",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature")
    run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(key), "-out", str(csr), "-subj", "/CN=127.0.0.1")
    run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
        "-CAcreateserial", "-out", str(cert), "-days", "1", "-extfile", str(ext))


class _TLSServer(_Server):
    """The benchmark server over TLS; each handshake in its connection's thread."""

    def __init__(self, address, handler, context: ssl.SSLContext) -> None:
        self.context = context
        super().__init__(address, handler)

    def get_request(self):
        sock, address = super().get_request()
        return self.context.wrap_socket(sock, server_side=True,
                                        do_handshake_on_connect=False), address

    def finish_request(self, request, client_address):
        try:
            request.settimeout(30)
            request.do_handshake()
            request.settimeout(None)
        except (OSError, ssl.SSLError):
            return
        super().finish_request(request, client_address)


class TLSBenchServer:
    """benchmarks/server.py's answers over HTTPS, in a background thread.

    ``port`` is its port on 127.0.0.1 (certificate from :func:`make_certificates`).
    Like most servers, it sends TLS 1.3 session tickets after each handshake
    (two, OpenSSL's default); SESSION_TICKETS false sends none.
    """

    def __init__(self, cert: Path, key: Path, session_tickets: bool = True) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        if not session_tickets:
            context.num_tickets = 0
        self._httpd = _TLSServer(("127.0.0.1", 0), _Handler, context)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> "TLSBenchServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


class LatencyProxy:
    """A TCP proxy on 127.0.0.1 to ``upstream`` (a port on 127.0.0.1) that
    delays each direction's data by DELAY seconds.

    With TCP_HANDSHAKE (the default), the first bytes a client sends on a
    connection wait one more round trip (2 x DELAY), as after a real TCP
    handshake.  ``url_base`` is ``https://127.0.0.1:PORT``.
    """

    def __init__(self, upstream: int, delay: float = 0.025, tcp_handshake: bool = True) -> None:
        self.upstream = upstream
        self.delay = delay
        self.tcp_handshake = tcp_handshake
        self.connections = 0
        self.handshakes = 0
        self._cond = threading.Condition()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task] = set()
        self._thread = threading.Thread(target=self._run, daemon=True, name="latency-proxy")
        self.port = 0

    @property
    def url_base(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def __enter__(self) -> "LatencyProxy":
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the latency proxy did not start")
        return self

    def __exit__(self, *exc) -> None:
        async def stop():
            if self._server is not None:
                self._server.close()
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def counts(self) -> tuple[int, int]:
        """(connections accepted, client TLS handshakes finished) so far."""
        with self._cond:
            return self.connections, self.handshakes

    def wait_handshakes(self, count: int, timeout: float) -> bool:
        """Wait until COUNT client handshakes have finished in all; True if so."""
        end = time.monotonic() + timeout
        with self._cond:
            while self.handshakes < count:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def start():
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
            self.port = self._server.sockets[0].getsockname()[1]

        self._loop.run_until_complete(start())
        self._ready.set()
        self._loop.run_forever()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        with self._cond:
            self.connections += 1
        state = {"up": 0, "down": 0, "handshake": False}
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", self.upstream)
        except OSError:
            client_w.close()
            self._tasks.discard(task)
            return
        for w in (client_w, server_w):
            sock = w.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            await asyncio.gather(self._pipe(client_r, server_w, state, "up"),
                                 self._pipe(server_r, client_w, state, "down"),
                                 return_exceptions=True)
        except (asyncio.CancelledError, OSError):
            pass
        finally:
            for w in (client_w, server_w):
                w.close()
            self._tasks.discard(task)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    state: dict, direction: str) -> None:
        """Copy READER to WRITER, each piece DELAY seconds after it was read."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        async def read():
            first = True
            while True:
                try:
                    data = await reader.read(65536)
                except OSError:
                    data = b""
                extra = 0.0
                if first and direction == "up" and self.tcp_handshake:
                    extra = 2 * self.delay
                first = False
                await queue.put((loop.time() + self.delay + extra, data))
                if not data:
                    return
                state[direction] += 1
                # The client's second flight (after the server's first one)
                # finishes its TLS handshake: its connect has returned.
                if (direction == "up" and state["up"] >= 2 and state["down"] >= 1
                        and not state["handshake"]):
                    state["handshake"] = True
                    with self._cond:
                        self.handshakes += 1
                        self._cond.notify_all()

        async def write():
            while True:
                at, data = await queue.get()
                wait = at - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()

        reading = asyncio.ensure_future(read())
        try:
            await write()
        finally:
            reading.cancel()
            await asyncio.gather(reading, return_exceptions=True)
