"""Context through the whole request path, to a real server on 127.0.0.1.

A request's ``context`` (send's ``-f``, serve's ``"context"``) is read when
the request is sent, rendered once and put where each API takes a system
prompt (Anthropic with a cache breakpoint); the same context gives the
same bytes; problems are told before anything is sent; a dry run sends
nothing and shows the body.  tests/test_context.py tests the module itself.
"""

from __future__ import annotations

import json

import pytest

from conftest import FAKE_KEY, KEYS, ndjson


#: API -> (bundled template, a recording of its API, where the body keeps
#: the system prompt).
APIS = {
    "openai-chat": ("openai", "openai-chat/text-with-usage.sse"),
    "anthropic": ("anthropic", "anthropic/basic.sse"),
    "gemini": ("gemini", "gemini/basic-text-no-blank-lines.sse"),
    "openai-responses": ("openai-responses", "openai-responses/basic-text.sse"),
    "ollama": ("ollama", "ollama/basic-text.ndjson"),
}


def system_text(api: str, body: dict) -> str:
    """The system prompt of BODY, in API's shape, as one text."""
    if api == "anthropic":
        system = body["system"]
        return "".join(b["text"] for b in system) if isinstance(system, list) else system
    if api == "gemini":
        return "".join(p["text"] for p in body["systemInstruction"]["parts"])
    if api == "openai-responses" and body.get("instructions"):
        return body["instructions"]
    key = "input" if api == "openai-responses" else "messages"
    return next(m["content"] for m in body[key] if m["role"] in ("system", "developer"))


@pytest.fixture
def project(tmp_path):
    """A project folder: a .git, a .gitignore, code, Markdown with fences,
    an ignored file and a binary one."""
    root = tmp_path / "proj"
    (root / ".git").mkdir(parents=True)
    (root / ".gitignore").write_text("secret.env\n")
    (root / "secret.env").write_text("TOKEN=do-not-send\n")
    (root / "src").mkdir()
    (root / "src" / "app.py").write_text("def main():\n    return 42\n")
    (root / "README.md").write_text("# Title\n\n```sh\nmake\n```\n")
    (root / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    return root


@pytest.mark.parametrize("api", sorted(APIS))
def test_context_goes_after_the_system_prompt_the_same_bytes_each_time(
        api, server, chatpipe, project):
    template, recording = APIS[api]
    url = f"{server.url}/replay/{recording}"
    runs = [chatpipe("send", template, "--url", url, "-f", str(project / "src"),
                     "-f", f"{project / 'README.md'}:3-5", "-m", "What does it do?",
                     "--output", "ndjson", extra_env=KEYS) for _ in range(2)]
    for run in runs:
        events = ndjson(run.stdout)
        assert events[-1]["type"] == "done", run.stdout + run.stderr
        context = next(e for e in events if e["type"] == "context")
        assert [p["name"] for p in context["pieces"]] == ["src/app.py", "README.md"]
        assert context["pieces"][1]["lines"] == [3, 5]
        assert context["tokens"] == sum(p["tokens"] for p in context["pieces"]) > 0
        assert [e["type"] for e in events].index("context") < [e["type"] for e in events].index(
            "start")
    first, second = (r["body"] for r in server.requests)
    assert json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)
    system = system_text(api, first)
    assert system.index("# Context") > 0          # after the template's own prompt
    assert "## src/app.py (python)\n```python\ndef main():\n    return 42\n```" in system
    assert "## README.md (lines 3-5, markdown)\n````markdown\n```sh\nmake\n```\n````" in system
    assert "What does it do?" not in system
    if api == "anthropic":
        assert first["system"][-1]["cache_control"] == {"type": "ephemeral"}
        assert first["system"][-1]["text"].startswith("# Context")


def test_user_placement_puts_it_before_the_question(server, chatpipe, project):
    url = f"{server.url}/replay/openai-chat/text-with-usage.sse"
    run = chatpipe("send", "openai", "--url", url, "-f", str(project / "src" / "app.py"),
                   "--context-placement", "user", "-m", "Explain.", "--output", "ndjson")
    assert ndjson(run.stdout)[-1]["type"] == "done", run.stderr
    messages = server.requests[0]["body"]["messages"]
    assert "# Context" not in messages[0]["content"]
    last = messages[-1]["content"]
    assert last.startswith("# Context") and last.endswith("Explain.")


