"""Estimator test helpers: a real server on port 0 over a real database, and a client stub."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from autopack.estimator.v1 import estimator_pb2, estimator_pb2_grpc
from autopack_common.server import RunningServer, create_server
from autopack_estimator.service import EstimatorServicer, open_servicer, service_binding
from autopack_estimator.store import Store
from autopack_estimator.synthetic import synthetic_telemetry
from sqlalchemy import Engine

# 18 real TokenEstimationV2 events exported from the original system (December 2025).
LEGACY_SAMPLE = Path(__file__).resolve().parent / "data" / "legacy_sample.ndjson"


@dataclass
class Estimator:
    """One running estimator replica and a client to it."""

    servicer: EstimatorServicer
    store: Store
    engine: Engine
    server: RunningServer
    channel: grpc.Channel
    stub: estimator_pb2_grpc.EstimatorServiceStub

    @property
    def address(self) -> str:
        return self.server.address


@pytest.fixture
def start_estimator() -> Iterator[Callable[..., Estimator]]:
    """Factory: start an estimator on a database URL (several may share one database).

    Estimates are written behind in batches as in production (``flush_seconds``); call
    ``servicer.flush()`` before reading estimates from the store directly. Request a database
    fixture *before* this one so the database outlives the servers.
    """
    started: list[Estimator] = []

    def start(database_url: str, refresh_seconds: float = 3.0, flush_seconds: float = 0.02) -> Estimator:
        servicer, engine = open_servicer(database_url, refresh_seconds, flush_seconds)
        server = create_server([service_binding(servicer)], "127.0.0.1:0", max_workers=16)
        channel = grpc.insecure_channel(server.address)
        estimator = Estimator(
            servicer=servicer,
            store=servicer.store,
            engine=engine,
            server=server,
            channel=channel,
            stub=estimator_pb2_grpc.EstimatorServiceStub(channel),
        )
        started.append(estimator)
        return estimator

    yield start
    for estimator in started:
        estimator.channel.close()
        estimator.server.stop(0)
        estimator.servicer.close()
        estimator.engine.dispose()


@pytest.fixture
def estimator(start_estimator: Callable[..., Estimator], sqlite_url: str) -> Estimator:
    """An estimator on its own SQLite database."""
    return start_estimator(sqlite_url)


def _make_event(index: int = 0, **overrides: object) -> estimator_pb2.TelemetryEvent:
    """A valid telemetry event; keyword arguments override fields."""
    values: dict[str, object] = {
        "run_id": "run-1",
        "phase_id": f"phase-{index}",
        "category": "implementation",
        "complexity": "medium",
        "deliverable_count": 2,
        "deliverables": ["src/app/module.py", "tests/test_module.py"],
        "predicted_output_tokens": 4000,
        "actual_output_tokens": 5000,
        "selected_budget": 6144,
        "success": True,
        "truncated": False,
        "stop_reason": "end_turn",
        "model": "claude-sonnet-4-5",
        "description": "Add the module and its tests",
    }
    timestamp = overrides.pop("timestamp", datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=index))
    values.update(overrides)
    event = estimator_pb2.TelemetryEvent(**values)  # type: ignore[arg-type]
    event.timestamp.FromDatetime(timestamp)  # type: ignore[arg-type]
    return event


@pytest.fixture
def make_event() -> Callable[..., estimator_pb2.TelemetryEvent]:
    """Builds valid telemetry events: ``make_event(index, **field_overrides)``."""
    return _make_event


@pytest.fixture
def legacy_sample() -> Path:
    """The legacy TokenEstimationV2 export used as import/export test data."""
    return LEGACY_SAMPLE


@pytest.fixture
def synthetic() -> Callable[..., list[estimator_pb2.TelemetryEvent]]:
    """``synthetic(n, seed)``: realistic telemetry events to import."""
    return synthetic_telemetry


@pytest.fixture(scope="session")
def worse_candidate_telemetry() -> list[estimator_pb2.TelemetryEvent]:
    """Training runs of a legacy-shaped set whose calibration the promotion guard rejects by a metric.

    4 of 5 run-folds, as the real telemetry was judged. Since a refused candidate falls back to
    re-learning only the safety margins, few sets end rejected: this is the first of seeds 0-79
    (found with the domain functions, pinned to keep the fixture fast). The service must come to
    the same verdict from the same events.
    """
    from autopack_estimator.calibration import calibrate
    from autopack_estimator.crossval import folds_by_run
    from autopack_estimator.model import ModelParameters
    from autopack_estimator.service import imported_record, training_event
    from autopack_estimator.synthetic import legacy_run_telemetry

    seed, fold = 47, 2
    messages = sorted(legacy_run_telemetry(seed), key=lambda m: m.timestamp.ToDatetime())
    folds = folds_by_run([m.run_id for m in messages])
    train = [m for m in messages if folds[m.run_id] != fold]
    events = [training_event(imported_record(m)) for m in train]
    verdict = calibrate(
        events, ModelParameters.default(), new_version="probe", time_split_fraction=None
    ).report.verdict
    assert verdict is not None and not verdict.promote and verdict.reasons[0].startswith("P90 waste"), verdict
    return train
