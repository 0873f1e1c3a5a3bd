"""An API that chatpipe does not ship, defined in this file alone.

"toy-lines" is a made-up API over NDJSON, unlike any real one: its
conversation is ``dialogue`` (``{"speaker", "words", "asks"}`` items), its
model is ``engine``, its tools are ``abilities``, its answer lines are
``{"words"}``, ``{"ask"}`` and ``{"over", "spent"}``, and its model list is
``GET {base}/catalog``, paged with ``cursor``.  The :class:`ToyDialect`
below is all chatpipe learns of it: registered at run time with
:func:`chatpipe.dialects.register`, it runs a request, a ``--save`` and its
continuation, a tool round trip (the fixture MCP server's ``echo``) and a
model listing, through the real CLI, with no other file changed.

The CLI runs as a subprocess, so it is registered there the same way: this
file, run as a script (``python tests/test_extra_dialect.py send ...``),
registers the dialect and calls :func:`chatpipe.cli.main` (see
:mod:`chatpipe.dialects.base`).

Also here: Gemini's model, which is in the URL, now reaches the ``start``
and ``step`` events (they had none), checked against the recorded streams.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import urlsplit, urlunsplit

from chatpipe import dialects, protocol
from chatpipe.dialects import base, modellist
from chatpipe.errors import StreamError

HERE = Path(__file__).resolve()

SPEAKERS = {"user": "person", "assistant": "machine", "system": "instructions"}


class ToyParser(base.Parser):
    """``{"words": TEXT}``, ``{"ask": {"ref", "ability", "with"}}``,
    ``{"over": "finished"|"asking", "spent": [IN, OUT]}``, ``{"trouble": TEXT}``."""

    framing = "ndjson"
    terminator = 'an "over" line'

    def parse(self, event: Any) -> Iterable[dict]:
        line = base.parse_json(event.data)
        if "trouble" in line:
            raise StreamError(str(line["trouble"]))
        out = []
        if line.get("words"):
            out.append(protocol.delta(line["words"]))
        ask = line.get("ask")
        if isinstance(ask, dict):
            out.extend(self.tool_call(ask.get("ref"), json.dumps(ask.get("with") or {}),
                                      ask.get("ref"), ask.get("ability")))
        if "over" in line:
            self.done = True
            spent = line.get("spent") or [None, None]
            out.append(protocol.usage(spent[0], spent[1]))
            out.append(protocol.done("tool_calls" if line["over"] == "asking" else "stop",
                                     line["over"]))
        return out


class ToyDialect(base.Dialect):
    """The toy API's request shape and model list."""

    name = "toy-lines"
    parser = ToyParser
    history_key = "dialogue"
    endpoint_paths = ("/talk",)

    def message(self, message: dict) -> dict:
        return {"speaker": SPEAKERS.get(message.get("role"), "person"),
                "words": message.get("content") or ""}

    def assistant_message(self, text: str, tool_calls: list[dict] | None = None) -> list[dict]:
        item: dict[str, Any] = {"speaker": "machine", "words": text}
        if tool_calls:
            item["asks"] = [{"ref": c["id"], "ability": c["name"],
                             "with": base.arguments_object(c["arguments"])} for c in tool_calls]
        return [item]

    def add_tool_result(self, conversation: list, result: dict) -> None:
        conversation.append({"speaker": "tool-output", "ref": result["tool_call_id"],
                             "words": result.get("content") or "",
                             "failed": bool(result.get("is_error"))})

    def add_tools(self, body: dict, tools: list[dict]) -> None:
        body.setdefault("abilities", []).extend(
            {"called": t["name"], "explains": t.get("description", ""),
             "takes": base.parameters(t)} for t in tools)

    def ends_with_user_turn(self, body: dict) -> bool:
        turns = body.get(self.history_key)
        return bool(turns) and turns[-1].get("speaker") == "person"

    def streaming_hint(self, url: str | None, body: dict) -> str | None:
        return None if body.get("want_stream") else 'set "want_stream": true'

    def model_of(self, request: Any) -> str | None:
        return request.body.get("engine")

    def set_model(self, request: Any, model: str) -> None:
        request.body["engine"] = model

    def models_request(self, url, headers):
        parts = urlsplit(url)
        path = parts.path.rstrip("/").removesuffix("/talk")
        return (urlunsplit((parts.scheme, parts.netloc, path + "/catalog", "", "")),
                {**headers, "toy-client": "yes"}, {"cursor": "start"})

    def parse_models(self, doc: Any):
        items = modellist.list_items(doc, "engines")
        if items is None:
            return None
        models = [modellist.model_entry(m.get("label"), m.get("born")) for m in items]
        more = doc.get("more")
        return [m for m in models if m], {"cursor": more} if more else None


