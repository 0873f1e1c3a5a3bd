"""The protocol writers: lines exactly as json.dumps would write them."""

from __future__ import annotations

import io
import json

import pytest
from hypothesis import given, strategies as st

from chatpipe import protocol
from chatpipe.protocol import EventLines, LineWriter, TextView, encode_line


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
    assert out.getvalue().count(b"\n") == 2
    writer.emit(protocol.done("stop"))   # written at once
    assert out.getvalue().splitlines()[-1] == b'{"type":"done","finish_reason":"stop"}'


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
