"""Each output format: its contract names its shape, its parser keeps complete operations and types errors."""

from __future__ import annotations

import json

import pytest
from autopack_builder.formats import (
    FALLBACK,
    FORMATS,
    choose_format,
    parse_ndjson,
    parse_search_replace,
    parse_unified_diff,
)
from autopack_builder.models import FileOp, LineEditSpec, SearchReplaceSpec, UnifiedDiffSpec
from autopack_builder.normalize import Workspace, normalize_operations
from autopack_builder.parsing import OutputFormatError, parse_build_output
from autopack_builder.prompt import build_system_prompt
from autopack_common.content import text_sha256

# --- NDJSON ------------------------------------------------------------------------------

NDJSON = "\n".join(
    [
        json.dumps({"summary": "Two files."}),
        json.dumps({"path": "pkg/a.py", "mode": "create", "new_content": "a = 1\n"}),
        json.dumps(
            {
                "path": "pkg/b.py",
                "mode": "edit",
                "edits": [{"action": "replace", "start_line": 2, "content": "b\n"}],
            }
        ),
        json.dumps({"path": "pkg/c.py", "mode": "delete"}),
    ]
)


def test_ndjson_one_operation_per_line() -> None:
    parsed = parse_ndjson(NDJSON, False)

    assert parsed.summary == "Two files." and not parsed.salvaged
    assert parsed.operations == (
        FileOp("pkg/a.py", "create", "a = 1\n"),
        FileOp("pkg/b.py", "edit", edits=(LineEditSpec("replace", 2, 2, "b\n"),)),
        FileOp("pkg/c.py", "delete"),
    )


def test_ndjson_truncated_last_line_is_dropped_and_reported() -> None:
    cut = NDJSON + "\n" + '{"path": "pkg/d.py", "mode": "create", "new_content": "d = '

    parsed = parse_ndjson(cut, True)

    assert [op.path for op in parsed.operations] == ["pkg/a.py", "pkg/b.py", "pkg/c.py"]
    assert parsed.salvaged and parsed.incomplete_path == "pkg/d.py"
    assert "pkg/d.py" in parsed.dropped[0]


def test_ndjson_broken_line_in_a_complete_answer_is_an_error_with_the_lines_before() -> None:
    text = NDJSON.replace('{"path": "pkg/c.py"', '{"path": pkg/c.py')

    with pytest.raises(OutputFormatError) as caught:
        parse_ndjson(text, False)

    assert caught.value.reason == "invalid_json" and "line 4" in caught.value.problem
    assert [op.path for op in caught.value.salvaged] == ["pkg/a.py", "pkg/b.py"]


def test_ndjson_expands_a_files_payload_and_salvages_a_cut_wrapper() -> None:
    payload = json.dumps({"files": [{"path": "x.py", "mode": "create", "new_content": "x\n"}] * 1})
    assert [op.path for op in parse_ndjson(payload, False).operations] == ["x.py"]

    summary_first = json.dumps(
        {"summary": "s", "files": [{"path": "x.py", "mode": "create", "new_content": "x"}]}
    )
    assert [op.path for op in parse_ndjson(summary_first, False).operations] == ["x.py"]

    wrapper = '{"files": [{"path": "x.py", "mode": "create", "new_content": "x"}, {"path": "y.py", "mo'
    parsed = parse_ndjson(wrapper, True)
    assert [op.path for op in parsed.operations] == ["x.py"] and parsed.incomplete_path == "y.py"


def test_ndjson_prose_only_is_an_error() -> None:
    with pytest.raises(OutputFormatError, match="no NDJSON operation"):
        parse_ndjson("Sure, I will do that.", False)


# --- search/replace ----------------------------------------------------------------------

SEARCH_REPLACE = """\
SUMMARY: Renamed the helper and added a module.

pkg/util.py
```python
<<<<<<< SEARCH
def old():
    return 1
=======
def new():
    return 1
>>>>>>> REPLACE
```

pkg/util.py
<<<<<<< SEARCH
x = old()
=======
x = new()
>>>>>>> REPLACE

pkg/fresh.py
<<<<<<< SEARCH
=======
FRESH = True
>>>>>>> REPLACE

DELETE pkg/gone.py
"""


