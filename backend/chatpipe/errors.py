"""The exceptions chatpipe raises: a small tree, one base class.

Every error the user can cause or meet is a :class:`ChatpipeError`; the CLI
catches that class once, prints its message and exits with its ``exit_code``.
Anything else is a bug and is reported as one.
"""

from __future__ import annotations


#: HTTP statuses worth a retry (rate limits, overload, gateway trouble).
RETRYABLE_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504, 529})

#: HTTP statuses never retried, whatever the body says.
NEVER_RETRIED = frozenset({400, 401, 403, 404})


def http_status(value: object) -> int | None:
    """VALUE read as an HTTP status code, or None.

    Takes what an HTTP response or an error body gives: an ``int``
    (``500``) or a string of three digits (``"500"``, as some gateways
    write an error's ``code``), so that both mean the same.  Booleans,
    other strings and numbers outside 100-599 give None.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        text = value.strip()
        if not (len(text) == 3 and text.isascii() and text.isdigit()):
            return None
        value = int(text)
    if isinstance(value, int) and 100 <= value <= 599:
        return value
    return None


def retryable_status(value: object) -> bool:
    """Whether VALUE, an HTTP status as :func:`http_status` reads it (a
    number or a numeric string), is one worth a retry
    (:data:`RETRYABLE_STATUSES`)."""
    return http_status(value) in RETRYABLE_STATUSES


class ChatpipeError(Exception):
    """Base class of chatpipe's errors; ``str(err)`` is the message for the user.

    Attributes:
        exit_code: process exit status the CLI returns for this error.
        details: machine-readable fields for the ``error`` event, so that
            an editor can give its own hint: ``{"kind": "missing_env",
            "variable": NAME}``, ``{"kind": "placeholder", "placeholder":
            NAME}``, ``{"kind": "connect", "host": "HOST:PORT"}``; and
            ``hint``, what to do about the error in words, where chatpipe
            knows (the text output says it after the message).
    """

    exit_code = 1
    details: dict = {}


class UsageError(ChatpipeError):
    """A bad command line or bad input data (``--messages``, ``--var``); exit 2."""

    exit_code = 2


class TemplateError(ChatpipeError):
    """A template that cannot be found, parsed or filled in; exit 2.

    Args:
        message: what is wrong, in one sentence.
        path: the template file, when known.
        line, column: 1-based position of the problem in ``path``, when known.
    """

    exit_code = 2

    def __init__(self, message: str, path: str | None = None,
                 line: int | None = None, column: int | None = None,
                 details: dict | None = None) -> None:
        self.message = message
        self.path = path
        self.line = line
        self.column = column
        self.details = details or {}
        super().__init__(self.location() + message)

    def location(self) -> str:
        """Return the ``file:line:column: `` prefix (or ``file: ``), or ``""``."""
        if not self.path:
            return ""
        if self.line is None:
            return f"{self.path}: "
        return f"{self.path}:{self.line}:{self.column or 1}: "


class StreamError(ChatpipeError):
    """A request or stream that failed: HTTP error, dropped connection, timeout.

    Args:
        message: the provider's own message where there is one.
        status: the HTTP status code, only for HTTP errors.
        retryable: whether sending the same request again may succeed.
        retry_after: seconds the provider asked to wait before a retry
            (``Retry-After``, ``retry-after-ms``, Gemini's ``retryDelay``).
    """

    def __init__(self, message: str, *, status: int | None = None,
                 retryable: bool = False, retry_after: float | None = None,
                 details: dict | None = None) -> None:
        self.message = message
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after
        self.details = details or {}
        super().__init__(message)


class OutputClosed(ChatpipeError):
    """Standard output cannot be written any more: the reader went away (a
    closed pipe), the disk is full, or it was closed.  Nothing more can be
    told on it; the CLI says why on stderr (unless the pipe was simply
    closed) and exits 1.

    Args:
        reason: the OS error's text, e.g. "No space left on device".
        broken_pipe: True when the reader closed the pipe.
    """

    def __init__(self, reason: str, broken_pipe: bool = False) -> None:
        self.broken_pipe = broken_pipe
        super().__init__(f"cannot write the output: {reason}")


class Aborted(ChatpipeError):
    """The process got SIGINT or SIGTERM; ``exit_code`` is 128 + the signal number."""

    def __init__(self, signum: int) -> None:
        import signal

        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(f"aborted by {signal.Signals(signum).name}")


class Cancelled(ChatpipeError):
    """A stream cancelled by its client (``chatpipe serve``'s cancel request)."""

    def __init__(self) -> None:
        super().__init__("cancelled")
