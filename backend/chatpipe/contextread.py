"""Reading context items at send time: :func:`resolve` turns the items of
:mod:`chatpipe.context` into pieces of text, warnings and errors, and
:func:`snapshot` keeps the files' text as it is now.

What is refused (an error, nothing is sent): a binary file named by a file
item (a NUL byte, or not UTF-8; the type named by the ``filetype`` library
where it knows it), a file or text over :attr:`Limits.item_bytes`, a line
range the file does not have, something that is not a regular file (a
FIFO would block, a device never ends), a folder with more than
:attr:`Limits.max_files` files, and everything together over
:attr:`Limits.total_bytes` (the message names the biggest pieces).

What gives a warning (the item is left out, never silently): a file or
folder that does not exist, one that cannot be read, a buffer that is gone,
an MCP resource that cannot be had; and inside a folder, a binary, too big
or unreadable file, a broken symlink, a symlinked folder already read (so
symlink loops end), or a folder that gives no file at all.
"""

from __future__ import annotations

import dataclasses
import os
import posixpath
from typing import Callable

import filetype

from chatpipe.context import (DirItem, FileItem, Item, Limits, McpItem, Piece, Problem, Resolved,
                              TextItem, estimate_tokens, language_of)
from chatpipe.contextwalk import Skipped, display_path, printable, walk
from chatpipe.errors import ChatpipeError
from chatpipe.userfiles import NotRegular, open_regular

#: Reads an MCP resource: (server name, URI) -> its text.  It raises
#: ChatpipeError or OSError when the resource cannot be had.
McpReader = Callable[[str, str], str]

#: Bytes read at a time, and the bytes at a file's start that are checked
#: for a NUL and shown to ``filetype``.
CHUNK = 65536
HEAD = 8192