def test_search_replace_blocks_are_grouped_per_file() -> None:
    parsed = parse_search_replace(SEARCH_REPLACE, False)

    assert parsed.summary == "Renamed the helper and added a module."
    assert parsed.operations == (
        FileOp(
            "pkg/util.py",
            "edit",
            edits=(
                SearchReplaceSpec("def old():\n    return 1\n", "def new():\n    return 1\n"),
                SearchReplaceSpec("x = old()\n", "x = new()\n"),
            ),
        ),
        FileOp("pkg/fresh.py", "create", "FRESH = True\n"),
        FileOp("pkg/gone.py", "delete"),
    )


def test_search_replace_cut_block_drops_its_file_and_names_it() -> None:
    cut = SEARCH_REPLACE[: SEARCH_REPLACE.index("FRESH = True") + 5]

    parsed = parse_search_replace(cut, True)

    assert [op.path for op in parsed.operations] == ["pkg/util.py"]
    assert parsed.incomplete_path == "pkg/fresh.py" and parsed.salvaged


def test_search_replace_cut_after_a_block_continues_that_file() -> None:
    cut = SEARCH_REPLACE[: SEARCH_REPLACE.index("pkg/fresh.py")]

    parsed = parse_search_replace(cut, True)

    assert parsed.operations == () and parsed.incomplete_path == "pkg/util.py"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("<<<<<<< SEARCH\na\n=======\nb\n>>>>>>> REPLACE\n", "invalid_block"),
        ("pkg/x.py\n<<<<<<< SEARCH\na\n=======\nb\n", "invalid_block"),
        ("Here you go, all done.", "no_blocks"),
        ("pkg/x.py\n<<<<<<< SEARCH\na\n=======\nb\n>>>>>>> REPLACE\nDELETE pkg/x.py\n", "invalid_operation"),
        ("DELETE ../etc/passwd\n", "invalid_operation"),
    ],
    ids=["no-path", "unterminated", "prose", "edit-and-delete", "unsafe-delete"],
)
def test_search_replace_errors(text: str, reason: str) -> None:
    with pytest.raises(OutputFormatError) as caught:
        parse_search_replace(text, False)
    assert caught.value.reason == reason


# --- unified diff --------------------------------------------------------------------------

DIFF = """\
SUMMARY: Fixed the greeting; added and removed a file.
```diff
--- a/pkg/hello.py
+++ b/pkg/hello.py
@@ -1,3 +1,3 @@
 def hello():
-    return "helo"
+    return "hello"

@@ -10,2 +10,3 @@
 x = 1
+y = 2
 z = 3
--- /dev/null
+++ b/pkg/new.py
@@ -0,0 +1,2 @@
+NEW = 1
+OTHER = 2
--- a/pkg/old.py
+++ /dev/null
@@ -1 +0,0 @@
-OLD = 1
```
"""


def test_unified_diff_per_file_operations() -> None:
    parsed = parse_unified_diff(DIFF, False)

    assert parsed.summary == "Fixed the greeting; added and removed a file."
    hello, new, old = parsed.operations
    assert (hello.path, hello.mode) == ("pkg/hello.py", "edit")
    [edit] = hello.edits
    assert isinstance(edit, UnifiedDiffSpec)
    assert edit.diff.startswith("--- a/pkg/hello.py\n+++ b/pkg/hello.py\n@@ -1,3 +1,3 @@")
    assert "+y = 2\n z = 3\n" in edit.diff
    assert new == FileOp("pkg/new.py", "create", "NEW = 1\nOTHER = 2\n")
    assert old == FileOp("pkg/old.py", "delete")


def test_unified_diff_cut_hunk_drops_that_file() -> None:
    cut = DIFF[: DIFF.index("+OTHER")]

    parsed = parse_unified_diff(cut, True)

    assert [op.path for op in parsed.operations] == ["pkg/hello.py"]
    assert parsed.incomplete_path == "pkg/new.py"


def test_unified_diff_wrong_counts_in_a_complete_answer_is_an_error() -> None:
    broken = DIFF.replace("@@ -0,0 +1,2 @@", "@@ -0,0 +1,5 @@")

    with pytest.raises(OutputFormatError) as caught:
        parse_unified_diff(broken, False)

    assert caught.value.reason == "invalid_diff"
    assert [op.path for op in caught.value.salvaged] == ["pkg/hello.py"]


