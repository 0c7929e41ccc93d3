"""The chassis server: health per service, reflection, error mapping, graceful stop."""

from __future__ import annotations

import threading
import time

import grpc
import pytest
from autopack_common.clients import CHANNEL_OPTIONS
from autopack_common.errors import InvalidArgument, NotFound
from autopack_common.server import MAX_MESSAGE_BYTES, ServiceBinding, create_server
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

SERVICE = "test.Echo"


def _echo_binding(behaviour) -> ServiceBinding:  # type: ignore[no-untyped-def]
    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Call": grpc.unary_unary_rpc_method_handler(behaviour),
            "Stream": grpc.unary_stream_rpc_method_handler(lambda request, context: iter([request, request])),
        },
    )
    return ServiceBinding(
        SERVICE, lambda servicer, server: server.add_generic_rpc_handlers((servicer,)), handler
    )


def test_health_reports_each_service_and_not_serving_during_shutdown() -> None:
    release = threading.Event()

    def slow(request: bytes, context: grpc.ServicerContext) -> bytes:
        release.wait(5)
        return request

    running = create_server([_echo_binding(slow)])
    channel = grpc.insecure_channel(running.address)
    health = health_pb2_grpc.HealthStub(channel)
    for name in ("", SERVICE):
        reply = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as unknown:
        health.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=5)
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND

    in_flight = channel.unary_unary(f"/{SERVICE}/Call").future(b"payload", timeout=10)
    time.sleep(0.2)
    stopper = threading.Thread(target=running.stop, args=(5.0,))
    stopper.start()
    time.sleep(0.2)
    assert running.health._server_status[SERVICE] == health_pb2.HealthCheckResponse.NOT_SERVING
    release.set()
    assert in_flight.result() == b"payload"  # the in-flight call finished within the grace period
    stopper.join(10)


def test_domain_errors_become_status_codes_with_the_message() -> None:
    def failing(request: bytes, context: grpc.ServicerContext) -> bytes:
        if request == b"bad":
            raise InvalidArgument("phase.description", "must not be empty")
        raise NotFound("run 'x' not found")

    running = create_server([_echo_binding(failing)])
    try:
        call = grpc.insecure_channel(running.address).unary_unary(f"/{SERVICE}/Call")
        with pytest.raises(grpc.RpcError) as invalid:
            call(b"bad", timeout=5)
        assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert invalid.value.details() == "phase.description: must not be empty"
        with pytest.raises(grpc.RpcError) as missing:
            call(b"other", timeout=5)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        running.stop(0)


def test_requests_up_to_the_clients_64_mib_limit_are_accepted_and_larger_ones_refused() -> None:
    running = create_server([_echo_binding(lambda request, context: len(request).to_bytes(8, "big"))])
    try:
        channel = grpc.insecure_channel(running.address, options=CHANNEL_OPTIONS)
        call = channel.unary_unary(f"/{SERVICE}/Call")
        twenty_mib = b"x" * (20 * 1024 * 1024)  # five times gRPC's 4 MiB server default
        assert int.from_bytes(call(twenty_mib, timeout=30), "big") == len(twenty_mib)
        with pytest.raises(grpc.RpcError) as too_big:
            call(b"x" * (MAX_MESSAGE_BYTES + 1), timeout=30)
        assert too_big.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        running.stop(0)


def test_reflection_lists_the_services() -> None:
    running = create_server([_echo_binding(lambda request, context: request)])
    try:
        stub = reflection_pb2_grpc.ServerReflectionStub(grpc.insecure_channel(running.address))
        responses = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        names = {service.name for service in next(responses).list_services_response.service}
        assert {SERVICE, "grpc.health.v1.Health"} <= names
    finally:
        running.stop(0)
