"""Rewrite in place: the request of a rewrite and the hygiene of its answer.

A request's ``rewrite`` field (a JSON object, see :func:`check`) asks the
model to rewrite a text: the backend builds the messages
(:func:`messages`: a directive that fits the text's kind, code or prose,
the text between tags, the read-only lines around it, the file's path and
language, the instruction), and the runner streams the answer through
:class:`Hygiene`, which makes it a replacement for the text: one enclosing
code fence stripped, the text's trailing newline and its first line's
indentation kept (:func:`clean` says the same of a whole answer).  The
shell front end, ``chatpipe rewrite``, is :mod:`chatpipe.rewritecmd`.
"""

from __future__ import annotations

import re
from typing import Any

from chatpipe import protocol
from chatpipe.context import LANGUAGES, language_of
from chatpipe.errors import UsageError

#: The keys of a ``rewrite`` object: the required ones, then the others.
REQUIRED = ("text", "instruction")
OPTIONAL = ("path", "language", "before", "after")

#: Most UTF-8 bytes a rewrite's text and its context lines may have together.
MAX_BYTES = 1_000_000

#: Languages (:data:`chatpipe.context.LANGUAGES`' names, and Emacs' names
#: of some) whose text is not code: its rewrite is asked as prose.
PROSE = frozenset({"markdown", "org", "rst", "text", "latex", "tex", "csv"})

#: Languages whose text is code: "only the replacement code, no fences".
CODE = frozenset(LANGUAGES.values()) - PROSE | {
    "emacs-lisp", "c++", "js", "shell", "objc", "python-ts", "ts", "typescript-ts"}

#: The first line of a code fence (CommonMark: 3 or more backticks with an
#: info string without backticks, or 3 or more tildes); group 1 the fence.
_OPEN = re.compile(r"[ \t]*(`{3,}(?=[^`\n]*$)|~{3,})[^\n]*")

#: What may still become a fence's first line.
_OPEN_PREFIX = re.compile(r"[ \t]*(?:`{0,2}|~{0,2}|`{3,}[^`\n]*|~{3,}[^\n]*)")

#: Longest first line taken for an opening fence, in characters.
MAX_FENCE_LINE = 200

#: A line end at the end of a text.
_EOL = re.compile(r"\r?\n\Z")


