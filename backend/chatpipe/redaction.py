"""Secrets out of everything chatpipe writes: the one place that redacts.

:func:`secrets` is the rule of what a secret is, used by every place that
collects them (a template's ``${env:NAME}`` values and URL credentials,
an MCP server's ``env`` and ``headers``).  :func:`redact` replaces
secrets in a string; :class:`TextRedactor` does it for an answer's text,
which is written in runs (one per network read), so that a secret the
server cuts across deltas or reads is found too.
:class:`chatpipe.protocol.Output` applies them to every event, and the CLI
to every line it writes on stderr.  :func:`guard_stderr`, installed by
the one entry point (:func:`chatpipe.cli.main`), passes every line the
process writes on stderr (its libraries' logging, warnings, tracebacks)
through :func:`redact_pieces`.
"""

from __future__ import annotations

import io
import re
import sys
import threading
from typing import Any, BinaryIO, Iterable

#: What a secret is replaced with.
REDACTED = "***"

#: The shortest secret, in characters (see :func:`secrets`).
MIN_SECRET = 16

#: Parts of the names of environment variables and headers whose values
#: may be secrets (matched anywhere in the name, in any case).
SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASS|PWD|AUTH|COOKIE|CREDENTIAL|SESSION|SIGNATURE",
                         re.IGNORECASE)

#: The password of a URL (``scheme://user:password@host``).
_URL_PASSWORD = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*:([^/\s@]+)@")

#: What a value is cut at into the words that may be secrets.
_SEPARATORS = re.compile(r"[\s,;]+")

#: Every secret :func:`secrets` found in this process (see :func:`guard_stderr`).
_known: list[str] = []
_known_lock = threading.Lock()


def looks_secret(text: str) -> bool:
    """Whether TEXT, a string, looks like a secret: :data:`MIN_SECRET` (16)
    characters or more, no whitespace, not a URL, and at least two kinds
    of lower-case letters, upper-case letters and digits.  See
    :func:`secrets`, which applies it."""
    if len(text) < MIN_SECRET or "://" in text or any(c.isspace() for c in text):
        return False
    kinds = (any(c.islower() for c in text) + any(c.isupper() for c in text)
             + any(c.isdigit() for c in text))
    return kinds >= 2


def secrets(value: str, name: str | None = None) -> list[str]:
    """The secrets in VALUE, a string chatpipe sends on the user's behalf,
    to redact from everything it writes; the one rule of what a secret is.

    A secret is a string of at least 16 characters, without whitespace,
    that mixes at least two of lower-case letters, upper-case letters and
    digits (so ``ollama``, ``EMPTY``, ``lm-studio``, ``sk-no-key-required``,
    ``info`` and any short key are not, and no text is ever changed for
    them).  Candidates are VALUE itself, its words (cut at whitespace,
    ``,`` and ``;``: ``Bearer KEY`` gives KEY) and the value of a
    ``name=value`` word, and the password of a URL in it
    (``scheme://user:password@host``).  With NAME (the environment
    variable or header VALUE is under: an MCP server's ``env`` and
    ``headers``), VALUE is a candidate only when NAME looks secret (holds
    ``KEY``, ``TOKEN``, ``SECRET``, ``PASS``, ``PWD``, ``AUTH``, ``COOKIE``,
    ``CREDENTIAL``, ``SESSION`` or ``SIGNATURE`` in any case, e.g.
    ``Authorization``, ``X-Api-Key``, ``DB_PASSWORD``), but a URL password
    counts whatever the name; without NAME (a template's ``${env:NAME}``
    filled into its URL or headers, a URL's user name or password), VALUE
    is a candidate by its position.  Either way a candidate is a secret
    only if it looks like one (:func:`looks_secret`).

    Every secret found is also remembered for the process, so that
    :func:`guard_stderr` redacts it from whatever is written on stderr.

    Args:
        value: the string that may hold secrets.
        name: the name VALUE is under, or None.
    Returns:
        The secrets, longest first, each once; ``[]`` when there is none.
    """
    candidates = [m.group(1) for m in _URL_PASSWORD.finditer(value)]
    if name is None or SECRET_NAME.search(name):
        words = [w for w in _SEPARATORS.split(value) if w]
        candidates += [value, *words, *(w.partition("=")[2] for w in words if "=" in w[1:])]
    found = sorted({c for c in candidates if looks_secret(c)}, key=lambda c: (-len(c), c))
    if found:
        with _known_lock:
            _known.extend(s for s in found if s not in _known)
    return found


