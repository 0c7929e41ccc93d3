"""Estimator benchmarks: Estimate RPC cost against an empty echo RPC, and model accuracy.

Throughput/latency: one server built with ``create_server`` (the production stack: tracing and
error-mapping interceptors, health, reflection) hosts both the estimator and an empty echo
service that takes an ``EstimateRequest`` and returns a prebuilt ``EstimateResponse``. Load comes
from a separate client process over a real loopback channel, so the server's interpreter is not
shared with the load generator. The figure is the ratio estimate/echo measured in the same run:
it isolates what the estimator itself costs (model, validation, database write). Each scenario is
run with tracing off (no tracer provider: the instrumentation's spans are non-recording) and on
(``setup_telemetry`` with the JSONL exporter, i.e. every RPC is a recorded, exported span).

Accuracy: the shipped default model and a calibrated model on a telemetry file, judged two ways,
both re-predicted (never the stored prediction): k-fold cross-validation with folds by phase (new
phases) and a split by time (calibrate on the oldest 70 %, judge the rest: retries of phases seen
before the cut come back with their history). Files: synthetic telemetry of both generator shapes
on three seeds, written as NDJSON and read back through the service's import path, the legacy
sample, and ``AUTOPACK_BENCH_TELEMETRY`` (an NDJSON export) when set.
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from autopack.estimator.v1 import estimator_pb2
from autopack_common.server import ServiceBinding, create_server

from bench import Section

#: Estimate calls/s over echo calls/s on the same stack must stay at or above this (measured 0.58-0.73).
THROUGHPUT_GUARD = 0.65

ECHO_SERVICE = "autopack.bench.v1.Echo"
ECHO_METHOD = f"/{ECHO_SERVICE}/Echo"
ESTIMATE_METHOD = "/autopack.estimator.v1.EstimatorService/Estimate"

REPO = Path(__file__).resolve().parent.parent
LEGACY_SAMPLE = REPO / "tests" / "estimator" / "data" / "legacy_sample.ndjson"


def estimate_payloads(count: int, seed: int = 7) -> list[bytes]:
    """``count`` Estimate requests, serialised once (the client sends bytes).

    The phases of synthetic legacy-shaped telemetry in recorded order: every phase's goal text is
    its own (the estimator analyses each new phase afresh) and retries come back as they do in
    real runs. Each measurement sends its own slice, so no request is repeated across rounds.
    """
    from autopack_estimator.synthetic import synthetic_events

    payloads = []
    for index, event in enumerate(synthetic_events(count, seed=seed, shape="legacy")):
        phase = event.phase
        request = estimator_pb2.EstimateRequest(
            run_id="bench",
            phase_id=f"bench-{index}",
            description=phase.description,
            category=phase.category_hint,
            complexity=phase.complexity,
            deliverables=list(phase.deliverables),
            scope_paths=list(phase.scope_paths),
            read_only_context=list(phase.read_only_context),
            model=phase.model,
        )
        payloads.append(request.SerializeToString())
    return payloads


def echo_binding(response: estimator_pb2.EstimateResponse) -> ServiceBinding:
    """An empty service on the same stack: parse the request, return a prebuilt response."""
    handler = grpc.method_handlers_generic_handler(
        ECHO_SERVICE,
        {
            "Echo": grpc.unary_unary_rpc_method_handler(
                lambda _request, _context: response,
                request_deserializer=estimator_pb2.EstimateRequest.FromString,
                response_serializer=estimator_pb2.EstimateResponse.SerializeToString,
            )
        },
    )
    return ServiceBinding(
        ECHO_SERVICE, lambda _servicer, server: server.add_generic_rpc_handlers((handler,)), None
    )


# -- load generator (runs in a child process) ------------------------------------------------------


def client_load(
    address: str, method: str, payloads: list[bytes], threads: int, calls: int, warmup: int, offset: int = 0
) -> tuple[list[float], float]:
    """``threads`` clients, each with its own connection, make ``calls`` sequential calls.

    Client ``slot`` sends its own run of ``payloads`` from ``offset + slot * (warmup + calls)``.

    Returns every call's latency (seconds) and the wall time of the measured part.
    """
    latencies: list[list[float]] = [[] for _ in range(threads)]
    spans: list[tuple[float, float]] = [(0.0, 0.0)] * threads
    barrier = threading.Barrier(threads)
    errors: list[BaseException] = []

    def worker(slot: int) -> None:
        channel = grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
        try:
            call = channel.unary_unary(method)
            first = offset + slot * (warmup + calls)
            for i in range(warmup):
                call(payloads[(first + i) % len(payloads)], timeout=30)
            barrier.wait()
            own = latencies[slot]
            started = time.perf_counter()
            for i in range(calls):
                before = time.perf_counter()
                call(payloads[(first + warmup + i) % len(payloads)], timeout=30)
                own.append(time.perf_counter() - before)
            spans[slot] = (started, time.perf_counter())
        except BaseException as error:
            errors.append(error)
            barrier.abort()
        finally:
            channel.close()

    workers = [threading.Thread(target=worker, args=(slot,)) for slot in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    if errors:
        raise RuntimeError(f"load generator failed: {errors[0]!r}")
    wall = max(end for _, end in spans) - min(start for start, _ in spans)
    return [value for own in latencies for value in own], wall


@dataclass
class LoadResult:
    target: str
    tracing: str
    calls: int
    throughput: float
    p50_ms: float
    p99_ms: float
    server_cpu_us: float


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def _measure(
    pool: ProcessPoolExecutor,
    address: str,
    target: str,
    tracing: str,
    payloads: list[bytes],
    threads: int,
    calls: int,
    warmup: int,
    offset: int,
) -> LoadResult:
    method = ESTIMATE_METHOD if target == "Estimate" else ECHO_METHOD
    cpu_before = time.process_time()  # this process is the server (the load comes from another)
    latencies, wall = pool.submit(
        client_load, address, method, payloads, threads, calls, warmup, offset
    ).result(timeout=600)
    served = threads * (calls + warmup)
    return LoadResult(
        server_cpu_us=1e6 * (time.process_time() - cpu_before) / served,
        target=target,
        tracing=tracing,
        calls=len(latencies),
        throughput=len(latencies) / wall,
        p50_ms=1000 * _percentile(latencies, 50),
        p99_ms=1000 * _percentile(latencies, 99),
    )


def throughput_section(quick: bool) -> Section:
    from autopack_common.telemetry import setup_telemetry, shutdown_telemetry
    from autopack_estimator.service import open_servicer, service_binding
    from autopack_estimator.settings import EstimatorSettings

    threads = 4
    calls = 150 if quick else 800
    warmup = 20 if quick else 100
    rounds = 1 if quick else 5
    per_measurement = threads * (warmup + calls)
    payloads = estimate_payloads(1 + 2 * rounds * per_measurement)  # a fresh slice for every Estimate run
    results: dict[tuple[str, str], LoadResult] = {}
    round_ratios: dict[str, list[float]] = {"off": [], "on": []}
    offset = 1
    with tempfile.TemporaryDirectory(prefix="autopack-bench-") as tmp:
        database_url = os.environ.get("AUTOPACK_BENCH_DATABASE_URL") or f"sqlite:///{tmp}/estimator.db"
        servicer, engine = open_servicer(database_url, 3.0, EstimatorSettings().estimate_flush_ms / 1000)
        sample = servicer.Estimate(estimator_pb2.EstimateRequest.FromString(payloads[0]), None)
        running = create_server(
            [service_binding(servicer), echo_binding(sample)], "127.0.0.1:0", max_workers=16
        )
        context = multiprocessing.get_context("spawn")
        trace_file = Path(tmp) / "traces" / "estimator.jsonl"
        try:
            with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
                for tracing in ("off", "on"):
                    if tracing == "on":
                        setup_telemetry("estimator", "bench", Path(tmp) / "traces")
                    # Alternate the targets and keep each one's best round: the machine is shared.
                    for _ in range(rounds):
                        throughput = {}
                        for target in ("echo", "Estimate"):
                            result = _measure(
                                pool,
                                running.address,
                                target,
                                tracing,
                                payloads,
                                threads,
                                calls,
                                warmup,
                                offset,
                            )
                            if target == "Estimate":
                                offset += per_measurement
                            throughput[target] = result.throughput
                            best = results.get((target, tracing))
                            if best is None or result.throughput > best.throughput:
                                results[(target, tracing)] = result
                        round_ratios[tracing].append(throughput["Estimate"] / throughput["echo"])
                    if tracing == "on":
                        shutdown_telemetry()
        finally:
            running.stop(0)
            servicer.close()
            estimates = servicer.store.count_estimates()
            engine.dispose()
        spans = sum(1 for _ in trace_file.open()) if trace_file.exists() else 0
    section = Section(
        title="Estimate RPC vs empty echo RPC (same server stack, same run)",
        columns=[
            "RPC",
            "tracing",
            "calls",
            "calls/s",
            "p50 ms",
            "p99 ms",
            "server CPU us/call",
            "ratio to echo",
        ],
    )
    for tracing in ("off", "on"):
        echo = results[("echo", tracing)]
        for target in ("echo", "Estimate"):
            result = results[(target, tracing)]
            section.rows.append(
                [
                    target,
                    tracing,
                    str(result.calls),
                    f"{result.throughput:,.0f}",
                    f"{result.p50_ms:.2f}",
                    f"{result.p99_ms:.2f}",
                    f"{result.server_cpu_us:.0f}",
                    f"{result.throughput / echo.throughput:.2f}",
                ]
            )
    backend = "PostgreSQL" if "postgres" in database_url else "SQLite (embedded default)"
    guard = ", ".join(
        f"tracing {tracing} {results[('Estimate', tracing)].throughput / results[('echo', tracing)].throughput:.2f}"
        for tracing in ("off", "on")
    )
    met = all(
        results[("Estimate", t)].throughput / results[("echo", t)].throughput >= THROUGHPUT_GUARD
        for t in ("off", "on")
    )
    section.notes += [
        f"Estimate/echo guard >= {THROUGHPUT_GUARD:.2f} (best rounds): {guard} -> {'met' if met else 'NOT MET'} "
        "(the rest of the gap is the interpreter lock: validation and the stored breakdown are kept)",
        f"{threads} client threads in a separate process, {calls} calls each, best of {rounds} alternating "
        f"rounds; database: {backend}",
        "ratio of each round (echo then Estimate, back to back): "
        + "; ".join(
            f"tracing {tracing} {', '.join(f'{r:.2f}' for r in ratios)} (median {statistics.median(ratios):.2f})"
            for tracing, ratios in round_ratios.items()
        ),
        "every Estimate is a phase of synthetic legacy-shaped telemetry in recorded order (own goal text, "
        "retries as they come), none sent twice",
        f"{estimates} estimates stored; {spans} spans exported with tracing on",
        "ratio = Estimate calls/s over echo calls/s in the same run (server CPU per call is the steadier "
        "figure on a shared machine: it includes the estimate writer's batched inserts)",
    ]
    return section


# -- accuracy ---------------------------------------------------------------------------------------

#: The issue's quality bar on held-out telemetry (median SMAPE aim, budget-miss and P90-waste limits).
BAR_SMAPE, BAR_MISS, BAR_WASTE = 30.0, 0.02, 3.0


def write_synthetic_telemetry(path: Path, n: int, seed: int, shape: str = "simple") -> None:
    """Synthetic telemetry as an NDJSON export, oldest first (recorded predictions: the default model)."""
    from autopack_estimator.synthetic import synthetic_telemetry
    from autopack_estimator.telemetry_io import write_ndjson

    with path.open("w", encoding="utf-8") as handle:
        write_ndjson(synthetic_telemetry(n, seed, shape=shape), handle)


def _metric_cells(metrics: Any) -> list[str]:
    return [
        f"{metrics.events} / {metrics.clean_events}",
        f"{metrics.median_smape:.1f}%",
        f"{metrics.mean_smape:.1f}%",
        f"{100 * metrics.underestimation_rate:.1f}%",
        f"{100 * metrics.budget_miss_rate:.1f}%",
        f"{metrics.waste_p50:.2f}x",
        f"{metrics.waste_p90:.2f}x",
        "yes" if _meets_bar(metrics) else "no",
    ]


def _meets_bar(metrics: Any) -> bool:
    """All three at once, as the issue judges them."""
    return (
        metrics.clean_events > 0
        and metrics.median_smape < BAR_SMAPE
        and metrics.budget_miss_rate <= BAR_MISS
        and metrics.waste_p90 <= BAR_WASTE
    )


def read_training_events(path: Path) -> tuple[list[Any], int]:
    """Training events of an NDJSON export through the service's own import path, oldest first."""
    from autopack_common.errors import InvalidArgument
    from autopack_estimator.service import imported_record, training_event
    from autopack_estimator.telemetry_io import read_ndjson

    with path.open(encoding="utf-8") as handle:
        parsed = list(read_ndjson(handle))
    records = []
    for line in parsed:
        if line.event is None:
            continue
        try:
            records.append(imported_record(line.event))
        except InvalidArgument:
            continue
    records.sort(key=lambda record: record.timestamp)  # stable: the store's order (timestamp, id)
    return [training_event(record) for record in records], len(parsed)


