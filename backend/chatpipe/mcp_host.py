"""MCP servers' tools, through the official MCP Python SDK (``mcp``).

The servers are configured in the user's chatpipe folder,
``<user config dir>/chatpipe/mcp.json`` (:func:`config_path`), in the
``mcpServers`` shape other MCP clients use
(https://modelcontextprotocol.io/quickstart/user)::

    {"mcpServers": {
        "time": {"command": "mcp-server-time", "args": [], "env": {}},
        "docs": {"url": "https://example.com/mcp", "headers": {"Authorization": "..."}}}}

A server has either ``command`` (with ``args``, ``env``, ``cwd``: a
subprocess spoken to over stdio; a bare name not on PATH is looked for
next to chatpipe's Python too, see :func:`find_command`) or ``url``
(with ``headers``: streamable HTTP); and may have ``timeout`` (seconds a tool call may take, default
:data:`CALL_TIMEOUT`), ``autoApprove`` (names of its tools that run
without asking; every other call is confirmed first) and ``disabled``.
The secrets among the values of ``env`` and ``headers`` (those under a
name that looks secret and that look like one, or a URL's password:
:func:`chatpipe.redaction.secrets`) are redacted from every output.

:class:`McpHost` starts a server the first time a request asks for it,
lists its tools and keeps it running (across the requests of ``chatpipe
serve``) until :meth:`McpHost.close`.  The SDK is async: its sessions live
in one asyncio loop in a background thread, and calls from request threads
wait for their result there, cancelled when the request is.  A server that
fails to start, or dies, is named in a ``warning`` (with the last line it
wrote on stderr, which goes to ``<user cache dir>/chatpipe/mcp/NAME.log``);
the chat goes on without its tools, and the next request starts it again.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import shutil
import sys
import threading
from pathlib import Path
from typing import Any, Callable

from chatpipe import jsonin, protocol, redaction
from chatpipe.errors import Aborted, Cancelled, UsageError
from chatpipe.tools import Tool, ToolCall, ToolResult

#: Seconds a server may take to start and list its tools.
START_TIMEOUT = 30.0

#: Default seconds a tool call may take.
CALL_TIMEOUT = 120.0

#: Seconds between two looks at a cancel while a call runs.
POLL = 0.1

#: The keys a server's entry may have.
SERVER_KEYS = {"command", "args", "env", "cwd", "url", "headers", "timeout", "autoApprove",
               "disabled", "type", "description"}


#: An mcp.json with one server, the time server of the package
#: ``mcp-server-time``, to show to a user who has none.
EXAMPLE = """\
{"mcpServers": {
  "time": {"command": "mcp-server-time", "args": ["--local-timezone", "Europe/Paris"]}}}"""


def config_path() -> Path:
    """The MCP configuration file: ``<user config dir>/chatpipe/mcp.json``."""
    import platformdirs

    return Path(platformdirs.user_config_dir("chatpipe")) / "mcp.json"


def load_config(path: Path | None = None) -> dict[str, dict]:
    """The servers configured in PATH (default :func:`config_path`), by
    name; none when the file does not exist.

    Raises:
        UsageError: the file cannot be read, is not JSON, or an entry is
            not of the shape the module docstring describes.
    """
    path = path or config_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"{path}: cannot read it: {getattr(err, 'strerror', None) or err}") from None
    try:
        doc = jsonin.loads(text)
    except ValueError as err:
        raise UsageError(f"{path}: invalid JSON: {err}") from None
    servers = doc.get("mcpServers") if isinstance(doc, dict) else None
    if not isinstance(servers, dict):
        raise UsageError(f'{path}: expected {{"mcpServers": {{"NAME": {{"command": ...}}}}}}')
    for name, entry in servers.items():
        _check_entry(path, name, entry)
    return servers


def _check_entry(path: Path, name: str, entry: Any) -> None:
    """Raise UsageError if ENTRY (server NAME in PATH) is malformed."""
    def bad(why: str) -> UsageError:
        return UsageError(f"{path}: MCP server {name!r}: {why}")

    if not isinstance(entry, dict):
        raise bad("must be an object")
    unknown = set(entry) - SERVER_KEYS
    if unknown:
        raise bad("unknown keys: " + ", ".join(sorted(unknown)))
    if not isinstance(entry.get("command"), str) and not isinstance(entry.get("url"), str):
        raise bad('needs a "command" (stdio) or a "url" (streamable HTTP)')
    args = entry.get("args", [])
    if not (isinstance(args, list) and all(isinstance(a, str) for a in args)):
        raise bad('"args" must be a list of strings')
    for key in ("env", "headers"):
        value = entry.get(key, {})
        if not (isinstance(value, dict) and all(isinstance(v, str) for v in value.values())):
            raise bad(f'"{key}" must be an object of strings')
    approve = entry.get("autoApprove", [])
    if not (isinstance(approve, list) and all(isinstance(a, str) for a in approve)):
        raise bad('"autoApprove" must be a list of tool names')
    timeout = entry.get("timeout", CALL_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise bad('"timeout" must be a positive number of seconds')


def find_command(command: str, env: dict[str, str] | None = None) -> str:
    """The program to run for a server's COMMAND: COMMAND itself when it
    is a path (it has a slash) or is found on PATH (ENV's ``PATH`` if the
    server's ``env`` sets one, else chatpipe's own, the one the server is
    started with); else the file of that name next to chatpipe's Python
    (the folder of ``sys.executable``, its symbolic links not followed:
    the bin folder of chatpipe's venv, where ``pip install
    mcp-server-time`` into that venv puts the command), as a full path.

    Raises:
        UsageError: COMMAND is found in neither; the message names both
            places.
    """
    if os.sep in command or (os.altsep and os.altsep in command):
        return command
    path = (env or {}).get("PATH") or os.environ.get("PATH") or os.defpath
    if shutil.which(command, path=path):
        return command
    here = os.path.dirname(sys.executable or "")
    found = here and shutil.which(command, path=here)
    if found:
        return found
    raise UsageError(f"command {command!r} not found on PATH ({path})"
                     + (f" nor in {here}, the folder of chatpipe's Python" if here else "")
                     + ": install it (e.g. pip install its package into chatpipe's venv) "
                     "or give its full path in mcp.json")


def _log_file(name: str) -> Path:
    """Where server NAME's stderr goes."""
    import platformdirs

    folder = Path(platformdirs.user_cache_dir("chatpipe")) / "mcp"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{''.join(c if c.isalnum() or c in '-_.' else '_' for c in name)}.log"


