"""Output formats as pluggable pieces: prompt contract + parser, chosen by name.

| name             | the model writes                                   | edits of existing files travel as |
|------------------|----------------------------------------------------|-----------------------------------|
| full_file_json   | ``{"summary", "files": [{path, mode, new_content}]}`` | whole content (MODIFY)         |
| ndjson           | one JSON operation per line                         | whole content or line edits       |
| search_replace   | Aider-style SEARCH/REPLACE blocks (plain text)      | search/replace edits (EDIT)       |
| line_edits       | ``{"files": [{path, mode: "edit", edits: [...]}]}``  | line edits (EDIT)                 |
| unified_diff     | ``--- a/x`` / ``+++ b/x`` / ``@@`` hunks             | one unified diff per file (EDIT)  |

Every parser keeps each *complete* operation of a cut-off answer and names the one it was
writing (``incomplete_path``) so the builder can continue from it; an answer that ended
normally but is malformed raises ``OutputFormatError`` carrying what was complete before the
problem. Aider measured a "JSON tax" (the same model edits worse inside JSON), which is why
the plain-text formats exist beside the JSON ones.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from autopack_builder.models import EditSpec, FileOp, SearchReplaceSpec, UnifiedDiffSpec
from autopack_builder.parsing import (
    OutputFormatError,
    ParsedOutput,
    check_unique_paths,
    incomplete_path,
    operation_from_item,
    parse_build_output,
    path_problem,
)

_DECODER = json.JSONDecoder(strict=False)
_FENCE = re.compile(r"^\s*(```|~~~)")
# A "files"/"operations" array key outside any JSON string (inside one its quotes are escaped).
_FILES_KEY = re.compile(r'(?<!\\)"(?:files|operations)"\s*:\s*\[')


@dataclass(frozen=True)
class OutputFormat:
    """One format: the system prompt's contract, the last line of the user prompt, and the parser."""

    name: str
    contract: str
    answer_instruction: str
    parse: Callable[[str, bool], ParsedOutput]
    # Formats that can express edits of existing files without their whole content.
    edits_existing: bool = False


# --- full-file JSON and line edits (one JSON wrapper) ------------------------------------

FULL_FILE_CONTRACT = """\
OUTPUT CONTRACT
Reply with exactly one JSON object and nothing else: no prose before or after it, no markdown \
code fences. Its shape:
{"summary": "<one or two sentences on what you changed>", "files": [{"path": "<path>", \
"mode": "create", "new_content": "<complete file content>"}]}

Rules for every entry of "files":
- "mode" is "create" (new file), "modify" (replace an existing file) or "delete" (remove a file).
- "new_content" is the COMPLETE content of the file after the change, never a diff or an \
excerpt. Use "" for "delete".
"""

LINE_EDITS_CONTRACT = """\
OUTPUT CONTRACT (structured edits)
Reply with exactly one JSON object and nothing else. Its shape:
{"summary": "<one or two sentences>", "files": [
  {"path": "<existing file>", "mode": "edit", "edits": [
    {"action": "replace", "start_line": 10, "end_line": 12, "content": "<new lines>"},
    {"action": "insert", "start_line": 40, "content": "<lines inserted before line 40>"},
    {"action": "delete", "start_line": 50, "end_line": 55},
    {"action": "append", "content": "<lines added at the end>"},
    {"action": "prepend", "content": "<lines added at the top>"}]},
  {"path": "<new file>", "mode": "create", "new_content": "<complete content>"},
  {"path": "<file to remove>", "mode": "delete"}]}

Rules for edits:
- Line numbers are 1-indexed and inclusive and ALWAYS refer to the file as shown in the context \
(the original), even after earlier edits of the same file.
- Edits of one file must not overlap; an insert must not fall inside a replaced or deleted range.
- Write only the changed lines, never the whole file, for files that already exist.
"""


def _parse_json_wrapper(text: str, truncated: bool) -> ParsedOutput:
    return parse_build_output(text, allow_partial=truncated)


# --- NDJSON ----------------------------------------------------------------------------

NDJSON_CONTRACT = """\
OUTPUT CONTRACT (NDJSON)
Reply with one JSON object PER LINE and nothing else (no array, no fences, no prose). The first \
line is {"summary": "<one or two sentences>"}; every following line is one operation:
{"path": "<path>", "mode": "create", "new_content": "<complete content>"}
{"path": "<existing file>", "mode": "modify", "new_content": "<complete new content>"}
{"path": "<existing file>", "mode": "edit", "edits": [{"action": "replace", "start_line": 3, \
"end_line": 4, "content": "<new lines>"}]}
{"path": "<path>", "mode": "delete"}
Each line must be complete JSON on its own: newlines inside content are written as \\n.
"""