def test_a_directory_honours_gitignore_and_warns_of_binaries(server, chatpipe, project):
    url = f"{server.url}/replay/openai-chat/text-with-usage.sse"
    run = chatpipe("send", "openai", "--url", url, "-f", str(project), "-f",
                   str(project / "gone.txt"), "-m", "hi", "--output", "ndjson")
    events = ndjson(run.stdout)
    assert events[-1]["type"] == "done", run.stderr
    warnings = [e for e in events if e["type"] == "warning"]
    assert [w["kind"] for w in warnings] == ["context", "context"]
    assert sorted(w["subject"].rsplit("/", 1)[-1] for w in warnings) == ["gone.txt", "logo.png"]
    assert [w["item"] for w in warnings] == [0, 1]
    sent = json.dumps(server.requests[0]["body"])
    assert "do-not-send" not in sent and "## secret.env" not in sent
    assert "## src/app.py (python)" in sent and "## README.md (markdown)" in sent


def test_a_binary_file_or_a_bad_range_is_refused_before_sending(server, chatpipe, project):
    url = f"{server.url}/replay/openai-chat/text-with-usage.sse"
    png = chatpipe("send", "openai", "--url", url, "-f", str(project / "logo.png"), "-m", "hi",
                   "--output", "ndjson")
    error = ndjson(png.stdout)[-1]
    assert png.returncode == 2 and error["type"] == "error" and error["kind"] == "context"
    assert "logo.png" in error["message"] and "image/png" in error["message"]
    lines = chatpipe("send", "openai", "--url", url, "-f", f"{project / 'README.md'}:4-90",
                     "-m", "hi")
    assert lines.returncode == 2 and "README.md" in lines.stderr
    assert server.requests == []


def test_a_template_limit_refuses_too_much_context(server, chatpipe, project, tmp_path):
    template = tmp_path / "small.json"
    template.write_text(json.dumps({
        "model": "m", "stream": True, "messages": [],
        "chatpipe": {"url": f"{server.url}/replay/openai-chat/text-with-usage.sse",
                     "context_total_bytes": 40}}))
    run = chatpipe("send", str(template), "-f", str(project), "-m", "hi", "--output", "ndjson")
    error = ndjson(run.stdout)[-1]
    assert run.returncode == 2 and error["kind"] == "context"
    assert server.requests == []
    template.write_text(json.dumps({"model": "m", "messages": [],
                                    "chatpipe": {"url": "x", "context_placement": "top"}}))
    bad = chatpipe("send", str(template), "-m", "hi")
    assert bad.returncode == 2 and "context placement" in bad.stderr


def test_stdin_is_a_named_item(server, chatpipe):
    url = f"{server.url}/replay/openai-chat/text-with-usage.sse"
    run = chatpipe("send", "openai", "--url", url, "-f", "-", "-m", "Summarize.",
                   input="line one\nline two\n")
    assert run.returncode == 0, run.stderr
    system = server.requests[0]["body"]["messages"][0]["content"]
    assert "## stdin\n```\nline one\nline two\n```" in system


def test_a_dry_run_sends_nothing_and_shows_the_body_redacted(server, chatpipe, serve, project):
    url = f"{server.url}/replay/gemini/basic-text-no-blank-lines.sse?key=${{env:GEMINI_API_KEY}}"
    image = "data:image/png;base64," + "QUJD" * 200
    request = {"template": "gemini", "url": url, "dry_run": True, "env": KEYS,
               "messages": [{"role": "user", "content": [{"type": "text", "text": image}]}],
               "context": [{"type": "file", "path": str(project / "src" / "app.py")}]}
    run = chatpipe("send", "--request", "-", "--output", "ndjson", input=json.dumps(request))
    events = ndjson(run.stdout)
    assert run.returncode == 0 and [e["type"] for e in events] == ["context", "request", "done"]
    assert events[-1] == {"type": "done", "finish_reason": None, "dry_run": True}
    shown = json.dumps(events[1])
    assert FAKE_KEY not in shown and "***" in events[1]["url"]
    assert "QUJDQUJD" not in shown and "800 base64 characters elided" in shown
    assert "def main()" in json.dumps(events[1]["body"]["systemInstruction"])
    text = chatpipe("send", "--request", "-", input=json.dumps(request))
    assert text.returncode == 0 and json.loads(text.stdout)["contents"]
    serve.send({"id": "d", **request})
    served = [e for _, e in serve.until(lambda e: e["type"] == "done")]
    assert [e["type"] for e in served if e.get("id") == "d"] == ["context", "request", "done"]
    assert server.requests == []


