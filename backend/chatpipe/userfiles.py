"""Files a user names (context items, media parts, ``rewrite --file``),
opened one safe way: only a regular file is read, and it is opened without
blocking first (so that a FIFO named in a chat cannot hang the request)
and checked on the open descriptor (no race between the check and the
open)."""

from __future__ import annotations

import os
import stat
from typing import BinaryIO


class NotRegular(OSError):
    """The path is no regular file; ``what`` says what it is: ``"a folder"``
    or ``"a FIFO, socket or device"``."""

    def __init__(self, path: str, what: str) -> None:
        super().__init__(f"{path}: {what}")
        self.what = what


def open_regular(path: str) -> BinaryIO:
    """PATH opened for reading bytes, if it is a regular file.

    Raises:
        FileNotFoundError: no such file (or a dangling symlink).
        NotRegular: a folder, FIFO, socket or device.
        OSError: it cannot be opened (its ``strerror`` says why).
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    mode = os.fstat(fd).st_mode
    if stat.S_ISREG(mode):
        return os.fdopen(fd, "rb")
    os.close(fd)
    raise NotRegular(path, "a folder" if stat.S_ISDIR(mode) else "a FIFO, socket or device")


def read_at_most(path: str, cap: int) -> bytes:
    """The bytes of the regular file PATH, at most CAP + 1 of them (more
    than CAP: the caller's file is too big).

    Raises:
        FileNotFoundError, NotRegular, OSError: see :func:`open_regular`.
    """
    with open_regular(path) as f:
        return f.read(cap + 1)