def parse_ndjson(text: str, truncated: bool) -> ParsedOutput:
    """Operations one per line; a cut-off last line is dropped and reported.

    A single ``{"files": [...]}`` payload (the model ignoring NDJSON) is expanded, and file
    objects are salvaged from a cut-off wrapper, as in the monolith's NDJSON hardening.
    """
    if _FILES_KEY.search(text):
        return parse_build_output(text, allow_partial=truncated)
    operations: list[FileOp] = []
    summary = ""
    lines = [line for line in text.splitlines() if line.strip() and not _FENCE.match(line)]
    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        if not stripped.startswith("{"):
            continue  # prose between records
        try:
            record, _end = _DECODER.raw_decode(stripped)
        except ValueError:
            if number == len(lines) and truncated:
                cut = incomplete_path(stripped)
                dropped = f"the last line (operation for {cut or 'an unknown path'}) was cut off"
                return ParsedOutput(tuple(operations), summary, True, cut, (dropped,))
            raise OutputFormatError(
                "invalid_json", f"line {number} is not a complete JSON object", tuple(operations)
            ) from None
        if not isinstance(record, dict):
            raise OutputFormatError(
                "invalid_operation", f"line {number}: must be an object", tuple(operations)
            )
        if "path" not in record:
            if isinstance(record.get("summary"), str):
                summary = record["summary"].strip()
            continue
        try:
            operation = operation_from_item(f"line {number}", record)
            check_unique_paths((*operations, operation), "operations")
        except OutputFormatError as error:
            raise OutputFormatError(error.reason, error.problem, tuple(operations)) from None
        operations.append(operation)
    if not operations and not summary and text.strip() and not truncated:
        raise OutputFormatError("no_json", "the answer contains no NDJSON operation")
    return ParsedOutput(tuple(operations), summary, truncated)


# --- search/replace blocks -------------------------------------------------------------

SEARCH_REPLACE_CONTRACT = """\
OUTPUT CONTRACT (search/replace blocks)
Start with one line "SUMMARY: <one or two sentences>". Then, for every change, write the file's \
path alone on a line, followed by one or more blocks:
path/to/file.py
<<<<<<< SEARCH
<exact lines copied from the current file>
=======
<the lines that replace them>
>>>>>>> REPLACE

Rules:
- SEARCH must match the current file EXACTLY (whitespace, indentation, comments) and only once; \
include enough lines to be unique. Blocks of one file apply in order.
- To create a new file, give its path and one block with an EMPTY SEARCH section and the whole \
content in the replace section.
- To delete a file write a line "DELETE path/to/file".
- No JSON, no diffs, nothing but the SUMMARY line, paths, blocks and DELETE lines.
"""

_SEARCH = re.compile(r"^\s*<{5,9} ?SEARCH\s*$")
_DIVIDER = re.compile(r"^\s*={5,9}\s*$")
_REPLACE = re.compile(r"^\s*>{5,9} ?REPLACE\s*$")
_DELETE = re.compile(r"^\s*DELETE\s+(\S+)\s*$")
_SUMMARY = re.compile(r"^\s*SUMMARY:\s*(.*)$")


def _clean_path(line: str) -> str:
    return line.strip().strip("`*#:").strip()


def parse_search_replace(text: str, truncated: bool) -> ParsedOutput:
    """Blocks grouped per path, in first-seen order; a cut block drops its whole file's operation."""
    lines = text.splitlines(keepends=True)
    blocks: dict[str, list[SearchReplaceSpec]] = {}
    deletes: list[str] = []
    summary = ""
    last_path: str | None = None
    index = 0

    def fail(reason: str, problem: str) -> OutputFormatError:
        return OutputFormatError(reason, problem, _sr_operations(blocks, deletes))

    while index < len(lines):
        line = lines[index]
        if _SEARCH.match(line):
            if last_path is None:
                raise fail("invalid_block", f"line {index + 1}: SEARCH block without a file path before it")
            search: list[str] = []
            replace: list[str] = []
            index += 1
            while index < len(lines) and not _DIVIDER.match(lines[index]):
                search.append(lines[index])
                index += 1
            divider_found = index < len(lines)
            index += 1
            while index < len(lines) and not _REPLACE.match(lines[index]):
                replace.append(lines[index])
                index += 1
            if not divider_found or index >= len(lines):
                if truncated:
                    blocks.pop(last_path, None)
                    dropped = f"the block for {last_path} was cut off; its operation was dropped"
                    return ParsedOutput(_sr_operations(blocks, deletes), summary, True, last_path, (dropped,))
                raise fail("invalid_block", f"the block for {last_path} is not terminated (>>>>>>> REPLACE)")
            blocks.setdefault(last_path, []).append(SearchReplaceSpec("".join(search), "".join(replace)))
            index += 1
            continue
        summary_match = _SUMMARY.match(line)
        delete_match = _DELETE.match(line)
        if summary_match and not summary:
            summary = summary_match.group(1).strip()
        elif delete_match:
            path = _clean_path(delete_match.group(1))
            problem = path_problem(path)
            if problem:
                raise fail("invalid_operation", f"DELETE {path!r}: {problem}")
            deletes.append(path)
        elif line.strip() and not _FENCE.match(line):
            candidate = _clean_path(line)
            if path_problem(candidate) is None and " " not in candidate:
                last_path = candidate
            elif _DIVIDER.match(line) or _REPLACE.match(line):
                raise fail("invalid_block", f"line {index + 1}: block marker outside a SEARCH block")
        index += 1
    if not blocks and not deletes:
        if truncated:
            return ParsedOutput((), summary, True, last_path, ("the answer stopped before any block",))
        if text.strip():
            raise OutputFormatError("no_blocks", "the answer contains no SEARCH/REPLACE block")
    conflicts = sorted(set(deletes) & set(blocks))
    if conflicts:
        raise fail("invalid_operation", f"{conflicts[0]!r} is both edited and deleted")
    if truncated and last_path in blocks:
        # the cut may have come before more blocks of the same file: continue from that file
        blocks.pop(last_path)
        dropped = f"the answer stopped after a block of {last_path}; its operation is continued"
        return ParsedOutput(_sr_operations(blocks, deletes), summary, True, last_path, (dropped,))
    return ParsedOutput(_sr_operations(blocks, deletes), summary, truncated)