def known() -> list[str]:
    """Every secret :func:`secrets` has found in this process so far."""
    with _known_lock:
        return list(_known)


def redact(text: str, secrets: Iterable[str]) -> str:
    """TEXT with every one of SECRETS (non-empty strings, those
    :func:`secrets` found) replaced by ``***``; TEXT as it is when it holds
    none of them.

    :class:`chatpipe.protocol.Output` applies it to every string of every
    event, and the CLI to every line it writes on stderr.
    """
    for secret in secrets:
        if secret and secret in text:
            text = text.replace(secret, REDACTED)
    return text


def redact_value(value: Any, secrets: Iterable[str]) -> Any:
    """VALUE (JSON data: strings, numbers, lists, objects) with SECRETS
    redacted (:func:`redact`) from every string in it, keys too; a copy
    where anything changed."""
    if isinstance(value, str):
        return redact(value, secrets)
    if isinstance(value, list):
        return [redact_value(v, secrets) for v in value]
    if isinstance(value, dict):
        return {redact(k, secrets) if isinstance(k, str) else k: redact_value(v, secrets)
                for k, v in value.items()}
    return value


def redact_pieces(text: str, secrets: Iterable[str], size: int = 8) -> str:
    """TEXT with every run of it made of pieces of SECRETS at least SIZE
    characters long replaced by one ``***``: a whole secret, and a part of
    one that a library cut short (pydantic, for one, quotes a long value
    as its beginning, ``...`` and its end).  For diagnostics (stderr),
    where a few characters too many redacted harm nothing.

    Args:
        text: the text to write.
        secrets: the secrets (:func:`known`).
        size: the shortest piece of a secret redacted.
    Returns:
        TEXT, redacted; TEXT itself when it holds no such piece.
    """
    spans = []
    for secret in secrets:
        for i in range(len(secret) - size + 1):
            piece = secret[i:i + size]
            j = text.find(piece)
            while j >= 0:
                spans.append((j, j + size))
                j = text.find(piece, j + 1)
    return _cut(text, 0, len(text), spans) if spans else text


class _StderrGuard(io.RawIOBase):
    """A binary stream that writes to RAW each line written to it, with
    the process's secrets (:func:`known`) redacted by
    :func:`redact_pieces`; a line is written when it is whole, or at a
    flush."""

    def __init__(self, raw: BinaryIO) -> None:
        super().__init__()
        self._raw = raw
        self._pending = b""
        self._lock = threading.RLock()

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._raw.fileno()

    def isatty(self) -> bool:
        return self._raw.isatty()

    def _emit(self, data: bytes) -> None:
        text = data.decode("utf-8", "surrogateescape")
        self._raw.write(redact_pieces(text, known()).encode("utf-8", "surrogateescape"))

    def write(self, data) -> int:
        data = bytes(data)
        with self._lock:
            whole, newline, self._pending = (self._pending + data).rpartition(b"\n")
            if newline:
                self._emit(whole + newline)
                self._raw.flush()
            if len(self._pending) > 1 << 16:
                self.flush()
        return len(data)

    def flush(self) -> None:
        with self._lock:
            if self._pending:
                pending, self._pending = self._pending, b""
                self._emit(pending)
            if not self._raw.closed:
                self._raw.flush()

    def close(self) -> None:
        """Write what is pending; RAW stays open."""
        if not self.closed:
            self.flush()
        super().close()


