"""What a Python user would write with the ``openai`` SDK: stream a chat
completion and print each delta as a protocol line, flushed.

Usage: ``python -m benchmarks.sdk_client BASE_URL N`` (N deltas).  Prints the seconds
from before the request to the end of the stream (excluding the SDK's
import) on stderr.
"""

import json
import sys
import time

import openai

client = openai.OpenAI(base_url=sys.argv[1], api_key="bench", max_retries=0,
                       default_query={"n": sys.argv[2]})
start = time.monotonic()
out = sys.stdout
stream = client.chat.completions.create(model="bench", stream=True,
                                        messages=[{"role": "user", "content": "hi"}])
for chunk in stream:
    for choice in chunk.choices:
        if choice.delta.content:
            out.write(json.dumps({"type": "delta", "content": choice.delta.content}) + "\n")
            out.flush()
out.write(json.dumps({"type": "done", "finish_reason": "stop"}) + "\n")
out.flush()
print(f"{time.monotonic() - start:.6f}", file=sys.stderr)
