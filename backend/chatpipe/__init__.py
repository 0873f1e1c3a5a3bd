"""chatpipe: stream LLM chats from request.json templates to line-delimited JSON.

The package is split in layers, in the manner of openai-python's ``_streaming``:

- :mod:`chatpipe.templates` loads a request template and fills it in;
- :mod:`chatpipe.transport` does the streaming POST with ``requests`` and hands
  the live body bytes to sseclient-py;
- :mod:`chatpipe.dialects` turns one API's server-sent events into protocol
  events (one module per API dialect);
- :mod:`chatpipe.protocol` writes protocol events to stdout, one JSON object a
  line, or as plain text;
- :mod:`chatpipe.cli` is the command line, with one top-level error handler.
"""

__version__ = "0.1.0"

#: Version of the stdout protocol written by ``--output ndjson`` (docs/protocol.md).
PROTOCOL_VERSION = 1
