"""Images and documents (issue 20): each API's shape, types, limits, saves.

The shapes are checked against tests/media_fixtures/sdk_requests.json, the
bodies that the official SDKs (openai, anthropic, google-genai) sent for
the same question and files to a server on 127.0.0.1 (see
tests/media_fixtures/record_sdk_requests.py).  Ollama has no SDK of those:
its shape is its reference's (``images``, bare base64).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys

import pytest

from chatpipe import conversation, media
from chatpipe.dialects import mediaparts
from chatpipe.media import Media, MediaError
from chatpipe.prepare import prepare
from conftest import KEYS, ROOT, TESTS, ndjson

FIXTURES = TESTS / "media_fixtures"
SDK = json.loads((FIXTURES / "sdk_requests.json").read_text(encoding="utf-8"))["requests"]
FILES = {"png": "red.png", "jpeg": "blue.jpg", "pdf": "hello.pdf"}

#: API -> (bundled template, a recording of its API).
APIS = {
    "openai-chat": ("openai", "openai-chat/text-with-usage.sse"),
    "anthropic-messages": ("anthropic", "anthropic/basic.sse"),
    "gemini": ("gemini", "gemini/basic-text-no-blank-lines.sse"),
    "openai-responses": ("openai-responses", "openai-responses/basic-text.sse"),
    "ollama": ("ollama", "ollama/basic-text.ndjson"),
}


def history(api: str, body: dict) -> list:
    """The conversation of BODY in API's shape."""
    return body[{"gemini": "contents", "openai-responses": "input"}.get(api, "messages")]


def build(api: str, parts: list[dict], template: str | None = None, events=None, text="Describe."):
    """The body for API (its bundled template, or TEMPLATE) of a question
    TEXT with PARTS (what ``-a`` gives: a message of its own)."""
    _, request, _ = prepare(template or APIS[api][0], [
        {"role": "user", "content": text}, {"role": "user", "content": parts}],
        env=KEYS, warn=(events.append if events is not None else lambda e: None))
    return request.body


@pytest.mark.parametrize("kind", sorted(FILES))
@pytest.mark.parametrize("api", sorted(SDK))
def test_the_user_message_is_the_one_the_sdk_sends(api, kind):
    part = {"type": "document" if kind == "pdf" else "image", "path": str(FIXTURES / FILES[kind])}
    sent = history(api, build(api, [part]))[-1]
    assert sent == sdk_message(api, kind)


def sdk_message(api: str, kind: str) -> dict:
    """The user message the SDK sent for API and the file KIND.

    google-genai writes a Blob's fields as ``mime_type`` and its bytes in
    URL-safe base64; the API reads proto3 JSON, which takes both spellings
    of a field and both base64 alphabets, and its reference
    (https://ai.google.dev/api/caching#Blob) writes ``mimeType`` and
    standard base64, as chatpipe does: so the SDK's Blob is compared in
    that spelling, its bytes decoded."""
    message = history(api, SDK[api][kind])[-1]
    if api != "gemini":
        return message
    parts = []
    for part in message["parts"]:
        blob = part.get("inlineData")
        if blob:
            data = base64.urlsafe_b64decode(blob["data"])
            part = {"inlineData": {"mimeType": blob["mime_type"],
                                   "data": base64.b64encode(data).decode()}}
        parts.append(part)
    return {**message, "parts": parts}


@pytest.mark.parametrize("kind", ["png", "jpeg"])
def test_ollama_images_are_bare_base64_on_the_message(kind):
    data = (FIXTURES / FILES[kind]).read_bytes()
    sent = build("ollama", [{"type": "image", "path": str(FIXTURES / FILES[kind])}])["messages"][-1]
    assert sent == {"role": "user", "content": "Describe.",
                    "images": [base64.b64encode(data).decode()]}


def test_ollama_refuses_a_pdf_with_the_types_it_takes():
    with pytest.raises(MediaError, match=r"hello\.pdf: the Ollama API takes image/png, "
                                         r"image/jpeg, not application/pdf"):
        build("ollama", [{"type": "document", "path": str(FIXTURES / "hello.pdf")}])


