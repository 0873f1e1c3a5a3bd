"""The protocol writers: lines exactly as json.dumps would write them."""

from __future__ import annotations

import io
import json

import pytest
from hypothesis import given, strategies as st

from chatpipe import protocol, redaction
from chatpipe.protocol import EventLines, LineWriter, encode_line
from chatpipe.textview import TextView


def dumps(obj):
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


@given(st.text())
def test_delta_fast_path_equals_json_dumps(text):
    event = {"type": "delta", "content": text}
    assert encode_line(event) == dumps(event)
    assert encode_line(event, '{"id":"r1",') == dumps({"id": "r1", **event})
    assert json.loads(encode_line(event)) == event


@pytest.mark.parametrize("event", [
    {"type": "start", "protocol": 2, "model": "m", "response_id": "req_1"},
    {"type": "usage", "input_tokens": 1, "output_tokens": 2, "total_tokens": 3},
    {"type": "done", "finish_reason": None},
    {"type": "error", "message": "ünïcode \u2028 \x00", "retryable": False},
])
def test_other_events(event):
    assert encode_line(event) == dumps(event)
    assert json.loads(encode_line(event, '{"id":7,')) == {"id": 7, **event}


def test_writer_flushes_before_waiting_and_at_the_end():
    out = io.BytesIO()
    writer = EventLines(LineWriter(out))
    writer.emit(protocol.delta("a"))
    writer.emit(protocol.delta("b"))
    assert out.getvalue() == b""          # queued until the stream waits
    writer.flush()
    assert out.getvalue() == b'{"type":"delta","content":"ab"}\n'   # one read, one line
    writer.emit(protocol.done("stop"))   # written at once
    assert out.getvalue().splitlines()[-1] == b'{"type":"done","finish_reason":"stop"}'


@given(st.lists(st.tuples(st.sampled_from(["delta", "reasoning", "tool_call", "usage"]),
                          st.text(min_size=1, max_size=5)), max_size=30),
       st.sets(st.integers(0, 30)))
def test_text_from_one_read_is_joined_in_order(items, flush_at):
    out = io.BytesIO()
    output = EventLines(LineWriter(out), "r")
    for i, (kind, text) in enumerate(items):
        if i in flush_at:
            output.flush()
        output.emit(protocol.tool_call(0, text) if kind == "tool_call" else
                    protocol.usage(1, 2) if kind == "usage" else {"type": kind, "content": text})
    output.flush()
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    # Joined per kind, never across another event or a flush; nothing lost or reordered.
    assert "".join(e.get("content", "") for e in lines if e["type"] == "delta") == "".join(
        t for k, t in items if k == "delta")
    assert [e["type"] for e in lines if e["type"] not in ("delta", "reasoning")] == [
        k for k, _ in items if k not in ("delta", "reasoning")]
    for a, b in zip(lines, lines[1:]):
        assert not (a["type"] == b["type"] and a["type"] in ("delta", "reasoning")) or flush_at


def test_request_id_is_the_only_difference_between_front_ends():
    send, serve = io.BytesIO(), io.BytesIO()
    events = [protocol.start(2, "m", "req_9"), protocol.tool_call(0, "{}", "call_1", "f"),
              protocol.delta("x"), protocol.done("stop")]
    for out, rid in ((send, None), (serve, "r1")):
        output = EventLines(LineWriter(out), rid)
        for event in events:
            output.emit(event)
    served = [json.loads(line) for line in serve.getvalue().splitlines()]
    assert all(e.pop("id") == "r1" for e in served)
    assert served == [json.loads(line) for line in send.getvalue().splitlines()] == events


@pytest.mark.parametrize("make", [lambda out: EventLines(LineWriter(out), "r"),
                                  lambda out: TextView(out, out)])
def test_outputs_redact_every_string_and_end_once(make):
    out = io.BytesIO()
    output = make(out)
    output.secrets.append("sk-SECRET-0123456789")
    long = "x" * (protocol.MAX_MESSAGE - 5) + "sk-SECRET-0123456789"
    output.emit(protocol.delta("echo sk-SECRET-0123456789"))
    output.emit(protocol.retry(1, 0.5, "bad key sk-SECRET-0123456789", 429))
    output.emit(protocol.error(long, 500))
    output.emit(protocol.done("stop"))            # after a terminal event: dropped
    output.flush()
    text = out.getvalue().decode()
    assert "sk-SECRET" not in text and "0123456789" not in text
    assert text.count("***") == 3
    assert "finish_reason" not in text


KEY = "sk-test-CHATPIPE-SECRET-0123456789abcdef"
#: Text made of the key's own characters, so that beginnings of it come up.
KEYISH = st.text(alphabet=sorted(set(KEY + " .")), max_size=30)


@given(KEYISH, KEYISH, st.sets(st.integers(0, len(KEY) + 60)), st.sets(st.integers(0, 120)))
def test_a_key_cut_anywhere_across_reads_is_never_written(before, after, cuts, flush_at):
    """Whatever the server's cuts between deltas and between network reads
    (flushes), the key is written as ``***``: at most fewer than
    redaction.HOLD of its first characters before it, nothing of it after,
    and all the text around it, in order."""
    from hypothesis import assume

    assume(not any(KEY[i:i + redaction.HOLD] in before + after
                   for i in range(len(KEY) - redaction.HOLD + 1)))
    text = before + KEY + after
    points = sorted({0, len(text), *(c for c in cuts if c < len(text))})
    out = io.BytesIO()
    output = EventLines(LineWriter(out))
    output.secrets.append(KEY)
    for i, (a, b) in enumerate(zip(points, points[1:])):
        if i in flush_at:
            output.flush()
        output.emit(protocol.delta(text[a:b]))
    output.emit(protocol.done("stop"))
    written = "".join(json.loads(line).get("content", "")
                      for line in out.getvalue().splitlines())
    assert written.startswith(before) and written.endswith(redaction.REDACTED + after)
    leaked = written[len(before):len(written) - len(redaction.REDACTED + after)]
    assert KEY.startswith(leaked) and len(leaked) < redaction.HOLD


def test_text_that_only_looks_like_a_key_is_held_one_read_at_most():
    """Ordinary text is written at each flush; a key's first HOLD characters
    at the end of a read wait for the next one, then go as *** if no key
    follows."""
    out = io.BytesIO()
    output = EventLines(LineWriter(out))
    output.secrets.append(KEY)
    output.emit(protocol.delta("cats sk-"))
    output.flush()
    assert out.getvalue() == b'{"type":"delta","content":"cats sk-"}\n'
    output.emit(protocol.delta("test-CHAT"))
    output.flush()
    assert out.getvalue().count(b"\n") == 1                    # held: it may be the key
    output.emit(protocol.delta(" and dogs"))
    output.flush()
    assert out.getvalue().splitlines()[-1] == b'{"type":"delta","content":"*** and dogs"}'
