"""One HTTP client: the rules of :mod:`chatpipe.transport` hold for every
request chatpipe sends, the streaming POST (``chatpipe send``) and the model
list's GET (``chatpipe models``) alike; each test runs against both, on real
servers on 127.0.0.1 (two ports: two origins).

- Redirects: only to the same origin (scheme, host, port), a POST's only
  when they keep the method and the body (307, 308); the API key never goes
  to another origin, whatever the ``Location`` says, and is never printed.
- Errors: an error body that echoes the key comes back redacted, in every
  output mode.

(tests/test_secrets.py scans everything chatpipe writes for the key;
tests/test_models.py has the model list's own wording.)
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import FAKE_KEY, STREAMS
from replay_server import Reply, ReplayServer
from test_secrets import assert_clean

#: The recording a followed POST gets (OpenAI Chat Completions).
TEXT = "openai-chat/text-with-usage.sse"

#: An OpenAI-style model list, for a followed GET.
MODELS = {"object": "list", "data": [{"id": "m-1", "object": "model", "owned_by": "x"}]}

#: Each API's request path, model list path and key header (and the
#: environment variable of its key).
APIS = {
    "openai-chat": ("/v1/chat/completions", "/v1/models", "Authorization", "OPENAI_API_KEY"),
    "anthropic-messages": ("/v1/messages", "/v1/models", "x-api-key", "ANTHROPIC_API_KEY"),
    "gemini": ("/v1beta/models/m:streamGenerateContent", "/v1beta/models", "x-goog-api-key",
               "GEMINI_API_KEY"),
}


@dataclass(frozen=True)
class Client:
    """One of chatpipe's requests, as a command: METHOD, the redirects it
    follows on the same origin (FOLLOWED), the command and its arguments
    (ARGS, after the template; JSON_ARGS for JSON output)."""

    method: str
    followed: frozenset
    command: str
    args: tuple
    json_args: tuple

    def path(self, api: str) -> str:
        """The path the request goes to for API."""
        chat, models, _, _ = APIS[api]
        return chat if self.method == "POST" else models

    def ok(self) -> Reply:
        """A good answer."""
        if self.method == "POST":
            return Reply([(STREAMS / TEXT).read_bytes()])
        return Reply([json.dumps(MODELS).encode()], framing="length",
                     content_type="application/json")

    def run(self, chatpipe, template: str, *, json_output: bool = False, extra_env=None):
        args = self.json_args if json_output else self.args
        return chatpipe(self.command, template, *args, extra_env=extra_env)


POST = Client("POST", frozenset({307, 308}), "send", ("-m", "hi"),
              ("-m", "hi", "--output", "ndjson"))
GET = Client("GET", frozenset({301, 302, 303, 307, 308}), "models", ("--refresh",),
             ("--refresh", "--json"))
CLIENTS = pytest.mark.parametrize("client", [POST, GET], ids=["post-send", "get-models"])


@pytest.fixture(autouse=True)
def _private_cache(env, tmp_path):
    """Model lists cached under the test's own folder."""
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")


def template(tmp_path, server_url: str, api: str = "openai-chat") -> str:
    """A template of API at SERVER_URL whose key header is filled from the
    environment; its path."""
    chat, _, header, variable = APIS[api]
    value = ("Bearer " if header == "Authorization" else "") + "${env:" + variable + "}"
    url = server_url + chat + ("?alt=sse" if api == "gemini" else "")
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"chatpipe": {"api": api, "url": url, "headers": {header: value},
                                             "max_retries": 0},
                                "model": "m", "stream": True, "messages": []}))
    return str(path)