class _Refused(Exception):
    """A file that is not sent: ``reason`` completes "PATH ..."; ``warn``
    when it is a warning (missing, unreadable) rather than an error."""

    def __init__(self, reason: str, warn: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.warn = warn


def _binary_reason(head: bytes, data: bytes) -> str | None:
    """Why DATA (a file's text bytes; HEAD its first bytes) is binary, or
    None when it is UTF-8 text without NUL bytes."""
    nul = head.find(b"\0")
    if nul < 0:
        nul = data.find(b"\0")
    try:
        data.decode("utf-8")
        bad = None
    except UnicodeDecodeError as err:
        bad = err
    if nul < 0 and bad is None:
        return None
    kind = filetype.guess(head)
    if kind is not None:
        return f"is a binary file ({kind.mime}, .{kind.extension})"
    if nul >= 0:
        return f"is a binary file (a NUL byte at offset {nul})"
    return f"is not UTF-8 text (byte {data[bad.start]:#04x} at offset {bad.start})"


def _open(path: str):
    """PATH opened for reading bytes, checked to be a regular file (see
    :func:`chatpipe.userfiles.open_regular`); raises _Refused (missing or
    unreadable: a warning; a folder or a special file: an error)."""
    try:
        return open_regular(path)
    except FileNotFoundError:
        raise _Refused("does not exist", warn=True) from None
    except NotRegular as err:
        raise _Refused("is a folder: give it as a dir item (send -f DIR)" if err.what == "a folder"
                       else "is not a regular file (a FIFO, socket or device)") from None
    except OSError as err:
        raise _Refused(f"cannot be read: {err.strerror}", warn=True) from None


def _too_big(size: str, cap: int) -> _Refused:
    return _Refused(f"is too big: {size}, over the limit of {cap} bytes per item")


def read_text(path: str, lines: tuple[int, int] | None, cap: int) -> str:
    """The text of file PATH, or of its LINES (1-based inclusive, line ends
    kept), of at most CAP bytes; reads no more than needed (a whole file
    over CAP is refused from its size).  Raises _Refused."""
    with _open(path) as f:
        try:
            if lines is None:
                size = os.fstat(f.fileno()).st_size
                if size > cap:
                    raise _too_big(f"{size} bytes", cap)
                data = f.read(cap + 1)
                if len(data) > cap:
                    raise _too_big(f"more than {cap} bytes", cap)
                head = data[:HEAD]
            else:
                head, data = _read_lines(f, lines, cap)
        except OSError as err:
            raise _Refused(f"cannot be read: {err.strerror}", warn=True) from None
    reason = _binary_reason(head, data)
    if reason is not None:
        raise _Refused(reason)
    return data.decode("utf-8")


def _read_lines(f, lines: tuple[int, int], cap: int) -> tuple[bytes, bytes]:
    """(the first HEAD bytes, the bytes of LINES) of binary file F, read in
    chunks up to the end of the range; raises _Refused when the selection
    passes CAP bytes or the file has fewer lines than the range's end."""
    start, end = lines
    line, partial, head, out = 1, False, b"", bytearray()
    while chunk := f.read(CHUNK):
        head = head or chunk[:HEAD]
        if line + chunk.count(b"\n") < start:
            line += chunk.count(b"\n")
            partial = not chunk.endswith(b"\n")
            continue
        pos = 0
        while pos < len(chunk):
            newline = chunk.find(b"\n", pos)
            stop = len(chunk) if newline < 0 else newline + 1
            if start <= line <= end:
                out += chunk[pos:stop]
                if len(out) > cap:
                    raise _too_big(f"lines {start}-{end} are more than {cap} bytes", cap)
            pos = stop
            partial = newline < 0
            if newline >= 0:
                line += 1
                if line > end:
                    return head, bytes(out)
    count = line if partial else line - 1
    if count >= end:
        return head, bytes(out)
    wanted = f"line {start} is" if start == end else f"lines {start}-{end} are"
    raise _Refused(f"has {count} line{'' if count == 1 else 's'}: {wanted} out of range")


@dataclasses.dataclass
class _State:
    """What :func:`resolve` gathers as it goes."""

    limits: Limits
    out: Resolved = dataclasses.field(default_factory=Resolved)
    sizes: list[int] = dataclasses.field(default_factory=list)
    total: int = 0
    unread: int = 0

    def full(self) -> bool:
        """Whether the total limit is passed (then nothing more is read)."""
        if self.total > self.limits.total_bytes:
            self.unread += 1
            return True
        return False

    def add(self, piece: Piece, size: int) -> None:
        self.out.pieces.append(piece)
        self.sizes.append(size)
        self.total += size

    def problem(self, warn: bool, message: str, item: int, subject: str) -> None:
        (self.out.warnings if warn else self.out.errors).append(Problem(message, item, subject))


def _add_text(state: _State, n: int, display: str, text: str, lines, language, source=None) -> None:
    """Add TEXT as a piece of item N unless it is over the per-item limit."""
    size = len(text.encode("utf-8"))
    if size > state.limits.item_bytes:
        state.problem(False, f"{display} is too big: {size} bytes, over the limit of "
                             f"{state.limits.item_bytes} bytes per item", n, display)
        return
    state.add(Piece(n, display, text, lines, language, estimate_tokens(text), source), size)


def resolve(items: list[Item], *, cwd: str, limits: Limits = Limits(),
            mcp: McpReader | None = None) -> Resolved:
    """Read ITEMS now: the pieces of text, warnings and errors.

    CWD is the folder relative paths are in; LIMITS the limits; MCP reads
    an MCP item's resource (None: MCP items give a warning).  Never raises
    for a problem of an item: it is in the result's ``warnings`` or
    ``errors`` (see the module docstring); call ``raise_errors()`` on it.
    """
    state = _State(limits)
    for n, item in enumerate(items):
        if isinstance(item, TextItem):
            if item.text is None:
                state.problem(True, f"{printable(item.name)} is gone (a killed buffer?): left out",
                              n, item.name)
            else:
                _add_text(state, n, printable(item.name), item.text, None, item.language)
        elif isinstance(item, McpItem):
            _resolve_mcp(state, n, item, mcp)
        elif isinstance(item, FileItem):
            _resolve_file(state, n, item, cwd)
        else:
            _resolve_dir(state, n, item, cwd)
    if state.total > limits.total_bytes:
        _over_total(state)
    return state.out


def _resolve_mcp(state: _State, n: int, item: McpItem, mcp: McpReader | None) -> None:
    display = printable(f"{item.server}:{item.uri}")
    if mcp is None:
        state.problem(True, f"{display}: MCP resources cannot be read here: left out", n, display)
        return
    try:
        text = mcp(item.server, item.uri)
    except (ChatpipeError, OSError) as err:
        state.problem(True, f"{display}: cannot be read: {err}: left out", n, display)
        return
    _add_text(state, n, display, text, None, language_of(item.uri))


def _resolve_file(state: _State, n: int, item: FileItem, cwd: str) -> None:
    absolute = os.path.abspath(os.path.join(cwd, os.path.expanduser(item.path)))
    display = display_path(item.path, absolute)
    if item.snapshot is not None:
        _add_text(state, n, display, item.snapshot, item.lines, language_of(item.path), item.path)
        return
    if state.full():
        return
    try:
        text = read_text(absolute, item.lines, state.limits.item_bytes)
    except _Refused as why:
        state.problem(why.warn, f"{display} {why.reason}" + (": left out" if why.warn else ""),
                      n, display)
        return
    _add_text(state, n, display, text, item.lines, language_of(item.path), item.path)


def _resolve_dir(state: _State, n: int, item: DirItem, cwd: str) -> None:
    absolute = os.path.abspath(os.path.join(cwd, os.path.expanduser(item.path)))
    display = display_path(item.path, absolute)
    if not os.path.isdir(absolute):
        missing = not os.path.exists(absolute)
        state.problem(missing, f"{display} does not exist: left out" if missing
                      else f"{display} is not a folder: give it as a file item", n, display)
        return
    count = 0
    for found in walk(absolute, item.exclude + state.limits.exclude):
        if isinstance(found, Skipped):
            where = _inside(display, found.relative)
            state.problem(True, f"{where} {found.reason}: left out", n, where)
            continue
        count += 1
        if count > state.limits.max_files:
            state.problem(False, f"{display} has more than {state.limits.max_files} files (after "
                                 ".gitignore and excludes): narrow it with exclude globs", n, display)
            return
        if state.full():
            continue
        source = os.path.join(item.path, found.relative)
        where = _inside(display, found.relative)
        try:
            text = read_text(found.absolute, None, state.limits.item_bytes)
        except _Refused as why:
            state.problem(True, f"{where} {why.reason}: left out", n, where)
            continue
        _add_text(state, n, where, text, None, language_of(found.relative), source)
    if count == 0:
        state.problem(True, f"{display} has no files to send (all ignored or excluded)", n, display)


def _inside(folder: str, relative: str) -> str:
    """How the file RELATIVE (``/``-separated) in the folder shown as FOLDER
    is shown: the folder's path joined with it (symlinks are not resolved)."""
    return printable(relative) if folder == "." else posixpath.join(folder, printable(relative))


def _over_total(state: _State, shown: int = 3) -> None:
    """Add the error of a context over the total limit, naming its biggest pieces."""
    order = sorted(range(len(state.sizes)), key=lambda i: (-state.sizes[i], i))[:shown]
    biggest = ", ".join(f"{state.out.pieces[i].display} ({state.sizes[i]} bytes)" for i in order)
    more = f"; {state.unread} more not read" if state.unread else ""
    state.problem(False, f"the context is over the total limit of {state.limits.total_bytes} bytes "
                         f"({state.total} bytes read{more}); the biggest: {biggest}", -1, "")


def snapshot(items: list[Item], *, cwd: str, limits: Limits = Limits()) -> tuple[list[Item], Resolved]:
    """ITEMS with their files' text kept as it is now: each file item gets
    its ``snapshot``, each dir item becomes file items (one per file read,
    in order, with their snapshots); text and MCP items stay as they are.

    Gives the new items and the :class:`Resolved` they were read into (MCP
    items are not read); its warnings and errors say what could not be
    kept: such items stay as they were, live.
    """
    resolved = resolve(items, cwd=cwd, limits=limits)
    resolved.warnings = [w for w in resolved.warnings if not isinstance(items[w.item], McpItem)]
    by_item: dict[int, list[Piece]] = {}
    for piece in resolved.pieces:
        by_item.setdefault(piece.item, []).append(piece)
    out: list[Item] = []
    for n, item in enumerate(items):
        if isinstance(item, (FileItem, DirItem)) and by_item.get(n):
            out.extend(FileItem(piece.source, piece.lines, piece.text) for piece in by_item[n])
        else:
            out.append(item)
    return out, resolved
