"""Edit operations resolved against a file's current text: line edits, search/replace, diffs.

Resolution is computation, never a write: the result is the file's new text, which the
Apply then validates with every other operation before anything touches the disk (the
original system's patch engine applied edits during its "check"). Every refusal names the
edit and says whether it is malformed (the request is wrong whatever the file says) or stale
(the file is not what the edit was written against), because a stale edit needs a fresh
read, not a corrected request.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from autopack_common.line_edits import LineSpan, first_conflict, span_order


class LineAction(enum.Enum):
    INSERT = "insert"
    REPLACE = "replace"
    DELETE = "delete"
    APPEND = "append"
    PREPEND = "prepend"


@dataclass(frozen=True)
class LineEdit:
    """1-indexed, inclusive, against the original lines; ``action`` None when unspecified."""

    action: LineAction | None
    start_line: int = 0
    end_line: int = 0
    content: str = ""


@dataclass(frozen=True)
class SearchReplace:
    search: str
    replace: str


@dataclass(frozen=True)
class UnifiedDiff:
    text: str


Edit = LineEdit | SearchReplace | UnifiedDiff


class EditRejected(ValueError):
    """An edit cannot be resolved; ``index`` is the edit's position, ``stale`` its kind."""

    def __init__(self, index: int, problem: str, *, stale: bool = False) -> None:
        super().__init__(problem)
        self.index = index
        self.problem = problem
        self.stale = stale


# Applies one diff to a text: (path, text, diff) -> new text; raises EditRejected(index 0).
DiffApplier = Callable[[str, str, str], str]


def resolve_edits(path: str, original: str, edits: Sequence[Edit], apply_diff: DiffApplier) -> str:
    """The text ``edits`` turn ``original`` into; all edits of one operation are of one kind."""
    if not edits:
        raise EditRejected(0, "FILE_MODE_EDIT needs at least one edit")
    kinds = {type(edit) for edit in edits}
    if len(kinds) > 1:
        raise EditRejected(0, "mixes edit kinds; all edits of one operation must be of one kind")
    kind = kinds.pop()
    if kind is LineEdit:
        return apply_line_edits(original, [edit for edit in edits if isinstance(edit, LineEdit)])
    if kind is SearchReplace:
        return apply_search_replace(original, [edit for edit in edits if isinstance(edit, SearchReplace)])
    text = original
    for index, edit in enumerate(edits):
        assert isinstance(edit, UnifiedDiff)
        try:
            text = apply_diff(path, text, edit.text)
        except EditRejected as error:
            raise EditRejected(index, error.problem, stale=error.stale) from None
    return text


def _as_lines(content: str) -> list[str]:
    """``content`` as lines that each end in a newline (one is added at the end if missing)."""
    if content and not content.endswith("\n"):
        content += "\n"
    return content.splitlines(keepends=True)


@dataclass(frozen=True)
class _Span(LineSpan):
    """The original lines an edit covers, and the ``lines`` that replace them."""

    lines: list[str]


def apply_line_edits(original: str, edits: Sequence[LineEdit]) -> str:
    """Apply line edits whose numbers all refer to ``original``; overlapping edits are refused."""
    lines = original.splitlines(keepends=True)
    count = len(lines)
    spans: list[_Span] = []
    for index, edit in enumerate(edits):
        spans.append(_span(index, edit, count))
    conflict = first_conflict(spans)
    if conflict is not None:
        first, second = conflict
        raise EditRejected(
            second.index,
            f"overlaps edits[{first.index}] (lines {_range(second)} and {_range(first)} of the original file)",
        )
    ordered = sorted(spans, key=span_order)
    result: list[str] = []
    position = 1  # next original line to copy
    for span in ordered:
        result.extend(lines[position - 1 : span.start - 1])
        position = max(position, span.start)
        if result and not result[-1].endswith("\n") and span.lines:
            result[-1] += "\n"
        result.extend(span.lines)
        position = max(position, span.end + 1)
    tail = lines[position - 1 :]
    if result and tail and not result[-1].endswith("\n"):
        result[-1] += "\n"
    result.extend(tail)
    return "".join(result)


def _range(span: LineSpan) -> str:
    if span.inserts:
        return f"insert before {span.start}"
    return f"{span.start}-{span.end}"


