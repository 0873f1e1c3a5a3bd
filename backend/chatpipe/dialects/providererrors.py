"""Provider error payloads, read in one place for HTTP error bodies and
in-stream errors alike: :func:`provider_error` and :func:`stream_error`."""

from __future__ import annotations

import json
from typing import Any

from chatpipe.errors import StreamError, retryable_status

#: ``error.type``, ``error.code`` or ``error.status`` values that mean
#: "try again later" (OpenAI, Anthropic, Gemini, Responses).
RETRYABLE_ERRORS = frozenset({
    "server_error", "rate_limit_exceeded", "rate_limit_error", "overloaded_error",
    "api_error", "timeout", "service_unavailable", "internal_server_error",
    "UNAVAILABLE", "RESOURCE_EXHAUSTED", "INTERNAL"})


def provider_error(payload: Any) -> tuple[str | None, bool]:
    """Read a provider's error PAYLOAD: return ``(message, retryable)``.

    Understands ``{"error": {"message", "type", "code", "status"}}``
    (OpenAI, Anthropic, Gemini, Responses), ``{"error": "text"}`` (Ollama,
    llama.cpp), a bare ``{"message", "code"}`` (a Responses ``error``
    event), ``{"message"}`` and ``{"detail"}`` bodies, and Gemini's array
    around an error.  MESSAGE is None when the payload has none; RETRYABLE
    says whether its type or code means "try again later": a name of
    :data:`RETRYABLE_ERRORS`, or a ``code`` or ``status`` that is a
    retryable HTTP status, as a number or a numeric string (``500``,
    ``"503"``; see :func:`chatpipe.errors.retryable_status`).
    """
    if isinstance(payload, list) and payload and isinstance(payload[0], dict):
        payload = payload[0]
    if not isinstance(payload, dict):
        return None, False
    err = payload.get("error")
    if isinstance(err, str):
        return err or None, False
    if not isinstance(err, dict):
        err = payload
    message = err.get("message") or payload.get("message") or payload.get("detail")
    if message is not None and not isinstance(message, str):
        message = json.dumps(message, ensure_ascii=False)
    kinds = {str(err.get(key)) for key in ("type", "code", "status")}
    retryable = bool(kinds & RETRYABLE_ERRORS) or any(
        retryable_status(err.get(key)) for key in ("code", "status"))
    return message or None, retryable


def stream_error(payload: Any, fallback: str = "the provider reported an error") -> StreamError:
    """A :class:`StreamError` for an error reported inside a stream.

    The message is the provider's (see :func:`provider_error`), else the
    error's type or code, else FALLBACK.
    """
    message, retryable = provider_error(payload)
    if not message:
        err = payload.get("error") if isinstance(payload, dict) else None
        err = err if isinstance(err, dict) else payload if isinstance(payload, dict) else {}
        message = str(err.get("type") or err.get("code") or fallback)
    return StreamError(message, retryable=retryable)
