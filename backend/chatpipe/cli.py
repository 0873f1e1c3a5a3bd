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

from chatpipe import __version__, redaction, requestfields, rewritecmd
from chatpipe.errors import Aborted, OutputClosed, UsageError

_EPILOG = """\
examples:
  chatpipe send local -m "Tell me a joke"
  echo "Summarise: $(cat notes.txt)" | chatpipe send openai
  chatpipe send openai --output ndjson --messages chat.json
  chatpipe send ./request.json --save -m "And then?"
  chatpipe send openai --tools mcp:time -m "What time is it in Tokyo?"
  chatpipe rewrite openai --file app.py --lines 10-24 -m "make it async" --diff
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
    requestfields.add_arguments(send)
    send.add_argument("--request", metavar="FILE|-",
                      help="a JSON object of request fields (serve's request shape, without "
                           "id; docs/protocol.md) from FILE or stdin; the options given "
                           "replace its values, but append to its lists (messages, tools) "
                           "and add to its objects (vars, params)")
    send.add_argument("--output", choices=("text", "ndjson"), default="text",
                      help="text: the answer as plain text (default); ndjson: one JSON "
                           "event per line (docs/protocol.md)")
    send.add_argument("--yes", action="store_true",
                      help="run every tool call without asking")
    send.set_defaults(func=cmd_send)

    rewritecmd.add_parser(commands)

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
                        help='print a JSON array of {"id", "created", "owned_by", "display_name", '
                             '"media", "context_window"} '
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
        description=f"List the MCP servers of {requestfields.MCP_CONFIG}: their names, "
                    "whether each is spoken to over stdio or streamable HTTP, and whether "
                    "it is disabled; never their commands, environments or headers.")
    mcp_list.add_argument("--json", action="store_true",
                          help='print a JSON array of {"name", "transport", "disabled"} '
                               'objects (and "description" where the entry has one)')
    mcp_list.set_defaults(func=cmd_mcp_list)
    return parser


# ---- send ---------------------------------------------------------------

def request_of(args, stdin) -> dict:
    """The JSON request of ``chatpipe send``'s ARGS: ``--request``'s
    object with the options given over it (see
    :func:`chatpipe.requestfields.from_args`).  With none of ``-m``,
    ``--messages`` and ``--request``, text piped on STDIN is the user
    message (before the message of ``-a``'s attachments, if any).

    Raises:
        UsageError: an unreadable ``--request`` or one that is not a JSON
            object, both ``--request -`` and ``--messages -``, or a bad option.
    """
    base = None
    if args.request is not None:
        if args.request == "-" and args.messages == "-":
            raise UsageError("--request - and --messages - cannot both read stdin")
        base = requestfields.load_json("--request", args.request, stdin)
        if not isinstance(base, dict):
            raise UsageError(f"--request {'stdin' if args.request == '-' else args.request}: "
                             "expected a JSON object")
    request = requestfields.from_args(args, base)
    if not (args.message or args.messages or args.request) and not stdin.isatty():
        text = stdin.read()
        if text.strip():
            request["messages"] = [{"role": "user", "content": text},
                                   *request.get("messages", [])]
    return request


def cmd_send(args, ctx: "_Context") -> int:
    """``chatpipe send``: stream one answer through :func:`chatpipe.runner.run`
    (and, with tools, run the model's tool calls, confirmed on the
    terminal: :class:`chatpipe.terminal.TerminalAsker`); returns the exit
    code."""
    from chatpipe import runner, templates
    from chatpipe.protocol import EventLines, LineWriter
    from chatpipe.terminal import TerminalAsker
    from chatpipe.textview import TextView

    stdout = sys.stdout.buffer

    def output(usage: bool):
        return (EventLines(LineWriter(stdout)) if args.output == "ndjson"
                else TextView(stdout, sys.stderr.buffer, usage=usage))

    ctx.output = output(args.usage)
    job = requestfields.job(request_of(args, sys.stdin), save=args.save)
    ctx.output = output(job.price)
    if job.save and not templates.looks_like_path(job.template):
        raise UsageError("--save needs a template file path (e.g. ./request.json), "
                         f"not the name {job.template!r}")
    if not (job.tools or job.mcp or any(item.get("type") == "mcp" for item in job.context)):
        return runner.run(lambda: job, ctx.output)
    from chatpipe.mcp_host import McpHost

    host = McpHost()
    try:
        return runner.run(lambda: job, ctx.output, asker=TerminalAsker(ctx.output, args.yes),
                          mcp=host)
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
    return models.command(args.template, url=args.url, variables=requestfields.parse_vars(args.var),
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
