"""``autopack run``, ``status`` and ``trace``: submit plans and see where tokens went."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import grpc
import typer
from autopack.orchestrator.v1 import orchestrator_pb2, orchestrator_pb2_grpc
from autopack_common.clients import open_channel
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.tree import Tree

from autopack_cli.output import console, errors, rpc_failure
from autopack_cli.plans import PlanError, load_plan
from autopack_cli.stack import StackPaths
from autopack_cli.traces import SpanRecord, read_spans, run_traces

RPC_TIMEOUT = float(os.environ.get("AUTOPACK_RPC_TIMEOUT_SECONDS", "30"))
TERMINAL_STATES = (
    orchestrator_pb2.STATE_COMPLETE,
    orchestrator_pb2.STATE_FAILED,
    orchestrator_pb2.STATE_CANCELLED,
    orchestrator_pb2.STATE_SKIPPED,
)
SPAN_DETAIL_ATTRIBUTES = (
    "autopack.tokens.predicted",
    "autopack.tokens.selected_budget",
    "autopack.tokens.actual_max",
    "autopack.tokens.input",
    "autopack.tokens.output",
    "autopack.phase.outcome",
    "gen_ai.provider.name",
    "gen_ai.request.max_tokens",
    "gen_ai.usage.input_tokens",
    "gen_ai.usage.output_tokens",
)


def _state(value: int) -> str:
    return orchestrator_pb2.State.Name(value).removeprefix("STATE_")


def _outcome(value: int) -> str:
    return orchestrator_pb2.AttemptOutcome.Name(value).removeprefix("ATTEMPT_OUTCOME_")


def one_line(text: str, limit: int = 160) -> str:
    """A reason for a table cell or an event line: whitespace collapsed, at most ``limit`` characters.

    The full text (check output and all) stays in ``autopack status`` and the run's events.
    """
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _stub() -> orchestrator_pb2_grpc.OrchestratorServiceStub:
    return orchestrator_pb2_grpc.OrchestratorServiceStub(open_channel("orchestrator"))


def phase_table(run: orchestrator_pb2.Run) -> Table:
    """Per-phase report: where the tokens of the run went."""
    table = Table(title=f"run {run.run_id} — {_state(run.state)}", title_justify="left")
    for column, justify in (
        ("phase", "left"),
        ("state", "left"),
        ("att", "right"),
        ("predicted", "right"),
        ("budget", "right"),
        ("max_tokens", "right"),
        ("input", "right"),
        ("output", "right"),
        ("outcome", "left"),
        ("provider", "left"),
        ("trace id", "left"),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for tier in run.tiers:
        for phase in tier.phases:
            last = phase.attempts[-1] if phase.attempts else None
            input_tokens = sum(attempt.usage.input_tokens for attempt in phase.attempts)
            output_tokens = sum(attempt.usage.output_tokens for attempt in phase.attempts)
            table.add_row(
                phase.spec.phase_id,
                _state(phase.state),
                str(len(phase.attempts)),
                f"{last.predicted_output_tokens:,}" if last else "-",
                f"{last.selected_budget:,}" if last else "-",
                f"{last.actual_max_tokens:,}" if last else "-",
                f"{input_tokens:,}" if last else "-",
                f"{output_tokens:,}" if last else "-",
                (
                    _outcome(last.outcome)
                    + (f": {one_line(last.failure_reason, 100)}" if last.failure_reason else "")
                )
                if last
                else "-",
                (last.provider + (" (recorded)" if last.provider == "replay" else "")) if last else "-",
                last.trace_id if last else "-",
            )
    return table


def detach_hint(run_id: str) -> str:
    """What a user who stopped following a run can do next."""
    return (
        f"The run continues in the background: follow it with `autopack watch {run_id}`, "
        f"stop it with `autopack cancel {run_id}`."
    )


def attempts_table(run: orchestrator_pb2.Run) -> Table:
    """Every attempt with its outcome, whether it counted, its reason and its tokens."""
    table = Table(title="attempts", title_justify="left")
    for column, justify in (
        ("phase", "left"),
        ("#", "right"),
        ("outcome", "left"),
        ("counted", "left"),
        ("checks", "left"),
        ("max_tokens", "right"),
        ("input", "right"),
        ("output", "right"),
        ("total", "right"),
        ("reason", "left"),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for tier in run.tiers:
        for phase in tier.phases:
            for attempt in phase.attempts:
                kind = orchestrator_pb2.FailureKind.Name(attempt.failure_kind).removeprefix("FAILURE_KIND_")
                table.add_row(
                    phase.spec.phase_id,
                    str(attempt.number),
                    _outcome(attempt.outcome),
                    "yes" if attempt.counted else f"no ({kind.lower()})",
                    attempt.check_verdict
                    or ("-" if not attempt.HasField("check_exit_code") else "exit code"),
                    f"{attempt.actual_max_tokens:,}",
                    f"{attempt.usage.input_tokens:,}" if attempt.usage.HasField("input_tokens") else "?",
                    f"{attempt.usage.output_tokens:,}" if attempt.usage.HasField("output_tokens") else "?",
                    f"{attempt.usage.total_tokens:,}",
                    one_line(attempt.failure_reason, 240),
                )
    return table


def print_report(run: orchestrator_pb2.Run, attempts: bool = False) -> None:
    console.print(phase_table(run))
    if attempts:
        console.print(attempts_table(run))
        for phase in (phase for tier in run.tiers for phase in tier.phases):
            recovered = []
            if phase.mitigations:
                recovered.append("mitigations " + ", ".join(phase.mitigations))
            if phase.doctor_calls:
                recovered.append(f"{phase.doctor_calls} doctor call(s)")
            if phase.replans:
                recovered.append(f"re-planned {phase.replans}x (was: {phase.original_description[:80]!r})")
            if recovered:
                console.print(f"{phase.spec.phase_id}: " + "; ".join(recovered))
    usage = run.usage
    console.print(
        f"tokens: input {usage.input_tokens:,} · output {usage.output_tokens:,} · total {usage.total_tokens:,}"
    )
    if run.failure_reason:
        console.print(f"[red]failure:[/red] {one_line(run.failure_reason, 300)}")
    if any(a.provider == "replay" for t in run.tiers for p in t.phases for a in p.attempts):
        console.print(
            "[yellow]provider replay: responses were served from recordings, not a live LLM[/yellow]"
        )
    console.print(f"trace tree: autopack trace {run.run_id}")


def run(
    plan_file: Path = typer.Argument(..., help="Plan YAML file."),
    run_id: str | None = typer.Option(None, help="Run id to use instead of the plan's."),
    unique: bool = typer.Option(False, help="Append a timestamp to the run id (re-run the same plan)."),
    watch: bool = typer.Option(True, help="Follow progress until the run finishes."),
) -> None:
    """Submit a plan, follow it live and print the per-phase report."""
    try:
        plan = load_plan(plan_file, run_id)
    except PlanError as error:
        errors.print(f"[red]invalid plan[/red] {error}")
        raise typer.Exit(2) from error
    if unique:
        plan.run_id = f"{plan.run_id}-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}"
    stub = _stub()
    try:
        stub.CreateRun(orchestrator_pb2.CreateRunRequest(plan=plan), timeout=RPC_TIMEOUT)
        stub.StartRun(orchestrator_pb2.StartRunRequest(run_id=plan.run_id), timeout=RPC_TIMEOUT)
        if watch:
            try:
                _follow(stub, plan)
            except KeyboardInterrupt:
                errors.print(f"stopped following run {plan.run_id}. {detach_hint(plan.run_id)}")
                raise typer.Exit(130) from None
        final = stub.GetRun(orchestrator_pb2.GetRunRequest(run_id=plan.run_id), timeout=RPC_TIMEOUT).run
    except grpc.RpcError as error:
        raise rpc_failure(error, "orchestrator") from error
    print_report(final)
    if watch and final.state != orchestrator_pb2.STATE_COMPLETE:
        raise typer.Exit(1)


def _follow(stub: orchestrator_pb2_grpc.OrchestratorServiceStub, plan: orchestrator_pb2.Plan) -> None:
    phases = [phase.phase_id for tier in plan.tiers for phase in tier.phases]
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task(f"run {plan.run_id}", total=len(phases))
        finished: set[str] = set()
        for event in stub.WatchRun(orchestrator_pb2.WatchRunRequest(run_id=plan.run_id)):
            if event.phase_id:
                progress.update(task, description=f"{event.phase_id}: {event.message}")
            if event.type == orchestrator_pb2.EVENT_TYPE_PHASE_STATE and event.state in TERMINAL_STATES:
                finished.add(event.phase_id)
                progress.update(task, completed=len(finished))
                progress.console.print(f"  {event.phase_id}: {_state(event.state)}")
            if event.type == orchestrator_pb2.EVENT_TYPE_RUN_STATE and event.state in TERMINAL_STATES:
                progress.update(task, description=f"run {plan.run_id}: {_state(event.state)}")
                break


def status(run_id: str = typer.Argument(..., help="Run id.")) -> None:
    """Show a run's state, per-phase token report and every attempt with its reason and tokens."""
    try:
        found = _stub().GetRun(orchestrator_pb2.GetRunRequest(run_id=run_id), timeout=RPC_TIMEOUT).run
    except grpc.RpcError as error:
        raise rpc_failure(error, "orchestrator") from error
    print_report(found, attempts=True)


