"""``chatpipe send -a`` end to end, on a real server on 127.0.0.1: text piped
on stdin goes with the attachments, and ``--save`` keeps a reference to the
file or, with ``--save-media inline``, its data."""

from __future__ import annotations

import base64
import json
import shutil

import pytest

from conftest import TESTS, ndjson

PNG = TESTS / "media_fixtures" / "red.png"


@pytest.fixture
def chat(server, tmp_path):
    """A chat file (an OpenAI chat template) pointed at the replay server."""
    path = tmp_path / "chat.json"
    path.write_text(json.dumps({
        "model": "m", "stream": True, "messages": [],
        "chatpipe": {"url": f"{server.url}/replay/openai-chat/text-with-usage.sse"}}))
    return path


def test_stdin_text_goes_with_the_attachment(server, chatpipe, chat):
    run = chatpipe("send", str(chat), "-a", str(PNG), "--output", "ndjson",
                   input="What colour is this?")
    assert ndjson(run.stdout)[-1]["type"] == "done", run.stderr
    content = server.requests[0]["body"]["messages"][-1]["content"]
    assert {"type": "text", "text": "What colour is this?"} in content
    data = base64.b64encode(PNG.read_bytes()).decode()
    assert any(p.get("image_url", {}).get("url") == f"data:image/png;base64,{data}"
               for p in content)


@pytest.mark.parametrize("mode", ["path", "inline"])
def test_save_keeps_a_reference_or_the_data(server, chatpipe, chat, tmp_path, mode):
    image = tmp_path / "shot.png"
    shutil.copy(PNG, image)
    extra = ["--save-media", "inline"] if mode == "inline" else []
    run = chatpipe("send", str(chat), "--save", *extra, "-a", str(image), "-m", "Colour?")
    assert run.returncode == 0, run.stderr
    saved = chat.read_text()
    data = base64.b64encode(PNG.read_bytes()).decode()
    assert (data in saved) == (mode == "inline")
    assert (str(image) in saved) == (mode == "path")
    # The saved chat goes on: the image is sent again from the reference or the data.
    image.unlink()
    again = chatpipe("send", str(chat), "-m", "And now?", "--output", "ndjson")
    last = ndjson(again.stdout)[-1]
    if mode == "inline":
        assert last["type"] == "done", again.stderr
        assert data in json.dumps(server.requests[-1]["body"])
    else:
        assert last["type"] == "error" and "shot.png" in last["message"]


def test_a_chat_file_cannot_send_a_key_file_as_text(server, chatpipe, chat, tmp_path):
    """A chat file is data: a document part it holds is read only if the
    file's bytes are an image or a PDF, whatever its mime_type says; the
    same part in the request itself (the user's choice) is sent."""
    key = tmp_path / "id_ed25519"
    key.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n")
    part = {"type": "document", "path": str(key), "mime_type": "text/plain"}
    doc = json.loads(chat.read_text())
    doc["chatpipe"]["api"] = "anthropic-messages"
    doc["chatpipe"]["url"] = f"{server.url}/replay/anthropic/basic.sse"
    doc["max_tokens"] = 100
    doc["messages"] = [{"role": "user", "content": [{"type": "text", "text": "Read this"}, part]},
                       {"role": "assistant", "content": "OK."}]
    chat.write_text(json.dumps(doc))
    run = chatpipe("send", str(chat), "-m", "Go on", "--output", "ndjson",
                   extra_env={"ANTHROPIC_API_KEY": "k" * 20})
    error = ndjson(run.stdout)[-1]
    assert error["type"] == "error" and str(key) in error["message"]
    assert "no image or PDF" in error["message"]
    assert server.requests == []
    image = tmp_path / "ok.png"
    shutil.copy(PNG, image)
    doc["messages"][0]["content"][1] = {"type": "image", "path": str(image)}
    chat.write_text(json.dumps(doc))
    run = chatpipe("send", str(chat), "-m", "Go on", "--output", "ndjson",
                   extra_env={"ANTHROPIC_API_KEY": "k" * 20})
    assert len(server.requests) == 1, run.stdout + run.stderr
    request = {"template": str(chat), "env": {"ANTHROPIC_API_KEY": "k" * 20},
               "messages": [{"role": "user", "content": [{"type": "text", "text": "Mine"}, part]}]}
    doc["messages"] = []
    chat.write_text(json.dumps(doc))
    run = chatpipe("send", "--request", "-", "--output", "ndjson", input=json.dumps(request))
    assert "BEGIN OPENSSH" in json.dumps(server.requests[-1]["body"]), run.stdout + run.stderr


def test_a_fifo_named_as_media_is_refused_without_blocking(tmp_path):
    """A media path is opened as context files and rewrite's --file are
    (chatpipe.userfiles): a FIFO nobody writes to is refused at once."""
    import os

    from chatpipe.media import MediaError, load

    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with pytest.raises(MediaError, match="pipe.png: not a regular file"):
        load({"type": "image", "path": str(fifo)}, cwd=str(tmp_path), warn=lambda text: None)
    with pytest.raises(MediaError, match="no such file"):
        load({"type": "image", "path": str(tmp_path / "gone.png")}, cwd=str(tmp_path),
             warn=lambda text: None)
