"""One way to run a request, whatever its front end.

``chatpipe send`` and ``chatpipe serve`` differ only in where a request
comes from (the command line, or a JSON line on stdin), in the
:class:`~chatpipe.protocol.Output` its events go to (whether they carry
the request ``id``), and in how tool calls are confirmed and client tools
run (their :class:`~chatpipe.tools.Asker`).  Both call :func:`run`, which
builds the request, streams its answers and runs their tool calls
(:class:`chatpipe.tools.Loop`, over :mod:`chatpipe.stream`), saves the
answers when asked, and is the one place where an exception becomes an
``error`` event and an exit code (:func:`error_for`).
"""

from __future__ import annotations

import os
import re
import sys
import traceback
from typing import Any, Callable

import requests

from chatpipe import (connections, conversation, dialects, protocol, redaction, rewrite,
                      templates, tools)
from chatpipe.errors import Aborted, Cancelled, ChatpipeError, OutputClosed, StreamError
from chatpipe.prepare import prepare
from chatpipe.pricing import Priced
from chatpipe.protocol import Output
from chatpipe.requestfields import Job


def error_for(err: BaseException) -> tuple[dict, int]:
    """Return the ``error`` event and the exit code for the exception ERR.

    The one mapping from exceptions to errors: a :class:`StreamError`
    keeps its HTTP status and retryability; :class:`Aborted` (a signal) and
    :class:`Cancelled` are ``aborted``; any other :class:`ChatpipeError`
    gives its message and exit code; an error's ``details`` (``kind`` and
    its fields) are added to the event; anything else is a bug, reported in
    one line as an internal error (exit 1).
    """
    if isinstance(err, StreamError):
        return protocol.error(err.message, err.status, err.retryable,
                              **err.details), err.exit_code
    if isinstance(err, (Aborted, Cancelled)):
        return protocol.error(str(err), aborted=True), err.exit_code
    if isinstance(err, ChatpipeError):
        return protocol.error(str(err), **err.details), err.exit_code
    return protocol.error(f"internal error: {type(err).__name__}: {err} "
                          "(set CHATPIPE_DEBUG=1 for the traceback)"), 1


def report(err: BaseException, output: Output) -> int:
    """Emit the ``error`` event for ERR to OUTPUT; return the exit code.

    With ``CHATPIPE_DEBUG`` set, a bug's traceback goes to stderr, redacted.
    """
    if not isinstance(err, ChatpipeError) and os.environ.get("CHATPIPE_DEBUG"):
        sys.stderr.write(redaction.redact(traceback.format_exc(), output.secrets))
    event, code = error_for(err)
    output.emit(event)
    return code


def run(build: Callable[[], Job], output: Output, *,
        sessions: Callable[[str], requests.Session] | None = None,
        control: connections.Control | None = None, asker: tools.Asker | None = None,
        mcp: Any = None) -> int:
    """Build a job, send it and emit its events to OUTPUT; return the exit code.

    When the job has tools, the answers' tool calls are run and the model
    answers again (see :class:`chatpipe.tools.Loop`), all in this one
    stream with one terminal event.

    Args:
        build: returns the :class:`Job`; it may raise a
            :class:`~chatpipe.errors.UsageError` for a bad request, which is
            reported like any other error.
        output: where the events go; the request's secrets (the values
            filled from the environment) are added to its ``secrets``
            before anything is sent.
        sessions: gives the shared ``requests.Session`` for an endpoint URL
            (``serve``); by default each request has a session of its own.
        control: lets another thread cancel the stream: it only trips
            CONTROL, and this thread ends the stream with the aborted
            ``error`` (:func:`error_for`), whatever the cut-off read raised.
        asker: the front end's way to confirm tool calls and run client tools.
        mcp: the :class:`chatpipe.mcp_host.McpHost` of the job's MCP
            servers (None: MCP servers cannot be used).
    Returns:
        0 when the stream completed; else the exit code of
        :func:`error_for`.  Every failure, from reading the request to the
        end of the stream, ends the stream with one ``error`` event.
    Raises:
        OutputClosed: OUTPUT cannot be written any more.
    """
    try:
        job = build()
        messages = rewrite.messages(job.rewrite, job.messages) if job.rewrite else job.messages
        template, request, dialect = prepare(job.template, messages,
                                             variables=job.variables, model=job.model,
                                             url=job.url, env=job.environment(),
                                             params=job.params(), context_items=job.context,
                                             placement=job.context_placement,
                                             warn=output.emit,
                                             read_resource=_resource_reader(mcp, output))
        if job.save:
            conversation.check_writable(template.path)
        output.secrets.extend(request.secrets)
        toolbox = tools.toolbox(job.tools, job.mcp, asker, mcp, output.emit, output.secrets,
                                request.max_tool_result_bytes)
        if control is not None and control.cancelled.is_set():
            raise Cancelled()
    except OutputClosed:
        raise
    except Exception as err:
        return report(_cancelled(err, control), output)
    if toolbox:
        dialect.add_tools(request.body, toolbox.definitions())
    if job.dry_run:
        output.emit(protocol.request(request.url, _elided(request.body)))
        output.emit(protocol.done(None, dry_run=True))
        output.flush()
        return 0
    sink: protocol.Sink = output if control is None else _Stoppable(output, control)
    hygiene = rewrite.Hygiene(sink, job.rewrite["text"]) if job.rewrite else None
    sink = hygiene or sink
    if job.price:
        sink = Priced(sink, dialect.model_of(request), [request.url, template.url or ""])
    session = sessions(request.url) if sessions is not None else None
    steps = request.max_tool_steps if job.max_tool_steps is None else job.max_tool_steps
    loop = tools.Loop(request, dialect, sink, toolbox, steps, session, control)
    try:
        with connections.controlled_by(control):
            loop.run()
        code = 0
    except OutputClosed:
        raise
    except Exception as err:
        if hygiene:
            hygiene.release()
        code = report(_cancelled(err, control), output)
    finally:
        output.flush()
    if job.save:
        code = _save(template.path, dialect, job.messages, loop, output.secrets,
                     job.save_media) or code
    return code


