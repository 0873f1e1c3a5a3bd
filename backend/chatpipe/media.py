"""Media (images and documents) of chat messages: read, typed and checked.

A user message's ``content`` may be a list of parts (docs/protocol.md,
"Images and documents"): ``{"type": "text", "text"}``, and ``{"type":
"image"}`` or ``{"type": "document"}`` with one of ``path`` (a local
file), ``url`` (http or https) or ``data`` (base64), and optionally
``mime_type`` and ``filename``.  Such a media part stays in this neutral
shape in a conversation (a template's, a saved chat's) until a request is
built: then :func:`load` reads it and each dialect turns it into its API's
own shape (:mod:`chatpipe.dialects.mediaparts`).

The MIME type comes from the bytes (their magic numbers, by ``filetype``),
the file name's extension only when the bytes tell nothing; when the two
disagree the bytes win and the caller gets a warning.  Files are data:
nothing in one is run or chooses where anything goes.
"""

from __future__ import annotations

import base64
import binascii
import mimetypes
import os
import re
from dataclasses import dataclass
from typing import Any, Callable

import filetype

from chatpipe.errors import UsageError
from chatpipe.userfiles import NotRegular, read_at_most

#: Part types that carry media.
KINDS = ("image", "document")

#: The most bytes a media file may have before any API's limit is looked
#: at: bigger files are refused unread (no API takes more than 50 MB).
MAX_FILE_BYTES = 64 << 20

#: The bytes read to tell a file's type (what ``filetype`` needs).
SNIFF_BYTES = 8192


class MediaError(UsageError):
    """A media part that cannot be sent: unreadable, of an unknown type, or
    over a limit; the message names the file (exit 2)."""


@dataclass
class Media:
    """One media part, read.

    Attributes:
        kind: ``"image"`` or ``"document"``.
        mime_type: its MIME type (``image/png``).
        name: how messages name it: the path, the URL, or ``filename``.
        filename: the file name the API is told (documents), never a path.
        data: its bytes, or None for a URL that is sent as a URL.
        url: the http(s) URL it was given as, or None.
    """

    kind: str
    mime_type: str
    name: str
    filename: str
    data: bytes | None = None
    url: str | None = None

    def base64(self) -> str:
        """Its bytes as standard base64 (no line breaks)."""
        return base64.b64encode(self.data or b"").decode("ascii")

    def data_url(self) -> str:
        """Its bytes as a ``data:MIME;base64,...`` URL."""
        return f"data:{self.mime_type};base64,{self.base64()}"

    def size(self) -> int:
        """Its size in bytes (0 for a URL)."""
        return len(self.data or b"")


def is_media(part: Any) -> bool:
    """Whether PART is a neutral media part (``type`` image or document,
    with a ``path``, ``url`` or ``data`` if it is well made), not an API's
    own block (Anthropic's ``image`` and ``document`` blocks have a
    ``source``)."""
    return isinstance(part, dict) and part.get("type") in KINDS and "source" not in part


def sniff(head: bytes) -> str | None:
    """The MIME type that the first bytes HEAD of a file show, or None."""
    kind = filetype.guess(head)
    return kind.mime if kind is not None else None


def by_name(name: str) -> str | None:
    """The MIME type that the extension of the file NAME says, or None."""
    return mimetypes.guess_type(name, strict=False)[0]


def kind_of(mime_type: str) -> str:
    """``"image"`` for an ``image/*`` MIME_TYPE, else ``"document"``."""
    return "image" if mime_type.startswith("image/") else "document"


def typed(name: str, head: bytes | None, given: str | None,
          warn: Callable[[str], None]) -> str:
    """The MIME type of the media NAME whose first bytes are HEAD (None: a
    URL, unread), GIVEN (a part's ``mime_type``, ``--at``) or None.

    The bytes win; then GIVEN; then NAME's extension.  WARN gets a message
    when the bytes disagree with GIVEN or with the extension.

    Raises:
        MediaError: no type can be told.
    """
    sniffed = sniff(head) if head else None
    claimed = given or by_name(name)
    if sniffed and claimed and claimed != sniffed:
        said = "its mime_type" if given else "its name"
        warn(f"{name}: its bytes are {sniffed} but {said} says {claimed}; sent as {sniffed}")
    found = sniffed or claimed
    if not found:
        raise MediaError(f"{name}: cannot tell its type from its bytes or its name; "
                         "give its mime_type (send: --at MIME for stdin)")
    return found


