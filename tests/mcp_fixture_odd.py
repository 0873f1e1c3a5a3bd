#!/usr/bin/env python3
"""An MCP server for the tool safety tests, built with the MCP SDK.

Run over stdio (``python tests/mcp_fixture_odd.py``); the environment
variable ``FX_SERVER`` names it in its answers, so that two servers run
from this file can be told apart.  Its tools:

- ``get_data(key)``: ``"<FX_SERVER> data for <key>"`` (both servers of
  the tests have it: one name, two servers);
- ``files.read(path)``: ``"read <path>"`` (a name the APIs refuse);
- ``read file(path)``: ``"read file <path>"`` (a name with a space);
- :data:`LONG_NAME` (70 characters): ``"long"``;
- ``big(size)``: SIZE bytes of text, default 5 MB (``x`` then a last
  ``!``).
"""

from __future__ import annotations

import os

from mcp.server.mcpserver import MCPServer

#: A tool name of 70 characters.
LONG_NAME = "a_tool_whose_name_is_far_longer_than_the_sixty_four_characters_allowed"
assert len(LONG_NAME) == 70

server = MCPServer("chatpipe-odd-fixture")
SERVER = os.environ.get("FX_SERVER", "fx")


@server.tool(description="Some data for a key")
def get_data(key: str) -> str:
    return f"{SERVER} data for {key}"


@server.tool(name="files.read", description="Read a file")
def files_read(path: str) -> str:
    return f"read {path}"


@server.tool(name="read file", description="Read a file, too")
def read_file(path: str) -> str:
    return f"read file {path}"


@server.tool(name=LONG_NAME, description="A tool with a long name")
def long_name() -> str:
    return "long"


@server.tool(description="A big result")
def big(size: int = 5_000_000) -> str:
    return "x" * (size - 1) + "!"


if __name__ == "__main__":
    server.run()
