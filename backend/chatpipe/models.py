"""``chatpipe models TEMPLATE``: the models a template's endpoint offers.

Editors complete model names with it.  The list comes from the endpoint's
own model list, found from the template's URL and asked for with the
template's headers (so its API key, filled from ``${env:NAME}`` as for a
request):

Each API's dialect knows its list (:meth:`Dialect.models_request
<chatpipe.dialects.base.Dialect.models_request>`: its URL, headers and
first page; :meth:`~chatpipe.dialects.base.Dialect.parse_models`: a page's
models and the next page): OpenAI's ``GET {base}/models`` (the chat and
Responses dialects), Anthropic's and Gemini's paged lists, Ollama's
``/api/tags``; see each module of :mod:`chatpipe.dialects`.

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
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlsplit, urlunsplit

import requests

from chatpipe import __version__, connections, dialects, jsonin, protocol, reading, redaction, templates, transport
from chatpipe.dialects.modellist import file_name
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
        params: the query parameters of the first page (the dialect's).
    """

    api: str
    url: str
    headers: dict[str, str]
    timeout: tuple[float, float]
    secrets: list[str]
    refused_hint: str | None = None
    deadline: float = DEADLINE
    params: dict[str, str] = dataclasses.field(default_factory=dict)


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


def list_request(api: str, url: str, headers: dict[str, str],
                 ) -> tuple[str, dict[str, str], dict[str, str]]:
    """The model list's URL, headers and first page's query parameters for
    an endpoint URL of the dialect API, asked with HEADERS (see
    :meth:`chatpipe.dialects.base.Dialect.models_request`).

    Raises:
        StreamError: an URL whose model list cannot be told.
    """
    found = dialects.get(api).models_request(url, headers)
    parts = urlsplit(url)
    if found is None:
        raise StreamError(f"the endpoint {transport.host_of(url)} has no model list chatpipe knows "
                          f"of (its path {parts.path or '/'} is not one of the {api} API): "
                          "type the model name", details={"kind": "no_model_list"})
    return found


def list_url(api: str, url: str) -> str:
    """The model list's URL for an endpoint URL of the dialect API.

    Raises:
        StreamError: see :func:`list_request`.
    """
    return list_request(api, url, {})[0]


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
    try:
        where, headers, params = list_request(request.api, request.url, headers)
    except StreamError as err:
        raise StreamError(redaction.redact(err.message, request.secrets),
                          details=err.details) from None
    return Listing(api=request.api, url=where, headers=headers, secrets=request.secrets,
                   timeout=(request.connect_timeout, min(request.read_timeout, READ_TIMEOUT)),
                   deadline=min(request.deadline, DEADLINE), refused_hint=request.refused_hint,
                   params=params)


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


def fetch(listing: Listing, session: requests.Session | None = None) -> list[dict[str, Any]]:
    """Ask the endpoint for its models (every page); return them sorted by id.
    The whole list, every page included, takes at most ``listing.deadline``
    seconds.

    Raises:
        StreamError: see :func:`_page`; a JSON answer that is no model list.
    """
    deadline = transport.Deadline.after(
        listing.deadline, f"the model list from {transport.host_of(listing.url)}")
    dialect = dialects.get(listing.api)
    params: dict[str, str] | None = listing.params
    found: dict[str, dict[str, Any]] = {}
    own = session is None
    session = session or connections.new_session()
    try:
        for _ in range(MAX_PAGES):
            if params is None:
                break
            parsed = dialect.parse_models(_page(session, listing, params, deadline))
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
