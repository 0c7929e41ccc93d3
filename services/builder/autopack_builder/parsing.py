"""Turn a model's answer into validated full-file operations.

Models wrap the JSON in code fences or prose, and a truncated answer (stop reason
``max_tokens``) leaves the outer ``{"files": [...]}`` unclosed. Like the monolith's
NDJSON hardening (seed 004), a truncated answer keeps every *complete* inner file
object and drops only the one cut off; an answer that ended normally must be valid
JSON, because silently dropping files from it would hide a real model error.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from autopack_common.line_edits import LineSpan, first_conflict, span_order

from autopack_builder.models import (
    FILE_MODES,
    LINE_ACTIONS,
    EditSpec,
    FileOp,
    LineEditSpec,
    SearchReplaceSpec,
)

# Where the wrapper object starts: the first "{" whose first key is "files" or "summary",
# else (a model that adds its own keys first) the first "{" that opens a JSON object.
_WRAPPER_START = re.compile(r'\{\s*"(?:files|summary)"\s*:')
_OBJECT_START = re.compile(r'\{\s*"[^"\n]{1,64}"\s*:')
_NDJSON_LINE = re.compile(r'^\s*\{\s*"path"\s*:')
_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")
_DECODER = json.JSONDecoder(strict=False)  # models often put raw newlines/tabs inside strings


class OutputFormatError(Exception):
    """The answer cannot be used; ``reason`` is a stable code, the message says what was wrong.

    ``salvaged`` holds the operations that were complete and valid before the problem, so a
    caller can report (or continue from) what the answer did contain.
    """

    def __init__(self, reason: str, problem: str, salvaged: tuple[FileOp, ...] = ()) -> None:
        super().__init__(problem)
        self.reason = reason
        self.problem = problem
        self.salvaged = salvaged


@dataclass(frozen=True)
class ParsedOutput:
    """Validated operations; ``salvaged`` means the answer was cut off and only complete operations were kept.

    ``incomplete_path`` names the operation the answer was writing when it stopped (continue from
    it); ``dropped`` says, per dropped piece, what was dropped and why.
    """

    operations: tuple[FileOp, ...]
    summary: str = ""
    salvaged: bool = False
    incomplete_path: str | None = None
    dropped: tuple[str, ...] = ()


def path_problem(path: object, *, allow_directory: bool = False) -> str | None:
    """Why ``path`` is not a safe repository-relative path, or None when it is.

    Shared with the servicer, which checks deliverables and scope paths the same way;
    ``allow_directory`` admits the trailing "/" of a directory prefix.
    """
    if not isinstance(path, str) or not path.strip():
        return "must be a non-empty string"
    if path != path.strip():
        return "must not have leading or trailing whitespace"
    if "\x00" in path:
        return "must not contain NUL characters"
    if "\\" in path:
        return "must use forward slashes"
    if path.startswith("/") or path.startswith("~") or _WINDOWS_DRIVE.match(path):
        return "must be relative to the repository root"
    body = path[:-1] if allow_directory and path.endswith("/") else path
    if body.endswith("/"):
        return "must name a file, not a directory"
    segments = body.split("/")
    if ".." in segments:
        return 'must not contain ".."'
    if any(segment in ("", ".") for segment in segments):
        return 'must be normalized (no empty or "." segments)'
    return None


def _line_edit(parent: str, index: int, item: object) -> LineEditSpec:
    """One validated line edit; ``parent[index]`` names it in errors (formatted only then: hot path)."""
    if not isinstance(item, dict):
        raise OutputFormatError("invalid_operation", f"{parent}[{index}]: must be an object")
    action = item.get("action")
    if not isinstance(action, str) or action.strip().lower() not in LINE_ACTIONS:
        raise OutputFormatError(
            "invalid_operation",
            f"{parent}[{index}].action {action!r}: must be one of {', '.join(LINE_ACTIONS)}",
        )
    action = action.strip().lower()
    start, end = item.get("start_line", 0), item.get("end_line", 0)
    for name, value in (("start_line", start), ("end_line", end)):
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise OutputFormatError(
                "invalid_operation", f"{parent}[{index}].{name} {value!r}: must be an integer >= 1"
            )
    start, end = start or 0, end or 0
    content = item.get("content", "")
    if not isinstance(content, str):
        raise OutputFormatError("invalid_operation", f"{parent}[{index}].content: must be a string")
    if action in ("insert", "replace", "delete") and start < 1:
        raise OutputFormatError(
            "invalid_operation", f"{parent}[{index}].start_line: required (>= 1) for {action}"
        )
    if action in ("replace", "delete"):
        end = end or start
        if end < start:
            raise OutputFormatError(
                "invalid_operation", f"{parent}[{index}].end_line {end}: before start_line {start}"
            )
    if action in ("insert", "append", "prepend") and not content:
        raise OutputFormatError("invalid_operation", f"{parent}[{index}].content: required for {action}")
    ranged = action in ("replace", "delete")
    return LineEditSpec(
        action=action,  # type: ignore[arg-type]
        start_line=start if action != "append" and action != "prepend" else 0,
        end_line=end if ranged else 0,
        content="" if action == "delete" else content,
    )


def line_edit_overlap(edits: tuple[LineEditSpec, ...]) -> str | None:
    """Why line edits of one file conflict (overlapping ranges, an insert inside a range), or None.

    The rule is the applier's (``autopack_common.line_edits``); appends and prepends sit at the
    file's ends and never conflict, so they are left out (the file's length is not known here).
    """
    spans = [
        LineSpan(index, edit.start_line, edit.end_line if edit.action != "insert" else edit.start_line - 1)
        for index, edit in enumerate(edits)
        if edit.action in ("insert", "replace", "delete")
    ]
    conflict = first_conflict(spans)
    if conflict is None:
        return None
    first, second = sorted(conflict, key=span_order)  # a range comes before an insert inside it
    if second.inserts:
        return f"insert before line {second.start} falls inside lines {first.start}-{first.end}"
    return f"lines {first.start}-{first.end} and {second.start}-{second.end} overlap"


def _search_replace(where: str, item: object) -> SearchReplaceSpec:
    if not isinstance(item, dict) or not isinstance(item.get("search"), str):
        raise OutputFormatError("invalid_operation", f"{where}: needs string 'search' and 'replace'")
    replace = item.get("replace", "")
    if not isinstance(replace, str):
        raise OutputFormatError("invalid_operation", f"{where}.replace: must be a string")
    return SearchReplaceSpec(search=item["search"], replace=replace)


def _edits(where: str, items: object) -> tuple[EditSpec, ...]:
    if not isinstance(items, list) or not items:
        raise OutputFormatError("invalid_operation", f"{where}: required non-empty array for edit")
    edits: list[EditSpec] = []
    for index, item in enumerate(items):
        if isinstance(item, dict) and "search" in item:
            edits.append(_search_replace(f"{where}[{index}]", item))
        else:
            edits.append(_line_edit(where, index, item))
    kinds = {type(edit) for edit in edits}
    if len(kinds) > 1:
        raise OutputFormatError(
            "invalid_operation", f"{where}: line edits and search/replace cannot be mixed"
        )
    line_edits = tuple(edit for edit in edits if isinstance(edit, LineEditSpec))
    problem = line_edit_overlap(line_edits)
    if problem:
        raise OutputFormatError("invalid_operation", f"{where}: {problem}")
    return tuple(edits)


def operation_from_item(where: str, item: object) -> FileOp:
    """One validated operation from a JSON object (full content, delete, or edits)."""
    if not isinstance(item, dict):
        raise OutputFormatError("invalid_operation", f"{where}: must be an object")
    path = item.get("path")
    problem = path_problem(path)
    if problem:
        raise OutputFormatError("invalid_operation", f"{where}.path {path!r}: {problem}")
    mode = item.get("mode")
    if not isinstance(mode, str) or mode.strip().lower() not in FILE_MODES:
        raise OutputFormatError(
            "invalid_operation", f"{where}.mode {mode!r}: must be one of {', '.join(FILE_MODES)}"
        )
    mode = mode.strip().lower()
    content = item.get("new_content")
    if mode == "delete":
        if content not in (None, ""):
            raise OutputFormatError("invalid_operation", f"{where}.new_content: must be empty for delete")
        return FileOp(path=str(path), mode="delete")
    if mode == "edit":
        return FileOp(path=str(path), mode="edit", edits=_edits(f"{where}.edits", item.get("edits")))
    if not isinstance(content, str):
        raise OutputFormatError("invalid_operation", f"{where}.new_content: required string for {mode}")
    return FileOp(path=str(path), mode=mode, new_content=content)  # type: ignore[arg-type]


def check_unique_paths(operations: tuple[FileOp, ...], label: str = "files") -> None:
    seen: set[str] = set()
    for index, operation in enumerate(operations):
        if operation.path in seen:
            raise OutputFormatError(
                "invalid_operation", f"{label}[{index}].path {operation.path!r}: appears more than once"
            )
        seen.add(operation.path)


def _skip_space(text: str, index: int) -> int:
    while index < len(text) and text[index] in " \t\r\n":
        index += 1
    return index


def _salvage(text: str, start: int) -> tuple[list[object], str, int]:
    """Walk the cut-off wrapper key by key and keep each complete value and file object.

    Returns the complete file objects, the summary, and the offset where reading stopped
    (the start of the file object being written when the output ended).
    """
    files: list[object] = []
    summary = ""
    index = start + 1
    while True:
        index = _skip_space(text, index)
        if index >= len(text) or text[index] == "}":
            return files, summary, index
        if text[index] == ",":
            index += 1
            continue
        try:
            key, index = _DECODER.raw_decode(text, index)
        except ValueError:
            return files, summary, index
        index = _skip_space(text, index)
        if not isinstance(key, str) or index >= len(text) or text[index] != ":":
            return files, summary, index
        index = _skip_space(text, index + 1)
        if key in ("files", "operations") and text.startswith("[", index):
            index += 1
            while True:
                index = _skip_space(text, index)
                if index >= len(text):
                    return files, summary, index
                if text[index] == ",":
                    index += 1
                    continue
                if text[index] == "]":
                    index += 1
                    break
                try:
                    item, index = _DECODER.raw_decode(text, index)
                except ValueError:
                    return files, summary, index  # the file being written when the output stopped
                files.append(item)
            continue
        try:
            value, index = _DECODER.raw_decode(text, index)
        except ValueError:
            return files, summary, index
        if key == "summary" and isinstance(value, str):
            summary = value.strip()


_PATH_VALUE = re.compile(r'"path"\s*:\s*"((?:[^"\\\n]|\\.)+)"')


def incomplete_path(tail: str) -> str | None:
    """The path of the operation a cut-off answer was writing (its ``"path"`` value), if it got that far."""
    match = _PATH_VALUE.search(tail)
    if match is None:
        return None
    try:
        path = json.loads(f'"{match.group(1)}"')
    except ValueError:
        return None
    return path if path_problem(path) is None else None


def valid_prefix(items: list[object], label: str = "files") -> tuple[FileOp, ...]:
    """The operations before the first invalid one (what a failed answer still contained)."""
    kept: list[FileOp] = []
    for index, item in enumerate(items):
        try:
            operation = operation_from_item(f"{label}[{index}]", item)
        except OutputFormatError:
            break
        if any(op.path == operation.path for op in kept):
            break
        kept.append(operation)
    return tuple(kept)


def _validated(items: list[object], label: str = "files") -> tuple[FileOp, ...]:
    try:
        operations = tuple(operation_from_item(f"{label}[{index}]", item) for index, item in enumerate(items))
        check_unique_paths(operations, label)
    except OutputFormatError as error:
        raise OutputFormatError(error.reason, error.problem, valid_prefix(items, label)) from None
    return operations


def _ndjson_items(text: str) -> list[object]:
    """Fallback for answers that put one file object per line (the NDJSON habit)."""
    items: list[object] = []
    for line in text.splitlines():
        if not _NDJSON_LINE.match(line):
            continue
        try:
            items.append(_DECODER.decode(line.strip()))
        except ValueError:
            continue
    return items


def parse_build_output(text: str, *, allow_partial: bool = False) -> ParsedOutput:
    """Operations and summary from an answer; ``allow_partial`` (a truncated answer) enables salvage."""
    match = _WRAPPER_START.search(text)
    if match is None:
        items = _ndjson_items(text)
        if items:
            return ParsedOutput(operations=_validated(items), salvaged=allow_partial)
        match = _OBJECT_START.search(text)
    if match is None:
        if allow_partial:
            return ParsedOutput(operations=(), salvaged=True, dropped=("the answer stopped before any JSON",))
        raise OutputFormatError("no_json", 'the answer contains no JSON object with a "files" array')

    try:
        wrapper, _end = _DECODER.raw_decode(text, match.start())
    except json.JSONDecodeError as error:
        items, summary, stopped = _salvage(text, match.start())
        if not allow_partial:
            raise OutputFormatError(
                "invalid_json",
                f"the JSON object is not valid: {error.msg} at character {error.pos}",
                valid_prefix(items),
            ) from None
        cut = incomplete_path(text[stopped:])
        return ParsedOutput(
            operations=_validated(items),
            summary=summary,
            salvaged=True,
            incomplete_path=cut,
            dropped=(f"the operation for {cut} was cut off",) if cut else (),
        )

    if not isinstance(wrapper, dict):
        raise OutputFormatError("no_files", 'the answer is not a JSON object with a "files" array')
    files = wrapper.get("files", wrapper.get("operations"))
    if files is None:
        if allow_partial:
            return ParsedOutput(operations=(), summary=_summary(wrapper), salvaged=True)
        raise OutputFormatError("no_files", 'the JSON object has no "files" array')
    if not isinstance(files, list):
        raise OutputFormatError("no_files", '"files" must be an array')
    return ParsedOutput(operations=_validated(files), summary=_summary(wrapper))


def _summary(wrapper: dict[str, object]) -> str:
    summary = wrapper.get("summary")
    return summary.strip() if isinstance(summary, str) else ""
