"""The Emacs benchmarks beside gptel: finding gptel, running
benchmarks/emacs-compare.el (N deltas into a buffer, chatpipe and gptel)
and benchmarks/emacs-tty.el (Emacs' CPU and redisplays while a paced answer
streams into a visible ``emacs -nw`` in tmux).

gptel is never part of this repository: point the environment variable
GPTEL_DIR at a checkout of https://github.com/karthink/gptel.  On Emacs
before 29 it needs the ``compat`` package: it is looked for in COMPAT_DIR,
next to GPTEL_DIR, in ~/.emacs.d/elpa and in Debian's elpa-compat
(/usr/share/emacs/site-lisp/elpa).
"""

from __future__ import annotations

import glob
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.server import prose

ROOT = Path(__file__).resolve().parent.parent
SITE_ELPA = "/usr/share/emacs/site-lisp/elpa"
LEFT_OUT = ("the gptel comparisons (Emacs beside gptel, and gptel's rows of Emacs' CPU "
            "with redisplay) are left out")


def _newest(pattern: str) -> str | None:
    found = sorted(glob.glob(pattern))
    return found[-1] if found else None


def gptel_load_path(emacs: str, env: dict) -> tuple[list[str] | None, str]:
    """The load path for gptel from GPTEL_DIR, or None; and a message: the
    gptel version and commit, or why gptel is left out."""
    gptel_dir = os.environ.get("GPTEL_DIR")
    if not gptel_dir:
        return None, (f"GPTEL_DIR not set: {LEFT_OUT} (set it to a checkout of "
                      "https://github.com/karthink/gptel)")
    if not (Path(gptel_dir) / "gptel.el").is_file():
        return None, f"GPTEL_DIR={gptel_dir} has no gptel.el: {LEFT_OUT}"
    paths = [str(Path(gptel_dir).resolve())]
    compat = (os.environ.get("COMPAT_DIR")
              or _newest(str(Path(gptel_dir).parent / "compat*"))
              or _newest(os.path.expanduser("~/.emacs.d/elpa/compat-*"))
              or _newest(f"{SITE_ELPA}/compat-*"))
    if compat and Path(compat).is_dir():
        paths.append(compat)
    probe = subprocess.run(
        [emacs, "--batch", "-Q", *[a for p in paths for a in ("-L", p)], "--eval",
         "(progn (require 'gptel) (require 'gptel-openai) (princ (format \"GPTEL %s\\n\" gptel-version)))"],
        capture_output=True, text=True, env=env, timeout=120)
    version = next((line.split()[1] for line in probe.stdout.splitlines()
                    if line.startswith("GPTEL ")), None)
    if version is None:
        error = (probe.stderr.strip().splitlines() or ["?"])
        error = next((line for line in error if "error" in line.lower()), error[-1])
        hint = (" (on Emacs 28 gptel needs compat: apt-get install elpa-compat, or COMPAT_DIR)"
                if "define-keymap" in error or "compat" in error else "")
        return None, f"gptel in {gptel_dir} does not load: {error[:300]}{hint}; {LEFT_OUT}"
    commit = subprocess.run(["git", "-C", gptel_dir, "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    return paths, f"gptel {version}" + (f" ({commit})" if commit else "")


def _load_args(paths: list[str]) -> list[str]:
    return [a for p in paths for a in ("-L", p)]


def emacs_compare(emacs: str, url: str, command: str, sizes: list[int], repeats: int,
                  gptel_paths: list[str], env: dict) -> dict | None:
    """benchmarks/emacs-compare.el; its JSON, or None (output on stderr)."""
    proc = subprocess.run(
        [emacs, "--batch", "-Q", "-L", str(ROOT / "elisp"), *_load_args(gptel_paths),
         "-l", str(ROOT / "benchmarks" / "emacs-bench.el"),
         "-l", str(ROOT / "benchmarks" / "emacs-compare.el"),
         "--eval", f"(chatpipe-compare-main {json.dumps(url)} {json.dumps(command)} "
                   f"'({' '.join(map(str, sizes))}) {repeats})"],
        capture_output=True, text=True, env=env, timeout=1800)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("CHATPIPE-COMPARE "):
            return json.loads(line[len("CHATPIPE-COMPARE "):])
    print(proc.stdout[-2000:], proc.stderr[-3000:], file=sys.stderr)
    return None


def markdown_mode_dir() -> str | None:
    return (os.environ.get("MARKDOWN_MODE_DIR")
            or _newest(f"{SITE_ELPA}/markdown-mode-*")
            or _newest(os.path.expanduser("~/.emacs.d/elpa/markdown-mode-*")))


def emacs_tty(emacs: str, url: str, command: str, clients: list[str], n: int, pace: float,
              repeats: int, gptel_paths: list[str] | None, env: dict) -> dict:
    """Run benchmarks/emacs-tty.el for each of CLIENTS in its own ``emacs -nw``
    in its own tmux server (a private socket), one after the other.

    Returns {client: {"runs": [...], "idle": {...}} or {"error": msg}}.
    """
    tmux = shutil.which("tmux")
    markdown = markdown_mode_dir()
    results: dict = {}
    budget = 60 + repeats * (n * max(pace, 1) / 1000 + 15) * 2
    with tempfile.TemporaryDirectory(prefix="chatpipe-tty-") as tmp:
        expected = Path(tmp) / "expected.md"
        expected.write_text(prose(n), encoding="utf-8")
        for client in clients:
            gptel = client.startswith("gptel")
            out = Path(tmp) / f"{client}.jsonl"
            args = [emacs, "-nw", "-Q", "-L", str(ROOT / "elisp"), "-L", markdown,
                    *(_load_args(gptel_paths) if gptel else []),
                    "-l", str(ROOT / "benchmarks" / "emacs-bench.el"),
                    *(["-l", str(ROOT / "benchmarks" / "emacs-compare.el")] if gptel else []),
                    "-l", str(ROOT / "benchmarks" / "emacs-tty.el"),
                    "--eval", f"(chatpipe-tty-main '{client} {json.dumps(url)} "
                              f"{json.dumps(command)} {n} {pace} {repeats} "
                              f"{json.dumps(str(out))} {json.dumps(str(expected))})"]
            socket = f"chatpipe-bench-{os.getpid()}-{client}"
            start = subprocess.run([tmux, "-L", socket, "-f", "/dev/null", "new-session", "-d",
                                    "-s", "bench", "-x", "120", "-y", "40",
                                    " ".join(map(shlex.quote, args))],
                                   env={**env, "TERM": env.get("TERM") or "xterm-256color"},
                                   capture_output=True, text=True, timeout=30)
            try:
                if start.returncode != 0:
                    results[client] = {"error": f"tmux failed: {start.stderr.strip()}"}
                    continue
                end = time.monotonic() + budget
                lines: list[dict] = []
                while time.monotonic() < end:
                    time.sleep(0.25)
                    if out.exists():
                        lines = [json.loads(line) for line in
                                 out.read_text().splitlines() if line.strip()]
                        if lines and lines[-1]["kind"] == "end":
                            break
                    alive = subprocess.run([tmux, "-L", socket, "has-session", "-t", "bench"],
                                           capture_output=True).returncode == 0
                    if not alive:
                        break
                for profile in sorted(Path(tmp).glob(f"{out.name}.*.profile")):
                    print(f"Emacs profile of {client} (emacs -nw):\n{profile.read_text()}",
                          file=sys.stderr)
                errors = [line["message"] for line in lines if line["kind"] == "error"]
                runs = [line for line in lines if line["kind"] == "run"]
                idle = next((line for line in lines if line["kind"] == "idle"), None)
                if errors or not runs:
                    screen = subprocess.run([tmux, "-L", socket, "capture-pane", "-p", "-t", "bench"],
                                            capture_output=True, text=True).stdout
                    results[client] = {"error": (errors[0] if errors else
                                                 "no result (Emacs ended or timed out)")
                                       + (f"; screen: {screen.strip()[-500:]}" if screen.strip() else "")}
                else:
                    results[client] = {"runs": runs, "idle": idle}
            finally:
                subprocess.run([tmux, "-L", socket, "kill-server"], capture_output=True, timeout=30)
                # tmux leaves the socket file of a killed server behind.
                (Path(env.get("TMUX_TMPDIR") or "/tmp") / f"tmux-{os.getuid()}" / socket).unlink(
                    missing_ok=True)
    return results


def tty_summary(result: dict, n: int) -> dict:
    """Medians of the runs of one client: cpu (s), wall (s), redisplays,
    CPU per delta (us), idle CPU over the same time, all texts right."""
    runs = result["runs"]
    cpu = statistics.median(r["cpu"] for r in runs)
    return {"cpu": cpu, "wall": statistics.median(r["wall"] for r in runs),
            "redisplays": statistics.median(r["redisplays"] for r in runs),
            "per_delta_us": cpu / n * 1e6,
            "idle_cpu": result["idle"]["cpu"] if result.get("idle") else float("nan"),
            "ok": all(r["ok"] for r in runs), "mode": runs[0].get("mode", "?"),
            "runs": len(runs)}
