"""Executes runs: one phase at a time, each attempt through memory, applier, estimator and builder.

Each phase is one trace: the span ``phase <phase_id>`` is a new root carrying the
run and phase ids as W3C baggage, so every downstream span of the phase (and of
its retry) lands in the same trace. Attempts are child spans. The phase span
ends with the token story of the deciding attempt as attributes.

Runs execute on daemon worker threads under a lease in the database. A keeper
thread renews this process's leases and claims (``FOR UPDATE SKIP LOCKED``) runs
nobody holds: a resumed run, a phase queued by a drain, or a run whose lease expired
because its replica died; those resume from their first phase that is not done.

A failed attempt goes through recovery (see ``recovery.py``): budget escalation,
deterministic mitigation, re-plan on similar failures, the doctor. Infrastructure
failures are retried with backoff (tenacity) and never use up an attempt; attempts cut
short by a crash, a cancel or a phase timeout do not count either, but their tokens do.
"""

from __future__ import annotations

import logging
import os
import queue
import shlex
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import grpc
from autopack.applier.v1 import applier_pb2
from autopack.builder.v1 import builder_pb2
from autopack.common.v1 import common_pb2
from autopack.estimator.v1 import estimator_pb2
from autopack.memory.v1 import memory_pb2
from autopack_common.database import utcnow
from autopack_common.deliverables import sanitize_deliverables
from autopack_common.telemetry import current_trace_id, phase_baggage
from autopack_common.truncation import is_truncating_stop_reason
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from autopack_orchestrator import memory_steps, recovery
from autopack_orchestrator.clients import ServiceClients
from autopack_orchestrator.convert import phase_to_proto
from autopack_orchestrator.dependencies import MANIFESTS, declared_requirement
from autopack_orchestrator.events import EventType, FailureKind, Outcome, State
from autopack_orchestrator.failures import FailureContext, detect, fingerprint
from autopack_orchestrator.outcomes import estimator_samples
from autopack_orchestrator.plan import PhaseSpec
from autopack_orchestrator.settings import OrchestratorSettings
from autopack_orchestrator.store import AttemptRecord, PhaseRecord, RunRecord, RunStore, Usage

log = logging.getLogger(__name__)

INTENTIONS = "intentions"
PHASE_SUMMARIES = "phase-summaries"
MAX_MEMORY_TEXT_BYTES = 2048
MAX_REASON_CHARS = 2000
DEFAULT_CHECK_TIMEOUT_SECONDS = 300
BUILDER_ERROR_DOMAIN = "builder.autopack"
# Status codes of infrastructure trouble: retried with backoff, never counted as an attempt.
RETRIED_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED})
PHASE_TIMEOUT = "phase timeout: the drain's phase time limit passed"
PASSING_VERDICTS = frozenset({applier_pb2.CHECK_VERDICT_PASSED, applier_pb2.CHECK_VERDICT_NO_NEW_FAILURES})


class StepFailed(Exception):
    """A step ended the attempt: its outcome and a reason a person can act on."""

    def __init__(self, outcome: Outcome, reason: str, transient: bool = False, code: str = "") -> None:
        super().__init__(reason)
        self.outcome = outcome
        self.reason = reason
        self.transient = transient
        self.code = code


class RunInterrupted(Exception):
    """This process must stop executing the run (shutting down, or its lease was lost).

    The run is left as it is: whoever takes it over settles the attempt in flight.
    """


class RunStopped(Exception):
    """The run must stop here and now (cancelled, phase timeout, health budget, doctor)."""

    def __init__(self, state: State, reason: str, phase_state: State | None = None) -> None:
        super().__init__(reason)
        self.state = state
        self.reason = reason
        self.phase_state = phase_state or state