def oracle_rows(name: str, n: int, seed: int, shape: str, model_miss_rate: float) -> list[list[str]]:
    """The best any request-only estimator can do on a synthetic file: the truth, one hindsight buffer.

    Judged at the bar's 2 % misses and at the miss rate the calibrated model reached (k-fold), so
    the calibrated row can be read against the oracle at equal risk.
    """
    from autopack_estimator.synthetic import oracle_accuracy, synthetic_samples

    samples = synthetic_samples(n, seed, shape=shape)
    rows = []
    for label, target in (("oracle @ bar misses", BAR_MISS), ("oracle @ calibrated misses", model_miss_rate)):
        result = oracle_accuracy(samples, target)
        rows.append([name, f"all, buffer x{result.buffer:.2f}", label, *_metric_cells(result.metrics)])
    return rows


def accuracy_rows(name: str, path: Path) -> tuple[list[list[str]], list[str], float]:
    """Default vs calibrated on one NDJSON file: k-fold by phase and a 70/30 split by time.

    Also returns the calibrated model's k-fold budget-miss rate (the oracle is judged at it).
    """
    from autopack_estimator.calibration import calibrate
    from autopack_estimator.model import ModelParameters

    events, lines = read_training_events(path)
    result = calibrate(events, ModelParameters.default(), new_version="bench-candidate")
    report = result.report
    cv = f"{report.folds}-fold by phase" if report.folds else "in-sample"
    rows = [
        [name, cv, "default-1", *_metric_cells(report.before)],
        [name, cv, "calibrated", *_metric_cells(report.after)],
    ]
    split = report.time_split
    if split is not None:
        view = f"time {round(100 * split.fraction)}/{round(100 * (1 - split.fraction))}"
        rows += [
            [name, view, "default-1", *_metric_cells(split.before)],
            [name, view, "calibrated", *_metric_cells(split.after)],
        ]
        if split.repeats:
            rows.append([name, f"{view}: retries only", "calibrated", *_metric_cells(split.after_repeats)])
    applied = sum(1 for group in report.groups if group.applied)
    notes = [
        f"{name}: {lines} lines read; {applied}/{len(report.groups)} groups corrected"
        + (
            f"; time split: {split.held_out_events} later events, {split.repeats} of them retries of "
            "phases seen before the cut"
            if split is not None
            else "; too few events for a time split"
        )
    ]
    notes += [
        f"{name}: {note}"
        for note in report.notes
        if note.startswith(("safety margin", "retries judged", "larger phases write"))
    ]
    return rows, notes, report.after.budget_miss_rate


