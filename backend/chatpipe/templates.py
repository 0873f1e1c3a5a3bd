"""Request templates: a request.json plus one reserved ``chatpipe`` block.

A template is the JSON body of an API request exactly as the provider takes
it (what ``curl -d @request.json`` would send), with one extra top-level key,
``"chatpipe"``, that says where and how to send it::

    {
      "chatpipe": {
        "api": "openai-chat",
        "url": "https://api.openai.com/v1/chat/completions",
        "headers": {"Authorization": "Bearer ${env:OPENAI_API_KEY}"}
      },
      "model": "gpt-4o-mini",
      "stream": true,
      "messages": [{"role": "system", "content": "Be brief."}]
    }

The ``chatpipe`` block is removed before sending.  Placeholders:

- ``${env:NAME}``: the environment variable NAME; only in ``chatpipe.url`` and
  ``chatpipe.headers``, so that secrets never enter a request body or a saved
  chat.
- ``${name}``: filled with ``--var name=value``; anywhere in the block and the
  body, except in the conversation's own turns (messages whose role is not
  ``system`` or ``developer``), whose text is kept verbatim.
- ``$${`` stands for a literal ``${``.

A placeholder left unfilled is an error that names it.  Bare names resolve to
``NAME.json`` in the user's template folder first (:func:`user_dir`), then in
the bundled ``request-templates/`` (:func:`bundled_dir`).  The keys of the
``chatpipe`` block, their checks and defaults, are those of
:mod:`chatpipe.templatesettings`.
"""

from __future__ import annotations

import json
import os
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping
from urllib.parse import unquote, urlsplit

from chatpipe import jsonin, redaction, templatesettings
from chatpipe.errors import TemplateError
from chatpipe.templatesettings import RESERVED_KEY, RequestSettings

#: The default of ``chatpipe.max_event_bytes`` (:data:`chatpipe.templatesettings.SETTINGS`).
DEFAULT_MAX_EVENT_BYTES = templatesettings.BY_NAME["max_event_bytes"].default

#: What to do when the local model server's port refuses connections (see
#: :meth:`Template.is_local_server`): PORT is the endpoint's, WHERE the
#: chatpipe checkout that holds ``scripts/local-server``.
LOCAL_SERVER_HINT = ("the local model server is not running: start it with "
                     "`scripts/local-server serve --port {port}` in {where}, in a terminal "
                     "of its own (it keeps running until Ctrl-C)")

#: Roles whose message text may hold ``${name}`` placeholders.
_TEMPLATED_ROLES = frozenset({"system", "developer"})


class _Placeholders(string.Template):
    """``${name}`` and ``${env:NAME}`` placeholders; ``$${`` escapes.

    A lone ``$`` or ``$name`` is left alone, so prices and shell snippets in a
    prompt survive untouched.
    """

    pattern = r"""
    \$(?:
      (?P<escaped>\$(?=\{))                                 |
      \{(?P<braced>(?:env:)?[A-Za-z_][A-Za-z0-9_]*)\}        |
      (?P<named>(?!))                                       |
      (?P<invalid>(?!))
    )"""
    flags = 0


