"""The ``chatpipe`` block's settings: one table (templatesettings.SETTINGS)
gives the checks and their messages, the defaults a request gets, and the
list the README documents."""

from __future__ import annotations

import json
import re
from dataclasses import fields
from pathlib import Path

import pytest

from chatpipe import templates, templatesettings
from chatpipe.dialects import DIALECTS
from chatpipe.errors import TemplateError

README = Path(__file__).resolve().parent.parent / "README.md"

#: The message for a value of the wrong type, per setting, as chatpipe has
#: always said it.
MESSAGES = {
    "api": '"chatpipe.api" must be a string',
    "url": '"chatpipe.url" must be a string',
    "headers": '"chatpipe.headers" must be an object of strings',
    "description": '"chatpipe.description" must be a string',
    "connect_timeout": '"chatpipe.connect_timeout" must be a positive number of seconds',
    "read_timeout": '"chatpipe.read_timeout" must be a positive number of seconds',
    "deadline": '"chatpipe.deadline" must be a positive number of seconds',
    "max_retries": '"chatpipe.max_retries" must be a whole number, 0 or more',
    "retry_budget": '"chatpipe.retry_budget" must be a number of seconds, 0 or more',
    "max_event_bytes": '"chatpipe.max_event_bytes" must be a whole number of bytes, 1024 or more',
    "max_tool_steps": '"chatpipe.max_tool_steps" must be a whole number, 0 or more',
    "max_tool_result_bytes": '"chatpipe.max_tool_result_bytes" must be a whole number, 0 or more',
    "context_placement": '"chatpipe.context_placement" must be a string',
    "context_item_bytes": '"chatpipe.context_item_bytes" must be a whole number of bytes, 1 or more',
    "context_total_bytes": '"chatpipe.context_total_bytes" must be a whole number of bytes, 1 or more',
    "media": '"chatpipe.media" must be a list of MIME types or patterns ("image/*")',
    "media_downscale": '"chatpipe.media_downscale" must be a whole number, 0 or more',
    "media_pdf": '"chatpipe.media_pdf" must be a string',
}

#: What a request gets when the template sets nothing.
DEFAULTS = {"connect_timeout": 10.0, "read_timeout": 120.0, "deadline": 1800.0, "max_retries": 3,
            "retry_budget": 60.0, "max_event_bytes": 8 << 20, "max_tool_steps": 10,
            "max_tool_result_bytes": 100_000, "context_placement": "system",
            "context_item_bytes": 128 * 1024, "context_total_bytes": 384 * 1024, "media": [],
            "media_downscale": 0, "media_pdf": "refuse"}


def load(tmp_path, block, text=None):
    path = tmp_path / "t.json"
    path.write_text(text or json.dumps({"chatpipe": block, "model": "m"}, indent=2))
    return templates.load_file(path)


def error(tmp_path, block, text=None) -> TemplateError:
    with pytest.raises(TemplateError) as info:
        load(tmp_path, block, text)
    return info.value


def documented_settings() -> list[str]:
    """The keys the README's "`chatpipe` keys:" item names in backquotes,
    without the API dialects it lists for ``api``."""
    text = README.read_text(encoding="utf-8")
    match = re.search(r"^- `chatpipe` keys:(.*?)^(?:- |\S)", text, re.M | re.S)
    assert match, 'README.md has no "- `chatpipe` keys:" item in its Templates section'
    return [n for n in re.findall(r"`([a-z_]+)`", match.group(1)) if n not in DIALECTS]


def test_the_readme_documents_every_setting_and_no_other():
    documented = documented_settings()
    table = [s.name for s in templatesettings.SETTINGS]
    assert sorted(set(documented)) == sorted(table), (
        f"documented, not in templatesettings.SETTINGS: {sorted(set(documented) - set(table))}; "
        f"in the table, not documented: {sorted(set(table) - set(documented))}")


def test_the_table_is_the_known_settings():
    assert [s.name for s in templatesettings.SETTINGS] == list(MESSAGES)
    carried = {s.name for s in templatesettings.SETTINGS if s.in_request}
    assert carried == set(DEFAULTS)
    assert carried <= {f.name for f in fields(templates.Request)}


@pytest.mark.parametrize("name", list(MESSAGES))
@pytest.mark.parametrize("bad", [True, None, [1]])
def test_a_value_of_the_wrong_kind_is_named_where_it_is(tmp_path, name, bad):
    text = '{\n  "chatpipe": {\n    "url": "x",\n    "%s": %s\n  }\n}\n' % (name, json.dumps(bad))
    if name == "url":
        text = text.replace('"url": "x",\n    ', "")
    err = error(tmp_path, None, text)
    assert (err.message, err.line, err.column) == (MESSAGES[name], 4 if name != "url" else 3, 5)


@pytest.mark.parametrize("name, bad, good", [
    ("connect_timeout", 0, 0.5), ("read_timeout", -1, 1), ("deadline", "60", 60),
    ("retry_budget", -0.5, 0), ("max_retries", 1.0, 0), ("max_tool_steps", -1, 0),
    ("max_tool_result_bytes", 2.5, 0), ("max_event_bytes", 1023, 1024),
    ("headers", {"A": 1}, {"A": "b"}), ("description", 1, "d"),
    ("media", ["png"], ["image/*"]), ("media", "image/*", []),
])
def test_limits_of_each_kind(tmp_path, name, bad, good):
    assert error(tmp_path, {"url": "x", name: bad}).message == MESSAGES[name]
    load(tmp_path, {"url": "x", name: good})


def test_a_request_gets_the_defaults_and_the_written_values(tmp_path):
    request = templates.fill(load(tmp_path, {"url": "x"}), {}, env={})
    assert {name: getattr(request, name) for name in DEFAULTS} == DEFAULTS
    assert templates.DEFAULT_MAX_EVENT_BYTES == 8 << 20
    written = {"connect_timeout": 5, "read_timeout": 7, "deadline": 9, "max_retries": 0,
               "retry_budget": 0, "max_event_bytes": 2048, "max_tool_steps": 2,
               "max_tool_result_bytes": 0, "context_placement": "user",
               "context_item_bytes": 10, "context_total_bytes": 20,
               "media": ["image/*", "application/pdf"], "media_downscale": 1568, "media_pdf": "text"}
    request = templates.fill(load(tmp_path, {"url": "x", **written}), {}, env={})
    assert {name: getattr(request, name) for name in DEFAULTS} == written
    assert isinstance(request.connect_timeout, float) and isinstance(request.retry_budget, float)
    template = load(tmp_path, {"url": "x"})
    assert (template.api, template.description, template.block) == ("openai-chat", "", {"url": "x"})


def test_unknown_keys_and_kinds_are_told_before_an_unknown_dialect(tmp_path):
    err = error(tmp_path, {"api": "klingon", "url": "x", "bogus": 1})
    assert err.message == ('unknown key "bogus" in "chatpipe"; known keys: '
                           + ", ".join(MESSAGES))
    assert error(tmp_path, {"api": "klingon", "read_timeout": 0}).message == MESSAGES["read_timeout"]
    err = error(tmp_path, {"url": "x", "api": "klingon"})
    assert err.message == 'unknown API dialect "klingon"; known: ' + ", ".join(DIALECTS)
    assert (err.line, err.column) == (4, 5)
