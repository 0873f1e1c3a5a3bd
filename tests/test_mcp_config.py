"""mcp.json as a user writes it: a bare ``command`` installed into
chatpipe's own venv, and ``chatpipe mcp list`` without a file.

chatpipe runs here from a real venv made for the test (``python -m venv``,
its ``bin/python`` a symbolic link, as venvs have it) that sees the
development venv's packages, with a PATH that holds none of the venvs: the
README's ``"command": "mcp-server-time"`` must be found in that venv's
``bin``, where ``pip install mcp-server-time`` puts it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from conftest import ROOT, ndjson
from test_mcp import time_model

#: A PATH without any venv's bin.
BARE_PATH = "/usr/local/bin:/usr/bin:/bin"


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A venv (without pip) whose Python imports what the development venv
    has (a .pth file adds its site-packages), and whose bin holds
    ``mcp-server-time``, the console script of the test extras."""
    root = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True,
                   timeout=120)
    python = root / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; "
                              "print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, "dev-venv.pth").write_text(
        f"import site; site.addsitedir({sysconfig.get_paths()['purelib']!r})\n")
    script = shutil.which("mcp-server-time", path=str(Path(sys.executable).parent))
    assert script, "mcp-server-time is in the test extras (pip install -e '.[test]')"
    shutil.copy2(script, root / "bin" / "mcp-server-time")
    assert python.is_symlink()
    assert shutil.which("mcp-server-time", path=BARE_PATH) is None
    return root


def config(env, servers: dict) -> Path:
    """Write an mcp.json of SERVERS in ENV's config folder; its path."""
    path = Path(env["XDG_CONFIG_HOME"]) / "chatpipe" / "mcp.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"mcpServers": servers}))
    return path


def send_in(venv: Path, env, *args) -> subprocess.CompletedProcess:
    """``chatpipe send ARGS`` run by VENV's Python, with a bare PATH."""
    return subprocess.run([str(venv / "bin" / "python"), "-m", "chatpipe", "send", *args],
                          capture_output=True, text=True, timeout=60, cwd=ROOT,
                          stdin=subprocess.DEVNULL, start_new_session=True,
                          env={**env, "PATH": BARE_PATH})


def test_a_command_installed_in_chatpipes_venv_is_found(server, venv, env, tmp_path):
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    config(env, {"time": {"command": "mcp-server-time", "args": ["--local-timezone", "UTC"]}})
    url = time_model(server)
    proc = send_in(venv, env, "openai", "--url", url, "--tools", "mcp:time", "--yes",
                   "--output", "ndjson", "-m", "What time is it in UTC?")
    assert proc.returncode == 0, proc.stderr
    events = ndjson(proc.stdout)
    assert [e for e in events if e["type"] == "warning"] == []
    result = next(e for e in events if e["type"] == "tool_result")
    assert result["is_error"] is False and json.loads(result["content"])["timezone"] == "UTC"
    assert events[-1] == {"type": "done", "finish_reason": "stop", "steps": 2}


def test_a_command_found_nowhere_names_where_it_was_looked_for(server, venv, env, tmp_path):
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    config(env, {"nowhere": {"command": "mcp-server-nowhere"}})
    url = f"{server.url}/replay/openai-chat/text-with-usage.sse"
    proc = send_in(venv, env, "openai", "--url", url, "--tools", "mcp:nowhere",
                   "--output", "ndjson", "-m", "hi")
    assert proc.returncode == 0, proc.stderr
    warning = ndjson(proc.stdout)[0]
    assert warning == {"type": "warning", "kind": "mcp", "server": "nowhere", "message":
                       "MCP server 'nowhere' failed to start: command 'mcp-server-nowhere' not "
                       f"found on PATH ({BARE_PATH}) nor in {venv / 'bin'}, the folder of "
                       "chatpipe's Python: install it (e.g. pip install its package into "
                       "chatpipe's venv) or give its full path in mcp.json; going on without "
                       "its tools"}


def test_mcp_list_without_servers_says_which_file_and_shows_an_example(chatpipe, env):
    path = Path(env["XDG_CONFIG_HOME"]) / "chatpipe" / "mcp.json"
    text = chatpipe("mcp", "list")
    assert text.returncode == 0 and text.stdout == ""         # no server listed
    assert f"{path} does not exist" in text.stderr
    head, example = text.stderr.split(":\n", 1)
    assert head == (f"chatpipe: no MCP servers: {path} does not exist\n"
                    "chatpipe: for example, this mcp.json offers the tools of the time server "
                    "(pip install mcp-server-time into chatpipe's venv)")
    as_json = chatpipe("mcp", "list", "--json")             # what editors read: unchanged
    assert as_json.returncode == 0 and json.loads(as_json.stdout) == []
    assert as_json.stderr == text.stderr
    path.parent.mkdir(parents=True)
    path.write_text('{"mcpServers": {}}')
    assert chatpipe("mcp", "list").stderr.startswith(
        f"chatpipe: no MCP servers: {path} configures no server\n")
    path.write_text(example)                                  # the example is a working mcp.json
    listed = chatpipe("mcp", "list")
    assert (listed.returncode, listed.stdout, listed.stderr) == (0, "time  stdio\n", "")
    assert json.loads(example)["mcpServers"]["time"]["command"] == "mcp-server-time"
