"""chatpipe through a real gateway: the LiteLLM proxy on 127.0.0.1.

The proxy (``litellm --config``, from tests/gateway-requirements.txt, which
``make test-gateway`` installs into .venv-gateway) stands in front of a
replay upstream (tests/replay_server.py) and is reached by ``chatpipe send``
with each API's bundled template: OpenAI chat completions, Responses,
Anthropic Messages and Gemini.  The proxy parses what chatpipe sends, turns
it into its own request to the upstream and streams the upstream's answer
back; the tests check the answer, and that the question, an image (a real
PNG) and a document (a real PDF) reach the upstream, the media as their
base64 bytes in a field that is not text: proof that chatpipe's shapes are
ones an independent parser accepts.

Skipped, with a message, when LiteLLM is not installed (``make test`` in
the main venv).  The proxy gets no database, a local model cost map, no
telemetry, and HTTP(S) proxy variables that point at a closed port (only
127.0.0.1 is exempt), so a request to the internet would fail instead of
leaving the machine.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import socket
import struct
import subprocess
import sys
import time
import zlib
from importlib.util import find_spec
from pathlib import Path
from typing import NamedTuple

import pytest
import requests

from conftest import EXPECTED, STREAMS, ndjson
from replay_server import Reply, ReplayServer

if find_spec("litellm") is None:
    pytest.skip("LiteLLM is not installed: `make test-gateway` installs it "
                "(tests/gateway-requirements.txt) in .venv-gateway and runs this test",
                allow_module_level=True)

LITELLM = Path(sys.executable).with_name("litellm")

#: The proxy's own key (its master key); chatpipe sends it as each API's key.
GATEWAY_KEY = "sk-gateway-CHATPIPE-0123456789"
#: The key the proxy sends to the upstream.
UPSTREAM_KEY = "sk-upstream-CHATPIPE-9876543210"
QUESTION = "What do the picture and the document show?"
GEMINI_MODEL = "gemini-2.5-flash"
#: The fields that may carry an attachment's base64 bytes upstream: a data
#: URL (OpenAI chat's image_url.url, Responses' image_url, an OpenAI file's
#: file_data), or an Anthropic source's or a Gemini inlineData's data,
#: beside its MIME type.
MEDIA_FIELDS = {"url", "image_url", "file_data", "data"}

#: API -> (bundled template, proxy model name, the proxy's route (the
#: model's name in it for Gemini), LiteLLM's model, the upstream path it
#: posts to, the recording the upstream answers with).
APIS = {
    "openai-chat": ("openai", "gw-openai", "/v1/chat/completions", "openai/gpt-4o-mini",
                    "/openai/v1/chat/completions", "openai-chat/text-with-usage.sse"),
    "openai-responses": ("openai-responses", "gw-openai", "/v1/responses", "openai/gpt-4o-mini",
                         "/openai/v1/responses", "openai-responses/basic-text.sse"),
    "anthropic": ("anthropic", "gw-anthropic", "/v1/messages", "anthropic/claude-sonnet-4-5",
                  "/anthropic/v1/messages", "anthropic/basic.sse"),
    "gemini": ("gemini", "gw-gemini", "/v1beta/models/gw-gemini:streamGenerateContent?alt=sse",
               f"gemini/{GEMINI_MODEL}",
               f"/gemini/v1beta/models/{GEMINI_MODEL}:streamGenerateContent",
               "gemini/basic-text-no-blank-lines.sse"),
}

def png_bytes(width: int = 4, height: int = 3) -> bytes:
    """A real RGB PNG of WIDTH x HEIGHT pixels (a colour gradient), as bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    rows = b"".join(b"\x00" + bytes(v for x in range(width) for v in (x * 60, y * 80, 200))
                    for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))