def accuracy_section(quick: bool) -> Section:
    section = Section(
        title="Accuracy: shipped default vs calibrated model on held-out telemetry (re-predicted)",
        columns=["telemetry", "held out", "model", "events / clean", "median SMAPE", "mean SMAPE",
                 "under-est.", "budget miss", "waste P50", "waste P90", "bar"],
    )  # fmt: skip
    n = 600 if quick else 3000
    seeds = (42, 7, 2026)
    with tempfile.TemporaryDirectory(prefix="autopack-bench-") as tmp:
        files: list[tuple[str, Path, tuple[int, str] | None]] = []
        for shape in ("simple", "legacy"):
            for seed in seeds:
                path = Path(tmp) / f"synthetic-{shape}-{seed}.ndjson"
                write_synthetic_telemetry(path, n, seed, shape)
                files.append((f"{shape} s{seed} ({n})", path, (seed, shape)))
        if LEGACY_SAMPLE.exists():
            files.append(("legacy sample (18)", LEGACY_SAMPLE, None))
        extra = os.environ.get("AUTOPACK_BENCH_TELEMETRY")
        if extra:
            files.append((Path(extra).name, Path(extra), None))
        for name, path, generated in files:
            rows, notes, model_miss_rate = accuracy_rows(name, path)
            section.rows += rows
            if generated is not None:
                section.rows += oracle_rows(name, n, *generated, model_miss_rate)
            section.notes += notes
    section.notes += [
        "k-fold by phase: every attempt of a phase is held out together (how new phases fare); time split: "
        "calibrate on the oldest 70 %, judge the rest (retries of earlier phases keep their history)",
        "synthetic 'simple': independent attempts recorded under the default model's budgets (flattering: the "
        "default cannot miss); 'legacy': retries, small failures, truncations at an older estimator's "
        "budgets, a heavy tail (autopack_estimator/synthetic.py lists the assumptions)",
        f"bar = median SMAPE < {BAR_SMAPE:g}%, budget miss <= {BAR_MISS:.0%}, P90 waste <= {BAR_WASTE:g}x at once; "
        "SMAPE, under-estimation and waste on clean events, budget miss on all events",
        "oracle (synthetic files only): predicts each phase's true feature-level need, which the generator knows "
        "and telemetry never tells, with the one buffer that meets the miss rate on these very events; no "
        "estimator reading only the request predicts new phases better, so a target the oracle misses is out "
        "of reach on that data (retries can beat it: their history shows the phase's own effect)",
        f"why: with log-normal residuals of spread s, misses <= {BAR_MISS:.0%} need a buffer of exp(2.05 s) and "
        f"then P90 waste = exp(3.34 s); <= {BAR_WASTE:g}x needs s <= 0.33, i.e. a median SMAPE of the point "
        "prediction of about 22 % or less, not just under 30 %",
    ]
    return section


