"""chatpipe: stream LLM chats from request.json templates to line-delimited JSON.

The package is split in layers, in the manner of openai-python's ``_streaming``:

- :mod:`chatpipe.templates` loads a request template and fills it in;
  :mod:`chatpipe.prepare` adds the chat's messages;
- :mod:`chatpipe.transport` sends every HTTP request (the streaming POST,
  the model list's GET) with ``requests``; :mod:`chatpipe.reading` yields
  the live body bytes within a deadline; :mod:`chatpipe.httperrors` says
  what a failed request means;
- :mod:`chatpipe.framing` turns bytes into server-sent events (sseclient-py)
  or NDJSON lines;
- :mod:`chatpipe.dialects` turns one API's events into protocol events (one
  module per API dialect, on the base classes of ``dialects.base``);
- :mod:`chatpipe.protocol` owns the event schema and the outputs (JSON lines
  or plain text), where secrets are redacted;
- :mod:`chatpipe.stream` runs one request with retries;
  :mod:`chatpipe.runner` is the one request runner behind every front end;
- :mod:`chatpipe.cli` (``send``, ``templates``) and :mod:`chatpipe.serve`
  are the front ends.
"""

__version__ = "0.1.0"

#: Version of the stdout protocol written by ``--output ndjson`` (docs/protocol.md).
PROTOCOL_VERSION = 2
