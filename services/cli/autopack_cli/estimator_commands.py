"""Estimator commands: estimate, calibrate, estimator replay|models|accuracy, telemetry export|import.

Every command talks to the estimator over gRPC (``AUTOPACK_ESTIMATOR_ADDR`` or ``--address``);
NDJSON files use the TokenEstimationV2 column names (see ``autopack_estimator.telemetry_io``).
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import grpc
import typer
import yaml
from autopack.estimator.v1 import estimator_pb2, estimator_pb2_grpc
from autopack_common.clients import open_channel
from google.protobuf import json_format
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from autopack_cli.output import console, errors, rpc_failure

DEFAULT_TIMEOUT = 60.0
LONG_TIMEOUT = 600.0

AddressOption = Annotated[
    str | None,
    typer.Option(
        "--address", help="Estimator address (default: AUTOPACK_ESTIMATOR_ADDR or 127.0.0.1:50052)."
    ),
]
TimeoutOption = Annotated[float, typer.Option("--timeout", help="Seconds each call may take.")]
# The telemetry filter (``_telemetry_filter``), as the commands that read telemetry take it.
CategoryFilter = Annotated[str, typer.Option("--category", help="Only this category.")]
ComplexityFilter = Annotated[str, typer.Option("--complexity", help="Only this complexity.")]
ModelFilter = Annotated[str, typer.Option("--model", help="Only this model.")]
RunIdFilter = Annotated[str, typer.Option("--run-id", help="Only this run.")]
SinceFilter = Annotated[str | None, typer.Option("--since", help="Only events since (ISO time or 7d).")]

estimator_app = typer.Typer(help="Inspect and evaluate the estimator's models.", no_args_is_help=True)
telemetry_app = typer.Typer(help="Move estimator telemetry in and out as NDJSON.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add the estimator commands to the main app."""
    app.command("estimate")(estimate)
    app.command("calibrate")(calibrate)
    app.add_typer(estimator_app, name="estimator")
    app.add_typer(telemetry_app, name="telemetry")


# -- plumbing ----------------------------------------------------------------------------------


@contextmanager
def _stub(address: str | None) -> Iterator[estimator_pb2_grpc.EstimatorServiceStub]:
    """A stub for the block; a call that fails inside it is reported and ends the command."""
    channel = open_channel("estimator", address)
    try:
        yield estimator_pb2_grpc.EstimatorServiceStub(channel)
    except grpc.RpcError as error:
        raise rpc_failure(error, "estimator", address) from None
    finally:
        channel.close()


def _fail(message: str) -> typer.Exit:
    errors.print(f"[red]error:[/red] {message}")
    return typer.Exit(2)


_RELATIVE = re.compile(r"^(\d+)([dhm])$")


def parse_since(value: str | None) -> datetime | None:
    """ISO 8601 (naive = UTC) or a relative age such as ``7d``, ``12h``, ``30m``."""
    if not value:
        return None
    match = _RELATIVE.match(value.strip())
    if match:
        amount, unit = int(match.group(1)), match.group(2)
        delta = {"d": timedelta(days=amount), "h": timedelta(hours=amount), "m": timedelta(minutes=amount)}[
            unit
        ]
        return datetime.now(UTC) - delta
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise _fail(f"--since: not an ISO 8601 time or an age like 7d: {value!r}") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed


def _telemetry_filter(
    category: str, complexity: str, model: str, run_id: str, since: str | None
) -> estimator_pb2.TelemetryFilter:
    result = estimator_pb2.TelemetryFilter(
        category=category, complexity=complexity, model=model, run_id=run_id
    )
    moment = parse_since(since)
    if moment is not None:
        result.since.FromDatetime(moment)
    return result


def _fmt(value: float, kind: str) -> str:
    if kind == "pct":
        return f"{value:.1f}%"
    if kind == "rate":
        return f"{100 * value:.1f}%"
    if kind == "ratio":
        return f"{value:.2f}x"
    return f"{int(value)}"


METRIC_ROWS: tuple[tuple[str, str, str, bool], ...] = (
    # field, label, format, lower is better
    ("events", "events", "int", False),
    ("clean_events", "clean events (success, not truncated)", "int", False),
    ("mean_smape", "mean SMAPE (clean)", "pct", True),
    ("median_smape", "median SMAPE (clean)", "pct", True),
    ("underestimation_rate", "underestimation rate (clean)", "rate", True),
    ("truncation_rate", "truncation rate", "rate", True),
    ("budget_miss_rate", "budget-miss rate (over budget or truncated at it)", "rate", True),
    ("waste_p50", "waste ratio P50", "ratio", True),
    ("waste_p90", "waste ratio P90", "ratio", True),
)