def check(value: Any) -> bool:
    """True if VALUE is a ``rewrite`` object: ``{"text": STR, "instruction":
    STR (not empty), "path": STR|null, "language": STR|null, "before":
    STR|null, "after": STR|null}`` whose texts have at most
    :data:`MAX_BYTES` UTF-8 bytes together.

    Raises:
        UsageError: which key is missing, unknown or of the wrong type, or
            the size.
    """
    if not isinstance(value, dict):
        raise UsageError('"rewrite" must be an object {"text", "instruction", ...}')
    unknown = sorted(set(value) - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        raise UsageError(f'"rewrite": unknown key {unknown[0]!r}; known: '
                         + ", ".join(REQUIRED + OPTIONAL))
    for key in REQUIRED + OPTIONAL:
        if key in REQUIRED and not isinstance(value.get(key), str):
            raise UsageError(f'"rewrite": "{key}" must be a string')
        if key in OPTIONAL and not isinstance(value.get(key), (str, type(None))):
            raise UsageError(f'"rewrite": "{key}" must be a string or null')
    if not value["instruction"].strip():
        raise UsageError('"rewrite": "instruction" is empty: say how to rewrite the text')
    size = sum(len((value.get(k) or "").encode("utf-8", "surrogatepass"))
               for k in ("text", "before", "after"))
    if size > MAX_BYTES:
        raise UsageError(f'"rewrite": the text and its context lines have {size:,} bytes, '
                         f"more than {MAX_BYTES:,}")
    return True


def language(rewrite: dict) -> str | None:
    """The language of a REWRITE object: its ``language``, else its
    path's (:func:`chatpipe.context.language_of`), else None."""
    if rewrite.get("language"):
        return rewrite["language"].lower()
    return language_of(rewrite["path"]) if rewrite.get("path") else None


def is_code(name: str | None) -> bool:
    """Whether the language NAME (or None) counts as code (:data:`CODE`)."""
    return name is not None and name in CODE


def _tags(*texts: str) -> tuple[str, str, str]:
    """The tag names of the text, the lines before and after: ``rewrite``,
    ``before``, ``after``, with a suffix ``-N`` when one of TEXTS holds
    one of their tags, so that no text can close its own block."""
    n = 0
    while True:
        suffix = f"-{n}" if n else ""
        names = (f"rewrite{suffix}", f"before{suffix}", f"after{suffix}")
        if not any(f"<{name}>" in text or f"</{name}>" in text
                   for name in names for text in texts):
            return names
        n += 1


def _block(tag: str, text: str) -> str:
    """TEXT between the lines ``<TAG>`` and ``</TAG>``."""
    return f"<{tag}>\n{text}{'' if text.endswith(chr(10)) or not text else chr(10)}</{tag}>"


def messages(rewrite: dict, history: list[dict] = ()) -> list[dict]:
    """The messages of a (checked) REWRITE object: a system message, the
    directive (it replaces the template's system prompt); HISTORY (the
    request's own messages); and a user message with the file's path and
    language, the lines before the text, the text and the lines after
    it, each between tags (``<before>``, ``<rewrite>``, ``<after>``),
    and the instruction.

    Code (:func:`is_code`) is asked as "only the replacement code, no
    fences, complete"; other text as "only the replacement text".
    """
    text, before, after = rewrite["text"], rewrite.get("before") or "", rewrite.get("after") or ""
    path, lang = rewrite.get("path"), language(rewrite)
    tag, before_tag, after_tag = _tags(text, before, after, rewrite["instruction"], path or "")
    kind = "code" if is_code(lang) else "text"
    directive = (
        f"You rewrite a part of a file as the user asks. The text to rewrite is between "
        f"<{tag}> and </{tag}>; the lines between <{before_tag}> and </{before_tag}> and "
        f"between <{after_tag}> and </{after_tag}> come before and after it in the file: "
        "they are context only, never repeat or change them. ")
    if kind == "code":
        directive += (
            "Answer with only the replacement code: complete (all of it, nothing elided or "
            "left as a comment like '...'), with no code fences, no tags, no explanation and "
            "nothing before or after it, indented as the text is.")
    else:
        directive += ("Answer with only the replacement text: no tags, no quotes, no "
                      "explanation and nothing before or after it; keep its markup.")
    about = []
    if path:
        about.append(f"File: {path}" + (f" ({lang})" if lang else ""))
    elif lang:
        about.append(f"Language: {lang}")
    if before:
        about.append(_block(before_tag, before))
    about.append(_block(tag, text))
    if after:
        about.append(_block(after_tag, after))
    about.append(f"Instruction: {rewrite['instruction']}")
    return [{"role": "system", "content": directive}, *history,
            {"role": "user", "content": "\n\n".join(about)}]


def _opening(line: str) -> str | None:
    """The fence of LINE (a first line without its newline) if it opens
    a code fence, else None."""
    match = _OPEN.fullmatch(line) if len(line) <= MAX_FENCE_LINE else None
    return match.group(1) if match else None


def _fence_chars(fence: str) -> str:
    """The characters a closing line of FENCE and what follows it may have."""
    return " \t\r\n" + fence[0]


def _drop_close(text: str, fence: str) -> str:
    """TEXT without its last line, and what follows it, if that line closes
    FENCE (its character at least as many times, between blanks) and only
    whitespace follows."""
    close = re.compile(r"(?:\A|(?<=\n))[ \t]*" + re.escape(fence[0]) + "{%d,}\\s*\\Z"
                       % len(fence))
    start = len(text.rstrip(_fence_chars(fence)))
    match = close.search(text, text.rfind("\n", 0, start) + 1 if start else 0)
    return text[:match.start()] if match else text


def _indent(original: str) -> str:
    """The indentation of ORIGINAL's first line, if it has text."""
    match = re.match(r"[ \t]+(?=[^ \t\r\n])", original)
    return match.group() if match else ""


def _eol(original: str) -> str:
    """ORIGINAL's last line end (``\\n`` or ``\\r\\n``), or ``""``."""
    match = _EOL.search(original)
    return match.group() if match else ""


def clean(answer: str, original: str) -> str:
    """The replacement for the text ORIGINAL that the whole ANSWER gives.

    Unless ORIGINAL itself begins with a fence line, an ANSWER whose
    first line opens a code fence (```` ```python ````) loses that line
    and, if its last non-blank line closes that fence, that line and the
    blanks after it: one enclosing fence, not the fences inside.  The
    result ends with ORIGINAL's line end if ORIGINAL has one (and lacks
    one if ORIGINAL does), and its first line gets ORIGINAL's first line's
    indentation if it has none.  :class:`Hygiene` does the same to a stream.
    """
    if _opening(original.partition("\n")[0]) is None:
        first, _, rest = answer.partition("\n")
        fence = _opening(first)
        if fence:
            answer = _drop_close(rest, fence)
    return _fix_start(_fix_end(answer, "", original), original)


def _fix_end(tail: str, emitted: str, original: str) -> str:
    """TAIL (the end of a replacement, after EMITTED's last character or
    ``""``) with ORIGINAL's line end."""
    eol = _eol(original)
    if eol and not (tail or emitted).endswith("\n"):
        return tail + eol
    if not eol:
        return _EOL.sub("", tail, count=1)
    return tail


def _fix_start(text: str, original: str) -> str:
    """TEXT, the start of a replacement, with ORIGINAL's indentation if
    its first character is not blank."""
    indent = _indent(original)
    return indent + text if indent and text and text[0] not in " \t\r\n" else text


class Hygiene:
    """A :class:`chatpipe.protocol.Sink` in front of SINK that makes an
    answer's ``delta`` events the replacement for the text ORIGINAL, as
    :func:`clean` says, while they stream: it holds back only the first
    line while it may still open a code fence, and the blanks, line ends
    and fence characters at the end of what came, which may close the
    fence or be the line end to drop; the rest goes on at once.  What it
    holds goes on before the ``done`` event (or at :meth:`release`).
    Other events go on as they come.
    """

    def __init__(self, sink: protocol.Sink, original: str) -> None:
        self._sink = sink
        self._original = original
        self._deciding = _opening(original.partition("\n")[0]) is None
        self._head = ""
        self._fence: str | None = None
        self._held: list[str] = []
        self._last = ""

    def emit(self, event: dict) -> None:
        """Take EVENT: see the class docstring."""
        if event["type"] == "delta":
            self._take(event["content"])
            return
        if event["type"] == "done":
            self._finish()
        self._sink.emit(event)

    def flush(self) -> None:
        """Flush SINK."""
        self._sink.flush()

    def release(self) -> None:
        """Send what is held as it came (the stream failed: no hygiene)."""
        text = self._head + "".join(self._held)
        self._head, self._held = "", []
        if text:
            self._sink.emit(protocol.delta(text))

    def _take(self, text: str) -> None:
        if self._deciding:
            self._head += text
            first, newline, rest = self._head.partition("\n")
            if not newline and len(first) <= MAX_FENCE_LINE and _OPEN_PREFIX.fullmatch(first):
                return
            self._deciding = False
            self._fence = _opening(first) if newline else None
            text, self._head = (rest if self._fence else self._head), ""
        if self._held and not text.strip(self._holdable()):
            self._held.append(text)     # held, as what it follows: no rescan
            return
        pending = "".join(self._held) + text
        cut = self._cut(pending)
        if cut:
            self._out(pending[:cut])
        self._held = [pending[cut:]] if cut < len(pending) else []

    def _holdable(self) -> str:
        """The characters held at the end of the answer (see :meth:`_cut`)."""
        return "\r\n" if self._fence is None else _fence_chars(self._fence)

    def _cut(self, text: str) -> int:
        """How much of TEXT (what is not sent yet) may go now."""
        start = len(text.rstrip(self._holdable()))
        if self._fence is None:
            return start
        if start == 0 and not self._last:
            return 0
        line_end = re.compile(r"\r?\n").search(text, start)
        return line_end.start() if line_end else len(text)

    def _out(self, text: str) -> None:
        if not self._last:
            text = _fix_start(text, self._original)
        self._last = text[-1]
        self._sink.emit(protocol.delta(text))

    def _finish(self) -> None:
        if self._deciding:
            self._deciding = False
            first, newline, rest = self._head.partition("\n")
            self._fence = _opening(first)
            self._held, self._head = [rest if self._fence else self._head], ""
        tail = "".join(self._held)
        if self._fence:
            tail = _drop_close(tail, self._fence)
        tail = _fix_end(tail, self._last, self._original)
        self._held = []
        if tail:
            self._out(tail)