def _span(index: int, edit: LineEdit, count: int) -> _Span:
    action = edit.action
    if action is None:
        raise EditRejected(index, "line.action is required (INSERT, REPLACE, DELETE, APPEND or PREPEND)")
    if action is LineAction.APPEND:
        return _Span(index, count + 1, count, _non_empty(index, edit.content, action))
    if action is LineAction.PREPEND:
        return _Span(index, 1, 0, _non_empty(index, edit.content, action))
    start = edit.start_line
    if action is LineAction.INSERT:
        if not 1 <= start <= count + 1:
            raise EditRejected(
                index, f"line.start_line {start} is outside 1..{count + 1} (the file has {count} lines)"
            )
        return _Span(index, start, start - 1, _non_empty(index, edit.content, action))
    end = edit.end_line
    if not 1 <= start <= count:
        raise EditRejected(
            index, f"line.start_line {start} is outside 1..{count} (the file has {count} lines)"
        )
    if not start <= end <= count:
        raise EditRejected(
            index, f"line.end_line {end} must be between start_line {start} and the last line {count}"
        )
    if action is LineAction.DELETE:
        if edit.content:
            raise EditRejected(index, "line.content must be empty for DELETE")
        return _Span(index, start, end, [])
    return _Span(index, start, end, _as_lines(edit.content))


def _non_empty(index: int, content: str, action: LineAction) -> list[str]:
    if not content:
        raise EditRejected(index, f"line.content is required for {action.name}")
    return _as_lines(content)


def apply_search_replace(original: str, edits: Sequence[SearchReplace]) -> str:
    """Apply search/replace blocks in order; each search must match exactly once."""
    text = original
    for index, edit in enumerate(edits):
        if not edit.search:
            if text:
                raise EditRejected(index, "search_replace.search is empty but the file is not")
            text = edit.replace
            continue
        found = text.count(edit.search)
        if found == 0:
            raise EditRejected(
                index,
                f"search_replace.search is not in the file (first line {_first_line(edit.search)!r}); "
                "the file changed since it was read, or the text is not exact",
                stale=True,
            )
        if found > 1:
            raise EditRejected(
                index,
                f"search_replace.search matches {found} times (first line {_first_line(edit.search)!r}); "
                "include more surrounding lines so it matches once",
            )
        text = text.replace(edit.search, edit.replace, 1)
    return text


def _first_line(text: str) -> str:
    line = text.strip("\n").split("\n", 1)[0]
    return line if len(line) <= 80 else line[:77] + "..."


_HEADER_OLD = re.compile(r"^--- (?:a/)?(?P<path>\S+)")
_HEADER_NEW = re.compile(r"^\+\+\+ (?:b/)?(?P<path>\S+)")


def normalize_diff(path: str, diff: str) -> str:
    """A one-file git diff with ``a/<path>``/``b/<path>`` headers, or EditRejected.

    Models write headers with or without the a/ b/ prefixes and with a leading
    ``diff --git`` line or prose; the hunks and an ``index`` line (needed for a 3-way
    merge) are kept, anything before the headers is dropped.
    """
    lines = diff.splitlines(keepends=True)
    starts = [number for number, line in enumerate(lines) if line.startswith("--- ")]
    if not starts:
        raise EditRejected(0, "unified_diff has no '--- ' header line")
    if len(starts) > 1:
        raise EditRejected(0, "unified_diff changes more than one file; give one diff per file")
    first = starts[0]
    if first + 1 >= len(lines) or not lines[first + 1].startswith("+++ "):
        raise EditRejected(0, "unified_diff's '--- ' line is not followed by a '+++ ' line")
    old = _HEADER_OLD.match(lines[first])
    new = _HEADER_NEW.match(lines[first + 1])
    for match, side in ((old, "---"), (new, "+++")):
        named = match.group("path") if match else ""
        if named == "/dev/null":
            raise EditRejected(
                0, "unified_diff creates or deletes the file; use FILE_MODE_CREATE or FILE_MODE_DELETE"
            )
        if named != path:
            raise EditRejected(0, f"unified_diff's '{side}' header names {named!r}, not {path!r}")
    hunks = lines[first + 2 :]
    if any(line.startswith(("diff ", "GIT binary patch")) for line in hunks):
        raise EditRejected(0, "unified_diff holds a second patch after its hunks; give one diff per file")
    if not any(line.startswith("@@") for line in hunks):
        raise EditRejected(0, "unified_diff has no hunk ('@@ -a,b +c,d @@')")
    index_line = next((line for line in lines[:first] if line.startswith("index ")), "")
    body = "".join(hunks)
    if not body.endswith("\n"):
        body += "\n"
    # git reads the index line (the preimage blob a 3-way merge needs) only in a git diff.
    return f"diff --git a/{path} b/{path}\n{index_line}--- a/{path}\n+++ b/{path}\n{body}"
