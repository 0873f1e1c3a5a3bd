"""The protocol writers: lines exactly as json.dumps would write them."""

from __future__ import annotations

import io
import json

import pytest
from hypothesis import given, strategies as st

from chatpipe.protocol import NDJSONWriter, encode_line
from chatpipe.serve import own_ids_renamed


def dumps(obj):
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


@given(st.text())
def test_delta_fast_path_equals_json_dumps(text):
    event = {"type": "delta", "content": text}
    assert encode_line(event) == dumps(event)
    assert encode_line(event, '{"id":"r1",') == dumps({"id": "r1", **event})
    assert json.loads(encode_line(event)) == event


@pytest.mark.parametrize("event", [
    {"type": "start", "protocol": 1, "model": "m", "id": "req_1"},
    {"type": "usage", "input_tokens": 1, "output_tokens": 2, "total_tokens": 3},
    {"type": "done", "finish_reason": None},
    {"type": "error", "message": "ünïcode \u2028 \x00", "retryable": False},
])
def test_other_events(event):
    assert encode_line(event) == dumps(event)
    assert json.loads(encode_line(event, '{"id":7,')) == {"id": 7, **event}


def test_serve_renames_own_ids():
    assert own_ids_renamed({"type": "start", "id": "req"}) == {"type": "start",
                                                               "response_id": "req"}
    assert own_ids_renamed({"type": "tool_call", "index": 0, "id": "call_1", "arguments": ""}) == {
        "type": "tool_call", "index": 0, "arguments": "", "call_id": "call_1"}


def test_writer_flushes_before_waiting_and_at_the_end():
    out = io.BytesIO()
    writer = NDJSONWriter(out)
    writer.emit({"type": "delta", "content": "a"})
    writer.emit({"type": "delta", "content": "b"})
    assert out.getvalue() == b""          # queued until the stream waits
    writer.flush()
    assert out.getvalue().count(b"\n") == 2
    writer.emit({"type": "done", "finish_reason": "stop"})   # written at once
    assert out.getvalue().splitlines()[-1] == b'{"type":"done","finish_reason":"stop"}'
