"""Context items (issue 19): parsing, reading at send time, limits, the
rendering and its placement; on real temporary folders and files."""

from __future__ import annotations

import io
import json
import os
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chatpipe import contextread
from chatpipe.context import (DirItem, FileItem, Limits, McpItem, TextItem, estimate_tokens, item_json,
                              language_of, parse_file_arg, parse_items)
from chatpipe.contextread import read_text, resolve, snapshot
from chatpipe.contextrender import fence_for, place, render
from chatpipe.errors import ChatpipeError, UsageError

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4\x89"
ROOT_USER = hasattr(os, "geteuid") and os.geteuid() == 0


@pytest.fixture
def project(tmp_path):
    """A project folder (it has a .git) with a few files."""
    root = tmp_path / "proj"
    (root / ".git").mkdir(parents=True)
    (root / ".git" / "config").write_text("[core]\n")
    (root / "src").mkdir()
    (root / "src" / "app.py").write_text("one\ntwo\nthree\n")
    (root / "README.md").write_text("# Title\n")
    return root


def one(items, cwd, **kw):
    return resolve(parse_items(items), cwd=str(cwd), **kw)


# -- parsing ------------------------------------------------------------------

def test_parse_items_all_shapes_round_trip():
    items = [{"type": "file", "path": "a.py", "lines": [3, 9]},
             {"type": "file", "path": "b.md", "snapshot": "old text"},
             {"type": "dir", "path": "src", "exclude": ["*.lock"]},
             {"type": "text", "name": "*scratch*", "text": "(+ 1 2)", "language": "elisp"},
             {"type": "text", "name": "*gone*", "text": None},
             {"type": "mcp", "server": "docs", "uri": "file:///x.md"}]
    parsed = parse_items(items)
    assert parsed[0] == FileItem("a.py", (3, 9))
    assert parsed[2] == DirItem("src", ("*.lock",))
    assert parsed[5] == McpItem("docs", "file:///x.md")
    assert [item_json(item) for item in parsed] == items


@pytest.mark.parametrize("items, words", [
    ({"type": "file"}, ["'context' must be a JSON array"]),
    ([{"type": "file", "path": "a"}, "x"], ["context item 2", "JSON object"]),
    ([{"type": "blob"}], ["context item 1", "'type'", "dir, file, mcp, text"]),
    ([{"type": "file"}], ["context item 1", "needs 'path'"]),
    ([{"type": "file", "path": "a", "line": [1, 2]}], ["unknown key 'line'"]),
    ([{"type": "file", "path": ""}], ["'path' must not be empty"]),
    ([{"type": "file", "path": 3}], ["'path' must be a string"]),
    ([{"type": "file", "path": "a", "lines": [5, 2]}], ["[5, 2] is reversed"]),
    ([{"type": "file", "path": "a", "lines": [0, 2]}], ["start at 1"]),
    ([{"type": "file", "path": "a", "lines": [True, 2]}], ["'lines' must be [START, END]"]),
    ([{"type": "file", "path": "a", "lines": [1, 2, 3]}], ["'lines' must be [START, END]"]),
    ([{"type": "dir", "path": "a", "exclude": "*.lock"}], ["'exclude' must be a list"]),
    ([{"type": "text", "name": "n", "text": "x", "language": "emacs lisp"}], ["'language' must be one word"]),
    ([{"type": "text", "name": "n", "text": "bad \udcff"}], ["'text' is not valid Unicode"]),
    ([{"type": "mcp", "server": "s"}], ["needs 'uri'"]),
    ([{"type": "file", "path": "a\u0000b"}], ["must not contain a NUL"]),
])
def test_parse_items_errors_name_item_and_key(items, words):
    with pytest.raises(UsageError) as err:
        parse_items(items)
    for word in words:
        assert word in str(err.value)


