"""``chatpipe models TEMPLATE``: each provider's model list, from real HTTP
servers on 127.0.0.1 answering in the provider's own shape; the cache;
errors; the API key never in any output; and the real llama.cpp server."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chatpipe import models
from conftest import FAKE_KEY, ROOT
from replay_server import Reply, ReplayServer


def json_reply(doc, status=200) -> Reply:
    return Reply([json.dumps(doc).encode()], status=status, framing="length",
                 content_type="application/json")


#: OpenAI's GET /v1/models (https://platform.openai.com/docs/api-reference/models/list).
OPENAI_LIST = {"object": "list", "data": [
    {"id": "gpt-4o-mini", "object": "model", "created": 1721172741, "owned_by": "system"},
    {"id": "dall-e-3", "object": "model", "created": 1698785189, "owned_by": "system"},
    {"id": "gpt-4o", "object": "model", "created": 1715367049, "owned_by": "system"},
]}


@pytest.fixture
def cache(tmp_path, env):
    """A private user cache folder (XDG_CACHE_HOME) for the subprocesses;
    the folder of the cached lists."""
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    return tmp_path / "cache" / "chatpipe" / "models"


def run_models(chatpipe, *args, **kwargs):
    proc = chatpipe("models", *args, **kwargs)
    assert FAKE_KEY not in proc.stdout + proc.stderr
    return proc


def only_request(server):
    gets = [r for r in server.requests if r.get("method") == "GET"]
    assert len(gets) == 1, server.requests
    return gets[0]


# ---- each provider -----------------------------------------------------------

def test_openai_chat_lists_ids_sorted(server, chatpipe, cache):
    server.add("/v1/models", json_reply(OPENAI_LIST))
    proc = run_models(chatpipe, "openai", "--url", f"{server.url}/v1/chat/completions")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "dall-e-3\ngpt-4o\ngpt-4o-mini\n"
    assert proc.stderr == ""
    sent = only_request(server)
    assert sent["path"] == "/v1/models"
    assert sent["headers"]["Authorization"] == f"Bearer {FAKE_KEY}"


def test_openai_json_output(server, chatpipe, cache):
    server.add("/v1/models", json_reply(OPENAI_LIST))
    proc = run_models(chatpipe, "openai", "--json", "--url", f"{server.url}/v1/chat/completions")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [
        {"id": "dall-e-3", "created": 1698785189, "owned_by": "system"},
        {"id": "gpt-4o", "created": 1715367049, "owned_by": "system"},
        {"id": "gpt-4o-mini", "created": 1721172741, "owned_by": "system"},
    ]


def test_openai_responses(server, chatpipe, cache):
    server.add("/v1/models", json_reply(OPENAI_LIST))
    proc = run_models(chatpipe, "openai-responses", "--url", f"{server.url}/v1/responses")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["dall-e-3", "gpt-4o", "gpt-4o-mini"]
    assert only_request(server)["path"] == "/v1/models"


def test_anthropic_pages(server, chatpipe, cache):
    # https://platform.claude.com/docs/en/api/models-list
    first = {"data": [
        {"type": "model", "id": "claude-sonnet-4-5-20250929", "display_name": "Claude Sonnet 4.5",
         "created_at": "2025-09-29T00:00:00Z"},
        {"type": "model", "id": "claude-opus-4-1-20250805", "display_name": "Claude Opus 4.1",
         "created_at": "2025-08-05T00:00:00Z"}],
        "has_more": True, "first_id": "claude-sonnet-4-5-20250929",
        "last_id": "claude-opus-4-1-20250805"}
    second = {"data": [
        {"type": "model", "id": "claude-3-5-haiku-20241022", "display_name": "Claude Haiku 3.5",
         "created_at": "2024-10-22T00:00:00Z"}],
        "has_more": False, "first_id": "claude-3-5-haiku-20241022",
        "last_id": "claude-3-5-haiku-20241022"}
    server.add("/v1/models", [json_reply(first), json_reply(second)])
    proc = run_models(chatpipe, "anthropic", "--json", "--url", f"{server.url}/v1/messages",
                      extra_env={"ANTHROPIC_API_KEY": FAKE_KEY})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [
        {"id": "claude-3-5-haiku-20241022", "created": 1729555200,
         "display_name": "Claude Haiku 3.5"},
        {"id": "claude-opus-4-1-20250805", "created": 1754352000,
         "display_name": "Claude Opus 4.1"},
        {"id": "claude-sonnet-4-5-20250929", "created": 1759104000,
         "display_name": "Claude Sonnet 4.5"},
    ]
    assert [r["path"] for r in server.requests] == [
        "/v1/models?limit=1000", "/v1/models?limit=1000&after_id=claude-opus-4-1-20250805"]
    headers = server.requests[0]["headers"]
    assert headers["x-api-key"] == FAKE_KEY
    assert headers["anthropic-version"] == "2023-06-01"


def test_gemini_streaming_models_without_prefix(server, chatpipe, cache):
    # https://ai.google.dev/api/models#method:-models.list
    first = {"models": [
        {"name": "models/gemini-2.5-flash", "version": "001", "displayName": "Gemini 2.5 Flash",
         "inputTokenLimit": 1048576, "outputTokenLimit": 65536,
         "supportedGenerationMethods": ["generateContent", "countTokens", "createCachedContent",
                                        "batchGenerateContent"]},
        {"name": "models/gemini-embedding-001", "displayName": "Gemini Embedding 001",
         "supportedGenerationMethods": ["embedContent", "countTextTokens"]}],
        "nextPageToken": "page+2/="}
    second = {"models": [
        {"name": "models/gemini-2.5-pro", "displayName": "Gemini 2.5 Pro",
         "supportedGenerationMethods": ["generateContent", "streamGenerateContent"]},
        {"name": "models/imagen-4.0-generate-001", "displayName": "Imagen 4",
         "supportedGenerationMethods": ["predict"]},
        {"name": "models/gemini-next", "displayName": "Gemini Next"}]}
    server.add("/v1beta/models", [json_reply(first), json_reply(second)])
    url = f"{server.url}/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    proc = run_models(chatpipe, "gemini", "--json", "--url", url,
                      extra_env={"GEMINI_API_KEY": FAKE_KEY})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [
        {"id": "gemini-2.5-flash", "display_name": "Gemini 2.5 Flash", "context_window": 1048576},
        {"id": "gemini-2.5-pro", "display_name": "Gemini 2.5 Pro"},
        {"id": "gemini-next", "display_name": "Gemini Next"},
    ]
    assert [r["path"] for r in server.requests] == [
        "/v1beta/models?pageSize=1000", "/v1beta/models?pageSize=1000&pageToken=page%2B2%2F%3D"]
    assert server.requests[0]["headers"]["x-goog-api-key"] == FAKE_KEY


def test_ollama_tags(server, chatpipe, cache):
    # https://docs.ollama.com/api/tags
    server.add("/api/tags", json_reply({"models": [
        {"name": "llama3.2:latest", "model": "llama3.2:latest",
         "modified_at": "2025-10-03T23:34:03.409490317-07:00", "size": 2019393189,
         "digest": "a80c4f17acd55265feec403c7aef86be0c25983ab279d83f3bcd3abbcb5b8b72",
         "details": {"format": "gguf", "family": "llama", "families": ["llama"],
                     "parameter_size": "3.2B", "quantization_level": "Q4_K_M"}},
        {"name": "gemma3:270m", "model": "gemma3:270m", "modified_at": "2025-08-14T10:00:00Z",
         "size": 291554930, "digest": "e7d36fb2c3b3", "details": {"format": "gguf"}}]}))
    proc = run_models(chatpipe, "ollama", "--url", f"{server.url}/api/chat")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "gemma3:270m\nllama3.2:latest\n"
    assert only_request(server)["path"] == "/api/tags"


def test_a_model_files_path_as_id_is_listed_by_its_file_name(server, chatpipe, cache):
    """llama-cpp-python's server (scripts/local-server) gives the path of
    its model file as the id: it stays the id (what the server takes), and
    the file's name is its display name, first on its line in the text."""
    path = "/home/me/.cache/chatpipe/models/gemma3-270m-q4_k_m.gguf"
    server.add("/v1/models", json_reply({"object": "list", "data": [
        {"id": path, "object": "model", "owned_by": "me", "permissions": []},
        {"id": "meta-llama/Llama-3.1-8B", "object": "model", "owned_by": "me"}]}))
    url = f"{server.url}/v1/chat/completions"
    proc = run_models(chatpipe, "local", "--url", url)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"gemma3-270m-q4_k_m.gguf  ({path})\nmeta-llama/Llama-3.1-8B\n"
    proc = run_models(chatpipe, "local", "--json", "--url", url)
    assert json.loads(proc.stdout) == [
        {"id": path, "owned_by": "me", "display_name": "gemma3-270m-q4_k_m.gguf"},
        {"id": "meta-llama/Llama-3.1-8B", "owned_by": "me"}]


