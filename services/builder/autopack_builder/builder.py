"""The build flow: choose a format, call, parse, continue cut-off answers, retry what is worth it.

- Format: forced by the request, else the format after the one that failed the previous
  attempt (cut off or malformed, from this builder's own call records), else by file size.
- A cut-off answer keeps every complete operation and the next call continues from the first
  incomplete one ("continue from file X"), never re-emitting finished files, with a budget from
  the estimator's ``Escalate`` (or the stated local rule), at most ``MAX_CONTINUATIONS`` times.
- A malformed answer is re-asked once in the fallback format; a second one fails with the
  typed reason and what was salvaged, never a crash.
- An empty answer with deliverables is retried once per phase with stronger emphasis, never on
  the phase's last attempt (seed 000).
- Provider trouble (429/529/5xx) is the call layer's: backoff, then fail-over.
"""

from __future__ import annotations

import logging

from autopack_common.errors import DomainError, FailedPrecondition
from opentelemetry import trace

from autopack_builder.calls import CallLog, CallRunner, CallsFailed
from autopack_builder.escalation import BudgetSource, LocalBudget
from autopack_builder.formats import FALLBACK, FULL_FILE_MAX_LINES, choose_format, output_format
from autopack_builder.models import BuildResult, BuildTask, ChatResult, FileOp, LlmCallRecord
from autopack_builder.normalize import Workspace, normalize_operations
from autopack_builder.parsing import OutputFormatError
from autopack_builder.prompt import build_system_prompt, build_user_prompt
from autopack_builder.providers import Provider, ProviderSet
from autopack_builder.routing import load_routing
from autopack_builder.store import LlmCallStore

log = logging.getLogger(__name__)

