"""Executes runs: one phase at a time, each attempt through memory, applier, estimator and builder.

Each phase is one trace: the span ``phase <phase_id>`` is a new root carrying the
run and phase ids as W3C baggage, so every downstream span of the phase (and of
its retry) lands in the same trace. Attempts are child spans. The phase span
ends with the token story of the deciding attempt as attributes.

Runs execute on daemon worker threads under a lease in the database. A keeper
thread renews this process's leases and claims runs whose lease expired (their
process crashed), resuming them from their first phase that is not COMPLETE.
"""

from __future__ import annotations

import logging
import os
import queue
import shlex
import socket
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
from autopack.applier.v1 import applier_pb2
from autopack.builder.v1 import builder_pb2
from autopack.common.v1 import common_pb2
from autopack.estimator.v1 import estimator_pb2
from autopack.memory.v1 import memory_pb2
from autopack_common.database import utcnow
from autopack_common.telemetry import current_trace_id, phase_baggage
from autopack_common.truncation import is_truncating_stop_reason
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from autopack_orchestrator.clients import ServiceClients
from autopack_orchestrator.convert import phase_to_proto
from autopack_orchestrator.events import EventType, Outcome, State
from autopack_orchestrator.plan import PhaseSpec
from autopack_orchestrator.settings import OrchestratorSettings
from autopack_orchestrator.store import AttemptRecord, PhaseRecord, RunRecord, RunStore

log = logging.getLogger(__name__)

INTENTIONS = "intentions"
PHASE_SUMMARIES = "phase-summaries"
MAX_MEMORY_TEXT_BYTES = 2048
MAX_REASON_CHARS = 2000
DEFAULT_CHECK_TIMEOUT_SECONDS = 300
BUILDER_ERROR_DOMAIN = "builder.autopack"


class StepFailed(Exception):
    """A step ended the attempt: its outcome and a reason a person can act on."""

    def __init__(self, outcome: Outcome, reason: str) -> None:
        super().__init__(reason)
        self.outcome = outcome
        self.reason = reason


class RunInterrupted(Exception):
    """This process must stop executing the run (shutting down, or its lease was lost)."""


def truncate_utf8(text: str, limit: int) -> str:
    """At most ``limit`` bytes of UTF-8, never cutting a character in half."""
    encoded = text.encode("utf-8")
    if len(encoded) <= limit:
        return text
    return encoded[:limit].decode("utf-8", errors="ignore")


def smape(predicted: int, actual: int) -> float | None:
    """Symmetric mean absolute percentage error, 0..200; None when both are zero."""
    if predicted + actual <= 0:
        return None
    return 200.0 * abs(actual - predicted) / (abs(actual) + abs(predicted))


def intention_text(run: RunRecord) -> str:
    """The run's intention anchor: the plan name and each phase goal (at most 2 KB)."""
    lines = [f"Intention of run {run.run_id}: {run.name}"]
    lines += [f"- {phase.phase_id}: {phase.spec.description}" for phase in run.phases()]
    return truncate_utf8("\n".join(lines), MAX_MEMORY_TEXT_BYTES)


def _unique(paths: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(paths))


def _short(text: str, limit: int = MAX_REASON_CHARS) -> str:
    text = text.strip()
    return text if len(text) <= limit else "…" + text[-limit:]


@dataclass
class _AttemptResult:
    """What an attempt leaves behind for the phase: its record and what it changed."""

    record: AttemptRecord
    changed_paths: list[str] = field(default_factory=list)
    summary: str = ""
    rolled_back_cleanly: bool = True


@dataclass
class _AttemptScratch:
    build: builder_pb2.BuildResponse | None = None
    changed_paths: list[str] = field(default_factory=list)


class _WorkerPool:
    """A fixed set of daemon threads: a long build never blocks the process from exiting."""

    def __init__(self, workers: int) -> None:
        self._queue: queue.Queue[tuple[Callable[..., None], tuple[Any, ...]] | None] = queue.Queue()
        self._threads = [
            threading.Thread(target=self._work, name=f"run-executor-{i}", daemon=True) for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, function: Callable[..., None], *args: Any) -> None:
        self._queue.put((function, args))

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            function, args = item
            function(*args)

    def close(self) -> None:
        for _ in self._threads:
            self._queue.put(None)


