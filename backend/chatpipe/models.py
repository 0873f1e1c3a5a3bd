"""``chatpipe models TEMPLATE``: the models a template's endpoint offers.

Editors complete model names with it.  The list comes from the endpoint's
own model list, found from the template's URL and asked for with the
template's headers (so its API key, filled from ``${env:NAME}`` as for a
request):

- ``openai-chat`` and ``openai-responses``: ``GET {base}/models``, where
  BASE is the URL without ``/chat/completions`` or ``/responses``
  (``https://api.openai.com/v1/chat/completions`` ->
  ``https://api.openai.com/v1/models``); ``{"object": "list", "data":
  [{"id", "object", "created", "owned_by"}]}``.  OpenAI's reference:
  https://developers.openai.com/api/reference/cli/resources/models/methods/list
  (https://platform.openai.com/docs/api-reference/models/list).
- ``anthropic-messages``: ``GET {base}/models`` (BASE: the URL without
  ``/messages``, ``https://api.anthropic.com/v1``) with ``x-api-key`` and
  ``anthropic-version``; ``{"data": [{"id", "created_at", "display_name",
  "type"}], "has_more", "first_id", "last_id"}``, pages of ``limit`` (at
  most 1000) continued with ``after_id=last_id``.  Reference:
  https://platform.claude.com/docs/en/api/models-list
- ``gemini``: ``GET https://HOST/VERSION/models`` (host and version of
  the template's URL) with ``x-goog-api-key``; ``{"models": [{"name":
  "models/ID", "displayName", "supportedGenerationMethods", ...}],
  "nextPageToken"}``, pages of ``pageSize`` (at most 1000) continued with
  ``pageToken``.  Names are listed without ``models/``; a model that gives
  its ``supportedGenerationMethods`` is listed only when they include
  ``streamGenerateContent`` or ``generateContent`` (the API lists
  ``generateContent`` for the models that stream, as Google's own example
  filters on it).  Reference: https://ai.google.dev/api/models#method:-models.list
  (https://ai.google.dev/api/rest/v1beta/models/list).
- ``ollama``: ``GET {host}/api/tags``; ``{"models": [{"name", "model",
  "modified_at", "size", "digest", "details"}]}``.  Reference:
  https://docs.ollama.com/api/tags

The result is a list of ``{"id", "created"?, "owned_by"?,
"display_name"?}`` sorted by id (``created`` in Unix seconds;
``display_name`` the provider's, or for an id that is a model file's path,
as llama.cpp's servers give, the file's name), cached for
an hour per endpoint in ``<user cache dir>/chatpipe/models/`` (see
:func:`cache_dir`).  Redirects are followed only on the same origin, so
that the key stays with its host; every message is redacted of the
template's secrets (:func:`chatpipe.redaction.redact`).
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Mapping
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import requests

from chatpipe import __version__, connections, jsonin, protocol, reading, redaction, templates, transport
from chatpipe.errors import StreamError
from chatpipe.textview import TextView

#: Seconds a cached list is used.
CACHE_SECONDS = 3600

#: The longest wait, in seconds, for the list's response (the template's
#: ``read_timeout`` is for answers, and may be minutes).
READ_TIMEOUT = 30.0

#: The longest time, in seconds, the whole list may take (connection,
#: headers, body, every page); the template's ``deadline`` if shorter.
DEADLINE = 60.0

#: Bytes of a model list read at most.
BODY_LIMIT = 16 << 20

#: Pages of a paginated list (Anthropic, Gemini) read at most.
MAX_PAGES = 50

#: HTTP statuses that mean "there is no model list here".
NO_LIST_STATUSES = frozenset({404, 405, 501})


@dataclasses.dataclass
class Listing:
    """Where and how to ask for a template's model list.

    Attributes:
        api: the template's API dialect.
        url: the model list's URL (may hold a key in its query: never print it).
        headers: HTTP headers (may hold keys: never print them).
        timeout: ``(connect, read)`` seconds.
        deadline: seconds the whole list may take, every page included.
        secrets: the values filled from the environment, to redact.
        refused_hint: the template's :attr:`~chatpipe.templates.Request.refused_hint`.
    """

    api: str
    url: str
    headers: dict[str, str]
    timeout: tuple[float, float]
    secrets: list[str]
    refused_hint: str | None = None
    deadline: float = DEADLINE


class JsonErrors(TextView):
    """The output of ``chatpipe models --json``: an error is written both
    as a protocol ``error`` line on stdout, for programs, and as a
    ``chatpipe: error: ...`` line on stderr, for people."""

    def write(self, event: dict) -> None:
        """Write EVENT; an error also as a JSON line on stdout."""
        if event["type"] == "error":
            protocol.write_out(self._out, protocol.encode_line(event) + "\n")
        super().write(event)


def output(as_json: bool) -> TextView:
    """The CLI output of ``chatpipe models`` (its errors): see :class:`JsonErrors`."""
    kind = JsonErrors if as_json else TextView
    return kind(sys.stdout.buffer, sys.stderr.buffer)


def _no_list(listing: Listing, why: str) -> StreamError:
    """The error for an endpoint without a model list (``kind``
    ``no_model_list``); WHY says what its GET answered."""
    parts = urlsplit(listing.url)
    where = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
    return StreamError(redaction.redact(
        f"the endpoint {transport.host_of(listing.url)} has no model list (GET {where} {why}): "
        "type the model name", listing.secrets), details={"kind": "no_model_list"})


def list_url(api: str, url: str) -> str:
    """The model list's URL for an endpoint URL of the dialect API.

    Raises:
        StreamError: an URL whose model list cannot be told.
    """
    parts = urlsplit(url)
    path = parts.path.rstrip("/")
    query = parts.query
    if api == "gemini":
        cut = path.find("/models/")
        if cut < 0 and path.endswith("/models"):
            cut = len(path) - len("/models")
        base, suffix = (path[:cut] if cut >= 0 else None), "/models"
        # A key given in the URL (?key=) goes on; ?alt=sse does not.
        query = urlencode([(k, v) for k, v in parse_qsl(query) if k == "key"])
    elif api == "ollama":
        cut = path.find("/api/")
        base, suffix = (path[:cut] if cut >= 0 else path), "/api/tags"
    else:
        ends = ("/messages",) if api == "anthropic-messages" else (
            "/chat/completions", "/responses", "/completions")
        base = next((path[:-len(end)] for end in ends if path.endswith(end)), None)
        suffix = "/models"
    if base is None:
        raise StreamError(f"the endpoint {transport.host_of(url)} has no model list chatpipe knows "
                          f"of (its path {parts.path or '/'} is not one of the {api} API): "
                          "type the model name", details={"kind": "no_model_list"})
    return urlunsplit((parts.scheme, parts.netloc, base + suffix, query, ""))


def listing(spec: str, *, url: str | None = None, variables: Mapping[str, str] | None = None,
            env: Mapping[str, str] | None = None) -> Listing:
    """The :class:`Listing` of template SPEC (a name or a file path).

    URL overrides the template's endpoint; VARIABLES fill ``${name}``
    placeholders of its ``chatpipe`` block; ENV is the environment for
    ``${env:NAME}`` (default ``os.environ``).  The request body is not
    filled: its placeholders (e.g. ``${model}``) do not matter here.

    Raises:
        TemplateError: see :func:`chatpipe.templates.load` and
            :func:`chatpipe.templates.fill`.
        StreamError: see :func:`list_url`.
    """
    template = templates.load(spec)
    if url:
        template.block["url"] = url
    request = templates.fill(dataclasses.replace(template, body={}), variables, env)
    headers = {"Accept": "application/json", "User-Agent": f"chatpipe/{__version__}",
               **request.headers}
    if request.api == "anthropic-messages" and not any(
            k.lower() == "anthropic-version" for k in headers):
        headers["anthropic-version"] = "2023-06-01"
    try:
        where = list_url(request.api, request.url)
    except StreamError as err:
        raise StreamError(redaction.redact(err.message, request.secrets),
                          details=err.details) from None
    return Listing(api=request.api, url=where, headers=headers, secrets=request.secrets,
                   timeout=(request.connect_timeout, min(request.read_timeout, READ_TIMEOUT)),
                   deadline=min(request.deadline, DEADLINE), refused_hint=request.refused_hint)


# ---- the request ---------------------------------------------------------------

def _page(session: requests.Session, listing: Listing, params: Mapping[str, str],
          deadline: transport.Deadline) -> Any:
    """One page of the list, parsed JSON, within DEADLINE.

    Raises:
        StreamError: see :func:`chatpipe.transport.get` (no connection, a
            timeout, the deadline passed, a redirect to another origin); an
            HTTP error (the provider's message, see
            :func:`chatpipe.httperrors.http_error`); no list here (404, an
            answer that is not JSON).
    """
    host = transport.host_of(listing.url)
    try:
        response = transport.get(session, listing.url, headers=listing.headers, params=params,
                                 timeout=listing.timeout, deadline=deadline,
                                 refused_hint=listing.refused_hint)
    except StreamError as err:
        if err.status in NO_LIST_STATUSES:
            raise _no_list(listing, f"answered HTTP {err.status}") from None
        if err.status is not None:
            raise StreamError(redaction.redact(err.message, listing.secrets),
                              status=err.status) from None
        raise
    try:
        status = response.status_code
        raw = reading.read_body(response, BODY_LIMIT, listing.timeout[1], deadline,
                                what=f"the model list from {host} ended early")
    finally:
        response.close()
    if len(raw) > BODY_LIMIT:
        raise StreamError(f"the model list is larger than {BODY_LIMIT >> 20} MiB")
    try:
        return jsonin.loads(raw)
    except (ValueError, UnicodeDecodeError):
        text = raw.decode("utf-8", "replace").lstrip()
        what = "an HTML page" if text.startswith("<") else "no body" if not text else "no JSON"
        raise _no_list(listing, f"answered HTTP {status} with {what}") from None


def _unix(value: Any) -> int | None:
    """VALUE (Unix seconds, or an RFC 3339 date) as whole Unix seconds, or None."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, str):
        try:
            when = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=datetime.timezone.utc)
        return int(when.timestamp())
    return None