def metrics_table(title: str, columns: Sequence[tuple[str, estimator_pb2.AccuracyMetrics]]) -> Table:
    """Metrics side by side; with two or more columns the last is compared with the one before."""
    table = Table(title=title)
    table.add_column("metric")
    for name, _ in columns:
        table.add_column(name, justify="right")
    compare = len(columns) >= 2
    if compare:
        table.add_column("change", justify="right")
    for field, label, kind, lower_better in METRIC_ROWS:
        values = [getattr(metrics, field) for _, metrics in columns]
        row = [label, *(_fmt(value, kind) for value in values)]
        if compare:
            delta = values[-1] - values[-2]
            if kind == "int" or abs(delta) < 1e-9:
                row.append("")
            else:
                better = (delta < 0) == lower_better
                shown = (
                    f"{delta:+.1f}pp"
                    if kind == "pct"
                    else f"{100 * delta:+.1f}pp"
                    if kind == "rate"
                    else f"{delta:+.2f}x"
                )
                row.append(f"[{'green' if better else 'red'}]{shown}[/]")
        table.add_row(*row)
    return table


def _progress() -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=errors,
        transient=True,
    )


# -- estimate ----------------------------------------------------------------------------------


def load_plan_phases(path: Path) -> tuple[str, list[dict[str, Any]]]:
    """Phases of a plan file (YAML or JSON): every mapping with a ``phase_id``, tiers included."""
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise _fail(f"--plan: cannot read {path}: {error}") from None
    phases: list[dict[str, Any]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("phase_id") or ((node.get("id") and node.get("description")) or node.get("goal")):
                phases.append(node)
                return
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(document)
    run_id = ""
    if isinstance(document, dict):
        run_id = str(document.get("run_id") or document.get("name") or "")
    return run_id, phases


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(item) for item in value]


def phase_request(phase: dict[str, Any], run_id: str, model: str) -> estimator_pb2.EstimateRequest:
    """EstimateRequest for one plan phase (PhaseSpec field names; ``goal``/``id`` accepted too)."""
    scope = phase.get("scope") or {}
    if not isinstance(scope, dict):
        scope = {"paths": scope}
    return estimator_pb2.EstimateRequest(
        run_id=run_id,
        phase_id=str(phase.get("phase_id") or phase.get("id") or ""),
        description=str(phase.get("description") or phase.get("goal") or ""),
        category=str(phase.get("category") or ""),
        complexity=str(phase.get("complexity") or ""),
        deliverables=_as_list(phase.get("deliverables")),
        scope_paths=_as_list(scope.get("paths") or phase.get("scope_paths")),
        read_only_context=_as_list(scope.get("read_only_context") or phase.get("read_only_context")),
        model=model,
    )


