"""Batch drain: re-run FAILED/QUEUED phases across runs under seed 002's adaptive controls.

The controller picks one phase per idle run (a run's phases depend on each other, so only
its first unfinished phase can go), hands it to whichever replica claims it (the run
becomes unowned EXECUTING work limited to that phase, see ``RunStore.queue_drained_phase``)
and waits for the result. Sample-first triage tries one phase of every run before a second
phase of any; runs whose sample succeeded go before the rest, and runs that keep failing
the same way (fingerprint repeats) or keep timing out are skipped, phase by phase, with the
reason recorded. The session, its plan, results and summary (yield per attempt and per 1k
tokens, and why it is zero when it is) are persisted.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from autopack_common.database import utcnow
from autopack_common.errors import InvalidArgument

from autopack_orchestrator.events import State
from autopack_orchestrator.store import RunRecord, RunStore

log = logging.getLogger(__name__)

WAIT_POLL_SECONDS = 0.2


@dataclass(frozen=True)
class DrainOptions:
    """Adaptive controls with seed 002's defaults."""

    phase_timeout_seconds: int = 900
    max_total_minutes: int = 0
    max_timeouts_per_run: int = 2
    max_attempts_per_phase: int = 2
    max_fingerprint_repeats: int = 3
    batch_size: int = 10
    skip_phases: tuple[str, ...] = ()
    run_ids: tuple[str, ...] = ()
    skip_run_prefixes: tuple[str, ...] = ()
    sample_first: bool = True
    dry_run: bool = False
    parallelism: int = 4

    def validated(self) -> DrainOptions:
        for name in (
            "phase_timeout_seconds",
            "max_total_minutes",
            "max_timeouts_per_run",
            "max_attempts_per_phase",
            "max_fingerprint_repeats",
            "batch_size",
            "parallelism",
        ):
            if getattr(self, name) < 0:
                raise InvalidArgument(f"options.{name}", "must not be negative")
        if self.max_attempts_per_phase > 10:
            raise InvalidArgument("options.max_attempts_per_phase", "must be at most 10")
        if self.batch_size > 10_000:
            raise InvalidArgument("options.batch_size", "must be at most 10000")
        for index, item in enumerate(self.skip_phases):
            if not item.strip() or item.count("/") > 1:
                raise InvalidArgument(f"options.skip_phases[{index}]", 'give "run_id/phase_id" or "phase_id"')
        return self

    def skips(self, run_id: str, phase_id: str) -> bool:
        return phase_id in self.skip_phases or f"{run_id}/{phase_id}" in self.skip_phases


@dataclass
class DrainItem:
    run_id: str
    phase_id: str
    state: str
    reason: str = ""
    attempts: int = 0
    total_tokens: int = 0
    fingerprint: str = ""
    duration_ms: int = 0
    timed_out: bool = False


@dataclass
class _RunTriage:
    sampled: bool = False
    succeeded: bool = False
    timeouts: int = 0
    last_fingerprint: str = ""


@dataclass
class Triage:
    """What the session learned so far; decides which run's phase goes next."""

    options: DrainOptions
    runs: dict[str, _RunTriage] = field(default_factory=dict)
    fingerprints: Counter[str] = field(default_factory=Counter)
    processed: set[tuple[str, str]] = field(default_factory=set)

    def of(self, run_id: str) -> _RunTriage:
        return self.runs.setdefault(run_id, _RunTriage())

    def learn(self, item: DrainItem) -> None:
        run = self.of(item.run_id)
        run.sampled = True
        self.processed.add((item.run_id, item.phase_id))
        if item.state == State.COMPLETE.value:
            run.succeeded = True
            run.last_fingerprint = ""
        if item.timed_out:
            run.timeouts += 1
        if item.fingerprint:
            run.last_fingerprint = item.fingerprint
            self.fingerprints[item.fingerprint] += 1

    def refusal(self, run_id: str, phase_id: str) -> str | None:
        """Why this phase must not be drained now (controls), or None."""
        options = self.options
        if options.skips(run_id, phase_id):
            return "skipped: listed in skip_phases"
        if (run_id, phase_id) in self.processed:
            return "skipped: already drained in this session"
        run = self.of(run_id)
        if options.max_timeouts_per_run and run.timeouts >= options.max_timeouts_per_run:
            return (
                f"skipped: {run.timeouts} phase timeout(s) in this run (limit {options.max_timeouts_per_run})"
            )
        repeats = self.fingerprints.get(run.last_fingerprint, 0) if run.last_fingerprint else 0
        if options.max_fingerprint_repeats and repeats >= options.max_fingerprint_repeats:
            return (
                f"skipped: its last failure repeated {repeats} times in this session "
                f"(limit {options.max_fingerprint_repeats}): {run.last_fingerprint[:120]}"
            )
        return None

    def priority(self, run_id: str) -> int:
        """Lower goes first: unsampled runs, then runs whose sample succeeded, then the rest."""
        run = self.of(run_id)
        if not self.options.sample_first:
            return 0
        if not run.sampled:
            return 0
        return 1 if run.succeeded else 2


