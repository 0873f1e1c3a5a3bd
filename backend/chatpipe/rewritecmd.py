"""``chatpipe rewrite``: rewrite lines of a file from the shell.

The command reads the file, fills a request's ``rewrite`` object (see
:mod:`chatpipe.rewrite`) with the lines to rewrite and the lines around
them, and runs it like any request (:func:`chatpipe.runner.run`).  It
prints the replacement, or with ``--diff`` a unified diff against the
file, or with ``--apply`` writes the file: atomically, and only if its
bytes are still those it read.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import hashlib
import os
import re
import stat
import sys
import tempfile

from chatpipe import protocol, requestfields
from chatpipe.userfiles import NotRegular, read_at_most
from chatpipe.errors import ChatpipeError, UsageError
from chatpipe.textview import TextView

#: Largest file ``chatpipe rewrite`` reads, in bytes.
MAX_FILE_BYTES = 10_000_000

#: A file's lines, each with its ``\n`` (the last may have none).
_LINES = re.compile(r"[^\n]*\n|[^\n]+")


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add ``rewrite`` to COMMANDS (``chatpipe``'s subcommands)."""
    parser = commands.add_parser(
        "rewrite", help="rewrite lines of a file as an instruction says",
        description="Ask TEMPLATE's model to rewrite lines of FILE as INSTRUCTION says "
                    "and print the replacement (one enclosing code fence stripped, the "
                    "lines' trailing newline and first indentation kept); --diff prints a "
                    "unified diff against the file, --apply writes it.")
    parser.add_argument("template", metavar="TEMPLATE",
                        help="a template name (see `chatpipe templates list`) or a .json file path")
    parser.add_argument("--file", required=True, metavar="FILE", help="the file to rewrite")
    parser.add_argument("--lines", metavar="A-B",
                        help="rewrite lines A to B (1-based, inclusive; or one line A); "
                             "default: the whole file")
    parser.add_argument("-m", "--message", required=True, metavar="INSTRUCTION",
                        help='how to rewrite the lines ("make this function async")')
    parser.add_argument("--context-lines", type=int, default=20, metavar="N",
                        help="lines before and after them sent as read-only context "
                             "(default 20)")
    parser.add_argument("--language", help="the lines' language (default: by the file's name)")
    parser.add_argument("-c", "--context", action="append", default=[],
                        metavar="PATH[:START-END]|DIR|-",
                        help="more files, folders or stdin (-) the model should read, as "
                             "send's -f (repeatable)")
    parser.add_argument("--model", help="override the template's model")
    parser.add_argument("--url", help="override the template's endpoint URL")
    parser.add_argument("--var", action="append", default=[], metavar="NAME=VALUE",
                        help="fill the template's ${NAME} placeholders (repeatable)")
    parser.add_argument("--usage", action="store_true",
                        help="say the tokens used and what the answer cost on stderr")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--diff", action="store_true",
                      help="print a unified diff (a/FILE, b/FILE) instead of the replacement")
    what.add_argument("--apply", action="store_true",
                      help="write the file (atomically), unless it changed since it was read")
    parser.set_defaults(func=command)


@dataclasses.dataclass(frozen=True)
class Source:
    """A file's lines to rewrite.

    Attributes:
        path: the file, as given.
        data: its bytes when read.
        lines: its lines, each with its line end.
        start, end: the lines to rewrite, ``lines[start:end]`` (0-based).
    """

    path: str
    data: bytes
    lines: list[str]
    start: int
    end: int

    def rewrite(self, instruction: str, context_lines: int, language: str | None) -> dict:
        """The ``rewrite`` object of these lines: CONTEXT_LINES lines before
        and after them, INSTRUCTION, the path, LANGUAGE (None: by the path)."""
        first = max(0, self.start - context_lines)
        return {"text": "".join(self.lines[self.start:self.end]), "instruction": instruction,
                "path": self.path, "language": language,
                "before": "".join(self.lines[first:self.start]),
                "after": "".join(self.lines[self.end:self.end + context_lines])}

    def replaced(self, replacement: str) -> str:
        """The file's text with the lines replaced by REPLACEMENT."""
        return "".join(self.lines[:self.start]) + replacement + "".join(self.lines[self.end:])


def parse_lines(spec: str | None, count: int) -> tuple[int, int]:
    """The 0-based ``(start, end)`` of ``--lines`` SPEC (``A-B`` or ``A``,
    1-based inclusive) in a file of COUNT lines; None: all of them.

    Raises:
        UsageError: not A-B, A above B, or a line the file does not have.
    """
    if spec is None:
        return 0, count
    match = re.fullmatch(r"([0-9]+)(?:-([0-9]+))?", spec.strip())
    if not match:
        raise UsageError(f"--lines {spec!r}: expected A-B or A (line numbers, from 1)")
    start, end = int(match.group(1)), int(match.group(2) or match.group(1))
    if not 1 <= start <= end:
        raise UsageError(f"--lines {spec!r}: expected 1 <= A <= B")
    if end > count:
        raise UsageError(f"--lines {spec!r}: the file has {count} lines")
    return start - 1, end