class _Retryable(Exception):
    """Internal: an RPC error worth another try."""

    def __init__(self, error: grpc.RpcError) -> None:
        super().__init__(str(error))
        self.error = error


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
        self._wake = threading.Event()
        # Per worker thread: the drain's deadline of the phase being executed, which bounds every RPC.
        self._phase_deadline = threading.local()
        self._memory_steps = memory_steps.MemorySteps(clients, settings, store, self._call, StepFailed)
        self._health = recovery.HealthLimits(
            infra_errors=settings.max_infra_errors_per_run,
            patch_failures=settings.max_patch_failures_per_run,
            failures=settings.max_failures_per_run,
        )

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Resume abandoned runs now and keep leases fresh from now on."""
        if self._keeper is None:
            self._keeper = threading.Thread(target=self._keep_leases, name="run-lease-keeper", daemon=True)
            self._keeper.start()

    def shutdown(self, grace: float = 5.0) -> None:
        """Stop at the next step; unfinished runs are resumed later (here or by another replica)."""
        self._stopping.set()
        self._wake.set()
        with self._active_lock:
            self._active_lock.wait_for(lambda: not self._active, timeout=grace)
        self._pool.close()

    def wait_idle(self, timeout: float) -> bool:
        """True once no run is executing in this process (for tests and shutdown)."""
        with self._active_lock:
            return self._active_lock.wait_for(lambda: not self._active, timeout=timeout)

    def wake(self) -> None:
        """Look for unowned work now instead of at the next poll (after queueing work here)."""
        self._wake.set()

    def _keep_leases(self) -> None:
        """Heartbeat: renew our leases every lease/3; claim unowned work every claim poll."""
        renew_every = max(self._settings.lease_seconds / 3, 0.05)
        poll = min(self._settings.claim_poll_seconds, renew_every)
        next_renewal = 0.0
        while not self._stopping.is_set():
            try:
                with self._active_lock:
                    active = set(self._active)
                now = time.monotonic()
                if now >= next_renewal:
                    self._store.renew_leases(self.owner, self._settings.lease_seconds, active)
                    next_renewal = now + renew_every
                free = self._settings.executor_workers - len(active)
                for run_id in self._store.claim_runs(self.owner, self._settings.lease_seconds, free):
                    log.info("claimed run %s", run_id)
                    self._submit(run_id, resumed=True)
            except Exception:
                log.exception("lease keeping failed; retrying in %.1fs", poll)
            self._wake.wait(poll)
            self._wake.clear()

    def start_run(self, run_id: str) -> RunRecord:
        """QUEUED -> EXECUTING now; the phases run in the background."""
        record = self._store.start_run(run_id, self.owner, self._settings.lease_seconds)
        self._submit(run_id, resumed=False)
        return record

    def resume_run(self, run_id: str) -> RunRecord:
        """FAILED/CANCELLED -> EXECUTING here, from the first unfinished phase."""
        record = self._store.resume_run(run_id, self.owner, self._settings.lease_seconds)
        self._submit(run_id, resumed=False)
        return record

    def cancel_run(self, run_id: str, reason: str) -> RunRecord:
        """Cancel now if nobody executes the run, else flag it for its replica's next step."""
        return self._store.request_cancel(run_id, reason)

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
        except RunStopped as stop:
            self._reconcile_interrupted_usage(run_id)
            self._store.finish_run(
                run_id, stop.state, f"run {stop.state.value.lower()}: {stop.reason}", stop.reason
            )
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
        """Between steps: stop if shutting down, the lease was lost, a cancel came, or time is up."""
        if self._stopping.is_set():
            raise RunInterrupted("orchestrator shutting down")
        owner, cancel, deadline = self._store.run_control(run_id)
        if owner != self.owner:
            raise RunInterrupted("lease lost to another orchestrator")
        if cancel:
            raise RunStopped(State.CANCELLED, "cancelled on request")
        if deadline is not None and utcnow() > deadline:
            raise RunStopped(State.FAILED, PHASE_TIMEOUT)

    # -- a run --------------------------------------------------------------------------------

    def execute(self, run_id: str, resumed: bool = False) -> None:
        """Run every phase that is not done, in order; a phase that fails (or stops) ends the run.

        A run a drain queued executes only its ``only_phase`` and, if later phases remain,
        goes back to QUEUED (StartRun continues it).
        """
        run = self._store.get_run(run_id)
        if run.state is not State.EXECUTING:
            return
        self._phase_deadline.value = run.phase_deadline
        try:
            self._execute(run, resumed)
        finally:
            self._phase_deadline.value = None

    def _execute(self, run: RunRecord, resumed: bool) -> None:
        run_id = run.run_id
        pending = [phase for phase in run.phases() if not phase.state.done]
        if run.only_phase:
            pending = [phase for phase in pending if phase.phase_id == run.only_phase][:1]
        elif resumed:
            where = f"phase {pending[0].phase_id}" if pending else "its end"
            self._store.append_event(
                run_id,
                EventType.RUN_STATE,
                f"run resumed after an orchestrator restart, from {where}",
                state=State.EXECUTING,
            )
        if pending:
            with self._root_span(f"run {run_id} prepare", run_id) as span:
                span.set_attribute("autopack.run_id", run_id)
                try:
                    self._prepare(run)
                except StepFailed as failure:
                    span.set_status(Status(StatusCode.ERROR, failure.reason))
                    self._store.finish_run(
                        run_id, State.FAILED, f"run failed: {failure.reason}", failure.reason
                    )
                    return
        for phase in pending:
            self._checkpoint(run_id)
            state, reason = self._run_phase(run, phase)
            if state.done:
                continue
            reason = f"phase {phase.phase_id}: {reason}"
            self._reconcile_interrupted_usage(run_id)
            final = State.CANCELLED if state is State.CANCELLED else State.FAILED
            self._store.finish_run(run_id, final, f"run {final.value.lower()}: {reason}", reason)
            return
        self._reconcile_interrupted_usage(run_id)
        phases = self._store.get_run(run_id, with_attempts=False).phases()
        left = [phase.phase_id for phase in phases if not phase.state.done]
        if left:  # a drained phase finished; the rest of the run waits for StartRun or the next drain
            self._store.park_run(run_id, f"phase {run.only_phase} done; {len(left)} phase(s) still queued")
            return
        skipped = sum(1 for phase in phases if phase.state is State.SKIPPED)
        note = f" ({skipped} skipped)" if skipped else ""
        self._store.finish_run(run_id, State.COMPLETE, f"run complete: {len(phases)} phase(s){note}")

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
            run.run_id,
            EventType.STEP,
            f"memory: intention stored ({len(text.encode())} bytes), project {self._memory_steps.project(run)}",
        )
        indexed = self._memory_steps.index_workspace(run.run_id, response.workspace_path)
        if indexed:
            self._store.append_event(run.run_id, EventType.STEP, indexed)

    # -- a phase ------------------------------------------------------------------------------

    def _run_phase(self, run: RunRecord, phase: PhaseRecord) -> tuple[State, str]:
        """Attempts with recovery inside one phase span; returns the phase's final state and reason."""
        run_id, phase_id = run.run_id, phase.phase_id
        verb = "resumed" if phase.current_attempts() else "started"
        self._store.set_phase_state(run_id, phase_id, State.EXECUTING, f"phase {phase_id} {verb}")
        with self._root_span(f"phase {phase_id}", run_id, phase_id) as span:
            span.set_attribute("autopack.run_id", run_id)
            span.set_attribute("autopack.phase_id", phase_id)
            for attempt in phase.current_attempts():
                if not attempt.finished:
                    self._settle_interrupted(run_id, phase_id, attempt)
            last: _AttemptResult | None = None
            state, reason = State.FAILED, "no attempts left"
            max_attempts = self._max_attempts(run)
            try:
                while True:
                    phase = self._store.get_run(run_id).phase(phase_id)
                    finished = [attempt for attempt in phase.current_attempts() if attempt.finished]
                    if finished and finished[-1].outcome is Outcome.SUCCESS:
                        # Crashed after the deciding attempt, before the phase was marked.
                        state, reason = State.COMPLETE, ""
                        break
                    if phase.counted_attempts() >= max_attempts:
                        latest = last.record if last else (finished[-1] if finished else None)
                        why = latest.failure_reason if latest else reason
                        reason = f"{phase.counted_attempts()} attempt(s) used: {why}"
                        break
                    if finished:
                        self._checkpoint(run_id)
                    breach = recovery.health_breach(
                        self._store.failed_attempts_since(run_id, run.started_at), self._health
                    )
                    if breach:
                        self._store.append_event(run_id, EventType.RECOVERY, breach, phase_id=phase_id)
                        raise RunStopped(State.FAILED, breach)
                    number = max((attempt.number for attempt in phase.attempts), default=0) + 1
                    # The prompt and the budget learn from the last attempt that counted, not from an
                    # infrastructure error or an interruption.
                    counted = [attempt for attempt in finished if attempt.counted]
                    last = self._run_attempt(run, phase, number, counted[-1] if counted else None)
                    if last.record.outcome is Outcome.SUCCESS:
                        state, reason = State.COMPLETE, ""
                        break
                    if not last.rolled_back_cleanly:
                        reason = last.record.failure_reason
                        break
                    if not last.record.counted:
                        continue  # infrastructure: not an attempt; the health budget bounds this loop
                    if phase.counted_attempts() + 1 >= max_attempts:
                        continue  # no attempt left to use what recovery would suggest
                    decision = self._recover(run, phase_id, last.record)
                    if decision is not None:
                        state, reason = decision
                        break
            except RunStopped as stop:
                state, reason = stop.phase_state, stop.reason
                self._phase_deadline.value = None  # the phase is decided: its summary must still be stored
                self._finish_phase(run, phase_id, span, last, state, reason)
                raise
            self._phase_deadline.value = None
            self._finish_phase(run, phase_id, span, last, state, reason)
        return state, reason

    def _max_attempts(self, run: RunRecord) -> int:
        """Counted attempts a phase of this run gets: a drain's limit, else the setting."""
        return run.max_attempts or self._settings.max_attempts

    def _finish_phase(
        self,
        run: RunRecord,
        phase_id: str,
        span: trace.Span,
        last: _AttemptResult | None,
        state: State,
        reason: str,
    ) -> None:
        phase = self._store.get_run(run.run_id).phase(phase_id)
        attempts_made = len(phase.current_attempts())
        succeeded = state is State.COMPLETE
        self._set_phase_attributes(span, last.record if last else None, state, attempts_made)
        if not succeeded:
            span.set_status(Status(StatusCode.ERROR, reason[:200]))
        self._store_summary(run, phase.spec, last, state, attempts_made)
        message = f"phase {phase_id} {state.value.lower()} after {attempts_made} attempt(s)"
        if last is not None and last.record.check_verdict and succeeded:
            message += f" (checks {last.record.check_verdict})"
        if reason and not succeeded:
            message += f": {_short(reason, 300)}"
        self._store.set_phase_state(run.run_id, phase_id, state, message, reason)

    def _set_phase_attributes(
        self, span: trace.Span, attempt: AttemptRecord | None, state: State, attempts_made: int
    ) -> None:
        if attempt is not None:
            span.set_attributes(_token_attributes(attempt))
        span.set_attribute("autopack.phase.outcome", state.value)
        span.set_attribute("autopack.phase.attempts", attempts_made)

    def _settle_interrupted(self, run_id: str, phase_id: str, attempt: AttemptRecord) -> None:
        """An attempt cut short by a crash: undo what it applied and close it, not counted."""
        reason = "interrupted by an orchestrator restart (not counted)"
        if attempt.savepoint and attempt.base_savepoint:
            try:
                self._rollback(run_id, phase_id, attempt.base_savepoint)
            except StepFailed as failure:
                reason += f"; rollback failed: {failure.reason}"
        attempt.outcome = Outcome.ERROR
        attempt.failure_reason = reason
        attempt.failure_kind = FailureKind.INTERRUPTED.value
        attempt.counted = False
        attempt.finished_at = utcnow()
        self._store.save_attempt(
            run_id,
            phase_id,
            attempt,
            EventType.ATTEMPT_FINISHED,
            f"attempt {attempt.number} closed: {reason}",
        )
        self._reconcile_interrupted_usage(run_id)

    def _reconcile_interrupted_usage(self, run_id: str) -> None:
        """Tokens of attempts cut short mid-Build go into the run's totals, from the builder's records.

        An attempt killed while its Build ran (replica SIGKILL, a phase timeout, a cancel) never
        got the BuildResponse carrying its usage, but the builder recorded every provider request
        of the run (``GetUsage`` by run). What the builder counts beyond the run's totals here
        (attempts plus doctor and re-plan calls) was spent by such attempts: it is stored on the
        latest interrupted attempt, so the run's totals match the builder's. Called when an
        interrupted attempt is settled and before a run ends; idempotent (once stored, nothing is
        left over). A request the builder is still serving is not recorded yet: the next
        reconciliation (the run's end, or its next execution) picks it up.
        """
        try:
            run = self._store.get_run(run_id)
            interrupted = [
                (phase.phase_id, attempt)
                for phase in run.phases()
                for attempt in phase.attempts
                if attempt.finished and attempt.failure_kind == FailureKind.INTERRUPTED.value
            ]
            if not interrupted:
                return
            response = self._call(
                "builder",
                "GetUsage",
                self._clients.builder.GetUsage,
                builder_pb2.GetUsageRequest(group_by=builder_pb2.USAGE_GROUP_BY_RUN, run_id=run_id),
                self._settings.rpc_timeout_seconds,
            )
        except (StepFailed, RunStopped) as failure:
            log.warning("usage of run %s not reconciled with the builder: %s", run_id, failure)
            return
        spent = response.total.usage
        extra = unaccounted_usage(spent, run.usage)
        if extra.total_tokens <= 0:
            return
        phase_id, attempt = max(interrupted, key=lambda item: item[1].started_at)
        attempt.total_tokens += extra.total_tokens
        if extra.input_tokens:
            attempt.input_tokens = (attempt.input_tokens or 0) + extra.input_tokens
        if extra.output_tokens:
            attempt.output_tokens = (attempt.output_tokens or 0) + extra.output_tokens
        self._store.save_attempt(
            run_id,
            phase_id,
            attempt,
            EventType.RECOVERY,
            f"usage: attempt {attempt.number} was interrupted mid-build; {extra.total_tokens} tokens "
            f"({_count(extra.input_tokens)} input + {_count(extra.output_tokens)} output) the builder "
            "recorded for this run are added to it",
        )

    def _store_summary(
        self,
        run: RunRecord,
        spec: PhaseSpec,
        last: _AttemptResult | None,
        state: State,
        attempts_made: int,
    ) -> None:
        """Step 10: what later phases (and later runs) should remember about this one."""
        succeeded = state is State.COMPLETE
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
        phase = self._store.get_run(run.run_id).phase(spec.phase_id)
        self._memory_steps.remember_phase(
            run,
            memory_steps.PhaseOutcome(
                phase, state, text, last.record if last else None, last.changed_paths if last else ()
            ),
        )

    # -- recovery -----------------------------------------------------------------------------

    def _recover(self, run: RunRecord, phase_id: str, failed: AttemptRecord) -> tuple[State, str] | None:
        """After a counted failure: prepare the next attempt, or decide the phase (state, reason)."""
        run_id = run.run_id
        record = self._store.get_run(run_id)
        phase = record.phase(phase_id)
        if recovery.needs_escalation(failed) and phase.escalations < 1:
            return None  # the next attempt's budget is escalated (see _budget); no doctor for tokens
        spec = phase.spec
        context = FailureContext(
            outcome=failed.outcome.value,
            text=failed.failure_reason,
            command=phase.check_command or spec.validation_command,
            deliverables=spec.deliverables,
            scope_paths=spec.scope_paths,
        )
        mitigation = detect(context, [str(item.get("pattern")) for item in phase.mitigations])
        if mitigation is not None:
            values: dict[str, Any] = {
                "mitigations": [
                    *phase.mitigations,
                    {
                        "pattern": mitigation.pattern,
                        "description": mitigation.description,
                        "hint": mitigation.hint,
                        "command": list(mitigation.command) if mitigation.command else None,
                    },
                ]
            }
            message = (
                f"mitigation: {mitigation.pattern} ({mitigation.description}); hint added to the next prompt"
            )
            if mitigation.pattern == "python_missing_dep" and mitigation.module:
                install_hint, note = self._install_declared_dependency(run_id, mitigation.module)
                if install_hint:
                    values["mitigations"][-1]["hint"] = install_hint
                    message = f"mitigation: {mitigation.pattern} ({mitigation.description}); {note}"
                else:
                    message += f" (no install: {note})"
            if mitigation.command:
                values["check_command"] = mitigation.command
                message += f"; check command now `{shlex.join(mitigation.command)}`"
            self._store.update_phase(run_id, phase_id, message + "; doctor not needed", **values)
            return None
        failures = recovery.counted_failures(phase)
        streak = recovery.similar_streak(failures)
        if streak and phase.replans < self._settings.replans_per_phase:
            reason = f"attempts {streak[0].number} and {streak[1].number} failed the same way"
            if self._replan(run, phase, streak, reason):
                return None
        return self._doctor(run, record.doctor_calls, phase, failures)

    def _install_declared_dependency(self, run_id: str, module: str) -> tuple[str, str]:
        """Install a missing module the workspace declares, through the applier's allowlisted ``pip``.

        Returns (hint for the next prompt, event note) when installed, else ("", why not). Only
        a plain specifier the workspace itself declares is installed (``dependencies.py``); the
        applier decides whether ``pip`` may run at all (``AUTOPACK_APPLIER_ALLOWED_COMMANDS``,
        not allowed by default: it installs into the interpreter the checks use).
        """
        timeout = self._settings.rpc_timeout_seconds
        try:
            read = self._call(
                "applier",
                "ReadFiles",
                self._clients.applier.ReadFiles,
                applier_pb2.ReadFilesRequest(run_id=run_id, paths=list(MANIFESTS)),
                timeout,
            )
        except StepFailed as failure:
            return "", f"the workspace's dependency manifests could not be read: {failure.reason}"
        requirement = declared_requirement(module, {f.path: f.content for f in read.files})
        if requirement is None:
            return (
                "",
                f"{module!r} is not a declared dependency of the workspace (requirements, pyproject.toml)",
            )
        command = ["pip", "install", requirement.specifier]
        try:
            result = self._call(
                "applier",
                "RunChecks",
                self._clients.applier.RunChecks,
                applier_pb2.RunChecksRequest(run_id=run_id, command=command, timeout_seconds=300),
                300 + timeout,
            )
        except StepFailed as failure:
            if failure.code == grpc.StatusCode.PERMISSION_DENIED.name:
                return "", (
                    f"{requirement.specifier!r} is declared in {requirement.source}, but pip is not on the "
                    "applier's allowlist"
                )
            return "", f"`{shlex.join(command)}` failed: {failure.reason}"
        if result.exit_code != 0 or result.timed_out:
            return "", f"`{shlex.join(command)}` exited {result.exit_code}: {_short(result.output_tail, 300)}"
        hint = (
            f"The Python module '{module}' was missing from the check environment; the workspace declares "
            f"it ({requirement.specifier} in {requirement.source}) and it has now been installed: it may be "
            "imported."
        )
        return (
            hint,
            f"installed {requirement.specifier} (declared in {requirement.source}) with `{shlex.join(command)}`",
        )

    def _doctor_request(
        self, run: RunRecord, phase: PhaseRecord, failures: Iterable[AttemptRecord]
    ) -> dict[str, Any]:
        """The fields Diagnose and Replan share: the phase as it is now, its failures, the intention."""
        return {
            "run_id": run.run_id,
            "phase": phase_to_proto(phase.spec),
            "failures": self._failed_attempts(failures),
            "intention_context": intention_text(run),
        }

    def _failed_attempts(self, failures: Iterable[AttemptRecord]) -> list[builder_pb2.FailedAttempt]:
        return [
            builder_pb2.FailedAttempt(
                attempt=attempt.number,
                outcome=attempt.outcome.value,
                fingerprint=attempt.fingerprint,
                detail=_short(attempt.failure_reason, 3000),
            )
            for attempt in failures
        ]

    def _replan(self, run: RunRecord, phase: PhaseRecord, failures: list[AttemptRecord], reason: str) -> bool:
        """Builder ``Replan``: a revised description within the run's intention; False if none came."""
        run_id, phase_id = run.run_id, phase.phase_id
        try:
            response = self._call(
                "builder",
                "Replan",
                self._clients.builder.Replan,
                builder_pb2.ReplanRequest(**self._doctor_request(run, phase, failures)),
                self._settings.build_timeout_seconds,
                on_error=self._account_failed_recovery(run.run_id, phase.phase_id, doctor=False),
            )
        except StepFailed as failure:
            self._store.append_event(
                run_id,
                EventType.RECOVERY,
                f"replan unavailable ({reason}): {failure.reason}",
                phase_id=phase_id,
            )
            return False
        self._store.add_recovery_usage(run_id, phase_id, _usage(response.usage), doctor=False)
        revised = response.revised_description.strip()
        if not revised or revised == phase.spec.description.strip():
            self._store.append_event(
                run_id,
                EventType.RECOVERY,
                f"replan ({reason}): no new description came back",
                phase_id=phase_id,
            )
            return False
        self._store.replan_phase(
            run_id,
            phase_id,
            replace(phase.spec, description=revised),
            phase.original_description or phase.spec.description,
            f"replan: {reason}; {_short(response.rationale, 400) or 'no rationale given'} — new description: "
            f"{_short(revised, 600)} ({response.usage.total_tokens} tokens, {response.model or 'model?'})",
        )
        return True

    def _account_failed_recovery(
        self, run_id: str, phase_id: str, doctor: bool
    ) -> Callable[[grpc.RpcError], None]:
        """A Diagnose or Replan that failed after LLM calls still spent tokens: they go in the totals."""

        def account(error: grpc.RpcError) -> None:
            usage = _builder_error_usage(error)
            if usage is not None:
                spent = Usage(
                    _int_or_none(usage.get("input_tokens")),
                    _int_or_none(usage.get("output_tokens")),
                    _int_or_none(usage.get("total_tokens")) or 0,
                )
                self._store.add_recovery_usage(run_id, phase_id, spent, doctor=doctor)

        return account

    def _doctor(
        self, run: RunRecord, run_doctor_calls: int, phase: PhaseRecord, failures: list[AttemptRecord]
    ) -> tuple[State, str] | None:
        """Builder ``Diagnose`` within its budgets; acts on the recommended action."""
        run_id, phase_id = run.run_id, phase.phase_id
        refusal = recovery.doctor_refusal(
            phase.doctor_calls,
            run_doctor_calls,
            self._settings.doctor_calls_per_phase,
            self._settings.doctor_calls_per_run,
        )
        if refusal:
            self._store.append_event(
                run_id, EventType.RECOVERY, f"doctor: not asked, {refusal}", phase_id=phase_id
            )
            return None
        try:
            response = self._call(
                "builder",
                "Diagnose",
                self._clients.builder.Diagnose,
                builder_pb2.DiagnoseRequest(
                    **self._doctor_request(run, phase, failures),
                    mitigations_applied=[str(item.get("pattern")) for item in phase.mitigations],
                ),
                self._settings.build_timeout_seconds,
                on_error=self._account_failed_recovery(run_id, phase_id, doctor=True),
            )
        except StepFailed as failure:
            if failure.code == grpc.StatusCode.UNIMPLEMENTED.name:
                message = "doctor unavailable: the builder does not implement Diagnose; deterministic hardening only"
            else:
                message = f"doctor unavailable: {failure.reason}; deterministic hardening only"
            self._store.append_event(run_id, EventType.RECOVERY, message, phase_id=phase_id)
            return None
        self._store.add_recovery_usage(run_id, phase_id, _usage(response.usage), doctor=True)
        action = builder_pb2.DoctorAction.Name(response.action).removeprefix("DOCTOR_ACTION_").lower()
        diagnosis = _short(response.diagnosis, 500) or "no diagnosis given"
        message = (
            f"doctor: {action} (confidence {response.confidence:.2f}, {response.model or 'model?'}, "
            f"{response.usage.total_tokens} tokens): {diagnosis}"
        )
        if response.action == builder_pb2.DOCTOR_ACTION_SKIP_PHASE:
            self._store.append_event(run_id, EventType.RECOVERY, message, phase_id=phase_id)
            return State.SKIPPED, f"skipped on the doctor's advice: {diagnosis}"
        if response.action == builder_pb2.DOCTOR_ACTION_MARK_FATAL:
            self._store.append_event(run_id, EventType.RECOVERY, message, phase_id=phase_id)
            return State.FAILED, f"marked fatal by the doctor: {diagnosis}"
        if response.action == builder_pb2.DOCTOR_ACTION_ROLLBACK_RUN:
            # Failed attempts are already rolled back: the workspace is as it was before the phase.
            self._store.append_event(run_id, EventType.RECOVERY, message, phase_id=phase_id)
            raise RunStopped(State.FAILED, f"the doctor stopped the run (rollback_run): {diagnosis}")
        hint = response.hint.strip()
        if hint:
            message += f"; hint for the next attempt: {_short(hint, 500)}"
        self._store.update_phase(run_id, phase_id, message, hint=hint)
        if response.action == builder_pb2.DOCTOR_ACTION_REPLAN:
            fresh = self._store.get_run(run_id).phase(phase_id)
            if fresh.replans < self._settings.replans_per_phase:
                self._replan(run, fresh, failures, "the doctor asked for a re-plan")
        return None

    # -- an attempt ---------------------------------------------------------------------------

    def _run_attempt(
        self, run: RunRecord, phase: PhaseRecord, number: int, previous: AttemptRecord | None
    ) -> _AttemptResult:
        run_id, phase_id = run.run_id, phase.phase_id
        with self._tracer.start_as_current_span(f"attempt {number}", kind=SpanKind.INTERNAL) as span:
            attempt = AttemptRecord(number=number, started_at=utcnow(), trace_id=current_trace_id())
            attempt.guidance = "\n".join(f"- {hint}" for hint in recovery.guidance(phase))
            span.set_attribute("autopack.phase.attempt", number)
            self._store.save_attempt(
                run_id, phase_id, attempt, EventType.ATTEMPT_STARTED, f"attempt {number} started"
            )
            scratch = _AttemptScratch()
            stopped: RunStopped | None = None
            try:
                self._attempt_steps(run, phase, attempt, previous, scratch)
                attempt.outcome = Outcome.SUCCESS
            except StepFailed as failure:
                attempt.outcome = failure.outcome
                attempt.failure_reason = _short(failure.reason)
                attempt.failure_kind = (
                    FailureKind.TRANSIENT if failure.transient else FailureKind.DETERMINISTIC
                ).value
                attempt.counted = not failure.transient
            except RunStopped as stop:
                stopped = stop
                self._phase_deadline.value = None  # what follows (rollback, outcomes) must still run
                attempt.outcome = Outcome.ERROR
                attempt.failure_reason = f"interrupted: {stop.reason} (not counted)"
                attempt.failure_kind = FailureKind.INTERRUPTED.value
                attempt.counted = False
            except RunInterrupted:
                raise  # another replica (or this one after a restart) settles the attempt
            except Exception as error:
                log.exception("attempt %d of %s/%s failed unexpectedly", number, run_id, phase_id)
                attempt.outcome = Outcome.ERROR
                attempt.failure_reason = _short(f"internal error: {error!r}")
                attempt.failure_kind = FailureKind.DETERMINISTIC.value
            if attempt.outcome is not Outcome.SUCCESS:
                attempt.fingerprint = fingerprint(attempt.outcome.value, attempt.failure_reason)
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
            if attempt.failure_kind == FailureKind.TRANSIENT.value:
                message += " (infrastructure, not counted)"
            if attempt.failure_reason:
                message += f": {attempt.failure_reason}"
            self._store.save_attempt(run_id, phase_id, attempt, EventType.ATTEMPT_FINISHED, message)
            if stopped is not None:
                raise stopped
            return result

    def _attempt_steps(
        self,
        run: RunRecord,
        phase: PhaseRecord,
        attempt: AttemptRecord,
        previous: AttemptRecord | None,
        scratch: _AttemptScratch,
    ) -> None:
        """Steps 2-7 of a phase; raises StepFailed with the attempt outcome on the first failure."""
        spec = phase.spec
        run_id, phase_id = run.run_id, spec.phase_id
        timeout = self._settings.rpc_timeout_seconds
        step = self._step_event(run_id, phase_id)

        # 2. Memory: the run's intention and what earlier phases left behind.
        intention_hits = self._search(INTENTIONS, spec.description, run_id, limit=1)
        intention = (
            truncate_utf8(intention_hits[0].item.text, MAX_MEMORY_TEXT_BYTES) if intention_hits else ""
        )
        notes = [hit.item.text for hit in self._search(PHASE_SUMMARIES, spec.description, run_id, limit=5)]
        notes += self._memory_steps.recall(run, spec)  # earlier runs of the same repository
        step(f"memory: intention context {len(intention.encode())} bytes, {len(notes)} note(s)")

        # 3. Applier: the scoped files as they are now (secret files only by name).
        files, withheld = self._read_scope(run_id, spec, step)

        # 4. Memory: keep the most relevant files that fit the context budget.
        context_files = self._memory_steps.select_context(run, spec, files, step)

        # 5. Estimator: how many output tokens, and what max_tokens to send.
        self._budget(run_id, phase, attempt, previous, step)
        self._checkpoint(run_id)

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
                    previous_failure=_previous_failure(previous, attempt.guidance),
                    intention_context=intention,
                    memory_notes=[*notes, *withheld_notes(withheld)],
                    existing_paths=[*(f.path for f in files), *(w.path for w in withheld)],
                    # The number the phase's last counted attempt will have: the builder spends no
                    # empty-files retry there.
                    max_attempts=attempt.number
                    + max(self._max_attempts(run) - phase.counted_attempts() - 1, 0),
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
            + (f", {build.continuations} continuation(s)" if build.continuations else "")
        )
        if build.truncated:
            raise StepFailed(
                Outcome.TRUNCATED,
                f"output hit max_tokens={attempt.actual_max_tokens} (stop reason {build.stop_reason or 'unknown'})",
            )
        if not build.operations:
            raise StepFailed(Outcome.BUILD_FAILED, "builder returned no file operations")

        # Memory: has the change drifted from the run's intention? Blocking drift is not applied.
        drift, blocking = self._memory_steps.check_drift(run_id, intention_text(run), build)
        step(drift)
        if blocking:
            raise StepFailed(Outcome.BUILD_FAILED, drift)

        # 7. Applier: apply inside the scope (savepoint), then check.
        self._checkpoint(run_id)
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
                # Sanitised by the applier; with no scope their parent directories are the write scope.
                deliverables=list(spec.deliverables),
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

        command = phase.check_command or spec.validation_command
        if command:
            self._run_checks(run_id, phase_id, spec, command, attempt, step)

        self._checkpoint(run_id)
        if spec.deliverables:
            self._check_deliverables(run_id, spec, step)

    def _read_scope(
        self, run_id: str, spec: PhaseSpec, step: Callable[[str], None]
    ) -> tuple[list[applier_pb2.WorkspaceFile], list[applier_pb2.WithheldFile]]:
        """Step 3: the scope, read-only context and deliverables as the applier shows them.

        Env/secret files come back in ``withheld`` (path and rule, never content): the builder
        is told they exist so it neither recreates them nor guesses their content.
        """
        deliverables = sanitize_deliverables(spec.deliverables).paths
        paths = _unique([*spec.scope_paths, *spec.read_only_context, *deliverables])
        if not paths:
            return [], []
        read = self._call(
            "applier",
            "ReadFiles",
            self._clients.applier.ReadFiles,
            applier_pb2.ReadFilesRequest(run_id=run_id, paths=paths),
            self._settings.rpc_timeout_seconds,
        )
        message = f"read: {len(read.files)} file(s), {len(read.missing)} missing"
        if read.withheld:
            shown = ", ".join(item.path for item in read.withheld[:10])
            message += f", {len(read.withheld)} withheld as secret ({shown})"
        step(message)
        return list(read.files), list(read.withheld)

    def _check_deliverables(self, run_id: str, spec: PhaseSpec, step: Callable[[str], None]) -> None:
        """The deliverables gate: the applier's ``CheckDeliverables`` (sanitised, cumulative).

        Only what the applier lists as ``present`` counts: a deliverable is never assumed present
        because it was not reported missing (a withheld secret or a skipped binary file is not
        "missing" in ReadFiles either). Its problems and misplaced-file hints become the failure
        reason, which the next attempt's prompt shows.
        """
        report = self._call(
            "applier",
            "CheckDeliverables",
            self._clients.applier.CheckDeliverables,
            applier_pb2.CheckDeliverablesRequest(run_id=run_id, deliverables=list(spec.deliverables)),
            self._settings.rpc_timeout_seconds,
        )
        present = set(report.present)
        unmet = [deliverable for deliverable in report.deliverables if deliverable not in present]
        if unmet:
            problems = {problem.deliverable: problem.message for problem in report.problems}
            lines = [problems.get(item, f"{item} was not confirmed present by the applier") for item in unmet]
            reason = "missing deliverables: " + ", ".join(unmet) + "".join(f"\n- {line}" for line in lines)
            if report.hints:
                reason += "\nMisplaced files (write each deliverable at its expected path): " + "; ".join(
                    report.hints
                )
            raise StepFailed(Outcome.DELIVERABLES_MISSING, reason)
        message = f"deliverables: all {len(report.deliverables)} present"
        if report.dropped:
            message += f"; dropped while sanitising: {_short('; '.join(report.dropped), 300)}"
        step(message)

    def _run_checks(
        self,
        run_id: str,
        phase_id: str,
        spec: PhaseSpec,
        command: tuple[str, ...],
        attempt: AttemptRecord,
        step: Callable[[str], None],
    ) -> None:
        """Run the validation command; the applier's verdict decides (``passed`` if it gives none).

        A failure the applier attributes to flaky tests only (their result changed on an
        immediate re-run) is re-run once here before it can fail the attempt.
        """
        check_timeout = spec.validation_timeout_seconds or DEFAULT_CHECK_TIMEOUT_SECONDS
        shown = shlex.join(command)

        def run_once() -> applier_pb2.RunChecksResponse:
            return self._call(
                "applier",
                "RunChecks",
                self._clients.applier.RunChecks,
                applier_pb2.RunChecksRequest(
                    run_id=run_id, command=list(command), timeout_seconds=spec.validation_timeout_seconds
                ),
                check_timeout + self._settings.rpc_timeout_seconds,
                outcomes={
                    grpc.StatusCode.INVALID_ARGUMENT: Outcome.CHECKS_FAILED,
                    grpc.StatusCode.PERMISSION_DENIED: Outcome.CHECKS_FAILED,
                    grpc.StatusCode.FAILED_PRECONDITION: Outcome.CHECKS_FAILED,
                },
            )

        checks = run_once()
        if not _checks_pass(checks) and _only_flaky(checks):
            self._store.append_event(
                run_id,
                EventType.RECOVERY,
                f"checks: flaky suspects {', '.join(checks.flaky_suspects)}; re-running the checks once "
                "(not counted as an attempt)",
                phase_id=phase_id,
            )
            checks = run_once()
        attempt.check_exit_code = checks.exit_code
        verdict = _verdict_name(checks)
        attempt.check_verdict = verdict
        if not _checks_pass(checks):
            how = f"timed out after {check_timeout}s" if checks.timed_out else f"exited {checks.exit_code}"
            if verdict:
                how = f"{verdict} ({how})" + (f": {checks.verdict_reason}" if checks.verdict_reason else "")
            raise StepFailed(
                Outcome.CHECKS_FAILED, f"validation `{shown}` {how}: {_short(checks.output_tail, 1500)}"
            )
        if checks.flaky_suspects:
            self._store.append_event(
                run_id,
                EventType.RECOVERY,
                f"checks: {len(checks.flaky_suspects)} flaky suspect(s) passed on re-run "
                f"({', '.join(checks.flaky_suspects)}); they do not block the phase ({verdict or 'passed'})",
                phase_id=phase_id,
            )
        detail = (
            f" ({verdict}{': ' + checks.verdict_reason if checks.verdict_reason else ''})" if verdict else ""
        )
        step(f"checks: `{shown}` passed in {checks.duration_ms} ms{detail}")

    def _budget(
        self,
        run_id: str,
        phase: PhaseRecord,
        attempt: AttemptRecord,
        previous: AttemptRecord | None,
        step: Callable[[str], None],
    ) -> None:
        """Step 5: a fresh estimate, or (once per phase) an escalated budget after a truncation
        or an answer that used >= 95% of its budget."""
        spec = phase.spec
        timeout = self._settings.rpc_timeout_seconds
        why = recovery.needs_escalation(previous) if previous is not None else None
        if why and previous is not None and previous.estimate_id and phase.escalations < 1:
            truncated = why == "truncated"
            escalation = self._call(
                "estimator",
                "Escalate",
                self._clients.estimator.Escalate,
                estimator_pb2.EscalateRequest(
                    estimate_id=previous.estimate_id,
                    reason=estimator_pb2.ESCALATION_REASON_TRUNCATED
                    if truncated
                    else estimator_pb2.ESCALATION_REASON_HIGH_UTILIZATION,
                    tokens_used=previous.output_tokens or 0,
                    was_truncated=truncated,
                ),
                timeout,
            )
            attempt.estimate_id = previous.estimate_id
            attempt.predicted_output_tokens = previous.predicted_output_tokens
            attempt.selected_budget = escalation.retry_budget
            attempt.actual_max_tokens = escalation.actual_max_tokens
            cause = (
                "truncation"
                if truncated
                else f"{previous.output_tokens} of {previous.selected_budget} tokens used"
            )
            self._store.update_phase(
                run_id,
                spec.phase_id,
                f"estimate: escalated {previous.estimate_id} after {cause} to budget "
                f"{escalation.retry_budget}, max_tokens {escalation.actual_max_tokens} (once per phase)",
                escalations=phase.escalations + 1,
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
        """Step 9: one RecordOutcome per answer the model gave (see ``outcomes.estimator_samples``:
        failed requests and other roles are left out, a continuation chain is one summed sample)."""
        if not attempt.estimate_id:
            return
        recorded, rejected = 0, []
        for sample in estimator_samples(build):
            request = estimator_pb2.RecordOutcomeRequest(
                estimate_id=attempt.estimate_id,
                actual_output_tokens=sample.output_tokens,
                actual_max_tokens=sample.max_tokens,
                success=sample.final and attempt.outcome is Outcome.SUCCESS,
                truncated=sample.truncated,
                stop_reason=sample.stop_reason,
                model=sample.model,
                input_tokens=sample.input_tokens,
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

    def _call(
        self,
        service: str,
        method: str,
        function: Callable[..., Any],
        request: Any,
        timeout: float,
        default_outcome: Outcome = Outcome.ERROR,
        outcomes: Mapping[grpc.StatusCode, Outcome] | None = None,
        on_error: Callable[[grpc.RpcError], None] | None = None,
    ) -> Any:
        """Call with a deadline; a failure becomes StepFailed naming the service and the status.

        In a drained phase the deadline is also bounded by the phase's time limit: a call still
        running when it passes stops the phase as a timeout.

        UNAVAILABLE/ABORTED are retried with exponential backoff (tenacity); what still fails
        is a transient StepFailed: infrastructure, not the phase's fault.
        """

        deadline = getattr(self._phase_deadline, "value", None)
        capped = False
        if deadline is not None:
            left = (deadline - utcnow()).total_seconds()
            if left <= 0:
                raise RunStopped(State.FAILED, PHASE_TIMEOUT)
            capped, timeout = left < timeout, min(timeout, left)

        def attempt_call() -> Any:
            try:
                return function(request, timeout=timeout)
            except grpc.RpcError as error:
                code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
                if code in RETRIED_CODES:
                    raise _Retryable(error) from None
                raise

        retrying = Retrying(
            retry=retry_if_exception(lambda error: isinstance(error, _Retryable)),
            stop=stop_after_attempt(self._settings.transient_retries + 1),
            wait=wait_exponential(multiplier=self._settings.transient_backoff_seconds, max=8),
            reraise=True,
        )
        try:
            return retrying(attempt_call)
        except (grpc.RpcError, _Retryable) as failure:
            error = failure.error if isinstance(failure, _Retryable) else failure
            if on_error is not None:
                on_error(error)
            code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
            details = (error.details() if isinstance(error, grpc.Call) else str(error)) or ""
            if code in RETRIED_CODES:
                raise StepFailed(
                    Outcome.ERROR,
                    f"{service} unavailable ({method}) after {self._settings.transient_retries + 1} tries: {details}",
                    transient=True,
                    code=code.name,
                ) from None
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                if capped:
                    raise RunStopped(State.FAILED, PHASE_TIMEOUT) from None
                raise StepFailed(
                    Outcome.ERROR,
                    f"{service} {method} gave no answer within {timeout:.0f}s",
                    transient=True,
                    code=code.name,
                ) from None
            outcome = (outcomes or {}).get(code, default_outcome)
            raise StepFailed(
                outcome, f"{service} {method} failed ({code.name}): {details}", code=code.name
            ) from None

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
    """The usage metadata of a failed builder call (google.rpc.ErrorInfo in the status), if any."""
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


def unaccounted_usage(builder: common_pb2.TokenUsage, known: Usage) -> Usage:
    """What the builder recorded for a run beyond the run's totals here (never negative)."""
    extra_input = extra_output = None
    if builder.HasField("input_tokens"):
        extra_input = max(builder.input_tokens - (known.input_tokens or 0), 0)
    if builder.HasField("output_tokens"):
        extra_output = max(builder.output_tokens - (known.output_tokens or 0), 0)
    return Usage(extra_input, extra_output, max(builder.total_tokens - known.total_tokens, 0))


def withheld_notes(withheld: Iterable[applier_pb2.WithheldFile]) -> list[str]:
    """A note for the builder naming files that exist but are withheld (never their content)."""
    items = [f"{item.path} ({item.reason})" if item.reason else item.path for item in withheld]
    if not items:
        return []
    return [
        "These files exist in the workspace but are withheld as secrets; their content is not shown "
        "and must not be guessed, printed or recreated: " + ", ".join(items[:50])
    ]


def _previous_failure(previous: AttemptRecord | None, guidance: str) -> str:
    """What the next prompt is told: the last failure, then the guidance recovery collected."""
    parts = [previous.failure_reason] if previous is not None and previous.failure_reason else []
    if guidance:
        parts.append("Guidance for this attempt (follow it):\n" + guidance)
    return "\n\n".join(parts)


def _verdict_name(checks: applier_pb2.RunChecksResponse) -> str:
    """The verdict without prefix, or "" when the applier gave none."""
    if checks.verdict == applier_pb2.CHECK_VERDICT_UNSPECIFIED:
        return ""
    return applier_pb2.CheckVerdict.Name(checks.verdict).removeprefix("CHECK_VERDICT_")


def _checks_pass(checks: applier_pb2.RunChecksResponse) -> bool:
    """PASSED or NO_NEW_FAILURES complete a phase; an applier without verdicts falls back to ``passed``."""
    if checks.verdict == applier_pb2.CHECK_VERDICT_UNSPECIFIED:
        return checks.passed
    return checks.verdict in PASSING_VERDICTS


def _only_flaky(checks: applier_pb2.RunChecksResponse) -> bool:
    """Every newly failing test is a flaky suspect (never for collection errors or timeouts)."""
    if checks.verdict in (applier_pb2.CHECK_VERDICT_COLLECTION_ERROR, applier_pb2.CHECK_VERDICT_TIMED_OUT):
        return False
    suspects = set(checks.flaky_suspects)
    return bool(suspects) and set(checks.newly_failing) <= suspects


def _usage(usage: common_pb2.TokenUsage) -> Usage:
    return Usage(
        input_tokens=usage.input_tokens if usage.HasField("input_tokens") else None,
        output_tokens=usage.output_tokens if usage.HasField("output_tokens") else None,
        total_tokens=usage.total_tokens,
    )


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