@dataclass
class Template:
    """A template file, parsed and checked, not yet filled in.

    Attributes:
        name: the template's name (file name without ``.json``).
        path: the file it was read from.
        source: ``"user"``, ``"bundled"`` or ``"file"`` (given as a path).
        block: the reserved ``chatpipe`` block.
        body: the request body (the document without the reserved block).
    """

    name: str
    path: Path
    source: str
    block: dict[str, Any]
    body: dict[str, Any]

    @property
    def api(self) -> str:
        """The API dialect name, default ``"openai-chat"``."""
        return templatesettings.value(self.block, "api")

    @property
    def url(self) -> str | None:
        """The endpoint URL as written (placeholders not filled), or None."""
        return templatesettings.value(self.block, "url")

    @property
    def description(self) -> str:
        """The template's one-line description, or ``""``."""
        return templatesettings.value(self.block, "description")

    def warnings(self) -> list[str]:
        """What is valid but probably not meant: for now, a request that
        does not ask for a stream (chatpipe then shows the answer whole,
        when it has all arrived: the dialect tells,
        :meth:`~chatpipe.dialects.base.Dialect.streaming_hint`)."""
        from chatpipe import dialects

        hint = dialects.get(self.api).streaming_hint(self.url, self.body)
        if hint is None:
            return []
        return [f"streaming is off, so the answer shows only once it is complete: {hint}"]

    def is_local_server(self) -> bool:
        """Whether this is the template of the local llama.cpp server that
        ``scripts/local-server`` runs: the template named ``local``, or one
        whose description names ``local-server`` (a copy of it).  The
        Emacs package tells it the same way."""
        return self.name == "local" or "local-server" in self.description

    def env_names(self) -> list[str]:
        """The environment variables of the ``${env:NAME}`` placeholders in
        the URL and headers, in order of appearance, each once."""
        texts = [self.block.get("url") or "", *self.block.get("headers", {}).values()]
        names: list[str] = []
        for text in texts:
            for ident in _Placeholders(text).get_identifiers():
                if ident.startswith("env:") and ident[4:] not in names:
                    names.append(ident[4:])
        return names

    def host(self) -> str | None:
        """The host name of the endpoint URL, e.g. ``"api.openai.com"``, or
        None when the URL has none or takes it from a placeholder.  Editors
        look API keys up under this host (Emacs: auth-source)."""
        head = re.match(r"[^/]*(//[^/?#]*)?", self.url or "").group(0)
        if "${" in head:
            return None
        try:
            return urlsplit(head).hostname or None
        except ValueError:
            return None


@dataclass(kw_only=True)
class Request(RequestSettings):
    """A filled-in template, ready to send: its endpoint and body, and the
    settings of :class:`~chatpipe.templatesettings.RequestSettings`
    (timeouts, retries, size limits; one field for each, defaults those of
    :data:`~chatpipe.templatesettings.SETTINGS`).  Fields are given by
    keyword.

    Attributes:
        url: endpoint URL.
        headers: HTTP headers (values may hold API keys: never print them).
        body: JSON request body.
        api: API dialect name.
        secrets: the secrets among the values filled from the environment
            and the URL's credentials (:func:`chatpipe.redaction.secrets`),
            to redact from any message shown to the user.
        refused_hint: what to do when the endpoint is on this machine and
            refuses the connection (for the local model server's template:
            how to start it); None for the general hint (see
            :func:`chatpipe.httperrors.connect_error`).
    """

    url: str
    headers: dict[str, str]
    body: dict[str, Any]
    api: str
    secrets: list[str] = field(default_factory=list)
    refused_hint: str | None = None


def user_dir() -> Path:
    """Return the user's template folder: ``<user config dir>/chatpipe/templates``.

    The config dir comes from platformdirs (``$XDG_CONFIG_HOME`` or
    ``~/.config`` on Linux).  The folder may not exist.
    """
    import platformdirs

    return Path(platformdirs.user_config_dir("chatpipe")) / "templates"


def bundled_dir() -> Path:
    """Return the folder of the templates shipped with chatpipe.

    In an installed wheel they sit inside the package; in a source checkout
    (editable install) they are the repository's ``request-templates/``.
    """
    here = Path(__file__).resolve().parent
    packaged = here / "request-templates"
    if packaged.is_dir():
        return packaged
    return here.parent.parent / "request-templates"


def looks_like_path(spec: str) -> bool:
    """Return True if SPEC names a file (has a slash or ends in ``.json``)."""
    return spec.endswith(".json") or os.sep in spec or "/" in spec


def resolve(spec: str) -> tuple[Path, str]:
    """Find the template file for SPEC, a path or a bare name.

    Returns:
        ``(path, source)`` where source is ``"file"``, ``"user"`` or ``"bundled"``.
    Raises:
        TemplateError: no such file, or no template of that name (the message
            lists the folders searched).
    """
    if looks_like_path(spec):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise TemplateError(f"no template file {spec}")
        return path, "file"
    for source, folder in (("user", user_dir()), ("bundled", bundled_dir())):
        path = folder / f"{spec}.json"
        if path.is_file():
            return path, source
    raise TemplateError(
        f"no template named {spec!r} in {user_dir()} or {bundled_dir()}; "
        "`chatpipe templates list` shows the known ones")


def position(text: str, offset: int) -> tuple[int, int]:
    """Return the 1-based ``(line, column)`` of character OFFSET in TEXT."""
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1) + 1


