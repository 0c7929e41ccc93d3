"""gRPC transport of MemoryService: messages in, domain call, messages out, span attributes.

Span attributes carry counts and modes only, never texts or file contents: traces are
shared more widely than the code they describe.
"""

from __future__ import annotations

import grpc
from autopack.memory.v1 import memory_pb2, memory_pb2_grpc
from autopack_common.errors import InvalidArgument
from autopack_common.server import ServiceBinding
from autopack_common.telemetry import PHASE_ID_KEY, RUN_ID_KEY
from opentelemetry import trace

from autopack_memory.drift import DriftVerdict
from autopack_memory.memory import Memory
from autopack_memory.records import RecordKind
from autopack_memory.selection import Candidate, FileChoice, SelectionMode
from autopack_memory.store import RecordRow
from autopack_memory.vectors import StoredItem

_MODES = {
    SelectionMode.SEMANTIC: memory_pb2.SELECTION_MODE_SEMANTIC,
    SelectionMode.LEXICAL: memory_pb2.SELECTION_MODE_LEXICAL,
}


_KINDS = {
    memory_pb2.RECORD_KIND_CODE_DOC: RecordKind.CODE_DOC,
    memory_pb2.RECORD_KIND_RUN_SUMMARY: RecordKind.RUN_SUMMARY,
    memory_pb2.RECORD_KIND_ERROR_PATTERN: RecordKind.ERROR_PATTERN,
    memory_pb2.RECORD_KIND_DECISION_LOG: RecordKind.DECISION_LOG,
    memory_pb2.RECORD_KIND_TASK_OUTCOME: RecordKind.TASK_OUTCOME,
}
_KIND_NUMBERS = {kind: number for number, kind in _KINDS.items()}
_VERDICTS = {
    DriftVerdict.ALIGNED: memory_pb2.DRIFT_VERDICT_ALIGNED,
    DriftVerdict.ADVISORY: memory_pb2.DRIFT_VERDICT_ADVISORY,
    DriftVerdict.BLOCKING: memory_pb2.DRIFT_VERDICT_BLOCKING,
}


def _choice(choice: FileChoice) -> memory_pb2.FileSelection:
    return memory_pb2.FileSelection(
        path=choice.path,
        tokens=choice.tokens,
        score=choice.score,
        reason=choice.reason,
        summary=choice.summary,
    )


def _kind(number: int, field: str) -> RecordKind:
    if number not in _KINDS:
        raise InvalidArgument(field, f"must be a RecordKind other than UNSPECIFIED, got {number}")
    return _KINDS[number]


def _record(row: RecordRow) -> memory_pb2.ProjectRecord:
    return memory_pb2.ProjectRecord(
        id=row.id,
        project=row.project,
        kind=_KIND_NUMBERS[RecordKind(row.kind)],
        text=row.text,
        run_id=row.run_id,
        phase_id=row.phase_id,
        metadata=row.metadata,
        created_at=row.created_at,
        expires_at=row.expires_at,
    )


