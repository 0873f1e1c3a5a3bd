"""Cancels at random points of 1,000 streams of one ``chatpipe serve``.

A real replay server on 127.0.0.1 streams many small deltas per network
read (so that a cancel lands while the stream's thread is writing them),
and a scripted model calls a client tool that the client never answers.
Each request is cancelled at a seeded random point: with its request line
(before the first byte), at a random moment of its stream, at its n-th
event, right around its last delta, while the model streams a tool call,
and while the tool request waits for its answer.  Every stream must then
end with exactly one terminal event (``done``, or the aborted ``error``),
and nothing of it may follow that line (docs/protocol.md, "Guarantees").
"""

from __future__ import annotations

import heapq
import json
import random
import subprocess
import sys
import threading
import time
from collections import Counter

from conftest import ROOT
from replay_server import Reply

#: Requests in all, and at most this many streaming at once.
REQUESTS = 1000
IN_FLIGHT = 48

#: A text answer: CHUNKS network writes of DELTAS deltas each, DELAY apart.
CHUNKS, DELTAS, DELAY = 8, 60, 0.012

SEED = 20261206

#: A piece of the text of the third write from the end.
PENULTIMATE = f"w{CHUNKS - 3}."

ABORTED = {"type": "error", "message": "cancelled", "retryable": False, "aborted": True}


def _sse(chunk: dict) -> bytes:
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


def _delta(text: str) -> bytes:
    return _sse({"choices": [{"index": 0, "delta": {"content": text}}]})


def text_reply() -> Reply:
    """Many deltas per write; the last write ends the answer."""
    chunks = [b"".join(_delta(f"w{c}.{d} ") for d in range(DELTAS)) for c in range(CHUNKS)]
    chunks[-1] += (_sse({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
                   + b"data: [DONE]\n\n")
    return Reply(chunks, delay=DELAY)


def tool_reply() -> Reply:
    """Some text, then a call of the client tool ``never`` (never answered)."""
    chunks = [b"".join(_delta(f"t{c}.{d} ") for d in range(DELTAS)) for c in range(3)]
    chunks.append(_sse({"choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 0, "id": "call_never", "type": "function",
         "function": {"name": "never", "arguments": "{}"}}]}}]})
        + _sse({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})
        + b"data: [DONE]\n\n")
    return Reply(chunks, delay=DELAY)


TOOL = {"name": "never", "description": "a tool whose answer never comes",
        "parameters": {"type": "object", "properties": {}}}

#: How a request is cancelled, and how often (weights).
MODES = {"before": 2, "random_time": 3, "nth_event": 3, "at_end": 4,
         "tool_streaming": 1, "tool_request": 2}


