"""Rewrite in place (chatpipe.rewrite): the rewrite object, its messages,
and the hygiene of its answer, whole (clean) and streamed (Hygiene).

tests/test_rewrite_requests.py runs rewrites through the APIs, serve and
``chatpipe rewrite``.
"""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chatpipe import requestfields, rewrite
from chatpipe.errors import UsageError
from conftest import ListSink

FENCE = "```"


def streamed(deltas: list[str], original: str) -> tuple[str, list[dict]]:
    """The replacement a Hygiene gives for DELTAS of an answer to ORIGINAL,
    and the events it passed on (a done after the deltas)."""
    sink = ListSink()
    hygiene = rewrite.Hygiene(sink, original)
    for piece in deltas:
        hygiene.emit({"type": "delta", "content": piece})
    hygiene.emit({"type": "done", "finish_reason": "stop"})
    assert sink.events[-1]["type"] == "done"
    assert all(e["content"] for e in sink.of("delta"))
    return sink.text(), sink.events


# ---- the rewrite object ---------------------------------------------------

@pytest.mark.parametrize("value, says", [
    ("text", "must be an object"),
    ({"instruction": "x"}, '"text" must be a string'),
    ({"text": "a", "instruction": ""}, '"instruction" is empty'),
    ({"text": "a"}, '"instruction" must be a string'),
    ({"text": "a", "instruction": "b", "path": 3}, '"path" must be a string or null'),
    ({"text": "a", "instruction": "b", "file": "x"}, "unknown key 'file'"),
    ({"text": "a" * (rewrite.MAX_BYTES + 1), "instruction": "b"}, "more than 1,000,000"),
])
def test_a_bad_rewrite_object_is_a_clear_usage_error(value, says):
    with pytest.raises(UsageError, match=says):
        requestfields.job({"template": "openai", "rewrite": value})


def test_a_rewrite_object_with_nulls_is_a_job_field():
    value = {"text": "a\n", "instruction": "b", "path": None, "language": None,
             "before": None, "after": None}
    assert requestfields.job({"template": "openai", "rewrite": value}).rewrite == value


# ---- messages ---------------------------------------------------------------

def test_code_is_asked_for_complete_code_without_fences_with_its_context():
    system, user = rewrite.messages({
        "text": "    return x\n", "instruction": "return twice x", "path": "src/app.py",
        "before": "def f(x):\n", "after": "\nprint(f(2))\n"})
    assert system["role"] == "system" and user["role"] == "user"
    assert "only the replacement code" in system["content"]
    assert "no code fences" in system["content"] and "complete" in system["content"]
    assert user["content"] == (
        "File: src/app.py (python)\n\n<before>\ndef f(x):\n</before>\n\n"
        "<rewrite>\n    return x\n</rewrite>\n\n<after>\n\nprint(f(2))\n</after>\n\n"
        "Instruction: return twice x")


@pytest.mark.parametrize("fields", [{"path": "notes.md"}, {"path": None}, {"language": "org"},
                                    {"path": "README"}])
def test_prose_is_asked_for_the_replacement_text(fields):
    system, user = rewrite.messages({"text": "Teh cat.", "instruction": "fix", **fields})
    assert "only the replacement text" in system["content"]
    assert "code" not in system["content"]
    assert "<before>" not in user["content"] and "<after>" not in user["content"]


def test_a_language_given_wins_over_the_path_and_emacs_names_count_as_code():
    system, user = rewrite.messages({"text": "(car x)", "instruction": "i",
                                     "path": "notes.txt", "language": "emacs-lisp"})
    assert "only the replacement code" in system["content"]
    assert user["content"].startswith("File: notes.txt (emacs-lisp)\n")


def test_a_text_holding_the_tags_gets_other_tags_so_it_cannot_close_its_block():
    text = "x = '</rewrite>'\n# <after>\n"
    system, user = rewrite.messages({"text": text, "instruction": "i", "after": "y\n"})
    assert "<rewrite-1>\n" + text + "</rewrite-1>" in user["content"]
    assert "<after-1>\ny\n</after-1>" in user["content"]
    assert "<rewrite-1>" in system["content"]


def test_the_requests_own_messages_come_between_the_directive_and_the_text():
    history = [{"role": "user", "content": "earlier"}, {"role": "assistant", "content": "ok"}]
    roles = [m["role"] for m in rewrite.messages({"text": "a", "instruction": "b"}, history)]
    assert roles == ["system", "user", "assistant", "user"]


# ---- hygiene ------------------------------------------------------------------