def estimate(
    description: Annotated[str | None, typer.Option("--description", "-d", help="Phase goal.")] = None,
    phase_id: Annotated[str, typer.Option("--phase-id", help="Phase identifier.")] = "adhoc",
    category: Annotated[str, typer.Option(help="Category hint (empty = detect).")] = "",
    complexity: Annotated[str, typer.Option(help="low, medium, high or maintenance.")] = "",
    deliverable: Annotated[
        list[str] | None, typer.Option("--deliverable", help="Deliverable path (repeat).")
    ] = None,
    scope: Annotated[list[str] | None, typer.Option("--scope", help="Writable scope path (repeat).")] = None,
    context: Annotated[
        list[str] | None, typer.Option("--context", help="Read-only context path (repeat).")
    ] = None,
    model: Annotated[str, typer.Option(help="Provider model the call will use.")] = "",
    run_id: Annotated[str, typer.Option("--run-id", help="Run the phase belongs to.")] = "",
    plan: Annotated[Path | None, typer.Option("--plan", help="Plan file: estimate its phases.")] = None,
    phase: Annotated[str | None, typer.Option("--phase", help="With --plan: only this phase id.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the responses as JSON.")] = False,
    address: AddressOption = None,
    timeout: TimeoutOption = DEFAULT_TIMEOUT,
) -> None:
    """Predict output tokens and the budget for a phase (from flags or a plan file)."""
    if plan is not None:
        plan_run_id, phases = load_plan_phases(plan)
        if phase is not None:
            phases = [p for p in phases if str(p.get("phase_id") or p.get("id")) == phase]
            if not phases:
                raise _fail(f"--phase: no phase {phase!r} in {plan}")
        if not phases:
            raise _fail(f"--plan: no phases found in {plan}")
        requests = [phase_request(p, run_id or plan_run_id, model) for p in phases]
    else:
        if not description:
            raise _fail("--description (or --plan) is required")
        requests = [
            estimator_pb2.EstimateRequest(
                run_id=run_id,
                phase_id=phase_id,
                description=description,
                category=category,
                complexity=complexity,
                deliverables=deliverable or [],
                scope_paths=scope or [],
                read_only_context=context or [],
                model=model,
            )
        ]
    with _stub(address) as stub:
        responses = [stub.Estimate(request, timeout=timeout) for request in requests]
    if as_json:
        payload = [json_format.MessageToDict(r, preserving_proto_field_name=True) for r in responses]
        console.print_json(json.dumps(payload if len(payload) > 1 else payload[0]))
        return
    if len(responses) == 1:
        _print_estimate(requests[0], responses[0])
        return
    table = Table(title=f"Estimates ({responses[0].model_version})")
    for name in (
        "phase",
        "category",
        "complexity",
        "deliverables",
        "predicted",
        "budget",
        "max_tokens",
        "conf.",
    ):
        table.add_column(name, justify="right" if name not in ("phase", "category", "complexity") else "left")
    for request, response in zip(requests, responses, strict=True):
        table.add_row(
            request.phase_id,
            response.category,
            response.complexity,
            str(response.deliverable_count),
            f"{response.predicted_output_tokens:,}",
            f"{response.selected_budget:,}",
            f"{response.actual_max_tokens:,}",
            f"{response.confidence:.2f}",
        )
    table.add_row(
        "total", "", "", "", f"{sum(r.predicted_output_tokens for r in responses):,}",
        f"{sum(r.selected_budget for r in responses):,}", f"{sum(r.actual_max_tokens for r in responses):,}", "",
    )  # fmt: skip
    console.print(table)


def _print_estimate(request: estimator_pb2.EstimateRequest, response: estimator_pb2.EstimateResponse) -> None:
    console.print(
        f"[bold]{request.phase_id}[/bold]: [bold cyan]{response.predicted_output_tokens:,}[/] output tokens "
        f"predicted, budget [bold]{response.selected_budget:,}[/] (max_tokens {response.actual_max_tokens:,})"
    )
    console.print(
        f"category {response.category}, complexity {response.complexity}, "
        f"{response.deliverable_count} deliverable(s), buffer x{response.buffer_multiplier:.2f}, "
        f"confidence {response.confidence:.2f}, model {response.model_version}, estimate {response.estimate_id}"
    )
    table = Table(title="Breakdown")
    table.add_column("term")
    table.add_column("tokens", justify="right")
    table.add_column("detail")
    for item in response.breakdown:
        table.add_row(item.name, f"{item.tokens:+,}", item.detail)
    console.print(table)


# -- calibrate ---------------------------------------------------------------------------------


