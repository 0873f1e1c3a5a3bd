"""Context items: the files, folders, texts and MCP resources a question is
about (issue 19), their JSON shape, the shell's ``-f`` argument, the limits
and the token estimate.

The module family:

- :mod:`chatpipe.context` (this one): the items (:func:`parse_items`,
  :func:`parse_file_arg`, :func:`item_json`), :class:`Limits`,
  :func:`estimate_tokens`, :func:`language_of` and the result types
  (:class:`Piece`, :class:`Problem`, :class:`Resolved`).
- :mod:`chatpipe.contextread`: :func:`~chatpipe.contextread.resolve` reads the
  items at send time and :func:`~chatpipe.contextread.snapshot` keeps their
  text as it is now.
- :mod:`chatpipe.contextwalk`: how paths are shown, and a folder's files
  without what ``.gitignore`` ignores.
- :mod:`chatpipe.contextrender`: :func:`~chatpipe.contextrender.render` (the
  one rendering) and :func:`~chatpipe.contextrender.place` (where it goes).

Items (a request's ``context``, a JSON array; ``send -f`` makes them too):

``{"type": "file", "path": "src/a.py", "lines": [10, 20], "snapshot": "..."}``
    A file, read when the request is sent (so the same chat sent tomorrow
    sees tomorrow's file).  ``lines`` (optional) is a 1-based inclusive
    range ``[START, END]``, START <= END.  ``snapshot`` (optional) is the
    text as it was when it was taken: then the file is not read at all
    (with ``lines``, the snapshot is the text of those lines).  A relative
    ``path`` is relative to the request's working folder; ``~`` is the
    home folder.
``{"type": "dir", "path": "src", "exclude": ["*.lock"]}``
    A folder's files, recursively, sorted by path; files that ``.gitignore``
    files ignore (the folder's, its subfolders', and those of the project
    above it), ``.git`` itself, and files matching ``exclude`` (optional,
    gitignore-style globs relative to the folder) are left out.
``{"type": "text", "name": "*scratch*", "text": "...", "language": "elisp"}``
    A text with a name: a buffer that visits no file, a region, the kill
    ring.  ``language`` is optional (a word: letters, digits, ``+-#._``).
    ``text`` null (or absent) stands for a buffer that is gone: it gives a
    warning naming it.
``{"type": "mcp", "server": "NAME", "uri": "file:///..."}``
    A resource of a configured MCP server, read by a function the caller
    gives to :func:`~chatpipe.contextread.resolve`.

Unknown keys are refused, so that a misspelt ``line`` is not silently
ignored.  Limits (:class:`Limits`) and problems (:class:`Problem`) are
explained before anything is sent: an item left out gives a ``warning``
event ``{"type": "warning", "message": "notes.md does not exist: left
out", "kind": "context", "item": 0, "subject": "notes.md"}`` (``item`` is
the item's 0-based index, ``subject`` the file or text named); errors
refuse the request with all their messages.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from typing import Any, BinaryIO, Union

from chatpipe.errors import UsageError


@dataclasses.dataclass(frozen=True)
class FileItem:
    """A file; ``lines`` is a 1-based inclusive (START, END) or None (the
    whole file); ``snapshot`` the text kept as it was, or None (read live)."""

    path: str
    lines: tuple[int, int] | None = None
    snapshot: str | None = None


@dataclasses.dataclass(frozen=True)
class DirItem:
    """A folder, recursively; ``exclude`` are gitignore-style globs."""

    path: str
    exclude: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class TextItem:
    """A named text; ``text`` None means the buffer is gone (a warning)."""

    name: str
    text: str | None
    language: str | None = None


@dataclasses.dataclass(frozen=True)
class McpItem:
    """A resource URI of the MCP server named ``server``."""

    server: str
    uri: str


Item = Union[FileItem, DirItem, TextItem, McpItem]

_KEYS = {
    "file": ({"path"}, {"lines", "snapshot"}),
    "dir": ({"path"}, {"exclude"}),
    "text": ({"name"}, {"text", "language"}),
    "mcp": ({"server", "uri"}, set()),
}
_LANGUAGE = re.compile(r"[A-Za-z0-9+#._-]{1,40}")


def _string(value: Any, where: str, key: str, *, empty: bool = False) -> str:
    """VALUE checked as a str of valid Unicode (no lone surrogates), non-empty
    unless EMPTY; raises UsageError naming WHERE and KEY."""
    if not isinstance(value, str):
        raise UsageError(f"{where}: {key!r} must be a string, not {type(value).__name__}")
    if not value and not empty:
        raise UsageError(f"{where}: {key!r} must not be empty")
    if key == "path" and "\0" in value:
        raise UsageError(f"{where}: 'path' must not contain a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError(f"{where}: {key!r} is not valid Unicode (it has a lone surrogate)") from None
    return value


def _lines(value: Any, where: str) -> tuple[int, int]:
    """VALUE checked as [START, END], 1 <= START <= END; raises UsageError."""
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or not all(isinstance(n, int) and not isinstance(n, bool) for n in value)):
        raise UsageError(f"{where}: 'lines' must be [START, END], two whole numbers, not {value!r}")
    start, end = value
    if start < 1:
        raise UsageError(f"{where}: 'lines' start at 1 (got {start})")
    if start > end:
        raise UsageError(f"{where}: 'lines' [{start}, {end}] is reversed: the start comes after the end")
    return start, end


def parse_item(obj: Any, where: str = "context item") -> Item:
    """One item from its JSON value (a dict, see the module docstring).

    WHERE names the item in messages (``"context item 2"``).  Raises
    UsageError saying which item and which key is wrong.
    """
    if not isinstance(obj, dict):
        raise UsageError(f"{where}: must be a JSON object, not {type(obj).__name__}")
    kind = obj.get("type")
    if kind not in _KEYS:
        raise UsageError(f"{where}: 'type' must be one of {', '.join(sorted(_KEYS))}, not {kind!r}")
    required, optional = _KEYS[kind]
    for key in sorted(required - obj.keys()):
        raise UsageError(f"{where}: a {kind} item needs {key!r}")
    for key in sorted(obj.keys() - required - optional - {"type"}):
        raise UsageError(f"{where}: unknown key {key!r} for a {kind} item")
    if kind == "file":
        lines = obj.get("lines")
        snap = obj.get("snapshot")
        return FileItem(_string(obj["path"], where, "path"),
                        None if lines is None else _lines(lines, where),
                        None if snap is None else _string(snap, where, "snapshot", empty=True))
    if kind == "dir":
        exclude = obj.get("exclude", [])
        if not isinstance(exclude, list):
            raise UsageError(f"{where}: 'exclude' must be a list of globs")
        return DirItem(_string(obj["path"], where, "path"),
                       tuple(_string(glob, where, "exclude") for glob in exclude))
    if kind == "text":
        text = obj.get("text")
        language = obj.get("language")
        if language is not None and not _LANGUAGE.fullmatch(_string(language, where, "language")):
            raise UsageError(f"{where}: 'language' must be one word (letters, digits, +#._-), not {language!r}")
        return TextItem(_string(obj["name"], where, "name"),
                        None if text is None else _string(text, where, "text", empty=True), language)
    return McpItem(_string(obj["server"], where, "server"), _string(obj["uri"], where, "uri"))


def parse_items(obj: Any) -> list[Item]:
    """The items of a request's ``context`` (a JSON array of item objects).

    Raises UsageError naming the item (1-based) and the key at fault.
    """
    if not isinstance(obj, list):
        raise UsageError(f"'context' must be a JSON array of items, not {type(obj).__name__}")
    return [parse_item(value, f"context item {n}") for n, value in enumerate(obj, 1)]


def item_json(item: Item) -> dict:
    """ITEM as its JSON object (the inverse of :func:`parse_item`), for a
    saved chat; optional keys that are unset are left out."""
    if isinstance(item, FileItem):
        out: dict = {"type": "file", "path": item.path}
        if item.lines is not None:
            out["lines"] = list(item.lines)
        if item.snapshot is not None:
            out["snapshot"] = item.snapshot
        return out
    if isinstance(item, DirItem):
        out = {"type": "dir", "path": item.path}
        if item.exclude:
            out["exclude"] = list(item.exclude)
        return out
    if isinstance(item, TextItem):
        out = {"type": "text", "name": item.name, "text": item.text}
        if item.language is not None:
            out["language"] = item.language
        return out
    return {"type": "mcp", "server": item.server, "uri": item.uri}


_RANGE = re.compile(r"(.+):([0-9]+)-([0-9]+)")

#: The name of the item ``-f -`` makes from standard input.
STDIN_NAME = "stdin"


def parse_file_arg(arg: str, stdin: BinaryIO | None = None, *, cwd: str = ".") -> Item:
    """The item of one ``send -f ARG``.

    ARG is ``-`` (STDIN's bytes, read to the end, as a text item named
    ``stdin``; they must be UTF-8), ``PATH`` (a folder gives a dir item,
    anything else a file item) or ``PATH:START-END`` (a file's lines).  A
    PATH that exists as written wins over the range reading, so a file named
    ``notes:1-2`` is that file.  Relative paths are looked up in CWD but
    kept as given.  Raises UsageError for an empty ARG, a bad range, or
    stdin that is not UTF-8 or missing.
    """
    if arg == "-":
        if stdin is None:
            raise UsageError("-f -: there is no standard input to read")
        data = stdin.read()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as err:
            raise UsageError(f"-f -: standard input is not UTF-8 text (byte {data[err.start]:#04x} "
                             f"at offset {err.start})") from None
        return TextItem(STDIN_NAME, text)
    if not arg:
        raise UsageError("-f: the path is empty")
    where = os.path.join(cwd, os.path.expanduser(arg))
    if not os.path.lexists(where):
        match = _RANGE.fullmatch(arg)
        if match:
            start, end = int(match[2]), int(match[3])
            return FileItem(match[1], _lines([start, end], f"-f {arg}"))
    if os.path.isdir(where):
        return DirItem(arg)
    return FileItem(arg)


@dataclasses.dataclass(frozen=True)
class Limits:
    """How much context a request may carry, checked before sending.

    Attributes:
        item_bytes: the most UTF-8 bytes one file or text may have: 128 KiB,
            about 32k tokens by :func:`estimate_tokens`.
        total_bytes: the most bytes of all items together: 384 KiB, about
            96k tokens, which leaves a 128k-token model 32k tokens for the
            template's prompt, the chat and the answer.
        max_files: the most files one dir item may give (after .gitignore
            and excludes), so that a folder such as ``node_modules`` is
            refused quickly rather than read.
        exclude: gitignore-style globs left out of every dir item, as if
            each dir item listed them too (a file item named explicitly is
            always read).
    """

    item_bytes: int = 128 * 1024
    total_bytes: int = 384 * 1024
    max_files: int = 1000
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        """Raises UsageError for a limit that is not a whole number above 0."""
        for field in ("item_bytes", "total_bytes", "max_files"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UsageError(f"the context limit {field} must be a whole number above 0, not {value!r}")


def estimate_tokens(text: str) -> int:
    """An estimate of TEXT's tokens: its UTF-8 bytes divided by 4, rounded up.

    Four bytes a token is the usual rule of thumb for English text and code
    with the tokenizers of OpenAI, Anthropic and Google; it needs no
    tokenizer (each provider has its own, some not public) and is the same
    for every model.  It is an estimate: it counts high for text in
    accented Latin scripts and low for Chinese or Japanese (about one token
    a character, 3 bytes).
    """
    return math.ceil(len(text.encode("utf-8", "surrogatepass")) / 4)


#: A file's language (the Markdown fence's info string) by its extension
#: (lower case) or, for files with none, its whole name.
LANGUAGES = {
    ".py": "python", ".pyi": "python", ".el": "elisp", ".lisp": "lisp", ".clj": "clojure",
    ".scm": "scheme", ".c": "c", ".h": "c", ".cc": "cpp", ".cpp": "cpp", ".cxx": "cpp",
    ".hpp": "cpp", ".cs": "csharp", ".java": "java", ".kt": "kotlin", ".scala": "scala",
    ".go": "go", ".rs": "rust", ".js": "javascript", ".mjs": "javascript", ".cjs": "javascript",
    ".jsx": "jsx", ".ts": "typescript", ".tsx": "tsx", ".rb": "ruby", ".php": "php",
    ".pl": "perl", ".lua": "lua", ".swift": "swift", ".m": "objectivec", ".r": "r",
    ".jl": "julia", ".hs": "haskell", ".ml": "ocaml", ".ex": "elixir", ".exs": "elixir",
    ".erl": "erlang", ".sh": "sh", ".bash": "bash", ".zsh": "zsh", ".fish": "fish",
    ".ps1": "powershell", ".sql": "sql", ".html": "html", ".htm": "html", ".xml": "xml",
    ".css": "css", ".scss": "scss", ".json": "json", ".yaml": "yaml", ".yml": "yaml",
    ".toml": "toml", ".ini": "ini", ".cfg": "ini", ".md": "markdown", ".markdown": "markdown",
    ".org": "org", ".rst": "rst", ".tex": "latex", ".txt": "text", ".csv": "csv",
    ".diff": "diff", ".patch": "diff", ".proto": "protobuf", ".tf": "hcl", ".nix": "nix",
    ".vim": "vim", ".dart": "dart", ".zig": "zig",
    "makefile": "make", "dockerfile": "dockerfile", "cmakelists.txt": "cmake",
}


def language_of(name: str) -> str | None:
    """The language of a file or resource called NAME (a path or URI) by
    :data:`LANGUAGES`, or None when the table does not know it."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1].lower()
    if base in LANGUAGES:
        return LANGUAGES[base]
    return LANGUAGES.get(os.path.splitext(base)[1])


@dataclasses.dataclass(frozen=True)
class Piece:
    """One text that goes into the rendered context.

    Attributes:
        item: the index (0-based) of the item it comes from.
        display: the path (relative to the project root, the nearest folder
            above with a ``.git``, when inside one; else as given with ``~``
            for the home folder), the text's name, or ``SERVER:URI``.
        text: the text (a str; its lines keep their line ends).
        lines: the 1-based inclusive line range, or None for the whole.
        language: a word for the fence, or None.
        tokens: :func:`estimate_tokens` of ``text``.
        source: the path to read it again (a file item's path as given; a
            folder's file as the dir item's path joined with its path in
            the folder), or None for texts and MCP resources.
    """

    item: int
    display: str
    text: str
    lines: tuple[int, int] | None
    language: str | None
    tokens: int
    source: str | None = None


@dataclasses.dataclass(frozen=True)
class Problem:
    """A warning or an error about an item: ``message`` for the user (it
    names the file or text), ``item`` its index (0-based; -1 for the whole
    context, over the total limit), ``subject`` the path or name concerned
    (``""`` for the whole context)."""

    message: str
    item: int
    subject: str

    def event_fields(self) -> dict:
        """The fields of a ``warning`` event (or an error's details):
        ``{"message", "kind": "context", "item", "subject"}``."""
        return {"message": self.message, "kind": "context", "item": self.item, "subject": self.subject}


@dataclasses.dataclass
class Resolved:
    """What :func:`~chatpipe.contextread.resolve` gives: the ``pieces`` in
    order (items in the user's order, a folder's files sorted by path), the
    ``warnings`` (to send as ``warning`` events) and the ``errors`` (to
    refuse the request with, before anything is sent)."""

    pieces: list[Piece] = dataclasses.field(default_factory=list)
    warnings: list[Problem] = dataclasses.field(default_factory=list)
    errors: list[Problem] = dataclasses.field(default_factory=list)

    @property
    def tokens(self) -> int:
        """The pieces' estimated tokens added up (the headers and fences
        that :func:`~chatpipe.contextrender.render` adds are a few more)."""
        return sum(piece.tokens for piece in self.pieces)

    def item_tokens(self) -> dict[int, int]:
        """Estimated tokens by item index (a dir item's files added up);
        items that gave no piece are absent."""
        out: dict[int, int] = {}
        for piece in self.pieces:
            out[piece.item] = out.get(piece.item, 0) + piece.tokens
        return out

    def raise_errors(self) -> None:
        """Raise UsageError with every error's message, one a line (details
        ``{"kind": "context", "errors": [event fields...]}``), if any."""
        if self.errors:
            err = UsageError("\n".join(problem.message for problem in self.errors))
            err.details = {"kind": "context", "errors": [p.event_fields() for p in self.errors]}
            raise err