def test_urls_go_as_urls_where_the_api_takes_them():
    image = {"type": "image", "url": "https://example.org/a.png"}
    pdf = {"type": "document", "url": "https://example.org/b.pdf"}
    assert history("openai-chat", build("openai-chat", [image]))[-1]["content"][1] == {
        "type": "image_url", "image_url": {"url": "https://example.org/a.png"}}
    assert history("anthropic-messages", build("anthropic-messages", [image, pdf]))[-1][
        "content"][1:] == [{"type": "image", "source": {"type": "url", "url": image["url"]}},
                           {"type": "document", "source": {"type": "url", "url": pdf["url"]}}]
    assert history("openai-responses", build("openai-responses", [image, pdf]))[-1][
        "content"][1:] == [{"type": "input_image", "image_url": image["url"], "detail": "auto"},
                           {"type": "input_file", "file_url": pdf["url"]}]
    for api, part in (("gemini", image), ("ollama", image), ("openai-chat", pdf)):
        with pytest.raises(MediaError, match=f"takes no {part['type']} by URL"):
            build(api, [part])
    with pytest.raises(MediaError, match="must be an http or https URL"):
        build("anthropic-messages", [{"type": "image", "url": "file:///etc/passwd"}])


def test_the_bytes_tell_the_type_a_png_named_jpg(tmp_path):
    fake = tmp_path / "photo.jpg"
    fake.write_bytes((FIXTURES / "red.png").read_bytes())
    events: list[dict] = []
    body = build("anthropic-messages", [{"type": "image", "path": str(fake)}], events=events)
    assert history("anthropic-messages", body)[-1]["content"][1]["source"]["media_type"] == "image/png"
    assert {"type": "warning", "kind": "media", "message": f"{fake}: its bytes are image/png but "
            "its name says image/jpeg; sent as image/png"} in events


def test_a_part_whose_type_cannot_be_told_or_is_no_image(tmp_path):
    odd = tmp_path / "blob"
    odd.write_bytes(b"\x00\x01\x02 not anything")
    with pytest.raises(MediaError, match="cannot tell its type"):
        build("openai-chat", [{"type": "image", "path": str(odd)}])
    with pytest.raises(MediaError, match="an image part, but its type is application/pdf"):
        build("openai-chat", [{"type": "image", "path": str(FIXTURES / "hello.pdf")}])
    with pytest.raises(MediaError, match="not valid base64"):
        build("openai-chat", [{"type": "image", "data": "%%%"}])


def big(kind: str, size: int, name: str = "f", mime: str | None = None) -> Media:
    """A Media of SIZE bytes, never on disk."""
    mime = mime or ("image/png" if kind == "image" else "application/pdf")
    return Media(kind, mime, name, name, bytes(size))


@pytest.mark.parametrize("found, limits, message", [
    ([big("image", 4 << 20, "huge.png")], mediaparts.ANTHROPIC,
     r"huge\.png: 5592408 bytes as base64, over the Anthropic Messages API's 5 MB per image"),
    ([big("image", 10, f"i{n}.png") for n in range(101)], mediaparts.ANTHROPIC,
     r"101 images \(the last: i100\.png\), over the Anthropic Messages API's 100 per request"),
    ([big("image", 8 << 20, "a.png"), big("image", 8 << 20, "b.png")], mediaparts.GEMINI,
     r"b\.png: brings the request to 22369624 bytes as base64, over the Gemini API's 20 MB "
     "of media per request"),
    ([big("document", 25 << 20, "big.pdf")], mediaparts.OPENAI_CHAT,
     r"big\.pdf: brings the request to \d+ bytes as base64, over the OpenAI chat completions "
     "API's 32 MB of documents per request"),
    ([Media("document", "application/pdf", "long.pdf", "long.pdf", b"/Type /Page\n" * 101)],
     mediaparts.OPENAI_RESPONSES,
     r"long\.pdf: brings the request to 101 PDF pages, over the OpenAI Responses API's 100 "
     "pages per request"),
    ([big("image", 10, "x.heic", "image/heic")], mediaparts.OPENAI_CHAT,
     r"x\.heic: the OpenAI chat completions API takes image/png, .*, not image/heic"),
])
def test_each_limit_names_the_file_the_limit_and_the_api(found, limits, message):
    with pytest.raises(MediaError, match=message):
        mediaparts.check(found, limits, ["*/*"], "m", lambda event: None)


