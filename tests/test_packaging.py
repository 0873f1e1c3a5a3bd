"""The Python package as users get it: a wheel and an sdist from
``python -m build``, installed into a fresh venv and with pipx, find their
bundled templates and stream an answer from a local server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import EXPECTED, ROOT

TEXT = "openai-chat/text-with-usage.sse"


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run([sys.executable, "-m", "build", "--wheel", "--sdist", "--outdir",
                           str(out), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return out


def check_installed(chatpipe: list[str], server, env) -> None:
    """The installed command lists its bundled templates and streams."""
    listed = subprocess.run([*chatpipe, "templates", "list", "--json"], capture_output=True,
                            text=True, env=env, timeout=60)
    entries = {e["name"]: e for e in json.loads(listed.stdout)}
    assert entries["local"]["source"] == "bundled"
    assert "site-packages" in entries["local"]["path"] and ROOT.name not in entries["local"]["path"]
    sent = subprocess.run([*chatpipe, "send", "local", "--url", f"{server.url}/replay/{TEXT}",
                           "-m", "hi"], capture_output=True, text=True, env=env, timeout=60)
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout == EXPECTED[TEXT]["text"] + "\n"


def test_the_wheel_installs_in_a_fresh_venv(dist, tmp_path, server):
    wheel = next(dist.glob("chatpipe-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    proc = subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", str(wheel)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "config")
    check_installed([str(venv / "bin" / "chatpipe")], server, env)


def test_the_sdist_installs_with_pipx(dist, tmp_path, server):
    sdist = next(dist.glob("chatpipe-*.tar.gz"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PIPX_HOME=str(tmp_path / "pipx"), PIPX_BIN_DIR=str(tmp_path / "bin"),
               PIPX_MAN_DIR=str(tmp_path / "man"), XDG_CONFIG_HOME=str(tmp_path / "config"))
    proc = subprocess.run([sys.executable, "-m", "pipx", "install", str(sdist)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    check_installed([str(tmp_path / "bin" / "chatpipe")], server, env)