#: The suffixes of model files, whose relative paths are told from names
#: such as ``meta-llama/Llama-3.1-8B``.
MODEL_FILE_SUFFIXES = (".gguf", ".ggml", ".bin", ".safetensors")


def file_name(ident: str) -> str | None:
    """The file name in the model id IDENT if IDENT is a path in a file
    system (llama.cpp's servers give the path of the model file they serve
    as its id): an absolute path (POSIX or Windows), one that starts with
    ``./``, ``../`` or ``~/``, or a relative path to a model file
    (:data:`MODEL_FILE_SUFFIXES`).  None for any other id (a name, or a
    name with a slash such as ``openai/gpt-4o``)."""
    windows = PureWindowsPath(ident)
    if not (ident.startswith(("/", "./", "../", "~/")) or (windows.drive and windows.root)
            or (("/" in ident or "\\" in ident) and ident.lower().endswith(MODEL_FILE_SUFFIXES))):
        return None
    return (windows if "\\" in ident else PurePosixPath(ident)).name or None


def _entry(ident: Any, created: Any = None, owned_by: Any = None,
           display_name: Any = None) -> dict[str, Any] | None:
    """One model of the result, with the fields given; None without an id.
    An id that is a file's path gets the file's name as its
    ``display_name`` if the endpoint gives none (see :func:`file_name`)."""
    if not isinstance(ident, str) or not ident:
        return None
    entry: dict[str, Any] = {"id": ident}
    if _unix(created) is not None:
        entry["created"] = _unix(created)
    if isinstance(owned_by, str) and owned_by:
        entry["owned_by"] = owned_by
    if not (isinstance(display_name, str) and display_name):
        display_name = file_name(ident)
    if display_name:
        entry["display_name"] = display_name
    return entry


