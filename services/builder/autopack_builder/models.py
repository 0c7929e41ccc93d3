"""Plain data the builder's modules share (no gRPC or SDK types, so each module tests alone)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from autopack_common.truncation import is_truncating_stop_reason

FileMode = Literal["create", "modify", "delete"]
FILE_MODES: tuple[FileMode, ...] = ("create", "modify", "delete")


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


@dataclass(frozen=True)
class FileOp:
    """A full-file change: the whole new content, never a diff."""

    path: str
    mode: FileMode
    new_content: str = ""


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


@dataclass(frozen=True)
class BuildResult:
    """The outcome of a successful build: operations plus every call that produced them."""

    operations: tuple[FileOp, ...]
    calls: tuple[LlmCallRecord, ...]
    summary: str = ""
    salvaged: bool = False

    @property
    def final_call(self) -> LlmCallRecord:
        return self.calls[-1]

    @property
    def truncated(self) -> bool:
        return is_truncating_stop_reason(self.final_call.stop_reason)
