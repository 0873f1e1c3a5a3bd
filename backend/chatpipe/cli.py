"""The ``chatpipe`` command line.

A request's errors become its last ``error`` event in
:func:`chatpipe.runner.run`; ``main()`` catches what happens outside a
request.  Both map exceptions with :func:`chatpipe.runner.error_for`: one
clear message (and, with ``--output ndjson``, a last ``error`` line on
stdout) and an exit code; see ``chatpipe --help``.

Exit codes: 0 the stream completed; 1 a request or stream error; 2 a usage or
template error; 128 + N on signal N (130 for SIGINT, 143 for SIGTERM).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
from typing import Any

from chatpipe import __version__, redaction
from chatpipe.errors import Aborted, OutputClosed, UsageError

_EPILOG = """\
examples:
  chatpipe send local -m "Tell me a joke"
  echo "Summarise: $(cat notes.txt)" | chatpipe send openai
  chatpipe send openai --output ndjson --messages chat.json
  chatpipe send ./request.json --save -m "And then?"
  chatpipe send openai --tools mcp:time -m "What time is it in Tokyo?"
  chatpipe templates list
  chatpipe mcp list
"""


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser for ``chatpipe``."""
    parser = argparse.ArgumentParser(
        prog="chatpipe", description="Stream LLM chats from request.json templates.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"chatpipe {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    send = commands.add_parser(
        "send", help="send a chat request and stream the answer",
        description="Fill in TEMPLATE, send it, and stream the answer to stdout.")
    send.add_argument("template", metavar="TEMPLATE",
                      help="a template name (see `chatpipe templates list`) or a .json file path")
    send.add_argument("-m", "--message", action="append", default=[], metavar="TEXT",
                      help="append a user message (repeatable)")
    send.add_argument("--messages", metavar="FILE|-",
                      help='append a JSON array of {"role", "content"} messages from FILE '
                           "or stdin")
    send.add_argument("--var", action="append", default=[], metavar="NAME=VALUE",
                      help="fill the ${NAME} placeholders (repeatable)")
    send.add_argument("--model", help="override the template's model")
    send.add_argument("--url", help="override the template's endpoint URL")
    send.add_argument("--temperature", type=float, metavar="T",
                      help="sampling temperature, 0 to 2 (set in the API's own field)")
    send.add_argument("--max-tokens", type=int, metavar="N",
                      help="the most output tokens the answer may have")
    send.add_argument("--usage", action="store_true",
                      help="say the tokens used and what the answer cost (when the model's "
                           "price is known) on stderr; with --output ndjson, add its cost "
                           "to the usage event")
    send.add_argument("--output", choices=("text", "ndjson"), default="text",
                      help="text: the answer as plain text (default); ndjson: one JSON "
                           "event per line (docs/protocol.md)")
    send.add_argument("--save", action="store_true",
                      help="append the new messages and the answer to the template file")
    send.add_argument("--tools", action="append", default=[], metavar="mcp:NAME",
                      help="let the model call the tools of the MCP server NAME of "
                           f"{_MCP_CONFIG} (repeatable; comma-separated names too); "
                           "each call is confirmed on the terminal")
    send.add_argument("--yes", action="store_true",
                      help="run every tool call without asking")
    send.add_argument("--max-tool-steps", type=int, metavar="N",
                      help="the most rounds of tool calls (default: the template's "
                           "max_tool_steps, else 10)")
    send.set_defaults(func=cmd_send)

    serve = commands.add_parser(
        "serve", help="a long-lived backend: requests as JSON lines on stdin",
        description="Read requests as JSON lines on stdin and stream their protocol events, "
                    "tagged with the request id, on stdout; several at once. "
                    'A request: {"id": "r1", "template": "openai", "messages": [...], '
                    '"vars": {...}, "env": {...}, "model": "...", "url": "..."}; '
                    'a cancel: {"id": "r1", "cancel": true}. See docs/protocol.md.')
    serve.add_argument("--eof-grace", type=float, default=30.0, metavar="SECONDS",
                       help="at the end of stdin, how long running streams may take to "
                            "finish before they are cancelled (default 30)")
    serve.set_defaults(func=cmd_serve)

    models = commands.add_parser(
        "models", help="list the models of a template's endpoint",
        description="List the models the endpoint of TEMPLATE offers (its model list, asked "
                    "with the template's headers and API key), one id per line, sorted (an "
                    "id that is a model file's path: the file's name, then the id); "
                    "cached for an hour.")
    models.add_argument("template", metavar="TEMPLATE",
                        help="a template name (see `chatpipe templates list`) or a .json file path")
    models.add_argument("--json", action="store_true",
                        help='print a JSON array of {"id", "created", "owned_by", "display_name"} '
                             "objects (those given); an error is also a JSON line on stdout")
    models.add_argument("--refresh", action="store_true",
                        help="ask the endpoint even if its list is cached")
    models.add_argument("--url", help="override the template's endpoint URL")
    models.add_argument("--var", action="append", default=[], metavar="NAME=VALUE",
                        help="fill the ${NAME} placeholders of the template's URL and headers")
    models.set_defaults(func=cmd_models)

    templates = commands.add_parser("templates", help="list, show and check templates")
    sub = templates.add_subparsers(dest="action", required=True, metavar="ACTION")
    ls = sub.add_parser("list", help="list the known templates")
    ls.add_argument("--json", action="store_true", help="print a JSON array")
    ls.set_defaults(func=cmd_templates_list)
    info = sub.add_parser("info", help="describe one template (--json for programs)")
    info.add_argument("name", metavar="NAME", help="a template name or .json file path")
    info.add_argument("--json", action="store_true", help="print a JSON object")
    info.set_defaults(func=cmd_templates_info)
    show = sub.add_parser("show", help="print a template file")
    show.add_argument("name", metavar="NAME")
    show.set_defaults(func=cmd_templates_show)
    path = sub.add_parser("path", help="print a template's file path")
    path.add_argument("name", metavar="NAME")
    path.set_defaults(func=cmd_templates_path)
    folder = sub.add_parser("dir", help="print the user's template folder (may not exist yet)")
    folder.set_defaults(func=cmd_templates_dir)
    check = sub.add_parser("check", help="validate template files (file:line:column: message)")
    check.add_argument("files", nargs="+", metavar="FILE")
    check.set_defaults(func=cmd_templates_check)

    mcp = commands.add_parser("mcp", help="the MCP servers of mcp.json")
    mcp_sub = mcp.add_subparsers(dest="action", required=True, metavar="ACTION")
    mcp_list = mcp_sub.add_parser(
        "list", help="list the MCP servers configured",
        description=f"List the MCP servers of {_MCP_CONFIG}: their names, "
                    "whether each is spoken to over stdio or streamable HTTP, and whether "
                    "it is disabled; never their commands, environments or headers.")
    mcp_list.add_argument("--json", action="store_true",
                          help='print a JSON array of {"name", "transport", "disabled"} '
                               'objects (and "description" where the entry has one)')
    mcp_list.set_defaults(func=cmd_mcp_list)
    return parser


# ---- send ---------------------------------------------------------------

def parse_vars(pairs: list[str]) -> dict[str, str]:
    """Turn ``["a=1", "b=2"]`` into ``{"a": "1", "b": "2"}``.

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


def load_messages(source: str, stdin) -> list[dict[str, Any]]:
    """Read a JSON array of chat messages from the file SOURCE, or STDIN for ``-``.

    Raises:
        UsageError: unreadable file, invalid JSON, or not a list of messages
            (see :func:`chatpipe.prepare.check_messages`).
    """
    from chatpipe import jsonin
    from chatpipe.prepare import check_messages

    where = "stdin" if source == "-" else source
    try:
        text = stdin.read() if source == "-" else open(source, encoding="utf-8").read()
    except OSError as err:
        raise UsageError(f"--messages {where}: {err.strerror}") from None
    try:
        messages = jsonin.loads(text)
    except ValueError as err:
        raise UsageError(f"--messages {where}: invalid JSON: {err}") from None
    return check_messages(messages, f"--messages {where}")


def _new_messages(args, stdin) -> list[dict[str, Any]]:
    messages = load_messages(args.messages, stdin) if args.messages else []
    texts = list(args.message)
    if not texts and not args.messages and not stdin.isatty():
        text = stdin.read()
        if text.strip():
            texts.append(text)
    messages += [{"role": "user", "content": text} for text in texts]
    return messages


#: Where the MCP servers are configured, for messages (see :mod:`chatpipe.mcp_host`).
_MCP_CONFIG = "mcp.json in chatpipe's config folder (e.g. ~/.config/chatpipe/mcp.json)"


def parse_tools(values: list[str]) -> list[str]:
    """The MCP server names of ``--tools mcp:NAME[,mcp:NAME...]`` VALUES.

    Raises:
        UsageError: a value that is not ``mcp:NAME``.
    """
    names = []
    for value in values:
        for item in filter(None, (v.strip() for v in value.split(","))):
            if not item.startswith("mcp:") or len(item) == 4:
                raise UsageError(f"--tools {item!r}: expected mcp:NAME (an MCP server of "
                                 f"{_MCP_CONFIG})")
            names.append(item[4:])
    return names


def cmd_send(args, ctx: "_Context") -> int:
    """``chatpipe send``: stream one answer through :func:`chatpipe.runner.run`
    (and, with ``--tools``, run the model's tool calls, confirmed on the
    terminal: :class:`chatpipe.terminal.TerminalAsker`); returns the exit
    code."""
    from chatpipe import runner, templates
    from chatpipe.protocol import EventLines, LineWriter
    from chatpipe.terminal import TerminalAsker
    from chatpipe.textview import TextView

    stdout = sys.stdout.buffer
    ctx.output = (EventLines(LineWriter(stdout)) if args.output == "ndjson"
                  else TextView(stdout, sys.stderr.buffer, usage=args.usage))

    def build() -> runner.Job:
        if args.save and not templates.looks_like_path(args.template):
            raise UsageError("--save needs a template file path (e.g. ./request.json), "
                             f"not the name {args.template!r}")
        if args.max_tool_steps is not None and args.max_tool_steps < 0:
            raise UsageError("--max-tool-steps must be 0 or more")
        return runner.Job(template=args.template, messages=_new_messages(args, sys.stdin),
                          variables=parse_vars(args.var), model=args.model, url=args.url,
                          save=args.save, price=args.usage, params={k: v for k, v in (
                              ("temperature", args.temperature),
                              ("max_tokens", args.max_tokens)) if v is not None},
                          mcp=parse_tools(args.tools), max_tool_steps=args.max_tool_steps)

    if not args.tools:
        return runner.run(build, ctx.output)
    from chatpipe.mcp_host import McpHost

    host = McpHost()
    try:
        return runner.run(build, ctx.output, asker=TerminalAsker(ctx.output, args.yes), mcp=host)
    finally:
        host.close()


def cmd_serve(args, ctx: "_Context") -> int:
    """``chatpipe serve``: see :mod:`chatpipe.serve`."""
    from chatpipe import serve

    return serve.main(eof_grace=args.eof_grace)


def cmd_models(args, ctx: "_Context") -> int:
    """``chatpipe models TEMPLATE``: see :mod:`chatpipe.models`."""
    from chatpipe import models

    ctx.output = models.output(args.json)
    return models.command(args.template, url=args.url, variables=parse_vars(args.var),
                          as_json=args.json, refresh=args.refresh, output=ctx.output)


# ---- templates ------------------------------------------------------------

def cmd_templates_list(args, ctx: "_Context") -> int:
    """``chatpipe templates list``: names, sources and endpoints."""
    from chatpipe import templates

    entries = [templates.summary(*t) for t in templates.iter_templates()]
    if args.json:
        print(json.dumps(entries, ensure_ascii=False, indent=2))
        return 0
    width = max((len(e["name"]) for e in entries), default=4)
    for e in entries:
        where = e.get("url") or e.get("error", "")
        print(f"{e['name']:<{width}}  {e['source']:<7}  {e.get('api', '-'):<18}  {where}")
    return 0


def cmd_templates_info(args, ctx: "_Context") -> int:
    """``chatpipe templates info NAME``: what :func:`templates.summary` says
    of the template NAME resolves to; exit 0 if valid, else 1."""
    from chatpipe import templates

    path, source = templates.resolve(args.name)
    entry = templates.summary(path.stem, source, path)
    if args.json:
        print(json.dumps(entry, ensure_ascii=False, indent=2))
    else:
        for key, value in entry.items():
            print(f"{key}: {', '.join(value) if isinstance(value, list) else value}")
    return 1 if "error" in entry else 0


def cmd_templates_show(args, ctx: "_Context") -> int:
    """``chatpipe templates show NAME``: print the template file as written."""
    from chatpipe import templates

    path, _ = templates.resolve(args.name)
    sys.stdout.write(path.read_text(encoding="utf-8"))
    return 0


def cmd_templates_path(args, ctx: "_Context") -> int:
    """``chatpipe templates path NAME``: print the file a name resolves to."""
    from chatpipe import templates

    path, _ = templates.resolve(args.name)
    print(path)
    return 0


def cmd_templates_dir(args, ctx: "_Context") -> int:
    """``chatpipe templates dir``: print the user's template folder."""
    from chatpipe import templates

    print(templates.user_dir())
    return 0


def cmd_templates_check(args, ctx: "_Context") -> int:
    """``chatpipe templates check FILE...``: 0 if all are valid, else 1.

    Each problem is printed as ``file:line:column: message`` (stdout), the
    format Emacs' compilation mode and flymake understand; a valid template
    may also get ``file:1:1: warning: ...`` lines (e.g. streaming is off).
    """
    from chatpipe import templates
    from chatpipe.errors import TemplateError

    status = 0
    for spec in args.files:
        try:
            path, source = templates.resolve(spec)
            templates.load_file(path, source)
        except TemplateError as err:
            if err.path and err.line is None:
                err = TemplateError(err.message, err.path, 1, 1)
            print(err if err.path else f"{spec}:1:1: {err}")
            status = 1
        else:
            template = templates.load_file(path, source)
            print(f"{path}: ok")
            for warning in template.warnings():
                print(f"{path}:1:1: warning: {warning}")
    return status


# ---- mcp ------------------------------------------------------------------

def cmd_mcp_list(args, ctx: "_Context") -> int:
    """``chatpipe mcp list``: the servers of mcp.json, by name, with their
    transport (``stdio`` for a ``command``, ``http`` for a ``url``), whether
    they are disabled, and their description (see
    :func:`chatpipe.mcp_host.load_config`; a broken file is a usage
    error).  With no server (no file, or one that configures none), stdout
    has none (``[]`` with ``--json``) and stderr says which file was read
    and shows an example (:data:`chatpipe.mcp_host.EXAMPLE`)."""
    from chatpipe import mcp_host

    path = mcp_host.config_path()
    config = mcp_host.load_config(path)
    servers = [{"name": name, "transport": "stdio" if "command" in entry else "http",
                "disabled": bool(entry.get("disabled")),
                **({"description": entry["description"]}
                   if isinstance(entry.get("description"), str) else {})}
               for name, entry in config.items()]
    if not servers:
        why = "configures no server" if path.exists() else "does not exist"
        sys.stderr.write(f"chatpipe: no MCP servers: {path} {why}\n"
                         "chatpipe: for example, this mcp.json offers the tools of the time "
                         "server (pip install mcp-server-time into chatpipe's venv):\n"
                         f"{mcp_host.EXAMPLE}\n")
    if args.json:
        print(json.dumps(servers, ensure_ascii=False, indent=2))
        return 0
    width = max((len(s["name"]) for s in servers), default=4)
    for server in servers:
        line = f"{server['name']:<{width}}  {server['transport']:<5}"
        if server["disabled"]:
            line += "  (disabled)"
        if server.get("description"):
            line += f"  {server['description']}"
        print(line.rstrip())
    return 0


# ---- main -------------------------------------------------------------------

class _Context:
    """What the top-level handler needs to report an error: the command's
    :class:`~chatpipe.protocol.Output`, once it has one."""

    def __init__(self) -> None:
        self.output = None


def _raise_aborted(signum, frame):
    # Ignore repeats while the first one unwinds and closes the response.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Aborted(signum)


def main(argv: list[str] | None = None) -> int:
    """Run the ``chatpipe`` command line; return the process exit code.

    Errors outside a request (``templates`` commands, a signal before
    ``send`` has an output) are mapped by :func:`chatpipe.runner.error_for`,
    like those of a request, and printed as ``chatpipe: error: MESSAGE``.
    Before anything else, stderr is guarded
    (:func:`chatpipe.redaction.guard_stderr`): every line the process
    writes there, its libraries' logging, warnings and tracebacks
    included, has the secrets redacted.
    """
    redaction.guard_stderr()
    signal.signal(signal.SIGINT, _raise_aborted)
    signal.signal(signal.SIGTERM, _raise_aborted)
    args = build_parser().parse_args(argv)
    ctx = _Context()
    try:
        if sys.stdout is None:
            raise OutputClosed("standard output is closed")
        try:
            return args.func(args, ctx)
        except (OutputClosed, BrokenPipeError):
            raise
        except Exception as err:
            from chatpipe import runner
            from chatpipe.textview import TextView

            return runner.report(err, ctx.output or TextView(sys.stdout.buffer,
                                                             sys.stderr.buffer))
    except (OutputClosed, BrokenPipeError) as err:
        # Nothing more can be told on stdout; a closed pipe (e.g. `| head`)
        # is no error worth a message.
        if not isinstance(err, BrokenPipeError) and not err.broken_pipe and sys.stderr:
            try:
                sys.stderr.write(f"chatpipe: error: {err}\n")
                sys.stderr.flush()
            except (OSError, ValueError):
                pass
        devnull = os.open(os.devnull, os.O_WRONLY)
        with contextlib.suppress(OSError):
            os.dup2(devnull, 1)
        return 1


if __name__ == "__main__":
    sys.exit(main())
