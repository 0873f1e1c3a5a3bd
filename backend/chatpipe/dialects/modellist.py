"""The entries of a model list (``chatpipe models``), shared by the
dialects' :meth:`~chatpipe.dialects.base.Dialect.parse_models`: each model
is ``{"id", "created"?, "owned_by"?, "display_name"?, "media"?}``."""

from __future__ import annotations

import datetime
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any


def unix_seconds(value: Any) -> int | None:
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


#: OpenRouter's input modalities (``architecture.input_modalities``) as
#: the MIME patterns of the media a model takes ("text" takes none).
MODALITIES = {"image": "image/*", "file": "application/pdf"}


def input_media(model: Any) -> list[str] | None:
    """The MIME patterns of the media that MODEL (an item of an OpenAI-shape
    model list) takes, when its list says: OpenRouter's
    ``architecture.input_modalities``
    (https://openrouter.ai/docs/api-reference/list-available-models),
    ``["text", "image", "file"]`` giving ``["image/*", "application/pdf"]``;
    None when it does not say."""
    architecture = model.get("architecture") if isinstance(model, dict) else None
    modalities = architecture.get("input_modalities") if isinstance(architecture, dict) else None
    if not isinstance(modalities, list):
        return None
    return [MODALITIES[m] for m in modalities if isinstance(m, str) and m in MODALITIES]


def model_entry(ident: Any, created: Any = None, owned_by: Any = None,
                display_name: Any = None, media: list[str] | None = None,
                context_window: Any = None) -> dict[str, Any] | None:
    """One model of a model list (``chatpipe models``), with the fields
    given; None without an id.  An id that is a file's path gets the
    file's name as its ``display_name`` if the endpoint gives none (see
    :func:`file_name`).  MEDIA, the MIME patterns of the media it takes
    when the list says (:func:`input_media`; ``[]``: none), is ``media``;
    CONTEXT_WINDOW, the most input tokens the model takes when the list
    says (a whole number above 0), is ``context_window``."""
    if not isinstance(ident, str) or not ident:
        return None
    entry: dict[str, Any] = {"id": ident}
    if unix_seconds(created) is not None:
        entry["created"] = unix_seconds(created)
    if isinstance(owned_by, str) and owned_by:
        entry["owned_by"] = owned_by
    if not (isinstance(display_name, str) and display_name):
        display_name = file_name(ident)
    if display_name:
        entry["display_name"] = display_name
    if media is not None:
        entry["media"] = list(media)
    if isinstance(context_window, int) and not isinstance(context_window, bool) and context_window > 0:
        entry["context_window"] = context_window
    return entry


def list_items(doc: Any, key: str) -> list[dict] | None:
    """The objects of the list DOC[KEY] of a model list page, or None when
    DOC is not an object with such a list."""
    items = doc.get(key) if isinstance(doc, dict) else None
    return [item for item in items if isinstance(item, dict)] if isinstance(items, list) else None