def calibrate(
    promote: Annotated[
        str | None, typer.Option("--promote", help="Serve this model version (rollback too).")
    ] = None,
    min_samples: Annotated[int, typer.Option("--min-samples", help="Clean samples a group needs.")] = 5,
    min_confidence: Annotated[
        float, typer.Option("--min-confidence", help="Confidence a group needs.")
    ] = 0.7,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Report only; store no candidate.")] = False,
    since: Annotated[
        str | None, typer.Option("--since", help="Learn from events since (ISO time or 7d).")
    ] = None,
    png: Annotated[Path, typer.Option("--png", help="Where to write the picture.")] = Path("calibration.png"),
    force: Annotated[
        bool, typer.Option("--force", help="With --promote: serve a version the promotion guard rejected.")
    ] = False,
    address: AddressOption = None,
    timeout: TimeoutOption = LONG_TIMEOUT,
) -> None:
    """Learn a candidate model from telemetry and report it; or promote a version with --promote."""
    if force and promote is None:
        raise _fail("--force only goes with --promote VERSION")
    with _stub(address) as stub:
        if promote is not None:
            response = stub.PromoteModel(
                estimator_pb2.PromoteModelRequest(version=promote, force=force), timeout=timeout
            )
            previous = response.previous_version or "nothing"
            console.print(f"now serving [bold]{response.model.version}[/bold] (was {previous})")
            return
        request = estimator_pb2.CalibrateRequest(
            min_samples=min_samples, min_confidence=min_confidence, dry_run=dry_run
        )
        moment = parse_since(since)
        if moment is not None:
            request.since.FromDatetime(moment)
        response = stub.Calibrate(request, timeout=timeout)
        telemetry_filter = estimator_pb2.TelemetryFilter()
        if moment is not None:
            telemetry_filter.since.FromDatetime(moment)
        events = list(
            stub.ExportTelemetry(
                estimator_pb2.ExportTelemetryRequest(filter=telemetry_filter), timeout=timeout
            )
        )
    report = response.report
    print_report(report)
    write_calibration_png(png, events, report)
    console.print(f"picture written to {png}")
    console.print(f"[bold]{report.recommendation}[/bold]")
    version = response.candidate_version
    if not version:
        console.print("dry run: no candidate stored")
    elif report.promote:
        console.print(
            f"stored candidate [bold]{version}[/bold] (not served yet): autopack calibrate --promote {version}"
        )
    else:
        console.print(
            f"stored [bold]{version}[/bold] as rejected (not served); to serve it anyway: "
            f"autopack calibrate --promote {version} --force"
        )


def print_report(report: estimator_pb2.CalibrationReport) -> None:
    console.print(
        metrics_table(
            f"Held-out accuracy ({report.folds}-fold, {report.training_events} clean events)",
            [(f"before ({report.base_version})", report.before), ("after (candidate)", report.after)],
        )
    )
    table = Table(title="Corrections per category x complexity")
    for name in (
        "category",
        "complexity",
        "samples",
        "factor",
        "confidence",
        "applied",
        "SMAPE before",
        "after",
        "safety margin",
        "cap",
    ):
        table.add_column(name, justify="left" if name in ("category", "complexity") else "right")
    for group in report.groups:
        table.add_row(
            group.category,
            group.complexity,
            str(group.samples),
            f"x{group.factor:.2f}",
            f"{group.confidence:.2f}",
            "[green]yes[/]" if group.applied else "no",
            f"{group.smape_before:.1f}%",
            f"{group.smape_after:.1f}%",
            f"x{group.buffer:.2f}" if group.buffer else "",
            f"x{group.buffer_cap:.2f}" if group.buffer else "",
        )
    console.print(table)
    if report.frontier:
        console.print(frontier_table(report))
    for note in report.notes:
        console.print(f"[yellow]note:[/yellow] {note}")


def frontier_table(report: estimator_pb2.CalibrationReport) -> Table:
    """Budget misses against P90 waste at other buffer levels, current model next to the candidate."""
    table = Table(title="What other safety margins would cost (held-out phases; * = served)")
    for name in ("margin", "current: misses", "P90 waste", "candidate: misses", "P90 waste", "tokens lost"):
        table.add_column(name, justify="right")
    current = {round(p.buffer, 4): p for p in report.baseline_frontier}
    for point in report.frontier:
        other = current.get(round(point.buffer, 4))
        table.add_row(
            f"x{point.buffer:g}{' *' if point.chosen else ''}",
            f"{100 * other.miss_rate:.1f}%" if other else "",
            f"{other.waste_p90:.2f}x" if other else "",
            f"{100 * point.miss_rate:.1f}%",
            f"{point.waste_p90:.2f}x",
            f"{100 * point.lost_share:.1f}%",
        )
    return table


def category_smape(report: estimator_pb2.CalibrationReport) -> dict[str, tuple[float, float]]:
    """Held-out median SMAPE per category, before and after ("all" = every event).

    Uses the category-level groups (complexity "*"); a category reported only per complexity
    gets the sample-weighted mean of its groups' medians.
    """
    result: dict[str, tuple[float, float]] = {}
    specific: dict[str, list[float]] = {}
    for group in report.groups:
        name = "all" if group.category == "*" else group.category
        if group.complexity == "*":
            result[name] = (group.smape_before, group.smape_after)
            continue
        entry = specific.setdefault(name, [0.0, 0.0, 0.0])
        entry[0] += group.samples * group.smape_before
        entry[1] += group.samples * group.smape_after
        entry[2] += group.samples
    for name, (before, after, samples) in specific.items():
        if name not in result and samples:
            result[name] = (before / samples, after / samples)
    ordered = sorted(name for name in result if name != "all")
    return {name: result[name] for name in [*ordered, *(["all"] if "all" in result else [])]}