def _span_label(span: SpanRecord) -> str:
    details = ", ".join(
        f"{key.split('.')[-1] if key.startswith('autopack.tokens') else key}={span.attributes[key]}"
        for key in SPAN_DETAIL_ATTRIBUTES
        if key in span.attributes
    )
    status_mark = " [red]ERROR[/red]" if span.status == "ERROR" else ""
    label = f"[bold]{span.name}[/bold] [dim]{span.service}[/dim] {span.duration_ms:.0f} ms{status_mark}"
    return f"{label}  [cyan]{details}[/cyan]" if details else label


def _add_children(node: Tree, span: SpanRecord) -> None:
    for child in span.children:
        _add_children(node.add(_span_label(child)), child)


def trace(
    run_id: str = typer.Argument(..., help="Run id."),
    trace_dir: Path | None = typer.Option(None, help="Span directory (default: the local stack's)."),
) -> None:
    """Print the span tree of every trace of a run, from the local span files."""
    directory = trace_dir or StackPaths.from_env().trace_dir
    roots = run_traces(read_spans(directory), run_id)
    if not roots:
        hint = (
            "spans were exported over OTLP; open your collector/Jaeger and search by trace id"
            if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
            else "run `autopack status RUN` to check the run id"
        )
        errors.print(f"no spans for run {run_id} in {directory} ({hint})")
        raise typer.Exit(1)
    for root in roots:
        tree = Tree(f"trace {root.trace_id}: " + _span_label(root))
        _add_children(tree, root)
        console.print(tree)


def register(app: typer.Typer) -> None:
    """Add ``run``, ``status`` and ``trace`` to the main app."""
    app.command()(run)
    app.command()(status)
    app.command()(trace)
