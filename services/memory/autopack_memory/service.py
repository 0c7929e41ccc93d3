"""gRPC transport of MemoryService: messages in, domain call, messages out, span attributes.

Span attributes carry counts and modes only, never texts or file contents: traces are
shared more widely than the code they describe.
"""

from __future__ import annotations

import grpc
from autopack.memory.v1 import memory_pb2, memory_pb2_grpc
from autopack_common.server import ServiceBinding
from autopack_common.telemetry import PHASE_ID_KEY, RUN_ID_KEY
from opentelemetry import trace

from autopack_memory.memory import Memory
from autopack_memory.selection import Candidate, FileChoice, SelectionMode
from autopack_memory.vectors import StoredItem

_MODES = {
    SelectionMode.SEMANTIC: memory_pb2.SELECTION_MODE_SEMANTIC,
    SelectionMode.LEXICAL: memory_pb2.SELECTION_MODE_LEXICAL,
}


def _choice(choice: FileChoice) -> memory_pb2.FileSelection:
    return memory_pb2.FileSelection(
        path=choice.path, tokens=choice.tokens, score=choice.score, reason=choice.reason
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
        return memory_pb2.UpsertResponse(upserted=result.upserted, embedding_model=result.embedding_model)

    def Search(
        self, request: memory_pb2.SearchRequest, context: grpc.ServicerContext
    ) -> memory_pb2.SearchResponse:
        span = trace.get_current_span()
        span.set_attribute("autopack.memory.collection", request.collection[:128])
        result = self._memory.search(request.collection, request.query, request.limit, dict(request.filter))
        span.set_attribute("autopack.memory.hits", len(result.hits))
        span.set_attribute("autopack.memory.mode", "lexical" if result.lexical else "semantic")
        return memory_pb2.SearchResponse(
            hits=[
                memory_pb2.SearchHit(
                    item=memory_pb2.MemoryItem(
                        id=hit.item.id, text=hit.item.text, metadata=hit.item.metadata
                    ),
                    score=hit.score,
                )
                for hit in result.hits
            ]
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
        candidates = [Candidate(path=c.path, content=c.content, pinned=c.pinned) for c in request.candidates]
        selection = self._memory.select_context(request.query, candidates, request.token_budget)
        span.set_attribute("autopack.memory.mode", selection.mode.value)
        span.set_attribute("autopack.memory.kept", len(selection.kept))
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
        )


def memory_binding(servicer: MemoryServicer) -> ServiceBinding:
    """How the chassis registers the servicer (health and reflection use the full name)."""
    return ServiceBinding(
        full_name=memory_pb2.DESCRIPTOR.services_by_name["MemoryService"].full_name,
        add_to_server=memory_pb2_grpc.add_MemoryServiceServicer_to_server,
        servicer=servicer,
    )
