"""First token over TLS with latency: chatpipe against ``curl -N``.

An HTTPS server on 127.0.0.1 (benchmarks/tls.py, a certificate made for
the run) behind a proxy that delays each direction's data by 25 ms (a
50 ms round trip; the first bytes of a connection wait one round trip more,
as after a TCP handshake).  Time to the first delta of a 5-delta answer:

- ``curl -N`` (a new process and connection each time: TCP and TLS
  handshakes): from spawn to the first ``data:`` line with content;
- ``chatpipe send``: from spawn to the first ``delta`` line;
- ``chatpipe serve`` cold: from spawn, the request written at once, to its
  first ``delta`` line; warm: a second request on that process (its
  connection reused), from writing the request line;
- ``chatpipe serve`` pre-connected: a new process is sent a ``preconnect``
  line, and once the proxy has seen its TLS handshake end (and 50 ms more),
  the first request is timed from writing its line.

The issue's target: the pre-connected first request and the warm ones at
least one round trip (50 ms) sooner than curl (medians).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.tls import LatencyProxy, TLSBenchServer, make_certificates

ROUND_TRIP = 0.050


class LineReader:
    """The stdout lines of PROC, each with the monotonic time it was read."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.queue: queue.Queue = queue.Queue()
        self.proc = proc
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.queue.put((time.monotonic(), line))
        self.queue.put((time.monotonic(), None))

    def wait_for(self, predicate, timeout: float = 30) -> float:
        """The time the first line PREDICATE accepts was read."""
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            if left <= 0:
                raise RuntimeError("timed out waiting for a line")
            try:
                t, line = self.queue.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise RuntimeError(f"{self.proc.args[:4]} ended early")
            if predicate(line):
                return t


def _stop(proc: subprocess.Popen) -> None:
    if proc.stdin:
        try:
            proc.stdin.close()
        except OSError:
            pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def _content_line(line: bytes) -> bool:
    return line.startswith(b"data:") and b'"content":"' in line and b'"content":""' not in line


def _delta_of(rid: str | None):
    prefix = None if rid is None else f'{{"id":"{rid}",'.encode()
    return lambda line: b'"type":"delta"' in line and (prefix is None or line.startswith(prefix))


def _request_line(rid: str, url: str, **extra) -> bytes:
    return (json.dumps({"id": rid, "template": "openai", "url": url,
                        "messages": [{"role": "user", "content": "hi"}], **extra}) + "\n").encode()


