"""Record the request bodies that the official SDKs send for a question
with an image (PNG, JPEG) or a PDF, into sdk_requests.json beside this file.

How the fixtures were made: ``pip install openai anthropic google-genai``
(the test extras), then ``python tests/media_fixtures/record_sdk_requests.py``.
A server on 127.0.0.1 keeps each POST body and answers 400, so nothing
leaves the machine and the SDKs do not retry.  The inputs are the files
beside this script (red.png, blue.jpg, hello.pdf) and the text
``Describe.``; each SDK gets them the way its documentation shows
(google-genai builds its parts itself with ``types.Part.from_bytes``).
tests/test_media.py checks that chatpipe's user message is the SDK's.
"""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HERE = Path(__file__).resolve().parent
FILES = {"png": ("red.png", "image/png"), "jpeg": ("blue.jpg", "image/jpeg"),
         "pdf": ("hello.pdf", "application/pdf")}
TEXT = "Describe."
BODIES: list[dict] = []


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 (http.server's name)
        length = int(self.headers.get("Content-Length") or 0)
        BODIES.append(json.loads(self.rfile.read(length)))
        body = b'{"error": {"message": "recorded", "type": "invalid_request_error"}}'
        self.send_response(400)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def last_body(call) -> dict:
    """The body that CALL (an SDK call, which fails on the 400) sent."""
    try:
        call()
    except Exception:
        pass
    return BODIES[-1]


def main() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"

    import anthropic
    import openai
    from google import genai
    from google.genai import types

    oai = openai.OpenAI(api_key="x", base_url=url + "/v1", max_retries=0)
    claude = anthropic.Anthropic(api_key="x", base_url=url, max_retries=0)
    gemini = genai.Client(api_key="x", http_options=types.HttpOptions(
        base_url=url, retry_options=types.HttpRetryOptions(attempts=1)))
    out: dict[str, dict] = {"openai-chat": {}, "openai-responses": {}, "anthropic-messages": {},
                            "gemini": {}}
    for key, (name, mime) in FILES.items():
        data = (HERE / name).read_bytes()
        b64 = base64.b64encode(data).decode()
        data_url = f"data:{mime};base64,{b64}"
        if key == "pdf":
            chat_part = {"type": "file", "file": {"filename": name, "file_data": data_url}}
            responses_part = {"type": "input_file", "filename": name, "file_data": data_url}
            claude_part = {"type": "document",
                           "source": {"type": "base64", "media_type": mime, "data": b64}}
        else:
            chat_part = {"type": "image_url", "image_url": {"url": data_url}}
            responses_part = {"type": "input_image", "image_url": data_url, "detail": "auto"}
            claude_part = {"type": "image",
                           "source": {"type": "base64", "media_type": mime, "data": b64}}
        out["openai-chat"][key] = last_body(lambda: oai.chat.completions.create(
            model="m", messages=[{"role": "user", "content": [
                {"type": "text", "text": TEXT}, chat_part]}]))
        out["openai-responses"][key] = last_body(lambda: oai.responses.create(
            model="m", input=[{"role": "user", "content": [
                {"type": "input_text", "text": TEXT}, responses_part]}]))
        out["anthropic-messages"][key] = last_body(lambda: claude.messages.create(
            model="m", max_tokens=10, messages=[{"role": "user", "content": [
                {"type": "text", "text": TEXT}, claude_part]}]))
        out["gemini"][key] = last_body(lambda: gemini.models.generate_content(
            model="m", contents=[TEXT, types.Part.from_bytes(data=data, mime_type=mime)]))
    server.shutdown()
    versions = {m: __import__(m).__version__ for m in ("openai", "anthropic")}
    versions["google-genai"] = genai.__version__
    (HERE / "sdk_requests.json").write_text(json.dumps(
        {"sdk_versions": versions, "requests": out}, indent=1) + "\n")


if __name__ == "__main__":
    main()