def test_mcp_resources_are_read_through_mcp(server, chatpipe, mcp_env):
    """A context item ``{"type": "mcp"}`` is read from the configured MCP
    server (tests/mcp_fixture_server.py, started by the SDK); a resource
    that is no text, or a server that is not configured, is a warning."""
    url = f"{server.url}/replay/openai-chat/text-with-usage.sse"
    request = {"template": "openai", "url": url,
               "messages": [{"role": "user", "content": "When?"}],
               "context": [{"type": "mcp", "server": "fx", "uri": "fixture://notes"},
                           {"type": "mcp", "server": "fx", "uri": "fixture://logo"},
                           {"type": "mcp", "server": "nope", "uri": "x://y"}]}
    run = chatpipe("send", "--request", "-", "--output", "ndjson", input=json.dumps(request),
                   extra_env=mcp_env)
    events = ndjson(run.stdout)
    assert events[-1]["type"] == "done", run.stdout + run.stderr
    warnings = [e for e in events if e["type"] == "warning"]
    assert [(w["item"], w["subject"]) for w in warnings] == [(1, "fx:fixture://logo"),
                                                            (2, "nope:x://y")]
    assert "no text" in warnings[0]["message"] and "nope" in warnings[1]["message"]
    system = server.requests[0]["body"]["messages"][0]["content"]
    assert "## fx:fixture://notes\n```\nThe deploy key rotates on Fridays.\n```" in system


def test_the_context_event_gives_the_models_context_window(server, chatpipe, env, tmp_path):
    """Where the endpoint's model list (as ``chatpipe models`` cached it)
    gives the model's context window, the context event says it."""
    from test_models import json_reply

    server.add("/api/v1/models", json_reply({"data": [
        {"id": "big/model", "context_length": 131072}, {"id": "other/model"}]}))
    server.add("/api/v1/chat/completions", lambda body: server.get_reply_for(
        "/replay/openai-chat/text-with-usage.sse"))
    template = tmp_path / "router.json"
    template.write_text(json.dumps({
        "chatpipe": {"url": f"{server.url}/api/v1/chat/completions"},
        "model": "big/model", "stream": True, "messages": []}))
    listed = chatpipe("models", str(template), "--json")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout)[0]["context_window"] == 131072
    (tmp_path / "a.txt").write_text("hello\n")
    runs = {model: chatpipe("send", str(template), "--model", model, "-f", str(tmp_path / "a.txt"),
                            "-m", "hi", "--output", "ndjson")
            for model in ("big/model", "other/model")}
    context = {m: next(e for e in ndjson(r.stdout) if e["type"] == "context")
               for m, r in runs.items()}
    assert context["big/model"]["context_window"] == 131072
    assert "context_window" not in context["other/model"]


def test_files_are_read_when_sent_and_the_dry_run_is_the_body_sent(server, chatpipe, tmp_path):
    """The same request sent twice reads the file twice (an edit between the
    sends changes the second body), and ``--dry-run`` prints exactly the
    body the server then receives (the same keys and values, byte for
    byte as JSON)."""
    url = f"{server.url}/replay/openai-chat/text-with-usage.sse"
    notes = tmp_path / "notes.md"
    request = ["send", "openai", "--url", url, "-f", str(notes), "-m", "Sum it up."]
    notes.write_text("version one\n")
    shown = chatpipe(*request, "--dry-run")
    assert shown.returncode == 0 and server.requests == [], shown.stderr
    assert chatpipe(*request).returncode == 0
    assert json.loads(shown.stdout) == server.requests[0]["body"]
    notes.write_text("version two\n")
    assert chatpipe(*request).returncode == 0
    first, second = (r["body"]["messages"][0]["content"] for r in server.requests)
    assert "version one" in first and "version two" in second and first != second
