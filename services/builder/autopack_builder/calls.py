"""The one layer that owns provider requests: trace, account, back off, fail over.

The SDKs never retry (``max_retries=0``), gRPC never retries a Build, so every HTTP request is
made here and counted. A transient failure (429, 529, 5xx, connection) backs off - honouring
the provider's ``retry-after`` - up to ``max_requests_per_model`` requests, then the next model
of the fail-over list gets the same prompt. A persistent 529 therefore costs at most 4 requests
(the default) before fail-over. Other errors (credentials, bad request) fail at once.

Every request gets a ``chat <model>`` CLIENT span (GenAI semantic conventions, never prompt or
answer text) and a row in ``llm_calls`` the moment it returns, answered or not; the prompt hash
and the raw answer go to the row only.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from autopack_common.errors import DomainError, FailedPrecondition
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from autopack_builder.models import ChatRequest, ChatResult, LlmCallRecord
from autopack_builder.providers import ProviderSet, TransientProviderError
from autopack_builder.routing import Role, RoutingTable
from autopack_builder.store import LlmCallStore, Transcript

log = logging.getLogger(__name__)

MAX_REQUESTS_PER_MODEL = 4
MAX_RETRY_AFTER_SECONDS = 60.0
PRUNE_INTERVAL_SECONDS = 3600.0


@dataclass
class CallLog:
    """Every request of one RPC (a build, a diagnosis, a re-plan), in the order they were made."""

    run_id: str
    phase_id: str
    attempt: int
    role: Role = "builder"
    estimate_id: str = ""
    records: list[LlmCallRecord] = field(default_factory=list)
    # Models that used up their requests in this RPC: later calls of the RPC skip them.
    exhausted: dict[str, TransientProviderError] = field(default_factory=dict)

    @property
    def answered(self) -> list[LlmCallRecord]:
        return [record for record in self.records if not record.error]

    def set_outcome(self, call_id: int, parse_outcome: str) -> None:
        """Mark a request's parse outcome on its in-memory record (the store is updated separately)."""
        self.records[:] = [
            replace(record, parse_outcome=parse_outcome) if record.call_id == call_id else record
            for record in self.records
        ]