def test_unified_diff_without_a_diff_is_an_error() -> None:
    with pytest.raises(OutputFormatError) as caught:
        parse_unified_diff("Just prose.", False)
    assert caught.value.reason == "no_diff"


# --- line edits (JSON) -----------------------------------------------------------------------


def _edits(*edits: dict[str, object]) -> str:
    return json.dumps({"files": [{"path": "big.py", "mode": "edit", "edits": list(edits)}]})


def test_line_edits_every_action() -> None:
    parsed = parse_build_output(
        _edits(
            {"action": "insert", "start_line": 3, "content": "i\n"},
            {"action": "replace", "start_line": 5, "end_line": 7, "content": "r\n"},
            {"action": "delete", "start_line": 9, "end_line": 9},
            {"action": "APPEND", "content": "end\n"},
            {"action": "prepend", "content": "top\n"},
        )
    )

    [op] = parsed.operations
    assert op.edits == (
        LineEditSpec("insert", 3, 0, "i\n"),
        LineEditSpec("replace", 5, 7, "r\n"),
        LineEditSpec("delete", 9, 9, ""),
        LineEditSpec("append", 0, 0, "end\n"),
        LineEditSpec("prepend", 0, 0, "top\n"),
    )


@pytest.mark.parametrize(
    ("edits", "message"),
    [
        (
            ({"action": "replace", "start_line": 5, "end_line": 8}, {"action": "delete", "start_line": 8}),
            "overlap",
        ),
        (
            (
                {"action": "replace", "start_line": 5, "end_line": 8},
                {"action": "insert", "start_line": 6, "content": "x"},
            ),
            "inside",
        ),
        (({"action": "replace", "start_line": 5, "end_line": 4},), "before start_line"),
        (({"action": "insert", "content": "x"},), "required"),
        (({"action": "append"},), "content: required"),
        (({"action": "zap"},), "must be one of"),
    ],
    ids=["overlap", "insert-inside", "reversed", "no-line", "no-content", "unknown"],
)
def test_line_edits_are_validated(edits: tuple[dict[str, object], ...], message: str) -> None:
    with pytest.raises(OutputFormatError, match=message):
        parse_build_output(_edits(*edits))


def test_line_edits_beyond_the_known_file_are_rejected_and_known_files_get_their_hash() -> None:
    content = "a\nb\nc\n"
    workspace = Workspace(files={"big.py": content}, listing_given=False)
    ok = parse_build_output(_edits({"action": "insert", "start_line": 4, "content": "d\n"})).operations

    [op], notes = normalize_operations(ok, workspace)
    assert op.base_sha256 == text_sha256(content) and notes == ()

    too_far = parse_build_output(_edits({"action": "delete", "start_line": 2, "end_line": 4})).operations
    with pytest.raises(OutputFormatError, match="has 3 line"):
        normalize_operations(too_far, workspace)


def test_mode_rule_without_a_listing_keeps_the_model_mode() -> None:
    unknown = Workspace(files={}, listing_given=False)
    operations = (FileOp("x.py", "modify", "x"), FileOp("y.py", "create", "y"))

    assert normalize_operations(operations, unknown) == (operations, ())


# --- registry and policy ----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_every_format_has_a_contract_a_fallback_and_the_common_rules(name: str) -> None:
    system = build_system_prompt(name)

    assert "OUTPUT CONTRACT" in system and 'A scope path ending in "/" is a directory prefix' in system
    assert FALLBACK[name] in FORMATS and FALLBACK[name] != name
    assert FORMATS[name].parse("", True).salvaged  # an empty cut-off answer salvages nothing, no crash


@pytest.mark.parametrize(
    ("lines", "forced", "trouble", "expected"),
    [
        ([10, 500], "", "", "full_file_json"),
        ([501], "", "", "search_replace"),
        ([1001], "", "", "line_edits"),
        ([900, 900, 900, 900], "", "", "line_edits"),  # a large scope
        ([10], "unified_diff", "", "unified_diff"),  # the phase forces one
        ([10], "", "full_file_json", "ndjson"),  # the last attempt was cut off or malformed
        ([], "", "", "full_file_json"),
    ],
)
def test_format_policy(lines: list[int], forced: str, trouble: str, expected: str) -> None:
    assert choose_format(lines, forced=forced, previous_trouble=trouble) == expected