def pdf_bytes(text: str = "chatpipe gateway test") -> bytes:
    """A real one-page PDF 1.4 that shows TEXT (ASCII), with a correct xref table."""
    stream = f"BT /F1 18 Tf 36 96 Td ({text}) Tj ET".encode("ascii")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 300 144] "
        b"/Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream),
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def proxy_config(upstream: str) -> str:
    """The proxy's config (YAML is a superset of JSON): the model names of
    :data:`APIS` routed to UPSTREAM, each provider under its own path."""
    bases = {"openai": f"{upstream}/openai/v1", "anthropic": f"{upstream}/anthropic",
             "gemini": f"{upstream}/gemini/v1beta"}
    models = {name: model for _, name, _, model, _, _ in APIS.values()}
    return json.dumps({
        "model_list": [{"model_name": name, "litellm_params": {
            "model": model, "api_base": bases[model.split("/")[0]], "api_key": UPSTREAM_KEY}}
            for name, model in models.items()],
        "general_settings": {"master_key": GATEWAY_KEY},
        "litellm_settings": {"telemetry": False, "drop_params": False},
    }, indent=2)


class Gateway(NamedTuple):
    """The running proxy: its URL, its upstream, and the trap: a listening
    socket that the proxy's HTTP(S) proxy variables point at, which no
    request to anything but 127.0.0.1 should reach."""

    url: str
    upstream: ReplayServer
    trap: socket.socket


def offline_env(tmp_path: Path, trap: socket.socket) -> dict[str, str]:
    """The environment of the proxy: no keys or database from ours, the
    bundled model cost map, HOME in TMP_PATH, Hugging Face offline, and
    HTTP(S) proxies at TRAP's port for anything but 127.0.0.1."""
    env = {k: v for k, v in os.environ.items()
           if not k.upper().endswith(("_API_KEY", "_PROXY")) and k != "DATABASE_URL"}
    dead = "http://127.0.0.1:%d" % trap.getsockname()[1]
    env.update({
        "LITELLM_LOCAL_MODEL_COST_MAP": "True", "HF_HUB_OFFLINE": "1", "HOME": str(tmp_path),
        "HTTP_PROXY": dead, "HTTPS_PROXY": dead, "ALL_PROXY": dead,
        "http_proxy": dead, "https_proxy": dead, "all_proxy": dead,
        "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
    })
    return env


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    """A :class:`Gateway`: the LiteLLM proxy on 127.0.0.1 in front of a
    replay upstream, for the module's tests."""
    tmp = tmp_path_factory.mktemp("gateway")
    with ReplayServer() as upstream, socket.socket() as trap:
        trap.bind(("127.0.0.1", 0))
        trap.listen(16)
        for _, _, _, _, path, recording in APIS.values():
            upstream.add(path, Reply([(STREAMS / recording).read_bytes()]))
        config = tmp / "config.yaml"
        config.write_text(proxy_config(upstream.url), encoding="utf-8")
        port = free_port()
        log = (tmp / "litellm.log").open("wb")
        proc = subprocess.Popen([str(LITELLM), "--config", str(config), "--host", "127.0.0.1",
                                 "--port", str(port), "--num_workers", "1"],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=offline_env(tmp, trap), cwd=tmp)
        url = f"http://127.0.0.1:{port}"
        local = requests.Session()
        local.trust_env = False  # no HTTP proxy of ours between us and 127.0.0.1
        try:
            deadline = time.monotonic() + 120
            while True:
                if proc.poll() is not None:
                    pytest.fail("litellm exited: " + (tmp / "litellm.log").read_text(errors="replace"))
                try:
                    if local.get(url + "/health/liveliness", timeout=2).ok:
                        break
                except requests.ConnectionError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail("litellm did not start in 120 s: "
                                + (tmp / "litellm.log").read_text(errors="replace")[-4000:])
                time.sleep(0.25)
            yield Gateway(url, upstream, trap)
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()