def run(py: str, env: dict, root: Path, repeats: int) -> dict | None:
    """Measure; return {"curl": [s...], "send": [...], "cold": [...], "warm": [...],
    "preconnected": [...], "connections": {...}} or None (said on stderr) if
    it cannot run."""
    import sys

    curl = shutil.which("curl")
    with tempfile.TemporaryDirectory(prefix="chatpipe-tls-") as tmp:
        try:
            ca, cert, key = make_certificates(Path(tmp))
        except (RuntimeError, subprocess.SubprocessError) as err:
            print(f"TLS first-token benchmark skipped: no certificate ({err})", file=sys.stderr)
            return None
        env = {k: v for k, v in env.items()
               if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
        env.update(REQUESTS_CA_BUNDLE=str(ca), NO_PROXY="127.0.0.1,localhost",
                   no_proxy="127.0.0.1,localhost")
        with contextlib.ExitStack() as stack:
            server = stack.enter_context(TLSBenchServer(cert, key))
            proxy = stack.enter_context(LatencyProxy(server.port))
            plain = stack.enter_context(TLSBenchServer(cert, key, session_tickets=False))
            plain_proxy = stack.enter_context(LatencyProxy(plain.port))
            url = f"{proxy.url_base}/v1/chat/completions?n=5"
            result: dict = {"curl": [], "send": [], "cold": [], "warm": [], "preconnected": [],
                            "preconnected_no_tickets": [],
                            "connections": {"warm": 0, "preconnected": 0,
                                            "preconnected_no_tickets": 0}}

            def spawn(cmd: list[str], stdin=subprocess.DEVNULL) -> tuple[float, subprocess.Popen]:
                t0 = time.monotonic()
                proc = subprocess.Popen(cmd, stdin=stdin, stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL, env=env, cwd=root)
                return t0, proc

            def preconnected(proxy: LatencyProxy, key: str) -> None:
                url = f"{proxy.url_base}/v1/chat/completions?n=5"
                _, proc = spawn([py, "-m", "chatpipe", "serve"], stdin=subprocess.PIPE)
                try:
                    lines = LineReader(proc)
                    lines.wait_for(lambda line: b'"type":"ready"' in line)
                    handshakes = proxy.counts()[1]
                    proc.stdin.write(_request_line("p", url, preconnect=True))
                    proc.stdin.flush()
                    if not proxy.wait_handshakes(handshakes + 1, 10):
                        raise RuntimeError("the preconnect line opened no TLS connection")
                    time.sleep(0.05)
                    before = proxy.counts()[0]
                    t1 = time.monotonic()
                    proc.stdin.write(_request_line("r", url))
                    proc.stdin.flush()
                    result[key].append(lines.wait_for(_delta_of("r")) - t1)
                    lines.wait_for(lambda line: line.startswith(b'{"id":"r","type":"done"'))
                    result["connections"][key] += proxy.counts()[0] - before
                finally:
                    _stop(proc)

            for i in range(repeats):
                # Interleaved, so that a slow moment of the machine hits all alike.
                if curl:
                    t0, proc = spawn([curl, "-sN", "--cacert", str(ca), "-X", "POST",
                                      "-H", "Content-Type: application/json", "-d", "{}", url])
                    try:
                        result["curl"].append(LineReader(proc).wait_for(_content_line) - t0)
                    finally:
                        _stop(proc)
                t0, proc = spawn([py, "-m", "chatpipe", "send", "openai", "--url", url,
                                  "--output", "ndjson", "-m", "hi"])
                try:
                    result["send"].append(LineReader(proc).wait_for(_delta_of(None)) - t0)
                finally:
                    _stop(proc)

                # serve, cold then warm on the same process
                t0, proc = spawn([py, "-m", "chatpipe", "serve"], stdin=subprocess.PIPE)
                try:
                    lines = LineReader(proc)
                    proc.stdin.write(_request_line("c", url))
                    proc.stdin.flush()
                    result["cold"].append(lines.wait_for(_delta_of("c")) - t0)
                    lines.wait_for(lambda line: line.startswith(b'{"id":"c","type":"done"'))
                    before = proxy.counts()[0]
                    t1 = time.monotonic()
                    proc.stdin.write(_request_line("w", url))
                    proc.stdin.flush()
                    result["warm"].append(lines.wait_for(_delta_of("w")) - t1)
                    lines.wait_for(lambda line: line.startswith(b'{"id":"w","type":"done"'))
                    result["connections"]["warm"] += proxy.counts()[0] - before
                finally:
                    _stop(proc)

                preconnected(proxy, "preconnected")
                preconnected(plain_proxy, "preconnected_no_tickets")
            result["repeats"] = repeats
            return result


KEYS = ("curl", "send", "cold", "preconnected", "warm", "preconnected_no_tickets")

NAMES = {"curl": "`curl -N` (new process and connection)",
         "send": "`chatpipe send` (spawn to first delta)",
         "cold": "`chatpipe serve` cold (spawn + first request)",
         "preconnected": "`chatpipe serve` pre-connected, first request",
         "warm": "`chatpipe serve` warm (second request, connection reused)",
         "preconnected_no_tickets": "(diagnostic) pre-connected, server sending no TLS 1.3 "
                                    "session tickets"}

#: The rows the issue's target is about.
TARGETS = ("preconnected", "warm")


def summary(result: dict) -> dict:
    """Median and min (ms) of each; each row's gain on curl (ms, medians) and
    whether it is at least a round trip."""
    out: dict = {}
    for key in KEYS:
        values = result.get(key) or []
        out[key] = ({"median": statistics.median(values) * 1000, "min": min(values) * 1000}
                    if values else None)
    curl = out["curl"]
    out["target"] = {}
    for key in KEYS[1:]:
        if curl and out[key]:
            gain = curl["median"] - out[key]["median"]
            out["target"][key] = {"gain": gain, "met": gain >= ROUND_TRIP * 1000}
    return out


def report(result: dict) -> list[str]:
    s = summary(result)
    rt = ROUND_TRIP * 1000
    lines = ["### First token over TLS with a 50 ms round trip",
             "",
             "HTTPS on 127.0.0.1 (a certificate made for the run) behind a proxy that holds each "
             "direction's data 25 ms, and a new connection's first bytes one round trip more (its "
             "TCP handshake): a new connection costs three round trips to the first token (TCP, "
             f"TLS 1.3, the request), a reused one one. Time to the first delta of a 5-delta "
             f"answer, {result['repeats']} runs each. Target: every `chatpipe serve` message, the "
             f"first (pre-connected) included, at least one round trip ({rt:.0f} ms) sooner than "
             "`curl -N` (medians).",
             "",
             "| client | median | min | vs curl (median) | target |",
             "|---|---:|---:|---:|---|"]
    for key in KEYS:
        m = s[key]
        if m is None:
            lines.append(f"| {NAMES[key]} | - | - | - | - |")
            continue
        t = s["target"].get(key)
        if t is None:
            vs = "-"
        elif t["gain"] >= 0:
            vs = f"{t['gain']:.0f} ms sooner"
        else:
            vs = f"{-t['gain']:.0f} ms later"
        if key in TARGETS and t:
            verdict = "**met**" if t["met"] else "**not met**"
        else:
            verdict = "-"
        lines.append(f"| {NAMES[key]} | {m['median']:.1f} ms | {m['min']:.1f} ms | {vs} | {verdict} |")
    conns = result["connections"]
    lines += ["",
              "New connections the proxy saw during the timed requests (0: the open connection "
              f"was used): warm {conns['warm']}, pre-connected {conns['preconnected']}, "
              f"pre-connected without session tickets {conns['preconnected_no_tickets']}, "
              f"over {result['repeats']} requests each."]
    if conns["preconnected"] and not conns["preconnected_no_tickets"]:
        lines += ["",
                  "The pre-connected request opened a new connection: the TLS 1.3 session "
                  "tickets the server sends after the handshake (as most servers do) make the "
                  "idle socket readable, and urllib3 takes a readable idle connection for a "
                  "dropped one (`is_connection_dropped`), closes it and connects again. Without "
                  "tickets (the diagnostic row) the pre-opened connection is used."]
    if s["curl"] is None:
        lines.append("curl not found: its row and the target are left out.")
    return lines


def verdicts(result: dict) -> dict:
    """{row: (gain in ms, met)} for the target's rows, when curl ran."""
    s = summary(result)
    return {key: (s["target"][key]["gain"], s["target"][key]["met"])
            for key in TARGETS if key in s["target"]}


if __name__ == "__main__":
    import sys

    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "OPENAI_API_KEY": "bench", "PYTHONDONTWRITEBYTECODE": "1"}
    r = run(sys.executable, env, root, int(sys.argv[1]) if len(sys.argv) > 1 else 5)
    if r:
        print("\n".join(report(r)))
