"""The settings of a template's reserved ``chatpipe`` block, each defined once.

:data:`SETTINGS` is the one table of them: a setting's name, the kind of
value it takes (:class:`Kind`), its default and what it means.  Everything
else is derived from it: the check of a block (:func:`problems`, whose
messages name the key and say what it must be), the defaults
(:func:`value`), the fields that a filled-in request carries
(:class:`RequestSettings`, the base of :class:`chatpipe.templates.Request`)
and the values given to them (:func:`request_values`).  A new setting is
one more :class:`Setting` in :data:`SETTINGS`; a new kind of value one more
:class:`Kind`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Callable, Collection, Iterator, Mapping

#: The reserved top-level key of a template.
RESERVED_KEY = "chatpipe"


@dataclass(frozen=True)
class Kind:
    """A kind of setting value: which JSON values it takes.

    Attributes:
        type: the Python type a request holds it as (``float``, ``int``,
            ``str``, ``dict``); called on a value that :attr:`accepts`
            took, it gives that (``float(10)`` is ``10.0``, ``dict(d)`` a
            copy).
        accepts: whether a JSON value (as parsed) is one of this kind.
        must_be: what a value must be, for the error message
            (``"chatpipe.KEY" must be MUST_BE``).
    """

    type: type
    accepts: Callable[[Any], bool]
    must_be: str


def _number(value: Any, whole: bool = False) -> bool:
    """Whether VALUE is a JSON number (a whole one if WHOLE), not a boolean."""
    return not isinstance(value, bool) and isinstance(value, int if whole else (int, float))


TEXT = Kind(str, lambda v: isinstance(v, str), "a string")
HEADERS = Kind(dict, lambda v: isinstance(v, dict) and all(isinstance(x, str) for x in v.values()),
               "an object of strings")
SECONDS = Kind(float, lambda v: _number(v) and v > 0, "a positive number of seconds")
SECONDS_OR_ZERO = Kind(float, lambda v: _number(v) and v >= 0, "a number of seconds, 0 or more")
COUNT = Kind(int, lambda v: _number(v, whole=True) and v >= 0, "a whole number, 0 or more")
SIZE = Kind(int, lambda v: _number(v, whole=True) and v >= 1, "a whole number of bytes, 1 or more")
MIME_PATTERNS = Kind(list, lambda v: isinstance(v, list) and all(
    isinstance(x, str) and "/" in x for x in v), 'a list of MIME types or patterns ("image/*")')
EVENT_BYTES = Kind(int, lambda v: _number(v, whole=True) and v >= 1024,
                   "a whole number of bytes, 1024 or more")


@dataclass(frozen=True)
class Choices:
    """The values a text setting may take, known only when checked.

    Attributes:
        what: what a value is, for the message (``unknown WHAT "x"; known:
            a, b``).
        known: gives the allowed values, in the order the message lists them.
    """

    what: str
    known: Callable[[], Collection[str]]


def _dialects() -> Collection[str]:
    """The API dialect names (:data:`chatpipe.dialects.DIALECTS`), which
    :func:`chatpipe.dialects.register` may add to at run time."""
    from chatpipe.dialects import DIALECTS

    return DIALECTS


@dataclass(frozen=True)
class Setting:
    """One key of the ``chatpipe`` block.

    Attributes:
        name: the key.
        kind: the values it takes.
        default: its value when the block does not set it (read-only:
            a mapping is a ``MappingProxyType``).
        doc: what it means, one line.
        choices: the values it is limited to, checked after every key's
            kind (so that an unknown key or a wrong type is told first);
            None: any value of its kind.
        in_request: whether :class:`chatpipe.templates.Request` carries it
            as is (a field of :class:`RequestSettings`); the endpoint's
            settings (``api``, ``url``, ``headers``) are filled in by
            :func:`chatpipe.templates.fill` and ``description`` is the
            template's own.
    """

    name: str
    kind: Kind
    default: Any
    doc: str
    choices: Choices | None = None
    in_request: bool = True


#: Every setting of the ``chatpipe`` block, in the order that messages
#: list them.
SETTINGS: tuple[Setting, ...] = (
    Setting("api", TEXT, "openai-chat", 'API dialect of the endpoint, e.g. "openai-chat"',
            choices=Choices("API dialect", _dialects), in_request=False),
    Setting("url", TEXT, None, "endpoint URL", in_request=False),
    Setting("headers", HEADERS, MappingProxyType({}),
            "HTTP headers, an object of strings (values may hold API keys: never print them)",
            in_request=False),
    Setting("description", TEXT, "", "one line shown by `chatpipe templates list`", in_request=False),
    Setting("connect_timeout", SECONDS, 10.0, "seconds to wait for the TCP/TLS connection"),
    Setting("read_timeout", SECONDS, 120.0, "seconds to wait for the next bytes of the stream"),
    Setting("deadline", SECONDS, 1800.0, "seconds a whole answer may take, retries included"),
    Setting("max_retries", COUNT, 3, "how many times to retry a failed request, before any "
            "text arrived (0: never)"),
    Setting("retry_budget", SECONDS_OR_ZERO, 60.0,
            "seconds that failed attempts and the waits between retries may add up to"),
    Setting("max_event_bytes", EVENT_BYTES, 8 << 20,
            "largest server-sent event or NDJSON line accepted, in bytes"),
    Setting("max_tool_steps", COUNT, 10, "how many rounds of tool calls one request may run "
            "(0: none; see chatpipe.tools)"),
    Setting("max_tool_result_bytes", COUNT, 100_000, "largest tool result sent to the model, "
            "in bytes (longer ones are cut, and say so; 0: no limit)"),
    Setting("context_placement", TEXT, "system", 'where a request\'s context goes: "system" '
            '(after the system prompt) or "user" (before the last user message)',
            choices=Choices("context placement", lambda: ("system", "user"))),
    Setting("context_item_bytes", SIZE, 128 * 1024,
            "largest file or text of a request's context, in bytes"),
    Setting("context_total_bytes", SIZE, 384 * 1024,
            "most bytes of a request's context in all (the default, ~96k tokens, fits a "
            "128k-token model)"),
    Setting("media", MIME_PATTERNS, (), 'the types of images and documents the model takes, '
            'MIME patterns such as "image/*" and "application/pdf" (others are refused before '
            "sending; empty: not known, sent with a warning)"),
    Setting("media_downscale", COUNT, 0, "downscale images whose longer side is over this "
            "many pixels, or that are over the API's bytes per image, to this size (with a "
            "warning; 0: never, such an image is refused)"),
    Setting("media_pdf", TEXT, "refuse", 'what a PDF becomes for an API that takes no '
            'documents (Ollama): "refuse" (an error naming it) or "text" (its text, page by '
            "page, with a warning)", choices=Choices("PDF handling", lambda: ("refuse", "text"))),
)

#: :data:`SETTINGS` by name.
BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}


def value(block: Mapping[str, Any], name: str) -> Any:
    """The setting NAME of BLOCK (a checked ``chatpipe`` block) as written,
    or its default.  Raises KeyError if NAME is no setting."""
    return block.get(name, BY_NAME[name].default)


def request_values(block: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of :class:`RequestSettings` for BLOCK (a checked
    ``chatpipe`` block): each setting it carries, as written or its
    default, converted to its kind's type (seconds as float)."""
    return {s.name: s.kind.type(value(block, s.name)) for s in SETTINGS if s.in_request}


