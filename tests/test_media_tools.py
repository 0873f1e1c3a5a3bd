"""Tool results that are images (issue 20): an MCP tool's image content
goes back to the model as an image where the API takes one in a tool
result (Anthropic, Responses), else as a note that says an image was
returned.  The MCP server is tests/media_fixtures/mcp_image_server.py,
built with the MCP SDK, run over stdio."""

from __future__ import annotations

import base64
import json
import subprocess
import sys

import pytest

from chatpipe import dialects, mcp_host
from chatpipe.tools import ToolCall
from conftest import ROOT, TESTS, ndjson
from test_tool_loop import text_answer, tool_call_answer

PNG = (TESTS / "media_fixtures" / "red.png").read_bytes()
B64 = base64.b64encode(PNG).decode()
RESULT = {"role": "tool", "tool_call_id": "toolu_1", "name": "shot", "content": "the screen",
          "is_error": False, "images": [{"type": "image", "data": B64, "mime_type": "image/png"}]}
TIFF = base64.b64encode(b"II*\x00" + bytes(32)).decode()
NOTE = "\n[The tool returned an image (image/png), not shown: "


@pytest.fixture
def image_env(env, tmp_path):
    """ENV with an mcp.json of the image server ``img``."""
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    folder = tmp_path / "config" / "chatpipe"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "mcp.json").write_text(json.dumps({"mcpServers": {"img": {
        "command": sys.executable, "args": [str(TESTS / "media_fixtures" / "mcp_image_server.py")],
        "autoApprove": ["shot"]}}}))
    return env


def test_an_mcp_image_is_an_image_of_the_result(tmp_path):
    config = tmp_path / "mcp.json"
    config.write_text(json.dumps({"mcpServers": {"img": {
        "command": sys.executable, "args": [str(TESTS / "media_fixtures" / "mcp_image_server.py")]}}}))
    host = mcp_host.McpHost(config)
    try:
        tool = host.tools(["img"], lambda event: None, [])[0]
        result = tool.run(ToolCall("c1", "shot", "{}"), {}, None)
    finally:
        host.close()
    assert (result.content, result.is_error) == ("the screen", False)
    assert result.images == RESULT["images"]
    assert result.message(ToolCall("c1", "shot", "{}"))["images"] == RESULT["images"]


def test_anthropic_and_responses_take_the_image_in_the_result():
    conversation: list = []
    dialects.get("anthropic-messages").add_tool_result(conversation, RESULT)
    assert conversation == [{"role": "user", "content": [{
        "type": "tool_result", "tool_use_id": "toolu_1", "content": [
            {"type": "text", "text": "the screen"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": B64}}]}]}]
    conversation = []
    dialects.get("openai-responses").add_tool_result(conversation, RESULT)
    assert conversation == [{"type": "function_call_output", "call_id": "toolu_1", "output": [
        {"type": "input_text", "text": "the screen"},
        {"type": "input_image", "image_url": f"data:image/png;base64,{B64}", "detail": "auto"}]}]


@pytest.mark.parametrize("api", ["openai-chat", "ollama", "gemini"])
def test_other_apis_get_a_note_that_an_image_was_returned(api):
    conversation: list = []
    dialects.get(api).add_tool_result(conversation, RESULT)
    text = json.dumps(conversation)
    assert B64 not in text
    assert json.dumps(NOTE)[1:-1] in text and "the screen" in text


def test_an_image_the_api_cannot_take_is_a_note_too():
    bad = {**RESULT, "images": [{"type": "image", "data": "%%%", "mime_type": "image/png"},
                                {"type": "image", "data": TIFF, "mime_type": "image/tiff"}]}
    conversation: list = []
    dialects.get("anthropic-messages").add_tool_result(conversation, bad)
    content = conversation[0]["content"][0]["content"]
    assert content.startswith("the screen" + NOTE + "data: \"data\" is not valid base64]")
    assert content.endswith(NOTE.replace("image/png", "image/tiff") + "data: the Anthropic "
                            "Messages API takes image/jpeg, image/png, image/gif, image/webp, "
                            "application/pdf, text/plain, not image/tiff]")


def test_send_gives_the_note_to_openai_chat(server, image_env):
    url = server.add("/m", [tool_call_answer("shot", "c1"), text_answer("A red square.")])
    proc = subprocess.run([sys.executable, "-m", "chatpipe", "send", "openai", "--url", url,
                           "--tools", "mcp:img", "--output", "ndjson", "-m", "What is on screen?"],
                          capture_output=True, text=True, env=image_env, cwd=ROOT, timeout=60,
                          stdin=subprocess.DEVNULL, start_new_session=True)
    assert ndjson(proc.stdout)[-1]["type"] == "done", proc.stdout + proc.stderr
    tool_message = server.requests[1]["body"]["messages"][-1]
    assert tool_message["role"] == "tool"
    assert tool_message["content"] == ("the screen" + NOTE
                                       + "this API takes no images in tool results]")
