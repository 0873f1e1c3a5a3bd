"""A request's fields are defined once (``chatpipe.requestfields``): send's
options, ``send --request``, serve's lines and docs/protocol.md's table all
have every field, and give the same request body and the same errors.

The schema tests fail when one of them lacks a field; the front-end tests
send the same request as options, as ``--request -`` and as a serve line to
a real server on 127.0.0.1 and compare what it received.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys

import pytest

from chatpipe import cli, requestfields, runner, serve
from chatpipe.errors import UsageError
from conftest import ROOT, ndjson

TEXT = "openai-chat/text-with-usage.sse"

#: A valid JSON value of each key of the schema, and one its check refuses.
SAMPLES = {
    "template": ("openai", 5),
    "messages": ([{"role": "user", "content": "hi"}], "hi"),
    "vars": ({"lang": "French"}, {"lang": 1}),
    "model": ("m-1", ["m"]),
    "url": ("http://127.0.0.1:9/v1", 9),
    "env": ({"K": "v"}, ["K=v"]),
    "params.temperature": (0.5, 2.5),
    "params.max_tokens": (7, 0),
    "price": (True, "yes"),
    "tools": (["mcp:time"], "mcp:time"),
    "mcp": (["time"], [""]),
    "max_tool_steps": (3, -1),
    "chat": ("c1", ""),
    "context": ([{"type": "text", "name": "n", "text": "t"}], [{"type": "file"}]),
    "context_placement": ("user", "top"),
    "dry_run": (True, 1),
    "rewrite": ({"text": "a\n", "instruction": "b"}, {"text": "a\n"}),
    "save_media": ("inline", "base64"),
}


def send_parser() -> argparse.ArgumentParser:
    """The parser of ``chatpipe send``."""
    commands = next(a for a in cli.build_parser()._actions
                    if isinstance(a, argparse._SubParsersAction))
    return commands.choices["send"]


def with_key(key: str, value) -> dict:
    """A JSON request of template ``openai`` with KEY set to VALUE."""
    group, dot, name = key.partition(".")
    return {"template": "openai", group: {name: value} if dot else value}


# ---- the schema against each place that must have every field --------------------------

def test_the_samples_cover_the_schema():
    assert set(SAMPLES) == {s.key for s in requestfields.FIELDS.values() if s.key}


def test_the_docs_table_is_the_schemas():
    lines = (ROOT / "docs" / "protocol.md").read_text(encoding="utf-8").splitlines()
    start = lines.index(requestfields.docs_table()[0])
    table = lines[start:start + len(requestfields.docs_table()) + 1]
    assert table[:-1] == requestfields.docs_table()
    assert not table[-1].startswith("|")          # no row the schema does not have
    keys = {row.split("|")[1].strip().strip("`") for row in table[2:-1]}
    assert keys >= set(SAMPLES)


def test_send_has_an_option_for_every_flag_and_no_other_request_option():
    actions = {a.dest: a for a in send_parser()._actions}
    flags = {}
    for name, spec in requestfields.FIELDS.items():
        for flag in spec.flags:
            action = actions.get(flag.dest)
            assert action is not None, f"send lacks {flag.names} of {name}"
            assert set(action.option_strings) == {n for n in flag.names if n.startswith("-")}
            flags[flag.dest] = name
    # Every option of send is a field's, but for how send runs and where it writes.
    assert set(actions) - set(flags) == {"help", "request", "output", "yes"}


def test_serve_and_the_job_take_every_key():
    assert requestfields.JSON_KEYS <= serve.REQUEST_KEYS
    assert runner.Job is requestfields.Job
    attrs = {f.name for f in dataclasses.fields(runner.Job)}
    for name, spec in requestfields.FIELDS.items():
        assert name in attrs
        if spec.key is None:
            continue
        good, bad = SAMPLES[spec.key]
        job = serve.job_from_request({"id": 1, **with_key(spec.key, good)})
        assert getattr(job, name) == good
        with pytest.raises(UsageError) as err:
            serve.job_from_request({"id": 1, **with_key(spec.key, bad)})
        assert spec.key.rpartition(".")[2] in str(err.value)


def test_absent_and_null_are_the_default():
    job = requestfields.job({"template": "t", "model": None, "params": {"temperature": None},
                             "vars": None})
    assert job == runner.Job(template="t")
    assert job.params() == {} and job.environment()["PATH"]
    assert requestfields.job({"template": "t", "params": {"max_tokens": 5}}).params() == {
        "max_tokens": 5}


def test_unknown_keys_and_parameters_are_errors():
    with pytest.raises(UsageError, match="^unknown request keys: bogus, id$"):
        requestfields.job({"template": "t", "id": 1, "bogus": 2})
    with pytest.raises(UsageError, match="^unknown parameter 'top_k'; known: temperature, "):
        requestfields.job({"template": "t", "params": {"top_k": 2}})
    with pytest.raises(UsageError, match='^"template" \\(TEMPLATE\\) is missing'):
        requestfields.job({})


# ---- the same request through each front end ------------------------------------------------

@pytest.fixture
def template(tmp_path, server):
    path = tmp_path / "t.json"
    path.write_text(json.dumps({
        "chatpipe": {"url": f"{server.url}/replay/{TEXT}", "max_retries": 0,
                     "headers": {"Authorization": "Bearer ${env:SCHEMA_KEY}"}},
        "model": "m", "stream": True,
        "messages": [{"role": "system", "content": "Answer in ${lang}."}]}))
    return str(path)


def serve_lines(env, *requests) -> dict:
    """The events of REQUESTS (JSON objects with an id) through one ``chatpipe serve``, by id."""
    stdin = "".join(json.dumps(r) + "\n" for r in requests)
    proc = subprocess.run([sys.executable, "-m", "chatpipe", "serve"], cwd=ROOT, env=env,
                          input=stdin, capture_output=True, text=True, timeout=60)
    by_id: dict = {}
    for event in ndjson(proc.stdout):
        by_id.setdefault(event.get("id"), []).append(event)
    return by_id


def test_options_request_and_serve_line_send_the_same_body(server, chatpipe, env, template,
                                                            tmp_path):
    history = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    request = {"template": template, "messages": history + [{"role": "user", "content": "And?"}],
               "vars": {"lang": "French"}, "model": "gpt-x", "env": {"SCHEMA_KEY": "k" * 20},
               "params": {"temperature": 0.25, "max_tokens": 9}, "price": True,
               "max_tool_steps": 2}
    (tmp_path / "history.json").write_text(json.dumps(history))
    flags = chatpipe("send", template, "--messages", str(tmp_path / "history.json"),
                     "-m", "And?", "--var", "lang=French", "--model", "gpt-x",
                     "--temperature", "0.25", "--max-tokens", "9", "--usage",
                     "--max-tool-steps", "2", "--output", "ndjson",
                     extra_env={"SCHEMA_KEY": "k" * 20})
    whole = chatpipe("send", "--request", "-", "--output", "ndjson", input=json.dumps(request))
    # Options over --request: a value replaced, a list appended, an object updated.
    partial = {**request, "messages": history, "model": "other", "params": {"temperature": 1}}
    merged = chatpipe("send", "--request", "-", "--output", "ndjson", "-m", "And?",
                      "--model", "gpt-x", "--max-tokens", "9", "--temperature", "0.25",
                      input=json.dumps(partial))
    served = serve_lines(env, {"id": "s", **request})
    for events in [ndjson(p.stdout) for p in (flags, whole, merged)] + [served["s"]]:
        assert events[-1]["type"] == "done", events
    bodies = [r["body"] for r in server.requests]
    headers = [r["headers"]["Authorization"] for r in server.requests]
    assert len(bodies) == 4 and all(b == bodies[0] for b in bodies)
    assert bodies[0]["model"] == "gpt-x" and bodies[0]["messages"][0]["content"] == "Answer in French."
    assert (bodies[0]["temperature"], bodies[0]["max_tokens"]) == (0.25, 9)
    assert headers == ["Bearer " + "k" * 20] * 4


#: Options, the same as a JSON request's keys, and the field they fail.
BAD = [
    (["--max-tool-steps", "-1"], {"max_tool_steps": -1}, "max_tool_steps"),
    (["--temperature", "2.5"], {"params": {"temperature": 2.5}}, "temperature"),
    (["--max-tokens", "0"], {"params": {"max_tokens": 0}}, "max_tokens"),
]


def test_the_front_ends_give_the_same_errors(server, chatpipe, env, template):
    lines = []
    for i, (options, keys, name) in enumerate(BAD):
        request = {"template": template, "messages": [{"role": "user", "content": "hi"}], **keys}
        by_flags = chatpipe("send", template, "-m", "hi", *options, "--output", "ndjson")
        by_request = chatpipe("send", "--request", "-", "--output", "ndjson",
                              input=json.dumps(request))
        assert by_flags.returncode == by_request.returncode == 2
        message = ndjson(by_flags.stdout)[-1]["message"]
        assert message == ndjson(by_request.stdout)[-1]["message"]
        assert message.startswith(requestfields.FIELDS[name].label + " is not valid: expected ")
        lines.append(({"id": i, **request}, message))
    bogus = {"template": template, "messages": [{"role": "user", "content": "hi"}], "bogus": 1}
    by_request = chatpipe("send", "--request", "-", "--output", "ndjson", input=json.dumps(bogus))
    assert ndjson(by_request.stdout)[-1]["message"] == "unknown request keys: bogus"
    lines.append(({"id": "bogus", **bogus}, "unknown request keys: bogus"))
    served = serve_lines(env, *(line for line, _ in lines))
    for line, message in lines:
        assert served[line["id"]][-1]["type"] == "error"
        assert served[line["id"]][-1]["message"] == message
    assert server.requests == []


def test_request_reading_errors(chatpipe, tmp_path):
    both = chatpipe("send", "openai", "--request", "-", "--messages", "-", input="[]")
    assert both.returncode == 2 and "cannot both read stdin" in both.stderr
    array = chatpipe("send", "--request", "-", input="[]")
    assert array.returncode == 2 and "--request stdin: expected a JSON object" in array.stderr
    missing = chatpipe("send", "--request", str(tmp_path / "none.json"))
    assert missing.returncode == 2 and "none.json: No such file" in missing.stderr
    no_template = chatpipe("send", "--request", "-", input='{"messages": []}')
    assert no_template.returncode == 2
    assert '"template" (TEMPLATE) is missing' in no_template.stderr