item_values = st.one_of(
    st.builds(FileItem, st.text(min_size=1).filter(lambda t: "\0" not in t),
              st.none() | st.tuples(st.integers(1, 50), st.integers(0, 50)).map(lambda t: (t[0], t[0] + t[1])),
              st.none() | st.text()),
    st.builds(DirItem, st.text(min_size=1).filter(lambda t: "\0" not in t),
              st.lists(st.text(min_size=1)).map(tuple)),
    st.builds(TextItem, st.text(min_size=1), st.none() | st.text(),
              st.none() | st.from_regex(r"[a-z+#]{1,9}", fullmatch=True)),
    st.builds(McpItem, st.text(min_size=1), st.text(min_size=1)))


@given(st.lists(item_values, max_size=5))
def test_item_json_round_trips_through_json(items):
    """(hypothesis' text() has no lone surrogates, which parse_items refuses)"""
    assert parse_items(json.loads(json.dumps([item_json(item) for item in items]))) == items


def test_limits_are_checked():
    with pytest.raises(UsageError, match="item_bytes must be a whole number above 0"):
        Limits(item_bytes=0)


def test_parse_file_arg(tmp_path):
    (tmp_path / "notes:1-2").write_text("a colon file\n")
    (tmp_path / "sub").mkdir()
    assert parse_file_arg("a.py:10-20", cwd=str(tmp_path)) == FileItem("a.py", (10, 20))
    assert parse_file_arg("notes:1-2", cwd=str(tmp_path)) == FileItem("notes:1-2")
    assert parse_file_arg("sub", cwd=str(tmp_path)) == DirItem("sub")
    assert parse_file_arg("C:/x.py", cwd=str(tmp_path)) == FileItem("C:/x.py")
    assert parse_file_arg("-", io.BytesIO("héllo\n".encode()), cwd=str(tmp_path)) == TextItem("stdin", "héllo\n")
    with pytest.raises(UsageError, match="reversed"):
        parse_file_arg("a.py:20-10", cwd=str(tmp_path))
    with pytest.raises(UsageError, match="not UTF-8 text .byte 0xff at offset 2"):
        parse_file_arg("-", io.BytesIO(b"ab\xffcd"))
    with pytest.raises(UsageError, match="no standard input"):
        parse_file_arg("-", None)
    with pytest.raises(UsageError, match="empty"):
        parse_file_arg("")


# -- files ----------------------------------------------------------------------

def test_file_relative_to_project_root_with_lines_and_language(project):
    out = one([{"type": "file", "path": "app.py", "lines": [2, 3]}], project / "src")
    assert not out.errors and not out.warnings
    [piece] = out.pieces
    assert (piece.display, piece.text, piece.lines, piece.language) == ("src/app.py", "two\nthree\n", (2, 3), "python")
    assert piece.tokens == estimate_tokens("two\nthree\n") == 3


def test_file_outside_a_project_keeps_given_path_with_home_as_tilde(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "notes.txt").write_text("hi\n")
    out = one([{"type": "file", "path": str(tmp_path / "notes.txt")},
               {"type": "file", "path": "~/notes.txt"},
               {"type": "file", "path": "notes.txt"}], tmp_path)
    assert [p.display for p in out.pieces] == ["~/notes.txt", "~/notes.txt", "notes.txt"]


def test_line_ranges_out_of_range_give_clear_errors(project):
    for lines, words in [([3, 4], "has 3 lines: lines 3-4 are out of range"),
                         ([7, 7], "has 3 lines: line 7 is out of range")]:
        out = one([{"type": "file", "path": "src/app.py", "lines": lines}], project)
        assert not out.pieces
        assert [p.message for p in out.errors] == [f"src/app.py {words}"]
        with pytest.raises(UsageError, match="out of range"):
            out.raise_errors()


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet="ab\n", max_size=40), a=st.integers(1, 12), span=st.integers(0, 5),
       chunk=st.integers(1, 9))
