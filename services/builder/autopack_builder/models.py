"""Plain data the builder's modules share (no gRPC or SDK types, so each module tests alone)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from autopack_common.truncation import is_truncating_stop_reason

FileMode = Literal["create", "modify", "delete", "edit"]
FILE_MODES: tuple[FileMode, ...] = ("create", "modify", "delete", "edit")
LineAction = Literal["insert", "replace", "delete", "append", "prepend"]
LINE_ACTIONS: tuple[LineAction, ...] = ("insert", "replace", "delete", "append", "prepend")


@dataclass(frozen=True)
class ContextFile:
    """A file offered to the model as read-only context."""

    path: str
    content: str
    summarized: bool = False


@dataclass(frozen=True)
class BuildTask:
    """One phase attempt to build, already validated by the servicer."""

    run_id: str
    phase_id: str
    description: str
    max_tokens: int
    attempt: int = 1
    category: str = ""
    complexity: str = ""
    deliverables: tuple[str, ...] = ()
    scope_paths: tuple[str, ...] = ()
    read_only_paths: tuple[str, ...] = ()
    context_files: tuple[ContextFile, ...] = ()
    estimate_id: str = ""
    selected_budget: int = 0
    model: str = ""
    previous_failure: str = ""
    intention_context: str = ""
    memory_notes: tuple[str, ...] = ()
    validation_command: tuple[str, ...] = ()
    # Output format forced by the request ("" = the policy chooses).
    output_format: str = ""
    # Paths the caller knows exist in the workspace, beyond the context files.
    existing_paths: tuple[str, ...] = ()
    # The phase's attempt limit (0 = unknown): no empty-files retry on the last attempt.
    max_attempts: int = 0


@dataclass(frozen=True)
class LineEditSpec:
    """A structured edit by line (1-indexed, inclusive, numbers refer to the original file)."""

    action: LineAction
    start_line: int = 0
    end_line: int = 0
    content: str = ""


@dataclass(frozen=True)
class SearchReplaceSpec:
    """An Aider-style block: ``search`` must match exactly once."""

    search: str
    replace: str


@dataclass(frozen=True)
class UnifiedDiffSpec:
    """A unified diff of one file (``--- a/x``, ``+++ b/x``, hunks)."""

    diff: str


EditSpec = LineEditSpec | SearchReplaceSpec | UnifiedDiffSpec


@dataclass(frozen=True)
class FileOp:
    """One file change: whole content (create/modify), delete, or edits the applier resolves (edit)."""

    path: str
    mode: FileMode
    new_content: str = ""
    edits: tuple[EditSpec, ...] = ()
    # SHA-256 of the content the edits were written against ("" = unknown: no stale check).
    base_sha256: str = ""


@dataclass(frozen=True)
class ChatRequest:
    """One request to a provider; run/phase/attempt/call let the replay provider find its recording."""

    model: str
    max_tokens: int
    system: str
    user: str
    run_id: str = ""
    phase_id: str = ""
    attempt: int = 1
    call: int = 1
    # "builder", "doctor" or "auditor": lets the replay provider find the right recording.
    role: str = "builder"


@dataclass(frozen=True)
class ChatResult:
    """What a provider answered, with usage exactly as it reported it (None = not reported)."""

    provider: str
    model: str
    text: str
    stop_reason: str
    input_tokens: int | None
    output_tokens: int | None
    total_tokens: int
    response_id: str = ""
    cache_read_input_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    reasoning_output_tokens: int | None = None

    @property
    def truncated(self) -> bool:
        return is_truncating_stop_reason(self.stop_reason)


@dataclass(frozen=True)
class LlmCallRecord:
    """One finished provider call as the builder accounts it (and stores it)."""

    provider: str
    model: str
    max_tokens: int
    input_tokens: int | None
    output_tokens: int | None
    total_tokens: int
    stop_reason: str
    duration_ms: int
    cache_read_input_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    reasoning_output_tokens: int | None = None
    # Price-table cost in USD; None when the model has no price.
    cost_usd: float | None = None
    # A request that got no answer (429, 529, 5xx, timeout): what went wrong; "" for an answer.
    error: str = ""
    # Row id in the builder's store (0 when no store is configured).
    call_id: int = 0
    role: str = "builder"
    output_format: str = ""
    parse_outcome: str = ""
    # The model name the request asked for (the answer may name a dated version).
    requested_model: str = ""


@dataclass(frozen=True)
class BuildResult:
    """The outcome of a successful build: operations plus every call that produced them."""

    operations: tuple[FileOp, ...]
    calls: tuple[LlmCallRecord, ...]
    summary: str = ""
    salvaged: bool = False
    output_format: str = ""
    continuations: int = 0
    normalizations: tuple[str, ...] = ()

    @property
    def final_call(self) -> LlmCallRecord:
        return self.calls[-1]

    @property
    def truncated(self) -> bool:
        return is_truncating_stop_reason(self.final_call.stop_reason)