def test_pages_are_counted_by_page_objects():
    assert media.pdf_pages((FIXTURES / "hello.pdf").read_bytes()) == 1
    assert media.pdf_pages(b"<< /Type /Pages /Count 3 >> /Type/Page /Type /Page") == 2


def template_file(tmp_path, server, api: str, **block) -> str:
    """A template file for API whose endpoint replays its recording."""
    name, recording = APIS[api]
    doc = json.loads((ROOT / "request-templates" / f"{name}.json").read_text())
    doc["chatpipe"].update(url=f"{server.url}/replay/{recording}", max_retries=0, **block)
    path = tmp_path / "chat.json"
    path.write_text(json.dumps(doc))
    return str(path)


def test_a_type_the_model_does_not_take_is_refused_before_any_request(tmp_path, server, chatpipe):
    path = template_file(tmp_path, server, "openai-chat", media=["image/*"])
    run = chatpipe("send", path, "-m", "Read it", "-a", str(FIXTURES / "hello.pdf"),
                   "--output", "ndjson", extra_env=KEYS)
    error = ndjson(run.stdout)[-1]
    assert run.returncode == 2 and error["type"] == "error"
    assert error["message"].endswith("hello.pdf: model gpt-4o-mini takes image/* (the "
                                     "template's chatpipe.media), not application/pdf")
    assert server.requests == []


def test_unknown_model_types_are_sent_with_a_warning(tmp_path, server, chatpipe):
    path = template_file(tmp_path, server, "gemini")
    run = chatpipe("send", path, "-m", "Read it", "-a", str(FIXTURES / "hello.pdf"),
                   "-a", str(FIXTURES / "red.png"), "--output", "ndjson", extra_env=KEYS)
    events = ndjson(run.stdout)
    assert events[-1]["type"] == "done", run.stdout + run.stderr
    warning = next(e for e in events if e["type"] == "warning")
    assert "takes application/pdf, image/png is not known (set chatpipe.media" in warning["message"]
    parts = server.requests[0]["body"]["contents"][-1]["parts"]
    assert [p.get("text") or p["inlineData"]["mimeType"] for p in parts] == [
        "Read it", "application/pdf", "image/png"]


def test_stdin_with_at_and_a_dry_run_elides_the_data(tmp_path, server, env):
    from PIL import Image

    noisy = tmp_path / "noise.png"
    Image.frombytes("L", (64, 64), os.urandom(64 * 64)).save(noisy)
    data = noisy.read_bytes()
    path = template_file(tmp_path, server, "anthropic-messages")
    run = subprocess.run([sys.executable, "-m", "chatpipe", "send", path, "-m", "What is it?",
                          "-a", "-", "--at", "image/png", "--output", "ndjson"],
                         input=data, capture_output=True, env={**env, **KEYS}, cwd=ROOT, timeout=60)
    assert ndjson(run.stdout.decode())[-1]["type"] == "done", run.stderr
    content = server.requests[0]["body"]["messages"][-1]["content"]
    assert content == [{"type": "text", "text": "What is it?"}, {"type": "image", "source": {
        "type": "base64", "media_type": "image/png", "data": base64.b64encode(data).decode()}}]
    dry = subprocess.run([sys.executable, "-m", "chatpipe", "send", path, "-m", "What is it?",
                          "-a", "-", "--dry-run", "--output", "ndjson"],
                         input=data, capture_output=True, env={**env, **KEYS}, cwd=ROOT, timeout=60)
    request = next(e for e in ndjson(dry.stdout.decode()) if e["type"] == "request")
    source = request["body"]["messages"][-1]["content"][1]["source"]
    assert source["data"].endswith("base64 characters elided>")
    assert len(server.requests) == 1