def _streams(model: dict) -> bool:
    """Whether a Gemini MODEL can answer ``streamGenerateContent``."""
    methods = model.get("supportedGenerationMethods")
    if not isinstance(methods, list):
        return True
    return "streamGenerateContent" in methods or "generateContent" in methods


def _gemini_id(model: dict) -> str | None:
    """A Gemini MODEL's id: its name without ``models/``."""
    name = model.get("name")
    return name.removeprefix("models/") if isinstance(name, str) else None


def _parse(api: str, doc: Any) -> tuple[list[dict[str, Any]], dict[str, str] | None] | None:
    """The models of one page DOC, and the parameters of the next page (or
    None); None if DOC is not a model list of the API's shape."""
    if not isinstance(doc, dict):
        return None
    key = {"gemini": "models", "ollama": "models"}.get(api, "data")
    items = doc.get(key)
    if not isinstance(items, list):
        return None
    items = [item for item in items if isinstance(item, dict)]
    following = None
    if api == "gemini":
        models = [_entry(_gemini_id(m), display_name=m.get("displayName"))
                  for m in items if _streams(m)]
        token = doc.get("nextPageToken")
        following = {"pageSize": "1000", "pageToken": token} if isinstance(token, str) and token else None
    elif api == "ollama":
        models = [_entry(m.get("name") or m.get("model")) for m in items]
    elif api == "anthropic-messages":
        models = [_entry(m.get("id"), m.get("created_at"), display_name=m.get("display_name"))
                  for m in items]
        last = doc.get("last_id")
        following = ({"limit": "1000", "after_id": last}
                     if doc.get("has_more") is True and isinstance(last, str) and last else None)
    else:
        models = [_entry(m.get("id"), m.get("created"), m.get("owned_by")) for m in items]
    return [m for m in models if m is not None], following