class Driver:
    """Starts the requests, schedules their cancels, reads every event."""

    def __init__(self, proc: subprocess.Popen, text_url: str, tool_url: str) -> None:
        self.proc = proc
        self.text_url, self.tool_url = text_url, tool_url
        self.rng = random.Random(SEED)
        self.events: dict[str, list[dict]] = {}
        self.others: list[dict] = []
        self.modes: dict[str, str] = {}
        self.plan: dict[str, float | int] = {}
        self.terminal_seen: set[str] = set()
        self.cond = threading.Condition()
        self.timers: list[tuple[float, int, str]] = []
        self.write_lock = threading.Lock()
        self.seq = 0
        self.reader_done = threading.Event()
        self.armed: set[str] = set()

    def send(self, data: bytes) -> None:
        with self.write_lock:
            self.proc.stdin.write(data)
            self.proc.stdin.flush()

    def cancel_at(self, when: float, rid: str) -> None:
        with self.cond:
            self.seq += 1
            heapq.heappush(self.timers, (when, self.seq, rid))
            self.cond.notify_all()

    def start(self, i: int) -> None:
        rid = f"s{i}"
        mode = self.rng.choices(list(MODES), list(MODES.values()))[0]
        self.modes[rid] = mode
        tool = mode.startswith("tool")
        line = {"id": rid, "template": "openai", "url": self.tool_url if tool else self.text_url,
                "messages": [{"role": "user", "content": f"question {rid}"}]}
        if tool:
            line["tools"] = [TOOL]
        data = json.dumps(line).encode() + b"\n"
        if mode == "before":
            data += json.dumps({"id": rid, "cancel": True}).encode() + b"\n"
        elif mode == "random_time":
            self.plan[rid] = self.rng.uniform(0, CHUNKS * DELAY * 1.3)
        elif mode == "nth_event":
            self.plan[rid] = self.rng.randint(1, CHUNKS + 1)
        elif mode == "at_end":
            # Right around the last write (2 DELAY after the one that
            # arms it): a little before, at, or after it, as the cancel
            # line reaches the busy server.
            self.plan[rid] = self.rng.uniform(0, 2 * DELAY)
        elif mode == "tool_streaming":
            self.plan[rid] = self.rng.uniform(0, 4 * DELAY)
        else:
            self.plan[rid] = self.rng.uniform(0, 0.05)     # after the tool_request
        self.events[rid] = []
        self.send(data)
        if mode in ("random_time", "tool_streaming"):
            self.cancel_at(time.monotonic() + self.plan[rid], rid)

    def read(self) -> None:
        for raw in self.proc.stdout:
            event = json.loads(raw)
            rid = event.get("id")
            if rid is None:
                self.others.append(event)
                continue
            with self.cond:
                seen = self.events.setdefault(rid, [])
                seen.append(event)
                mode, kind = self.modes.get(rid), event["type"]
                if kind in ("done", "error"):
                    self.terminal_seen.add(rid)
                    self.cond.notify_all()
            if mode == "nth_event" and len(seen) == self.plan[rid]:
                self.send(json.dumps({"id": rid, "cancel": True}).encode() + b"\n")
            elif (mode == "at_end" and kind == "delta" and PENULTIMATE in event["content"]
                  and rid not in self.armed):
                self.armed.add(rid)
                self.cancel_at(time.monotonic() + self.plan[rid], rid)
            elif mode == "tool_request" and kind == "tool_request":
                self.cancel_at(time.monotonic() + self.plan[rid], rid)
        self.reader_done.set()

    def timer_loop(self, stop: threading.Event) -> None:
        while not stop.is_set():
            with self.cond:
                now = time.monotonic()
                if not self.timers or self.timers[0][0] > now:
                    wait = 0.05 if not self.timers else min(0.05, self.timers[0][0] - now)
                    self.cond.wait(wait)
                    continue
                _, _, rid = heapq.heappop(self.timers)
            self.send(json.dumps({"id": rid, "cancel": True}).encode() + b"\n")

    def run(self, deadline: float) -> None:
        stop = threading.Event()
        threading.Thread(target=self.read, daemon=True).start()
        timers = threading.Thread(target=self.timer_loop, args=(stop,), daemon=True)
        timers.start()
        try:
            for i in range(REQUESTS):
                with self.cond:
                    while len(self.events) - len(self.terminal_seen) >= IN_FLIGHT:
                        assert time.monotonic() < deadline, "streams stopped ending"
                        self.cond.wait(0.1)
                self.start(i)
            with self.cond:
                while len(self.terminal_seen) < REQUESTS and time.monotonic() < deadline:
                    self.cond.wait(0.1)
        finally:
            stop.set()
            timers.join(5)


def test_a_thousand_random_cancels_each_end_once_and_last(server, env):
    text_url = server.add("/text", text_reply())
    tool_url = server.add("/tool", tool_reply())
    proc = subprocess.Popen([sys.executable, "-m", "chatpipe", "serve"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, cwd=ROOT)
    try:
        started = time.monotonic()
        driver = Driver(proc, text_url, tool_url)
        driver.run(deadline=started + 90)
        took = time.monotonic() - started
        proc.stdin.close()        # then anything still to come is read
        assert proc.wait(timeout=30) == 0
        assert driver.reader_done.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert [e["type"] for e in driver.others] == ["ready"]
    bad, ends, broken = [], Counter(), Counter()
    for rid, events in driver.events.items():
        terminal = [i for i, e in enumerate(events) if e["type"] in ("done", "error")]
        last = {k: v for k, v in events[-1].items() if k != "id"}
        if len(terminal) != 1 or terminal[0] != len(events) - 1:
            why = ("no terminal event" if not terminal else
                   f"{len(terminal)} terminal events" if len(terminal) > 1 else
                   "events after the terminal event")
        elif last["type"] == "error" and last != ABORTED:
            why = "an error that is not the cancel's"
        else:
            ends[(driver.modes[rid], last["type"])] += 1
            continue
        broken[why] += 1
        bad.append((rid, driver.modes[rid], [e["type"] for e in events[-5:]],
                    last.get("message")))
    print(f"{len(driver.events)} streams in {took:.1f} s; ends by mode: {dict(sorted(ends.items()))}")
    assert len(driver.events) == REQUESTS
    assert not bad, f"{len(bad)} streams broke the rules: {dict(broken)}; e.g. {bad[:6]}"
    # The cancels really came at every point: some streams completed, and
    # each mode has its aborted streams.
    for mode in MODES:
        assert ends[(mode, "error")] > 0, (mode, ends)
    assert sum(n for (_, kind), n in ends.items() if kind == "done") > 0
    assert took < 60, took