def _resource_reader(mcp: Any, output: Output) -> Callable[[str, str], str] | None:
    """How a request reads its context's MCP resources: through MCP (a
    :class:`chatpipe.mcp_host.McpHost`), the servers' secrets added to
    OUTPUT's; None without one."""
    if mcp is None:
        return None
    return lambda server, uri: mcp.read_resource(server, uri, output.secrets)


class _Stoppable:
    """SINK, whose :meth:`flush` (called before each read from the server)
    raises :class:`Cancelled` once CONTROL is cancelled: a cancelled
    stream stops at its next read, even when the rest of the answer is
    already in the socket's buffer, and its thread ends it."""

    def __init__(self, sink: protocol.Sink, control: connections.Control) -> None:
        self.emit = sink.emit
        self._flush = sink.flush
        self._cancelled = control.cancelled

    def flush(self) -> None:
        self._flush()
        if self._cancelled.is_set():
            raise Cancelled()


def _cancelled(err: Exception, control: connections.Control | None) -> Exception:
    """ERR, or :class:`Cancelled` when CONTROL was cancelled: what a read
    cut off by the cancel raised (a dropped connection, a stream ended
    early) is the cancel."""
    if control is not None and control.cancelled.is_set() and not isinstance(err, Aborted):
        return Cancelled()
    return err


def preconnect(build: Callable[[], Job],
               sessions: Callable[[str], requests.Session]) -> bool:
    """Get the request path ready for the job BUILD gives, ahead of its
    first request: its template loaded and filled, its API's dialect
    loaded (the first use of a dialect imports its module: ~2 ms), and a
    connection to its endpoint opened in the session SESSIONS gives for it
    (see :func:`chatpipe.connections.preconnect`), so that the first answer
    comes as fast as the next ones.  Nothing is sent and nothing is
    written; any error is left for the real request to report.  Returns
    True if a connection was opened."""
    try:
        job = build()
        template = templates.load(job.template)
        request = templates.fill(template, job.variables, job.environment(), url=job.url)
        dialects.get(request.api)
    except Exception:
        return False
    return connections.preconnect(sessions(request.url), request.url, request.connect_timeout)


def _save(path, dialect, messages: list[dict], loop: tools.Loop, secrets: list[str],
          save_media: str = "path") -> int:
    """Save the new MESSAGES and the answers that are whole to PATH: each
    round of tool calls with its results, then the last answer if it
    completed (LOOP's ``turns``), redacted; media parts as references to
    their files, or with their data when SAVE_MEDIA is ``"inline"`` (see
    :func:`chatpipe.conversation.append_messages`).

    An answer that did not complete (an error, a cancel, a signal, during
    the answer or while its tools ran) is not saved, so the next request
    never sends it back as if it were whole; the question is, so the next
    ``send --save`` without a message asks it again.  Returns 1 if saving
    failed (said on stderr), else 0; the stream's own terminal event has
    already been written either way.
    """
    turns = redaction.redact_value(loop.turns, secrets)
    try:
        if messages or turns:
            conversation.append_messages(path, dialect, messages + turns, save_media)
    except (OSError, ChatpipeError) as err:
        message = getattr(err, "strerror", None) or str(err)
        _warn(f"cannot save the answer to {path}: {message}", secrets)
        return 1
    if loop.partial:
        _warn(f"the answer did not complete, so it was not saved to {path} (the question "
              "was: `chatpipe send FILE --save` without a message asks it again)", secrets)
    return 0


#: Strings longer than this that look like base64 are elided in a dry run.
ELIDE_BASE64 = 256


def _elided(value: Any) -> Any:
    """VALUE (a request body) with each long base64 string (media data,
    including ``data:...;base64,`` URLs) replaced by a note of its size."""
    if isinstance(value, str):
        head, sep, data = value.partition(";base64,")
        data = data if sep and head.startswith("data:") else value
        if len(data) > ELIDE_BASE64 and _BASE64.fullmatch(data):
            return f"{head + sep if sep else ''}<{len(data)} base64 characters elided>"
        return value
    if isinstance(value, list):
        return [_elided(v) for v in value]
    if isinstance(value, dict):
        return {k: _elided(v) for k, v in value.items()}
    return value


_BASE64 = re.compile(r"[A-Za-z0-9+/\n]+={0,2}")


def _warn(text: str, secrets: list[str]) -> None:
    """Say TEXT on stderr as ``chatpipe: TEXT``, redacted."""
    try:
        sys.stderr.write(protocol.plain(redaction.redact(f"chatpipe: {text}", secrets)) + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