def test_template_whose_body_needs_a_model(server, chatpipe, cache):
    """litellm's body has ${model}: listing its models needs none."""
    server.add("/v1/models", json_reply(OPENAI_LIST))
    proc = run_models(chatpipe, "litellm", extra_env={"LITELLM_BASE_URL": server.url,
                                                      "LITELLM_API_KEY": FAKE_KEY})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["dall-e-3", "gpt-4o", "gpt-4o-mini"]
    assert only_request(server)["headers"]["Authorization"] == f"Bearer {FAKE_KEY}"


@pytest.mark.parametrize("api, url, expected", [
    ("openai-chat", "https://api.openai.com/v1/chat/completions", "https://api.openai.com/v1/models"),
    ("openai-chat", "https://openrouter.ai/api/v1/chat/completions/",
     "https://openrouter.ai/api/v1/models"),
    ("openai-chat", "https://x.example/v1/chat/completions?api-version=2",
     "https://x.example/v1/models?api-version=2"),
    ("openai-responses", "https://api.openai.com/v1/responses", "https://api.openai.com/v1/models"),
    ("anthropic-messages", "https://api.anthropic.com/v1/messages",
     "https://api.anthropic.com/v1/models"),
    ("gemini", "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash"
               ":streamGenerateContent?alt=sse",
     "https://generativelanguage.googleapis.com/v1beta/models"),
    ("gemini", "https://generativelanguage.googleapis.com/v1/models/m:streamGenerateContent"
               "?alt=sse&key=K", "https://generativelanguage.googleapis.com/v1/models?key=K"),
    ("ollama", "http://127.0.0.1:11434/api/chat", "http://127.0.0.1:11434/api/tags"),
])
def test_list_url(api, url, expected):
    assert models.list_url(api, url) == expected


