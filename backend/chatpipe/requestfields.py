"""The fields of a request, each defined once: the :class:`Job`.

A request (what to send: a template, messages, overrides, tools) comes
from ``chatpipe send``'s command line, from a JSON object (``send
--request FILE|-``), or from a ``chatpipe serve`` line.  Each field of
:class:`Job` carries, in its metadata (a :class:`Spec`), its key in a
JSON request, its type and default as the docs give them, its check
and its meaning, and the options that set it on the command line.
From that one table come send's options (:func:`add_arguments`), the
JSON object of a command line (:func:`from_args`), the keys a JSON
request may have (:data:`JSON_KEYS`) and the one way a request becomes a
job (:func:`job`), so that a field is checked, with the same error
text, whatever the front end; docs/protocol.md's table is
:func:`docs_table` (tests/test_request_schema.py checks it).

Adding a field is one entry in :class:`Job`.  A key ``group.name``
(``params.temperature``) is the member NAME of the JSON object GROUP.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from chatpipe.errors import UsageError
from chatpipe.requestargs import (  # noqa: F401 (the options' parsers, used by the fields)
    MCP_CONFIG, _At, load_json, load_messages, parse_attachments, parse_files, parse_tools,
    parse_vars)


@dataclass(frozen=True)
class Flag:
    """One command-line option (or positional argument) of ``chatpipe send``.

    Attributes:
        names: argparse's option strings (``("-m", "--message")``), or the
            name of a positional argument.
        options: the other keyword arguments of ``add_argument`` (``help``
            defaults to the field's doc).
        to_json: turns the parsed value (never None) into the field's JSON
            value; may raise :class:`UsageError`.  Default: the value itself.
    """

    names: tuple[str, ...]
    options: Mapping[str, Any] = field(default_factory=dict)
    to_json: Callable[[Any], Any] | None = None

    @property
    def dest(self) -> str:
        """The attribute of argparse's namespace that holds the value."""
        long = [n for n in self.names if n.startswith("--")]
        return (long or self.names)[0].lstrip("-").replace("-", "_")

    @property
    def shown(self) -> str:
        """How the docs show the option: ``--var NAME=VALUE``, ``TEMPLATE``."""
        if not self.names[0].startswith("-"):
            return self.options.get("metavar", self.names[0])
        name = self.names[0]
        metavar = self.options.get("metavar")
        return f"{name} {metavar}" if metavar else name


@dataclass(frozen=True)
class Spec:
    """What a :class:`Job` field is, in its metadata.

    Attributes:
        key: its key in a JSON request (``group.name`` inside the object
            GROUP), or None for a command-line-only field.
        type: its JSON type, in words (docs).
        default: what an absent (or null) value means, in words (docs).
        doc: what it means (docs; the help of its options).
        check: true when a JSON value is valid; may raise a
            :class:`UsageError` of its own that says more.
        expected: what a valid value is, in words (error messages).
        flags: the options of ``chatpipe send`` that set it.
        required: whether a request must have it.
    """

    key: str | None
    type: str
    default: str
    doc: str
    check: Callable[[Any], bool]
    expected: str
    flags: tuple[Flag, ...] = ()
    required: bool = False

    @property
    def label(self) -> str:
        """The field as error messages name it: ``"key" (--flag)``."""
        names = [f.shown.split(" ")[0] for f in self.flags]
        key = f'"{self.key}"' if self.key else names[0]
        rest = [n for n in names if n != key]
        return f"{key} ({', '.join(rest)})" if rest else key


def _spec(key, type, shown_default, doc, check, expected, *flags, required=False, **kw):
    """A dataclass ``field`` whose metadata is a :class:`Spec` (KW: its
    ``default`` or ``default_factory``)."""
    spec = Spec(key, type, shown_default, doc, check, expected, flags, required)
    return field(metadata={"spec": spec}, **kw)


def _string(value: Any) -> bool:
    return isinstance(value, str)


def _name(value: Any) -> bool:
    return isinstance(value, str) and value != ""


def _strings(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(v, str) for v in value.values())


def _names(value: Any) -> bool:
    return isinstance(value, list) and all(_name(v) for v in value)


def _whole(least: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= least


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 2


def _messages(value: Any) -> bool:
    from chatpipe.prepare import check_messages

    check_messages(value, "messages")
    return True


def _tools(value: Any) -> bool:
    from chatpipe.tools import check_tools

    check_tools(value)
    return True


def _context(value: Any) -> bool:
    from chatpipe.context import parse_items

    parse_items(value)
    return True


def _rewrite(value: Any) -> bool:
    from chatpipe.rewrite import check

    return check(value)


@dataclass
class Job:
    """What to send, from any front end: one request's fields.

    Each field's metadata ``"spec"`` (a :class:`Spec`) says how it is
    written in a JSON request and on the command line, and what it means;
    :func:`job` makes a Job from a JSON request.
    """

    template: str = _spec(
        "template", "string", "(required)",
        "a template name (see `chatpipe templates list`) or a .json file path",
        _name, "a template name or file path",
        Flag(("template",), {"metavar": "TEMPLATE", "nargs": "?"}), required=True)
    messages: list[dict[str, Any]] = _spec(
        "messages", "array of messages", "[]",
        'messages appended to the template\'s, {"role", "content"} (or the neutral shape '
        "of tool turns); a system message replaces the template's system prompt",
        _messages, "a JSON array of messages",
        Flag(("--messages",), {"metavar": "FILE|-", "help": 'append a JSON array of '
                               '{"role", "content"} messages from FILE or stdin'},
             load_messages),
        Flag(("-m", "--message"), {"action": "append", "metavar": "TEXT",
                                   "help": "append a user message (repeatable)"},
             lambda texts: [{"role": "user", "content": t} for t in texts]),
        Flag(("-a", "--attach"), {"action": "append", "metavar": "PATH|URL|-",
                                  "help": "attach an image or document (a PDF) to the message: "
                                          "a file, an http(s) URL or stdin (-) (repeatable; see "
                                          "[Images and documents](#images-and-documents))"},
             parse_attachments),
        Flag(("--at",), {"action": _At, "metavar": "MIME",
                         "help": "the MIME type of -a - (stdin), e.g. image/png"},
             lambda mime: []),
        default_factory=list)
    variables: Mapping[str, str] = _spec(
        "vars", "object of strings", "{}", "values of the template's ${NAME} placeholders",
        _strings, "an object of strings",
        Flag(("--var",), {"action": "append", "metavar": "NAME=VALUE",
                          "help": "fill the ${NAME} placeholders (repeatable)"}, parse_vars),
        default_factory=dict)
    model: str | None = _spec(
        "model", "string", "the template's", "overrides the template's model",
        _string, "a string", Flag(("--model",)), default=None)
    url: str | None = _spec(
        "url", "string", "the template's", "overrides the template's endpoint URL",
        _string, "a string", Flag(("--url",)), default=None)
    env: Mapping[str, str] = _spec(
        "env", "object of strings", "{}",
        "environment variables added for this request's ${env:NAME} placeholders (how a "
        "program passes API keys without a command line)", _strings, "an object of strings",
        default_factory=dict)
    temperature: float | None = _spec(
        "params.temperature", "number", "the template's",
        "sampling temperature, 0 to 2 (set in the API's own field)",
        _number, "a number from 0 to 2",
        Flag(("--temperature",), {"type": float, "metavar": "T"}), default=None)
    max_tokens: int | None = _spec(
        "params.max_tokens", "integer", "the template's",
        "the most output tokens the answer may have (set in the API's own field)",
        _whole(1), "a whole number, 1 or more",
        Flag(("--max-tokens",), {"type": int, "metavar": "N"}), default=None)
    price: bool = _spec(
        "price", "boolean", "false",
        "say what the answer cost: `cost` (US dollars) in the usage event when the model's "
        "price is known; send's --usage also says the tokens and cost on stderr",
        lambda v: isinstance(v, bool), "true or false",
        Flag(("--usage",), {"action": "store_true",
                            "help": "say the tokens used and what the answer cost (when the "
                                    "model's price is known) on stderr; with --output "
                                    "ndjson, add its cost to the usage event"}),
        default=False)
    tools: list = _spec(
        "tools", "array", "[]",
        'tools the model may call: the client\'s own (neutral definitions) and "mcp:NAME" '
        f"strings, the tools of the MCP server NAME of {MCP_CONFIG}; send confirms each "
        "call on the terminal", _tools, "a list of tool definitions",
        Flag(("--tools",), {"action": "append", "metavar": "mcp:NAME",
                            "help": "let the model call the tools of the MCP server NAME of "
                                    f"{MCP_CONFIG} (repeatable; comma-separated names too); "
                                    "each call is confirmed on the terminal"}, parse_tools),
        default_factory=list)
    mcp: list[str] = _spec(
        "mcp", "array of strings", "[]", "more MCP server names (as \"mcp:NAME\" in tools)",
        _names, "a list of MCP server names", default_factory=list)
    max_tool_steps: int | None = _spec(
        "max_tool_steps", "integer", "the template's, else 10",
        "the most rounds of tool calls (0: none)", _whole(0), "a whole number, 0 or more",
        Flag(("--max-tool-steps",), {"type": int, "metavar": "N"}), default=None)
    context: list = _spec(
        "context", "array of context items", "[]",
        "files, folders and named texts the question is about, read when the request is "
        "sent and put into it (see [Context](#context))", _context, "a list of context items",
        Flag(("-f", "--file"), {"action": "append", "metavar": "PATH[:START-END]|DIR|-",
                                "help": "add a file (or its lines START to END), a folder "
                                        "(its files, without what .gitignore ignores) or "
                                        "stdin (-) as context (repeatable)"}, parse_files),
        default_factory=list)
    context_placement: str | None = _spec(
        "context_placement", "string", "the template's, else \"system\"",
        'where the context goes: "system" (after the system prompt) or "user" (before the '
        "last user message)", lambda v: v in ("system", "user"), '"system" or "user"',
        Flag(("--context-placement",), {"choices": ("system", "user")}), default=None)
    dry_run: bool = _spec(
        "dry_run", "boolean", "false",
        "build the request but do not send it: a `request` event holds its URL and body "
        "(keys redacted, long base64 data elided); send's text output prints the body",
        lambda v: isinstance(v, bool), "true or false",
        Flag(("--dry-run",), {"action": "store_true"}), default=False)
    rewrite: dict | None = _spec(
        "rewrite", "object", "none", 'a text to rewrite in place, {"text", "instruction", "path", '
        '"language", "before", "after"}: the answer is its replacement (see [Rewrite](#rewrite))',
        _rewrite, "a rewrite object", default=None)
    chat: str | None = _spec(
        "chat", "string", "none",
        'the conversation the request belongs to: serve shares the "always" approvals of '
        "tools among its requests", _name, "a non-empty string", default=None)
    save: bool = _spec(
        None, "boolean", "false",
        "append the new messages and the answer to the template file",
        lambda v: isinstance(v, bool), "true or false",
        Flag(("--save",), {"action": "store_true"}), default=False)
    save_media: str = _spec(
        "save_media", "string", '"path"',
        'how --save keeps images and documents: "path" (a reference to the file, read '
        'again at each request) or "inline" (its data, base64)',
        lambda v: v in ("path", "inline"), '"path" or "inline"',
        Flag(("--save-media",), {"choices": ("path", "inline")}), default="path")

    def params(self) -> dict[str, Any]:
        """The request parameters given (the ``params.NAME`` fields), by NAME."""
        return {spec.key.partition(".")[2]: getattr(self, name)
                for name, spec in FIELDS.items()
                if spec.key and spec.key.startswith("params.")
                and getattr(self, name) is not None}

    def environment(self) -> dict[str, str]:
        """The environment of its ``${env:NAME}``: ``os.environ`` and :attr:`env`."""
        return {**os.environ, **self.env}


#: Job attribute -> its :class:`Spec`, in the order of the fields.
FIELDS: dict[str, Spec] = {f.name: f.metadata["spec"] for f in dataclasses.fields(Job)}

#: The top-level keys a JSON request may have (``params`` for ``params.NAME``).
JSON_KEYS = frozenset(s.key.partition(".")[0] for s in FIELDS.values() if s.key)


def _get(request: Mapping[str, Any], key: str) -> Any:
    """The value of KEY (``group.name`` inside GROUP) in REQUEST, or None."""
    group, dot, name = key.partition(".")
    value = request.get(group)
    if not dot:
        return value
    return value.get(name) if isinstance(value, dict) else None


def _check_groups(request: Mapping[str, Any]) -> None:
    """Check the objects of ``group.name`` keys (``params``): objects of
    known names.

    Raises:
        UsageError: not an object, or an unknown name (``unknown parameter
            'top_k'; known: ...``).
    """
    for group in {s.key.partition(".")[0] for s in FIELDS.values() if s.key and "." in s.key}:
        value = request.get(group)
        if value is None:
            continue
        if not isinstance(value, dict):
            raise UsageError(f'"{group}" must be an object')
        known = [s.key.partition(".")[2] for s in FIELDS.values()
                 if s.key and s.key.startswith(group + ".")]
        for name in value:
            if name not in known:
                raise UsageError(f"unknown parameter {name!r}; known: " + ", ".join(known))


def job(request: Mapping[str, Any], **cli: Any) -> Job:
    """The :class:`Job` of a JSON REQUEST (serve's line without its protocol
    keys, ``send --request``'s object, or what :func:`from_args` gives).

    A key that is absent or null is the field's default.  CLI gives the
    command-line-only fields (``save``), by attribute.

    Raises:
        UsageError: not an object, an unknown key, a missing required field,
            or a value that fails its field's check (``"KEY" (--flag) is
            not valid: expected ...``; messages and tools say which item).
    """
    if not isinstance(request, dict):
        raise UsageError("a request must be a JSON object")
    unknown = set(request) - JSON_KEYS
    if unknown:
        raise UsageError("unknown request keys: " + ", ".join(sorted(unknown)))
    _check_groups(request)
    values = {}
    for name, spec in FIELDS.items():
        value = _get(request, spec.key) if spec.key else cli.get(name)
        if value is None:
            if spec.required:
                raise UsageError(f"{spec.label} is missing: expected {spec.expected}")
            continue
        if not spec.check(value):
            raise UsageError(f"{spec.label} is not valid: expected {spec.expected}")
        values[name] = value
    return Job(**values)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of every field that has some to PARSER (``chatpipe send``)."""
    for name, spec in FIELDS.items():
        for flag in spec.flags:
            options = {"help": spec.doc, **flag.options}
            if flag.names[0].startswith("-"):
                options.setdefault("dest", flag.dest)
            parser.add_argument(*flag.names, **options)


def _merged(base: Any, value: Any) -> Any:
    """VALUE given over BASE: lists appended, objects updated, else VALUE."""
    if isinstance(base, list) and isinstance(value, list):
        return base + value
    if isinstance(base, dict) and isinstance(value, dict):
        return {**base, **value}
    return value


def from_args(args: argparse.Namespace, base: Mapping[str, Any] | None = None) -> dict:
    """The JSON request that the options in ARGS give, over BASE (a JSON
    request, e.g. ``--request``'s): a value given on the command line
    replaces BASE's, but lists are appended (messages, tools: BASE's
    first, then ``--messages``, then ``-m``) and objects updated (vars,
    params: an option's name wins).  Options not given (None, False) leave
    BASE's value.  Command-line-only fields are left out.

    Raises:
        UsageError: see the fields' :attr:`Flag.to_json` (``--var``,
            ``--tools``, ``--messages``).
    """
    request = dict(base or {})
    for spec in FIELDS.values():
        if spec.key is None:
            continue
        for flag in spec.flags:
            value = getattr(args, flag.dest, None)
            if value is None or value is False:
                continue
            value = flag.to_json(value) if flag.to_json else value
            group, dot, name = spec.key.partition(".")
            if dot:
                inner = request.get(group)
                request[group] = {**(inner if isinstance(inner, dict) else {}), name: value}
            else:
                request[group] = _merged(request.get(group), value)
    return request


def docs_table() -> list[str]:
    """The lines of docs/protocol.md's table of request fields (markdown)."""
    lines = ["| JSON key | `chatpipe send` | type | default | meaning |", "|---|---|---|---|---|"]
    for spec in FIELDS.values():
        key = f"`{spec.key}`" if spec.key else "(send only)"
        flags = ", ".join(f"`{f.shown}`" for f in spec.flags) or "(JSON only)"
        cells = (key, flags, spec.type, spec.default, spec.doc)
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return lines
