"""How ``chatpipe send``'s options become the JSON values of a request's
fields (:mod:`chatpipe.requestfields`): ``-f``, ``-a`` and ``--at``,
``--var``, ``--tools``, ``--messages``; each raises
:class:`~chatpipe.errors.UsageError` with the option in its message."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from chatpipe.errors import UsageError

#: Where the MCP servers are configured, for messages (see :mod:`chatpipe.mcp_host`).
MCP_CONFIG = "mcp.json in chatpipe's config folder (e.g. ~/.config/chatpipe/mcp.json)"


def parse_files(args: list[str], stdin=None) -> list[dict[str, Any]]:
    """The context items (JSON) of ``-f`` ARGS: ``PATH``, ``PATH:START-END``,
    ``DIR`` or ``-`` (STDIN, default ``sys.stdin``'s bytes, as a text item
    named ``stdin``); see :func:`chatpipe.context.parse_file_arg`.

    Raises:
        UsageError: an empty path, a bad range, or stdin that is not UTF-8.
    """
    from chatpipe.context import item_json, parse_file_arg

    stdin = stdin or sys.stdin.buffer
    return [item_json(parse_file_arg(arg, stdin, cwd=os.getcwd())) for arg in args]


class _At(argparse.Action):
    """``--at MIME``: the type of ``-a -`` (stdin), also put among ``-a``'s
    values (``attach``) as ``{"at": MIME}`` for :func:`parse_attachments`."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        namespace.attach = [*(getattr(namespace, "attach", None) or []), {"at": values}]


def parse_attachments(values: list, stdin=None) -> list[dict[str, Any]]:
    """The user message of ``-a PATH|URL|-`` VALUES (with ``--at MIME``
    items ``{"at": MIME}``, the type of stdin): one message whose content
    is their media parts (see :func:`chatpipe.media.attachment`; STDIN,
    default ``sys.stdin``'s bytes, for ``-``), joined to ``-m``'s message
    when the request is prepared; ``[]`` for none.

    Raises:
        UsageError: an unreadable file, a type that cannot be told, ``-``
            given twice.
    """
    from chatpipe.media import attachment

    at = next((v["at"] for v in reversed(values) if isinstance(v, dict)), None)
    paths = [v for v in values if isinstance(v, str)]
    if paths.count("-") > 1:
        raise UsageError("-a -: stdin can be read once")
    stdin = stdin or sys.stdin.buffer
    parts = [attachment(p, at, stdin, os.getcwd()) for p in paths]
    return [{"role": "user", "content": parts}] if parts else []


def parse_vars(pairs: list[str]) -> dict[str, str]:
    """Turn ``["a=1", "b=2"]`` (``--var`` values) into ``{"a": "1", "b": "2"}``.

    Raises:
        UsageError: an item without ``=``.
    """
    result = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise UsageError(f"--var {pair!r}: expected NAME=VALUE")
        result[name] = value
    return result


def parse_tools(values: list[str]) -> list[str]:
    """The ``mcp:NAME`` items of ``--tools mcp:NAME[,mcp:NAME...]`` VALUES.

    Raises:
        UsageError: a value that is not ``mcp:NAME``.
    """
    items = []
    for value in values:
        for item in filter(None, (v.strip() for v in value.split(","))):
            if not item.startswith("mcp:") or len(item) == 4:
                raise UsageError(f"--tools {item!r}: expected mcp:NAME (an MCP server of "
                                 f"{MCP_CONFIG})")
            items.append(item)
    return items


def load_json(option: str, source: str, stdin=None) -> Any:
    """The JSON value of the file SOURCE, or of STDIN (default
    ``sys.stdin``) for ``-``, given to OPTION (for messages).

    Raises:
        UsageError: unreadable file or invalid JSON.
    """
    from chatpipe import jsonin

    where = f"{option} {'stdin' if source == '-' else source}"
    try:
        text = ((stdin or sys.stdin).read() if source == "-"
                else open(source, encoding="utf-8").read())
    except OSError as err:
        raise UsageError(f"{where}: {err.strerror}") from None
    try:
        return jsonin.loads(text)
    except ValueError as err:
        raise UsageError(f"{where}: invalid JSON: {err}") from None


def load_messages(source: str, stdin=None) -> list[dict[str, Any]]:
    """Read a JSON array of chat messages from the file SOURCE, or STDIN for ``-``.

    Raises:
        UsageError: unreadable file, invalid JSON, or not a list of messages
            (see :func:`chatpipe.prepare.check_messages`).
    """
    from chatpipe.prepare import check_messages

    where = "stdin" if source == "-" else source
    return check_messages(load_json("--messages", source, stdin), f"--messages {where}")