# ---- the cache ----------------------------------------------------------------

def test_cache_for_an_hour_and_refresh(server, chatpipe, cache):
    server.add("/v1/models", json_reply(OPENAI_LIST))
    url = f"{server.url}/v1/chat/completions"
    assert run_models(chatpipe, "openai", "--url", url).returncode == 0
    assert len(server.requests) == 1
    (file,) = cache.glob("list-*.json")
    assert FAKE_KEY not in file.read_text()

    # Cached: the server is not asked again, whatever it would say now.
    server.add("/v1/models", json_reply({"object": "list", "data": [{"id": "new-model"}]}))
    proc = run_models(chatpipe, "openai", "--url", url)
    assert proc.stdout == "dall-e-3\ngpt-4o\ngpt-4o-mini\n"
    assert len(server.requests) == 1

    # --refresh asks again, and caches the new list.
    proc = run_models(chatpipe, "openai", "--url", url, "--refresh")
    assert proc.stdout == "new-model\n"
    assert len(server.requests) == 2
    assert run_models(chatpipe, "openai", "--url", url).stdout == "new-model\n"
    assert len(server.requests) == 2

    # After an hour, the list is asked again.
    doc = json.loads(file.read_text())
    doc["fetched"] = time.time() - 3601
    file.write_text(json.dumps(doc))
    server.add("/v1/models", json_reply({"object": "list", "data": [{"id": "newer"}]}))
    assert run_models(chatpipe, "openai", "--url", url).stdout == "newer\n"
    assert len(server.requests) == 3


def test_cache_is_per_endpoint(chatpipe, cache):
    with ReplayServer() as one, ReplayServer() as two:
        one.add("/v1/models", json_reply({"object": "list", "data": [{"id": "one"}]}))
        two.add("/v1/models", json_reply({"object": "list", "data": [{"id": "two"}]}))
        for srv, name in ((one, "one"), (two, "two"), (one, "one")):
            proc = run_models(chatpipe, "openai", "--url", f"{srv.url}/v1/chat/completions")
            assert proc.stdout == f"{name}\n"
        assert len(one.requests) == 1 and len(two.requests) == 1


# ---- errors ----------------------------------------------------------------------

def test_no_model_list_404(server, chatpipe, cache):
    proc = run_models(chatpipe, "openai", "--url", f"{server.url}/v1/chat/completions")
    assert proc.returncode == 1
    assert proc.stdout == ""
    port = server.url.rsplit(":", 1)[1]
    assert proc.stderr == (
        f"chatpipe: error: the endpoint 127.0.0.1:{port} has no model list "
        f"(GET {server.url}/v1/models answered HTTP 404): type the model name\n")
    assert not cache.exists() or not list(cache.glob("list-*.json"))


def test_no_model_list_json_error_line(server, chatpipe, cache):
    proc = run_models(chatpipe, "openai", "--json", "--url", f"{server.url}/v1/chat/completions")
    assert proc.returncode == 1
    (event,) = [json.loads(line) for line in proc.stdout.splitlines()]
    assert event["type"] == "error" and event["kind"] == "no_model_list"
    assert "has no model list" in event["message"] and "HTTP 404" in event["message"]
    assert "has no model list" in proc.stderr