def write_calibration_png(
    path: Path, events: Sequence[estimator_pb2.TelemetryEvent], report: estimator_pb2.CalibrationReport
) -> None:
    """Predicted vs actual (censored outputs marked as lower bounds) and SMAPE by category."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (scatter, bars, curve) = plt.subplots(1, 3, figsize=(19, 5.5))
    clean = [e for e in events if e.success and not e.truncated]
    censored = [e for e in events if e.truncated]
    failed = [e for e in events if not e.success and not e.truncated]
    for subset, label, marker, color in (
        (clean, "clean", "o", "tab:blue"),
        (failed, "failed (not truncated)", "x", "tab:gray"),
        (censored, "truncated (actual is a lower bound)", "^", "tab:red"),
    ):
        if subset:
            scatter.scatter(
                [e.predicted_output_tokens for e in subset],
                [e.actual_output_tokens for e in subset],
                label=f"{label} ({len(subset)})",
                marker=marker,
                color=color,
                alpha=0.7,
            )
    values = [v for e in events for v in (e.predicted_output_tokens, e.actual_output_tokens) if v > 0]
    if values:
        low, high = min(values) * 0.8, max(values) * 1.25
        scatter.plot(
            [low, high], [low, high], color="black", linewidth=1, linestyle="--", label="actual = predicted"
        )
        scatter.set_xscale("log")
        scatter.set_yscale("log")
        scatter.legend(loc="upper left", fontsize=8)
    else:
        scatter.text(0.5, 0.5, "no telemetry", ha="center", va="center", transform=scatter.transAxes)
    scatter.set_xlabel("predicted output tokens (as recorded)")
    scatter.set_ylabel("actual output tokens")
    scatter.set_title("Predicted vs actual")

    per_category = category_smape(report)
    if per_category:
        names = list(per_category)
        positions = range(len(names))
        width = 0.4
        bars.bar(
            [p - width / 2 for p in positions], [per_category[n][0] for n in names], width, label="before"
        )
        bars.bar(
            [p + width / 2 for p in positions], [per_category[n][1] for n in names], width, label="after"
        )
        bars.set_xticks(list(positions), names, rotation=30, ha="right")
        bars.legend()
    else:
        bars.text(0.5, 0.5, "no calibration groups", ha="center", va="center", transform=bars.transAxes)
    bars.set_ylabel("median SMAPE, % (clean events)")
    bars.set_title(
        f"SMAPE by category: held-out median {report.before.median_smape:.1f}% -> {report.after.median_smape:.1f}%"
    )
    draw_frontier(curve, report)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=110)
    plt.close(figure)


def draw_frontier(axes: Any, report: estimator_pb2.CalibrationReport) -> None:
    """Budget misses vs P90 waste across buffer levels (held-out phases), served points marked."""
    drawn = False
    for points, label, color in (
        (report.baseline_frontier, f"current ({report.base_version})", "tab:gray"),
        (report.frontier, "candidate", "tab:blue"),
    ):
        if not points:
            continue
        drawn = True
        axes.plot(
            [100 * p.miss_rate for p in points],
            [p.waste_p90 for p in points],
            marker=".",
            color=color,
            label=label,
        )
        for point in points:
            if point.chosen:
                axes.scatter(
                    [100 * point.miss_rate], [point.waste_p90], s=140, marker="*", color=color, zorder=3
                )
                axes.annotate(
                    f"served x{point.buffer:g}", (100 * point.miss_rate, point.waste_p90), fontsize=8
                )
    if drawn:
        axes.axvline(5.0, color="tab:red", linestyle=":", linewidth=1, label="5% misses (operating point)")
        axes.legend(fontsize=8)
    else:
        axes.text(
            0.5,
            0.5,
            "too few phases for a held-out frontier",
            ha="center",
            va="center",
            transform=axes.transAxes,
        )
    axes.set_xlabel("budget misses on held-out phases, %")
    axes.set_ylabel("P90 waste (budget / output)")
    axes.set_title("Misses vs waste across safety margins (star = served)")


# -- estimator replay / models / accuracy --------------------------------------------------------


class NdjsonSource:
    """Streams the events of an NDJSON file (never all in memory), remembering line numbers.

    Lines that do not parse are collected in ``errors``; ``line_of[i]`` is the file line of the
    i-th event sent, so a server rejection (by stream position) maps back to its line.
    """

    def __init__(self, file: Path) -> None:
        self.file = file
        self.errors: list[tuple[int, str]] = []
        self.line_of: list[int] = []
        try:
            with file.open("rb") as handle:
                self.lines = sum(1 for line in handle if line.strip())
        except OSError as error:
            raise _fail(f"FILE: cannot read {file}: {error}") from None

    def events(self) -> Iterator[estimator_pb2.TelemetryEvent]:
        from autopack_estimator.telemetry_io import read_ndjson

        with self.file.open(encoding="utf-8") as handle:
            for parsed in read_ndjson(handle):
                if parsed.event is None:
                    self.errors.append((parsed.line_number, parsed.error))
                    continue
                self.line_of.append(parsed.line_number)
                yield parsed.event

    def rejected(self, rejections: Sequence[estimator_pb2.ImportRejection]) -> list[tuple[int, str]]:
        """Local parse errors and server rejections, by file line."""
        return self.errors + [(self.line_of[r.index - 1], r.reason) for r in rejections]


def _rejections_table(rows: Sequence[tuple[int, str]]) -> Table:
    table = Table(title=f"Rejected lines ({len(rows)})")
    table.add_column("line", justify="right")
    table.add_column("reason")
    for line, reason in sorted(rows):
        table.add_row(str(line), reason)
    return table


@estimator_app.command("replay")
def replay(
    file: Annotated[Path, typer.Argument(help="NDJSON telemetry (e.g. from autopack telemetry export).")],
    candidate: Annotated[
        str, typer.Option("--candidate", help="Version to evaluate (default: newest candidate).")
    ] = "",
    baseline: Annotated[
        str, typer.Option("--baseline", help="Version to compare with (default: promoted).")
    ] = "",
    address: AddressOption = None,
    timeout: TimeoutOption = LONG_TIMEOUT,
) -> None:
    """Evaluate the current and a candidate model on exported telemetry, side by side."""
    source = NdjsonSource(file)

    def requests() -> Iterator[estimator_pb2.ReplayTelemetryRequest]:
        options = estimator_pb2.ReplayOptions(baseline_version=baseline, candidate_version=candidate)
        yield estimator_pb2.ReplayTelemetryRequest(options=options)
        for event in source.events():
            yield estimator_pb2.ReplayTelemetryRequest(event=event)

    with _stub(address) as stub:
        response = stub.ReplayTelemetry(requests(), timeout=timeout)
    rejected = source.rejected(response.rejections)
    console.print(
        metrics_table(
            f"Replay of {file.name}: {response.events} events",
            [
                ("as recorded", response.recorded),
                (f"current ({response.baseline.version})", response.baseline.overall),
                (f"candidate ({response.candidate.version})", response.candidate.overall),
            ],
        )
    )
    by_category = Table(title="Median SMAPE by category (clean events)")
    for name in ("category", "events", "current", "candidate"):
        by_category.add_column(name, justify="left" if name == "category" else "right")
    candidate_groups = {g.key: g.metrics for g in response.candidate.by_category}
    for group in response.baseline.by_category:
        other = candidate_groups.get(group.key, estimator_pb2.AccuracyMetrics())
        by_category.add_row(
            group.key,
            str(group.metrics.events),
            f"{group.metrics.median_smape:.1f}%",
            f"{other.median_smape:.1f}%",
        )
    console.print(by_category)
    if rejected:
        console.print(_rejections_table(rejected))


def _model_status(status: int) -> str:
    return estimator_pb2.ModelStatus.Name(status).removeprefix("MODEL_STATUS_").lower()


@estimator_app.command("models")
def models(address: AddressOption = None, timeout: TimeoutOption = DEFAULT_TIMEOUT) -> None:
    """Stored model versions, newest first (promote one with autopack calibrate --promote)."""
    with _stub(address) as stub:
        response = stub.ListModels(estimator_pb2.ListModelsRequest(), timeout=timeout)
    table = Table(title=f"Model versions (serving {response.promoted_version})")
    for name in ("version", "status", "created", "promoted", "parent", "summary"):
        table.add_column(name)
    for model in response.models:
        promoted = model.promoted_at.ToDatetime(tzinfo=UTC) if model.HasField("promoted_at") else None
        table.add_row(
            model.version,
            _model_status(model.status),
            f"{model.created_at.ToDatetime(tzinfo=UTC):%Y-%m-%d %H:%M}",
            f"{promoted:%Y-%m-%d %H:%M}" if promoted else "",
            model.parent_version,
            model.summary + "".join(f"\n- {reason}" for reason in model.status_reasons),
        )
    console.print(table)


@estimator_app.command("accuracy")
def accuracy(
    category: CategoryFilter = "",
    complexity: ComplexityFilter = "",
    model: ModelFilter = "",
    run_id: RunIdFilter = "",
    since: SinceFilter = None,
    address: AddressOption = None,
    timeout: TimeoutOption = DEFAULT_TIMEOUT,
) -> None:
    """How accurate the recorded estimates have been, overall and broken down."""
    request = estimator_pb2.GetAccuracyRequest(
        filter=_telemetry_filter(category, complexity, model, run_id, since)
    )
    with _stub(address) as stub:
        response = stub.GetAccuracy(request, timeout=timeout)
    console.print(metrics_table("Overall", [("all events", response.overall)]))
    for title, groups in (
        ("By category", response.by_category),
        ("By complexity", response.by_complexity),
        ("By deliverable count", response.by_deliverable_bucket),
    ):
        if groups:
            console.print(metrics_table(title, [(g.key, g.metrics) for g in groups][:8]))


# -- telemetry export / import -------------------------------------------------------------------


@telemetry_app.command("export")
def export(
    file: Annotated[Path, typer.Argument(help="NDJSON file to write ('-' = stdout).")],
    category: CategoryFilter = "",
    complexity: ComplexityFilter = "",
    model: ModelFilter = "",
    run_id: RunIdFilter = "",
    since: SinceFilter = None,
    address: AddressOption = None,
    timeout: TimeoutOption = LONG_TIMEOUT,
) -> None:
    """Write recorded telemetry as NDJSON (TokenEstimationV2 column names), oldest first."""
    from autopack_estimator.telemetry_io import event_to_record

    telemetry_filter = _telemetry_filter(category, complexity, model, run_id, since)
    to_stdout = str(file) == "-"
    with _stub(address) as stub:
        total = stub.GetAccuracy(
            estimator_pb2.GetAccuracyRequest(filter=telemetry_filter), timeout=timeout
        ).overall.events
        stream = stub.ExportTelemetry(
            estimator_pb2.ExportTelemetryRequest(filter=telemetry_filter), timeout=timeout
        )

        def write_all(handle: Any, progress: Progress | None) -> int:
            task = progress.add_task("exporting", total=total) if progress else None
            written = 0
            for event in stream:
                handle.write(json.dumps(event_to_record(event), ensure_ascii=False) + "\n")
                written += 1
                if progress is not None and task is not None:
                    progress.advance(task)
            return written

        if to_stdout:
            written = write_all(sys.stdout, None)
        else:
            file.parent.mkdir(parents=True, exist_ok=True)
            with file.open("w", encoding="utf-8") as handle, _progress() as progress:
                written = write_all(handle, progress)
    errors.print(f"exported {written} event(s)" + ("" if to_stdout else f" to {file}"))


@telemetry_app.command("import")
def import_(
    file: Annotated[Path, typer.Argument(help="NDJSON telemetry, e.g. a legacy TokenEstimationV2 export.")],
    address: AddressOption = None,
    timeout: TimeoutOption = LONG_TIMEOUT,
) -> None:
    """Import NDJSON telemetry; bad lines are reported by number and the rest still import."""
    source = NdjsonSource(file)
    with _stub(address) as stub, _progress() as progress:
        task = progress.add_task(f"importing {file.name}", total=source.lines)

        def stream() -> Iterator[estimator_pb2.TelemetryEvent]:
            for event in source.events():
                yield event
                progress.update(task, completed=len(source.line_of) + len(source.errors))

        response = stub.ImportTelemetry(stream(), timeout=timeout)
    rejected = source.rejected(response.rejections)
    console.print(f"imported [bold]{response.imported}[/bold] event(s), rejected {len(rejected)}")
    if rejected:
        console.print(_rejections_table(rejected))
    if rejected and not response.imported:
        raise typer.Exit(1)