def fetch(listing: Listing, session: requests.Session | None = None) -> list[dict[str, Any]]:
    """Ask the endpoint for its models (every page); return them sorted by id.
    The whole list, every page included, takes at most ``listing.deadline``
    seconds.

    Raises:
        StreamError: see :func:`_page`; a JSON answer that is no model list.
    """
    deadline = transport.Deadline.after(
        listing.deadline, f"the model list from {transport.host_of(listing.url)}")
    first = {"gemini": {"pageSize": "1000"}, "anthropic-messages": {"limit": "1000"}}
    params: dict[str, str] | None = first.get(listing.api, {})
    found: dict[str, dict[str, Any]] = {}
    own = session is None
    session = session or connections.new_session()
    try:
        for _ in range(MAX_PAGES):
            if params is None:
                break
            parsed = _parse(listing.api, _page(session, listing, params, deadline))
            if parsed is None:
                raise _no_list(listing, "answered with JSON that is not a model list")
            models, params = parsed
            for model in models:
                found.setdefault(model["id"], model)
    finally:
        if own:
            session.close()
    return [found[ident] for ident in sorted(found)]


# ---- the cache ------------------------------------------------------------------

def cache_dir() -> Path:
    """The folder of the cached lists: ``<user cache dir>/chatpipe/models``
    (``$XDG_CACHE_HOME`` or ``~/.cache`` on Linux)."""
    import platformdirs

    return Path(platformdirs.user_cache_dir("chatpipe")) / "models"


def cache_file(listing: Listing) -> Path:
    """The cache file of LISTING's endpoint: named by a hash of its dialect
    and list URL, so that no part of the URL (nor a key in it) is in the name."""
    digest = hashlib.sha256(f"{listing.api}\n{listing.url}".encode()).hexdigest()[:32]
    return cache_dir() / f"list-{digest}.json"


def read_cache(listing: Listing, now: float | None = None) -> list[dict[str, Any]] | None:
    """The cached list of LISTING's endpoint if younger than
    :data:`CACHE_SECONDS`, else None."""
    now = time.time() if now is None else now
    try:
        doc = json.loads(cache_file(listing).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    fetched, models = (doc.get("fetched"), doc.get("models")) if isinstance(doc, dict) else (None, None)
    if not isinstance(fetched, (int, float)) or not 0 <= now - fetched < CACHE_SECONDS:
        return None
    if not isinstance(models, list) or not all(
            isinstance(m, dict) and isinstance(m.get("id"), str) for m in models):
        return None
    return models


def write_cache(listing: Listing, models: list[dict[str, Any]]) -> None:
    """Cache MODELS for LISTING's endpoint (atomically; silently not at all
    if the folder cannot be written).  Nothing secret is stored."""
    doc = {"fetched": time.time(), "api": listing.api,
           "url": redaction.redact(listing.url, listing.secrets), "models": models}
    text = redaction.redact(json.dumps(doc, ensure_ascii=False, indent=1), listing.secrets)
    path = cache_file(listing)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".list-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(text)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError:
        pass


def models(listing: Listing, refresh: bool = False) -> list[dict[str, Any]]:
    """The models of LISTING's endpoint: cached (unless REFRESH) or fetched
    and cached.

    Raises:
        StreamError: see :func:`fetch`.
    """
    cached = None if refresh else read_cache(listing)
    if cached is not None:
        return cached
    found = fetch(listing)
    write_cache(listing, found)
    return found


def _line(model: dict[str, Any]) -> str:
    """MODEL's line in the text listing: its id; for an id that is a file's
    path, the file's name, then the id (what the endpoint takes) in
    parentheses."""
    name = file_name(model["id"])
    return f"{name}  ({model['id']})" if name else model["id"]


def command(spec: str, *, url: str | None, variables: Mapping[str, str], as_json: bool,
            refresh: bool, output: protocol.Output) -> int:
    """Run ``chatpipe models``: print SPEC's models (one id a line, a
    model file's as its name and the id, see :func:`_line`; or a JSON array
    with AS_JSON) on stdout; return the exit code.

    The template's secrets are added to ``output.secrets`` before anything
    is sent, so that the CLI redacts them from any error it reports.

    Raises:
        TemplateError, StreamError: see :func:`listing` and :func:`models`.
    """
    where = listing(spec, url=url, variables=variables)
    output.secrets.extend(where.secrets)
    found = models(where, refresh)
    if as_json:
        text = json.dumps(found, ensure_ascii=False, indent=1) + "\n"
    else:
        text = "".join(protocol.plain(_line(m)).replace("\n", " ") + "\n" for m in found)
        if not found:
            sys.stderr.write("chatpipe: the endpoint lists no models\n")
    protocol.write_out(sys.stdout.buffer, redaction.redact(text, where.secrets))
    return 0