def drainable(runs: list[RunRecord], options: DrainOptions) -> list[tuple[RunRecord, str]]:
    """Each idle run's first unfinished phase (the only one that may go next), filtered by run."""
    chosen: list[tuple[RunRecord, str]] = []
    for run in runs:
        if options.run_ids and run.run_id not in options.run_ids:
            continue
        if any(run.run_id.startswith(prefix) for prefix in options.skip_run_prefixes):
            continue
        pending = [phase for phase in run.phases() if not phase.state.done]
        if pending:
            chosen.append((run, pending[0].phase_id))
    return chosen


def summarise(results: list[DrainItem], stop_reason: str, phase_timeout: int) -> dict[str, Any]:
    """Totals and yield; when nothing completed, the most likely reason why."""
    ran = [item for item in results if not item.reason.startswith("skipped")]
    completed = sum(1 for item in ran if item.state == State.COMPLETE.value)
    timed_out = sum(1 for item in ran if item.timed_out)
    attempts = sum(item.attempts for item in ran)
    tokens = sum(item.total_tokens for item in ran)
    zero_reason = ""
    if completed == 0:
        fingerprints = Counter(item.fingerprint for item in ran if item.fingerprint)
        if not ran:
            skipped = Counter(
                item.reason.split(":")[1].strip() if ":" in item.reason else item.reason for item in results
            )
            zero_reason = "nothing was drained" + (
                f": {', '.join(f'{reason} ({count})' for reason, count in skipped.most_common(3))}"
                if skipped
                else ": no FAILED or QUEUED phase matched the filters"
            )
        elif timed_out == len(ran):
            zero_reason = f"every phase hit the phase timeout ({phase_timeout}s)"
        elif attempts == 0:
            zero_reason = "every phase stopped before its first counted attempt (infrastructure or workspace)"
        elif tokens == 0:
            zero_reason = "no LLM tokens were spent: every phase failed before the builder answered"
        elif fingerprints:
            top, count = fingerprints.most_common(1)[0]
            zero_reason = f"every phase failed; most common failure ({count}x): {top[:200]}"
        else:
            zero_reason = "every phase failed"
    return {
        "processed": len(ran),
        "completed": completed,
        "failed": len(ran) - completed - timed_out,
        "timed_out": timed_out,
        "skipped": len(results) - len(ran),
        "attempts": attempts,
        "total_tokens": tokens,
        "completed_per_attempt": completed / attempts if attempts else 0.0,
        "completed_per_1k_tokens": completed / (tokens / 1000) if tokens else 0.0,
        "zero_yield_reason": zero_reason,
        "stop_reason": stop_reason,
    }


def new_session_id(now: datetime) -> str:
    return f"drain-{now.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


@dataclass
class _InFlight:
    phase_id: str
    started: datetime


@dataclass
class _Progress:
    """Where a session stands: empty for a new one, rebuilt from the database when taken over."""

    results: list[DrainItem] = field(default_factory=list)
    skipped_seen: set[tuple[str, str]] = field(default_factory=set)
    in_flight: dict[str, _InFlight] = field(default_factory=dict)


class _SessionLost(Exception):
    """Another replica took the session over (this one stopped renewing its lease in time)."""