def test_line_range_reads_those_lines_across_chunks(tmp_path_factory, text, a, span, chunk):
    path = tmp_path_factory.mktemp("lines") / "f.txt"
    path.write_bytes(text.encode())
    lines = re.findall(r"[^\n]*\n|[^\n]+$", text)
    contextread.CHUNK, saved = chunk, contextread.CHUNK
    try:
        if a + span <= len(lines):
            assert read_text(str(path), (a, a + span), 1000) == "".join(lines[a - 1:a + span])
        else:
            with pytest.raises(contextread._Refused, match=f"has {len(lines)} line"):
                read_text(str(path), (a, a + span), 1000)
    finally:
        contextread.CHUNK = saved


def test_small_range_of_a_file_over_the_item_limit(project):
    big = project / "big.log"
    big.write_text("".join(f"line {n}\n" for n in range(1, 20001)))
    limits = Limits(item_bytes=1000)
    out = one([{"type": "file", "path": "big.log", "lines": [100, 101]}], project, limits=limits)
    assert [p.text for p in out.pieces] == ["line 100\nline 101\n"]
    out = one([{"type": "file", "path": "big.log"}], project, limits=limits)
    assert out.errors[0].message == (f"big.log is too big: {big.stat().st_size} bytes, "
                                     "over the limit of 1000 bytes per item")


def test_missing_and_unreadable_files_give_warnings_naming_them(project):
    out = one([{"type": "file", "path": "gone.py"}, {"type": "file", "path": "README.md"}], project)
    assert [p.text for p in out.pieces] == ["# Title\n"]
    assert [(w.message, w.item, w.subject) for w in out.warnings] == [
        ("gone.py does not exist: left out", 0, "gone.py")]
    assert out.warnings[0].event_fields()["kind"] == "context"
    if not ROOT_USER:
        (project / "README.md").chmod(0)
        out = one([{"type": "file", "path": "README.md"}], project)
        assert "README.md cannot be read: Permission denied" in out.warnings[0].message


@pytest.mark.parametrize("data, why", [
    (PNG, "is a binary file (image/png, .png)"),
    (b"text\x00more", "is a binary file (a NUL byte at offset 4)"),
    ("café".encode("latin-1"), "is not UTF-8 text (byte 0xe9 at offset 3)"),
])
def test_binary_files_are_refused_saying_why(project, data, why):
    (project / "thing.bin").write_bytes(data)
    out = one([{"type": "file", "path": "thing.bin"}], project)
    assert not out.pieces and [e.message for e in out.errors] == [f"thing.bin {why}"]


def test_special_files_and_folders_are_refused_not_read(project):
    os.mkfifo(project / "pipe")
    out = one([{"type": "file", "path": "pipe"}, {"type": "file", "path": "src"},
               {"type": "dir", "path": "README.md"}], project)
    assert [e.message for e in out.errors] == [
        "pipe is not a regular file (a FIFO, socket or device)",
        "src is a folder: give it as a dir item (send -f DIR)",
        "README.md is not a folder: give it as a file item"]


def test_total_limit_names_the_biggest_items(project):
    for name, size in [("a.txt", 300), ("b.txt", 500), ("c.txt", 100)]:
        (project / name).write_text("x" * size)
    items = [{"type": "file", "path": n} for n in ("a.txt", "b.txt", "c.txt", "README.md")]
    out = one(items, project, limits=Limits(total_bytes=700))
    assert [e.message for e in out.errors] == [
        "the context is over the total limit of 700 bytes (800 bytes read; 2 more not read); "
        "the biggest: b.txt (500 bytes), a.txt (300 bytes)"]


def test_text_items_limits_and_killed_buffers(tmp_path):
    out = one([{"type": "text", "name": "*scratch*", "text": "(+ 1 2)", "language": "elisp"},
               {"type": "text", "name": "*killed*", "text": None},
               {"type": "text", "name": "region", "text": "é" * 600}], tmp_path, limits=Limits(item_bytes=1000))
    assert [(p.display, p.language) for p in out.pieces] == [("*scratch*", "elisp")]
    assert [w.message for w in out.warnings] == ["*killed* is gone (a killed buffer?): left out"]
    assert [e.message for e in out.errors] == ["region is too big: 1200 bytes, over the limit of 1000 bytes per item"]


