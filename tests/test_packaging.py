"""The Python package as users get it: a wheel and an sdist from
``python -m build``, installed into a fresh venv and with pipx, find their
bundled templates and stream an answer from a local server.

They are built from a copy of the checkout's git-tracked files in a folder
named ``chatpipe``, what ``git clone`` makes: what a fresh clone would build,
whatever this checkout's folder is called and whatever untracked files it has."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import EXPECTED, ROOT

TEXT = "openai-chat/text-with-usage.sse"


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A copy of the checkout's git-tracked files (as they are in the working
    tree) in a folder named ``chatpipe``."""
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True,
                            timeout=60)
    names = [n for n in listed.stdout.decode().split("\0") if n]
    if listed.returncode != 0 or not names:
        pytest.skip(f"not a git checkout (git ls-files: {listed.stderr.decode().strip()})")
    src = tmp_path_factory.mktemp("clone") / "chatpipe"
    for name in names:
        path = ROOT / name
        if path.is_dir() or not (path.exists() or path.is_symlink()):
            continue  # a submodule, or deleted in the working tree
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, src / name, follow_symlinks=False)
    return src


@pytest.fixture(scope="module")
def dist(source, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run([sys.executable, "-m", "build", "--wheel", "--sdist", "--outdir",
                           str(out), str(source)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return out


def check_installed(chatpipe: list[str], python: Path, source: Path, server, env, cwd: Path) -> None:
    """The installed command lists its bundled templates and streams; the
    package and its templates are the ones in PYTHON's site-packages, not the
    checkout's or the copy it was built from."""
    def output(*args) -> str:
        proc = subprocess.run(args, capture_output=True, text=True, env=env, cwd=cwd, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip()

    site = Path(output(str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"))
    module = Path(output(str(python), "-c", "import chatpipe; print(chatpipe.__file__)"))
    entries = {e["name"]: e for e in json.loads(output(*chatpipe, "templates", "list", "--json"))}
    assert entries["local"]["source"] == "bundled"
    template = Path(entries["local"]["path"])
    checkouts = [folder / sub for folder in (ROOT, source) for sub in ("backend", "request-templates")]
    for path in (module.resolve(), template.resolve()):
        assert path.is_relative_to(site.resolve()), (path, site)
        assert not any(path.is_relative_to(c.resolve()) for c in checkouts), path
    sent = subprocess.run([*chatpipe, "send", "local", "--url", f"{server.url}/replay/{TEXT}",
                           "-m", "hi"], capture_output=True, text=True, env=env, cwd=cwd, timeout=60)
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout == EXPECTED[TEXT]["text"] + "\n"


def test_the_copy_is_named_like_a_clone(source):
    assert source.name == "chatpipe"
    assert (source / "pyproject.toml").is_file() and not (source / ".git").exists()


def test_the_wheel_installs_in_a_fresh_venv(dist, source, tmp_path, server):
    wheel = next(dist.glob("chatpipe-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    proc = subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", str(wheel)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "config")
    check_installed([str(venv / "bin" / "chatpipe")], venv / "bin" / "python", source, server, env,
                    tmp_path)


def test_the_sdist_installs_with_pipx(dist, source, tmp_path, server):
    sdist = next(dist.glob("chatpipe-*.tar.gz"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PIPX_HOME=str(tmp_path / "pipx"), PIPX_BIN_DIR=str(tmp_path / "bin"),
               PIPX_MAN_DIR=str(tmp_path / "man"), XDG_CONFIG_HOME=str(tmp_path / "config"))
    proc = subprocess.run([sys.executable, "-m", "pipx", "install", str(sdist)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    check_installed([str(tmp_path / "bin" / "chatpipe")], tmp_path / "pipx" / "venvs" / "chatpipe" / "bin" / "python",
                    source, server, env, tmp_path)
