"""``make test``: both suites run even when one fails, their counts and a total
are printed last, and the exit status says whether either failed.

The suites are fakes (shell commands printing a runner's closing lines) given
to scripts/run-tests through RUFF, PYTEST and EMACS_TESTS, the variables the
Makefile passes it."""

from __future__ import annotations

import os
import shlex
import subprocess

import pytest

from conftest import ROOT

RUNNER = ROOT / "scripts" / "run-tests"
PASSING_EMACS = "Ran 4 tests, 4 results as expected, 0 unexpected", "4 passed, 0 failed"


def suite(*lines: str, status: int = 0, marker=None) -> str:
    """A shell command that prints LINES and exits with STATUS (touching MARKER)."""
    parts = [f"echo {shlex.quote(line)}" for line in lines]
    if marker is not None:
        parts.append(f"touch {shlex.quote(str(marker))}")
    return "; ".join([*parts, f"exit {status}"])


def clean_env() -> dict[str, str]:
    """The environment without what an outer ``make test`` passes down."""
    drop = {"MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "RUFF", "PYTEST", "EMACS_TESTS"}
    return {k: v for k, v in os.environ.items() if k not in drop}


def run_tests(ruff="true", pytest_="true", emacs="true") -> subprocess.CompletedProcess:
    env = {**clean_env(), "RUFF": ruff, "PYTEST": pytest_, "EMACS_TESTS": emacs}
    return subprocess.run([str(RUNNER)], capture_output=True, text=True, env=env, timeout=60)


def summary(proc: subprocess.CompletedProcess) -> list[str]:
    """The lines after "== summary"."""
    lines = proc.stdout.splitlines()
    return lines[lines.index("== summary") + 1:]


def test_make_test_runs_the_suites_through_the_runner():
    proc = subprocess.run(["make", "-n", "--no-print-directory", "test"], capture_output=True,
                          text=True, cwd=ROOT, env=clean_env(), timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "scripts/run-tests" in proc.stdout.splitlines()


def test_a_failing_python_suite_still_runs_the_emacs_suite(tmp_path):
    """Through make, with the suites' commands replaced by make variables."""
    ran = tmp_path / "emacs-ran"
    proc = subprocess.run(
        ["make", "--no-print-directory", "test-all", "RUFF=true",
         "PYTEST=" + suite("FAILED tests/test_x.py::test_b - assert 1 == 2",
                           "===== 1 failed, 2 passed, 1 skipped in 0.12s =====", status=1),
         "EMACS_TESTS=" + suite(*PASSING_EMACS, marker=ran)],
        capture_output=True, text=True, cwd=ROOT, env=clean_env(), timeout=60)
    assert proc.returncode != 0
    assert ran.exists()
    assert summary(proc) == ["python: ruff passed",
                             "python: ===== 1 failed, 2 passed, 1 skipped in 0.12s =====",
                             "emacs: 4 passed, 0 failed",
                             "6 passed, 1 failed, 1 skipped"]


def test_a_failing_emacs_suite_fails():
    proc = run_tests(pytest_=suite("=== 3 passed in 0.01s ==="),
                     emacs=suite("3 passed, 2 failed, 1 skipped", status=1))
    assert proc.returncode == 1
    assert summary(proc)[1:] == ["python: === 3 passed in 0.01s ===",
                                 "emacs: 3 passed, 2 failed, 1 skipped",
                                 "6 passed, 2 failed, 1 skipped"]


def test_both_passing_exits_0():
    proc = run_tests(pytest_=suite("=== 3 passed in 0.01s ==="), emacs=suite(*PASSING_EMACS))
    assert proc.returncode == 0, proc.stdout
    assert summary(proc)[-1] == "7 passed, 0 failed"


def test_ruff_findings_do_not_stop_pytest_and_count_as_a_failure(tmp_path):
    ran = tmp_path / "pytest-ran"
    proc = run_tests(ruff=suite("Found 2 errors.", status=1),
                     pytest_=suite("=== 3 passed in 0.01s ===", marker=ran), emacs=suite(*PASSING_EMACS))
    assert proc.returncode == 1
    assert ran.exists()
    assert summary(proc)[0] == "python: ruff failed (exit status 1: counted as 1 failed)"
    assert summary(proc)[-1] == "7 passed, 1 failed"


@pytest.mark.parametrize("closing, status, total", [
    ("= 2 failed, 10 passed, 1 skipped, 1 xfailed in 65.00s (0:01:05) =", 1,
     "14 passed, 2 failed, 1 skipped"),
    ("3 passed, 1 error in 1.00s", 1, "7 passed, 1 failed"),                # pytest -q
    ("\x1b[31m= \x1b[31m\x1b[1m1 failed\x1b[0m, \x1b[32m2 passed\x1b[0m\x1b[31m in 0.10s\x1b[0m\x1b[31m =\x1b[0m",
     1, "6 passed, 1 failed"),                                               # with colours
    ("= no tests ran in 0.01s =", 5, "4 passed, 1 failed"),
    ("Segmentation fault", 139, "4 passed, 1 failed"),                      # no closing line
])
def test_pytest_closing_lines(closing, status, total):
    proc = run_tests(pytest_=suite(closing, status=status), emacs=suite(*PASSING_EMACS))
    assert proc.returncode == (1 if status else 0)
    assert summary(proc)[-1] == total


def test_an_emacs_suite_without_a_count_is_a_failure():
    proc = run_tests(pytest_=suite("=== 3 passed in 0.01s ==="),
                     emacs=suite("emacs: command not found", status=127))
    assert proc.returncode == 1
    assert summary(proc)[-2:] == ["emacs: no count printed (exited with status 127: counted as 1 failed)",
                                  "3 passed, 1 failed"]