def _last_line(path: Path, start: int) -> str:
    """The last non-empty line written to PATH after offset START, or ``""``."""
    try:
        with open(path, "rb") as f:
            f.seek(start)
            lines = f.read()[-4000:].decode("utf-8", "replace").splitlines()
    except OSError:
        return ""
    return next((line.strip() for line in reversed(lines) if line.strip()), "")


def _describe(err: BaseException) -> str:
    """ERR in one line: an exception group by its first leaf."""
    while isinstance(err, BaseExceptionGroup) and err.exceptions:
        err = err.exceptions[0]
    text = str(err) or type(err).__name__
    return text if not isinstance(err, (TimeoutError, asyncio.TimeoutError)) else "timed out"


class _Server:
    """One running server: its SDK client and tools, in the host's loop."""

    def __init__(self, name: str, config: dict) -> None:
        self.name = name
        self.config = config
        self.client: Any = None
        self.tools: list[Any] = []
        self.stop: asyncio.Event | None = None
        self.dead: str | None = None
        self.log = _log_file(name)
        self.log_start = self.log.stat().st_size if self.log.exists() else 0

    def log_size(self) -> int:
        """How many bytes its stderr log has now."""
        try:
            return self.log.stat().st_size
        except OSError:
            return 0

    def said(self, since: int | None = None) -> str:
        """`` (its stderr: LAST LINE)`` when it wrote something on stderr
        since it started (or since the log offset SINCE)."""
        line = _last_line(self.log, self.log_start if since is None else since)
        return f" (its stderr: {line})" if line else ""


