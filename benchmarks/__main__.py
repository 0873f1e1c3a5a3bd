"""Run the chatpipe benchmarks and print a table: ``python -m benchmarks``.

Measures, against a local SSE server on 127.0.0.1 (benchmarks/server.py):

1. Throughput: wall time and peak RSS for an N-delta answer to reach a
   reader as protocol lines (N = 1,000, 20,000, 100,000): ``chatpipe send``
   (a new process), ``chatpipe serve`` (warm: request written to its stdin
   until its ``done`` line), ``curl -N`` to /dev/null (the floor: no
   parsing), and the ``openai`` SDK's streaming iterator printing the same
   lines (process wall time, and its stream time without start-up).
2. Latency: request to first ``delta`` line (serve warm; send from spawn),
   and the per-event delay from the server's write to the line on stdout,
   events paced 5 ms apart, in three framings (chunked, close, gzip); and
   what a 5,000-line file as context adds to the warm first delta.
3. Memory: ``chatpipe serve``'s peak RSS with 10 streams at once.
4. Emacs (when ``emacs`` is on PATH): ``benchmarks/emacs-bench.el`` in
   ``emacs --batch`` through the real package.
5. First token over TLS with a 50 ms round trip (benchmarks/first_token.py):
   ``curl -N``, ``chatpipe send``, and ``chatpipe serve`` cold, warm and
   pre-connected, through a latency-injecting proxy to a local HTTPS server.
6. Emacs beside gptel (when GPTEL_DIR points at a gptel checkout):
   N deltas into a buffer, the same wait loop for both
   (benchmarks/emacs-compare.el).
7. Emacs' CPU and redisplays while a paced Markdown answer streams into a
   visible ``emacs -nw`` in tmux (benchmarks/emacs-tty.el), chatpipe and,
   with GPTEL_DIR, gptel.

Results go to stdout and to benchmarks/results.md.  Options: ``--quick``
(fewer sizes and repeats), ``--no-write``, ``--only SECTION ...`` (run
those sections and print them; results.md is not written).  Each section
needing a tool that is missing (curl, emacs, tmux, gptel) says so and is
left out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from benchmarks import editors, first_token
from benchmarks.server import BenchServer

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
ENV = {**os.environ, "OPENAI_API_KEY": "bench", "PYTHONDONTWRITEBYTECODE": "1"}
CHATPIPE = str(ROOT / ".venv" / "bin" / "chatpipe")
if not os.path.exists(CHATPIPE):
    CHATPIPE = str(Path(PY).parent / "chatpipe")

SECTIONS = ("throughput", "latency", "context", "memory", "profile", "emacs", "tls", "gptel",
            "tty")


def peak_rss(pid: int) -> float:
    """Peak resident memory (VmHWM) of process PID in MB, or 0 once it is gone.

    Read from /proc: unlike ``ru_maxrss``, it does not count the memory of
    the forking parent before ``exec``.
    """
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return 0.0


def run_process(cmd: list[str]) -> dict:
    """Run CMD, read its stdout to the end; wall seconds, peak RSS (MB), lines,
    and how many times "tok " it wrote."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, env=ENV, cwd=ROOT)
    rss = [0.0]
    done = threading.Event()

    def watch():
        while not done.wait(0.002):
            rss[0] = max(rss[0], peak_rss(proc.pid))

    threading.Thread(target=watch, daemon=True).start()
    lines = 0
    chunks = []
    fd = proc.stdout.fileno()
    while data := os.read(fd, 1 << 16):
        lines += data.count(b"\n")
        chunks.append(data)
    rss[0] = max(rss[0], peak_rss(proc.pid))
    err = proc.stderr.read()
    proc.wait()
    wall = time.monotonic() - start
    done.set()
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:4]} failed: {err.decode()[-500:]}")
    return {"wall": wall, "rss": rss[0], "lines": lines, "stderr": err.decode(),
            "toks": b"".join(chunks).count(b"tok ")}


class _Collector:
    """The lines of one request: (time read in ns, raw line), and when done."""

    def __init__(self) -> None:
        self.lines: list[tuple[int, bytes]] = []
        self.done = threading.Event()


