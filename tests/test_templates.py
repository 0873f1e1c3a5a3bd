"""Templates: resolution, placeholders, errors with positions, the CLI."""

from __future__ import annotations

import json

import pytest

from chatpipe import templates
from chatpipe.errors import TemplateError


@pytest.fixture
def config(tmp_path, monkeypatch):
    """A private user config dir; returns its templates folder (created)."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    folder = tmp_path / "config" / "chatpipe" / "templates"
    folder.mkdir(parents=True)
    return folder


def write(path, doc):
    path.write_text(json.dumps(doc, indent=2) if not isinstance(doc, str) else doc)
    return path


BASIC = {"chatpipe": {"url": "http://127.0.0.1:1/v1/chat/completions"}, "model": "m", "stream": True,
         "messages": []}


# ---- resolution ---------------------------------------------------------------

def test_bundled_templates_exist_and_are_valid():
    names = {p.stem for p in templates.bundled_dir().glob("*.json")}
    assert {"openai", "local"} <= names
    for path in templates.bundled_dir().glob("*.json"):
        templates.load_file(path)
    openai = templates.load_file(templates.bundled_dir() / "openai.json")
    assert openai.body["stream"] is True
    assert openai.body["stream_options"] == {"include_usage": True}
    assert openai.block["headers"]["Authorization"] == "Bearer ${env:OPENAI_API_KEY}"


def test_user_folder_comes_first(config):
    assert templates.user_dir() == config
    path, source = templates.resolve("openai")
    assert source == "bundled"
    write(config / "openai.json", BASIC)
    assert templates.resolve("openai") == (config / "openai.json", "user")
    names = {name: source for name, source, _ in templates.iter_templates()}
    assert names["openai"] == "user" and names["local"] == "bundled"


def test_path_is_used_as_is(config, tmp_path):
    path = write(tmp_path / "mine.json", BASIC)
    assert templates.resolve(str(path)) == (path, "file")
    with pytest.raises(TemplateError, match="no template file"):
        templates.resolve(str(tmp_path / "missing.json"))


def test_unknown_name(config):
    with pytest.raises(TemplateError, match="no template named 'nope'"):
        templates.resolve("nope")


# ---- errors with positions -------------------------------------------------------

def test_broken_json_position(tmp_path):
    path = write(tmp_path / "t.json", '{\n  "chatpipe": {"url": "x"},\n  "model": "m",,\n}\n')
    with pytest.raises(TemplateError) as info:
        templates.load_file(path)
    assert str(info.value) == f"{path}:3:16: invalid JSON: Expecting property name enclosed in double quotes"


def test_unknown_block_key_position(tmp_path):
    path = write(tmp_path / "t.json", '{\n  "chatpipe": {\n    "url": "x",\n    "timeout": 5\n  }\n}\n')
    with pytest.raises(TemplateError) as info:
        templates.load_file(path)
    assert (info.value.line, info.value.column) == (4, 5)
    assert 'unknown key "timeout" in "chatpipe"' in info.value.message


@pytest.mark.parametrize("block,message", [
    ({"url": 5}, '"chatpipe.url" must be a string'),
    ({"url": "x", "headers": {"A": 1}}, '"chatpipe.headers" must be an object of strings'),
    ({"url": "x", "read_timeout": -1}, "positive number of seconds"),
    ({"url": "x", "api": "klingon"}, 'unknown API dialect "klingon"'),
])
def test_wrong_types(tmp_path, block, message):
    path = write(tmp_path / "t.json", {"chatpipe": block})
    with pytest.raises(TemplateError, match=message):
        templates.load_file(path)


def test_missing_block_and_non_object(tmp_path):
    with pytest.raises(TemplateError, match='no "chatpipe" block'):
        templates.load_file(write(tmp_path / "a.json", {"model": "m"}))
    with pytest.raises(TemplateError, match="must be a JSON object"):
        templates.load_file(write(tmp_path / "b.json", "[1]"))


# ---- placeholders ------------------------------------------------------------------

def test_env_and_vars(tmp_path):
    path = write(tmp_path / "t.json", {
        "chatpipe": {"url": "https://${host}/v1", "headers": {"Authorization": "Bearer ${env:KEY}"}},
        "model": "${model}", "temperature": 0.5,
        "messages": [{"role": "system", "content": "Speak ${lang}, costs $5, literal $${x}."},
                     {"role": "user", "content": "echo ${HOME} $${y}"},
                     {"role": "assistant", "content": "${not_a_placeholder}"}]})
    req = templates.fill(templates.load_file(path),
                         {"host": "h.example", "model": "m1", "lang": "Latin"},
                         env={"KEY": "s3cret-Key-0123456789"})
    assert req.url == "https://h.example/v1"
    assert req.headers == {"Authorization": "Bearer s3cret-Key-0123456789"}
    assert req.secrets == ["s3cret-Key-0123456789"]
    assert req.body["model"] == "m1" and req.body["temperature"] == 0.5
    assert req.body["messages"] == [
        {"role": "system", "content": "Speak Latin, costs $5, literal ${x}."},
        {"role": "user", "content": "echo ${HOME} $${y}"},
        {"role": "assistant", "content": "${not_a_placeholder}"}]
    assert "chatpipe" not in req.body


def test_unfilled_var_is_named(tmp_path):
    path = write(tmp_path / "t.json", {"chatpipe": {"url": "x"}, "model": "${model}"})
    with pytest.raises(TemplateError, match=r"placeholder \$\{model\} in model is not filled: "
                                            r"pass --model NAME"):
        templates.fill(templates.load_file(path), {}, env={})


def test_missing_env_names_the_variable(tmp_path):
    path = write(tmp_path / "t.json", {"chatpipe": {"url": "x", "headers": {
        "x-api-key": "${env:ANTHROPIC_API_KEY}"}}})
    with pytest.raises(TemplateError) as info:
        templates.fill(templates.load_file(path), {}, env={"ANTHROPIC_API_KEY": ""})
    assert "environment variable ANTHROPIC_API_KEY is not set" in str(info.value)
    assert "chatpipe.headers.x-api-key" in str(info.value)


def test_env_not_allowed_in_body(tmp_path):
    path = write(tmp_path / "t.json", {"chatpipe": {"url": "x"}, "user": "${env:USER}"})
    with pytest.raises(TemplateError, match="only filled in"):
        templates.fill(templates.load_file(path), {}, env={"USER": "me"})


def test_no_url(tmp_path):
    path = write(tmp_path / "t.json", {"chatpipe": {}})
    with pytest.raises(TemplateError, match="no endpoint"):
        templates.fill(templates.load_file(path), {}, env={})


# ---- the templates commands -----------------------------------------------------------

def test_templates_list_json(chatpipe, env, tmp_path):
    folder = tmp_path / "config" / "chatpipe" / "templates"
    folder.mkdir(parents=True)
    write(folder / "mine.json", {"chatpipe": {"url": "http://x/", "description": "Mine"},
                                 "model": "m"})
    write(folder / "broken.json", "{")
    proc = chatpipe("templates", "list", "--json")
    assert proc.returncode == 0, proc.stderr
    entries = {e["name"]: e for e in json.loads(proc.stdout)}
    assert entries["mine"] == {"name": "mine", "source": "user", "path": str(folder / "mine.json"),
                               "api": "openai-chat", "url": "http://x/", "model": "m",
                               "description": "Mine", "env": [], "host": "x"}
    assert (entries["anthropic"]["env"], entries["anthropic"]["host"]) == (
        ["ANTHROPIC_API_KEY"], "api.anthropic.com")
    assert entries["openai"]["source"] == "bundled"
    assert entries["openai"]["url"] == "https://api.openai.com/v1/chat/completions"
    assert "invalid JSON" in entries["broken"]["error"]
    text = chatpipe("templates", "list").stdout
    assert any(line.split()[:3] == ["local", "bundled", "openai-chat"] for line in text.splitlines())


@pytest.mark.parametrize("url, host", [
    ("https://${env:BASE}/v1/chat", None),           # the host comes from a variable
    ("${env:BASE_URL}/v1/chat/completions", None),
    ("https://api.example.com:8443/v1/${env:PATH_PART}", "api.example.com"),
    ("http://127.0.0.1:8080/v1/chat/completions", "127.0.0.1"),
])
def test_templates_info_tells_editors_what_a_template_needs(chatpipe, tmp_path, url, host):
    path = write(tmp_path / "t.json", {"chatpipe": {"url": url, "headers": {
        "Authorization": "Bearer ${env:KEY_A}", "x-other": "${env:KEY_B} ${env:KEY_A}"}}})
    proc = chatpipe("templates", "info", str(path), "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    names = [n for n in ("BASE", "BASE_URL", "PATH_PART") if "${env:" + n + "}" in url]
    assert info["env"] == names + ["KEY_A", "KEY_B"]
    assert (info["host"], info["source"], info["path"]) == (host, "file", str(path))
    broken = write(tmp_path / "broken.json", '{"chatpipe": {"bogus": 1}}')
    proc = chatpipe("templates", "info", str(broken), "--json")
    assert proc.returncode == 1 and 'unknown key "bogus"' in json.loads(proc.stdout)["error"]
    proc = chatpipe("templates", "info", "no-such-template", "--json")
    assert proc.returncode == 2 and "no template named" in proc.stderr


def test_templates_show_path_dir(chatpipe, tmp_path):
    path = chatpipe("templates", "path", "local").stdout.strip()
    assert path.endswith("request-templates/local.json")
    assert chatpipe("templates", "show", "local").stdout == open(path).read()
    assert chatpipe("templates", "dir").stdout.strip() == str(
        tmp_path / "config" / "chatpipe" / "templates")
    proc = chatpipe("templates", "path", "nope")
    assert proc.returncode == 2 and "no template named 'nope'" in proc.stderr


def test_templates_check(chatpipe, tmp_path):
    good = write(tmp_path / "good.json", BASIC)
    bad = write(tmp_path / "bad.json", '{\n  "chatpipe": {"url": "x"\n  "model": 1\n}')
    proc = chatpipe("templates", "check", str(good))
    assert (proc.returncode, proc.stdout) == (0, f"{good}: ok\n")
    proc = chatpipe("templates", "check", str(bad))
    assert proc.returncode == 1
    assert proc.stdout == f"{bad}:3:3: invalid JSON: Expecting ',' delimiter\n"


@pytest.mark.parametrize("doc, warned", [
    ({"chatpipe": {"url": "http://x/"}, "model": "m"}, 'add "stream": true'),
    ({"chatpipe": {"url": "http://x/"}, "model": "m", "stream": True}, None),
    ({"chatpipe": {"api": "gemini", "url": "http://x/v1beta/models/g:generateContent"}},
     "streamGenerateContent?alt=sse"),
    ({"chatpipe": {"api": "ollama", "url": "http://x/api/chat"}, "stream": False},
     'remove "stream": false'),
])
def test_templates_check_warns_when_streaming_is_off(chatpipe, tmp_path, doc, warned):
    path = write(tmp_path / "t.json", doc)
    proc = chatpipe("templates", "check", str(path))
    assert proc.returncode == 0
    warnings = [line for line in proc.stdout.splitlines() if ": warning: " in line]
    if warned:
        assert len(warnings) == 1 and warned in warnings[0]
        assert warnings[0].startswith(f"{path}:1:1: warning: streaming is off")
    else:
        assert warnings == []