def _sr_operations(blocks: dict[str, list[SearchReplaceSpec]], deletes: Sequence[str]) -> tuple[FileOp, ...]:
    operations: list[FileOp] = []
    for path, edits in blocks.items():
        if len(edits) == 1 and not edits[0].search.strip():
            operations.append(FileOp(path=path, mode="create", new_content=edits[0].replace))
        else:
            operations.append(FileOp(path=path, mode="edit", edits=tuple(edits)))
    operations += [FileOp(path=path, mode="delete") for path in dict.fromkeys(deletes)]
    return tuple(operations)


# --- unified diff ----------------------------------------------------------------------

UNIFIED_DIFF_CONTRACT = """\
OUTPUT CONTRACT (unified diff)
Start with one line "SUMMARY: <one or two sentences>", then ONE unified diff covering every \
change, as `git diff` writes it, and nothing else:
--- a/path/to/file.py
+++ b/path/to/file.py
@@ -12,3 +12,4 @@
 unchanged context line
-removed line
+added line
+added line
 unchanged context line

Rules:
- Hunk headers must have correct line numbers and counts; give 3 lines of context.
- A new file uses "--- /dev/null" and "+++ b/<path>" with one hunk "@@ -0,0 +1,N @@".
- A deleted file uses "--- a/<path>" and "+++ /dev/null".
"""

_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


def _diff_path(header: str) -> str | None:
    """``a/x`` / ``b/x`` / ``/dev/null`` from a ---/+++ line (None for /dev/null)."""
    value = header[4:].split("\t")[0].strip()
    if value == "/dev/null":
        return None
    return value[2:] if value.startswith(("a/", "b/")) else value


@dataclass
class _FileDiff:
    old: str | None
    new: str | None
    lines: list[str]
    added: list[str]
    complete: bool = True


def parse_unified_diff(text: str, truncated: bool) -> ParsedOutput:
    """One operation per file: new -> create, /dev/null target -> delete, else an EDIT with its diff."""
    lines = text.splitlines(keepends=True)
    summary = ""
    files: list[_FileDiff] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        summary_match = _SUMMARY.match(line)
        if summary_match and not summary and not files:
            summary = summary_match.group(1).strip()
        if line.startswith("--- ") and index + 1 < len(lines) and lines[index + 1].startswith("+++ "):
            current = _FileDiff(_diff_path(line), _diff_path(lines[index + 1]), [line, lines[index + 1]], [])
            files.append(current)
            index += 2
            while index < len(lines):
                hunk = _HUNK.match(lines[index])
                if hunk is None:
                    break
                old_left = int(hunk.group(2)) if hunk.group(2) is not None else 1
                new_left = int(hunk.group(4)) if hunk.group(4) is not None else 1
                current.lines.append(lines[index])
                index += 1
                while index < len(lines) and (old_left > 0 or new_left > 0):
                    body = lines[index]
                    marker = body[:1]
                    if body.startswith("\\"):
                        current.lines.append(body)
                    elif marker == " " or body in ("\n", "\r\n"):
                        old_left, new_left = old_left - 1, new_left - 1
                        current.lines.append(body if marker == " " else " " + body)
                    elif marker == "-":
                        old_left -= 1
                        current.lines.append(body)
                    elif marker == "+":
                        new_left -= 1
                        current.lines.append(body)
                        current.added.append(body[1:])
                    else:
                        break
                    index += 1
                while index < len(lines) and lines[index].startswith("\\"):
                    current.lines.append(lines[index])
                    index += 1
                if old_left != 0 or new_left != 0:
                    current.complete = False
                    break
            if not current.complete:
                break
            continue
        index += 1
    complete = [diff for diff in files if diff.complete]
    broken = next((diff for diff in files if not diff.complete), None)
    operations = _diff_operations(complete)
    if broken is not None:
        path = broken.new or broken.old
        if truncated:
            dropped = f"the diff of {path} was cut off; its operation was dropped"
            return ParsedOutput(operations, summary, True, path, (dropped,))
        raise OutputFormatError(
            "invalid_diff", f"the diff of {path}: a hunk's line counts do not match its header", operations
        )
    if not files:
        if truncated:
            return ParsedOutput((), summary, True, None, ("the answer stopped before any diff",))
        raise OutputFormatError("no_diff", "the answer contains no unified diff (--- / +++ / @@)")
    if truncated:
        # the cut may have come before more hunks of the last file: continue from that file
        last = files[-1].new or files[-1].old
        kept = tuple(op for op in operations if op.path != last)
        return ParsedOutput(
            kept, summary, True, last, (f"the diff of {last} may be incomplete; it is continued",)
        )
    return ParsedOutput(operations, summary, truncated)