def test_mcp_items_are_read_by_the_given_function(tmp_path):
    def reader(server, uri):
        if uri.endswith("missing"):
            raise ChatpipeError("no such resource")
        return f"{server} says {uri}"
    items = [{"type": "mcp", "server": "docs", "uri": "mem://a.md"},
             {"type": "mcp", "server": "docs", "uri": "missing"}]
    out = one(items, tmp_path, mcp=reader)
    assert [(p.display, p.text, p.language) for p in out.pieces] == [
        ("docs:mem://a.md", "docs says mem://a.md", "markdown")]
    assert out.warnings[0].message == "docs:missing: cannot be read: no such resource: left out"
    assert "cannot be read here" in one(items[:1], tmp_path).warnings[0].message


def test_snapshot_keeps_the_text_as_it_was(project):
    items, first = snapshot(parse_items([{"type": "file", "path": "README.md"}, {"type": "dir", "path": "src"},
                                         {"type": "text", "name": "t", "text": "x"}]), cwd=str(project))
    assert items == [FileItem("README.md", None, "# Title\n"), FileItem("src/app.py", None, "one\ntwo\nthree\n"),
                     TextItem("t", "x")]
    (project / "README.md").unlink()
    (project / "src" / "app.py").write_text("changed\n")
    later = resolve(items, cwd=str(project))
    assert render(later) == render(first) and not later.warnings


# -- folders -------------------------------------------------------------------

def test_dir_honours_nested_gitignores_excludes_and_skips_git(project):
    (project / ".gitignore").write_text("*.log\nbuild/\n")
    (project / "src" / ".gitignore").write_text("!keep.log\n*.tmp\n")
    for name in ["src/keep.log", "src/drop.log", "src/x.tmp", "src/build/out.py", "src/z.lock",
                 "src/deep/b.py", "src/deep/a.py", "src/B.py"]:
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text(name + "\n")
    (project / "other").mkdir()
    (project / "other" / "x.py").write_text("x\n")
    out = one([{"type": "dir", "path": "src", "exclude": ["*.lock"]}], project)
    assert [p.display for p in out.pieces] == ["src/.gitignore", "src/B.py", "src/app.py", "src/deep/a.py",
                                               "src/deep/b.py", "src/keep.log"]
    assert not out.warnings and not out.errors
    assert out.item_tokens() == {0: out.tokens} and out.tokens == sum(estimate_tokens(p.text) for p in out.pieces)
    whole = one([{"type": "dir", "path": "."}], project, limits=Limits(exclude=("src/",)))
    assert [p.display for p in whole.pieces] == [".gitignore", "README.md", "other/x.py"]


def test_dir_named_explicitly_is_read_even_if_ignored_above(project):
    (project / ".gitignore").write_text("vendor/\n")
    (project / "vendor").mkdir()
    (project / "vendor" / "lib.c").write_text("int x;\n")
    out = one([{"type": "dir", "path": "vendor"}], project)
    assert [(p.display, p.language) for p in out.pieces] == [("vendor/lib.c", "c")]
    assert one([{"type": "dir", "path": "."}], project).pieces[-1].display == "src/app.py"


def test_dir_skips_binaries_and_broken_links_with_warnings_and_ends_symlink_loops(project):
    src = project / "src"
    (src / "logo.png").write_bytes(PNG)
    (src / "loop").symlink_to("..")
    (src / "dangling").symlink_to("nowhere")
    (src / "big.txt").write_text("x" * 2000)
    os.mkfifo(src / "pipe")
    out = one([{"type": "dir", "path": "src"}], project, limits=Limits(item_bytes=1000))
    assert [p.display for p in out.pieces] == ["src/app.py", "src/loop/README.md"]
    assert [w.message for w in out.warnings] == [
        "src/big.txt is too big: 2000 bytes, over the limit of 1000 bytes per item: left out",
        "src/dangling is a broken symlink: left out",
        "src/logo.png is a binary file (image/png, .png): left out",
        "src/loop/src is a folder entered already (a symlink loop?): left out",
        "src/pipe is not a regular file (a FIFO, socket or device): left out"]
    assert not out.errors


