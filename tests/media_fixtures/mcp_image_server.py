#!/usr/bin/env python3
"""An MCP server (stdio, built with the MCP SDK) whose tool ``shot()``
returns a caption and an image (tests/media_fixtures/red.png) as MCP image
content, for tests/test_media_tools.py."""

from __future__ import annotations

from pathlib import Path

from mcp.server.mcpserver import Image, MCPServer

server = MCPServer("chatpipe-images")
PNG = Path(__file__).resolve().parent / "red.png"


@server.tool(description="A screenshot of the screen")
def shot() -> list:
    return ["the screen", Image(data=PNG.read_bytes(), format="png")]


if __name__ == "__main__":
    server.run()
