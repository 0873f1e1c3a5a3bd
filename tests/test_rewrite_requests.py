"""Rewrites through the whole request path, to a real server on 127.0.0.1:
the request of each API, ``chatpipe rewrite`` (the replacement, --diff,
--apply) and serve's ``"rewrite"`` line.  tests/test_rewrite.py tests
chatpipe.rewrite itself.
"""

from __future__ import annotations

import json
import os
import stat

import pytest

from chatpipe import rewrite
from conftest import FAKE_KEY, KEYS, ndjson, text_of
from replay_server import Reply


#: API -> (bundled template, a recording of its API, the recording's text).
APIS = {
    "openai-chat": ("openai", "openai-chat/finish-length.sse"),
    "anthropic": ("anthropic", "anthropic/basic.sse"),
    "gemini": ("gemini", "gemini/basic-text-no-blank-lines.sse"),
    "openai-responses": ("openai-responses", "openai-responses/basic-text.sse"),
    "ollama": ("ollama", "ollama/basic-text.ndjson"),
}

CODE = "import os\n\n\ndef main():\n    print(1)\n    return 0\n\n\nmain()\n"


def fenced(*pieces: str, finish: str = "stop") -> Reply:
    """An OpenAI chat stream whose deltas are PIECES, then FINISH."""
    chunks = [{"choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None}]}
              for p in pieces]
    chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
    return Reply([f"data: {json.dumps(c)}\n\n".encode() for c in chunks] + [b"data: [DONE]\n\n"])


#: A model that wraps its answer in a fence and drops the indentation.
ANSWER = ("```py", "thon\nprint(2", ")\n    return 1\n", "``", "`\n")


def json_text(text: str) -> str:
    """TEXT as it is inside a JSON string (the request body's)."""
    return json.dumps(text)[1:-1]


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "app.py"
    path.write_text(CODE)
    path.chmod(0o640)
    return path


@pytest.mark.parametrize("api", sorted(APIS))
def test_each_api_gets_the_directive_the_delimited_text_and_its_context_lines(
        api, server, chatpipe, source):
    template, recording = APIS[api]
    run = chatpipe("rewrite", template, "--url", f"{server.url}/replay/{recording}",
                   "--file", str(source), "--lines", "5-6", "--context-lines", "2",
                   "-m", "print 2", extra_env=KEYS)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("    ") and run.stdout.endswith("\n")   # indentation, newline
    body = json.dumps(server.requests[0]["body"])
    system, user = rewrite.messages({"text": "    print(1)\n    return 0\n",
                                     "instruction": "print 2", "path": str(source),
                                     "before": "\ndef main():\n", "after": "\n\n"})
    assert json_text(system["content"]) in body
    assert json_text(user["content"]) in body
    assert json_text(f"File: {source} (python)\n\n<before>\n\ndef main():\n</before>\n\n"
                     "<rewrite>\n    print(1)\n    return 0\n</rewrite>\n\n"
                     "<after>\n\n\n</after>\n\nInstruction: print 2") in body
    assert "import os" not in body                       # only N lines of context
    assert FAKE_KEY not in run.stdout + run.stderr


def test_context_files_go_into_the_request_as_for_send(server, chatpipe, source, tmp_path):
    helper = tmp_path / "helper.py"
    helper.write_text("def twice(x):\n    return 2 * x\n")
    url = server.add("/fenced", fenced(*ANSWER))
    run = chatpipe("rewrite", "openai", "--url", url, "--file", str(source), "--lines", "5",
                   "-c", str(helper), "-m", "use twice")
    assert run.returncode == 0, run.stderr
    system = server.requests[0]["body"]["messages"][0]["content"]
    assert "only the replacement code" in system
    assert "```python\ndef twice(x):\n    return 2 * x\n```" in system


def test_prose_gets_the_prose_directive(server, chatpipe, tmp_path):
    notes = tmp_path / "notes.md"
    notes.write_text("# Notes\n\nTeh cat sat.\n")
    url = server.add("/prose", fenced("The cat sat.\n"))
    run = chatpipe("rewrite", "openai", "--url", url, "--file", str(notes), "--lines", "3",
                   "-m", "fix the grammar")
    assert run.returncode == 0, run.stderr
    assert run.stdout == "The cat sat.\n"
    system = server.requests[0]["body"]["messages"][0]["content"]
    assert "only the replacement text" in system and "fences" not in system


def test_rewrite_prints_the_replacement_without_its_fence(server, chatpipe, source):
    url = server.add("/fenced", fenced(*ANSWER))
    run = chatpipe("rewrite", "openai", "--url", url, "--file", str(source),
                   "--lines", "5-6", "-m", "print 2")
    assert (run.returncode, run.stdout) == (0, "    print(2)\n    return 1\n"), run.stderr
    assert source.read_text() == CODE


def test_diff_is_a_unified_diff_against_the_file(server, chatpipe, source):
    url = server.add("/fenced", fenced(*ANSWER))
    run = chatpipe("rewrite", "openai", "--url", url, "--file", str(source),
                   "--lines", "5-6", "-m", "print 2", "--diff")
    assert run.returncode == 0, run.stderr
    assert run.stdout == (f"--- a/{source}\n+++ b/{source}\n@@ -2,8 +2,8 @@\n \n \n"
                          " def main():\n-    print(1)\n-    return 0\n+    print(2)\n"
                          "+    return 1\n \n \n main()\n")
    assert source.read_text() == CODE


def test_apply_writes_the_file_and_keeps_its_mode(server, chatpipe, source):
    url = server.add("/fenced", fenced(*ANSWER))
    run = chatpipe("rewrite", "openai", "--url", url, "--file", str(source),
                   "--lines", "5-6", "-m", "print 2", "--apply")
    assert run.returncode == 0, run.stderr
    assert source.read_text() == CODE.replace("print(1)\n    return 0", "print(2)\n    return 1")
    assert stat.S_IMODE(source.stat().st_mode) == 0o640
    assert os.listdir(source.parent) == ["app.py"]          # no temporary file left


def test_apply_refuses_a_file_changed_while_the_answer_streamed(server, chatpipe, source):
    def edit(index):
        if index == 1:
            source.write_text(CODE + "# edited\n")

    reply = fenced(*ANSWER)
    reply.gate = edit
    url = server.add("/fenced", reply)
    run = chatpipe("rewrite", "openai", "--url", url, "--file", str(source),
                   "--lines", "5-6", "-m", "print 2", "--apply")
    assert run.returncode == 1
    assert "changed since it was read: not written" in run.stderr
    assert source.read_text() == CODE + "# edited\n"
    assert os.listdir(source.parent) == ["app.py"]


def test_apply_refuses_an_answer_cut_off_at_the_token_limit(server, chatpipe, source):
    url = server.add("/cut", fenced("```python\n    print(2)\n", finish="length"))
    run = chatpipe("rewrite", "openai", "--url", url, "--file", str(source),
                   "--lines", "5-6", "-m", "print 2", "--apply")
    assert run.returncode == 1
    assert "cut off (finish_reason length)" in run.stderr
    assert source.read_text() == CODE


@pytest.mark.parametrize("args, says", [
    (["--lines", "9-12"], "the file has 9 lines"),
    (["--lines", "3-2"], "expected 1 <= A <= B"),
    (["--lines", "x"], "expected A-B or A"),
    (["--context-lines", "-1"], "--context-lines"),
])
def test_bad_lines_are_usage_errors(chatpipe, source, args, says):
    run = chatpipe("rewrite", "openai", "--url", "http://127.0.0.1:9/v1", "--file",
                   str(source), "-m", "x", *args)
    assert run.returncode == 2 and says in run.stderr, run.stderr


def test_a_binary_missing_or_special_file_is_refused(chatpipe, tmp_path):
    binary = tmp_path / "x.bin"
    binary.write_bytes(b"a\0b")
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9\n".encode("latin-1"))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path, says in ((binary, "binary file"), (tmp_path / "none.py", "No such file"),
                       (latin, "not UTF-8 text"), (fifo, "not a regular file"),
                       (tmp_path, "not a regular file")):
        run = chatpipe("rewrite", "openai", "--file", str(path), "-m", "x")
        assert run.returncode == 2 and says in run.stderr, run.stderr