def send(chatpipe, api: str, proxy: str, *args: str):
    """Run ``chatpipe send`` with API's template through the proxy; return
    (the CompletedProcess, its events)."""
    template, name, route = APIS[api][:3]
    model = [] if api == "gemini" else ["--model", name]
    keys = {k: GATEWAY_KEY for k in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY")}
    run = chatpipe("send", template, "--url", proxy + route, *model, *args, "-m", QUESTION,
                   "--output", "ndjson", extra_env=keys, timeout=120)
    return run, ndjson(run.stdout)


def upstream_request(upstream: ReplayServer, api: str) -> dict:
    """The one request the upstream got for API, ``{"path", "headers",
    "body", ...}`` (then forgotten); fails if it got none or more."""
    path = APIS[api][4]
    got = [r for r in upstream.requests if r["path"].split("?")[0] == path]
    assert len(got) == 1, [r["path"] for r in upstream.requests]
    upstream.requests.clear()
    assert isinstance(got[0]["body"], dict), got[0]["body"]
    return got[0]


def holders(value, needle: str, parent: dict | None = None, key: str = "") -> list[tuple[str, dict]]:
    """Where the string values in VALUE (JSON) that contain NEEDLE are: a
    list of (key, the object that has it)."""
    if isinstance(value, dict):
        return [h for name, item in value.items() for h in holders(item, needle, value, name)]
    if isinstance(value, list):
        return [h for item in value for h in holders(item, needle, parent, key)]
    return [(key, parent)] if isinstance(value, str) and needle in value else []


@functools.cache
def attach_option() -> str | None:
    """send's option that attaches a file (``-a``), or None before it exists."""
    help_text = subprocess.run([sys.executable, "-m", "chatpipe", "send", "--help"],
                               capture_output=True, text=True, timeout=60).stdout
    return "-a" if "-a PATH" in help_text or "-a FILE" in help_text or " -a," in help_text else None


@pytest.mark.parametrize("api", sorted(APIS))
def test_a_question_through_the_proxy(api, gateway, chatpipe):
    """The proxy takes chatpipe's key and body, asks the upstream with its
    own key, and chatpipe reads the answer it streams back."""
    proxy, upstream, _ = gateway
    run, events = send(chatpipe, api, proxy)
    assert run.returncode == 0 and events[-1]["type"] == "done", (
        run.stdout + run.stderr + str([r["path"] for r in upstream.requests]))
    recording = APIS[api][5]
    assert "".join(e["content"] for e in events if e["type"] == "delta") == EXPECTED[recording]["text"]
    request = upstream_request(upstream, api)
    body = request["body"]
    assert [key for key, _ in holders(body, QUESTION)] == ["text" if api == "gemini" else "content"], body
    assert holders(body, "You are a helpful assistant.")
    sent = json.dumps([request["path"], request["headers"], body])
    assert UPSTREAM_KEY in sent and GATEWAY_KEY not in sent


@pytest.mark.parametrize("api", sorted(APIS))
def test_an_image_and_a_pdf_reach_the_upstream(api, gateway, chatpipe, tmp_path):
    option = attach_option()
    if option is None:
        pytest.skip("chatpipe send has no -a PATH option (attachments) yet")
    proxy, upstream, _ = gateway
    image, document = tmp_path / "picture.png", tmp_path / "report.pdf"
    image.write_bytes(png_bytes())
    document.write_bytes(pdf_bytes())
    run, events = send(chatpipe, api, proxy, option, str(image), option, str(document))
    assert run.returncode == 0 and events[-1]["type"] == "done", run.stdout + run.stderr
    body = upstream_request(upstream, api)["body"]
    assert holders(body, QUESTION), body
    for path, mime in ((image, "image/png"), (document, "application/pdf")):
        encoded = base64.b64encode(path.read_bytes()).decode("ascii")
        found = holders(body, encoded)
        assert found, f"{path.name} did not reach the upstream: {json.dumps(body)[:2000]}"
        for key, holder in found:      # whole, typed, in a media field
            assert key in MEDIA_FIELDS, (key, holder)
            if holder[key].startswith("data:"):
                assert holder[key] == f"data:{mime};base64,{encoded}"
            else:
                assert holder[key] == encoded and mime in holder.values(), holder


def test_the_proxy_asked_nothing_but_the_upstream(gateway):
    """Last: no connection reached the trap, the HTTP(S) proxy the gateway
    was given for everything but 127.0.0.1 (a model cost map, telemetry)."""
    gateway.trap.setblocking(False)
    with pytest.raises(BlockingIOError):
        connection, _ = gateway.trap.accept()
        connection.close()
