"""The build flow: prompt, call the provider, parse, retry once on an empty answer.

Requests go through the ``CallRunner`` (one span and one ``llm_calls`` row per request, retries
and fail-over). A failure after at least one request is a ``BuildFailed`` that carries the
calls, so the servicer can report their usage alongside the error status.
"""

from __future__ import annotations

import logging

from autopack_common.errors import DomainError, FailedPrecondition
from opentelemetry import trace

from autopack_builder.calls import CallLog, CallRunner, CallsFailed
from autopack_builder.models import BuildResult, BuildTask
from autopack_builder.parsing import OutputFormatError, parse_build_output
from autopack_builder.prompt import build_system_prompt, build_user_prompt
from autopack_builder.providers import Provider, ProviderSet
from autopack_builder.routing import load_routing
from autopack_builder.store import LlmCallStore

log = logging.getLogger(__name__)

# Seed 000: an empty files array is retried once with stronger deliverables emphasis, then fails.
MAX_CALLS_PER_BUILD = 2

BuildFailed = CallsFailed


class Builder:
    """Turns a BuildTask into validated file operations."""

    def __init__(
        self,
        runner: CallRunner | Provider,
        store: LlmCallStore | None = None,
        default_model: str = "",
        *,
        tracer: trace.Tracer | None = None,
        estimator: object | None = None,
    ) -> None:
        """``runner`` is the call layer; a bare Provider (embedded use, e.g. the orchestrator's flow
        test) is wrapped in one with the packaged routing table, ``store`` and ``tracer``."""
        if not isinstance(runner, CallRunner):
            runner = CallRunner(ProviderSet({runner.name: runner}), load_routing(), store, tracer=tracer)
        self._runner = runner
        self._default_model = default_model
        self._estimator = estimator

    @property
    def runner(self) -> CallRunner:
        return self._runner

    def models_for(self, task: BuildTask) -> list[str]:
        """The chosen model for this attempt, then the role's fail-over models."""
        routing = self._runner.routing
        model = routing.model_for_attempt(
            "builder",
            task.attempt,
            task.category,
            task.complexity,
            requested=task.model or self._default_model,
        )
        return [model, *routing.role("builder").failover]

    def build(self, task: BuildTask) -> BuildResult:
        """Operations for one phase attempt; raises DomainError (no call made) or BuildFailed."""
        models = self.models_for(task)
        system = build_system_prompt()
        call_log = CallLog(
            run_id=task.run_id, phase_id=task.phase_id, attempt=task.attempt, estimate_id=task.estimate_id
        )
        for call_index in range(1, MAX_CALLS_PER_BUILD + 1):
            try:
                result, record = self._runner.chat(
                    call_log,
                    models=models,
                    max_tokens=task.max_tokens,
                    system=system,
                    user=build_user_prompt(task, emphasize_deliverables=call_index > 1),
                    output_format="full_file_json",
                )
            except CallsFailed:
                raise
            except DomainError as error:
                if call_log.records:
                    raise BuildFailed(error, call_log.records, "PROVIDER_ERROR") from error
                raise
            try:
                parsed = parse_build_output(result.text, allow_partial=result.truncated)
            except OutputFormatError as error:
                self._runner.set_outcome(call_log, record, f"invalid:{error.reason}", None)
                raise BuildFailed(
                    FailedPrecondition(f"phase {task.phase_id}: unusable model output: {error.problem}"),
                    call_log.records,
                    error.reason.upper(),
                ) from error
            self._runner.set_outcome(
                call_log,
                record,
                "salvaged" if parsed.salvaged else "ok",
                len(parsed.operations) if parsed.salvaged else None,
            )
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
                    calls=tuple(call_log.records),
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
            call_log.records,
            "EMPTY_FILES",
        )