def test_serve_takes_a_rewrite_line_and_streams_the_replacement(server, serve):
    url = server.add("/fenced", fenced(*ANSWER))
    line = {"id": "r1", "template": "openai", "url": url, "env": {"OPENAI_API_KEY": FAKE_KEY},
            "rewrite": {"text": "    print(1)\n    return 0\n", "instruction": "print 2",
                        "path": None, "language": "python", "before": "def main():\n",
                        "after": None}}
    serve.send(line)
    serve.send({**line, "id": "r2", "rewrite": {"text": "x"}})
    events = serve.finished("r1", "r2")
    assert text_of(events["r1"]) == "    print(2)\n    return 1\n"
    assert events["r1"][-1]["type"] == "done"
    assert events["r2"][-1]["type"] == "error"
    assert '"instruction" must be a string' in events["r2"][-1]["message"]
    body = server.requests[0]["body"]
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    assert body["messages"][1]["content"].startswith("Language: python\n\n<before>\n")


def test_send_request_with_a_rewrite_and_dry_run_shows_the_messages(chatpipe):
    request = {"template": "openai", "url": "http://127.0.0.1:9/v1/chat/completions",
               "rewrite": {"text": "Teh cat.\n", "instruction": "fix", "path": "a.txt"}}
    run = chatpipe("send", "--request", "-", "--dry-run", "--output", "ndjson",
                   input=json.dumps(request))
    events = ndjson(run.stdout)
    assert events[-1] == {"type": "done", "finish_reason": None, "dry_run": True}, run.stderr
    messages = events[0]["body"]["messages"]
    assert messages[-1]["content"] == ("File: a.txt (text)\n\n<rewrite>\nTeh cat.\n"
                                       "</rewrite>\n\nInstruction: fix")
    assert "only the replacement text" in messages[0]["content"]
