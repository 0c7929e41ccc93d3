"""What the builder knows about the workspace, and how it normalises the model's modes with it.

The builder sees the workspace only through the request: ``context_files`` (full content unless
``summarized``) and ``existing_paths`` (a listing, e.g. the applier's ReadFiles of the scope).

The rule, in order:
1. A path in either is known to exist: ``create`` becomes ``modify`` (full content) - the
   monolith burned an attempt on "create of an existing file".
2. When ``existing_paths`` was given, a path in neither is known NOT to exist: ``modify``
   becomes ``create``, and an edit whose only block has an empty SEARCH becomes ``create``.
3. Without that listing nothing is known about other paths and the model's mode stands
   (the applier decides; a context selection may have left an existing file out).

Edits of a file whose full content is known carry its SHA-256 as ``base_sha256`` (the applier
refuses them if the file changed since) and line edits are checked against its line count.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from autopack_common.content import text_sha256

from autopack_builder.models import BuildTask, FileOp, LineEditSpec, SearchReplaceSpec
from autopack_builder.parsing import OutputFormatError


@dataclass(frozen=True)
class Workspace:
    """Known files: path -> full content, or None when it exists but its content was not given whole."""

    files: Mapping[str, str | None]
    listing_given: bool

    @classmethod
    def from_task(cls, task: BuildTask) -> Workspace:
        files: dict[str, str | None] = dict.fromkeys(task.existing_paths)
        for context_file in task.context_files:
            files[context_file.path] = None if context_file.summarized else context_file.content
        return cls(files=files, listing_given=bool(task.existing_paths))

    def exists(self, path: str) -> bool | None:
        """True/False when known, None when nothing is known about the path."""
        if path in self.files:
            return True
        return False if self.listing_given else None


def _line_count(content: str) -> int:
    return len(content.splitlines())


def normalize_operations(
    operations: Sequence[FileOp], workspace: Workspace
) -> tuple[tuple[FileOp, ...], tuple[str, ...]]:
    """Operations with modes fixed and base hashes set, plus one note per change made."""
    result: list[FileOp] = []
    notes: list[str] = []
    for index, op in enumerate(operations):
        exists = workspace.exists(op.path)
        content = workspace.files.get(op.path)
        if op.mode == "create" and exists:
            op = replace(op, mode="modify")
            notes.append(f"{op.path}: create of an existing file -> modify")
        elif op.mode == "modify" and exists is False:
            op = replace(op, mode="create")
            notes.append(f"{op.path}: modify of a missing file -> create")
        elif op.mode == "edit":
            only = op.edits[0] if len(op.edits) == 1 else None
            if exists is False and isinstance(only, SearchReplaceSpec) and not only.search.strip():
                op = FileOp(path=op.path, mode="create", new_content=only.replace)
                notes.append(f"{op.path}: edit of a missing file with an empty SEARCH -> create")
            elif content is not None:
                _check_line_edits(index, op, _line_count(content))
                op = replace(op, base_sha256=text_sha256(content))
        result.append(op)
    return tuple(result), tuple(notes)


def _check_line_edits(index: int, op: FileOp, line_count: int) -> None:
    for number, edit in enumerate(op.edits):
        if not isinstance(edit, LineEditSpec):
            continue
        limit = line_count + 1 if edit.action == "insert" else line_count
        last = max(edit.start_line, edit.end_line)
        if last > limit:
            raise OutputFormatError(
                "invalid_operation",
                f"operations[{index}] {op.path}: edits[{number}] {edit.action} reaches line {last}, "
                f"but the file has {line_count} line(s)",
            )
