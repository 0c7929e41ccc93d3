"""Waiting for a service to be SERVING: what ``autopack up`` and the process tests rely on."""

from __future__ import annotations

import socket
import time

import pytest
from autopack_common.clients import NotServing, is_serving, wait_until_serving
from autopack_common.server import create_server


def _unused_address() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


def test_a_running_server_is_serving_and_an_unknown_service_is_not() -> None:
    running = create_server([])
    try:
        assert is_serving(running.address)
        wait_until_serving(running.address, timeout=5)
        assert not is_serving(running.address, "autopack.nothing.v1.Missing")
    finally:
        running.stop(0)
    assert not is_serving(running.address, timeout=0.5)


def test_a_process_that_ended_is_reported_at_once() -> None:
    started = time.monotonic()
    with pytest.raises(NotServing, match="ended before it was SERVING"):
        wait_until_serving(_unused_address(), "svc", timeout=30, alive=lambda: False)
    assert time.monotonic() - started < 5


def test_the_deadline_is_kept_and_waiting_is_reported() -> None:
    waits: list[float] = []
    with pytest.raises(NotServing, match="not SERVING after 1s"):
        wait_until_serving(_unused_address(), timeout=1, on_wait=lambda: waits.append(time.monotonic()))
    assert waits