def test_save_keeps_the_path_continue_reads_it_and_a_gone_file_is_named(tmp_path, server, chatpipe):
    image = tmp_path / "shot.png"
    image.write_bytes((FIXTURES / "red.png").read_bytes())
    path = template_file(tmp_path, server, "openai-chat")
    run = chatpipe("send", path, "--save", "-m", "What is it?", "-a", str(image),
                   "--output", "ndjson", extra_env=KEYS)
    assert ndjson(run.stdout)[-1]["type"] == "done", run.stdout + run.stderr
    saved = json.loads(open(path).read())["messages"]
    question = next(m for m in saved if m["role"] == "user")
    assert question["content"] == [{"type": "text", "text": "What is it?"},
                                   {"type": "image", "path": str(image)}]
    run = chatpipe("send", path, "--save", "-m", "And now?", "--output", "ndjson", extra_env=KEYS)
    assert ndjson(run.stdout)[-1]["type"] == "done", run.stdout + run.stderr
    again = [m for m in server.requests[1]["body"]["messages"] if m["role"] == "user"][0]
    assert again["content"][1]["image_url"]["url"].startswith("data:image/png;base64,iVBOR")
    image.unlink()
    run = chatpipe("send", path, "-m", "Still there?", "--output", "ndjson", extra_env=KEYS)
    error = ndjson(run.stdout)[-1]
    assert error["type"] == "error" and len(server.requests) == 2
    turn = 1 + next(i for i, m in enumerate(saved) if m is question)
    assert error["message"] == f"turn {turn} of the conversation: {image}: no such file"


def test_save_media_inline_stores_the_data(tmp_path):
    from chatpipe import dialects

    chat = tmp_path / "chat.json"
    chat.write_text(json.dumps({"model": "m", "messages": []}))
    messages = [{"role": "user", "content": "Look"},
                {"role": "user", "content": [{"type": "image", "path": "red.png"}]}]
    cwd = os.getcwd()
    os.chdir(FIXTURES)
    try:
        conversation.append_messages(chat, dialects.get("openai-chat"), messages, "inline")
    finally:
        os.chdir(cwd)
    saved = json.loads(chat.read_text())["messages"]
    assert saved == [{"role": "user", "content": [
        {"type": "text", "text": "Look"},
        {"type": "image", "data": base64.b64encode((FIXTURES / "red.png").read_bytes()).decode(),
         "mime_type": "image/png", "filename": "red.png"}]}]


def test_images_are_downscaled_on_request_with_a_warning(tmp_path):
    import io

    from PIL import Image

    wide, noisy = tmp_path / "wide.png", tmp_path / "noisy.png"
    Image.new("RGB", (400, 50), (0, 128, 0)).save(wide)
    Image.frombytes("RGB", (1500, 1500), os.urandom(1500 * 1500 * 3)).save(noisy)
    assert mediaparts.encoded(noisy.stat().st_size) > mediaparts.ANTHROPIC.image_bytes
    parts = [{"type": "image", "path": str(wide)}, {"type": "image", "path": str(noisy)}]
    template = tmp_path / "t.json"
    template.write_text(json.dumps({"chatpipe": {"api": "anthropic-messages", "url": "http://x",
                                                 "media": ["image/*"]},
                                    "model": "m", "messages": []}))
    with pytest.raises(MediaError, match=r"noisy\.png: .* over the Anthropic Messages API's 5 MB "
                                         r"per image .*; chatpipe.media_downscale in the template"):
        build("anthropic-messages", parts, template=str(template))
    doc = json.loads(template.read_text())
    doc["chatpipe"]["media_downscale"] = 100
    template.write_text(json.dumps(doc))
    events: list[dict] = []
    body = build("anthropic-messages", parts, template=str(template), events=events)
    sizes = [Image.open(io.BytesIO(base64.b64decode(p["source"]["data"]))).size
             for p in body["messages"][-1]["content"][1:]]
    assert sizes == [(100, 13), (100, 100)]
    assert [e["message"] for e in events] == [
        f"{wide}: downscaled from 400x50 to 100x13 (chatpipe.media_downscale)",
        f"{noisy}: downscaled from 1500x1500 to 100x100 (chatpipe.media_downscale)"]
    doc["chatpipe"]["media_downscale"] = 2000        # longer than both: only the bytes count
    template.write_text(json.dumps(doc))
    events.clear()
    body = build("anthropic-messages", parts, template=str(template), events=events)
    assert [e["message"] for e in events] == [
        f"{noisy}: downscaled from 1500x1500 to 750x750 (chatpipe.media_downscale)"]


