"""The local llama.cpp server's scripts: a portable build, and a dead server said at once.

``scripts/install-local-server`` must never build for the building CPU alone
(a native build with AMX died with a general protection fault on another
machine), and ``scripts/local-server`` must stop as soon as the server process
dies, naming the signal and the log's last lines, instead of leaving the
client to retry a port nobody listens on.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT

INSTALL = ROOT / "scripts" / "install-local-server"
LOCAL_SERVER = ROOT / "scripts" / "local-server"

#: CPU flags of an Intel Xeon that advertises AMX and AVX-512 (the machine
#: where the native build crashed) and of an older x86-64 without AVX2.
AMX_XEON = ("fpu sse sse2 ssse3 sse4_1 sse4_2 avx avx2 fma f16c bmi2 avx512f avx512bw "
            "avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8")
OLD_X86 = "fpu sse sse2 ssse3 sse4_1 sse4_2 popcnt"


def print_build(tmp_path, flags=None, **env):
    """Run install-local-server --print-build with a fake /proc/cpuinfo; give {key: value}."""
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n" if flags else "")
    out = subprocess.run([str(INSTALL), "--print-build"], capture_output=True, text=True,
                         env={**os.environ, "CHATPIPE_CPUINFO": str(cpuinfo),
                              "XDG_CACHE_HOME": str(tmp_path / "cache"), **env},
                         timeout=30, check=True).stdout
    return dict(line.split(" ", 1) for line in out.splitlines())


def cmake_options(build):
    """Give the -DNAME=VALUE options of a --print-build as {NAME: VALUE}."""
    return dict(re.findall(r"-D(\w+)=(\w+)", build["cmake"]))


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="x86-64 variants")
def test_an_amx_cpu_gets_the_portable_avx2_build(tmp_path):
    build = print_build(tmp_path, AMX_XEON)
    options = cmake_options(build)
    assert build["variant"] == "avx2"
    assert options["GGML_NATIVE"] == "OFF"
    for name in ("GGML_AMX_TILE", "GGML_AMX_INT8", "GGML_AMX_BF16", "GGML_AVX512",
                 "GGML_AVX512_VNNI", "GGML_AVX512_BF16", "GGML_BACKEND_DL"):
        assert options[name] == "OFF", name
    for name in ("GGML_AVX", "GGML_AVX2", "GGML_FMA", "GGML_F16C"):
        assert options[name] == "ON", name


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="x86-64 variants")
def test_a_cpu_without_avx2_gets_the_plain_build_in_its_own_cache(tmp_path):
    plain, avx2 = print_build(tmp_path, OLD_X86), print_build(tmp_path, AMX_XEON)
    options = cmake_options(plain)
    assert plain["variant"] == "plain"
    assert options["GGML_NATIVE"] == "OFF"
    assert options["GGML_AVX2"] == options["GGML_AVX"] == options["GGML_FMA"] == "OFF"
    assert options["GGML_SSE42"] == "ON"
    # The wheel cache is keyed on the version and the options: no variant
    # (and no wheel built before the options were set) is ever reused for another.
    assert plain["wheelhouse"] != avx2["wheelhouse"]
    for build in (plain, avx2):
        assert Path(build["wheelhouse"]).parent == tmp_path / "cache" / "chatpipe" / "wheels"
        assert "0.3.36" in Path(build["wheelhouse"]).name
    # The variant can be chosen by hand, e.g. to rebuild without AVX2.
    assert print_build(tmp_path, AMX_XEON, CHATPIPE_LLAMA_VARIANT="plain") == plain


@pytest.mark.llama
def test_the_installed_library_has_no_native_amx_or_avx512_code():
    """Reads llama.cpp's own system info from the installed library: a wheel built for
    the building CPU (GGML_NATIVE) shows AVX512 on this project's AMD EPYC and
    AMX_INT8 on an Intel with AMX; the portable build shows neither."""
    if os.environ.get("CHATPIPE_SKIP_LLAMA") == "1":
        pytest.skip("CHATPIPE_SKIP_LLAMA=1")
    venv = Path(os.environ.get("LLAMA_VENV") or ROOT / ".venv-llama")
    code = "import llama_cpp; print(llama_cpp.llama_print_system_info().decode())"
    info = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True,
                          text=True, timeout=120, check=True).stdout
    features = dict(re.findall(r"(\w+) = (\w+)", info))
    assert features, info
    enabled = {name for name, value in features.items() if value != "0"}
    assert not {n for n in enabled if n.startswith(("AMX", "AVX512", "AVX_VNNI"))}, info
    if os.uname().machine == "x86_64":
        assert "AVX2" in enabled or "SSE3" in enabled, info


# ---- a server that dies --------------------------------------------------------------

FAKE_SERVER = r'''
import http.server, os, signal, sys
args = sys.argv[sys.argv.index("llama_cpp.server") + 1:]
host, port = args[args.index("--host") + 1], int(args[args.index("--port") + 1])

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b'{"object": "list", "data": []}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        print("POST /v1/chat/completions: dying", flush=True)
        os.kill(os.getpid(), signal.SIGSEGV)

print("fake server up", flush=True)
http.server.HTTPServer((host, port), Handler).serve_forever()
'''


@pytest.fixture
def dying_server_env(tmp_path):
    """Env whose LLAMA_VENV's python is a server that answers GET /v1/models and
    dies with SIGSEGV on the first POST, as the native AMX build did."""
    bin_dir = tmp_path / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    (tmp_path / "fake_server.py").write_text(FAKE_SERVER)
    python = bin_dir / "python"
    python.write_text(f'#!/bin/sh\nexec {sys.executable} {tmp_path / "fake_server.py"} "$@"\n')
    python.chmod(0o755)
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF")
    return {**os.environ, "LLAMA_VENV": str(tmp_path / "venv"), "CHATPIPE_MODEL": str(model)}


POST = ("import sys, time, urllib.request\n"
        "try:\n"
        "    urllib.request.urlopen(sys.argv[1] + '/v1/chat/completions', data=b'{}', timeout=5)\n"
        "except OSError as err:\n"
        "    print('client saw:', err, flush=True)\n"
        "time.sleep(60)\n")


def test_run_stops_at_once_when_the_server_dies(dying_server_env):
    start = time.monotonic()
    port = _free_port()
    proc = subprocess.run(
        [sys.executable, str(LOCAL_SERVER), "run", "--port", str(port), "--",
         sys.executable, "-c", POST, f"http://127.0.0.1:{port}"],
        capture_output=True, text=True, timeout=60, env=dying_server_env)
    took = time.monotonic() - start
    assert proc.returncode == 1, proc.stderr
    assert "the server died with signal 11 (SIGSEGV)" in proc.stderr
    assert "POST /v1/chat/completions: dying" in proc.stderr  # the log's last lines
    assert "scripts/install-local-server --rebuild" in proc.stderr
    assert took < 20, f"took {took:.1f} s: the command ran on after the server died"


def test_serve_stops_at_once_when_the_server_dies(dying_server_env):
    proc = subprocess.Popen([sys.executable, str(LOCAL_SERVER), "serve", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dying_server_env)
    try:
        line = proc.stdout.readline()
        assert line.startswith("ready "), line + proc.stderr.read()
        subprocess.run([sys.executable, "-c", POST.replace("time.sleep(60)", ""),
                        line.split()[1]], timeout=30)
        status = proc.wait(timeout=10)
        err = proc.stderr.read()
    finally:
        proc.kill()
    assert status == 1
    assert "the server died with signal 11 (SIGSEGV)" in err
    assert "POST /v1/chat/completions: dying" in err


def _free_port():
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_smoke_test_failure_is_explained(dying_server_env):
    """The installer's last step loads the model in a child process; a crash there
    names the signal, shows the output's last lines and the rebuild command, and
    writes no stamp (so the next run tries again)."""
    venv = Path(dying_server_env["LLAMA_VENV"])
    (venv / "bin" / "python").write_text(
        "#!/bin/sh\ncat >/dev/null\necho 'ggml_backend_amx_mul_mat: ldtilecfg'\nkill -SEGV $$\n")
    proc = subprocess.run([str(INSTALL), "--check"], capture_output=True, text=True,
                          timeout=60, env=dying_server_env)
    assert proc.returncode == 1
    assert "died with signal 11 (SEGV)" in proc.stderr
    assert "ggml_backend_amx_mul_mat: ldtilecfg" in proc.stderr
    assert "scripts/install-local-server --rebuild" in proc.stderr
    assert not (venv / ".chatpipe-local-server").exists()
