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
   events paced 5 ms apart, in three framings (chunked, close, gzip).
3. Memory: ``chatpipe serve``'s peak RSS with 10 streams at once.
4. Emacs (when ``emacs`` is on PATH): ``benchmarks/emacs-bench.el`` in
   ``emacs --batch`` through the real package.

Results go to stdout and to benchmarks/results.md.  Options: ``--quick``
(fewer sizes and repeats), ``--no-write``.
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

from benchmarks.server import BenchServer

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
ENV = {**os.environ, "OPENAI_API_KEY": "bench", "PYTHONDONTWRITEBYTECODE": "1"}


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
    """Run CMD, read its stdout to the end; wall seconds, peak RSS (MB), lines."""
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
    fd = proc.stdout.fileno()
    while data := os.read(fd, 1 << 16):
        lines += data.count(b"\n")
    rss[0] = max(rss[0], peak_rss(proc.pid))
    err = proc.stderr.read()
    proc.wait()
    wall = time.monotonic() - start
    done.set()
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:4]} failed: {err.decode()[-500:]}")
    return {"wall": wall, "rss": rss[0], "lines": lines, "stderr": err.decode()}


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

    def request(self, url: str) -> tuple[_Collector, int]:
        """Send a request for URL; return (its collector, write time in ns)."""
        self.n += 1
        rid = f"r{self.n}"
        collector = self.collectors[rid.encode()] = _Collector()
        line = json.dumps({"id": rid, "template": "openai", "url": url,
                           "messages": [{"role": "user", "content": "hi"}]}) + "\n"
        t = time.monotonic_ns()
        self.proc.stdin.write(line.encode())
        self.proc.stdin.flush()
        return collector, t

    def run(self, url: str) -> dict:
        """One request to the end: seconds to first delta and to done, lines."""
        collector, t0 = self.request(url)
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
        assert send["lines"] == n + 2, send["lines"]
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
                   f"{json.dumps(str(ROOT / '.venv' / 'bin' / 'chatpipe'))} "
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
    try:
        import openai
        sdk = openai.__version__
    except ImportError:
        sdk = "not installed"
    return (f"{os.cpu_count()} cores ({cpu}), {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}, {emacs_version}, curl {curl_version}, "
            f"openai SDK {sdk}")


def report(rows, latency, delays, memory, emacs, profile, when: str) -> str:
    out = [f"Run {when} on {machine()}.", ""]
    out += ["### Throughput: an N-delta answer to protocol lines on a pipe", "",
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
            + f" | {r['serve']['wall'] / curl['wall']:.2f}x" if curl else " | -")
        if sdk:
            out[-1] += f" | {sdk['stream'] / r['serve']['wall']:.1f}x faster |"
        else:
            out[-1] += " | - |"
    out += ["", "### Latency", "",
            f"- First delta, `chatpipe serve` warm (request written to stdin until the line is read): "
            f"median {statistics.median(latency['serve'])*1000:.2f} ms, "
            f"min {min(latency['serve'])*1000:.2f} ms over {len(latency['serve'])} requests.",
            f"- First delta, `chatpipe send` (process spawned until the line is read): "
            f"median {statistics.median(latency['send'])*1000:.0f} ms over {len(latency['send'])} runs.",
            "", "| framing | per-event delay p50 | p99 | max | events |", "|---|---:|---:|---:|---:|"]
    for framing, d in delays.items():
        out.append(f"| {framing} | {d['p50']:.3f} ms | {d['p99']:.3f} ms | {d['max']:.3f} ms | {d['count']} |")
    out += ["", "### Memory", "",
            f"- `chatpipe serve` with {memory['streams']} streams at once: "
            f"{memory['rss']:.1f} MB resident while streaming, peak {memory['peak']:.1f} MB."]
    if profile:
        out += ["", "### Where the time goes: 20,000 deltas decoded in-process (cProfile, own time)",
                "", "| function | own time | share |", "|---|---:|---:|"]
        out += [f"| `{name}` | {own * 1000:.1f} ms | {share:.0%} |" for name, own, share in profile]
    if emacs:
        out += ["", "### Emacs (`emacs --batch`, the real package, `chatpipe serve`)", "",
                f"- First character in the buffer after `chatpipe-send` (warm): "
                f"median {emacs['first_ms']:.2f} ms, min {emacs['first_min_ms']:.2f} ms.",
                "", "| N | whole answer in the buffer | per delta | buffer matches |",
                "|---:|---:|---:|---|"]
        for r in emacs["sizes"]:
            out.append(f"| {r['n']:,} | {r['ms']:.0f} ms | {r['ms'] * 1000 / r['n']:.2f} us | "
                       f"{'yes' if r['ok'] else 'NO'} |")
    return "\n".join(out) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("--quick", action="store_true", help="fewer sizes and repeats")
    parser.add_argument("--no-write", action="store_true", help="do not write results.md")
    args = parser.parse_args()
    sizes = [1000, 20000] if args.quick else [1000, 20000, 100000]
    try:
        import openai  # noqa: F401
        sdk = True
    except ImportError:
        print("openai SDK not installed: `pip install openai` for its column", file=sys.stderr)
        sdk = False
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    with BenchServer() as server:
        serve = Serve()
        try:
            rows = throughput(server, serve, sizes, sdk)
            latency = first_delta(server, serve, 10 if args.quick else 40)
            delays = per_event_delay(server, serve, 100 if args.quick else 400)
        finally:
            serve.close()
        memory = memory_with_streams(server, 10)
        profile = profile_hot_path(server)
        emacs = emacs_bench(sizes, server)
    text = report(rows, latency, delays, memory, emacs, profile, when)
    print(text)
    if not args.no_write:
        (ROOT / "benchmarks" / "results.md").write_text(
            "# chatpipe benchmark results\n\n`make bench` (python -m benchmarks) wrote this.\n\n"
            + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