MAX_CONTINUATIONS = 3
EMPTY_FILES_RETRY_NOTE = "empty-files retry"

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
        estimator: BudgetSource | None = None,
        max_continuations: int = MAX_CONTINUATIONS,
    ) -> None:
        """``runner`` is the call layer; a bare Provider (embedded use, e.g. the orchestrator's flow
        test) is wrapped in one with the packaged routing table, ``store`` and ``tracer``."""
        if not isinstance(runner, CallRunner):
            runner = CallRunner(ProviderSet({runner.name: runner}), load_routing(), store, tracer=tracer)
        self._runner = runner
        self._default_model = default_model
        self._budgets: BudgetSource = estimator or LocalBudget()
        # 0 = a cut-off answer is returned at once with truncated=true (the caller re-budgets)
        self._max_continuations = max_continuations

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

    def choose_format(self, task: BuildTask) -> str:
        """Forced, else the fallback of the format that failed last attempt, else by file size."""
        trouble = ""
        store = self._runner.store
        if not task.output_format and store is not None and task.attempt > 1:
            trouble = store.format_trouble(task.run_id, task.phase_id, task.attempt - 1) or ""
        return choose_format(_line_counts(task), forced=task.output_format, previous_trouble=trouble)

    def _may_retry_empty(self, task: BuildTask) -> bool:
        """Once per phase, never on the last attempt."""
        if task.max_attempts and task.attempt >= task.max_attempts:
            return False
        store = self._runner.store
        return store is None or not store.has_note(task.run_id, task.phase_id, EMPTY_FILES_RETRY_NOTE)

    def build(self, task: BuildTask) -> BuildResult:
        """Operations for one phase attempt; raises DomainError (no call made) or BuildFailed."""
        models = self.models_for(task)
        workspace = Workspace.from_task(task)
        format_name = self.choose_format(task)
        call_log = CallLog(
            run_id=task.run_id, phase_id=task.phase_id, attempt=task.attempt, estimate_id=task.estimate_id
        )
        kept: dict[str, FileOp] = {}
        # complete operations of answers that failed to parse, reported with the typed error
        salvaged_from_failures: dict[str, FileOp] = {}
        notes: list[str] = []
        summary = ""
        budget = task.max_tokens
        continue_from: str | None = None
        continuations = 0
        fell_back = False
        emphasize = False
        request_note = ""
        while True:
            answer, record = self._ask(
                call_log, models, task, format_name, budget, kept, continue_from, emphasize, request_note
            )
            # after a fail-over, stay with the model that answered
            models = [record.requested_model, *(m for m in models if m != record.requested_model)]
            truncated = answer.truncated
            try:
                parsed = output_format(format_name).parse(answer.text, truncated)
                operations, changed = normalize_operations(parsed.operations, workspace)
            except OutputFormatError as error:
                self._runner.set_outcome(call_log, record, f"invalid:{error.reason}", len(error.salvaged))
                salvaged_from_failures.update((op.path, op) for op in error.salvaged)
                if not fell_back:
                    fell_back = True
                    previous, format_name = format_name, FALLBACK[format_name]
                    request_note = f"format fallback {previous} -> {format_name} after: {error.reason}"
                    log.warning(
                        "phase %s: %s answer unusable (%s); %s", task.phase_id, previous, error, request_note
                    )
                    continue
                raise self._unusable(task, call_log, error, {**salvaged_from_failures, **kept}) from error
            self._runner.set_outcome(
                call_log,
                record,
                "salvaged" if parsed.salvaged else "ok",
                len(operations) if parsed.salvaged else None,
            )
            new = [op for op in operations if op.path not in kept]
            kept.update((op.path, op) for op in new)
            notes += changed
            summary = summary or parsed.summary
            if truncated:
                if continuations >= self._max_continuations or (
                    not new and parsed.incomplete_path == continue_from
                ):
                    log.warning(
                        "phase %s: still cut off after %d continuation(s); returning %d complete operation(s)",
                        task.phase_id,
                        continuations,
                        len(kept),
                    )
                    return self._result(kept, call_log, summary, format_name, continuations, notes, True)
                continuations += 1
                continue_from = parsed.incomplete_path
                next_budget = self._budgets.continuation_budget(
                    task.estimate_id,
                    record.output_tokens or record.max_tokens,
                    record.max_tokens,
                    self._runner.routing.output_ceiling(record.requested_model),
                )
                budget = next_budget.max_tokens
                request_note = (
                    f"continuation {continuations} from {continue_from or 'the next operation'} "
                    f"({len(kept)} kept); max_tokens {budget} from {next_budget.source}"
                )
                log.warning("phase %s: answer cut off; %s", task.phase_id, request_note)
                emphasize = False
                continue
            if kept or not task.deliverables:
                return self._result(kept, call_log, summary, format_name, continuations, notes, False)
            if emphasize or not self._may_retry_empty(task):
                raise BuildFailed(
                    FailedPrecondition(
                        f"phase {task.phase_id}: the model returned an empty files array (no operations) for "
                        f"{len(task.deliverables)} required deliverable(s)"
                        + (", also after one retry with stronger deliverables emphasis" if emphasize else "")
                    ),
                    call_log.records,
                    "EMPTY_FILES",
                )
            emphasize = True
            request_note = EMPTY_FILES_RETRY_NOTE
            log.warning(
                "phase %s: empty answer with %d deliverable(s); retrying once with stronger emphasis",
                task.phase_id,
                len(task.deliverables),
            )

    def _ask(
        self,
        call_log: CallLog,
        models: list[str],
        task: BuildTask,
        format_name: str,
        budget: int,
        kept: dict[str, FileOp],
        continue_from: str | None,
        emphasize: bool,
        note: str,
    ) -> tuple[ChatResult, LlmCallRecord]:
        try:
            result, record = self._runner.chat(
                call_log,
                models=models,
                max_tokens=budget,
                system=build_system_prompt(format_name),
                user=build_user_prompt(
                    task,
                    emphasize_deliverables=emphasize,
                    format_name=format_name,
                    completed=tuple(kept.values()),
                    continue_from=continue_from,
                ),
                output_format=format_name,
                note=note,
            )
        except CallsFailed:
            raise
        except DomainError as error:
            if call_log.records:
                raise BuildFailed(error, call_log.records, "PROVIDER_ERROR") from error
            raise
        return result, record

    def _unusable(
        self, task: BuildTask, call_log: CallLog, error: OutputFormatError, kept: dict[str, FileOp]
    ) -> BuildFailed:
        salvaged = list(kept.values())
        return BuildFailed(
            FailedPrecondition(
                f"phase {task.phase_id}: unusable model output: {error.problem} "
                f"({len(salvaged)} complete operation(s) salvaged)"
            ),
            call_log.records,
            error.reason.upper(),
            details={
                "salvaged_operations": str(len(salvaged)),
                "salvaged_paths": ",".join(op.path for op in salvaged)[:1024],
            },
        )

    @staticmethod
    def _result(
        kept: dict[str, FileOp],
        call_log: CallLog,
        summary: str,
        format_name: str,
        continuations: int,
        notes: list[str],
        salvaged: bool,
    ) -> BuildResult:
        return BuildResult(
            operations=tuple(kept.values()),
            calls=tuple(call_log.records),
            summary=summary,
            salvaged=salvaged,
            output_format=format_name,
            continuations=continuations,
            normalizations=tuple(notes),
        )


def _in_scope(path: str, task: BuildTask) -> bool:
    return path in task.deliverables or any(
        path == scope or (scope.endswith("/") and path.startswith(scope)) for scope in task.scope_paths
    )


def _line_counts(task: BuildTask) -> list[int]:
    """Line counts of the existing files the phase may change; a summarised one counts as large."""
    return [
        FULL_FILE_MAX_LINES + 1 if f.summarized else len(f.content.splitlines())
        for f in task.context_files
        if _in_scope(f.path, task)
    ]
