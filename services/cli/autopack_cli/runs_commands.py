"""``autopack runs``, ``watch``, ``cancel``, ``resume`` and ``drain``: runs a user can follow and steer."""

from __future__ import annotations

import time

import grpc
import typer
from autopack.orchestrator.v1 import orchestrator_pb2 as pb
from rich.table import Table

from autopack_cli.output import console, errors, rpc_failure
from autopack_cli.run_commands import RPC_TIMEOUT, _state, _stub, detach_hint, one_line, print_report

DRAIN_POLL_SECONDS = 1.0


def runs(
    state: str | None = typer.Option(None, help="Only runs in this state (QUEUED, EXECUTING, FAILED, ...)."),
    limit: int = typer.Option(20, min=1, max=500, help="How many runs, newest first."),
) -> None:
    """List runs, newest first."""
    state_value = pb.STATE_UNSPECIFIED
    if state:
        try:
            state_value = pb.State.Value(f"STATE_{state.strip().upper()}")
        except ValueError:
            names = ", ".join(name.removeprefix("STATE_") for name in pb.State.keys()[1:])
            errors.print(f"[red]--state[/red]: unknown state {state!r} (one of {names})")
            raise typer.Exit(2) from None
    try:
        found = _stub().ListRuns(pb.ListRunsRequest(page_size=limit, state=state_value), timeout=RPC_TIMEOUT)
    except grpc.RpcError as error:
        raise rpc_failure(error, "orchestrator") from error
    table = Table(title="runs", title_justify="left")
    for column in ("run", "state", "phases done", "tokens", "created (UTC)", "reason"):
        table.add_column(column)
    for run in found.runs:
        phases = [phase for tier in run.tiers for phase in tier.phases]
        done = sum(1 for phase in phases if phase.state in (pb.STATE_COMPLETE, pb.STATE_SKIPPED))
        table.add_row(
            run.run_id,
            _state(run.state) + (" (cancel requested)" if run.cancel_requested else ""),
            f"{done}/{len(phases)}",
            f"{run.usage.total_tokens:,}",
            run.created_at.ToDatetime().strftime("%Y-%m-%d %H:%M:%S"),
            one_line(run.failure_reason, 80),
        )
    console.print(table)
    if not found.runs:
        console.print("no runs" + (f" in state {state.upper()}" if state else ""))


def follow_events(run_id: str) -> None:
    """Print the run's events (past ones first) until it ends; Ctrl-C only stops watching."""
    stub = _stub()
    try:
        for event in stub.WatchRun(pb.WatchRunRequest(run_id=run_id)):
            when = event.time.ToDatetime().strftime("%H:%M:%S")
            where = f"{event.phase_id}: " if event.phase_id else ""
            kind = pb.EventType.Name(event.type).removeprefix("EVENT_TYPE_").lower()
            style = "yellow" if event.type == pb.EVENT_TYPE_RECOVERY else "dim" if kind == "step" else "bold"
            console.print(
                f"{event.sequence:>4} {when} [{style}]{kind:<16}[/{style}] {where}{one_line(event.message, 500 if kind == 'recovery' else 200)}"
            )
    except KeyboardInterrupt:
        errors.print(f"stopped watching. {detach_hint(run_id)}")
        raise typer.Exit(130) from None


def watch(run_id: str = typer.Argument(..., help="Run id.")) -> None:
    """Re-attach to a run: replay its events, follow it to the end, then print the report."""
    try:
        follow_events(run_id)
        final = _stub().GetRun(pb.GetRunRequest(run_id=run_id), timeout=RPC_TIMEOUT).run
    except grpc.RpcError as error:
        raise rpc_failure(error, "orchestrator") from error
    print_report(final, attempts=True)
    if final.state != pb.STATE_COMPLETE:
        raise typer.Exit(1)


def cancel(
    run_id: str = typer.Argument(..., help="Run id."),
    reason: str = typer.Option("", help="Why, recorded in the run's events."),
) -> None:
    """Cancel a queued or executing run (the attempt in flight is rolled back and not counted)."""
    try:
        run = _stub().CancelRun(pb.CancelRunRequest(run_id=run_id, reason=reason), timeout=RPC_TIMEOUT).run
    except grpc.RpcError as error:
        raise rpc_failure(error, "orchestrator") from error
    if run.state == pb.STATE_CANCELLED:
        console.print(f"run {run_id} cancelled; continue it later with `autopack resume {run_id}`")
    else:
        console.print(
            f"cancel requested: run {run_id} stops at its next step; follow it with `autopack watch {run_id}`"
        )


def resume(
    run_id: str = typer.Argument(..., help="Run id."),
    follow: bool = typer.Option(True, "--watch/--no-watch", help="Follow the run until it ends."),
) -> None:
    """Continue a FAILED or CANCELLED run from its first unfinished phase (finished phases are kept)."""
    try:
        run = _stub().ResumeRun(pb.ResumeRunRequest(run_id=run_id), timeout=RPC_TIMEOUT).run
    except grpc.RpcError as error:
        raise rpc_failure(error, "orchestrator") from error
    phases = [phase for tier in run.tiers for phase in tier.phases]
    first = next((phase.spec.phase_id for phase in phases if phase.state == pb.STATE_QUEUED), "its end")
    console.print(f"run {run_id} resumed from {first}")
    if follow:
        watch(run_id)