def _diff_operations(diffs: Sequence[_FileDiff]) -> tuple[FileOp, ...]:
    by_path: dict[str, FileOp] = {}
    for diff in diffs:
        path = diff.new or diff.old
        problem = path_problem(path)
        if path is None or problem:
            raise OutputFormatError("invalid_operation", f"diff path {path!r}: {problem or 'missing'}")
        if diff.old is None:
            operation = FileOp(path=path, mode="create", new_content="".join(diff.added))
        elif diff.new is None:
            operation = FileOp(path=path, mode="delete")
        else:
            previous = by_path.get(path)
            edits: tuple[EditSpec, ...] = previous.edits if previous is not None else ()
            operation = FileOp(path=path, mode="edit", edits=(*edits, UnifiedDiffSpec("".join(diff.lines))))
        by_path[path] = operation
    return tuple(by_path.values())


# --- registry and policy ---------------------------------------------------------------

FORMATS: dict[str, OutputFormat] = {
    "full_file_json": OutputFormat(
        "full_file_json",
        FULL_FILE_CONTRACT,
        "Reply with the JSON object only, as the output contract describes.",
        _parse_json_wrapper,
    ),
    "ndjson": OutputFormat(
        "ndjson",
        NDJSON_CONTRACT,
        "Reply with NDJSON only: the summary line, then one operation per line.",
        parse_ndjson,
        edits_existing=True,
    ),
    "search_replace": OutputFormat(
        "search_replace",
        SEARCH_REPLACE_CONTRACT,
        "Reply with the SUMMARY line and SEARCH/REPLACE blocks only.",
        parse_search_replace,
        edits_existing=True,
    ),
    "line_edits": OutputFormat(
        "line_edits",
        LINE_EDITS_CONTRACT,
        "Reply with the JSON object only; edit existing files by line, never rewrite them whole.",
        _parse_json_wrapper,
        edits_existing=True,
    ),
    "unified_diff": OutputFormat(
        "unified_diff",
        UNIFIED_DIFF_CONTRACT,
        "Reply with the SUMMARY line and the unified diff only.",
        parse_unified_diff,
        edits_existing=True,
    ),
}

# After a parse failure or a truncation, the next request (or attempt) uses this format.
FALLBACK: dict[str, str] = {
    "full_file_json": "ndjson",
    "ndjson": "search_replace",
    "search_replace": "line_edits",
    "line_edits": "search_replace",
    "unified_diff": "search_replace",
}

# Seed 004, Stage 2 "3-bucket policy" by the largest file the phase changes.
FULL_FILE_MAX_LINES = 500
SEARCH_REPLACE_MAX_LINES = 1000
# A scope whose existing files total more lines than this uses structured edits.
LARGE_SCOPE_LINES = 3000


def output_format(name: str) -> OutputFormat:
    return FORMATS[name]


def choose_format(existing_line_counts: Sequence[int], forced: str = "", previous_trouble: str = "") -> str:
    """The format for a request: forced > fallback after trouble > size buckets.

    ``existing_line_counts`` are the line counts of the existing files the phase may change;
    ``previous_trouble`` is the format whose answer was cut off or malformed last attempt.
    """
    if forced:
        return forced
    if previous_trouble:
        return FALLBACK[previous_trouble]
    largest = max(existing_line_counts, default=0)
    if largest > SEARCH_REPLACE_MAX_LINES or sum(existing_line_counts) > LARGE_SCOPE_LINES:
        return "line_edits"
    if largest > FULL_FILE_MAX_LINES:
        return "search_replace"
    return "full_file_json"
