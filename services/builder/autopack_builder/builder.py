"""The build flow: prompt, call the provider, parse, retry once on an empty answer.

Every call gets its own ``chat <model>`` CLIENT span (GenAI semantic conventions) and a
row in ``llm_calls`` the moment it returns, so tokens are accounted even when the build
fails afterwards. A failure after at least one call is a ``BuildFailed`` that carries
the calls, so the servicer can report their usage alongside the error status.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from autopack_common.errors import DomainError, FailedPrecondition
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from autopack_builder.models import BuildResult, BuildTask, ChatRequest, ChatResult, LlmCallRecord
from autopack_builder.parsing import OutputFormatError, parse_build_output
from autopack_builder.prompt import build_system_prompt, build_user_prompt
from autopack_builder.providers import Provider
from autopack_builder.store import LlmCallStore

log = logging.getLogger(__name__)

# Seed 000: an empty files array is retried once with stronger deliverables emphasis, then fails.
MAX_CALLS_PER_BUILD = 2


class BuildFailed(Exception):
    """A build that failed after provider calls: ``cause`` is the status, ``calls`` their usage."""

    def __init__(self, cause: DomainError, calls: Sequence[LlmCallRecord], reason: str) -> None:
        super().__init__(cause.message)
        self.cause = cause
        self.calls = tuple(calls)
        self.reason = reason


class Builder:
    """Turns a BuildTask into validated file operations with one provider."""

    def __init__(
        self,
        provider: Provider,
        store: LlmCallStore | None,
        default_model: str,
        tracer: trace.Tracer | None = None,
    ) -> None:
        self._provider = provider
        self._store = store
        self._default_model = default_model
        self._tracer = tracer or trace.get_tracer("autopack.builder")

    def build(self, task: BuildTask) -> BuildResult:
        """Operations for one phase attempt; raises DomainError (no call made) or BuildFailed."""
        model = task.model or self._default_model
        system = build_system_prompt()
        calls: list[LlmCallRecord] = []
        for call_index in range(1, MAX_CALLS_PER_BUILD + 1):
            request = ChatRequest(
                model=model,
                max_tokens=task.max_tokens,
                system=system,
                user=build_user_prompt(task, emphasize_deliverables=call_index > 1),
                run_id=task.run_id,
                phase_id=task.phase_id,
                attempt=task.attempt,
                call=call_index,
            )
            try:
                result = self._call(task, request, calls)
            except DomainError as error:
                if calls:
                    raise BuildFailed(error, calls, "PROVIDER_ERROR") from error
                raise
            try:
                parsed = parse_build_output(result.text, allow_partial=result.truncated)
            except OutputFormatError as error:
                raise BuildFailed(
                    FailedPrecondition(f"phase {task.phase_id}: unusable model output: {error.problem}"),
                    calls,
                    error.reason.upper(),
                ) from error
            # A cut-off answer is returned as is (truncated=true): the caller re-budgets, a
            # same-budget retry would be cut off again.
            if parsed.operations or not task.deliverables or result.truncated:
                if result.truncated:
                    log.warning(
                        "phase %s: output cut off at max_tokens=%d (%s); kept %d complete file(s)",
                        task.phase_id,
                        task.max_tokens,
                        result.stop_reason,
                        len(parsed.operations),
                    )
                return BuildResult(
                    operations=parsed.operations,
                    calls=tuple(calls),
                    summary=parsed.summary,
                    salvaged=parsed.salvaged,
                )
            if call_index < MAX_CALLS_PER_BUILD:
                log.warning(
                    "phase %s: empty files array with %d deliverable(s); retrying once with stronger emphasis",
                    task.phase_id,
                    len(task.deliverables),
                )
        raise BuildFailed(
            FailedPrecondition(
                f"phase {task.phase_id}: the model returned an empty files array for "
                f"{len(task.deliverables)} required deliverable(s), also after one retry with "
                "stronger deliverables emphasis"
            ),
            calls,
            "EMPTY_FILES",
        )

    def _call(self, task: BuildTask, request: ChatRequest, calls: list[LlmCallRecord]) -> ChatResult:
        """One traced provider call, accounted in ``calls`` and the store as soon as it returns."""
        with self._tracer.start_as_current_span(
            f"chat {request.model}",
            kind=SpanKind.CLIENT,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            span.set_attributes(
                {
                    "gen_ai.operation.name": "chat",
                    "gen_ai.provider.name": self._provider.name,
                    "gen_ai.request.model": request.model,
                    "gen_ai.request.max_tokens": request.max_tokens,
                    "autopack.builder.attempt": request.attempt,
                    "autopack.builder.call": request.call,
                }
            )
            if self._provider.name == "replay":
                span.set_attribute("autopack.replay", True)
            started = time.perf_counter()
            try:
                result = self._provider.chat(request)
            except DomainError as error:
                span.set_attribute("error.type", type(error).__name__)
                span.set_status(Status(StatusCode.ERROR, error.message))
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
        )
        calls.append(record)
        log.info(
            "phase %s call %d: provider=%s model=%s max_tokens=%d input=%s output=%s total=%d stop=%s",
            task.phase_id,
            request.call,
            record.provider,
            record.model,
            record.max_tokens,
            record.input_tokens,
            record.output_tokens,
            record.total_tokens,
            record.stop_reason,
        )
        if self._store is not None:
            try:
                self._store.record(
                    run_id=task.run_id,
                    phase_id=task.phase_id,
                    attempt=task.attempt,
                    call_index=request.call,
                    estimate_id=task.estimate_id,
                    call=record,
                )
            except DomainError as error:
                raise BuildFailed(error, calls, "STORE_ERROR") from error
        return result


def _set_response_attributes(span: trace.Span, result: ChatResult) -> None:
    span.set_attribute("gen_ai.response.model", result.model)
    span.set_attribute("gen_ai.response.finish_reasons", [result.stop_reason] if result.stop_reason else [])
    if result.response_id:
        span.set_attribute("gen_ai.response.id", result.response_id)
    if result.input_tokens is not None:
        span.set_attribute("gen_ai.usage.input_tokens", result.input_tokens)
    if result.output_tokens is not None:
        span.set_attribute("gen_ai.usage.output_tokens", result.output_tokens)
    span.set_attribute("autopack.tokens.total", result.total_tokens)
