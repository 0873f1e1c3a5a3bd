"""Tools: a request's answers, the tool calls they make, and their results.

One request may take several answers (steps): when an answer ends with tool
calls, each call is confirmed where required, run, and its result sent back
in the API's own shape (:class:`chatpipe.dialects.base.Dialect`), and the
model's next answer streams on, until an answer calls no tool or
``max_tool_steps`` rounds of calls have run.  :class:`Loop` does this for
:func:`chatpipe.runner.run`, whatever the front end.

Its events (docs/protocol.md, "Tools"): one ``start``; each later answer
begins with a ``step`` event instead; ``tool_call`` indexes count on
across the steps, and a call without a provider id gets one
(``chatpipe_N``); each call's result is a ``tool_result`` event; the
answers' ``usage`` is added up into one event, and the one ``done`` at the
very end carries the last answer's finish reason (and ``steps``, and
``stopped`` when the step limit left calls unrun: they are answered with
an error result, so that the conversation stays valid).

Where tools come from: :class:`Tool` objects in a :class:`Toolbox`, made by
the front end: the client's own tools on ``serve`` (run by the client
through an :class:`Asker`) and MCP servers' tools (:mod:`chatpipe.mcp_host`).

What the user is asked, and what the model gets:

- a tool is offered under a name the APIs take
  (:func:`chatpipe.tooltext.offered_name`:
  ``^[A-Za-z0-9_-]{1,64}$``, unique in the request); a call of that name
  reaches that tool, whatever its server calls it;
- "always" approves one tool of one source (``(source, name)``, the
  name its server gives it) for the :class:`Asker`'s life: one ``send``
  run, one ``serve`` request, or one chat (serve's ``chat``);
- the question shows the whole arguments, pretty-printed, through
  :func:`chatpipe.tooltext.shown` (no bidi override or control character
  reaches the screen);
- a result longer than ``max_result_bytes`` is cut, and says so
  (:func:`chatpipe.tooltext.capped`).
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from typing import Any, Callable

from chatpipe import protocol, stream
from chatpipe.dialects.base import LOCAL_CALL_ID, Dialect
from chatpipe.errors import Aborted, Cancelled, OutputClosed, UsageError
from chatpipe.protocol import Sink
from chatpipe.tooltext import MAX_RESULT_BYTES, capped, offered_name
from chatpipe.connections import Control


@dataclass
class ToolCall:
    """One tool call of an answer, whole.

    Attributes:
        id: the provider's call id, or one chatpipe made up (``chatpipe_N``).
        name: the tool's name.
        arguments: a JSON text (as the model wrote it).
        signature: an opaque token to send back with the call (Gemini).
    """

    id: str
    name: str
    arguments: str
    signature: str | None = None

    def neutral(self) -> dict:
        """The call in the neutral shape: ``{"id", "name", "arguments"}``
        (and ``signature`` when there is one)."""
        call = {"id": self.id, "name": self.name, "arguments": self.arguments}
        if self.signature:
            call["signature"] = self.signature
        return call


@dataclass
class ToolResult:
    """What a tool call gave: CONTENT (a text) for the model; IS_ERROR when
    the tool failed; DENIED when the user said no (an error too); IMAGES,
    neutral image parts ``{"type": "image", "data": BASE64, "mime_type"}``
    (an MCP tool's image content), which go to the model as images where
    its API takes them in a tool result, else as a note in the text."""

    content: str
    is_error: bool = False
    denied: bool = False
    images: list = field(default_factory=list)

    def message(self, call: ToolCall) -> dict:
        """The neutral ``role: tool`` message of this result for CALL (with
        ``images`` when it has some)."""
        message = {"role": "tool", "tool_call_id": call.id, "name": call.name,
                   "content": self.content, "is_error": self.is_error}
        return {**message, "images": list(self.images)} if self.images else message


def denial(reason: str | None) -> ToolResult:
    """The result of a call the user denied, for REASON (may be empty)."""
    text = "The user denied this tool call"
    return ToolResult(f"{text}: {reason}" if reason else f"{text}.", is_error=True, denied=True)


@dataclass
class Tool:
    """A tool the model may call.

    Attributes:
        name, description, parameters: its neutral definition (parameters
            a JSON Schema).
        run: runs a call: ``run(call, arguments, control)`` returns a
            :class:`ToolResult`; ARGUMENTS is the parsed object.  It may
            raise :class:`~chatpipe.errors.Cancelled` or
            :class:`~chatpipe.errors.Aborted`; any other exception is the
            tool's error, sent to the model.
        source: where it runs: ``client`` or ``mcp:SERVER``.
        confirm: ask the user before each call (unless "always" was said
            for this tool of this source).

    NAME is the tool's name at its source; the model may know it by
    another (see :class:`Toolbox`).
    """

    name: str
    description: str
    parameters: dict
    run: Callable[[ToolCall, dict, Control | None], ToolResult]
    source: str = "client"
    confirm: bool = False

    def definition(self, name: str | None = None) -> dict:
        """The neutral definition: ``{"name", "description", "parameters"}``,
        under NAME (default its own)."""
        return {"name": name or self.name, "description": self.description,
                "parameters": self.parameters}

    @property
    def key(self) -> tuple[str, str]:
        """What "always" approves: ``(source, name)``."""
        return (self.source, self.name)


class Asker:
    """How a front end takes part in running tools: it confirms calls and
    runs the client's own tools.  This base class can do neither: it
    denies every confirmation and has no client tools.

    Attributes:
        always: the tools the user approved for good ("always"), as
            ``(source, name)`` keys (:attr:`Tool.key`): for as long as
            this asker lives (a ``send`` run, a ``serve`` request or chat).
    """

    #: What "always" covers, said in the question.
    scope = "in this chat"

    def __init__(self) -> None:
        self.always: set[tuple[str, str]] = set()

    def confirm(self, call: ToolCall, tool: Tool, control: Control | None) -> tuple[str, str]:
        """Ask whether CALL of TOOL may run: returns ``(decision, reason)``,
        decision ``once``, ``always`` or ``deny``.

        Raises:
            Cancelled, Aborted: the request was stopped while asking.
        """
        return "deny", "chatpipe has no way to ask for confirmation here"

    def client_tool(self, call: ToolCall, control: Control | None) -> ToolResult:
        """Have the client run its tool for CALL; return the result.

        Raises:
            Cancelled, Aborted: the request was stopped while waiting.
        """
        return ToolResult(f"the client cannot run the tool {call.name!r}", is_error=True)


def check_tools(tools: Any, where: str = "tools") -> list:
    """Return TOOLS if it is a list of neutral tool definitions (``{"name",
    "description", "parameters"}``, name a string of 1 to 64 letters,
    digits, ``_`` and ``-``; parameters a JSON Schema object) or of
    ``mcp:SERVER`` strings.

    Raises:
        UsageError: not such a list; the message says which item and why.
    """
    if not isinstance(tools, list):
        raise UsageError(f'"{where}" must be a list of tool definitions')
    for i, tool in enumerate(tools):
        if isinstance(tool, str) and tool.startswith("mcp:") and len(tool) > 4:
            continue
        name = tool.get("name") if isinstance(tool, dict) else None
        if not (isinstance(name, str) and 0 < len(name) <= 64
                and all(c.isascii() and (c.isalnum() or c in "_-") for c in name)):
            raise UsageError(f'{where}: item {i} is not "mcp:SERVER" nor an object with a '
                             '"name" of 1 to 64 letters, digits, "_" or "-"')
        if not isinstance(tool.get("description", ""), str):
            raise UsageError(f'{where}: item {i}: "description" must be a string')
        if not isinstance(tool.get("parameters", {}), dict):
            raise UsageError(f'{where}: item {i}: "parameters" must be a JSON Schema object')
    return tools


class Toolbox:
    """The tools of one request, and how each call is answered.

    Args:
        tools: the tools.  Each is offered under the name
            :func:`~chatpipe.tooltext.offered_name` gives it, in order: two tools of one name
            from two sources are both offered (the later one renamed);
            for two client tools of one name, the first is kept.
        asker: the front end (confirmations, client tools).
        max_result_bytes: the largest result sent to the model (see
            :func:`~chatpipe.tooltext.capped`).

    Attributes:
        tools: the tools by the name offered to the model.
    """

    def __init__(self, tools: list[Tool], asker: Asker | None = None,
                 max_result_bytes: int = MAX_RESULT_BYTES) -> None:
        self.tools: dict[str, Tool] = {}
        for tool in tools:
            if tool.source == "client" and tool.name in self.tools:
                continue
            self.tools[offered_name(tool, self.tools)] = tool
        self.asker = asker or Asker()
        self.max_result_bytes = max_result_bytes

    def __bool__(self) -> bool:
        return bool(self.tools)

    def definitions(self) -> list[dict]:
        """The tools' neutral definitions, under their offered names."""
        return [tool.definition(name) for name, tool in self.tools.items()]

    def answer(self, call: ToolCall, control: Control | None) -> ToolResult:
        """Run CALL, after asking the user when its tool needs it; never
        raises for the tool's own failures (an unknown tool, arguments that
        are not a JSON object, a denial, an exception): they are error
        results for the model.  A result is capped (see
        :func:`~chatpipe.tooltext.capped`).

        Raises:
            Cancelled, Aborted: the request was stopped meanwhile.
        """
        result = self._answer(call, control)
        result.content = capped(result.content, self.max_result_bytes)
        return result

    def _answer(self, call: ToolCall, control: Control | None) -> ToolResult:
        """:meth:`answer`, uncapped."""
        tool = self.tools.get(call.name)
        if tool is None:
            return ToolResult(f"there is no tool named {call.name!r}", is_error=True)
        try:
            arguments = json.loads(call.arguments) if call.arguments.strip() else {}
        except ValueError as err:
            return ToolResult(f"the arguments are not valid JSON: {err}", is_error=True)
        if not isinstance(arguments, dict):
            return ToolResult("the arguments must be a JSON object", is_error=True)
        if tool.confirm and tool.key not in self.asker.always:
            decision, reason = self.asker.confirm(call, tool, control)
            if decision == "always":
                self.asker.always.add(tool.key)
            elif decision != "once":
                return denial(reason)
        _check(control)
        try:
            return tool.run(call, arguments, control)
        except (Cancelled, Aborted, OutputClosed):
            raise
        except Exception as err:
            return ToolResult(f"the tool failed: {err}", is_error=True)


def toolbox(tools: list, servers: list[str], asker: Asker | None, mcp: Any,
            warn: Callable[[dict], None], secrets: list[str],
            max_result_bytes: int = MAX_RESULT_BYTES) -> Toolbox | None:
    """The toolbox of a request, or None when it has no tools.

    Args:
        tools: neutral definitions of the client's own tools (run by
            ASKER's :meth:`Asker.client_tool`), and ``mcp:SERVER`` strings.
        servers: more MCP server names.
        asker: the front end.
        mcp: a :class:`chatpipe.mcp_host.McpHost`, or None where MCP is
            not available.
        warn: emits a ``warning`` event (an MCP server that failed).
        secrets: the output's secrets, to which the servers' own (their
            ``env`` and ``headers`` values) are added.
        max_result_bytes: see :class:`Toolbox`.
    Raises:
        UsageError: MCP servers asked for where MCP is not available, or
            one that is not configured (see :mod:`chatpipe.mcp_host`).
    """
    asker = asker or Asker()
    names = [t[4:] for t in tools if isinstance(t, str)] + list(servers)

    def client(call: ToolCall, arguments: dict, control: Control | None) -> ToolResult:
        return asker.client_tool(call, control)

    found = [Tool(t["name"], t.get("description", ""), t.get("parameters") or {}, client)
             for t in tools if isinstance(t, dict)]
    if names:
        if mcp is None:
            raise UsageError("MCP servers cannot be used here")
        found += mcp.tools(list(dict.fromkeys(names)), warn, secrets)
    return Toolbox(found, asker, max_result_bytes) if found else None


def _check(control: Control | None) -> None:
    """Raise Cancelled if CONTROL was cancelled."""
    if control is not None and control.cancelled.is_set():
        raise Cancelled()


class _Step:
    """The sink of one answer: passes its events on to SINK, but for
    ``usage`` and ``done``, which it keeps; turns a later answer's
    ``start`` into ``step``; numbers tool calls from FIRST_INDEX on and
    gives an id to a call that has none; keeps the text and the calls."""

    def __init__(self, sink: Sink, number: int, first_index: int) -> None:
        self.sink = sink
        self.number = number
        self.first = first_index
        self.text: list[str] = []
        self.calls: dict[int, dict[str, Any]] = {}
        self.usage: dict | None = None
        self.done: dict | None = None
        self.content = False

    def emit(self, event: dict) -> None:
        kind = event["type"]
        if kind == "start" and self.number > 1:
            event = protocol.step(self.number, event.get("model"), event.get("response_id"))
        elif kind == "delta":
            self.text.append(event["content"])
        elif kind == "tool_call":
            index = event["index"] + self.first
            call = self.calls.get(index)
            if call is None:
                call = self.calls[index] = {"id": event.get("call_id") or f"{LOCAL_CALL_ID}{index}",
                                            "name": event.get("name") or "", "arguments": [],
                                            "signature": event.get("signature")}
                event = protocol.tool_call(index, event["arguments"], call["id"], event.get("name"),
                                           event.get("signature"))
            else:
                event = {**event, "index": index}
            call["arguments"].append(event["arguments"])
        elif kind == "usage":
            self.usage = event
            return
        elif kind == "done":
            self.done = event  # a dialect's Done carries the answer's thinking
            return
        if kind in protocol.CONTENT:
            self.content = True
        self.sink.emit(event)

    def flush(self) -> None:
        self.sink.flush()

    def tool_calls(self) -> list[ToolCall]:
        """The answer's tool calls, in order."""
        return [ToolCall(c["id"], c["name"], "".join(c["arguments"]), c["signature"])
                for _, c in sorted(self.calls.items())]


def add_usage(total: dict | None, usage: dict | None) -> dict | None:
    """The ``usage`` event that adds USAGE to TOTAL (either may be None):
    each count is the sum of those known, None when neither knows it."""
    if total is None or usage is None:
        return total or usage
    keys = ("input_tokens", "output_tokens", "total_tokens", "reasoning_tokens", "cached_tokens")
    sums = {k: (None if total.get(k) is None and usage.get(k) is None
                else (total.get(k) or 0) + (usage.get(k) or 0)) for k in keys}
    return protocol.usage(sums["input_tokens"], sums["output_tokens"], sums["total_tokens"],
                          reasoning_tokens=sums["reasoning_tokens"],
                          cached_tokens=sums["cached_tokens"])


@dataclass
class Loop:
    """Streams a request's answers, running their tool calls in between.

    Args:
        request: the filled-in request; each round of calls and results is
            appended to its conversation, in DIALECT's shape.  If it offers
            no tools, its history's tool turns go as text
            (:meth:`~chatpipe.dialects.base.Dialect.tool_turns_as_text`).
        dialect: the request's API dialect.
        sink: where the events go.
        toolbox: the tools; with none (or MAX_STEPS 0), tool calls are
            only shown, as before tools were run.
        max_steps: the most rounds of tool calls to run; an answer that
            calls tools after that many ends the request (``done`` with
            ``stopped: max_tool_steps``), its calls answered with errors.
        session, control: as for :func:`chatpipe.stream.run`.

    Attributes:
        turns: the neutral messages of the answers so far that are whole:
            each round (the answer with its calls, then a result per call),
            then the last answer once it completed (what ``--save`` keeps).
            An answer that calls tools keeps the ``thinking`` its dialect's
            ``done`` carries (:class:`~chatpipe.dialects.base.Done`).
        completed: True once the request completed (``done`` emitted).
        partial: True when an answer broke off after some content (not in
            TURNS).
    """

    request: Any
    dialect: Dialect
    sink: Sink
    toolbox: Toolbox | None = None
    max_steps: int = 10
    session: Any = None
    control: Control | None = None
    turns: list[dict] = field(default_factory=list)
    completed: bool = False
    partial: bool = False

    def run(self) -> None:
        """Run the request to its end (see the class docstring).

        Raises:
            StreamError, Cancelled, Aborted: as :func:`chatpipe.stream.run`
                (or while a tool ran); TURNS keeps what completed.
        """
        usage: dict | None = None
        rounds = first_index = 0
        number = 1
        self.dialect.tool_turns_as_text(self.request.body)
        try:
            while True:
                step = _Step(self.sink, number, first_index)
                stream.run(self.request, step, session=self.session, control=self.control)
                usage = add_usage(usage, step.usage)
                calls = step.tool_calls()
                text = "".join(step.text)
                if not calls or not self.toolbox or self.max_steps <= 0:
                    self.turns.append({"role": "assistant", "content": text})
                    return self._finish(step.done, usage, number)
                stopped = rounds >= self.max_steps
                results = [self._answer(call, stopped) for call in calls]
                answer = {"role": "assistant", "content": text,
                          "tool_calls": [c.neutral() for c in calls]}
                if getattr(step.done, "thinking", None):
                    answer["thinking"] = step.done.thinking
                round_ = [answer, *(r.message(c) for c, r in zip(calls, results))]
                self.turns.extend(round_)
                if stopped:
                    return self._finish(step.done, usage, number, "max_tool_steps")
                self.dialect.add_messages(self.request.body, round_)
                rounds += 1
                number += 1
                first_index += len(calls)
        except BaseException as err:
            self.partial = not self.completed and (step.content or bool(step.calls))
            if usage is not None and not self.completed and not isinstance(err, OutputClosed):
                with contextlib.suppress(Exception):
                    self.sink.emit(usage)  # what the completed answers used
            raise

    def _answer(self, call: ToolCall, stopped: bool) -> ToolResult:
        """Run CALL (or not, when STOPPED at the step limit); emit its
        ``tool_result`` event at once."""
        _check(self.control)
        if stopped:
            result = ToolResult("not run: chatpipe's limit of tool steps for one request "
                                f"(max_tool_steps {self.max_steps}) was reached", is_error=True)
        else:
            result = self.toolbox.answer(call, self.control)
        self.sink.emit(protocol.tool_result(call.id, call.name, result.content,
                                            result.is_error, result.denied))
        self.sink.flush()
        return result

    def _finish(self, done: dict | None, usage: dict | None, steps: int,
                stopped: str | None = None) -> None:
        """Emit the request's one ``usage`` and ``done``."""
        done = done or protocol.done(None)
        if usage is not None:
            self.sink.emit(usage)
        self.completed = True
        self.sink.emit(protocol.done(done.get("finish_reason"), done.get("raw_finish_reason"),
                                     steps=steps, stopped=stopped))
