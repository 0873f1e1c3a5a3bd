"""End to end: ``chatpipe send local`` against the real llama.cpp server.

Starts ``scripts/local-server serve`` (llama-cpp-python with the gemma3 270M
model; install with ``make local-server``) on a free port and streams real
tokens through the real CLI in both output modes.  Set CHATPIPE_SKIP_LLAMA=1
to skip when the server cannot be installed; otherwise a missing server is a
failure, not a silent skip.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, ndjson

pytestmark = pytest.mark.llama

if os.environ.get("CHATPIPE_SKIP_LLAMA") == "1":
    pytest.skip("CHATPIPE_SKIP_LLAMA=1", allow_module_level=True)


@pytest.fixture(scope="module")
def llama_url(tmp_path_factory):
    """URL of a running local llama.cpp server, stopped after the module."""
    log = tmp_path_factory.mktemp("llama") / "server.log"
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "local-server"), "serve",
                             "--port", "0", "--log", str(log)],
                            stdout=subprocess.PIPE, stderr=open(log.with_suffix(".err"), "w"),
                            text=True)
    line = proc.stdout.readline()
    if not line.startswith("ready "):
        proc.kill()
        tail = "".join(p.read_text(errors="replace")[-2000:]
                       for p in (log.with_suffix(".err"), log) if p.exists())
        pytest.fail(f"local server did not start (run `make local-server`): {line}{tail}")
    yield line.split()[1]
    proc.terminate()
    proc.wait(timeout=20)


@pytest.fixture(scope="module")
def small_template(tmp_path_factory):
    """The bundled ``local`` template with ``max_tokens`` kept small."""
    doc = json.loads((ROOT / "request-templates" / "local.json").read_text())
    doc["max_tokens"] = 16
    path = tmp_path_factory.mktemp("tpl") / "local-small.json"
    path.write_text(json.dumps(doc))
    return path


def send(llama_url, template, env, *args):
    return subprocess.run([sys.executable, "-m", "chatpipe", "send", str(template), "--url",
                           f"{llama_url}/v1/chat/completions", "-m", "Tell me a joke", *args],
                          capture_output=True, text=True, env=env, timeout=180, cwd=ROOT)


def test_ndjson_streams_real_tokens(llama_url, small_template, env):
    proc = send(llama_url, small_template, env, "--output", "ndjson")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    events = ndjson(proc.stdout)
    assert events[0]["type"] == "start"
    deltas = [e for e in events if e["type"] == "delta"]
    assert len(deltas) >= 2, events        # streamed, not one blob
    assert "".join(e["content"] for e in deltas).strip()
    assert events[-1]["type"] == "done"
    assert events[-1]["finish_reason"] in ("stop", "length")


def test_text_output_from_real_model(llama_url, small_template, env):
    proc = send(llama_url, small_template, env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()
    assert proc.stdout.endswith("\n")
    # Nothing on stderr but, for an answer that reached max_tokens, the note saying so.
    assert proc.stderr in ("", "chatpipe: the answer was cut off: it reached the token limit "
                               "(finish_reason length)\n")