@pytest.mark.parametrize("answer, original, replacement", [
    # one enclosing fence, with or without info string or last newline
    ("```python\nx = 2\n```", "x = 1\n", "x = 2\n"),
    ("```\nx = 2\n```\n\n", "x = 1\n", "x = 2\n"),
    ("~~~~\nx = 2\n~~~~\n", "x = 1\n", "x = 2\n"),
    ("```\n```", "a", ""),
    ("```python\r\nx = 2\r\n```\r\n", "x = 1\r\n", "x = 2\r\n"),
    ("```js", "a\n", "\n"),
    # no fence: the answer as it is
    ("x = 2\n", "x = 1\n", "x = 2\n"),
    ("x = `2`", "x = 1", "x = `2`"),
    # a fence inside the text stays; only the enclosing one goes
    ("```markdown\nSee:\n\n```sh\nmake\n```\n```\n", "See: make\n",
     "See:\n\n```sh\nmake\n```\n"),
    ("Run:\n```sh\nmake\n```\n", "Run make.\n", "Run:\n```sh\nmake\n```\n"),
    # a closing line shorter than the opening fence is text
    ("````\na\n```\n", "a\n", "a\n```\n"),
    # the original's own fence: the answer's is text
    ("```sh\nmake all\n```\n", "```sh\nmake\n```\n", "```sh\nmake all\n```\n"),
    # cut off before the closing fence
    ("```python\nx = 2\ny", "x = 1\n", "x = 2\ny\n"),
    # trailing newline kept, or not added
    ("x = 2", "x = 1\n", "x = 2\n"),
    ("x = 2\n", "x = 1", "x = 2"),
    ("x = 2\r\n", "x = 1", "x = 2"),
    ("x = 2", "x = 1\r\n", "x = 2\r\n"),
    ("x = 2\n\n", "x = 1\n", "x = 2\n\n"),
    # the first line's indentation kept
    ("```python\nreturn 2\n```", "    return 1\n", "    return 2\n"),
    ("\treturn 2\n", "    return 1\n", "\treturn 2\n"),
    ("return 2\n    pass\n", "  return 1\n", "  return 2\n    pass\n"),
    ("x", "\n    x\n", "x\n"),
    ("", "x\n", "\n"),
])
def test_hygiene(answer, original, replacement):
    assert rewrite.clean(answer, original) == replacement
    assert streamed([answer], original)[0] == replacement
    assert streamed(list(answer), original)[0] == replacement


def test_a_fence_split_at_every_character_is_stripped_and_the_text_streams():
    answer = "```python\ndef f():\n    return 2\n```\n"
    for i in range(len(answer) + 1):
        for j in range(i, len(answer) + 1):
            text, _ = streamed([answer[:i], answer[i:j], answer[j:]], "def f():\n    return 1\n")
            assert text == "def f():\n    return 2\n", (i, j)


def test_text_goes_on_as_it_comes_and_only_the_end_is_held():
    sink = ListSink()
    hygiene = rewrite.Hygiene(sink, "a\nb\n")
    for piece in ("```py", "thon\nfirst", " line\n", "second\n``"):
        hygiene.emit({"type": "delta", "content": piece})
    assert sink.text() == "first line\nsecond"
    hygiene.emit({"type": "usage", "input_tokens": 1, "output_tokens": 2})
    assert sink.events[-1]["type"] == "usage"
    hygiene.emit({"type": "delta", "content": "`\n"})
    hygiene.emit({"type": "done", "finish_reason": "stop"})
    assert sink.text() == "first line\nsecond\n"


def test_release_sends_what_is_held_as_it_came():
    sink = ListSink()
    hygiene = rewrite.Hygiene(sink, "a\n")
    hygiene.emit({"type": "delta", "content": "```py"})
    hygiene.release()
    assert sink.text() == "```py"


fences = st.sampled_from(["```", "````", "~~~", "```python", "``", "`"])
pieces = st.sampled_from(["\n", " ", "\t", "\r\n", "x", "`", "~", "    y = 1"])
texts = st.lists(st.one_of(fences, pieces), max_size=12).map("".join)


@settings(max_examples=400, deadline=None)
@given(answer=texts, original=texts, cuts=st.lists(st.integers(0, 60), max_size=8))
def test_any_split_of_an_answer_gives_the_hygiene_of_the_whole(answer, original, cuts):
    bounds = sorted({0, len(answer), *(c for c in cuts if c <= len(answer))})
    deltas = [answer[a:b] for a, b in zip(bounds, bounds[1:])]
    assert streamed(deltas, original)[0] == rewrite.clean(answer, original)


@settings(max_examples=200, deadline=None)
@given(answer=st.text(max_size=40), original=st.text(max_size=20),
       cuts=st.lists(st.integers(0, 40), max_size=6))
def test_any_text_split_anywhere_gives_the_hygiene_of_the_whole(answer, original, cuts):
    bounds = sorted({0, len(answer), *(c for c in cuts if c <= len(answer))})
    deltas = [answer[a:b] for a, b in zip(bounds, bounds[1:])]
    assert streamed(deltas, original)[0] == rewrite.clean(answer, original)


@pytest.mark.parametrize("answer_start", ["```\n", "x\n"])
def test_a_long_run_of_held_characters_costs_linear_time(answer_start):
    deltas = [answer_start, "y"] + ["\n", " ", "`"] * 100_000 + ["z\n"]
    start = time.monotonic()
    text, _ = streamed(deltas, "a\n")
    assert time.monotonic() - start < 5
    assert text == rewrite.clean("".join(deltas), "a\n") and text.endswith("\n `z\n")
