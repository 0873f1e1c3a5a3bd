"""Paths of context items: how a file is named in the context
(:func:`display_path`, :func:`printable`, :func:`project_root`) and the files
of a dir item (:func:`walk`).

:func:`walk` goes through a folder recursively in sorted order and leaves
out ``.git`` and what ``.gitignore`` files ignore, matched by the
``pathspec`` library's :class:`pathspec.GitIgnoreSpec` with git's rules: a
folder's ``.gitignore`` applies below it, a deeper one's patterns win
(``!`` re-includes), and an ignored folder is not entered.  The
``.gitignore`` files of the project above the folder (up to the nearest
folder with a ``.git``) apply too, unless they ignore the folder itself
(the user asked for it by name).  ``.git/info/exclude`` and git's global
excludes file are not read.  Symlinks are followed; a folder already
entered (a symlink loop, or two links to one folder) is entered once.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Iterator, Sequence

from pathspec import GitIgnoreSpec

#: The most bytes of a ``.gitignore`` file that are read.
GITIGNORE_BYTES = 1024 * 1024

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def printable(name: str) -> str:
    """NAME (a path, perhaps with undecodable bytes as surrogates) as valid
    Unicode on one line: undecodable bytes and control characters become
    ``\\xNN`` escapes, so that a file name cannot break the rendered headers
    nor the JSON events."""
    name = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return _CONTROL.sub(lambda m: f"\\x{ord(m[0]):02x}", name)


def project_root(folder: str) -> str | None:
    """The nearest folder at or above FOLDER (an absolute path) that has a
    ``.git`` (a folder, or a file in worktrees and submodules), or None."""
    while True:
        if os.path.lexists(os.path.join(folder, ".git")):
            return folder
        parent = os.path.dirname(folder)
        if parent == folder:
            return None
        folder = parent


def display_path(given: str, absolute: str) -> str:
    """How a file or folder is named in the context: ABSOLUTE (its absolute
    path, symlinks not resolved) relative to its project root (for a file,
    the one of the folder it is in; a folder may be the root itself: ``.``)
    when it has one, else GIVEN (the path as the user wrote it) with the home folder as
    ``~``; made :func:`printable` in both cases."""
    root = project_root(absolute if os.path.isdir(absolute) else os.path.dirname(absolute))
    if root is not None:
        return printable(os.path.relpath(absolute, root).replace(os.sep, "/"))
    home = os.path.expanduser("~").rstrip(os.sep)
    given = os.path.expanduser(given)
    if home and os.path.isabs(given) and (given + os.sep).startswith(home + os.sep):
        given = "~" + given[len(home):]
    return printable(given)


@dataclasses.dataclass(frozen=True)
class Found:
    """A file to read: its ``absolute`` path and its path ``relative`` to the
    walked folder (``/``-separated)."""

    absolute: str
    relative: str


@dataclasses.dataclass(frozen=True)
class Skipped:
    """Something left out with a warning: ``relative`` and ``absolute`` as
    for :class:`Found`, ``reason`` completes "PATH ..."."""

    absolute: str
    relative: str
    reason: str


def _load(folder: str) -> GitIgnoreSpec | None:
    """The patterns of FOLDER's ``.gitignore`` (a regular file, its first
    :data:`GITIGNORE_BYTES`), or None when there is none or it cannot be read."""
    path = os.path.join(folder, ".gitignore")
    if not os.path.isfile(path):
        return None
    try:
        with open(path, "rb") as f:
            data = f.read(GITIGNORE_BYTES)
    except OSError:
        return None
    return GitIgnoreSpec.from_lines(data.decode("utf-8", "surrogateescape").splitlines())


def _ignored(levels: list[tuple[str, GitIgnoreSpec]], absolute: str, is_dir: bool) -> bool:
    """Whether LEVELS (each a folder and its .gitignore, outermost first)
    ignore ABSOLUTE (a folder when IS_DIR): the deepest matching pattern wins."""
    ignored = False
    for base, spec in levels:
        relative = os.path.relpath(absolute, base).replace(os.sep, "/") + ("/" if is_dir else "")
        include = spec.check_file(relative).include
        if include is not None:
            ignored = include
    return ignored


def _levels_above(folder: str) -> list[tuple[str, GitIgnoreSpec]]:
    """The .gitignore files from FOLDER's project root down to its parent,
    or none when there is no root or when they ignore FOLDER itself."""
    root = project_root(folder)
    if root is None or root == folder:
        return []
    chain = [root]
    for part in os.path.relpath(os.path.dirname(folder), root).split(os.sep):
        if part != ".":
            chain.append(os.path.join(chain[-1], part))
    levels = [(base, spec) for base in chain if (spec := _load(base)) is not None]
    return [] if _ignored(levels, folder, True) else levels


def _identity(path: str) -> tuple[int, int] | None:
    """(device, inode) of PATH, symlinks followed, or None when stat fails."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def walk(folder: str, exclude: Sequence[str] = ()) -> Iterator[Found | Skipped]:
    """The files under FOLDER (an absolute path of a folder), depth first and
    sorted by name at each level, as :class:`Found`; what is left out with a
    warning (an unreadable folder, a broken symlink, a special file, a
    folder entered already) as :class:`Skipped`.  EXCLUDE are gitignore-style
    globs relative to FOLDER.  Ignored and excluded files are left out
    silently (the user asked for that)."""
    levels = _levels_above(folder)
    excluded = GitIgnoreSpec.from_lines(exclude)
    visited = {_identity(folder)}
    stack: list[tuple[str, str, int, Iterator[os.DirEntry]]] = []

    def enter(path: str, relative: str) -> Skipped | None:
        try:
            with os.scandir(path) as it:
                entries = sorted(it, key=lambda entry: entry.name)
        except OSError as err:
            return Skipped(path, relative or ".", f"cannot be read: {err.strerror}")
        mark = len(levels)
        spec = _load(path)
        if spec is not None:
            levels.append((path, spec))
        stack.append((path, relative, mark, iter(entries)))
        return None

    skipped = enter(folder, "")
    if skipped is not None:
        yield skipped
    while stack:
        path, relative, mark, entries = stack[-1]
        entry = next(entries, None)
        if entry is None:
            stack.pop()
            del levels[mark:]
            continue
        if entry.name == ".git":
            continue
        absolute = os.path.join(path, entry.name)
        rel = relative + entry.name
        is_dir = _is_dir(entry)
        if _ignored(levels, absolute, is_dir) or excluded.check_file(rel + "/" * is_dir).include:
            continue
        if is_dir:
            key = _identity(absolute)
            if key in visited:
                yield Skipped(absolute, rel, "is a folder entered already (a symlink loop?)")
            else:
                visited.add(key)
                skipped = enter(absolute, rel + "/")
                if skipped is not None:
                    yield skipped
        elif entry.is_symlink() and not os.path.exists(absolute):
            yield Skipped(absolute, rel, "is a broken symlink")
        else:
            yield Found(absolute, rel)
