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

from autopack_builder.models import FILE_MODES, FileOp

# Where the wrapper object starts: the first "{" whose first key is "files" or "summary",
# else (a model that adds its own keys first) the first "{" that opens a JSON object.
_WRAPPER_START = re.compile(r'\{\s*"(?:files|summary)"\s*:')
_OBJECT_START = re.compile(r'\{\s*"[^"\n]{1,64}"\s*:')
_NDJSON_LINE = re.compile(r'^\s*\{\s*"path"\s*:')
_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")
_DECODER = json.JSONDecoder(strict=False)  # models often put raw newlines/tabs inside strings


class OutputFormatError(Exception):
    """The answer cannot be used; ``reason`` is a stable code, the message says what was wrong."""

    def __init__(self, reason: str, problem: str) -> None:
        super().__init__(problem)
        self.reason = reason
        self.problem = problem


@dataclass(frozen=True)
class ParsedOutput:
    """Validated operations; ``salvaged`` means the wrapper was cut off and only complete files were kept."""

    operations: tuple[FileOp, ...]
    summary: str = ""
    salvaged: bool = False


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


def _operation(index: int, item: object) -> FileOp:
    where = f"files[{index}]"
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
    if not isinstance(content, str):
        raise OutputFormatError("invalid_operation", f"{where}.new_content: required string for {mode}")
    return FileOp(path=str(path), mode=mode, new_content=content)  # type: ignore[arg-type]


def _operations(items: list[object]) -> tuple[FileOp, ...]:
    operations = tuple(_operation(index, item) for index, item in enumerate(items))
    seen: set[str] = set()
    for index, operation in enumerate(operations):
        if operation.path in seen:
            raise OutputFormatError(
                "invalid_operation", f"files[{index}].path {operation.path!r}: appears more than once"
            )
        seen.add(operation.path)
    return operations


def _skip_space(text: str, index: int) -> int:
    while index < len(text) and text[index] in " \t\r\n":
        index += 1
    return index


def _salvage(text: str, start: int) -> tuple[list[object], str]:
    """Walk the cut-off wrapper key by key and keep each complete value and file object."""
    files: list[object] = []
    summary = ""
    index = start + 1
    while True:
        index = _skip_space(text, index)
        if index >= len(text) or text[index] == "}":
            return files, summary
        if text[index] == ",":
            index += 1
            continue
        try:
            key, index = _DECODER.raw_decode(text, index)
        except ValueError:
            return files, summary
        index = _skip_space(text, index)
        if not isinstance(key, str) or index >= len(text) or text[index] != ":":
            return files, summary
        index = _skip_space(text, index + 1)
        if key == "files" and text.startswith("[", index):
            index += 1
            while True:
                index = _skip_space(text, index)
                if index >= len(text):
                    return files, summary
                if text[index] == ",":
                    index += 1
                    continue
                if text[index] == "]":
                    index += 1
                    break
                try:
                    item, index = _DECODER.raw_decode(text, index)
                except ValueError:
                    return files, summary  # the file being written when the output stopped
                files.append(item)
            continue
        try:
            value, index = _DECODER.raw_decode(text, index)
        except ValueError:
            return files, summary
        if key == "summary" and isinstance(value, str):
            summary = value.strip()


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
            return ParsedOutput(operations=_operations(items), salvaged=allow_partial)
        match = _OBJECT_START.search(text)
    if match is None:
        if allow_partial:
            return ParsedOutput(operations=(), salvaged=True)
        raise OutputFormatError("no_json", 'the answer contains no JSON object with a "files" array')

    try:
        wrapper, _end = _DECODER.raw_decode(text, match.start())
    except json.JSONDecodeError as error:
        if not allow_partial:
            raise OutputFormatError(
                "invalid_json", f"the JSON object is not valid: {error.msg} at character {error.pos}"
            ) from None
        items, summary = _salvage(text, match.start())
        return ParsedOutput(operations=_operations(items), summary=summary, salvaged=True)

    files = wrapper.get("files")
    if files is None:
        if allow_partial:
            return ParsedOutput(operations=(), summary=_summary(wrapper), salvaged=True)
        raise OutputFormatError("no_files", 'the JSON object has no "files" array')
    if not isinstance(files, list):
        raise OutputFormatError("no_files", '"files" must be an array')
    return ParsedOutput(operations=_operations(files), summary=_summary(wrapper))


def _summary(wrapper: dict[str, object]) -> str:
    summary = wrapper.get("summary")
    return summary.strip() if isinstance(summary, str) else ""