class RunExecutor:
    """Starts, executes and resumes runs; one instance per orchestrator process."""

    def __init__(
        self,
        store: RunStore,
        clients: ServiceClients,
        settings: OrchestratorSettings,
        tracer: trace.Tracer | None = None,
        owner: str | None = None,
    ) -> None:
        self._store = store
        self._clients = clients
        self._settings = settings
        self._tracer = tracer or trace.get_tracer("autopack.orchestrator")
        self.owner = owner or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._pool = _WorkerPool(settings.executor_workers)
        self._stopping = threading.Event()
        self._active: set[str] = set()
        self._active_lock = threading.Condition()
        self._keeper: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Resume abandoned runs now and keep leases fresh from now on."""
        if self._keeper is None:
            self._keeper = threading.Thread(target=self._keep_leases, name="run-lease-keeper", daemon=True)
            self._keeper.start()

    def shutdown(self, grace: float = 5.0) -> None:
        """Stop at the next phase or attempt boundary; unfinished runs are resumed later."""
        self._stopping.set()
        with self._active_lock:
            self._active_lock.wait_for(lambda: not self._active, timeout=grace)
        self._pool.close()

    def wait_idle(self, timeout: float) -> bool:
        """True once no run is executing in this process (for tests and shutdown)."""
        with self._active_lock:
            return self._active_lock.wait_for(lambda: not self._active, timeout=timeout)

    def _keep_leases(self) -> None:
        interval = max(self._settings.lease_seconds / 3, 0.05)
        while not self._stopping.is_set():
            try:
                with self._active_lock:
                    active = set(self._active)
                self._store.renew_leases(self.owner, self._settings.lease_seconds, active)
                for run_id in self._store.claim_abandoned_runs(self.owner, self._settings.lease_seconds):
                    log.info("resuming abandoned run %s", run_id)
                    self._submit(run_id, resumed=True)
            except Exception:
                log.exception("lease keeping failed; retrying in %.1fs", interval)
            self._stopping.wait(interval)

    def start_run(self, run_id: str) -> RunRecord:
        """QUEUED -> EXECUTING now; the phases run in the background."""
        record = self._store.start_run(run_id, self.owner, self._settings.lease_seconds)
        self._submit(run_id, resumed=False)
        return record

    def _submit(self, run_id: str, resumed: bool) -> None:
        with self._active_lock:
            if run_id in self._active:
                return
            self._active.add(run_id)
        self._pool.submit(self._execute_guarded, run_id, resumed)

    def _execute_guarded(self, run_id: str, resumed: bool) -> None:
        try:
            self.execute(run_id, resumed)
        except RunInterrupted as interruption:
            log.info("run %s interrupted: %s", run_id, interruption)
            if self._stopping.is_set():
                self._store.release_lease(run_id, self.owner)
        except Exception as error:
            log.exception("run %s failed with an internal error", run_id)
            try:
                reason = f"internal error: {error!r}"
                self._store.finish_run(run_id, State.FAILED, f"run failed: {reason}", reason)
            except Exception:
                log.exception("could not mark run %s FAILED", run_id)
        finally:
            with self._active_lock:
                self._active.discard(run_id)
                self._active_lock.notify_all()

    def _checkpoint(self, run_id: str) -> None:
        if self._stopping.is_set():
            raise RunInterrupted("orchestrator shutting down")
        if not self._store.holds_lease(run_id, self.owner):
            raise RunInterrupted("lease lost to another orchestrator")

    # -- a run --------------------------------------------------------------------------------

    def execute(self, run_id: str, resumed: bool = False) -> None:
        """Run every phase that is not COMPLETE, in order; the first failed phase fails the run."""
        run = self._store.get_run(run_id)
        if run.state is not State.EXECUTING:
            return
        pending = [phase for phase in run.phases() if phase.state is not State.COMPLETE]
        if resumed:
            where = f"phase {pending[0].phase_id}" if pending else "its end"
            self._store.append_event(
                run_id,
                EventType.RUN_STATE,
                f"run resumed after an orchestrator restart, from {where}",
                state=State.EXECUTING,
            )
        if not pending:  # crashed after the last phase, before the run was marked
            self._store.finish_run(run_id, State.COMPLETE, f"run complete: {len(run.phases())} phase(s)")
            return
        with self._root_span(f"run {run_id} prepare", run_id) as span:
            span.set_attribute("autopack.run_id", run_id)
            try:
                self._prepare(run)
            except StepFailed as failure:
                span.set_status(Status(StatusCode.ERROR, failure.reason))
                self._store.finish_run(run_id, State.FAILED, f"run failed: {failure.reason}", failure.reason)
                return
        for phase in pending:
            self._checkpoint(run_id)
            succeeded, reason = self._run_phase(run, phase)
            if not succeeded:
                reason = f"phase {phase.phase_id}: {reason}"
                self._store.finish_run(run_id, State.FAILED, f"run failed: {reason}", reason)
                return
        self._store.finish_run(run_id, State.COMPLETE, f"run complete: {len(run.phases())} phase(s)")

    def _prepare(self, run: RunRecord) -> None:
        """Workspace once per run (the applier returns the existing one on resume) and intention."""
        response = self._call(
            "applier",
            "PrepareWorkspace",
            self._clients.applier.PrepareWorkspace,
            applier_pb2.PrepareWorkspaceRequest(run_id=run.run_id, source_repo=run.source_repo),
            self._settings.prepare_timeout_seconds,
        )
        state = "created" if response.created else "reused"
        self._store.set_workspace(
            run.run_id,
            response.workspace_path,
            f"workspace: {state} at {response.workspace_path} (base {response.base_commit[:12]})",
        )
        text = intention_text(run)
        self._call(
            "memory",
            "Upsert",
            self._clients.memory.Upsert,
            memory_pb2.UpsertRequest(
                collection=INTENTIONS,
                items=[
                    memory_pb2.MemoryItem(
                        id=run.run_id, text=text, metadata={"run_id": run.run_id, "kind": "intention"}
                    )
                ],
            ),
            self._settings.rpc_timeout_seconds,
        )
        self._store.append_event(
            run.run_id, EventType.STEP, f"memory: intention stored ({len(text.encode())} bytes)"
        )

    # -- a phase ------------------------------------------------------------------------------

    def _run_phase(self, run: RunRecord, phase: PhaseRecord) -> tuple[bool, str]:
        """Up to ``max_attempts`` attempts inside one phase span; returns (succeeded, reason)."""
        run_id, phase_id = run.run_id, phase.phase_id
        finished = [attempt for attempt in phase.attempts if attempt.finished]
        interrupted = [attempt for attempt in phase.attempts if not attempt.finished]
        verb = "resumed" if phase.attempts else "started"
        self._store.set_phase_state(run_id, phase_id, State.EXECUTING, f"phase {phase_id} {verb}")
        with self._root_span(f"phase {phase_id}", run_id, phase_id) as span:
            span.set_attribute("autopack.run_id", run_id)
            span.set_attribute("autopack.phase_id", phase_id)
            for attempt in interrupted:
                self._settle_interrupted(run_id, phase_id, attempt)
            last: _AttemptResult | None = _AttemptResult(finished[-1]) if finished else None
            number = len(phase.attempts) + 1
            remaining = self._settings.max_attempts - len(finished)
            if last is not None and last.record.outcome is Outcome.SUCCESS:
                remaining = 0  # crashed after the deciding attempt, before the phase was marked
            while remaining > 0:
                if number > 1:
                    self._checkpoint(run_id)
                last = self._run_attempt(run, phase.spec, number, last.record if last else None)
                number += 1
                remaining -= 1
                if last.record.outcome is Outcome.SUCCESS or not last.rolled_back_cleanly:
                    break
            succeeded = last is not None and last.record.outcome is Outcome.SUCCESS
            reason = "" if succeeded else (last.record.failure_reason if last else "no attempts left")
            attempts_made = number - 1
            self._set_phase_attributes(span, last.record if last else None, succeeded, attempts_made)
            if not succeeded:
                span.set_status(Status(StatusCode.ERROR, reason[:200]))
            self._store_summary(run, phase.spec, last, succeeded, attempts_made)
            state = State.COMPLETE if succeeded else State.FAILED
            message = f"phase {phase_id} {state.value.lower()} after {attempts_made} attempt(s)"
            self._store.set_phase_state(run_id, phase_id, state, message, reason)
        return succeeded, reason

    def _set_phase_attributes(
        self, span: trace.Span, attempt: AttemptRecord | None, succeeded: bool, attempts_made: int
    ) -> None:
        if attempt is not None:
            span.set_attributes(_token_attributes(attempt))
        span.set_attribute(
            "autopack.phase.outcome", State.COMPLETE.value if succeeded else State.FAILED.value
        )
        span.set_attribute("autopack.phase.attempts", attempts_made)

    def _settle_interrupted(self, run_id: str, phase_id: str, attempt: AttemptRecord) -> None:
        """An attempt cut short by a crash: undo what it applied and close it as ERROR."""
        reason = "interrupted by an orchestrator restart"
        if attempt.savepoint and attempt.base_savepoint:
            try:
                self._rollback(run_id, phase_id, attempt.base_savepoint)
            except StepFailed as failure:
                reason += f"; rollback failed: {failure.reason}"
        attempt.outcome = Outcome.ERROR
        attempt.failure_reason = reason
        attempt.finished_at = utcnow()
        self._store.save_attempt(
            run_id,
            phase_id,
            attempt,
            EventType.ATTEMPT_FINISHED,
            f"attempt {attempt.number} closed: {reason}",
        )

    def _store_summary(
        self,
        run: RunRecord,
        spec: PhaseSpec,
        last: _AttemptResult | None,
        succeeded: bool,
        attempts_made: int,
    ) -> None:
        """Step 10: what later phases (and later runs) should remember about this one."""
        state = State.COMPLETE if succeeded else State.FAILED
        lines = [f"Phase {spec.phase_id} {state.value} after {attempts_made} attempt(s): {spec.description}"]
        if last is not None and last.changed_paths:
            lines.append("Changed: " + ", ".join(last.changed_paths))
        if last is not None and last.summary:
            lines.append("Builder summary: " + last.summary)
        if not succeeded and last is not None:
            lines.append("Failure: " + last.record.failure_reason)
        text = truncate_utf8("\n".join(lines), MAX_MEMORY_TEXT_BYTES)
        outcome = last.record.outcome.value if last else Outcome.UNSPECIFIED.value
        try:
            self._call(
                "memory",
                "Upsert",
                self._clients.memory.Upsert,
                memory_pb2.UpsertRequest(
                    collection=PHASE_SUMMARIES,
                    items=[
                        memory_pb2.MemoryItem(
                            id=f"{run.run_id}.{spec.phase_id}",
                            text=text,
                            metadata={
                                "run_id": run.run_id,
                                "phase_id": spec.phase_id,
                                "outcome": state.value,
                                "attempt_outcome": outcome,
                            },
                        )
                    ],
                ),
                self._settings.rpc_timeout_seconds,
            )
            message = f"memory: phase summary stored ({len(text.encode())} bytes)"
        except StepFailed as failure:
            # The phase outcome is decided; a missing summary only weakens later context.
            log.warning("phase summary of %s not stored: %s", spec.phase_id, failure.reason)
            message = f"memory: phase summary not stored: {failure.reason}"
        self._store.append_event(run.run_id, EventType.STEP, message, phase_id=spec.phase_id)

    # -- an attempt ---------------------------------------------------------------------------

    def _run_attempt(
        self, run: RunRecord, spec: PhaseSpec, number: int, previous: AttemptRecord | None
    ) -> _AttemptResult:
        run_id, phase_id = run.run_id, spec.phase_id
        with self._tracer.start_as_current_span(f"attempt {number}", kind=SpanKind.INTERNAL) as span:
            attempt = AttemptRecord(number=number, started_at=utcnow(), trace_id=current_trace_id())
            span.set_attribute("autopack.phase.attempt", number)
            self._store.save_attempt(
                run_id, phase_id, attempt, EventType.ATTEMPT_STARTED, f"attempt {number} started"
            )
            scratch = _AttemptScratch()
            try:
                self._attempt_steps(run, spec, attempt, previous, scratch)
                attempt.outcome = Outcome.SUCCESS
            except StepFailed as failure:
                attempt.outcome = failure.outcome
                attempt.failure_reason = _short(failure.reason)
            except Exception as error:
                log.exception("attempt %d of %s/%s failed unexpectedly", number, run_id, phase_id)
                attempt.outcome = Outcome.ERROR
                attempt.failure_reason = _short(f"internal error: {error!r}")
            result = _AttemptResult(attempt, scratch.changed_paths)
            if scratch.build is not None:
                result.summary = scratch.build.summary
            if attempt.outcome is not Outcome.SUCCESS and attempt.savepoint and attempt.base_savepoint:
                try:
                    self._rollback(run_id, phase_id, attempt.base_savepoint)
                except StepFailed as failure:
                    attempt.failure_reason = _short(
                        f"{attempt.failure_reason}; rollback failed: {failure.reason}"
                    )
                    result.rolled_back_cleanly = False
            if scratch.build is not None:
                self._record_outcomes(run_id, phase_id, attempt, scratch.build)
            if attempt.output_tokens is not None and not (scratch.build and scratch.build.truncated):
                attempt.smape = smape(attempt.predicted_output_tokens, attempt.output_tokens)
            attempt.finished_at = utcnow()
            span.set_attributes(_token_attributes(attempt))
            span.set_attribute("autopack.attempt.outcome", attempt.outcome.value)
            if attempt.outcome is not Outcome.SUCCESS:
                span.set_status(Status(StatusCode.ERROR, attempt.failure_reason[:200]))
            message = f"attempt {number} {attempt.outcome.value}"
            if attempt.failure_reason:
                message += f": {attempt.failure_reason}"
            self._store.save_attempt(run_id, phase_id, attempt, EventType.ATTEMPT_FINISHED, message)
            return result

    def _attempt_steps(
        self,
        run: RunRecord,
        spec: PhaseSpec,
        attempt: AttemptRecord,
        previous: AttemptRecord | None,
        scratch: _AttemptScratch,
    ) -> None:
        """Steps 2-7 of a phase; raises StepFailed with the attempt outcome on the first failure."""
        run_id, phase_id = run.run_id, spec.phase_id
        timeout = self._settings.rpc_timeout_seconds
        step = self._step_event(run_id, phase_id)

        # 2. Memory: the run's intention and what earlier phases left behind.
        intention_hits = self._search(INTENTIONS, spec.description, run_id, limit=1)
        intention = (
            truncate_utf8(intention_hits[0].item.text, MAX_MEMORY_TEXT_BYTES) if intention_hits else ""
        )
        notes = [hit.item.text for hit in self._search(PHASE_SUMMARIES, spec.description, run_id, limit=5)]
        step(f"memory: intention context {len(intention.encode())} bytes, {len(notes)} note(s)")

        # 3. Applier: the scoped files as they are now.
        paths = _unique([*spec.scope_paths, *spec.read_only_context, *spec.deliverables])
        files: list[applier_pb2.WorkspaceFile] = []
        if paths:
            read = self._call(
                "applier",
                "ReadFiles",
                self._clients.applier.ReadFiles,
                applier_pb2.ReadFilesRequest(run_id=run_id, paths=paths),
                timeout,
            )
            files = list(read.files)
            step(f"read: {len(files)} file(s), {len(read.missing)} missing")

        # 4. Memory: keep the most relevant files that fit the context budget.
        context_files: list[common_pb2.ContextFile] = []
        if files:
            deliverables = set(spec.deliverables)
            query = spec.description
            if spec.deliverables:
                query += "\nDeliverables: " + ", ".join(spec.deliverables)
            selection = self._call(
                "memory",
                "SelectContext",
                self._clients.memory.SelectContext,
                memory_pb2.SelectContextRequest(
                    run_id=run_id,
                    phase_id=phase_id,
                    query=query,
                    candidates=[
                        memory_pb2.CandidateFile(
                            path=f.path, content=f.content, pinned=f.path in deliverables
                        )
                        for f in files
                    ],
                    token_budget=self._settings.context_budget_tokens,
                ),
                timeout,
            )
            by_path = {f.path: f for f in files}
            context_files = [
                common_pb2.ContextFile(
                    path=kept.path,
                    content=by_path[kept.path].content,
                    summarized=by_path[kept.path].truncated,
                )
                for kept in selection.kept
                if kept.path in by_path
            ]
            mode = memory_pb2.SelectionMode.Name(selection.mode).removeprefix("SELECTION_MODE_").lower()
            step(
                f"context: kept {len(context_files)} of {len(files)} file(s), "
                f"{selection.used_tokens} tokens ({mode})"
            )

        # 5. Estimator: how many output tokens, and what max_tokens to send.
        self._budget(run_id, spec, attempt, previous, step)

        # 6. Builder: file operations with exact usage.
        try:
            build = self._call(
                "builder",
                "Build",
                self._clients.builder.Build,
                builder_pb2.BuildRequest(
                    run_id=run_id,
                    phase=phase_to_proto(spec),
                    context_files=context_files,
                    estimate_id=attempt.estimate_id,
                    selected_budget=attempt.selected_budget,
                    max_tokens=attempt.actual_max_tokens,
                    model=self._settings.model,
                    attempt=attempt.number,
                    previous_failure=previous.failure_reason if previous else "",
                    intention_context=intention,
                    memory_notes=notes,
                ),
                self._settings.build_timeout_seconds,
                default_outcome=Outcome.BUILD_FAILED,
                on_error=lambda error: self._account_failed_build(error, attempt, scratch),
            )
        except StepFailed as failure:
            if (
                failure.outcome is Outcome.BUILD_FAILED
                and scratch.build is not None
                and scratch.build.truncated
            ):
                # The answer was cut at max_tokens and could not be used: the cure is a bigger budget.
                raise StepFailed(Outcome.TRUNCATED, failure.reason) from None
            raise
        scratch.build = build
        attempt.provider = build.provider
        attempt.model = build.model
        attempt.input_tokens = build.usage.input_tokens if build.usage.HasField("input_tokens") else None
        attempt.output_tokens = build.usage.output_tokens if build.usage.HasField("output_tokens") else None
        attempt.total_tokens = build.usage.total_tokens
        if build.actual_max_tokens:
            attempt.actual_max_tokens = build.actual_max_tokens
        step(
            f"build: {len(build.operations)} operation(s) from {build.provider}/{build.model}, "
            f"{_count(attempt.input_tokens)} input + {_count(attempt.output_tokens)} output tokens, "
            f"stop {build.stop_reason or 'unknown'}"
        )
        if build.truncated:
            raise StepFailed(
                Outcome.TRUNCATED,
                f"output hit max_tokens={attempt.actual_max_tokens} (stop reason {build.stop_reason or 'unknown'})",
            )
        if not build.operations:
            raise StepFailed(Outcome.BUILD_FAILED, "builder returned no file operations")

        # 7. Applier: apply inside the scope (savepoint), then check.
        applied = self._call(
            "applier",
            "Apply",
            self._clients.applier.Apply,
            applier_pb2.ApplyRequest(
                run_id=run_id,
                phase_id=phase_id,
                scope=common_pb2.Scope(
                    paths=list(spec.write_scope()), read_only_context=list(spec.read_only_context)
                ),
                operations=list(build.operations),
                attempt=attempt.number,
            ),
            timeout,
            outcomes={
                grpc.StatusCode.INVALID_ARGUMENT: Outcome.APPLY_REJECTED,
                grpc.StatusCode.PERMISSION_DENIED: Outcome.APPLY_REJECTED,
                grpc.StatusCode.FAILED_PRECONDITION: Outcome.APPLY_REJECTED,
                grpc.StatusCode.ALREADY_EXISTS: Outcome.APPLY_REJECTED,
            },
        )
        attempt.savepoint = applied.savepoint
        attempt.base_savepoint = applied.previous_savepoint
        scratch.changed_paths = list(applied.changed_paths)
        self._store.save_attempt(run_id, phase_id, attempt)  # a crash from here on can be rolled back
        step(
            f"apply: {len(applied.changed_paths)} path(s) changed (+{applied.lines_added} "
            f"-{applied.lines_removed}), savepoint {applied.savepoint[:12]}"
        )

        if spec.validation_command:
            check_timeout = spec.validation_timeout_seconds or DEFAULT_CHECK_TIMEOUT_SECONDS
            checks = self._call(
                "applier",
                "RunChecks",
                self._clients.applier.RunChecks,
                applier_pb2.RunChecksRequest(
                    run_id=run_id,
                    command=list(spec.validation_command),
                    timeout_seconds=spec.validation_timeout_seconds,
                ),
                check_timeout + timeout,
                outcomes={
                    grpc.StatusCode.INVALID_ARGUMENT: Outcome.CHECKS_FAILED,
                    grpc.StatusCode.PERMISSION_DENIED: Outcome.CHECKS_FAILED,
                    grpc.StatusCode.FAILED_PRECONDITION: Outcome.CHECKS_FAILED,
                },
            )
            attempt.check_exit_code = checks.exit_code
            command = shlex.join(spec.validation_command)
            if not checks.passed:
                how = (
                    f"timed out after {check_timeout}s" if checks.timed_out else f"exited {checks.exit_code}"
                )
                raise StepFailed(
                    Outcome.CHECKS_FAILED, f"validation `{command}` {how}: {_short(checks.output_tail, 1500)}"
                )
            step(f"checks: `{command}` passed in {checks.duration_ms} ms")

        if spec.deliverables:
            present = self._call(
                "applier",
                "ReadFiles",
                self._clients.applier.ReadFiles,
                # One byte per file is enough to know it exists.
                applier_pb2.ReadFilesRequest(
                    run_id=run_id, paths=list(spec.deliverables), max_bytes_per_file=1
                ),
                timeout,
            )
            if present.missing:
                raise StepFailed(
                    Outcome.DELIVERABLES_MISSING, "missing deliverables: " + ", ".join(present.missing)
                )
            step(f"deliverables: all {len(spec.deliverables)} present")

    def _budget(
        self,
        run_id: str,
        spec: PhaseSpec,
        attempt: AttemptRecord,
        previous: AttemptRecord | None,
        step: Callable[[str], None],
    ) -> None:
        """Step 5: a fresh estimate, or an escalated budget when the last attempt was truncated."""
        timeout = self._settings.rpc_timeout_seconds
        if previous is not None and previous.outcome is Outcome.TRUNCATED and previous.estimate_id:
            escalation = self._call(
                "estimator",
                "Escalate",
                self._clients.estimator.Escalate,
                estimator_pb2.EscalateRequest(
                    estimate_id=previous.estimate_id,
                    reason=estimator_pb2.ESCALATION_REASON_TRUNCATED,
                    tokens_used=previous.output_tokens or 0,
                    was_truncated=True,
                ),
                timeout,
            )
            attempt.estimate_id = previous.estimate_id
            attempt.predicted_output_tokens = previous.predicted_output_tokens
            attempt.selected_budget = escalation.retry_budget
            attempt.actual_max_tokens = escalation.actual_max_tokens
            step(
                f"estimate: escalated {previous.estimate_id} after truncation to budget "
                f"{escalation.retry_budget}, max_tokens {escalation.actual_max_tokens}"
            )
            return
        estimate = self._call(
            "estimator",
            "Estimate",
            self._clients.estimator.Estimate,
            estimator_pb2.EstimateRequest(
                run_id=run_id,
                phase_id=spec.phase_id,
                description=spec.description,
                category=spec.category,
                complexity=spec.complexity,
                deliverables=list(spec.deliverables),
                scope_paths=list(spec.scope_paths),
                model=self._settings.model,
                read_only_context=list(spec.read_only_context),
            ),
            timeout,
        )
        attempt.estimate_id = estimate.estimate_id
        attempt.predicted_output_tokens = estimate.predicted_output_tokens
        attempt.selected_budget = estimate.selected_budget
        attempt.actual_max_tokens = estimate.actual_max_tokens
        step(
            f"estimate: {estimate.estimate_id} predicts {estimate.predicted_output_tokens} output tokens "
            f"({estimate.category}/{estimate.complexity}), budget {estimate.selected_budget}, "
            f"max_tokens {estimate.actual_max_tokens}"
        )

    def _record_outcomes(
        self, run_id: str, phase_id: str, attempt: AttemptRecord, build: builder_pb2.BuildResponse
    ) -> None:
        """Step 9: one RecordOutcome per provider call, so the estimator can calibrate."""
        if not attempt.estimate_id:
            return
        calls = list(build.calls) or [
            builder_pb2.LlmCall(
                provider=build.provider,
                model=build.model,
                max_tokens=build.actual_max_tokens,
                usage=build.usage,
                stop_reason=build.stop_reason,
            )
        ]
        recorded, rejected = 0, []
        for index, call in enumerate(calls):
            final = index == len(calls) - 1
            request = estimator_pb2.RecordOutcomeRequest(
                estimate_id=attempt.estimate_id,
                actual_output_tokens=call.usage.output_tokens if call.usage.HasField("output_tokens") else 0,
                actual_max_tokens=call.max_tokens,
                success=attempt.outcome is Outcome.SUCCESS,
                truncated=build.truncated if final else is_truncating_stop_reason(call.stop_reason),
                stop_reason=call.stop_reason,
                model=call.model,
                input_tokens=call.usage.input_tokens if call.usage.HasField("input_tokens") else 0,
            )
            try:
                response = self._call(
                    "estimator",
                    "RecordOutcome",
                    self._clients.estimator.RecordOutcome,
                    request,
                    self._settings.rpc_timeout_seconds,
                )
            except StepFailed as failure:
                rejected.append(failure.reason)
                continue
            if response.status == estimator_pb2.OUTCOME_STATUS_REJECTED:
                # The estimator's validity guard keeps bad samples out of calibration; not our failure.
                log.info("estimator rejected an outcome of %s: %s", phase_id, response.rejection_reason)
                rejected.append(response.rejection_reason)
            else:
                recorded += 1
        message = f"estimator: {recorded} outcome(s) recorded"
        if rejected:
            message += f", {len(rejected)} not recorded ({'; '.join(_short(r, 200) for r in rejected)})"
        self._store.append_event(run_id, EventType.STEP, message, phase_id=phase_id)

    def _rollback(self, run_id: str, phase_id: str, savepoint: str) -> None:
        response = self._call(
            "applier",
            "Rollback",
            self._clients.applier.Rollback,
            applier_pb2.RollbackRequest(run_id=run_id, savepoint=savepoint),
            self._settings.rpc_timeout_seconds,
        )
        self._store.append_event(
            run_id, EventType.STEP, f"rollback: workspace restored to {response.head[:12]}", phase_id=phase_id
        )

    # -- plumbing -----------------------------------------------------------------------------

    @contextmanager
    def _root_span(self, name: str, run_id: str, phase_id: str | None = None) -> Iterator[trace.Span]:
        """A new trace whose context carries the run (and phase) id as W3C baggage.

        The baggage context is attached, not only passed as the span's parent: a span made
        current by ``start_as_current_span`` keeps the *current* context's baggage, and the
        gRPC client interceptor propagates what is current.
        """
        token = otel_context.attach(phase_baggage(run_id, phase_id))
        try:
            with self._tracer.start_as_current_span(name, kind=SpanKind.INTERNAL) as span:
                yield span
        finally:
            otel_context.detach(token)

    def _search(self, collection: str, query: str, run_id: str, limit: int) -> list[memory_pb2.SearchHit]:
        response = self._call(
            "memory",
            "Search",
            self._clients.memory.Search,
            memory_pb2.SearchRequest(
                collection=collection, query=query, limit=limit, filter={"run_id": run_id}
            ),
            self._settings.rpc_timeout_seconds,
        )
        return list(response.hits)

    def _step_event(self, run_id: str, phase_id: str) -> Callable[[str], None]:
        def emit(message: str) -> None:
            self._store.append_event(run_id, EventType.STEP, message, phase_id=phase_id)

        return emit

    @staticmethod
    def _call(
        service: str,
        method: str,
        function: Callable[..., Any],
        request: Any,
        timeout: float,
        default_outcome: Outcome = Outcome.ERROR,
        outcomes: Mapping[grpc.StatusCode, Outcome] | None = None,
        on_error: Callable[[grpc.RpcError], None] | None = None,
    ) -> Any:
        """Call with a deadline; a failure becomes StepFailed naming the service and the status."""
        try:
            return function(request, timeout=timeout)
        except grpc.RpcError as error:
            if on_error is not None:
                on_error(error)
            code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
            details = (error.details() if isinstance(error, grpc.Call) else str(error)) or ""
            if code == grpc.StatusCode.UNAVAILABLE:
                raise StepFailed(Outcome.ERROR, f"{service} unavailable ({method}): {details}") from None
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise StepFailed(
                    Outcome.ERROR, f"{service} {method} gave no answer within {timeout:.0f}s"
                ) from None
            outcome = (outcomes or {}).get(code, default_outcome)
            raise StepFailed(outcome, f"{service} {method} failed ({code.name}): {details}") from None

    @staticmethod
    def _account_failed_build(error: grpc.RpcError, attempt: AttemptRecord, scratch: _AttemptScratch) -> None:
        """A build that failed after LLM calls still spent tokens: the builder reports them in the status."""
        usage = _builder_error_usage(error)
        if usage is None:
            return
        attempt.provider = usage.get("provider", "")
        attempt.model = usage.get("model", "")
        attempt.input_tokens = _int_or_none(usage.get("input_tokens"))
        attempt.output_tokens = _int_or_none(usage.get("output_tokens"))
        attempt.total_tokens = _int_or_none(usage.get("total_tokens")) or 0
        attempt.actual_max_tokens = _int_or_none(usage.get("actual_max_tokens")) or attempt.actual_max_tokens
        if usage.get("calls") != "1":
            return  # only totals over several calls: no honest per-call outcome to record
        token_usage = common_pb2.TokenUsage(total_tokens=attempt.total_tokens)
        if attempt.input_tokens is not None:
            token_usage.input_tokens = attempt.input_tokens
        if attempt.output_tokens is not None:
            token_usage.output_tokens = attempt.output_tokens
        stop_reason = usage.get("stop_reason", "")
        call = builder_pb2.LlmCall(
            provider=attempt.provider,
            model=attempt.model,
            max_tokens=attempt.actual_max_tokens,
            usage=token_usage,
            stop_reason=stop_reason,
        )
        scratch.build = builder_pb2.BuildResponse(
            usage=token_usage,
            provider=attempt.provider,
            model=attempt.model,
            stop_reason=stop_reason,
            truncated=is_truncating_stop_reason(stop_reason),
            actual_max_tokens=attempt.actual_max_tokens,
            calls=[call],
        )


def _builder_error_usage(error: grpc.RpcError) -> dict[str, str] | None:
    """The usage metadata of a failed Build (google.rpc.ErrorInfo in the status), if any."""
    if not isinstance(error, grpc.Call):
        return None
    try:
        status = rpc_status.from_call(error)
    except ValueError:
        return None
    if status is None:
        return None
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        is_info = detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR) and detail.Unpack(info)
        if is_info and info.domain == BUILDER_ERROR_DOMAIN:
            return dict(info.metadata)
    return None


def _int_or_none(value: str | None) -> int | None:
    try:
        return None if value is None else int(value)
    except ValueError:
        return None


def _count(value: int | None) -> str:
    return "?" if value is None else str(value)


def _token_attributes(attempt: AttemptRecord) -> dict[str, Any]:
    """The token story of an attempt as span attributes; unknown counts are left out."""
    attributes: dict[str, Any] = {
        "autopack.tokens.predicted": attempt.predicted_output_tokens,
        "autopack.tokens.selected_budget": attempt.selected_budget,
        "autopack.tokens.actual_max": attempt.actual_max_tokens,
        "autopack.tokens.total": attempt.total_tokens,
    }
    if attempt.input_tokens is not None:
        attributes["autopack.tokens.input"] = attempt.input_tokens
    if attempt.output_tokens is not None:
        attributes["autopack.tokens.output"] = attempt.output_tokens
    if attempt.smape is not None:
        attributes["autopack.tokens.smape"] = attempt.smape
    return attributes