class MemoryServicer(memory_pb2_grpc.MemoryServiceServicer):
    """Thin adapter over :class:`Memory`; domain errors become status codes in the chassis."""

    def __init__(self, memory: Memory) -> None:
        self._memory = memory

    def Upsert(
        self, request: memory_pb2.UpsertRequest, context: grpc.ServicerContext
    ) -> memory_pb2.UpsertResponse:
        span = trace.get_current_span()
        span.set_attribute("autopack.memory.collection", request.collection[:128])
        span.set_attribute("autopack.memory.items", len(request.items))
        items = [
            StoredItem(id=item.id, text=item.text, metadata=dict(item.metadata)) for item in request.items
        ]
        result = self._memory.upsert(request.collection, items)
        span.set_attribute("autopack.memory.upserted", result.upserted)
        span.set_attribute("autopack.memory.embedding_model", result.embedding_model)
        span.set_attribute("autopack.memory.degraded", result.degraded)
        return memory_pb2.UpsertResponse(
            upserted=result.upserted, embedding_model=result.embedding_model, degraded=result.degraded
        )

    def Search(
        self, request: memory_pb2.SearchRequest, context: grpc.ServicerContext
    ) -> memory_pb2.SearchResponse:
        span = trace.get_current_span()
        span.set_attribute("autopack.memory.collection", request.collection[:128])
        result = self._memory.search(request.collection, request.query, request.limit, dict(request.filter))
        span.set_attribute("autopack.memory.hits", len(result.hits))
        span.set_attribute("autopack.memory.mode", "lexical" if result.lexical else "semantic")
        span.set_attribute("autopack.memory.degraded", result.degraded)
        return memory_pb2.SearchResponse(
            degraded=result.degraded,
            hits=[
                memory_pb2.SearchHit(
                    item=memory_pb2.MemoryItem(
                        id=hit.item.id, text=hit.item.text, metadata=hit.item.metadata
                    ),
                    score=hit.score,
                )
                for hit in result.hits
            ],
        )

    def SelectContext(
        self, request: memory_pb2.SelectContextRequest, context: grpc.ServicerContext
    ) -> memory_pb2.SelectContextResponse:
        span = trace.get_current_span()
        # Baggage normally tags the span; the request's ids cover callers that send none.
        attributes = getattr(span, "attributes", None) or {}
        if request.run_id and RUN_ID_KEY not in attributes:
            span.set_attribute(RUN_ID_KEY, request.run_id)
        if request.phase_id and PHASE_ID_KEY not in attributes:
            span.set_attribute(PHASE_ID_KEY, request.phase_id)
        span.set_attribute("autopack.memory.candidates", len(request.candidates))
        span.set_attribute("autopack.memory.token_budget", request.token_budget)
        span.set_attribute("autopack.memory.by_workspace", bool(request.workspace))
        candidates = [Candidate(path=c.path, content=c.content, pinned=c.pinned) for c in request.candidates]
        selection = self._memory.select_context(
            request.query,
            candidates,
            request.token_budget,
            workspace=request.workspace,
            pinned_paths=list(request.pinned_paths),
            scope_paths=list(request.scope_paths),
            max_summaries=request.max_summaries,
            summary_budget_percent=request.summary_budget_percent,
        )
        span.set_attribute("autopack.memory.mode", selection.mode.value)
        span.set_attribute("autopack.memory.kept", len(selection.kept))
        span.set_attribute("autopack.memory.summarized", len(selection.summarized))
        span.set_attribute("autopack.memory.omitted", len(selection.omitted))
        span.set_attribute("autopack.memory.used_tokens", selection.used_tokens)
        span.set_attribute("autopack.memory.embedding_cache_hits", selection.embedding_cache_hits)
        span.set_attribute("autopack.memory.embeddings_computed", selection.embeddings_computed)
        if selection.fallback_reason:
            span.set_attribute("autopack.memory.fallback_reason", selection.fallback_reason)
        return memory_pb2.SelectContextResponse(
            kept=[_choice(choice) for choice in selection.kept],
            omitted=[_choice(choice) for choice in selection.omitted],
            used_tokens=selection.used_tokens,
            mode=_MODES[selection.mode],
            summarized=[_choice(choice) for choice in selection.summarized],
            fallback_reason=selection.fallback_reason or "",
        )

    def IndexWorkspace(
        self, request: memory_pb2.IndexWorkspaceRequest, context: grpc.ServicerContext
    ) -> memory_pb2.IndexWorkspaceResponse:
        span = trace.get_current_span()
        span.set_attribute("autopack.memory.files", len(request.files))
        change = self._memory.index_workspace(
            request.workspace,
            [(f.path, f.content_sha256, f.content) for f in request.files],
            replace=request.replace,
        )
        span.set_attribute("autopack.memory.updated", change.updated)
        span.set_attribute("autopack.memory.needs_content", len(change.needs_content))
        return memory_pb2.IndexWorkspaceResponse(
            files=change.files,
            updated=change.updated,
            unchanged=change.unchanged,
            removed=change.removed,
            needs_content=change.needs_content,
        )

    def Remember(
        self, request: memory_pb2.RememberRequest, context: grpc.ServicerContext
    ) -> memory_pb2.RememberResponse:
        record = request.record
        result = self._memory.records.remember(
            record.project,
            _kind(record.kind, "record.kind") if record.kind else None,
            record.text,
            run_id=record.run_id,
            phase_id=record.phase_id,
            metadata=dict(record.metadata),
            ttl_seconds=request.ttl_seconds,
        )
        trace.get_current_span().set_attribute("autopack.memory.indexed", result.indexed)
        return memory_pb2.RememberResponse(id=result.id, indexed=result.indexed)

    def Recall(
        self, request: memory_pb2.RecallRequest, context: grpc.ServicerContext
    ) -> memory_pb2.RecallResponse:
        kinds = [_kind(number, f"kinds[{index}]") for index, number in enumerate(request.kinds)]
        result = self._memory.records.recall(
            request.project, request.query, kinds, request.limit, request.exclude_run_id
        )
        span = trace.get_current_span()
        span.set_attribute("autopack.memory.hits", len(result.hits))
        span.set_attribute("autopack.memory.mode", "lexical" if result.lexical else "semantic")
        return memory_pb2.RecallResponse(
            hits=[memory_pb2.RecordHit(record=_record(hit.record), score=hit.score) for hit in result.hits],
            mode=memory_pb2.SELECTION_MODE_LEXICAL if result.lexical else memory_pb2.SELECTION_MODE_SEMANTIC,
        )

    def Prune(
        self, request: memory_pb2.PruneRequest, context: grpc.ServicerContext
    ) -> memory_pb2.PruneResponse:
        deleted = self._memory.records.prune(request.project)
        trace.get_current_span().set_attribute("autopack.memory.deleted", deleted)
        return memory_pb2.PruneResponse(deleted=deleted)

    def CheckDrift(
        self, request: memory_pb2.CheckDriftRequest, context: grpc.ServicerContext
    ) -> memory_pb2.CheckDriftResponse:
        check = self._memory.drift.check(request.run_id, request.change_summary, request.intention)
        span = trace.get_current_span()
        span.set_attribute("autopack.memory.drift.similarity", check.similarity)
        span.set_attribute("autopack.memory.drift.verdict", check.verdict.value)
        return memory_pb2.CheckDriftResponse(
            similarity=check.similarity,
            threshold=check.threshold,
            verdict=_VERDICTS[check.verdict],
            intention=check.intention,
            mode=memory_pb2.SELECTION_MODE_LEXICAL if check.lexical else memory_pb2.SELECTION_MODE_SEMANTIC,
        )


def memory_binding(servicer: MemoryServicer) -> ServiceBinding:
    """How the chassis registers the servicer (health and reflection use the full name)."""
    return ServiceBinding(
        full_name=memory_pb2.DESCRIPTOR.services_by_name["MemoryService"].full_name,
        add_to_server=memory_pb2_grpc.add_MemoryServiceServicer_to_server,
        servicer=servicer,
    )