class Serve:
    """A warm ``chatpipe serve``.

    Its stdout is read in big blocks by a thread that only splits lines,
    timestamps them and files them by request id (no JSON parsing), so the
    reader costs the machine as little as possible.
    """

    def __init__(self) -> None:
        self.proc = subprocess.Popen([PY, "-m", "chatpipe", "serve"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=ENV, cwd=ROOT)
        self.collectors: dict[bytes, _Collector] = {}
        threading.Thread(target=self._read, daemon=True).start()
        self.n = 0

    def _read(self) -> None:
        fd = self.proc.stdout.fileno()
        rest = b""
        while data := os.read(fd, 1 << 16):
            now = time.monotonic_ns()
            lines = (rest + data).split(b"\n")
            rest = lines.pop()
            for line in lines:
                # Lines start with {"id":"rN",...
                rid = line[7:line.index(b'"', 7)]
                collector = self.collectors.get(rid)
                if collector is None:
                    continue
                collector.lines.append((now, line))
                if b'"type":"done"' in line or b'"type":"error"' in line:
                    collector.done.set()

    def request(self, url: str, extra: dict | None = None) -> tuple[_Collector, int]:
        """Send a request for URL, with the request fields EXTRA; return
        (its collector, write time in ns)."""
        self.n += 1
        rid = f"r{self.n}"
        collector = self.collectors[rid.encode()] = _Collector()
        line = json.dumps({"id": rid, "template": "openai", "url": url,
                           "messages": [{"role": "user", "content": "hi"}],
                           **(extra or {})}) + "\n"
        t = time.monotonic_ns()
        self.proc.stdin.write(line.encode())
        self.proc.stdin.flush()
        return collector, t

    def run(self, url: str, extra: dict | None = None) -> dict:
        """One request (with the request fields EXTRA) to the end: seconds
        to first delta and to done, lines."""
        collector, t0 = self.request(url, extra)
        if not collector.done.wait(300):
            raise RuntimeError("no answer from chatpipe serve")
        t_end, last = collector.lines[-1]
        if b'"type":"error"' in last:
            raise RuntimeError(last.decode())
        first = next((t for t, line in collector.lines if b'"type":"delta"' in line), None)
        return {"wall": (t_end - t0) / 1e9, "first": first and (first - t0) / 1e9,
                "lines": len(collector.lines)}

    def rss(self) -> tuple[float, float]:
        """(current, peak) resident memory in MB."""
        fields = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            fields[key] = value
        return (int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def throughput(server: BenchServer, serve: Serve, sizes: list[int], sdk: bool) -> list[dict]:
    rows = []
    curl = shutil.which("curl")
    for n in sizes:
        url = f"{server.url}/v1/chat/completions?n={n}"
        row: dict = {"n": n}
        send = run_process([PY, "-m", "chatpipe", "send", "openai", "--url", url,
                            "--output", "ndjson", "-m", "hi"])
        # The deltas of one network read come as one line: count the text.
        assert send["toks"] == n, (send["toks"], send["lines"])
        row["send"] = send
        serve.run(url)  # warm this size's path once
        row["serve"] = min((serve.run(url) for _ in range(3)), key=lambda r: r["wall"])
        if curl:
            row["curl"] = min((run_process([curl, "-sN", "-X", "POST", "-d", "{}", "-H",
                                            "Content-Type: application/json", url,
                                            "-o", "/dev/null"]) for _ in range(3)),
                              key=lambda r: r["wall"])
        if sdk:
            r = run_process([PY, "-m", "benchmarks.sdk_client", f"{server.url}/v1", str(n)])
            r["stream"] = float(r["stderr"].strip().splitlines()[-1])
            row["sdk"] = r
        rows.append(row)
    return rows


def first_delta(server: BenchServer, serve: Serve, repeats: int) -> dict:
    url = f"{server.url}/v1/chat/completions?n=5"
    warm = [serve.run(url)["first"] for _ in range(repeats)]
    spawn = []
    for _ in range(max(3, repeats // 4)):
        start = time.monotonic()
        proc = subprocess.Popen([PY, "-m", "chatpipe", "send", "openai", "--url", url,
                                 "--output", "ndjson", "-m", "hi"], stdout=subprocess.PIPE,
                                stdin=subprocess.DEVNULL, env=ENV, cwd=ROOT)
        for line in proc.stdout:
            if b'"delta"' in line:
                spawn.append(time.monotonic() - start)
                break
        proc.stdout.read()
        proc.wait()
    return {"serve": warm, "send": spawn}


def context_cost(server: BenchServer, serve: Serve, repeats: int) -> dict:
    """Warm ``serve``'s first delta (seconds) without and with a 5,000-line
    Python file as context (read, checked, rendered and put in the body on
    every request), alternating; the difference is what context costs
    from the request line to the request on the wire."""
    import tempfile

    url = f"{server.url}/v1/chat/completions?n=5"
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "big.py"
        path.write_text("".join(f"def f{i}(x):\n    return x * {i}  # line {i}\n"
                                for i in range(2500)))
        extra = {"context": [{"type": "file", "path": str(path)}]}
        serve.run(url, extra)  # the context modules' first import
        plain, with_context = [], []
        for _ in range(repeats):
            plain.append(serve.run(url)["first"])
            with_context.append(serve.run(url, extra)["first"])
        return {"plain": plain, "context": with_context, "lines": 5000,
                "bytes": path.stat().st_size}


def _context_report(c: dict) -> list[str]:
    plain, ctx = statistics.median(c["plain"]) * 1000, statistics.median(c["context"]) * 1000
    verdict = "met" if ctx - plain <= 20 else "NOT met"
    return ["", "### Context: a 5,000-line file on every request (`chatpipe serve`, warm)", "",
            f"- First delta without context: median {plain:.2f} ms; with a {c['lines']:,}-line "
            f"file ({c['bytes'] / 1024:.0f} KiB) as context: median {ctx:.2f} ms "
            f"({len(c['plain'])} requests each, alternating).",
            f"- Target (context adds at most 20 ms): **{verdict}** ({ctx - plain:+.2f} ms)."]


def per_event_delay(server: BenchServer, serve: Serve, events: int) -> dict:
    result = {}
    for framing in ("chunked", "close", "gzip"):
        url = f"{server.url}/v1/chat/completions?n={events}&pace=5&framing={framing}"
        collector, _ = serve.request(url)
        collector.done.wait(300)
        delays = []
        for t, line in collector.lines:
            event = json.loads(line)
            if event["type"] == "delta" and event["content"].isdigit():
                delays.append((t - int(event["content"])) / 1e6)
        delays.sort()
        result[framing] = {"p50": percentile(delays, 50), "p99": percentile(delays, 99),
                           "max": delays[-1], "count": len(delays)}
    return result


def memory_with_streams(server: BenchServer, streams: int) -> dict:
    serve = Serve()
    try:
        serve.run(f"{server.url}/v1/chat/completions?n=5")
        url = f"{server.url}/v1/chat/completions?n=300&pace=5"
        pending = [serve.request(url)[0] for _ in range(streams)]
        time.sleep(0.8)
        during = serve.rss()[0]
        for collector in pending:
            collector.done.wait(300)
        return {"streams": streams, "rss": during, "peak": serve.rss()[1]}
    finally:
        serve.close()


def profile_hot_path(server: BenchServer, n: int = 20000) -> list[tuple[str, float, float]]:
    """cProfile of one N-delta stream decoded in-process to /dev/null.

    Returns the top functions as (name, own seconds, share of the total).
    """
    import cProfile
    import pstats

    from chatpipe import stream
    from chatpipe.protocol import EventLines, LineWriter
    from chatpipe.templates import Request

    request = Request(url=f"{server.url}/v1/chat/completions?n={n}", headers={},
                      body={"model": "bench"}, api="openai-chat")
    with open(os.devnull, "wb", buffering=0) as devnull:
        stream.run(request, EventLines(LineWriter(devnull)))
        sink = EventLines(LineWriter(devnull))
        profile = cProfile.Profile()
        profile.enable()
        stream.run(request, sink)
        profile.disable()
    stats = pstats.Stats(profile)
    total = sum(row[2] for row in stats.stats.values())
    rows = sorted(((f"{Path(file).parent.name}/{Path(file).name}:{line}({name})"
                    if file != "~" else name, row[2])
                   for (file, line, name), row in stats.stats.items()),
                  key=lambda r: -r[1])
    return [(name, own, own / total) for name, own in rows[:10]]


def emacs_bench(sizes: list[int], server: BenchServer) -> dict | None:
    emacs = shutil.which("emacs")
    script = ROOT / "benchmarks" / "emacs-bench.el"
    if not emacs or not script.exists():
        return None
    proc = subprocess.run(
        [emacs, "--batch", "-Q", "-L", str(ROOT / "elisp"), "-l", str(script),
         "--eval", f"(chatpipe-bench-main {json.dumps(server.url)} "
                   f"{json.dumps(CHATPIPE)} "
                   f"'({' '.join(map(str, sizes))}))"],
        capture_output=True, text=True, env=ENV, timeout=600)
    for line in reversed(proc.stdout.splitlines() + proc.stderr.splitlines()):
        if line.startswith("CHATPIPE-BENCH "):
            return json.loads(line[len("CHATPIPE-BENCH "):])
    print(proc.stdout[-2000:], proc.stderr[-2000:], file=sys.stderr)
    return None


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    k = (len(values) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def machine() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    emacs = shutil.which("emacs")
    emacs_version = (subprocess.run([emacs, "--version"], capture_output=True, text=True)
                     .stdout.splitlines()[0] if emacs else "none")
    curl = shutil.which("curl")
    curl_version = (subprocess.run([curl, "--version"], capture_output=True, text=True)
                    .stdout.split()[1] if curl else "none")
    tmux = shutil.which("tmux")
    tmux_version = (subprocess.run([tmux, "-V"], capture_output=True, text=True).stdout.strip()
                    if tmux else "no tmux")
    try:
        import openai
        sdk = openai.__version__
    except ImportError:
        sdk = "not installed"
    commit = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                            capture_output=True, text=True).stdout.strip()
    return ((f"chatpipe {commit}, " if commit else "")
            + f"{os.cpu_count()} cores ({cpu}), {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}, {emacs_version}, curl {curl_version}, "
            f"{tmux_version}, openai SDK {sdk}")


def report(r: dict, when: str) -> str:
    """The Markdown of the results R (a section's key missing: not run) and
    the notes of the sections left out (R["notes"])."""
    out = [f"Run {when} on {machine()}.", ""]
    if r.get("notes"):
        out += [f"- {note}" for note in r["notes"]] + [""]
    if "rows" in r:
        out += _throughput_report(r["rows"])
    if "latency" in r:
        out += _latency_report(r["latency"], r["delays"])
    if "context" in r:
        out += _context_report(r["context"])
    if "memory" in r:
        memory = r["memory"]
        out += ["", "### Memory", "",
                f"- `chatpipe serve` with {memory['streams']} streams at once: "
                f"{memory['rss']:.1f} MB resident while streaming, peak {memory['peak']:.1f} MB."]
    if r.get("profile"):
        out += ["", "### Where the time goes: 20,000 deltas decoded in-process (cProfile, own time)",
                "", "| function | own time | share |", "|---|---:|---:|"]
        out += [f"| `{name}` | {own * 1000:.1f} ms | {share:.0%} |" for name, own, share in r["profile"]]
    emacs = r.get("emacs")
    if emacs:
        out += ["", "### Emacs (`emacs --batch`, the real package, `chatpipe serve`)", "",
                f"- First character in the buffer after `chatpipe-send` (warm): "
                f"median {emacs['first_ms']:.2f} ms, min {emacs['first_min_ms']:.2f} ms.",
                *_session_lines(emacs),
                "", "| N | whole answer in the buffer | per delta | buffer matches |",
                "|---:|---:|---:|---|"]
        for row in emacs["sizes"]:
            out.append(f"| {row['n']:,} | {row['ms']:.0f} ms | {row['ms'] * 1000 / row['n']:.2f} us | "
                       f"{'yes' if row['ok'] else 'NO'} |")
    if r.get("tls"):
        out += [""] + first_token.report(r["tls"])
    if r.get("gptel"):
        out += _gptel_report(r["gptel"], r.get("gptel_version", "gptel"))
    if r.get("tty"):
        out += _tty_report(r["tty"], r["tty_n"], r["tty_pace"], r.get("gptel_version"))
    return "\n".join(out) + "\n"


def _session_lines(emacs: dict) -> list[str]:
    """The first message of an Emacs session (emacs-bench.el), if measured."""
    if not emacs.get("session_ms"):
        return []
    def cell(values):
        return f"median {statistics.median(values):.2f} ms, min {min(values):.2f} ms"
    return [f"- First character of a session's first message (`chatpipe serve` not running "
            f"when the chat buffer opens), sent after the user typed for 1 s (Emacs idle: "
            f"`chatpipe-prestart` started serve and opened the connection): "
            f"{cell(emacs['session_ms'])}; sent at once, serve starting with the request: "
            f"{cell(emacs['session_now_ms'])} ({len(emacs['session_ms'])} sessions each)."]


def _throughput_report(rows: list[dict]) -> list[str]:
    out = ["### Throughput: an N-delta answer to protocol lines on a pipe", "",
           "| N | chatpipe send | chatpipe serve (warm) | curl -N (floor) "
           "| openai SDK (process / stream only) | serve vs curl | serve vs SDK stream |",
           "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        n = r["n"]

        def cell(m, key="wall"):
            return f"{m[key]*1000:.0f} ms, {n / m[key]:,.0f}/s" + (
                f", {m['rss']:.0f} MB" if m.get("rss") else "")
        curl = r.get("curl")
        sdk = r.get("sdk")
        out.append(
            f"| {n:,} | {cell(r['send'])} | {cell(r['serve'])} | "
            f"{cell(curl) if curl else '-'} | "
            + (f"{sdk['wall']*1000:.0f} ms / {sdk['stream']*1000:.0f} ms "
               f"({n / sdk['stream']:,.0f}/s), {sdk['rss']:.0f} MB" if sdk else "-")
            + (f" | {r['serve']['wall'] / curl['wall']:.2f}x" if curl else " | -"))
        if sdk:
            out[-1] += f" | {sdk['stream'] / r['serve']['wall']:.1f}x faster |"
        else:
            out[-1] += " | - |"
    return out


def _latency_report(latency: dict, delays: dict) -> list[str]:
    out = ["", "### Latency", "",
           f"- First delta, `chatpipe serve` warm (request written to stdin until the line is read): "
           f"median {statistics.median(latency['serve'])*1000:.2f} ms, "
           f"min {min(latency['serve'])*1000:.2f} ms over {len(latency['serve'])} requests.",
           f"- First delta, `chatpipe send` (process spawned until the line is read): "
           f"median {statistics.median(latency['send'])*1000:.0f} ms over {len(latency['send'])} runs.",
           "", "| framing | per-event delay p50 | p99 | max | events |", "|---|---:|---:|---:|---:|"]
    for framing, d in delays.items():
        out.append(f"| {framing} | {d['p50']:.3f} ms | {d['p99']:.3f} ms | {d['max']:.3f} ms | {d['count']} |")
    return out


#: The issue's target for N deltas into a buffer: chatpipe this many times
#: faster than gptel at 100,000 deltas.
GPTEL_TARGET = 5.0


def _gptel_report(result: dict, version: str) -> list[str]:
    sizes = result["sizes"]
    repeats = len(sizes[0]["chatpipe"]) if sizes else 0
    out = ["", f"### Emacs beside gptel: N deltas into a buffer (`emacs --batch`, {version})", "",
           "From the send command (`chatpipe-send` through the warm `chatpipe serve`; "
           "`gptel-send`, which runs curl) until the buffer holds the whole answer, by one wait "
           "loop for both (`accept-process-output` on the client's process, then a check of the "
           f"buffer); {result['mode']} buffers, both packages byte-compiled; median of {repeats} "
           f"run{'s' if repeats != 1 else ''}. Target: chatpipe at least {GPTEL_TARGET:g}x faster "
           "than gptel at 100,000 deltas.", "",
           "| N | chatpipe | gptel | gptel / chatpipe | per delta (chatpipe / gptel) "
           "| objects allocated per delta | GCs | buffer matches |",
           "|---:|---:|---:|---:|---:|---:|---:|---|"]
    for row in sizes:
        n = row["n"]
        c, g = statistics.median(row["chatpipe"]), statistics.median(row["gptel"])
        out.append(f"| {n:,} | {c:.0f} ms | {g:.0f} ms | {g / c:.1f}x | "
                   f"{c * 1000 / n:.1f} / {g * 1000 / n:.1f} us | "
                   f"{row['chatpipe_conses']:.0f} / {row['gptel_conses']:.0f} | "
                   f"{row['chatpipe_gcs']} / {row['gptel_gcs']} | "
                   f"{'yes' if row['chatpipe_ok'] else 'NO'} / {'yes' if row['gptel_ok'] else 'NO'} |")
    big = next((row for row in sizes if row["n"] == 100000), None)
    if big:
        ratio = statistics.median(big["gptel"]) / statistics.median(big["chatpipe"])
        out += ["", f"Target ({GPTEL_TARGET:g}x at 100,000 deltas): "
                    f"{'**met**' if ratio >= GPTEL_TARGET else '**not met**'} ({ratio:.1f}x)."]
    return out


def _tty_report(results: dict, n: int, pace: float, gptel_version: str | None) -> list[str]:
    names = {"chatpipe": "chatpipe (`chatpipe-send`, `chatpipe serve`)",
             "gptel": "gptel (`gptel-send`, curl), defaults",
             "gptel-scroll": "gptel + `gptel-auto-scroll` (window follows, as chatpipe's)"}
    out = ["", "### Emacs' CPU while a real-paced answer streams, redisplay on "
               f"(`emacs -nw` in tmux, 120x40{', ' + gptel_version if gptel_version else ''})", "",
           f"{n:,} deltas of Markdown prose (a heading, emphasis, code, a list, a code block), "
           f"one every {pace:g} ms, into a `markdown-mode` buffer shown alone in the frame, point "
           "at the end of the question. Emacs' own CPU time (`get-internal-run-time`: user + "
           "system, not its children: neither `chatpipe serve` nor curl) from the send command "
           "to the end of the request; redisplays of the chat window (`pre-redisplay-functions`); "
           "medians. Idle: Emacs' CPU over as long with nothing streaming. Target: chatpipe's "
           "per-delta Emacs cost no higher than gptel's.", "",
           "| client | Emacs CPU | per delta | redisplays | wall | idle CPU | runs | buffer matches |",
           "|---|---:|---:|---:|---:|---:|---:|---|"]
    summaries = {}
    for client, result in results.items():
        if "error" in result:
            out.append(f"| {names.get(client, client)} | failed: {result['error'][:200]} "
                       "| | | | | | |")
            continue
        t = summaries[client] = editors.tty_summary(result, n)
        out.append(f"| {names.get(client, client)} | {t['cpu'] * 1000:.0f} ms | "
                   f"{t['per_delta_us']:.0f} us | {t['redisplays']:.0f} | {t['wall']:.2f} s | "
                   f"{t['idle_cpu'] * 1000:.0f} ms | {t['runs']} | {'yes' if t['ok'] else 'NO'} |")
    if "chatpipe" in summaries and "gptel" in summaries:
        c, g = summaries["chatpipe"]["per_delta_us"], summaries["gptel"]["per_delta_us"]
        verdict = "**met**" if c <= g else "**not met**"
        line = (f"Target (chatpipe's per-delta Emacs cost no higher than gptel's): {verdict} "
                f"({c:.0f} us against {g:.0f} us, {c / g:.2f}x")
        if "gptel-scroll" in summaries:
            s = summaries["gptel-scroll"]["per_delta_us"]
            line += f"; against gptel with its window following the answer, {s:.0f} us, {c / s:.2f}x"
        out += ["", line + ")."]
    return out


def note(r: dict, message: str) -> None:
    """Say on stderr, and in the results, why a section or a column is left out."""
    print(message, file=sys.stderr)
    r.setdefault("notes", []).append(message)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("--quick", action="store_true", help="fewer sizes and repeats")
    parser.add_argument("--no-write", action="store_true", help="do not write results.md")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, metavar="SECTION",
                        help=f"run only these sections ({', '.join(SECTIONS)}); implies --no-write")
    args = parser.parse_args()
    run = set(args.only or SECTIONS)
    sizes = [1000, 20000] if args.quick else [1000, 20000, 100000]
    r: dict = {}
    sdk = False
    if "throughput" in run:
        try:
            import openai  # noqa: F401
            sdk = True
        except ImportError:
            note(r, "openai SDK not installed (`pip install openai`): its column is left out")
    if {"throughput", "latency", "tls"} & run and not shutil.which("curl"):
        note(r, "curl not found: its columns and the TLS first-token target are left out")
    emacs = shutil.which("emacs")
    if not emacs and {"emacs", "gptel", "tty"} & run:
        note(r, "emacs not found: the Emacs sections are left out")
    gptel_paths = None
    if emacs and {"gptel", "tty"} & run:
        gptel_paths, message = editors.gptel_load_path(emacs, ENV)
        if gptel_paths is None:
            note(r, message)
        else:
            r["gptel_version"] = message
            print(f"Using {message} from GPTEL_DIR", file=sys.stderr)
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    with BenchServer() as server:
        if {"throughput", "latency", "context"} & run:
            serve = Serve()
            try:
                if "throughput" in run:
                    r["rows"] = throughput(server, serve, sizes, sdk)
                if "latency" in run:
                    r["latency"] = first_delta(server, serve, 10 if args.quick else 40)
                    r["delays"] = per_event_delay(server, serve, 100 if args.quick else 400)
                if "context" in run:
                    r["context"] = context_cost(server, serve, 10 if args.quick else 40)
            finally:
                serve.close()
        if "memory" in run:
            r["memory"] = memory_with_streams(server, 10)
        if "profile" in run:
            r["profile"] = profile_hot_path(server)
        if emacs and "emacs" in run:
            r["emacs"] = emacs_bench(sizes, server)
        if "tls" in run:
            print("First token over TLS with latency...", file=sys.stderr)
            try:
                r["tls"] = first_token.run(PY, ENV, ROOT, 3 if args.quick else 10)
            except Exception as err:  # one section's failure leaves the others
                note(r, f"First token over TLS failed: {type(err).__name__}: {err}")
        if emacs and gptel_paths and "gptel" in run:
            print("Emacs beside gptel: N deltas into a buffer...", file=sys.stderr)
            r["gptel"] = editors.emacs_compare(emacs, server.url, CHATPIPE, sizes,
                                               1 if args.quick else 3, gptel_paths, ENV)
            if r["gptel"] is None:
                note(r, "Emacs beside gptel failed: its output is on stderr")
        if emacs and "tty" in run:
            if not shutil.which("tmux"):
                note(r, "tmux not found (apt-get install tmux): Emacs' CPU with redisplay is left out")
            elif not editors.markdown_mode_dir():
                note(r, "markdown-mode not found (apt-get install elpa-markdown-mode, or "
                        "MARKDOWN_MODE_DIR): Emacs' CPU with redisplay is left out")
            else:
                clients = ["chatpipe"] + (["gptel", "gptel-scroll"] if gptel_paths else [])
                print(f"Emacs' CPU with redisplay (emacs -nw in tmux): {', '.join(clients)}...",
                      file=sys.stderr)
                r["tty_n"], r["tty_pace"] = 2000, 1
                r["tty"] = editors.emacs_tty(emacs, server.url, CHATPIPE, clients, r["tty_n"],
                                             r["tty_pace"], 1 if args.quick else 5, gptel_paths, ENV)
    text = report(r, when)
    print(text)
    if not args.no_write and not args.only:
        (ROOT / "benchmarks" / "results.md").write_text(
            "# chatpipe benchmark results\n\n`make bench` (python -m benchmarks) wrote this.\n\n"
            + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