def test_a_media_part_without_its_file_is_an_error_not_sent_as_is():
    with pytest.raises(MediaError, match=r'turn 2 of the conversation: an image part needs one of '
                                         r'"path", "url" or "data" \(it has none\)'):
        build("openai-chat", [{"type": "image", "file": "/etc/passwd"}])
    with pytest.raises(MediaError, match=r'it has path, data'):
        build("gemini", [{"type": "document", "path": "a.pdf", "data": "AAAA"}])


def test_the_model_list_says_which_types_a_model_takes(tmp_path, monkeypatch):
    from chatpipe import dialects, models

    page = {"data": [{"id": "a/text-only", "architecture": {"input_modalities": ["text"]}},
                     {"id": "b/vision", "architecture": {"input_modalities": ["text", "image"]}},
                     {"id": "c/plain"}]}
    entries, _ = dialects.get("openai-chat").parse_models(page)
    assert [m.get("media") for m in entries] == [[], ["image/*"], None]
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    template = tmp_path / "router.json"
    template.write_text(json.dumps({"chatpipe": {"url": "http://127.0.0.1:9/api/v1/chat/completions"},
                                    "model": "a/text-only", "messages": []}))
    models.write_cache(models.listing(str(template)), entries)
    png = {"type": "image", "path": str(FIXTURES / "red.png")}
    pdf = {"type": "document", "path": str(FIXTURES / "hello.pdf")}
    with pytest.raises(MediaError, match=r"red\.png: model a/text-only takes no media \(the "
                                         r"endpoint's model list\), not image/png"):
        build("openai-chat", [png], template=str(template))
    doc = json.loads(template.read_text())
    for model, parts, warned in (("b/vision", [png], False), ("c/plain", [pdf], True)):
        template.write_text(json.dumps({**doc, "model": model}))
        events: list[dict] = []
        build("openai-chat", parts, template=str(template), events=events)
        assert bool(events) == warned
    template.write_text(json.dumps({**doc, "model": "b/vision"}))
    with pytest.raises(MediaError, match=r"model b/vision takes image/\* \(the endpoint's model "
                                         r"list\), not application/pdf"):
        build("openai-chat", [pdf], template=str(template))


def test_a_front_ends_parts_in_a_json_request_reach_each_api(tmp_path, server, chatpipe):
    for api in ("anthropic-messages", "openai-responses"):
        path = template_file(tmp_path, server, api, media=["image/*", "application/pdf"])
        request = {"template": path, "messages": [{"role": "user", "content": [
            {"type": "text", "text": "Compare them."},
            {"type": "image", "path": str(FIXTURES / "blue.jpg"), "mime_type": "image/jpeg"},
            {"type": "document", "path": str(FIXTURES / "hello.pdf"),
             "mime_type": "application/pdf"}]}]}
        run = chatpipe("send", "--request", "-", "--output", "ndjson",
                       input=json.dumps(request), extra_env=KEYS)
        events = ndjson(run.stdout)
        assert events[-1]["type"] == "done" and not [e for e in events if e["type"] == "warning"]
        sent = history(api, server.requests[-1]["body"])[-1]
        expected = [history(api, SDK[api][k])[-1]["content"][1] for k in ("jpeg", "pdf")]
        assert sent["content"][1:] == expected