def _drain_items(title: str, items: list[pb.DrainItem]) -> Table:
    table = Table(title=title, title_justify="left")
    for column in ("run", "phase", "state", "attempts", "tokens", "seconds", "reason"):
        table.add_column(column)
    for item in items:
        table.add_row(
            item.run_id,
            item.phase_id,
            _state(item.state) + (" (timeout)" if item.timed_out else ""),
            str(item.attempts),
            f"{item.total_tokens:,}",
            f"{item.duration_ms / 1000:.1f}",
            one_line(item.reason, 100),
        )
    return table


def print_drain_summary(session: pb.DrainSession) -> None:
    summary = session.summary
    console.print(
        f"drain {session.session_id} {_state(session.state)}: {summary.processed} processed, "
        f"{summary.completed} completed, {summary.failed} failed, {summary.timed_out} timed out, "
        f"{summary.skipped} skipped; {summary.attempts} attempt(s), {summary.total_tokens:,} tokens"
    )
    console.print(
        f"yield: {summary.completed_per_attempt:.2f} completed per attempt, "
        f"{summary.completed_per_1k_tokens:.3f} per 1k tokens"
    )
    if summary.zero_yield_reason:
        console.print(f"[yellow]zero yield:[/yellow] {summary.zero_yield_reason}")
    if summary.stop_reason:
        console.print(f"stopped: {summary.stop_reason}")


def drain(
    batch_size: int = typer.Option(10, min=1, help="Phases to process in this session."),
    phase_timeout_seconds: int = typer.Option(900, min=1, help="A drained phase is stopped after this long."),
    max_total_minutes: int = typer.Option(
        0, min=0, help="Stop starting phases after this long; 0 = no limit."
    ),
    max_timeouts_per_run: int = typer.Option(2, min=1, help="Skip a run's phases after this many timeouts."),
    max_attempts_per_phase: int = typer.Option(2, min=1, max=10, help="Counted attempts per drained phase."),
    max_fingerprint_repeats: int = typer.Option(3, min=1, help="Skip runs whose failure repeats this often."),
    parallelism: int = typer.Option(4, min=1, help="Phases executing at once across all replicas."),
    skip: list[str] = typer.Option([], help='Phase never to drain: "RUN/PHASE" or "PHASE" (repeatable).'),
    run: list[str] = typer.Option([], "--run", help="Only this run (repeatable)."),
    skip_run_prefix: list[str] = typer.Option([], help="Leave out runs whose id starts with this."),
    sample_first: bool = typer.Option(
        True, "--sample-first/--no-sample-first", help="One phase per run first."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only show what would be drained."),
    detach: bool = typer.Option(False, "--detach", help="Start and return; see it with --session."),
    session_id: str | None = typer.Option(None, "--session", help="Show (and follow) an existing session."),
) -> None:
    """Re-run FAILED/QUEUED phases across runs with the adaptive controls of the original drain."""
    stub = _stub()
    try:
        if session_id:
            session = stub.GetDrainSession(
                pb.GetDrainSessionRequest(session_id=session_id), timeout=RPC_TIMEOUT
            )
            session = session.session
        else:
            options = pb.DrainOptions(
                phase_timeout_seconds=phase_timeout_seconds,
                max_total_minutes=max_total_minutes,
                max_timeouts_per_run=max_timeouts_per_run,
                max_attempts_per_phase=max_attempts_per_phase,
                max_fingerprint_repeats=max_fingerprint_repeats,
                batch_size=batch_size,
                skip_phases=skip,
                run_ids=run,
                skip_run_prefixes=skip_run_prefix,
                sample_first=sample_first,
                dry_run=dry_run,
                parallelism=parallelism,
            )
            session = stub.StartDrain(pb.StartDrainRequest(options=options), timeout=RPC_TIMEOUT).session
        console.print(_drain_items(f"drain {session.session_id}: planned", list(session.planned)))
        if detach and session.state == pb.STATE_EXECUTING:
            console.print(
                f"drain continues in the background: `autopack drain --session {session.session_id}`"
            )
            return
        shown = 0
        while True:
            for item in session.results[shown:]:
                mark = "[green]✓[/green]" if item.state == pb.STATE_COMPLETE else "[red]✗[/red]"
                if item.reason.startswith("skipped"):
                    mark = "[dim]-[/dim]"
                console.print(
                    f"  {mark} {item.run_id}/{item.phase_id}: {_state(item.state)} — {one_line(item.reason, 120)}"
                )
            shown = len(session.results)
            if session.state != pb.STATE_EXECUTING:
                break
            time.sleep(DRAIN_POLL_SECONDS)
            session = stub.GetDrainSession(
                pb.GetDrainSessionRequest(session_id=session.session_id), timeout=RPC_TIMEOUT
            ).session
    except grpc.RpcError as error:
        raise rpc_failure(error, "orchestrator") from error
    except KeyboardInterrupt:
        errors.print(f"stopped following; the drain goes on: `autopack drain --session {session.session_id}`")
        raise typer.Exit(130) from None
    print_drain_summary(session)


def register(app: typer.Typer) -> None:
    """Add ``runs``, ``watch``, ``cancel``, ``resume`` and ``drain`` to the main app."""
    for command in (runs, watch, cancel, resume, drain):
        app.command()(command)