def guard_stderr() -> None:
    """Make ``sys.stderr`` (text, and its ``buffer``) redact the process's
    secrets from every line written to it, whoever writes it: chatpipe,
    its libraries' logging (the MCP SDK's tracebacks quote what a server
    wrote), warnings, uncaught exceptions' tracebacks.  Called once, at
    start-up, by :func:`chatpipe.cli.main`, before anything is logged;
    nothing happens when there is no stderr or it is already guarded.
    What bypasses ``sys.stderr`` (writes to file descriptor 2 from C
    code, or by child processes) is not covered: chatpipe's children (MCP
    servers) write their stderr to a log file."""
    stream = sys.stderr
    if stream is None or isinstance(getattr(stream, "buffer", None), _StderrGuard):
        return
    raw = getattr(stream, "buffer", None)
    if raw is None:
        return
    stream.flush()
    sys.stderr = io.TextIOWrapper(_StderrGuard(raw), encoding=stream.encoding or "utf-8",
                                  errors=stream.errors or "backslashreplace",
                                  line_buffering=True, write_through=True)


#: The shortest beginning of a secret held back at the end of a run of
#: text (see :class:`TextRedactor`); a shorter one is written at once.
HOLD = 8


class TextRedactor:
    """Redacts SECRETS from text that is written in runs (the text of one
    network read each), including a secret split across runs.

    A run that ends with the first :data:`HOLD` or more characters of a
    secret keeps them back until the next run shows whether the secret
    goes on; they are written as ``***`` either way (the whole secret, or
    a beginning of it that long).  A secret that starts in text already
    written (fewer than :data:`HOLD` characters of it) has the rest of it
    redacted.  So a secret is never written, nor its first :data:`HOLD`
    characters, whatever the cuts between runs, and ordinary text (which
    never ends with 8 characters of a key) is written at once.
    Work per run: one ``str.find`` per secret, and at most one
    ``startswith`` per character of the longest secret.

    Args:
        secrets: the list of strings to redact (read at each run, so
            secrets added later count).
    """

    def __init__(self, secrets: list[str]) -> None:
        self.secrets = secrets
        self._tail = ""  # the end of the text written, as long as a secret less one
        self._held = ""  # text kept back: a secret's beginning

    def text(self, text: str, final: bool = False) -> str:
        """The part of TEXT (the next run) to write now, redacted; with
        FINAL (the text ends here) all of it, a held beginning of a secret
        written as ``***``."""
        secrets = [s for s in self.secrets if s]
        if not secrets:
            text, self._held = self._held + text, ""
            return text
        keep = max(map(len, secrets)) - 1
        written, held = self._tail, self._held
        self._held = ""
        whole = written + held + text
        start, end = len(written), len(whole)
        spans = []  # the parts of the new text inside a secret, as (begin, end) in WHOLE
        for secret in secrets:
            i = whole.find(secret, max(0, start - len(secret) + 1))
            while i >= 0:
                spans.append((max(i, start), i + len(secret)))
                i = whole.find(secret, i + 1)
        hold = None  # where a secret's beginning at the end of WHOLE starts
        for p in range(max(0, end - keep), end - HOLD + 1):
            piece = whole[p:]
            if any(secret.startswith(piece) for secret in secrets):
                hold = max(p, start)
                break
        if held and not any(begin <= start < stop for begin, stop in spans) and (
                hold is None or hold > start):
            spans.append((start, start + len(held)))  # not the secret after all
        if hold is not None:
            if final:
                spans.append((hold, end))
            else:
                self._held, end = whole[hold:], hold
        out = _cut(whole, start, end, spans)
        self._tail = "" if final else (written + out)[-keep:]
        return out


def _cut(whole: str, start: int, end: int, spans: list[tuple[int, int]]) -> str:
    """WHOLE[START:END] with each of SPANS (merged where they touch)
    replaced by one :data:`REDACTED`."""
    out, pos = [], start
    for begin, stop in sorted(spans):
        stop = min(stop, end)
        if stop <= pos:
            continue
        if begin > pos:
            out.append(whole[pos:begin])
            out.append(REDACTED)
        elif not out or out[-1] != REDACTED:
            out.append(REDACTED)
        pos = stop
    out.append(whole[pos:end])
    return "".join(out)
