"""Stubs for the four services the orchestrator calls, opened on first use.

Channels are created lazily so the orchestrator starts (and answers CreateRun,
GetRun, ...) even when its dependencies are not up yet, and so tests can point
each client at an in-process server through ``addresses``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import grpc
from autopack.applier.v1 import applier_pb2_grpc
from autopack.builder.v1 import builder_pb2_grpc
from autopack.estimator.v1 import estimator_pb2_grpc
from autopack.memory.v1 import memory_pb2_grpc
from autopack_common.clients import open_channel

StubT = TypeVar("StubT")


class ServiceClients:
    """One channel per dependency; addresses default to ``AUTOPACK_<SVC>_ADDR``."""

    def __init__(self, addresses: Mapping[str, str] | None = None) -> None:
        self._addresses = dict(addresses or {})
        self._channels: dict[str, grpc.Channel] = {}
        self._stubs: dict[str, Any] = {}
        self._lock = threading.Lock()

    def _stub(self, service: str, factory: Callable[[grpc.Channel], StubT]) -> StubT:
        with self._lock:
            if service not in self._stubs:
                channel = open_channel(service, self._addresses.get(service))
                self._channels[service] = channel
                self._stubs[service] = factory(channel)
            return self._stubs[service]  # type: ignore[no-any-return]

    @property
    def estimator(self) -> estimator_pb2_grpc.EstimatorServiceStub:
        return self._stub("estimator", estimator_pb2_grpc.EstimatorServiceStub)

    @property
    def builder(self) -> builder_pb2_grpc.BuilderServiceStub:
        return self._stub("builder", builder_pb2_grpc.BuilderServiceStub)

    @property
    def applier(self) -> applier_pb2_grpc.ApplierServiceStub:
        return self._stub("applier", applier_pb2_grpc.ApplierServiceStub)

    @property
    def memory(self) -> memory_pb2_grpc.MemoryServiceStub:
        return self._stub("memory", memory_pb2_grpc.MemoryServiceStub)

    def close(self) -> None:
        with self._lock:
            for channel in self._channels.values():
                channel.close()
            self._channels.clear()
            self._stubs.clear()