def test_dir_limits_files_and_reports_empty_and_missing(project):
    for n in range(5):
        (project / "src" / f"f{n}.txt").write_text("x\n")
    assert "has more than 3 files" in one([{"type": "dir", "path": "src"}], project,
                                          limits=Limits(max_files=3)).errors[0].message
    (project / "empty").mkdir()
    assert one([{"type": "dir", "path": "empty"}], project).warnings[0].message == \
        "empty has no files to send (all ignored or excluded)"
    assert one([{"type": "dir", "path": "nope"}], project).warnings[0].message == "nope does not exist: left out"


def test_odd_file_names_are_shown_printable(project):
    odd = os.fsdecode(b"caf\xe9\nnew.txt")
    with open(os.path.join(os.fsencode(project / "src"), b"caf\xe9\nnew.txt"), "w") as f:
        f.write("ok\n")
    out = one([{"type": "dir", "path": "src"}], project)
    names = [p.display for p in out.pieces]
    assert "src/caf\\xe9\\x0anew.txt" in names and odd not in names
    json.dumps(render(out), ensure_ascii=False).encode("utf-8")


# -- rendering and placement ---------------------------------------------------

def test_render_is_byte_identical_and_fences_markdown(project):
    (project / "doc.md").write_text("Text\n```python\nx\n```\n````\nfour\n````\n")
    items = [{"type": "file", "path": "doc.md"}, {"type": "file", "path": "src/app.py", "lines": [2, 2]},
             {"type": "text", "name": "note", "text": "no newline"}]
    first = render(one(items, project))
    (project / "README.md").write_text("changed, but not in the context\n")
    assert render(one(items, project)) == first
    assert first == ("# Context\n\nThe files and texts the user attached, each under its name.\n\n"
                     "## doc.md (markdown)\n`````markdown\nText\n```python\nx\n```\n````\nfour\n````\n`````\n\n"
                     "## src/app.py (line 2, python)\n```python\ntwo\n```\n\n"
                     "## note\n```\nno newline\n```\n")
    assert render(one([], project)) == ""


@given(st.text())
def test_fence_is_longer_than_any_backtick_run(text):
    fence = fence_for(text)
    assert len(fence) >= 3 and set(fence) == {"`"}
    assert fence not in text


def test_language_table():
    assert language_of("a/b/Makefile") == "make"
    assert language_of("x.PY") == "python" and language_of("x.unknown") is None


def test_estimate_tokens_is_utf8_bytes_over_four_rounded_up():
    assert [estimate_tokens(t) for t in ["", "abcd", "abcde", "é", "日本"]] == [0, 1, 2, 1, 2]


def test_place_in_system_and_before_last_user():
    chat = [{"role": "user", "content": "first"}, {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "second"}]
    assert place(chat, "CTX") == [{"role": "system", "content": "CTX"}, *chat]
    with_system = [{"role": "system", "content": "Be brief."}, *chat]
    assert place(with_system, "CTX")[0] == {"role": "system", "content": "Be brief.\n\nCTX"}
    placed = place(chat, "CTX", "user")
    assert placed[2] == {"role": "user", "content": "CTX\n\nsecond"} and placed[0] == chat[0]
    assert chat[2]["content"] == "second"
    parts = [{"role": "user", "content": [{"type": "text", "text": "q"}]}]
    assert place(parts, "CTX", "user")[0]["content"] == [{"type": "text", "text": "CTX"}, {"type": "text", "text": "q"}]
    assert place(chat, "", "user") == chat
    with pytest.raises(UsageError, match="no user message|there is none"):
        place([{"role": "system", "content": "s"}], "CTX", "user")
    with pytest.raises(UsageError, match="one of system, user"):
        place(chat, "CTX", "middle")
