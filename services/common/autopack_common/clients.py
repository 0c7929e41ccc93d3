"""Client channels to the other services, with retries on UNAVAILABLE and deadlines.

Retries use gRPC's own retry policy (service config), so a service that is
restarting is retried transparently; every call still passes a deadline.
"""

from __future__ import annotations

import json

import grpc

from autopack_common.server import MAX_MESSAGE_BYTES
from autopack_common.settings import service_address
from autopack_common.telemetry import traced_channel

_RETRY_SERVICE_CONFIG = json.dumps(
    {
        # With a headless Service, DNS returns every replica; spread calls over all of them.
        "loadBalancingConfig": [{"round_robin": {}}],
        "methodConfig": [
            {
                "name": [{}],
                "retryPolicy": {
                    "maxAttempts": 4,
                    "initialBackoff": "0.2s",
                    "maxBackoff": "2s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
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