def line(**fields) -> bytes:
    return json.dumps(fields).encode() + b"\n"


def reply(*lines: bytes):
    from replay_server import Reply

    return Reply([b"".join(lines)], content_type="application/x-ndjson")


def toy(env, *args, timeout=60) -> subprocess.CompletedProcess:
    """This file as the chatpipe CLI (the toy dialect registered), without a terminal."""
    return subprocess.run([sys.executable, str(HERE), *args], capture_output=True, text=True,
                          env=env, cwd=HERE.parent.parent, timeout=timeout, start_new_session=True,
                          stdin=subprocess.DEVNULL)


def chat_file(tmp_path, url) -> Path:
    path = tmp_path / "toy-chat.json"
    path.write_text(json.dumps({
        "chatpipe": {"api": "toy-lines", "url": url, "max_retries": 0},
        "engine": "toy-1", "want_stream": True, "dialogue": []}, indent=2))
    return path


def test_unknown_without_registering(chatpipe, tmp_path):
    proc = chatpipe("templates", "check", str(chat_file(tmp_path, "http://127.0.0.1:9/talk")))
    assert proc.returncode == 1 and 'unknown API dialect "toy-lines"' in proc.stdout


def test_request_save_continuation_and_tool_round_trip(server, mcp_env, tmp_path):
    url = server.add("/toy/talk", [
        reply(line(words="Let me "), line(words="echo."),
              line(ask={"ref": "a1", "ability": "echo", "with": {"text": "hi"}}),
              line(over="asking", spent=[7, 3])),
        reply(line(words="It said "), line(words="hi."), line(over="finished", spent=[12, 4])),
        reply(line(words="You are welcome."), line(over="finished", spent=[20, 4]))])
    path = chat_file(tmp_path, url)
    proc = toy(mcp_env, "templates", "check", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr

    proc = toy(mcp_env, "send", str(path), "--save", "--tools", "mcp:fx", "--yes",
               "--output", "ndjson", "-m", "Echo hi")
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(x) for x in proc.stdout.splitlines()]
    kinds = [e["type"] for e in events]
    assert kinds[0] == "start" and events[0]["model"] == "toy-1"
    assert {"type": "step", "step": 2, "model": "toy-1"}.items() <= next(
        e for e in events if e["type"] == "step").items()
    assert "".join(e["content"] for e in events if e["type"] == "delta") == "Let me echo.It said hi."
    assert events[-1]["type"] == "done" and events[-1]["finish_reason"] == "stop"
    assert any(e["type"] == "tool_result" and e["content"] == "hi" for e in events)

    first, second = server.requests[0]["body"], server.requests[1]["body"]
    assert first["dialogue"] == [{"speaker": "person", "words": "Echo hi"}]
    assert [a["called"] for a in first["abilities"]] == [a["called"] for a in second["abilities"]]
    assert "echo" in [a["called"] for a in first["abilities"]]
    turns = [{"speaker": "person", "words": "Echo hi"},
             {"speaker": "machine", "words": "Let me echo.",
              "asks": [{"ref": "a1", "ability": "echo", "with": {"text": "hi"}}]},
             {"speaker": "tool-output", "ref": "a1", "words": "hi", "failed": False}]
    assert second["dialogue"] == turns
    saved = json.loads(path.read_text())
    assert saved["dialogue"] == turns + [{"speaker": "machine", "words": "It said hi."}]
    assert saved["engine"] == "toy-1" and "abilities" not in saved

    proc = toy(mcp_env, "send", str(path), "--save", "-m", "Thanks")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "You are welcome.\n"
    assert server.requests[2]["body"]["dialogue"] == saved["dialogue"] + [
        {"speaker": "person", "words": "Thanks"}]
    assert json.loads(path.read_text())["dialogue"][-1] == {"speaker": "machine",
                                                            "words": "You are welcome."}