class DrainController:
    """Runs drain sessions on a background thread of this replica; any replica executes the phases."""

    def __init__(
        self, store: RunStore, owner: str, wake: Callable[[], None], lease_seconds: float = 30.0
    ) -> None:
        self._store = store
        self._owner = owner
        self._wake = wake
        self._lease_seconds = lease_seconds
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._watcher: threading.Thread | None = None

    def watch(self) -> None:
        """Adopt sessions whose replica died (their lease expired), checking every lease/3."""
        if self._watcher is None:
            self._watcher = threading.Thread(target=self._watch, name="drain-session-watcher", daemon=True)
            self._watcher.start()

    def _watch(self) -> None:
        while not self._stopping.wait(max(self._lease_seconds / 3, 0.05)):
            try:
                self.adopt_orphaned_sessions()
            except Exception:
                log.exception("looking for orphaned drain sessions failed")

    def adopt_orphaned_sessions(self) -> list[str]:
        """Take over EXECUTING sessions nobody renews: their results so far rebuild the triage,
        the phases they queued without a result are waited for (or read), and draining goes on here."""
        adopted = []
        for stored in self._store.claim_drain_sessions(self._owner, self._lease_seconds):
            session = {key: value for key, value in stored.items() if key != "id"}
            options = DrainOptions(
                **{
                    key: tuple(value) if isinstance(value, list) else value
                    for key, value in session["options"].items()
                    if key in DrainOptions.__dataclass_fields__
                }
            )
            triage = Triage(options)
            results = [DrainItem(**item) for item in session["results"]]
            skipped_seen: set[tuple[str, str]] = set()
            for item in results:
                if item.reason.startswith("skipped"):
                    skipped_seen.add((item.run_id, item.phase_id))
                else:
                    triage.learn(item)
            # Phases it queued without a result yet: still executing, or finished while nobody
            # watched (their result is read like any other when the wait sees them done).
            reported = {(item.run_id, item.phase_id) for item in results}
            in_flight = {
                run_id: _InFlight(phase_id, started or utcnow())
                for run_id, phase_id, started in self._store.drained_phases(session["session_id"])
                if (run_id, phase_id) not in reported
            }
            log.info(
                "took over drain session %s (%d result(s), %d phase(s) in flight)",
                session["session_id"],
                len(results),
                len(in_flight),
            )
            self._spawn(session, triage, _Progress(results, skipped_seen, in_flight))
            adopted.append(session["session_id"])
        return adopted

    def _spawn(self, session: dict[str, Any], triage: Triage, progress: _Progress | None = None) -> None:
        thread = threading.Thread(
            target=self._drain_guarded,
            args=(session, triage, progress or _Progress()),
            name=f"drain-{session['session_id']}",
            daemon=True,
        )
        self._threads.append(thread)
        thread.start()

    def start(self, options: DrainOptions) -> dict[str, Any]:
        """Persist a new session and start draining (a dry run only plans and finishes)."""
        options = options.validated()
        now = utcnow()
        triage = Triage(options)
        planned = self._plan(triage)
        session: dict[str, Any] = {
            "session_id": new_session_id(now),
            "state": State.EXECUTING.value,
            "options": asdict(options),
            "planned": [asdict(item) for item in planned],
            "results": [],
            "summary": summarise([], "", options.phase_timeout_seconds),
            "owner": self._owner,
            "started_at": now,
            "finished_at": None,
            "lease_expires_at": now + timedelta(seconds=self._lease_seconds),
        }
        if options.dry_run:
            session["state"] = State.COMPLETE.value
            session["finished_at"] = utcnow()
            session["summary"] = {**session["summary"], "stop_reason": "dry run: nothing was executed"}
            session["summary"]["zero_yield_reason"] = ""
            self._store.save_drain_session(session)
            return session
        self._store.save_drain_session(session)
        self._spawn(session, triage)
        return session

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        for thread in self._threads:
            thread.join(timeout)
        if self._watcher is not None:
            self._watcher.join(timeout)

    def _plan(self, triage: Triage) -> list[DrainItem]:
        """What would go now, in order (the first round; later phases follow as runs advance)."""
        order = drainable(self._store.idle_runs(triage.options.run_ids), triage.options)
        items: list[DrainItem] = []
        for run, phase_id in order:
            phase = run.phase(phase_id)
            refusal = triage.refusal(run.run_id, phase_id)
            reason = refusal or f"first unfinished phase of {run.state.value} run"
            items.append(
                DrainItem(run.run_id, phase_id, phase.state.value, reason, attempts=phase.counted_attempts())
            )
        return items[: triage.options.batch_size or None] if triage.options.dry_run else items

    def _drain_guarded(self, session: dict[str, Any], triage: Triage, progress: _Progress) -> None:
        try:
            self._drain(session, triage, progress)
        except _SessionLost:
            log.info("drain session %s was taken over by another replica", session["session_id"])
        except Exception as error:
            log.exception("drain session %s failed", session["session_id"])
            session["state"] = State.FAILED.value
            session["finished_at"] = utcnow()
            session["summary"] = {**session["summary"], "stop_reason": f"internal error: {error!r}"}
            self._store.save_drain_session(session)

    def _drain(self, session: dict[str, Any], triage: Triage, progress: _Progress) -> None:
        options = triage.options
        started = session["started_at"]
        limit = options.batch_size or 10
        parallelism = max(options.parallelism or 4, 1)
        deadline = (
            started + timedelta(minutes=options.max_total_minutes) if options.max_total_minutes else None
        )
        results, skipped_seen, in_flight = progress.results, progress.skipped_seen, progress.in_flight
        stop_reason = ""
        renew_every = max(self._lease_seconds / 3, 0.05)
        next_renewal = time.monotonic() + renew_every
        while True:
            if time.monotonic() >= next_renewal:
                if not self._store.renew_drain_session(
                    session["session_id"], self._owner, self._lease_seconds
                ):
                    raise _SessionLost()
                next_renewal = time.monotonic() + renew_every
            launched = sum(1 for item in results if not item.reason.startswith("skipped")) + len(in_flight)
            if not stop_reason:
                if self._stopping.is_set():
                    stop_reason = "orchestrator shutting down"
                elif launched >= limit:
                    stop_reason = f"batch size reached ({limit} phases)"
                elif deadline is not None and utcnow() >= deadline:
                    stop_reason = f"time limit reached ({options.max_total_minutes} min)"
            if not stop_reason and len(in_flight) < parallelism:
                picked = self._pick(triage, in_flight, results, skipped_seen, limit - launched, parallelism)
                for run_id, phase_id in picked:
                    phase_deadline = utcnow() + timedelta(seconds=options.phase_timeout_seconds or 900)
                    queued = self._store.queue_drained_phase(
                        run_id,
                        phase_id,
                        phase_deadline,
                        session["session_id"],
                        options.max_attempts_per_phase or 2,
                    )
                    if queued:
                        in_flight[run_id] = _InFlight(phase_id, utcnow())
                if picked:
                    self._wake()
                if not in_flight and not picked:
                    stop_reason = "nothing left to drain"
            if not in_flight and stop_reason:
                break
            finished = self._wait_for_any(in_flight)
            for run_id in finished:
                flight = in_flight.pop(run_id)
                item = self._result(run_id, flight)
                triage.learn(item)
                results.append(item)
            session["results"] = [asdict(item) for item in results]
            session["summary"] = summarise(results, stop_reason, options.phase_timeout_seconds)
            if not self._store.save_drain_session(session):
                raise _SessionLost()
        session["state"] = State.COMPLETE.value
        session["finished_at"] = utcnow()
        session["results"] = [asdict(item) for item in results]
        session["summary"] = summarise(results, stop_reason, options.phase_timeout_seconds)
        if not self._store.save_drain_session(session):
            raise _SessionLost()

    def _pick(
        self,
        triage: Triage,
        in_flight: dict[str, _InFlight],
        results: list[DrainItem],
        skipped_seen: set[tuple[str, str]],
        room: int,
        parallelism: int,
    ) -> list[tuple[str, str]]:
        """Next phases to launch (one per run), best triage priority first; refusals are recorded."""
        candidates = [
            (run, phase_id)
            for run, phase_id in drainable(self._store.idle_runs(triage.options.run_ids), triage.options)
            if run.run_id not in in_flight
        ]
        chosen: list[tuple[int, int, str, str]] = []
        for index, (run, phase_id) in enumerate(candidates):
            refusal = triage.refusal(run.run_id, phase_id)
            if refusal:
                if (run.run_id, phase_id) not in skipped_seen and "already drained" not in refusal:
                    skipped_seen.add((run.run_id, phase_id))
                    state = run.phase(phase_id).state.value
                    results.append(DrainItem(run.run_id, phase_id, state, refusal))
                continue
            chosen.append((triage.priority(run.run_id), index, run.run_id, phase_id))
        chosen.sort()
        free = min(parallelism - len(in_flight), room)
        sampling = any(priority == 0 for priority, *_ in chosen) or any(
            not triage.of(run_id).sampled for run_id in in_flight
        )
        if triage.options.sample_first and sampling:
            chosen = [entry for entry in chosen if entry[0] == 0]  # finish sampling every run first
        return [(run_id, phase_id) for _, _, run_id, phase_id in chosen[: max(free, 0)]]

    def _wait_for_any(self, in_flight: dict[str, _InFlight]) -> list[str]:
        """Runs among ``in_flight`` that stopped executing; waits a little when none did."""
        if not in_flight:
            return []
        seen = {run_id: self._store.bus.version(run_id) for run_id in in_flight}
        done = [run_id for run_id in in_flight if self._store.run_state(run_id) is not State.EXECUTING]
        if not done:
            first = next(iter(in_flight))
            self._store.bus.wait(first, seen[first], WAIT_POLL_SECONDS)
        return done

    def _result(self, run_id: str, flight: _InFlight) -> DrainItem:
        run = self._store.get_run(run_id)
        phase = run.phase(flight.phase_id)
        current = phase.current_attempts()
        failed = [attempt for attempt in current if attempt.fingerprint]
        timed_out = phase.failure_reason.startswith("phase timeout")
        state = phase.state.value
        if state == State.COMPLETE.value:
            reason = "completed"
        else:
            reason = phase.failure_reason or run.failure_reason or state.lower()
        return DrainItem(
            run_id=run_id,
            phase_id=flight.phase_id,
            state=state,
            reason=reason[:500],
            attempts=sum(1 for attempt in current if attempt.counted),
            total_tokens=sum(attempt.total_tokens for attempt in current),
            fingerprint="" if state == State.COMPLETE.value or not failed else failed[-1].fingerprint,
            duration_ms=int((utcnow() - flight.started).total_seconds() * 1000),
            timed_out=timed_out,
        )