def _read(path: str) -> bytes:
    """The bytes of the file PATH, at most :data:`MAX_FILE_BYTES`.

    Raises:
        MediaError: missing, unreadable, not a regular file, or too big.
    """
    try:
        data = read_at_most(path, MAX_FILE_BYTES)
    except FileNotFoundError:
        raise MediaError(f"{path}: no such file") from None
    except NotRegular:
        raise MediaError(f"{path}: not a regular file") from None
    except OSError as err:
        raise MediaError(f"{path}: {err.strerror or err}") from None
    if len(data) > MAX_FILE_BYTES:
        raise MediaError(f"{path}: over {MAX_FILE_BYTES >> 20} MB, more than any API takes")
    return data


def decode(data: Any, name: str) -> bytes:
    """The bytes of the base64 text DATA (of the part NAME).

    Raises:
        MediaError: DATA is not a base64 string.
    """
    if not isinstance(data, str):
        raise MediaError(f"{name}: \"data\" must be a base64 string")
    try:
        return base64.b64decode(re.sub(r"\s+", "", data), validate=True)
    except (binascii.Error, ValueError):
        raise MediaError(f"{name}: \"data\" is not valid base64") from None


def load(part: dict, *, cwd: str, warn: Callable[[str], None], from_file: bool = False) -> Media:
    """Read the neutral media PART (see the module docstring).

    A relative ``path`` is taken from CWD (``~`` expanded); a ``url`` must be
    http or https and is not fetched; ``data`` is base64.  WARN gets the
    warnings (a type mismatch).  FROM_FILE: the part was written in a file
    (a template's or a saved chat's conversation), which is data: a file
    it names is read only if its bytes are an image or a PDF, whatever its
    ``mime_type`` or name says (so a shared chat cannot send a key file as
    "text/plain").

    Raises:
        MediaError: not exactly one of path, url and data; a missing or
            unreadable file; bad base64; an unknown type; a part whose
            ``type`` says image but whose bytes are no image; with
            FROM_FILE, a file whose bytes are neither an image nor a PDF.
    """
    sources = [k for k in ("path", "url", "data") if part.get(k) is not None]
    if len(sources) != 1:
        kind = f"{'an' if part.get('type') == 'image' else 'a'} {part.get('type')} part"
        raise MediaError(f"{kind} needs one of \"path\", \"url\" or \"data\" "
                         f"(it has {', '.join(sources) or 'none'})")
    given = part.get("mime_type")
    if given is not None and not (isinstance(given, str) and "/" in given):
        raise MediaError(f"\"mime_type\" must be a MIME type such as image/png, not {given!r}")
    filename = part.get("filename")
    if filename is not None and not isinstance(filename, str):
        raise MediaError("\"filename\" must be a string")
    if "path" in sources:
        if not isinstance(part["path"], str) or not part["path"]:
            raise MediaError("\"path\" must be a file path")
        path = os.path.join(cwd, os.path.expanduser(part["path"]))
        data = _read(path)
        name, url = path, None
        if from_file:
            sniffed = filetype.guess_mime(data[:SNIFF_BYTES]) or ""
            if not (sniffed.startswith("image/") or sniffed == "application/pdf"):
                raise MediaError(f"{path}: named in the chat file, and its bytes are no image "
                                 "or PDF: a file that a chat file names is sent only then "
                                 "(keep other attachments in it with --save-media inline)")
            given = None
    elif "url" in sources:
        url = part["url"]
        if not (isinstance(url, str) and re.match(r"https?://[^\s/]", url)):
            raise MediaError(f"\"url\" must be an http or https URL, not {str(url)[:80]!r}")
        data, name = None, url
    else:
        name = filename or "data"
        data, url = decode(part["data"], name), None
    mime = typed(name, data[:SNIFF_BYTES] if data is not None else None, given, warn)
    kind = part.get("type") if part.get("type") in KINDS else kind_of(mime)
    if kind == "image" and not mime.startswith("image/"):
        raise MediaError(f"{name}: an image part, but its type is {mime}; send it as a document")
    base = filename or os.path.basename((url or name).split("?")[0]) or "file"
    return Media(kind, mime, name, base, data, url)