def test_model_listing_and_model_override(server, env, tmp_path):
    from replay_server import Reply

    def page(doc):
        return Reply([json.dumps(doc).encode()], framing="length", content_type="application/json")

    server.add("/toy/catalog", [page({"engines": [{"label": "toy-2", "born": 1700000000}],
                                      "more": "p2"}),
                                page({"engines": [{"label": "toy-1"}, {"nope": 1}]})])
    url = server.add("/toy/talk", reply(line(words="ok"), line(over="finished")))
    path = chat_file(tmp_path, url)
    proc = toy(env, "models", str(path), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [{"id": "toy-1"}, {"id": "toy-2", "created": 1700000000}]
    gets = [r for r in server.requests if r.get("method") == "GET"]
    assert [g["path"] for g in gets] == ["/toy/catalog?cursor=start", "/toy/catalog?cursor=p2"]
    assert gets[0]["headers"].get("toy-client") == "yes"

    proc = toy(env, "send", str(path), "--model", "toy-2", "--output", "ndjson", "-m", "hi")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[0])["model"] == "toy-2"
    assert server.requests[-1]["body"]["engine"] == "toy-2"


def test_streaming_warning_is_the_dialects(tmp_path, env):
    path = tmp_path / "quiet.json"
    path.write_text(json.dumps({"chatpipe": {"api": "toy-lines", "url": "http://127.0.0.1:9/talk"},
                                "dialogue": []}))
    proc = toy(env, "templates", "check", str(path))
    assert 'streaming is off, so the answer shows only once it is complete: set "want_stream": true' \
        in proc.stdout + proc.stderr


# ---- Gemini: the model in the URL reaches the start and step events -----------------

GEMINI_PATH = "/v1beta/models/gemini-2.5-flash:streamGenerateContent"


def test_gemini_start_event_carries_the_model_of_its_url(server):
    from conftest import STREAMS, run_stream_in_process
    from replay_server import Reply

    from chatpipe.templates import Request

    for name in ("gemini/basic-text-no-blank-lines.sse", "gemini/thinking-function-call-crlf.sse"):
        url = server.add(GEMINI_PATH, Reply([(STREAMS / name).read_bytes()]))
        request = Request(url=url + "?alt=sse", headers={}, body={"contents": []}, api="gemini",
                          connect_timeout=5)
        sink, err, _ = run_stream_in_process(request)
        assert err is None
        assert sink.of("start")[0]["model"] == "gemini-2.5-flash"   # was None


def test_gemini_step_event_carries_the_model(server, mcp_env, tmp_path):
    from conftest import STREAMS
    from replay_server import Reply

    call = Reply([(STREAMS / "gemini/thinking-function-call-crlf.sse").read_bytes()])
    answer = Reply([(STREAMS / "gemini/basic-text-no-blank-lines.sse").read_bytes()])
    url = server.add(GEMINI_PATH, [call, answer])
    path = tmp_path / "g.json"
    path.write_text(json.dumps({"chatpipe": {"api": "gemini", "url": url + "?alt=sse",
                                             "max_retries": 0}, "contents": []}))
    proc = subprocess.run([sys.executable, "-m", "chatpipe", "send", str(path), "--tools", "mcp:fx",
                           "--yes", "--output", "ndjson", "-m", "go"], capture_output=True,
                          text=True, env=mcp_env, timeout=60, start_new_session=True,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(x) for x in proc.stdout.splitlines()]
    assert events[0]["type"] == "start" and events[0]["model"] == "gemini-2.5-flash"
    steps = [e for e in events if e["type"] == "step"]
    assert steps and all(e["model"] == "gemini-2.5-flash" for e in steps)


if __name__ == "__main__":
    from chatpipe import cli

    dialects.register(ToyDialect)
    sys.exit(cli.main())
