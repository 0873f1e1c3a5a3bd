"""Secrets out of everything chatpipe writes: the one place that redacts.

:func:`redact` replaces secrets (API keys, URL passwords) in a string;
:class:`TextRedactor` does it for an answer's text, which is written in
runs (one per network read), so that a secret the server cuts across
deltas or reads is found too.  :class:`chatpipe.protocol.Output` applies
them to every event, and the CLI to every line it writes on stderr.
"""

from __future__ import annotations

from typing import Iterable

#: What a secret is replaced with.
REDACTED = "***"

def redact(text: str, secrets: Iterable[str]) -> str:
    """TEXT with every one of SECRETS (non-empty strings) replaced by ``***``.

    This is the one redaction function: :class:`chatpipe.protocol.Output`
    applies it to every
    string of every event, and the CLI to every line it writes on stderr.
    """
    for secret in secrets:
        if secret and secret in text:
            text = text.replace(secret, REDACTED)
    return text


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