def read_source(path: str, lines: str | None) -> Source:
    """The :class:`Source` of the file PATH and ``--lines`` LINES.

    Raises:
        UsageError: the file cannot be read, is not a regular file, is over
            :data:`MAX_FILE_BYTES`, is not UTF-8 text, or a bad LINES.
    """
    try:
        data = read_at_most(path, MAX_FILE_BYTES)
    except NotRegular:
        raise UsageError(f"--file {path}: not a regular file") from None
    except OSError as err:
        raise UsageError(f"--file {path}: {err.strerror}") from None
    if len(data) > MAX_FILE_BYTES:
        raise UsageError(f"--file {path}: larger than {MAX_FILE_BYTES:,} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"--file {path}: not UTF-8 text") from None
    if "\0" in text:
        raise UsageError(f"--file {path}: a binary file (it has NUL bytes)")
    all_lines = _LINES.findall(text)
    start, end = parse_lines(lines, len(all_lines))
    return Source(path, data, all_lines, start, end)


def unified_diff(source: Source, new: str) -> str:
    """The unified diff (labels ``a/PATH`` and ``b/PATH``) from SOURCE's
    file to the text NEW; ``""`` when they are the same.  A last line
    without a newline is marked ``\\ No newline at end of file``."""
    old_text = "".join(source.lines)
    lines = difflib.unified_diff(_LINES.findall(old_text), _LINES.findall(new),
                                 f"a/{source.path}", f"b/{source.path}")
    return "".join(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n"
                   for line in lines)


def write_atomically(source: Source, new: str) -> None:
    """Write NEW (UTF-8) to SOURCE's file (a symlink's target), through a
    temporary file in the same folder renamed over it, keeping its mode.

    Raises:
        ChatpipeError: the file's bytes are no longer those read (it
            changed since), or it cannot be written; nothing is written.
    """
    target = os.path.realpath(source.path)
    try:
        with open(target, "rb") as file:
            now = file.read(MAX_FILE_BYTES + 1)
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except OSError as err:
        raise ChatpipeError(f"cannot write {source.path}: {err.strerror}") from None
    if hashlib.sha256(now).digest() != hashlib.sha256(source.data).digest():
        raise ChatpipeError(f"{source.path} changed since it was read: not written "
                            "(run the rewrite again)")
    fd, temporary = tempfile.mkstemp(dir=os.path.dirname(target),
                                     prefix=f".{os.path.basename(target)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(new.encode("utf-8", protocol.ENCODE_ERRORS))
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, target)
    except OSError as err:
        os.unlink(temporary)
        raise ChatpipeError(f"cannot write {source.path}: {err.strerror}") from None


class Replacement(TextView):
    """A :class:`TextView` that keeps the answer's text (:attr:`text`)
    instead of printing it; everything else goes to ERR as usual.

    Attributes:
        finish_reason: the ``done`` event's, once it came.
        refused: whether the model refused (a ``refusal`` event).
    """

    def __init__(self, err, usage: bool = False) -> None:
        super().__init__(err, err, usage=usage)
        self._parts: list[str] = []
        self.finish_reason: str | None = None
        self.refused = False

    @property
    def text(self) -> str:
        """The answer's text (the replacement) so far."""
        return "".join(self._parts)

    def write(self, event: dict) -> None:
        """Keep a ``delta``'s text; show anything else (see :class:`TextView`)."""
        if event["type"] == "delta":
            self._parts.append(event["content"])
            return
        if event["type"] == "refusal":
            self.refused = True
        elif event["type"] == "done":
            self.finish_reason = event.get("finish_reason")
        super().write(event)


def command(args, ctx) -> int:
    """``chatpipe rewrite``: see :func:`add_parser`; returns the exit code.

    Raises:
        UsageError: a bad option or file (see :func:`read_source`).
        ChatpipeError: ``--diff`` or ``--apply`` of an answer that was
            refused or cut off, or ``--apply`` to a file that changed.
    """
    from chatpipe import runner

    if args.context_lines < 0:
        raise UsageError("--context-lines: expected a whole number, 0 or more")
    source = read_source(args.file, args.lines)
    request = {"template": args.template, "model": args.model, "url": args.url,
               "vars": requestfields.parse_vars(args.var), "price": args.usage,
               "context": requestfields.parse_files(args.context),
               "rewrite": source.rewrite(args.message, args.context_lines, args.language)}
    job = requestfields.job(request)
    if not (args.diff or args.apply):
        ctx.output = TextView(sys.stdout.buffer, sys.stderr.buffer, usage=args.usage)
        return runner.run(lambda: job, ctx.output)
    ctx.output = answer = Replacement(sys.stderr.buffer, usage=args.usage)
    code = runner.run(lambda: job, answer)
    if code:
        return code
    ctx.output = None       # the stream has ended: what fails now is told anew
    if answer.refused or answer.finish_reason in ("length", "content_filter"):
        why = "refused" if answer.refused else f"cut off (finish_reason {answer.finish_reason})"
        raise ChatpipeError(f"the answer was {why}: {source.path} left as it is")
    new = source.replaced(answer.text)
    if args.diff:
        protocol.write_out(sys.stdout.buffer, protocol.plain(unified_diff(source, new)))
        return 0
    write_atomically(source, new)
    sys.stderr.write(f"chatpipe: rewrote {protocol.plain(source.path)} "
                     f"(lines {source.start + 1}-{source.end})\n")
    return 0