def pdf_pages(data: bytes) -> int:
    """How many pages the PDF DATA has, by counting its page objects
    (``/Type /Page``): exact for common PDFs, never run or parsed further."""
    return len(re.findall(rb"/Type\s*/Page(?![a-zA-Z])", data))


def attachment(arg: str, at: str | None, stdin, cwd: str) -> dict:
    """The neutral media part of ``send -a ARG``: a file path, an http(s)
    URL, or ``-`` (STDIN's bytes, a binary stream, typed by AT, the
    ``--at`` MIME type, or by its bytes).  A path is made absolute from
    CWD, and its first bytes read to tell an image from a document.

    Raises:
        MediaError: an empty argument; an unreadable file; stdin over
            :data:`MAX_FILE_BYTES`; a type that cannot be told.
    """
    if not arg:
        raise MediaError("-a: expected a file path, an http(s) URL or -")
    if arg == "-":
        data = stdin.read(MAX_FILE_BYTES + 1)
        if len(data) > MAX_FILE_BYTES:
            raise MediaError(f"-a -: stdin is over {MAX_FILE_BYTES >> 20} MB")
        mime = typed("stdin", data[:SNIFF_BYTES], at, lambda message: None)
        return {"type": kind_of(mime), "data": base64.b64encode(data).decode("ascii"),
                "mime_type": at or mime, "filename": "stdin"}
    if re.match(r"https?://", arg):
        mime = at or by_name(arg.split("?")[0])
        part = {"type": kind_of(mime) if mime else "image", "url": arg}
        return {**part, "mime_type": mime} if mime else part
    path = os.path.abspath(os.path.join(cwd, os.path.expanduser(arg)))
    try:
        with open(path, "rb") as f:
            head = f.read(SNIFF_BYTES)
    except OSError as err:
        raise MediaError(f"-a {arg}: {err.strerror or err}") from None
    return {"type": kind_of(typed(path, head, at, lambda message: None)), "path": path}


#: The formats Pillow writes a downscaled image in, by MIME type (others: PNG).
_SAVE_AS = {"image/jpeg": "JPEG", "image/png": "PNG", "image/webp": "WEBP", "image/gif": "GIF"}


def downscale(image: Media, side: int, max_bytes: int | None = None) -> str | None:
    """Shrink IMAGE in place (with Pillow) so that its longer side is at
    most SIDE pixels, when it is longer or its base64 is over MAX_BYTES;
    re-encoded in its own format (JPEG, PNG, WebP, GIF; others as PNG).

    Returns:
        the warning that says so (``NAME: downscaled from WxH to wxh``),
        or None when nothing was done (small enough, or not an image).
    Raises:
        MediaError: Pillow cannot read it, or it is a decompression bomb.
    """
    if image.kind != "image" or not image.data:
        return None
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(image.data)) as img:
            width, height = img.size
            over = max_bytes is not None and 4 * ((len(image.data) + 2) // 3) > max_bytes
            if max(width, height) <= side and not over:
                return None
            img.thumbnail((side, side))
            if max(width, height) <= side:  # over the bytes: halve it
                img.thumbnail((max(width, height) // 2,) * 2)
            fmt = _SAVE_AS.get(image.mime_type, "PNG")
            if fmt == "JPEG" and img.mode not in ("RGB", "L"):
                img = img.convert("RGB")
            out = io.BytesIO()
            img.save(out, fmt)
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise MediaError(f"{image.name}: cannot downscale it: {err}") from None
    image.data = out.getvalue()
    image.mime_type = {v: k for k, v in _SAVE_AS.items()}[fmt]
    return f"{image.name}: downscaled from {width}x{height} to {img.size[0]}x{img.size[1]}"
