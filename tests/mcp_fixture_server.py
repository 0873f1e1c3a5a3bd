#!/usr/bin/env python3
"""A small MCP server for deterministic tests, built with the MCP SDK.

Run over stdio (``python tests/mcp_fixture_server.py``), or over
streamable HTTP on 127.0.0.1 (``... --http PORT``: the endpoint is
``http://127.0.0.1:PORT/mcp``).  Its tools:

- ``echo(text)``: returns TEXT;
- ``slow(seconds)``: returns ``"slept"`` after SECONDS;
- ``fail(message)``: the tool fails with MESSAGE (an error result);
- ``die()``: the server process exits at once, mid-call;
- ``pid()``: the server's process id (is it the same process?).

And its resources: ``fixture://notes`` (a text), ``fixture://logo`` (bytes).

It writes ``fixture server started`` on stderr when it starts.
"""

from __future__ import annotations

import asyncio
import os
import sys

from mcp.server.mcpserver import MCPServer

server = MCPServer("chatpipe-fixture")


@server.tool(description="Return the text it is given")
def echo(text: str) -> str:
    return text


@server.tool(description="Wait, then say so")
async def slow(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "slept"


@server.tool(description="Always fails")
def fail(message: str = "it broke") -> str:
    raise RuntimeError(message)


@server.tool(description="Ends the server process")
def die() -> str:
    os._exit(3)


@server.tool(description="The server's process id")
def pid() -> str:
    return str(os.getpid())


@server.resource("fixture://notes", description="Notes, as text")
def notes() -> str:
    return "The deploy key rotates on Fridays.\n"


@server.resource("fixture://logo", mime_type="image/png", description="Bytes, no text")
def logo() -> bytes:
    return b"\x89PNG\r\n\x1a\n"


if __name__ == "__main__":
    print("fixture server started", file=sys.stderr, flush=True)
    if sys.argv[1:2] == ["--http"]:
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        server.run()