# -- the protocol real telemetry was judged by: 5 folds by run, calibrate 4, estimate the 5th ------------


def _run_events(messages: list[Any]) -> list[Any]:
    """Telemetry messages as the service imports them (validated, oldest first), with their run."""
    from autopack_common.errors import InvalidArgument
    from autopack_estimator.crossval import RunEvent
    from autopack_estimator.service import imported_record, training_event

    records = []
    for message in messages:
        try:
            records.append(imported_record(message))
        except InvalidArgument:
            continue
    records.sort(key=lambda record: record.timestamp)
    return [RunEvent(record.run_id or record.phase_id, training_event(record)) for record in records]


def _protocol_cells(metrics: Any) -> list[str]:
    return [
        f"{metrics.median_smape:.1f}%",
        f"{100 * metrics.budget_miss_rate:.1f}%",
        f"{metrics.waste_p50:.2f}x",
        f"{metrics.waste_p90:.2f}x",
    ]


def protocol_sections(quick: bool) -> list[Section]:
    """The issue's protocol on legacy-shaped sets, the shared sample and ``AUTOPACK_BENCH_TELEMETRY``.

    5 folds by run: calibrate on 4 (as ImportTelemetry + Calibrate), promote unless the promotion
    guard refuses (PromoteModel without force; the fold keeps the default then), estimate every
    distinct phase of the 5th. Also the candidate forced through the guard, and the default
    prediction with one global buffer chosen in hindsight on the held-out phases.
    """
    from autopack_estimator.crossval import cross_validate_by_run, pooled
    from autopack_estimator.frontier import no_worse_at_equal_misses, waste_at
    from autopack_estimator.model import ModelParameters
    from autopack_estimator.synthetic import legacy_run_telemetry
    from autopack_estimator.telemetry_io import read_ndjson

    base = ModelParameters.default()
    seeds = range(4 if quick else 8)
    sets: list[tuple[str, list[Any]]] = [
        (f"legacy-shaped x{len(seeds)} (pooled)", [legacy_run_telemetry(seed) for seed in seeds])
    ]
    for name, path in (("legacy sample (18)", LEGACY_SAMPLE), ("AUTOPACK_BENCH_TELEMETRY", None)):
        source = (
            Path(os.environ["AUTOPACK_BENCH_TELEMETRY"])
            if path is None and os.environ.get("AUTOPACK_BENCH_TELEMETRY")
            else path
        )
        if source is None or not source.exists():
            continue
        with source.open(encoding="utf-8") as handle:
            messages = [line.event for line in read_ndjson(handle) if line.event is not None]
        sets.append((name if path is not None else source.name, [messages]))

    table = Section(
        title="Real-telemetry protocol: 5 folds by run, calibrate on 4 + promote, estimate every phase of the 5th",
        columns=["telemetry", "model", "phases", "median SMAPE", "budget misses", "waste P50", "waste P90",
                 "promoted folds"],
    )  # fmt: skip
    frontier = Section(
        title="Miss / waste frontier on held-out phases (buffers x multiplier; * = as served)",
        columns=["telemetry", "multiplier", "default misses", "default P90 waste", "calibrated misses",
                 "calibrated P90 waste", "tokens lost (calibrated)"],
    )  # fmt: skip
    for name, groups in sets:
        guarded, forced = [], []
        for messages in groups:
            events = _run_events(messages)
            if len({e.run_id for e in events}) < 5:
                table.notes.append(f"{name}: fewer than 5 runs, skipped")
                break
            guarded.append(cross_validate_by_run(events, base))
            forced.append(cross_validate_by_run(events, base, force=True))
        else:
            result, without_guard = pooled(guarded), pooled(forced)
            promoted = sum(r.promoted for r in guarded)
            hindsight = result.hindsight
            table.rows += [
                [name, "default-1 (shipped)", str(result.phases), *_protocol_cells(result.default), ""],
                [name, "calibrated (guarded)", str(result.phases), *_protocol_cells(result.calibrated),
                 f"{promoted}/{5 * len(guarded)}"],
                [name, "calibrated (forced)", str(result.phases), *_protocol_cells(without_guard.calibrated),
                 f"{5 * len(forced)}/{5 * len(forced)}"],
            ]  # fmt: skip
            if hindsight is not None:
                table.rows.append(
                    [name, f"default x{hindsight.buffer:g} (hindsight)", str(result.phases),
                     f"{result.default.median_smape:.1f}%", f"{100 * hindsight.miss_rate:.1f}%",
                     f"{hindsight.waste_p50:.2f}x", f"{hindsight.waste_p90:.2f}x", ""]
                )  # fmt: skip
            table.notes.append(
                f"{name}, per event (retries counted again): default "
                + " / ".join(_protocol_cells(result.default_events))
                + "; calibrated (guarded) "
                + " / ".join(_protocol_cells(result.calibrated_events))
                + " (median SMAPE / misses / waste P50 / P90)"
            )
            served = next(p for p in result.calibrated_frontier if p.chosen)
            own = waste_at(result.calibrated_frontier, served.miss_rate)
            reference = waste_at(result.default_frontier, served.miss_rate)
            table.notes.append(
                f"{name}: at {100 * served.miss_rate:.1f}% misses or fewer (the calibrated model's), the "
                f"calibrated frontier needs P90 waste {own:.2f}x, the default's "
                + (f"{reference:.2f}x" if reference is not None else "more than any buffer tried reaches")
            )
            holds = [no_worse_at_equal_misses(r.calibrated_frontier, r.default_frontier) for r in guarded]
            table.notes.append(
                f"{name}: per set, the calibrated model (guarded) needs no more P90 waste than the default at its "
                f"misses in {sum(holds)} of {len(holds)}"
                + (
                    f" (not: sets {', '.join(str(i) for i, ok in enumerate(holds) if not ok)})"
                    if not all(holds)
                    else ""
                )
            )
            defaults = {round(p.buffer, 4): p for p in result.default_frontier}
            for point in result.calibrated_frontier:
                other = defaults[round(point.buffer, 4)]
                frontier.rows.append(
                    [name, f"x{point.buffer:g}{' *' if point.chosen else ''}",
                     f"{100 * other.miss_rate:.1f}%{' *' if other.chosen else ''}", f"{other.waste_p90:.2f}x",
                     f"{100 * point.miss_rate:.1f}%", f"{point.waste_p90:.2f}x", f"{100 * point.lost_share:.1f}%"]
                )  # fmt: skip
    table.notes += [
        "one outcome per distinct phase (first clean attempt; else its largest truncation, a lower bound: a miss "
        "for any budget <= it); folds grouped by run; SMAPE and waste over phases that finished normally",
        "guarded = PromoteModel without force (a rejected candidate leaves the default served for that fold); "
        "forced = every candidate promoted",
        "real-data targets: calibrated median SMAPE <= 33%, misses <= 5%, P90 waste <= 4.5x at once "
        "(goal 30% / 2% / 3x)",
    ]
    frontier.notes += [
        "multiplier of each model's own buffers; tokens lost = output of the attempts that would have run out, "
        "over all output (each is lost and retried: the price of a miss, see autopack_estimator/frontier.py)",
    ]
    return [table, frontier]


def run(quick: bool = False) -> list[Section]:
    return [throughput_section(quick), *protocol_sections(quick), accuracy_section(quick)]


if __name__ == "__main__":
    for section in run(quick=bool(os.environ.get("AUTOPACK_BENCH_QUICK"))):
        print(section.title)
        for row in section.rows:
            print("  ", " | ".join(row))
        for note in section.notes:
            print("   ", note)
