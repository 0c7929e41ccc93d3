"""``python -m autopack_estimator`` as a real process: migrates, serves, stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import grpc
from autopack.estimator.v1 import estimator_pb2, estimator_pb2_grpc
from autopack_common.clients import NotServing, open_channel, wait_until_serving
from autopack_common.database import create_db_engine
from autopack_common.server import create_server
from autopack_estimator.service import open_servicer, service_binding
from autopack_estimator.store import Store
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

ESTIMATOR = "autopack.estimator.v1.EstimatorService"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_the_service_process_serves_and_flushes_estimates_on_sigterm(tmp_path) -> None:  # type: ignore[no-untyped-def]
    address = f"127.0.0.1:{_free_port()}"
    database = tmp_path / "estimator.db"
    env = {
        **os.environ,
        "AUTOPACK_ESTIMATOR_ADDR": address,
        "DATABASE_URL": f"sqlite:///{database}",
        "AUTOPACK_TRACE_DIR": str(tmp_path / "traces"),
        "AUTOPACK_ESTIMATOR_ESTIMATE_FLUSH_MS": "60000",  # only the shutdown flush writes them
    }
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "autopack_estimator"], env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        try:
            wait_until_serving(address, ESTIMATOR, 30, alive=lambda: process.poll() is None)
        except NotServing as error:
            raise AssertionError(process.stderr.read() if process.stderr else "") from error
        channel = open_channel("estimator", address)
        stub = estimator_pb2_grpc.EstimatorServiceStub(channel)
        response = stub.Estimate(
            estimator_pb2.EstimateRequest(
                phase_id="p", description="Add the module", deliverables=["src/m.py"]
            ),
            timeout=10,
        )
        assert response.model_version == "default-1"
        channel.close()
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    engine = create_db_engine(f"sqlite:///{database}")
    try:
        assert Store(engine).get_estimate(response.estimate_id) is not None
    finally:
        engine.dispose()
    assert (tmp_path / "traces" / "estimator.jsonl").exists()


def test_estimate_attributes_land_on_the_server_span(sqlite_url: str) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    servicer, engine = open_servicer(sqlite_url)
    running = create_server([service_binding(servicer)], "127.0.0.1:0", tracer_provider=provider)
    channel = grpc.insecure_channel(running.address)
    try:
        response = estimator_pb2_grpc.EstimatorServiceStub(channel).Estimate(
            estimator_pb2.EstimateRequest(
                phase_id="p", description="Write the guide", deliverables=["docs/G.md"]
            ),
            timeout=10,
        )
    finally:
        channel.close()
        running.stop(0)
        servicer.close()
        engine.dispose()
    (span,) = [s for s in exporter.get_finished_spans() if s.name.endswith("/Estimate")]
    attributes = dict(span.attributes or {})
    assert attributes["autopack.tokens.predicted"] == response.predicted_output_tokens
    assert attributes["autopack.tokens.selected_budget"] == response.selected_budget
    assert attributes["autopack.estimator.category"] == response.category == "docs"
    assert attributes["autopack.estimator.model_version"] == "default-1"