def problems(block: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """What is wrong with BLOCK, the ``chatpipe`` block as parsed.

    Yields ``(key, message)``, the key it is about and a message that
    names it: first each unknown key and each value of the wrong kind, in
    the block's order, then each value outside its setting's choices (e.g.
    an unknown API dialect).  Nothing for a valid block.
    """
    chosen = []
    for key, given in block.items():
        setting = BY_NAME.get(key)
        if setting is None:
            yield key, (f'unknown key "{key}" in "{RESERVED_KEY}"; known keys: '
                        + ", ".join(BY_NAME))
        elif not setting.kind.accepts(given):
            yield key, f'"{RESERVED_KEY}.{key}" must be {setting.kind.must_be}'
        elif setting.choices is not None:
            chosen.append((key, given, setting.choices))
    for key, given, choices in chosen:
        known = choices.known()
        if given not in known:
            yield key, f'unknown {choices.what} "{given}"; known: ' + ", ".join(known)


def _request_settings() -> type:
    """Make :class:`RequestSettings`: a keyword-only dataclass with a field
    for each setting that a request carries, its default the setting's."""
    fields = [(s.name, s.kind.type, dataclasses.field(default=s.default))
              for s in SETTINGS if s.in_request]
    doc = ("The settings a filled-in template's request carries (the base of "
           ":class:`chatpipe.templates.Request`), made from :data:`SETTINGS`.\n\n"
           "    Attributes:\n" + "".join(f"        {s.name}: {s.doc}.\n" for s in SETTINGS if s.in_request))
    return dataclasses.make_dataclass("RequestSettings", fields, kw_only=True,
                                      namespace={"__doc__": doc, "__module__": __name__})


RequestSettings = _request_settings()
