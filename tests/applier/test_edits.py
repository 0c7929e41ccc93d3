"""Edit resolution (pure) and unified diffs applied in a scratch repository (real git)."""

from __future__ import annotations

from pathlib import Path

import pytest
from autopack_applier.edits import (
    EditRejected,
    LineAction,
    LineEdit,
    SearchReplace,
    UnifiedDiff,
    apply_line_edits,
    apply_search_replace,
    normalize_diff,
    resolve_edits,
)
from autopack_applier.gitrepo import DiffNotApplied, apply_unified_diff

from .conftest import git

TEXT = "one\ntwo\nthree\nfour\nfive\n"


def test_line_edits_all_refer_to_the_original_numbers() -> None:
    edits = [
        LineEdit(LineAction.REPLACE, 2, 2, "TWO"),
        LineEdit(LineAction.DELETE, 4, 5),
        LineEdit(LineAction.INSERT, 3, content="between\n"),
        LineEdit(LineAction.PREPEND, content="zero\n"),
        LineEdit(LineAction.APPEND, content="six\n"),
    ]
    assert apply_line_edits(TEXT, edits) == "zero\none\nTWO\nbetween\nthree\nsix\n"


def test_an_insert_may_sit_at_the_first_line_of_a_replaced_range() -> None:
    edits = [LineEdit(LineAction.REPLACE, 2, 3, "X\n"), LineEdit(LineAction.INSERT, 2, content="before\n")]
    assert apply_line_edits(TEXT, edits) == "one\nbefore\nX\nfour\nfive\n"


def test_a_missing_final_newline_is_handled_on_both_sides() -> None:
    assert apply_line_edits("a\nb", [LineEdit(LineAction.APPEND, content="c")]) == "a\nb\nc\n"
    assert apply_line_edits("a\nb", [LineEdit(LineAction.REPLACE, 1, 1, "A")]) == "A\nb"
    assert apply_line_edits("", [LineEdit(LineAction.APPEND, content="first")]) == "first\n"


@pytest.mark.parametrize(
    ("edits", "index", "fragment"),
    [
        (
            [LineEdit(LineAction.REPLACE, 1, 3, "x"), LineEdit(LineAction.REPLACE, 3, 4, "y")],
            1,
            "overlaps edits[0]",
        ),
        (
            [LineEdit(LineAction.DELETE, 2, 4), LineEdit(LineAction.INSERT, 3, content="x")],
            1,
            "overlaps edits[0]",
        ),
        (
            [LineEdit(LineAction.INSERT, 3, content="x"), LineEdit(LineAction.DELETE, 1, 5)],
            1,
            "overlaps edits[0]",
        ),
        ([LineEdit(LineAction.REPLACE, 0, 1, "x")], 0, "start_line 0 is outside 1..5"),
        ([LineEdit(LineAction.REPLACE, 2, 9, "x")], 0, "end_line 9 must be between"),
        ([LineEdit(LineAction.REPLACE, 3, 2, "x")], 0, "end_line 2 must be between"),
        ([LineEdit(LineAction.INSERT, 7, content="x")], 0, "start_line 7 is outside 1..6"),
        ([LineEdit(LineAction.INSERT, 2)], 0, "content is required for INSERT"),
        ([LineEdit(LineAction.DELETE, 2, 2, "x")], 0, "must be empty for DELETE"),
        ([LineEdit(None, 1, 1)], 0, "line.action is required"),
    ],
)
def test_line_edit_refusals_name_the_edit(edits: list[LineEdit], index: int, fragment: str) -> None:
    with pytest.raises(EditRejected) as error:
        apply_line_edits(TEXT, edits)
    assert error.value.index == index and fragment in error.value.problem and not error.value.stale


def test_search_replace_applies_in_order_and_must_match_once() -> None:
    edits = [SearchReplace("two\n", "2\n"), SearchReplace("2\nthree\n", "2-3\n")]
    assert apply_search_replace(TEXT, edits) == "one\n2-3\nfour\nfive\n"
    with pytest.raises(EditRejected) as stale:
        apply_search_replace(TEXT, [SearchReplace("two\n", "2\n"), SearchReplace("two\n", "again\n")])
    assert stale.value.index == 1 and stale.value.stale and "'two'" in stale.value.problem
    with pytest.raises(EditRejected) as ambiguous:
        apply_search_replace("x\nx\n", [SearchReplace("x\n", "y\n")])
    assert "matches 2 times" in ambiguous.value.problem and not ambiguous.value.stale
    assert apply_search_replace("", [SearchReplace("", "new\n")]) == "new\n"
    with pytest.raises(EditRejected, match="search is empty"):
        apply_search_replace(TEXT, [SearchReplace("", "x")])