class Trap:
    """Another origin: a server on its own port that records every request
    it gets (any method, any path) and answers none of them well."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict]] = []
        trap = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _any(self):
                trap.requests.append((self.command, self.path, dict(self.headers.items())))
                self.send_response(500)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST = do_PUT = do_HEAD = _any

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "Trap":
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def redirect(location: str, status: int) -> Reply:
    return Reply([b""], status=status, framing="length", headers={"Location": location})


# ---- redirects ---------------------------------------------------------------------------

@CLIENTS
@pytest.mark.parametrize("api", list(APIS))
@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_no_redirect_to_another_origin_is_followed(chatpipe, tmp_path, client, api, status):
    with ReplayServer() as origin, Trap() as other:
        origin.add(client.path(api), redirect(f"{other.url}{client.path(api)}", status))
        variable = APIS[api][3]
        proc = client.run(chatpipe, template(tmp_path, origin.url, api),
                          extra_env={variable: FAKE_KEY})
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert f"redirected (HTTP {status}) to 127.0.0.1:{other.port}" in proc.stderr
        assert other.requests == []               # nothing at all went to the other origin
        assert len(origin.requests) == 1
        assert_clean(proc.stdout + proc.stderr, FAKE_KEY)


#: Locations that name another origin, however they spell it ({o}: the
#: origin's port, {p}: the other's).
OTHER_ORIGINS = {
    "another-port": "http://127.0.0.1:{p}/x",
    "scheme-relative": "//127.0.0.1:{p}/x",
    "upper-case-scheme": "HTTP://127.0.0.1:{p}/x",
    "user-info-naming-the-origin": "http://127.0.0.1:{o}@127.0.0.1:{p}/x",
    "another-scheme-same-port": "https://127.0.0.1:{o}/x",
    "another-name-same-port": "http://localhost:{o}/x",
    "key-in-path-and-query": "http://127.0.0.1:{p}/" + FAKE_KEY + "?key=" + FAKE_KEY,
}


@CLIENTS
@pytest.mark.parametrize("location", list(OTHER_ORIGINS.values()), ids=list(OTHER_ORIGINS))
def test_the_key_stays_with_its_origin_whatever_the_location_says(chatpipe, tmp_path, client,
                                                                   location):
    with ReplayServer() as origin, Trap() as other:
        target = location.format(o=origin.url.rsplit(":", 1)[1], p=other.port)
        origin.add(client.path("openai-chat"), redirect(target, 307))
        proc = client.run(chatpipe, template(tmp_path, origin.url))
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert "redirected (HTTP 307)" in proc.stderr and "same host" in proc.stderr
        assert other.requests == []
        assert len(origin.requests) == 1
        assert_clean(proc.stdout + proc.stderr, FAKE_KEY)


@CLIENTS
def test_a_followed_redirect_to_another_origin_stops_there(chatpipe, tmp_path, client):
    """A same-origin redirect is followed; the next one, to another origin, is not."""
    with ReplayServer() as origin, Trap() as other:
        path = client.path("openai-chat")
        origin.add(path, redirect("/moved", 307))
        origin.add("/moved", redirect(f"{other.url}/x", 307))
        proc = client.run(chatpipe, template(tmp_path, origin.url))
        assert proc.returncode == 1 and "redirected (HTTP 307)" in proc.stderr
        assert [r["path"].split("?")[0] for r in origin.requests] == [path, "/moved"]
        assert other.requests == []


@CLIENTS
@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_same_origin_redirect_is_followed_as_the_method_allows(chatpipe, tmp_path, client,
                                                                  status):
    """A POST follows only 307 and 308 (never turned into a GET, its body
    kept); a GET follows each; the key goes along, to the same origin."""
    with ReplayServer() as origin:
        origin.add(client.path("openai-chat"), redirect("/moved?page=2", status))
        origin.add("/moved", client.ok())
        proc = client.run(chatpipe, template(tmp_path, origin.url), json_output=True)
        if status not in client.followed:
            assert proc.returncode == 1 and "follows only 307 and 308" in proc.stdout
            assert len(origin.requests) == 1
            return
        assert proc.returncode == 0, proc.stderr
        first, second = origin.requests
        assert second["path"] == "/moved?page=2"      # the Location's query, not the request's
        assert second.get("method", "POST") == client.method
        assert second["body"] == first["body"]
        assert second["headers"]["Authorization"] == f"Bearer {FAKE_KEY}"
        assert_clean(proc.stdout + proc.stderr, FAKE_KEY)


# ---- errors ------------------------------------------------------------------------------

#: Error bodies that echo the key: a provider's JSON message, plain text, an
#: error event in a server-sent event body.
ECHOES = {
    "json": (json.dumps({"error": {"message": f"Incorrect API key provided: {FAKE_KEY}.",
                                   "type": "invalid_request_error"}}), "application/json"),
    "text": (f"bad key {FAKE_KEY} (denied)", "text/plain"),
    "sse-event": ("event: error\ndata: " + json.dumps({"error": {"message": f"key {FAKE_KEY}"}})
                  + "\n\n", "text/event-stream"),
}


@CLIENTS
@pytest.mark.parametrize("echo", list(ECHOES))
@pytest.mark.parametrize("json_output", [False, True], ids=["text-out", "json-out"])
def test_an_error_body_echoing_the_key_comes_back_redacted(chatpipe, tmp_path, client, echo,
                                                          json_output):
    body, ctype = ECHOES[echo]
    with ReplayServer() as origin:
        origin.add(client.path("openai-chat"), Reply([body.encode()], status=401, framing="length",
                                                     content_type=ctype))
        proc = client.run(chatpipe, template(tmp_path, origin.url), json_output=json_output)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert len(origin.requests) == 1                           # a 401 is not retried
        out = proc.stdout + proc.stderr
        assert "***" in out
        assert_clean(out, FAKE_KEY)
        if json_output:
            (event,) = [json.loads(line) for line in proc.stdout.splitlines()
                        if json.loads(line).get("type") == "error"]
            assert event["status"] == 401 and not event["retryable"]
            assert "***" in event["message"]