class CallsFailed(Exception):
    """An RPC that failed after requests were made: ``cause`` is the status, ``calls`` their usage."""

    def __init__(
        self,
        cause: DomainError,
        calls: Sequence[LlmCallRecord],
        reason: str,
        details: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(cause.message)
        self.cause = cause
        self.calls = tuple(calls)
        self.reason = reason
        # Extra ErrorInfo metadata, e.g. what was salvaged from a malformed answer.
        self.details = dict(details or {})


def prompt_sha256(system: str, user: str) -> str:
    """Hash of what the model saw (system and user prompt), to compare calls without storing prompts."""
    return hashlib.sha256(f"{system}\n\x00\n{user}".encode()).hexdigest()


class CallRunner:
    """Makes requests for the builder, the doctor and the re-planner."""

    def __init__(
        self,
        providers: ProviderSet,
        routing: RoutingTable,
        store: LlmCallStore | None,
        *,
        tracer: trace.Tracer | None = None,
        max_requests_per_model: int = MAX_REQUESTS_PER_MODEL,
        backoff_seconds: float = 1.0,
        max_backoff_seconds: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
        answer_retention: timedelta | None = None,
    ) -> None:
        self.providers = providers
        self.routing = routing
        self._store = store
        self._tracer = tracer or trace.get_tracer("autopack.builder")
        self._max_requests = max(1, max_requests_per_model)
        self._backoff = backoff_seconds
        self._max_backoff = max_backoff_seconds
        self._sleep = sleep
        self._retention = answer_retention
        self._next_prune = 0.0
        self._prune_lock = threading.Lock()

    @property
    def store(self) -> LlmCallStore | None:
        return self._store

    def backoff_for(self, retry: int, retry_after: float | None) -> float:
        """The wait before retry ``retry`` (1-based): the provider's retry-after, else exponential."""
        if retry_after is not None:
            return min(retry_after, MAX_RETRY_AFTER_SECONDS)
        return min(self._backoff * 2 ** (retry - 1), self._max_backoff)

    def chat(
        self,
        call_log: CallLog,
        *,
        models: Sequence[str],
        max_tokens: int,
        system: str,
        user: str,
        output_format: str = "",
        note: str = "",
    ) -> tuple[ChatResult, LlmCallRecord]:
        """One answer from the first model that gives one; raises DomainError or CallsFailed."""
        last: TransientProviderError | None = None
        unconfigured: list[str] = []
        for position, model in enumerate(dict.fromkeys(models)):
            provider_name = self.routing.provider_of(model)
            provider = self.providers.get(provider_name)
            if provider is None:
                unconfigured.append(f"{model} ({provider_name})")
                log.warning(
                    "%s: no %s provider configured for %s; skipping it", call_log.role, provider_name, model
                )
                continue
            if model in call_log.exhausted:
                last = call_log.exhausted[model]  # failed its requests earlier in this RPC
                continue
            ceiling = self.routing.output_ceiling(model)
            budget = min(max_tokens, ceiling) if ceiling and not self.providers.replay else max_tokens
            for request_number in range(1, self._max_requests + 1):
                request = ChatRequest(
                    model=model,
                    max_tokens=budget,
                    system=system,
                    user=user,
                    run_id=call_log.run_id,
                    phase_id=call_log.phase_id,
                    attempt=call_log.attempt,
                    call=len(call_log.answered) + 1,
                    role=call_log.role,
                )
                request_note = note if position == 0 else f"fail-over #{position}; {note}".rstrip("; ")
                try:
                    return self._request(call_log, provider, request, output_format, request_note)
                except TransientProviderError as error:
                    last = error
                    if request_number < self._max_requests:
                        wait = self.backoff_for(request_number, error.retry_after)
                        log.warning(
                            "%s request to %s failed (%s); retry %d/%d in %.2fs",
                            call_log.role,
                            model,
                            error.cause.message,
                            request_number,
                            self._max_requests - 1,
                            wait,
                        )
                        self._sleep(wait)
            if last is not None:
                call_log.exhausted[model] = last
            log.warning(
                "%s: %s failed %d request(s) in a row (%s); failing over",
                call_log.role,
                model,
                self._max_requests,
                last.cause.message if last else "",
            )
        if last is not None:
            cause = type(last.cause)(
                f"{last.cause.message} (after {len(call_log.records)} request(s) over "
                f"{len(call_log.exhausted)} model(s))"
            )
            raise CallsFailed(cause, call_log.records, "PROVIDER_ERROR") if call_log.records else cause
        raise FailedPrecondition(
            f"no provider configured for model(s) {', '.join(unconfigured)}: "
            "set ANTHROPIC_API_KEY / OPENAI_API_KEY or AUTOPACK_BUILDER_PROVIDER"
        )

    def _request(
        self, call_log: CallLog, provider: object, request: ChatRequest, output_format: str, note: str
    ) -> tuple[ChatResult, LlmCallRecord]:
        """One traced request, accounted in ``call_log`` and the store whether it answered or not."""
        transcript = Transcript(
            prompt_sha256=prompt_sha256(request.system, request.user),
            prompt_chars=len(request.system) + len(request.user),
            output_format=output_format,
            note=note,
        )
        with self._tracer.start_as_current_span(
            f"chat {request.model}",
            kind=SpanKind.CLIENT,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            span.set_attributes(
                {
                    "gen_ai.operation.name": "chat",
                    "gen_ai.provider.name": provider.name,  # type: ignore[attr-defined]
                    "gen_ai.request.model": request.model,
                    "gen_ai.request.max_tokens": request.max_tokens,
                    "autopack.builder.role": call_log.role,
                    "autopack.builder.attempt": request.attempt,
                    "autopack.builder.call": len(call_log.records) + 1,
                }
            )
            if output_format:
                span.set_attribute("autopack.builder.output_format", output_format)
            if provider.name == "replay":  # type: ignore[attr-defined]
                span.set_attribute("autopack.replay", True)
            started = time.perf_counter()
            try:
                result = provider.chat(request)  # type: ignore[attr-defined]
            except (DomainError, TransientProviderError) as error:
                cause = error.cause if isinstance(error, TransientProviderError) else error
                span.set_attribute("error.type", type(cause).__name__)
                span.set_status(Status(StatusCode.ERROR, cause.message))
                if isinstance(error, TransientProviderError):
                    failed = LlmCallRecord(
                        provider=provider.name,  # type: ignore[attr-defined]
                        model=request.model,
                        max_tokens=request.max_tokens,
                        input_tokens=None,
                        output_tokens=None,
                        total_tokens=0,
                        stop_reason="",
                        duration_ms=int((time.perf_counter() - started) * 1000),
                        error=cause.message,
                        role=call_log.role,
                        output_format=output_format,
                        requested_model=request.model,
                    )
                    self._account(call_log, failed, transcript)
                raise
            duration_ms = int((time.perf_counter() - started) * 1000)
            _set_response_attributes(span, result)
        record = LlmCallRecord(
            provider=result.provider,
            model=result.model,
            max_tokens=request.max_tokens,
            input_tokens=result.input_tokens,
            output_tokens=result.output_tokens,
            total_tokens=result.total_tokens,
            stop_reason=result.stop_reason,
            duration_ms=duration_ms,
            cache_read_input_tokens=result.cache_read_input_tokens,
            cache_creation_input_tokens=result.cache_creation_input_tokens,
            reasoning_output_tokens=result.reasoning_output_tokens,
            cost_usd=self.routing.cost_usd(
                request.model,
                input_tokens=result.input_tokens,
                output_tokens=result.output_tokens,
                cache_read=result.cache_read_input_tokens,
                cache_write=result.cache_creation_input_tokens,
                cache_in_input=result.provider == "openai",
            ),
            role=call_log.role,
            output_format=output_format,
            requested_model=request.model,
        )
        record = self._account(call_log, record, replace(transcript, answer=result.text))
        log.info(
            "%s phase %s request %d: provider=%s model=%s max_tokens=%d input=%s output=%s total=%d stop=%s",
            call_log.role,
            call_log.phase_id,
            len(call_log.records),
            record.provider,
            record.model,
            record.max_tokens,
            record.input_tokens,
            record.output_tokens,
            record.total_tokens,
            record.stop_reason,
        )
        return result, record

    def prune_answers(self) -> int:
        """Drop raw answers older than the retention (at most once an hour; 0 when nothing is due)."""
        if self._store is None or self._retention is None:
            return 0
        with self._prune_lock:
            if time.monotonic() < self._next_prune:
                return 0
            self._next_prune = time.monotonic() + PRUNE_INTERVAL_SECONDS
        pruned = self._store.prune_answers(datetime.now(UTC) - self._retention)
        if pruned:
            log.info("pruned %d raw answer(s) older than %s", pruned, self._retention)
        return pruned

    def _account(self, call_log: CallLog, record: LlmCallRecord, transcript: Transcript) -> LlmCallRecord:
        if self._store is not None:
            self.prune_answers()
            try:
                call_id = self._store.record(
                    run_id=call_log.run_id,
                    phase_id=call_log.phase_id,
                    attempt=call_log.attempt,
                    call_index=len(call_log.records) + 1,
                    estimate_id=call_log.estimate_id,
                    call=record,
                    transcript=transcript,
                )
            except DomainError as error:
                call_log.records.append(record)
                raise CallsFailed(error, call_log.records, "STORE_ERROR") from error
            record = replace(record, call_id=call_id)
        call_log.records.append(record)
        return record

    def set_outcome(
        self, call_log: CallLog, record: LlmCallRecord, outcome: str, salvaged: int | None
    ) -> None:
        """Record how an answer parsed, in memory and in the store."""
        call_log.set_outcome(record.call_id, outcome)
        if self._store is not None and record.call_id:
            try:
                self._store.set_outcome(record.call_id, parse_outcome=outcome, salvaged_operations=salvaged)
            except DomainError as error:
                raise CallsFailed(error, call_log.records, "STORE_ERROR") from error


def _set_response_attributes(span: trace.Span, result: ChatResult) -> None:
    span.set_attribute("gen_ai.response.model", result.model)
    span.set_attribute("gen_ai.response.finish_reasons", [result.stop_reason] if result.stop_reason else [])
    if result.response_id:
        span.set_attribute("gen_ai.response.id", result.response_id)
    for attribute, value in (
        ("gen_ai.usage.input_tokens", result.input_tokens),
        ("gen_ai.usage.output_tokens", result.output_tokens),
        ("gen_ai.usage.cache_read.input_tokens", result.cache_read_input_tokens),
        ("gen_ai.usage.cache_creation.input_tokens", result.cache_creation_input_tokens),
        ("gen_ai.usage.reasoning.output_tokens", result.reasoning_output_tokens),
    ):
        if value is not None:
            span.set_attribute(attribute, value)
    span.set_attribute("autopack.tokens.total", result.total_tokens)