def _key_position(text: str, key: str, after: str | None = None) -> tuple[int | None, int | None]:
    """Best-effort position of the JSON key KEY (after key AFTER), for messages."""
    start = text.find(json.dumps(after)) if after else 0
    offset = text.find(json.dumps(key), max(start, 0))
    if offset < 0:
        return None, None
    return position(text, offset)


def parse_document(path: Path) -> tuple[dict[str, Any], str]:
    """Read and parse the JSON file PATH.

    Returns:
        ``(document, text)``: the parsed top-level object and the file's text.
    Raises:
        TemplateError: unreadable file, not UTF-8, invalid JSON (with its line
            and column) or a top level that is not an object.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise TemplateError(f"cannot read template: {err.strerror}", str(path)) from None
    except UnicodeDecodeError as err:
        line, column = position(path.read_bytes().decode("utf-8", "replace"), err.start)
        raise TemplateError("file is not valid UTF-8", str(path), line, column) from None
    try:
        doc = jsonin.loads(text)
    except json.JSONDecodeError as err:
        raise TemplateError(f"invalid JSON: {err.msg}", str(path), err.lineno, err.colno) from None
    if not isinstance(doc, dict):
        raise TemplateError("a template must be a JSON object", str(path), 1, 1)
    return doc, text


def load(spec: str) -> Template:
    """Resolve SPEC (see :func:`resolve`), parse and check the template.

    Raises:
        TemplateError: see :func:`resolve`, :func:`parse_document`, and a bad
            reserved block (unknown key, wrong type, unknown API dialect).
    """
    path, source = resolve(spec)
    return load_file(path, source)


def load_file(path: Path, source: str = "file") -> Template:
    """Parse and check the template file PATH; see :func:`load`."""
    doc, text = parse_document(path)
    block = doc.pop(RESERVED_KEY, None)
    where = str(path)
    if block is None:
        raise TemplateError(
            f'no "{RESERVED_KEY}" block: add {{"{RESERVED_KEY}": {{"url": ..., "api": ...}}}}',
            where, 1, 1)
    if not isinstance(block, dict):
        raise TemplateError(f'"{RESERVED_KEY}" must be an object',
                            where, *_key_position(text, RESERVED_KEY))
    for key, message in templatesettings.problems(block):  # the first problem, if any
        raise TemplateError(message, where, *_key_position(text, key, RESERVED_KEY))
    return Template(name=path.stem, path=path, source=source, block=block, body=doc)


def _fill(value: str, vars: Mapping[str, str], where: str, template: Template,
          env: Mapping[str, str] | None, secrets: list[str]) -> str:
    """Fill the placeholders of one string; see the module docstring."""
    tpl = _Placeholders(value)
    mapping = {}
    for ident in tpl.get_identifiers():
        if ident.startswith("env:"):
            name = ident[4:]
            if env is None:
                raise TemplateError(
                    f"${{{ident}}} in {where}: environment variables are only filled in "
                    f'"{RESERVED_KEY}.url" and "{RESERVED_KEY}.headers"', str(template.path))
            if not env.get(name):
                raise TemplateError(
                    f"environment variable {name} is not set; template {template.name!r} "
                    f"needs it for {where}: set it (export {name}=...)", str(template.path),
                    details={"kind": "missing_env", "variable": name})
            mapping[ident] = env[name]
            secrets.extend(redaction.secrets(env[name]))
        elif ident in vars:
            mapping[ident] = vars[ident]
        else:
            how = "--model NAME" if ident == "model" else f"--var {ident}=VALUE"
            raise TemplateError(f"placeholder ${{{ident}}} in {where} is not filled: "
                                f"pass {how}", str(template.path),
                                details={"kind": "placeholder", "placeholder": ident})
    return tpl.substitute(mapping)


def _userinfo(url: str) -> list[str]:
    """The secrets (:func:`chatpipe.redaction.secrets`) among the user name
    and password in URL (``http://user:pass@host``), as written and
    unquoted: credentials, never to be printed."""
    try:
        parts = urlsplit(url)
        written = [v for v in (parts.username, parts.password) if v]
    except ValueError:
        return []
    return [s for v in written + [unquote(v) for v in written] for s in redaction.secrets(v)]


def _walk(node: Any, fill, where: str) -> Any:
    if isinstance(node, str):
        return fill(node, where)
    if isinstance(node, list):
        return [_walk(item, fill, f"{where}[{i}]") for i, item in enumerate(node)]
    if isinstance(node, dict):
        return {k: _walk(v, fill, f"{where}.{k}" if where else k) for k, v in node.items()}
    return node


def fill(template: Template, vars: Mapping[str, str] | None = None,
         env: Mapping[str, str] | None = None, url: str | None = None) -> Request:
    """Fill in TEMPLATE's placeholders and return the :class:`Request` to send.

    Args:
        template: from :func:`load`.
        vars: values for ``${name}`` placeholders (``--var name=value``).
        env: the environment for ``${env:NAME}`` (default ``os.environ``).
        url: the endpoint URL to use instead of the template's (``--url``);
            the template itself is not changed.
    Raises:
        TemplateError: a placeholder with no value (names the ``--var`` or the
            environment variable to set), or no endpoint URL.
    """
    vars = dict(vars or {})
    env = os.environ if env is None else env
    secrets: list[str] = []

    def fill_block(value: str, where: str) -> str:
        return _fill(value, vars, where, template, env, secrets)

    def fill_body(value: str, where: str) -> str:
        return _fill(value, vars, where, template, None, secrets)

    block = _walk({**template.block, **({"url": url} if url else {})}, fill_block, RESERVED_KEY)
    body = {}
    for key, value in template.body.items():
        if key == "messages" and isinstance(value, list):
            body[key] = [
                _walk(m, fill_body, f"messages[{i}]")
                if isinstance(m, dict) and m.get("role") in _TEMPLATED_ROLES else m
                for i, m in enumerate(value)]
        else:
            body[key] = _walk(value, fill_body, key)
    if not block.get("url"):
        raise TemplateError(f'no endpoint: set "{RESERVED_KEY}.url" or pass --url',
                            str(template.path))
    secrets.extend(_userinfo(block["url"]))
    return Request(
        url=block["url"], headers=dict(templatesettings.value(block, "headers")), body=body,
        api=template.api, **templatesettings.request_values(block), secrets=secrets,
        refused_hint=_local_server_hint(block["url"]) if template.is_local_server() else None)


def _local_server_hint(url: str) -> str:
    """:data:`LOCAL_SERVER_HINT` for the endpoint URL: its port (default 80
    or 443), and the chatpipe checkout when this chatpipe runs from one
    (an installed package has no ``scripts/``)."""
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    except ValueError:
        port = 8080
    checkout = bundled_dir().parent
    where = (f"the chatpipe checkout ({checkout})" if (checkout / "scripts" / "local-server").is_file()
             else "a chatpipe checkout")
    return LOCAL_SERVER_HINT.format(port=port, where=where)


def iter_templates() -> Iterator[tuple[str, str, Path]]:
    """Yield ``(name, source, path)`` of every known template, by name.

    A user template hides a bundled one of the same name; only the one that
    :func:`resolve` would pick is yielded.
    """
    seen = {}
    for source, folder in (("user", user_dir()), ("bundled", bundled_dir())):
        if folder.is_dir():
            for path in sorted(folder.glob("*.json")):
                seen.setdefault(path.stem, (source, path))
    for name in sorted(seen):
        yield name, *seen[name]


def summary(name: str, source: str, path: Path) -> dict[str, Any]:
    """Describe one template for ``templates list --json`` and ``templates info``.

    This is all an editor needs to know of a template, so that it keeps no
    template parser or name resolution of its own.

    Returns:
        ``{"name", "source", "path", "api", "url", "model", "description",
        "env", "host"}``: ``source`` is ``"user"``, ``"bundled"`` or
        ``"file"``; ``url`` and ``model`` as written (placeholders not
        filled; ``model`` None for Gemini, whose model is in the URL);
        ``env`` the environment variables the template needs (its
        ``${env:NAME}`` placeholders); ``host`` the endpoint's host name,
        under which editors look API keys up, or None.  A broken file gives
        ``{"name", "source", "path", "error"}``, ``error`` the message with
        its ``file:line:column``.
    """
    entry: dict[str, Any] = {"name": name, "source": source, "path": str(path)}
    try:
        tpl = load_file(path, source)
    except TemplateError as err:
        entry["error"] = str(err)
        return entry
    entry.update(api=tpl.api, url=tpl.url, model=tpl.body.get("model"),
                 description=tpl.description, env=tpl.env_names(), host=tpl.host())
    return entry
