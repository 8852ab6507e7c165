"""Shared fixtures: the fake NVML module and a fixed clock."""

from __future__ import annotations

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