class McpHost:
    """The MCP servers of a process; see the module docstring.

    Args:
        path: the configuration file (default :func:`config_path`), read
            again each time a server is started.
    """

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._servers: dict[str, _Server] = {}
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # ---- the background loop ------------------------------------------------

    def _run(self, coro: Any) -> concurrent.futures.Future:
        """Run CORO in the host's loop (started on first use)."""
        with self._lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                                name="chatpipe-mcp")
                self._thread.start()
            return asyncio.run_coroutine_threadsafe(coro, self._loop)

    @staticmethod
    def _wait(future: concurrent.futures.Future, timeout: float, control: Any = None) -> Any:
        """FUTURE's result, within TIMEOUT seconds; cancelled with CONTROL
        or an exception (a signal) in this thread.

        Raises:
            TimeoutError: too late (the work is cancelled); Cancelled:
                CONTROL was cancelled; what the work raised.
        """
        try:
            for _ in range(max(1, int(timeout / POLL))):
                if control is not None and control.cancelled.is_set():
                    raise Cancelled()
                try:
                    return future.result(POLL)
                except concurrent.futures.TimeoutError:
                    continue
            raise TimeoutError()
        except BaseException:
            future.cancel()
            raise

    # ---- servers --------------------------------------------------------------

    def tools(self, names: list[str], warn: Callable[[dict], None],
              secrets: list[str]) -> list[Tool]:
        """The tools of the servers NAMES, started if they are not running.

        A server that fails to start is named in a ``warning`` event
        (through WARN) and gives no tools.  The secrets of its ``env`` and
        ``headers`` values (:func:`chatpipe.redaction.secrets`, each with
        its variable's or header's name) are added to SECRETS before
        anything is started.

        Raises:
            UsageError: a name that is not configured (or is disabled), or a
                configuration file that is not valid.
        """
        config = load_config(self.path)
        for name in names:
            entry = config.get(name)
            if entry is None or entry.get("disabled"):
                known = ", ".join(n for n, e in config.items() if not e.get("disabled")) or "none"
                raise UsageError(f"no MCP server named {name!r} in {self.path or config_path()} "
                                 f"(configured: {known})")
            secrets.extend(secret for key in ("env", "headers") for var, value in entry.get(key, {}).items()
                           for secret in redaction.secrets(value, var))
        found: list[Tool] = []
        for name in names:
            try:
                server = self._server(name, config[name])
            except (Aborted, Cancelled):
                raise
            except Exception as err:
                warn(protocol.warning(f"MCP server {name!r} failed to start: {err}; "
                                      "going on without its tools", kind="mcp", server=name))
                continue
            found.extend(self._tool(server, tool) for tool in server.tools)
        return found

    def read_resource(self, name: str, uri: str, secrets: list[str]) -> str:
        """The text of the resource URI of the MCP server NAME (started if
        need be; its secrets added to SECRETS first, as :meth:`tools`
        does), for a request's context.

        Raises:
            UsageError: NAME is not configured; OSError: the server failed
                to start, or the resource is no text or cannot be read.
        """
        config = load_config(self.path)
        entry = config.get(name)
        if entry is None or entry.get("disabled"):
            raise UsageError(f"no MCP server named {name!r} in {self.path or config_path()}")
        secrets.extend(secret for key in ("env", "headers") for var, value in entry.get(key, {}).items()
                       for secret in redaction.secrets(value, var))
        try:
            server = self._server(name, entry)
            result = self._wait(self._run(server.client.read_resource(uri)),
                                float(entry.get("timeout", CALL_TIMEOUT)))
        except (Aborted, Cancelled):
            raise
        except Exception as err:
            raise OSError(_describe(err)) from None
        texts = [c.text for c in result.contents if isinstance(getattr(c, "text", None), str)]
        if not texts:
            raise OSError("it is no text (binary contents are not sent as context)")
        return "".join(texts)

    def _server(self, name: str, config: dict) -> _Server:
        """The running server NAME, started (with CONFIG) if need be."""
        with self._lock:
            server = self._servers.get(name)
        if server is not None and server.dead is None and server.config == config:
            return server
        if server is not None:
            self._stop(server)
        server = _Server(name, config)
        try:
            self._wait(self._run(self._start(server, server.log)), START_TIMEOUT)
        except BaseException as err:
            self._stop(server)
            if not isinstance(err, Exception) or isinstance(err, (Aborted, Cancelled)):
                raise
            raise RuntimeError(_describe(err) + server.said()) from None
        with self._lock:
            self._servers[name] = server
        return server

    async def _start(self, server: _Server, log: Path) -> None:
        """Start SERVER in a task of its own, which holds its session open
        until its ``stop`` event; return when its tools are listed."""
        ready = asyncio.get_running_loop().create_future()
        server.stop = asyncio.Event()
        asyncio.get_running_loop().create_task(self._hold(server, log, ready))
        await ready

    async def _hold(self, server: _Server, log: Path, ready: asyncio.Future) -> None:
        from mcp import Client, Implementation, StdioServerParameters
        from mcp.client.stdio import stdio_client
        from mcp.client.streamable_http import streamable_http_client
        from mcp.shared._httpx_utils import create_mcp_http_client

        from chatpipe import __version__

        config = server.config
        try:
            with open(log, "a", encoding="utf-8") as errlog:
                if config.get("command"):
                    params = StdioServerParameters(command=find_command(config["command"],
                                                                        config.get("env")),
                                                   args=config.get("args", []),
                                                   env=config.get("env") or None,
                                                   cwd=config.get("cwd"))
                    transport = stdio_client(params, errlog=errlog)
                else:
                    http = create_mcp_http_client(headers=config.get("headers") or None)
                    transport = streamable_http_client(config["url"], http_client=http)
                info = Implementation(name="chatpipe", version=__version__)
                async with Client(transport, client_info=info) as client:
                    cursor, tools = None, []
                    while True:
                        page = await client.list_tools(cursor=cursor)
                        tools.extend(page.tools)
                        cursor = page.next_cursor
                        if not cursor:
                            break
                    server.client, server.tools = client, tools
                    ready.set_result(None)
                    await server.stop.wait()
        except BaseException as err:
            server.dead = server.dead or _describe(err)
            if not ready.done():
                ready.set_exception(err if isinstance(err, Exception) else RuntimeError(str(err)))
            if not isinstance(err, Exception):
                raise
        finally:
            server.client = None

    def _stop(self, server: _Server) -> None:
        """Ask SERVER's task to close its session (and end its process)."""
        server.dead = server.dead or "stopped"
        if server.stop is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(server.stop.set)
        with self._lock:
            if self._servers.get(server.name) is server:
                del self._servers[server.name]

    def _tool(self, server: _Server, tool: Any) -> Tool:
        """A :class:`~chatpipe.tools.Tool` that calls TOOL of SERVER."""
        def run(call: ToolCall, arguments: dict, control: Any) -> ToolResult:
            return self.call(server, tool.name, arguments, control)

        return Tool(tool.name, tool.description or "", dict(tool.input_schema or {}), run,
                    source=f"mcp:{server.name}",
                    confirm=tool.name not in server.config.get("autoApprove", []))

    def call(self, server: _Server, name: str, arguments: dict, control: Any) -> ToolResult:
        """Call the tool NAME of SERVER with ARGUMENTS; its text result, or
        an error result naming the server when it fails (the server is
        then stopped if it died: the next request starts it again).

        Raises:
            Cancelled: CONTROL was cancelled meanwhile; Aborted: a signal.
        """
        client = server.client
        if client is None or server.dead:
            return ToolResult(f"MCP server {server.name!r} is not running ({server.dead}); "
                              "the next request starts it again", is_error=True)
        timeout = float(server.config.get("timeout", CALL_TIMEOUT))
        mark = server.log_size()
        try:
            result = self._wait(self._run(client.call_tool(name, arguments)), timeout, control)
        except TimeoutError:
            return ToolResult(f"MCP server {server.name!r}: the tool {name!r} did not answer "
                              f"within {timeout:g} seconds", is_error=True)
        except (Cancelled, Aborted):
            raise
        except Exception as err:
            from mcp import MCPError
            from mcp_types import CONNECTION_CLOSED

            if (server.client is None or server.dead or not isinstance(err, MCPError)
                    or err.code == CONNECTION_CLOSED):
                server.dead = server.dead or f"it died: {_describe(err)}"
                self._stop(server)
                return ToolResult(f"MCP server {server.name!r} died: {_describe(err)}"
                                  f"{server.said(mark)}", is_error=True)
            return ToolResult(f"MCP server {server.name!r}: {_describe(err)}", is_error=True)
        return ToolResult(_text(result), bool(result.is_error), images=_images(result))

    def close(self) -> None:
        """Stop every server and the background loop (servers' processes
        are ended by the SDK: stdin closed, then terminated)."""
        with self._lock:
            servers = list(self._servers.values())
            loop, thread = self._loop, self._thread
        for server in servers:
            self._stop(server)
        if loop is None:
            return

        async def drain() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(drain(), loop).result(12)
        loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(2)


def _images(result: Any) -> list[dict]:
    """A ``CallToolResult``'s image content (``{"type": "image", "data",
    "mimeType"}``) as neutral image parts ``{"type": "image", "data",
    "mime_type"}`` (see :class:`chatpipe.tools.ToolResult`)."""
    return [{"type": "image", "data": block.data, "mime_type": block.mime_type}
            for block in result.content or () if getattr(block, "type", None) == "image"]


def _text(result: Any) -> str:
    """A ``CallToolResult``'s content as text: its text parts joined, other
    parts (resources, audio) as JSON; images are left to :func:`_images`;
    the structured content as JSON when there is no text."""
    parts = []
    for block in result.content or ():
        kind = getattr(block, "type", None)
        if kind == "text":
            parts.append(block.text)
        elif kind != "image":
            parts.append(json.dumps(block.model_dump(mode="json", exclude_none=True),
                                    ensure_ascii=False))
    if not parts and result.structured_content is not None:
        parts.append(json.dumps(result.structured_content, ensure_ascii=False))
    return "\n".join(parts)
