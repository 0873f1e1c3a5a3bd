"""A PDF for an API that takes none (Ollama): refused by default, sent as its
text (extracted with pypdf) when the template's ``chatpipe.media_pdf`` is
``"text"``; a PDF without text, or one pypdf cannot read, is refused
naming the file.  Through prepare (the request body) and through send to a
real server on 127.0.0.1."""

from __future__ import annotations

import json

import pytest

from chatpipe.media import MediaError
from chatpipe.prepare import prepare
from conftest import TESTS, ndjson


def pdf_with_text(*pages: str) -> bytes:
    """A small valid PDF (with its xref table) whose pages show PAGES."""
    objects = ["<< /Type /Catalog /Pages 2 0 R >>", None,
               "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    kids = []
    for text in pages:
        stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET"
        objects.append(f"<< /Length {len(stream)} >>\nstream\n{stream}\nendstream")
        objects.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
                       f"/Resources << /Font << /F1 3 0 R >> >> /Contents {len(objects)} 0 R >>")
        kids.append(f"{len(objects)} 0 R")
    objects[1] = f"<< /Type /Pages /Kids [{' '.join(kids)}] /Count {len(kids)} >>"
    out, offsets = b"%PDF-1.4\n", []
    for n, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{n} 0 obj\n{body}\nendobj\n".encode()
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    out += f"trailer << /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return out


def template(tmp_path, url="http://127.0.0.1:9/api/chat", **settings) -> str:
    path = tmp_path / "ollama.json"
    path.write_text(json.dumps({"chatpipe": {"api": "ollama", "url": url, **settings},
                                "model": "llava", "stream": True, "messages": []}))
    return str(path)


def body_for(spec: str, pdf: str, events: list) -> dict:
    _, request, _ = prepare(spec, [{"role": "user", "content": [
        {"type": "text", "text": "Summarize."}, {"type": "document", "path": pdf}]}],
        env={}, warn=events.append)
    return request.body


def test_a_pdf_goes_to_ollama_as_its_text_when_the_template_says(tmp_path):
    pdf = tmp_path / "report.pdf"
    pdf.write_bytes(pdf_with_text("Revenue grew", "Costs fell"))
    with pytest.raises(MediaError, match=r"report\.pdf: the Ollama API takes image/png"):
        body_for(template(tmp_path), str(pdf), [])
    events: list[dict] = []
    body = body_for(template(tmp_path, media_pdf="text"), str(pdf), events)
    message = body["messages"][-1]
    assert "images" not in message or message["images"] == []
    assert message["content"] == ("Summarize.\n\n[the text of the PDF report.pdf]\n"
                                  "[page 1]\nRevenue grew\n\n[page 2]\nCosts fell")
    assert [e["message"] for e in events] == [f"{pdf}: sent as its text (chatpipe.media_pdf)"]


@pytest.mark.parametrize("data, why", [
    (pdf_with_text(""), "has no text"),
    ((TESTS / "media_fixtures" / "hello.pdf").read_bytes(), "cannot be read"),
    (b"%PDF-1.4\n" + b"(" * 100_000, "cannot be read"),
])
def test_a_pdf_without_text_or_unreadable_is_refused(tmp_path, data, why):
    pdf = tmp_path / "scan.pdf"
    pdf.write_bytes(data)
    with pytest.raises(MediaError, match=rf"scan\.pdf: .*{why}"):
        body_for(template(tmp_path, media_pdf="text"), str(pdf), [])


def test_send_a_pdf_to_ollama_as_text(server, chatpipe, tmp_path):
    pdf = tmp_path / "notes.pdf"
    pdf.write_bytes(pdf_with_text("Meet at noon"))
    spec = template(tmp_path, url=f"{server.url}/replay/ollama/basic-text.ndjson",
                    media_pdf="text")
    run = chatpipe("send", spec, "-a", str(pdf), "-m", "When?", "--output", "ndjson")
    events = ndjson(run.stdout)
    assert events[-1]["type"] == "done", run.stdout + run.stderr
    assert any(e["type"] == "warning" and e.get("kind") == "media" for e in events)
    sent = server.requests[0]["body"]["messages"][-1]
    assert "Meet at noon" in sent["content"] and not sent.get("images")
