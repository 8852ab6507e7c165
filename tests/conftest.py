"""Shared fixtures: the fake NVML module, a fixed clock and a loopback URL nobody answers."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from types import ModuleType

import pytest

from tests.fakes import pynvml as _fake_pynvml


@pytest.fixture
def fake_nvml() -> Iterator[ModuleType]:
    """The fake ``pynvml`` module, empty and uninitialised; configure(...) it in the test."""
    _fake_pynvml.reset()
    yield _fake_pynvml
    _fake_pynvml.reset()


class FixedClock:
    """A settable clock for backends that take ``clock=``: call it for now, advance() to move."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        from datetime import timedelta

        self.now += timedelta(**delta)


@pytest.fixture
def fixed_clock() -> FixedClock:
    """Tuesday 2026-03-03 14:00 UTC: business hours, a busy afternoon in the simulated fleet."""
    return FixedClock(datetime(2026, 3, 3, 14, 0, tzinfo=UTC))


@pytest.fixture
def refused_url() -> Iterator[str]:
    """A loopback URL nobody listens on: the port is bound (so nothing else takes it) but not listening."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()
