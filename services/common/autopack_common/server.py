"""gRPC server bootstrap: health, reflection, error mapping, tracing, graceful stop.

``create_server`` binds (port 0 in tests) and starts; ``serve_forever`` is what
``python -m autopack_<svc>`` calls: it blocks until SIGTERM/SIGINT, flips health
to NOT_SERVING, lets in-flight RPCs finish within the grace period and exits.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry.trace import TracerProvider

from autopack_common.errors import DomainError
from autopack_common.telemetry import server_tracing_interceptor

MAX_MESSAGE_BYTES = 64 * 1024 * 1024

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServiceBinding:
    """A servicer and how to register it: the full service name comes from its descriptor."""

    full_name: str
    add_to_server: Callable[[Any, grpc.Server], None]
    servicer: Any


@dataclass
class RunningServer:
    """A started server, the port it bound and its health servicer."""

    server: grpc.Server
    port: int
    health: health.HealthServicer
    on_stop: list[Callable[[], None]] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self, grace: float = 5.0) -> None:
        """NOT_SERVING first so balancers drain us, then finish in-flight RPCs within ``grace``."""
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()
        for callback in self.on_stop:
            callback()


def _map_domain_errors(behavior: Callable[..., Any], streaming_response: bool) -> Callable[..., Any]:
    """Turn a DomainError raised by a servicer into its status code and message."""

    if streaming_response:

        def stream_wrapper(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            try:
                yield from behavior(request, context)
            except DomainError as error:
                context.abort(error.code, error.message)

        return stream_wrapper

    def unary_wrapper(request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return behavior(request, context)
        except DomainError as error:
            context.abort(error.code, error.message)

    return unary_wrapper


class DomainErrorInterceptor(grpc.ServerInterceptor):
    """Maps domain exceptions to gRPC status codes for every RPC of the server."""

    def intercept_service(self, continuation, handler_call_details):  # type: ignore[no-untyped-def]
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                _map_domain_errors(handler.unary_unary, False),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                _map_domain_errors(handler.unary_stream, True),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                _map_domain_errors(handler.stream_unary, False),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return grpc.stream_stream_rpc_method_handler(
            _map_domain_errors(handler.stream_stream, True),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def create_server(
    bindings: Sequence[ServiceBinding],
    address: str = "127.0.0.1:0",
    max_workers: int = 16,
    tracer_provider: TracerProvider | None = None,
) -> RunningServer:
    """Build, bind and start a server with health, reflection, tracing and error mapping.

    Pass port 0 in ``address`` to let the OS choose; the bound port is returned.
    """
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc"),
        interceptors=[server_tracing_interceptor(tracer_provider), DomainErrorInterceptor()],
        options=[
            ("grpc.so_reuseport", 0),
            ("grpc.max_connection_age_ms", 300_000),
            ("grpc.max_connection_age_grace_ms", 30_000),
            # The clients' limit (clients.CHANNEL_OPTIONS); gRPC's server default is 4 MiB.
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ],
    )
    health_servicer = health.HealthServicer(
        experimental_non_blocking=True,
        experimental_thread_pool=futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="health"),
    )
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for binding in bindings:
        binding.add_to_server(binding.servicer, server)
    service_names = [binding.full_name for binding in bindings]
    reflection.enable_server_reflection(
        [*service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
        server,
    )
    port = server.add_insecure_port(address)
    if port == 0:
        raise RuntimeError(f"could not bind {address}")
    server.start()
    for name in ["", *service_names]:
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return RunningServer(server=server, port=port, health=health_servicer)


def serve_forever(running: RunningServer, grace: float) -> None:
    """Block until SIGTERM or SIGINT, then stop gracefully (call from the main thread)."""
    stop_requested = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        log.info("received %s, shutting down", signal.Signals(signum).name)
        stop_requested.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    log.info("serving on port %d", running.port)
    stop_requested.wait()
    running.stop(grace)
    log.info("stopped")
