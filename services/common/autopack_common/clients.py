"""Client channels to the other services, with retries on UNAVAILABLE and deadlines.

Retries use gRPC's own retry policy (service config), so a service that is
restarting is retried transparently; every call still passes a deadline.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from autopack_common.server import MAX_MESSAGE_BYTES
from autopack_common.settings import service_address
from autopack_common.telemetry import traced_channel

_RETRY_SERVICE_CONFIG = json.dumps(
    {
        # With a headless Service, DNS returns every replica; spread calls over all of them.
        "loadBalancingConfig": [{"round_robin": {}}],
        "methodConfig": [
            {
                # Not retried: each call spends LLM tokens and the builder already retries and fails
                # over provider errors itself (a more specific name wins over the default below).
                "name": [
                    {"service": "autopack.builder.v1.BuilderService", "method": method}
                    for method in ("Build", "Diagnose", "Replan")
                ],
            },
            {
                "name": [{}],
                "retryPolicy": {
                    "maxAttempts": 4,
                    "initialBackoff": "0.2s",
                    "maxBackoff": "2s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            },
        ],
    }
)

CHANNEL_OPTIONS: tuple[tuple[str, object], ...] = (
    ("grpc.service_config", _RETRY_SERVICE_CONFIG),
    ("grpc.enable_retries", 1),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
)


def open_channel(service: str, address: str | None = None) -> grpc.Channel:
    """A traced channel to ``service`` at ``address`` or ``AUTOPACK_<SVC>_ADDR``."""
    return traced_channel(address or service_address(service), CHANNEL_OPTIONS)


class NotServing(RuntimeError):
    """A service did not come up: its process ended or the deadline passed first."""


def is_serving(address: str, service: str = "", timeout: float = 1.0) -> bool:
    """Whether ``address`` answers SERVING for ``service`` ("" = the whole server) right now."""
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def wait_until_serving(
    address: str,
    service: str = "",
    timeout: float = 30.0,
    alive: Callable[[], bool] | None = None,
    on_wait: Callable[[], None] | None = None,
) -> None:
    """Block until ``address`` is SERVING (the health protocol: what a readiness probe asks).

    Raises NotServing when ``alive()`` says the process has ended (no point waiting for the
    deadline) or after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        if is_serving(address, service):
            return
        if alive is not None and not alive():
            raise NotServing(f"{service or address} ended before it was SERVING")
        if time.monotonic() >= deadline:
            raise NotServing(f"{service or address} not SERVING after {timeout:g}s")
        if on_wait is not None:
            on_wait()
        time.sleep(0.2)