def test_edits_of_one_operation_are_of_one_kind() -> None:
    with pytest.raises(EditRejected, match="mixes edit kinds"):
        resolve_edits(
            "a.txt", TEXT, [SearchReplace("one", "1"), LineEdit(LineAction.APPEND, content="x")], _no_diff
        )
    with pytest.raises(EditRejected, match="at least one edit"):
        resolve_edits("a.txt", TEXT, [], _no_diff)


def _no_diff(path: str, text: str, diff: str) -> str:
    raise AssertionError("not called")


def test_normalize_diff_fixes_headers_and_refuses_what_is_not_one_file() -> None:
    diff = "diff --git x/a.py y/a.py\nindex 1234567..89abcde 100644\n--- a.py\n+++ a.py\n@@ -1 +1 @@\n-x\n+y"
    assert (
        normalize_diff("a.py", diff)
        == "diff --git a/a.py b/a.py\nindex 1234567..89abcde 100644\n--- a/a.py\n+++ b/a.py\n@@ -1 +1 @@\n-x\n+y\n"
    )
    for bad, fragment in [
        ("@@ -1 +1 @@\n-x\n+y\n", "no '--- ' header"),
        ("--- a/b.py\n+++ b/b.py\n@@ -1 +1 @@\n-x\n+y\n", "names 'b.py', not 'a.py'"),
        ("--- /dev/null\n+++ b/a.py\n@@ -0,0 +1 @@\n+y\n", "use FILE_MODE_CREATE"),
        ("--- a/a.py\n+++ b/a.py\n--- a/a.py\n+++ b/a.py\n@@ -1 +1 @@\n", "more than one file"),
        ("--- a/a.py\n+++ b/a.py\n-x\n", "no hunk"),
        ("--- a/a.py\n+++ b/a.py\n@@ -1 +1 @@\n-x\n+y\ndiff --git a/b b/c\nrename from b\n", "second patch"),
    ]:
        with pytest.raises(EditRejected) as error:
            normalize_diff("a.py", bad)
        assert fragment in error.value.problem


def test_a_unified_diff_applies_and_falls_back_to_a_three_way_merge(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    base = "".join(f"line {number}\n" for number in range(1, 21))
    (repo / "f.txt").write_text(base)
    git(repo, "add", "f.txt")
    blob = git(repo, "hash-object", "-w", "f.txt")
    changed = base.replace("line 18\n", "line eighteen\n")
    hunk = "@@ -16,5 +16,5 @@\n line 16\n line 17\n-line 18\n+line eighteen\n line 19\n line 20\n"
    patch = normalize_diff("f.txt", f"index {blob[:12]}..{'0' * 12} 100644\n--- a/f.txt\n+++ b/f.txt\n{hunk}")
    scratch = tmp_path / "scratch"
    assert apply_unified_diff(scratch, repo / ".git" / "objects", "f.txt", base, patch) == changed
    # The file moved on since the diff was made: its context lines changed, so the hunk no
    # longer applies, but a 3-way merge against the recorded base blob still can.
    moved = base.replace("line 16\n", "line sixteen\n").replace("line 2\n", "line two\n")
    merged = apply_unified_diff(scratch, repo / ".git" / "objects", "f.txt", moved, patch)
    assert merged == moved.replace("line 18\n", "line eighteen\n")
    # A conflicting change cannot be merged: refused as stale, not malformed.
    conflicting = base.replace("line 18\n", "line XVIII\n")
    with pytest.raises(DiffNotApplied) as error:
        apply_unified_diff(scratch, repo / ".git" / "objects", "f.txt", conflicting, patch)
    assert not error.value.malformed and "3-way" in error.value.reason
    assert list(scratch.iterdir()) == []  # scratch space is cleaned up


def test_a_diff_resolves_through_resolve_edits(tmp_path: Path) -> None:
    def apply(path: str, text: str, diff: str) -> str:
        return apply_unified_diff(tmp_path, None, path, text, normalize_diff(path, diff))

    diff = "--- a/a.txt\n+++ b/a.txt\n@@ -1,3 +1,3 @@\n one\n-two\n+2\n three\n"
    assert resolve_edits("a.txt", TEXT, [UnifiedDiff(diff)], apply) == "one\n2\nthree\nfour\nfive\n"