def test_html_page_is_no_model_list(server, chatpipe, cache):
    server.add("/v1/models", Reply([b"<html><body>Welcome</body></html>"], framing="length",
                                   content_type="text/html"))
    proc = run_models(chatpipe, "openai", "--url", f"{server.url}/v1/chat/completions")
    assert proc.returncode == 1
    assert "has no model list" in proc.stderr
    assert "answered HTTP 200 with an HTML page): type the model name" in proc.stderr


def test_http_error_gives_provider_message_redacted(server, chatpipe, cache):
    body = {"error": {"message": f"Incorrect API key provided: {FAKE_KEY}.",
                      "type": "invalid_request_error", "code": "invalid_api_key"}}
    server.add("/v1/models", json_reply(body, status=401))
    proc = run_models(chatpipe, "openai", "--url", f"{server.url}/v1/chat/completions")
    assert proc.returncode == 1
    assert proc.stderr == "chatpipe: error: HTTP 401: Incorrect API key provided: ***.\n"
    proc = run_models(chatpipe, "openai", "--json", "--url", f"{server.url}/v1/chat/completions")
    assert json.loads(proc.stdout) == {"type": "error", "message": "Incorrect API key provided: ***.",
                                       "status": 401, "retryable": False}


def test_key_echoed_by_the_server_is_redacted(server, chatpipe, cache):
    server.add("/v1/models", json_reply({"object": "list", "data": [
        {"id": "ok-model"}, {"id": f"echo-{FAKE_KEY}", "owned_by": FAKE_KEY}]}))
    url = f"{server.url}/v1/chat/completions"
    assert run_models(chatpipe, "openai", "--url", url).stdout == "echo-***\nok-model\n"
    proc = run_models(chatpipe, "openai", "--json", "--url", url)
    assert {"id": "echo-***", "owned_by": "***"} in json.loads(proc.stdout)
    for file in cache.glob("*"):
        assert FAKE_KEY not in file.read_text()


def test_connection_refused(chatpipe, cache):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = run_models(chatpipe, "openai", "--url", f"http://127.0.0.1:{port}/v1/chat/completions")
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"chatpipe: error: cannot connect to 127.0.0.1:{port}")
    proc = run_models(chatpipe, "openai", "--json", "--url",
                      f"http://127.0.0.1:{port}/v1/chat/completions")
    event = json.loads(proc.stdout)
    assert (event["kind"], event["host"]) == ("connect", f"127.0.0.1:{port}")


def test_usage_and_template_errors_exit_2(chatpipe, env, cache):
    proc = run_models(chatpipe, "no-such-template")
    assert proc.returncode == 2 and "no template named 'no-such-template'" in proc.stderr
    proc = run_models(chatpipe, "anthropic", extra_env={"ANTHROPIC_API_KEY": ""})
    assert proc.returncode == 2
    assert "environment variable ANTHROPIC_API_KEY is not set" in proc.stderr
    proc = run_models(chatpipe, "openai", "--var", "novalue")
    assert proc.returncode == 2
    assert run_models(chatpipe).returncode == 2


def test_unknown_endpoint_path(chatpipe, cache):
    proc = run_models(chatpipe, "openai", "--url", "http://127.0.0.1:9/v2/generate")
    assert proc.returncode == 1
    assert "no model list chatpipe knows of" in proc.stderr and "type the model name" in proc.stderr


# ---- the real local llama.cpp server -------------------------------------------

@pytest.mark.llama
@pytest.mark.skipif(os.environ.get("CHATPIPE_SKIP_LLAMA") == "1", reason="CHATPIPE_SKIP_LLAMA=1")
def test_real_llama_server_lists_its_model(tmp_path, env):
    """`chatpipe models local --url ...` against scripts/local-server: the
    model id llama-cpp-python gives is the model file it serves."""
    cache_home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    model = os.environ.get("CHATPIPE_MODEL") or str(
        cache_home / "chatpipe" / "models" / "gemma3-270m-q4_k_m.gguf")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    run_env = {**env, "CHATPIPE_MODEL": model, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "local-server"), "run", "--port", str(port),
         "--log", str(tmp_path / "server.log"), "--",
         sys.executable, "-m", "chatpipe", "models", "local",
         "--url", f"http://127.0.0.1:{port}/v1/chat/completions"],
        capture_output=True, text=True, env=run_env, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"{Path(model).name}  ({model})\n"
