"""Conversations saved in template files (``chatpipe send FILE --save``).

A request.json doubles as a conversation: each ``--save`` appends the new
messages and the answer to its conversation field, in the API's own shape,
under a lock, by an atomic replace.  See :func:`append_messages`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from chatpipe.errors import TemplateError
from chatpipe.templates import parse_document


def check_writable(path: Path) -> None:
    """Make sure ``--save`` can replace the file PATH, before anything is
    sent: the file must be writable and its folder must take a new file.

    Raises:
        TemplateError: it cannot (read-only file or folder, immutable file);
            the message says so, and that nothing was sent.
    """
    import tempfile

    try:
        with open(path, "r+b"):
            pass
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        os.unlink(tmp)
    except OSError as err:
        raise TemplateError(f"--save cannot write this file or its folder ({err.strerror}); "
                            "nothing was sent", str(path)) from None


def _lock_file(path: Path) -> Path:
    """The lock file of the conversation file PATH: one per file, in the
    user's cache folder, so that the chat's own folder stays clean."""
    import hashlib

    import platformdirs

    folder = Path(platformdirs.user_cache_dir("chatpipe")) / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(str(path.resolve()).encode("utf-8", "surrogateescape")).hexdigest()
    return folder / f"{digest[:32]}.lock"


def saved_media(messages: list[dict[str, Any]], how: str = "path", cwd: str | None = None,
                ) -> list[dict[str, Any]]:
    """MESSAGES with their media parts (:func:`chatpipe.media.is_media`) as
    a saved chat keeps them: HOW ``"path"`` keeps a file's absolute path
    (from CWD, default the current folder), a reference that is read again
    at each request; ``"inline"`` stores the file's bytes as ``data``
    (base64, with its ``mime_type`` and ``filename``).  URLs and ``data``
    parts are kept as they are.

    Raises:
        chatpipe.media.MediaError: HOW is inline and a file cannot be read.
    """
    from chatpipe import media

    cwd = cwd or os.getcwd()

    def saved(part: Any) -> Any:
        if not (media.is_media(part) and isinstance(part.get("path"), str)):
            return part
        path = os.path.join(cwd, os.path.expanduser(part["path"]))
        if how != "inline":
            return {**part, "path": path}
        loaded = media.load(part, cwd=cwd, warn=lambda text: None)
        rest = {k: v for k, v in part.items() if k != "path"}
        return {**rest, "data": loaded.base64(), "mime_type": loaded.mime_type,
                "filename": loaded.filename}

    return [{**m, "content": [saved(p) for p in m["content"]]}
            if isinstance(m.get("content"), list) else m for m in messages]


def append_messages(path: Path, dialect: Any, messages: list[dict[str, Any]],
                    save_media: str = "path") -> None:
    """Append a turn to the conversation saved in the template file PATH.

    MESSAGES, in the neutral shape (the new ``{"role", "content"}``
    messages, then the answers: with their tool calls and the tools'
    results, if any), are added in DIALECT's own shape and field
    (``messages``, Gemini's ``contents``, the Responses API's ``input``;
    see :class:`chatpipe.dialects.base.Dialect`), so that the next request
    continues the conversation.  The file is locked (``filelock``, a lock
    file in the user's cache folder) around reading, merging and
    replacing, so concurrent saves lose nothing; it is
    read again (edits made while the answer streamed are kept), written to
    a temporary file in the same folder that then replaces it, with its
    mode kept.  Placeholders are written back unfilled: only the file's own
    text and the new turn are saved, never filled-in values such as API keys.
    Media parts are saved by :func:`saved_media` (SAVE_MEDIA ``"path"`` or
    ``"inline"``), in chatpipe's neutral shape, and ``send -a``'s parts
    joined to their message (:func:`chatpipe.prepare.attached`); the next
    request reads them again.

    Raises:
        TemplateError: the file no longer parses or its conversation field
            is not a list.
        chatpipe.media.MediaError: an inline file cannot be read.
        OSError: the file or folder cannot be written.
    """
    import tempfile

    from filelock import FileLock

    from chatpipe.prepare import attached

    messages = saved_media(attached(messages), save_media)

    with FileLock(_lock_file(path)):
        doc, _ = parse_document(path)
        key = dialect.history_key
        if not isinstance(doc.get(key, []), (list, str)):
            raise TemplateError(f'"{key}" is not a list; not saving', str(path))
        dialect.add_messages(doc, messages)
        text = json.dumps(doc, ensure_ascii=False, indent=2) + "\n"
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8", errors="chatpipe-replace") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, path.stat().st_mode & 0o7777)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
