"""OpenTelemetry setup shared by every service.

Spans go over OTLP/gRPC when the standard ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set,
otherwise to ``<AUTOPACK_TRACE_DIR>/<service>.jsonl`` (one JSON span per line)
which ``autopack trace`` renders. Context crosses services as W3C tracecontext
and baggage in gRPC metadata; the run and phase ids ride in the baggage and are
copied onto every span, so "all spans of phase X" is one query.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path

import grpc
from opentelemetry import baggage, context, propagate, trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.instrumentation.grpc import client_interceptor, filters, server_interceptor
from opentelemetry.instrumentation.grpc.grpcext import intercept_channel
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

RUN_ID_KEY = "autopack.run_id"
PHASE_ID_KEY = "autopack.phase_id"
BAGGAGE_KEYS = (RUN_ID_KEY, PHASE_ID_KEY)

_HEALTH_SERVICE = "grpc.health.v1.Health"
_provider_lock = threading.Lock()
_provider: TracerProvider | None = None


class JsonlSpanExporter(SpanExporter):
    """Appends finished spans to a file, one JSON object per line (the SDK's own span JSON)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = "".join(span.to_json(indent=None) + "\n" for span in spans)
        with self._lock, self._path.open("a", encoding="utf-8") as handle:
            handle.write(lines)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


class BaggageAttributesProcessor(SpanProcessor):
    """Copies the run and phase ids from baggage onto each span as it starts."""

    def on_start(self, span: trace.Span, parent_context: context.Context | None = None) -> None:  # type: ignore[override]
        for key in BAGGAGE_KEYS:
            value = baggage.get_baggage(key, parent_context)
            if value is not None:
                span.set_attribute(key, str(value))


def _exclude_health() -> filters.Callable:  # type: ignore[name-defined]
    return filters.negate(filters.service_name(_HEALTH_SERVICE))


def setup_telemetry(service: str, version: str, trace_dir: Path) -> TracerProvider:
    """Install the global tracer provider for ``autopack-<service>``; idempotent per process."""
    global _provider
    with _provider_lock:
        if _provider is not None:
            return _provider
        propagate.set_global_textmap(
            CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()])
        )
        resource = Resource.create({"service.name": f"autopack-{service}", "service.version": version})
        provider = TracerProvider(resource=resource)
        provider.add_span_processor(BaggageAttributesProcessor())
        provider.add_span_processor(
            BatchSpanProcessor(_exporter(service, trace_dir), schedule_delay_millis=500)
        )
        trace.set_tracer_provider(provider)
        _provider = provider
        return provider


def _exporter(service: str, trace_dir: Path) -> SpanExporter:
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    return JsonlSpanExporter(trace_dir / f"{service}.jsonl")


def shutdown_telemetry() -> None:
    """Flush and stop the exporter (called on graceful shutdown)."""
    global _provider
    with _provider_lock:
        if _provider is not None:
            _provider.shutdown()
            _provider = None


def server_tracing_interceptor(tracer_provider: trace.TracerProvider | None = None) -> grpc.ServerInterceptor:
    """SERVER spans for every RPC except health checks (global provider unless one is given)."""
    return server_interceptor(tracer_provider=tracer_provider, filter_=_exclude_health())


def traced_channel(
    target: str,
    options: Sequence[tuple[str, object]] = (),
    tracer_provider: trace.TracerProvider | None = None,
) -> grpc.Channel:
    """An insecure channel whose calls carry tracecontext and baggage and make CLIENT spans."""
    channel = grpc.insecure_channel(target, options=list(options))
    return intercept_channel(
        channel, client_interceptor(tracer_provider=tracer_provider, filter_=_exclude_health())
    )


def phase_baggage(run_id: str, phase_id: str | None = None) -> context.Context:
    """A context carrying the run (and phase) id in baggage, to attach around a phase."""
    ctx = baggage.set_baggage(RUN_ID_KEY, run_id, context.Context())
    if phase_id is not None:
        ctx = baggage.set_baggage(PHASE_ID_KEY, phase_id, ctx)
    return ctx


def current_trace_id() -> str:
    """Hex trace id of the current span, or "" outside a span."""
    span_context = trace.get_current_span().get_span_context()
    return format(span_context.trace_id, "032x") if span_context.is_valid else ""
