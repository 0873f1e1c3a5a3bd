"""Media parts of a request: what each API takes, checked before sending.

After a dialect has put a request's messages in its API's shape, the
neutral media parts (see :mod:`chatpipe.media`) are still in it, in the
conversation's content lists, as are those of a template's or a saved
chat's conversation.  :func:`convert` reads them all, checks them against
the API's documented :class:`Limits` and the model's types (the
template's ``chatpipe.media``), and has the dialect put each in its API's
shape (:meth:`chatpipe.dialects.base.Dialect.media_part`,
:meth:`~chatpipe.dialects.base.Dialect.put_media`).  Nothing is sent when
a check fails: the error names the file, the limit and the API.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any, Callable

from chatpipe import media as media_files
from chatpipe import protocol
from chatpipe.media import Media, MediaError

MB = 1 << 20


@dataclass(frozen=True)
class Limits:
    """What an API documents that it takes of media in one request.

    Sizes are of the data as sent (base64 text), in bytes; None is no
    documented limit.

    Attributes:
        api: the API's name, for messages.
        reference: the page that documents the limits.
        types: MIME patterns of the types it takes (``image/png``).
        urls: the kinds (``image``, ``document``) it takes by URL.
        images: the most images in a request.
        image_bytes: the most bytes of one image.
        document_bytes: the most bytes of all documents of a request.
        request_bytes: the most bytes of all media of a request.
        pages: the most PDF pages of a request.
        tool_images: whether a tool's result may hold images.
    """

    api: str
    reference: str
    types: tuple[str, ...]
    urls: tuple[str, ...] = ()
    images: int | None = None
    image_bytes: int | None = None
    document_bytes: int | None = None
    request_bytes: int | None = None
    pages: int | None = None
    tool_images: bool = False


_OPENAI_TYPES = ("image/png", "image/jpeg", "image/webp", "image/gif", "application/pdf")

#: https://platform.openai.com/docs/guides/images-vision (500 images, 50 MB
#: a request) and https://platform.openai.com/docs/guides/pdf-files (100
#: pages and 32 MB of files a request).
OPENAI_CHAT = Limits("OpenAI chat completions", "https://platform.openai.com/docs/guides/images-vision",
                     _OPENAI_TYPES, ("image",), images=500, document_bytes=32 * MB,
                     request_bytes=50 * MB, pages=100)
OPENAI_RESPONSES = Limits("OpenAI Responses", "https://platform.openai.com/docs/guides/pdf-files",
                          _OPENAI_TYPES, ("image", "document"), images=500,
                          document_bytes=32 * MB, request_bytes=50 * MB, pages=100,
                          tool_images=True)
#: https://docs.claude.com/en/docs/build-with-claude/vision (100 images, 5
#: MB each) and https://docs.claude.com/en/docs/build-with-claude/pdf-support
#: (32 MB a request, 100 pages).
ANTHROPIC = Limits("Anthropic Messages", "https://docs.claude.com/en/docs/build-with-claude/vision",
                   ("image/jpeg", "image/png", "image/gif", "image/webp", "application/pdf",
                    "text/plain"), ("image", "document"), images=100, image_bytes=5 * MB,
                   request_bytes=32 * MB, pages=100, tool_images=True)
#: https://ai.google.dev/gemini-api/docs/image-understanding (inline data:
#: 20 MB a request, 3600 images) and
#: https://ai.google.dev/gemini-api/docs/document-processing (1000 pages).
GEMINI = Limits("Gemini", "https://ai.google.dev/gemini-api/docs/image-understanding",
                ("image/png", "image/jpeg", "image/webp", "image/heic", "image/heif",
                 "application/pdf", "text/plain"), images=3600, request_bytes=20 * MB, pages=1000)
#: https://docs.ollama.com/api/chat: ``images``, base64, no documented limit.
OLLAMA = Limits("Ollama", "https://docs.ollama.com/api/chat", ("image/png", "image/jpeg"))


def matches(mime_type: str, patterns: Any) -> bool:
    """Whether MIME_TYPE matches one of PATTERNS (``image/*``, ``application/pdf``)."""
    return any(fnmatch.fnmatchcase(mime_type, p) for p in patterns)


def encoded(size: int) -> int:
    """The base64 length of SIZE bytes."""
    return 4 * ((size + 2) // 3)


#: Where the types a model takes are known from, for messages.
TEMPLATE_TYPES = "the template's chatpipe.media"
LIST_TYPES = "the endpoint's model list"


def check(found: list[Media], limits: Limits, accepted: list[str] | None, model: str | None,
          warn: Callable[[dict], None], source: str = TEMPLATE_TYPES) -> None:
    """Check the media FOUND of one request against LIMITS (the API's) and
    ACCEPTED (the MIME patterns of the types MODEL takes, from SOURCE, for
    messages; None: not known, then WARN gets a ``warning`` event naming
    the types sent).

    Raises:
        MediaError: a type the API or the model does not take, a URL the
            API does not take, or a limit passed; the message names the
            file, the limit and the API.
    """
    api, who = limits.api, f"model {model}" if model else "the model"
    for m in found:
        if not matches(m.mime_type, limits.types):
            raise MediaError(f"{m.name}: the {api} API takes {', '.join(limits.types)}, "
                             f"not {m.mime_type}")
        if accepted is not None and not matches(m.mime_type, accepted):
            raise MediaError(f"{m.name}: {who} takes {', '.join(accepted) or 'no media'} "
                             f"({source}), not {m.mime_type}")
        if m.url and m.kind not in limits.urls:
            raise MediaError(f"{m.name}: the {api} API takes no {m.kind} by URL; download it "
                             "and give its path")
        if m.kind == "image" and limits.image_bytes and encoded(m.size()) > limits.image_bytes:
            raise MediaError(f"{m.name}: {encoded(m.size())} bytes as base64, over the {api} "
                             f"API's {limits.image_bytes >> 20} MB per image ({limits.reference}); "
                             "chatpipe.media_downscale in the template downscales it")
    images = [m for m in found if m.kind == "image"]
    if limits.images is not None and len(images) > limits.images:
        raise MediaError(f"{len(images)} images (the last: {images[-1].name}), over the {api} "
                         f"API's {limits.images} per request ({limits.reference})")
    _total(found, [m for m in found if m.kind == "document"], limits)
    if accepted is None and found:
        types = sorted({m.mime_type for m in found})
        warn(protocol.warning(f"whether {who} takes {', '.join(types)} is not known (set "
                              "chatpipe.media in the template); sent anyway", kind="media"))


def _total(found: list[Media], documents: list[Media], limits: Limits) -> None:
    """Check the sizes and pages of all FOUND media and their DOCUMENTS.

    Raises:
        MediaError: over :attr:`Limits.request_bytes`,
            :attr:`~Limits.document_bytes` or :attr:`~Limits.pages`.
    """
    for group, limit, what in ((found, limits.request_bytes, "of media per request"),
                               (documents, limits.document_bytes, "of documents per request")):
        total = 0
        for m in group:
            total += encoded(m.size())
            if limit is not None and total > limit:
                raise MediaError(f"{m.name}: brings the request to {total} bytes as base64, over "
                                 f"the {limits.api} API's {limit >> 20} MB {what} "
                                 f"({limits.reference})")
    pages = 0
    for m in documents:
        if m.mime_type == "application/pdf" and m.data:
            pages += media_files.pdf_pages(m.data)
            if limits.pages is not None and pages > limits.pages:
                raise MediaError(f"{m.name}: brings the request to {pages} PDF pages, over the "
                                 f"{limits.api} API's {limits.pages} pages per request "
                                 f"({limits.reference})")


def pdf_text(m: Media) -> str:
    """The text of the PDF M, page by page (``[page N]`` before each page
    that has text), extracted with the pypdf library.

    Raises:
        MediaError: the PDF cannot be read, or has no text (a scan).
    """
    import io

    import pypdf

    try:
        pages = [page.extract_text() or "" for page in pypdf.PdfReader(io.BytesIO(m.data)).pages]
    except (pypdf.errors.PyPdfError, ValueError, KeyError, TypeError, RecursionError) as err:
        raise MediaError(f"{m.name}: its text cannot be read ({type(err).__name__}: {err})") from None
    text = "\n\n".join(f"[page {n}]\n{page.strip()}" for n, page in enumerate(pages, 1)
                        if page.strip())
    if not text:
        raise MediaError(f"{m.name}: the PDF has no text (a scan?), and this API takes no PDFs")
    return text


def _pdfs_as_text(parts: list, found: list, warn: Callable[[dict], None]) -> list:
    """FOUND's PDFs (``(index, Media)`` of PARTS) made text parts in PARTS
    (see :func:`pdf_text`), each said in a warning; the rest of FOUND."""
    rest = []
    for index, loaded in found:
        if loaded.mime_type == "application/pdf" and loaded.data is not None:
            parts[index] = {"type": "text",
                            "text": f"[the text of the PDF {loaded.filename}]\n{pdf_text(loaded)}"}
            warn(protocol.warning(f"{loaded.name}: sent as its text (chatpipe.media_pdf)",
                                  kind="media"))
        else:
            rest.append((index, loaded))
    return rest


def convert(dialect: Any, body: dict, *, cwd: str,
            accepted: Callable[[], tuple[list[str] | None, str]], model: str | None,
            warn: Callable[[dict], None], downscale: int = 0, pdf: str = "refuse",
            first_new: int = 0) -> None:
    """Read, check and convert every neutral media part of the request
    BODY's conversation (DIALECT's :attr:`history_key`), in place.

    CWD resolves relative paths; ACCEPTED gives ``(patterns, source)`` of
    :func:`check`, asked only when there are media; MODEL as in :func:`check`;
    WARN gets ``warning`` events (a type mismatch, unknown model types, a
    downscaled image).  DOWNSCALE (the template's ``media_downscale``),
    when above 0, is the longest side in pixels of images that are longer
    or over the API's bytes per image (:func:`chatpipe.media.downscale`).
    PDF (the template's ``media_pdf``) ``"text"``: for an API that takes no
    PDFs, a PDF goes as its text (:func:`pdf_text`), with a warning.  The
    items before FIRST_NEW come from the template file (its own or a saved
    chat's turns): their files are loaded as from a file
    (:func:`chatpipe.media.load`'s ``from_file``).

    Raises:
        MediaError: a part that cannot be read (the message names the turn,
            1 for the conversation's first item, and the file) or that
            fails a check (:func:`check`).
    """
    conversation = body.get(dialect.history_key)
    if not isinstance(conversation, list):
        return
    places = []
    for turn, item in enumerate(conversation, 1):
        parts = item.get(dialect.parts_key) if isinstance(item, dict) else None
        found = []
        for index, part in enumerate(parts if isinstance(parts, list) else ()):
            if media_files.is_media(part):
                try:
                    found.append((index, media_files.load(
                        part, cwd=cwd, from_file=turn <= first_new,
                        warn=lambda text: warn(protocol.warning(text, kind="media")))))
                except MediaError as err:
                    raise MediaError(f"turn {turn} of the conversation: {err}") from None
        converted = len(found)
        if pdf == "text" and not matches("application/pdf", dialect.media_limits.types):
            found = _pdfs_as_text(parts, found, warn)
        converted -= len(found)
        for _, loaded in found:
            said = downscale and media_files.downscale(
                loaded, downscale, dialect.media_limits.image_bytes)
            if said:
                warn(protocol.warning(f"{said} (chatpipe.media_downscale)", kind="media"))
        if found or converted:
            places.append((item, found))
    if places:
        patterns, source = accepted()
        check([m for _, found in places for _, m in found], dialect.media_limits, patterns, model,
              warn, source)
    for item, found in places:
        dialect.put_media(item, found)


def image_note(part: Any, why: str) -> str:
    """The line that stands, in a tool result's text, for the image PART
    (neutral) that cannot go to the model, and WHY."""
    mime = part.get("mime_type") if isinstance(part, dict) else None
    return f"\n[The tool returned an image ({mime or 'of an unknown type'}), not shown: {why}]"


def tool_images(limits: Limits, result: dict) -> tuple[list[Media], str]:
    """The images of the neutral tool RESULT (its ``images``: media parts
    with base64 ``data``, see :class:`chatpipe.tools.ToolResult`) that go
    to the model as images, where the API of LIMITS takes them in a tool
    result (:attr:`Limits.tool_images`) within its limits, and the notes
    (:func:`image_note`, text to add to the result's) of the others."""
    found, notes = [], ""
    for part in result.get("images") or ():
        try:
            if not limits.tool_images:
                raise MediaError(f"the {limits.api} API takes no images in tool results")
            loaded = media_files.load(part, cwd=".", warn=lambda text: None)
            check([*found, loaded], limits, ["*/*"], None, lambda event: None)
            found.append(loaded)
        except MediaError as err:
            notes += image_note(part, str(err))
    return found, notes
