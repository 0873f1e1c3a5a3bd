"""Request parameters in each API's own fields; errors an editor can explain.

Parameters (``--temperature``, ``--max-tokens``; serve's ``params``) must
reach the request body where each API reads them; ``error`` events carry a
machine-readable ``kind`` for the errors editors give their own hints for.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT, ndjson

TEXT = "openai-chat/text-with-usage.sse"

#: API -> (a recording of it, where temperature and max tokens go).
APIS = {
    "openai-chat": (TEXT, lambda b: (b["temperature"], b["max_tokens"])),
    "anthropic-messages": ("anthropic/basic.sse", lambda b: (b["temperature"], b["max_tokens"])),
    "gemini": ("gemini/basic-text-no-blank-lines.sse",
               lambda b: (b["generationConfig"]["temperature"],
                          b["generationConfig"]["maxOutputTokens"])),
    "openai-responses": ("openai-responses/basic-text.sse",
                         lambda b: (b["temperature"], b["max_output_tokens"])),
    "ollama": ("ollama/basic-text.ndjson",
               lambda b: (b["options"]["temperature"], b["options"]["num_predict"])),
}


def template(tmp_path, url, api="openai-chat", **body) -> str:
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"chatpipe": {"api": api, "url": url, "max_retries": 0},
                                "model": "m", "stream": True, "messages": [], **body}))
    return str(path)


@pytest.mark.parametrize("api", sorted(APIS))
def test_parameters_reach_each_apis_own_fields(server, chatpipe, tmp_path, api):
    recording, where = APIS[api]
    path = template(tmp_path, f"{server.url}/replay/{recording}", api)
    proc = chatpipe("send", path, "-m", "hi", "--temperature", "0.3", "--max-tokens", "7")
    assert proc.returncode == 0, proc.stderr
    assert where(server.requests[-1]["body"]) == (0.3, 7)


def test_max_completion_tokens_is_kept_when_the_template_uses_it(server, chatpipe, tmp_path):
    path = template(tmp_path, f"{server.url}/replay/{TEXT}", max_completion_tokens=100)
    assert chatpipe("send", path, "-m", "hi", "--max-tokens", "9").returncode == 0
    body = server.requests[-1]["body"]
    assert body["max_completion_tokens"] == 9 and "max_tokens" not in body


def test_serve_takes_params_and_refuses_bad_ones(server, env, tmp_path):
    path = template(tmp_path, f"{server.url}/replay/{TEXT}")
    lines = [{"id": "ok", "params": {"temperature": 1.5, "max_tokens": 20}},
             {"id": "bad", "params": {"top_k": 3}},
             {"id": "worse", "params": {"temperature": "hot"}}]
    stdin = "\n".join(json.dumps({"template": path, "messages": [
        {"role": "user", "content": "hi"}], **line}) for line in lines) + "\n"
    proc = subprocess.run([sys.executable, "-m", "chatpipe", "serve"], cwd=ROOT, env=env,
                          input=stdin, capture_output=True, text=True, timeout=30)
    last = {e["id"]: e for e in ndjson(proc.stdout) if "id" in e}
    assert last["ok"]["type"] == "done"
    assert last["bad"]["message"].startswith("unknown parameter 'top_k'")
    assert "not valid" in last["worse"]["message"]
    assert [r["body"]["temperature"] for r in server.requests] == [1.5]


def test_errors_carry_a_kind_for_editors(chatpipe, tmp_path):
    path = tmp_path / "k.json"
    path.write_text(json.dumps({"chatpipe": {"url": "http://127.0.0.1:9/v1", "max_retries": 0,
                                             "headers": {"x-key": "${env:CHATPIPE_NO_KEY}"}},
                                "model": "${model}", "stream": True}))
    missing = ndjson(chatpipe("send", str(path), "-m", "hi", "--output", "ndjson").stdout)
    assert missing[-1]["kind"] == "missing_env" and missing[-1]["variable"] == "CHATPIPE_NO_KEY"
    filled = {"CHATPIPE_NO_KEY": "k" * 12}
    unset = ndjson(chatpipe("send", str(path), "-m", "hi", "--output", "ndjson",
                            extra_env=filled).stdout)
    assert unset[-1]["kind"] == "placeholder" and unset[-1]["placeholder"] == "model"
    refused = ndjson(chatpipe("send", str(path), "-m", "hi", "--output", "ndjson",
                              "--model", "m", extra_env=filled).stdout)
    assert refused[-1]["kind"] == "connect" and refused[-1]["host"] == "127.0.0.1:9"


def test_text_output_says_when_an_answer_was_cut_off(server, chatpipe):
    proc = chatpipe("send", "openai", "--url", f"{server.url}/replay/openai-chat/finish-length.sse",
                    "-m", "hi")
    assert proc.returncode == 0
    assert "chatpipe: the answer was cut off: it reached the token limit" in proc.stderr
    full = chatpipe("send", "openai", "--url", f"{server.url}/replay/{TEXT}", "-m", "hi")
    assert "cut off" not in full.stderr


# ---- what an answer cost -------------------------------------------------------------------

def test_usage_says_tokens_and_cost_from_genai_prices(server, chatpipe):
    from genai_prices import Usage, calc_price

    url = f"{server.url}/replay/{TEXT}"
    proc = chatpipe("send", "openai", "--url", url, "--model", "gpt-4o-mini", "-m", "hi",
                    "--usage")
    assert proc.returncode == 0, proc.stderr
    price = calc_price(Usage(input_tokens=14, output_tokens=30), model_ref="gpt-4o-mini",
                       provider_api_url=url.replace(server.url, "https://api.openai.com"))
    assert f"chatpipe: 14 input + 30 output tokens, ${float(price.total_price):.6f}".rstrip(
        "0") in proc.stderr
    lines = ndjson(chatpipe("send", "openai", "--url", url, "--model", "gpt-4o-mini", "-m", "hi",
                            "--usage", "--output", "ndjson").stdout)
    usage = next(e for e in lines if e["type"] == "usage")
    assert usage["cost"] == pytest.approx(float(price.total_price))
    plain = ndjson(chatpipe("send", "openai", "--url", url, "-m", "hi", "--output",
                            "ndjson").stdout)
    assert "cost" not in next(e for e in plain if e["type"] == "usage")   # only when asked


def test_an_unknown_model_shows_tokens_never_a_guess(server, chatpipe, env):
    url = f"{server.url}/replay/{TEXT}"
    proc = chatpipe("send", "openai", "--url", url, "--model", "gemma3-270m-local", "-m", "hi",
                    "--usage")
    assert "chatpipe: 14 input + 30 output tokens\n" in proc.stderr and "$" not in proc.stderr
    line = json.dumps({"id": 1, "template": "openai", "url": url, "model": "gpt-4o-mini",
                       "price": True, "messages": [{"role": "user", "content": "hi"}]})
    serve = subprocess.run([sys.executable, "-m", "chatpipe", "serve"], cwd=ROOT, env=env,
                           input=line + "\n", capture_output=True, text=True, timeout=30)
    usage = next(e for e in ndjson(serve.stdout) if e["type"] == "usage")
    assert usage["cost"] > 0
