"""The sampler on the fake NVML: documented fields, energy from the counter, and its failure modes."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from types import ModuleType

import pytest

from gpufleet.server.agent.energy import EnergyMeter
from gpufleet.server.agent.sampler import Sampler
from gpufleet.server.gpu.nvml import NvmlBackend
from gpufleet.server.schemas import REQUIRED_SAMPLE_FIELDS, MetricSample

T0 = datetime(2026, 3, 3, 14, 0, tzinfo=UTC)


class Monotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def gpus(fake: ModuleType, count: int = 8) -> list:
    return [
        fake.FakeGpu(uuid=f"GPU-{i:08d}-0000-0000-0000-000000000000", power_mw=300_000,
                     util_gpu=80, util_memory=40, temperature_c=60, used_mib=40_000)
        for i in range(count)
    ]


def take(sampler: Sampler, backend: NvmlBackend, clock: Monotonic, at: datetime) -> list[dict]:
    snapshot = dataclasses.replace(backend.snapshot(), taken_at=at)
    return sampler.samples_from(snapshot, at=clock())


@pytest.fixture
def node(fake_nvml: ModuleType):
    devices = gpus(fake_nvml)
    fake_nvml.configure(devices)
    backend = NvmlBackend(fake_nvml)
    clock = Monotonic()
    yield devices, backend, Sampler(backend, clock=clock), clock
    backend.close()


def test_every_gpu_yields_a_valid_sample_with_energy_from_the_counter(node) -> None:
    devices, backend, sampler, clock = node
    first = take(sampler, backend, clock, T0)
    assert len(first) == 8
    for sample in first:
        MetricSample.model_validate(sample)
        assert set(REQUIRED_SAMPLE_FIELDS) <= sample.keys()
        assert sample["timestamp"] == "2026-03-03T14:00:00Z"
        assert {"gpu_name", "power_limit_w", "fan_speed_pct", "memory_total_mb",
                "sm_clock_mhz", "memory_clock_mhz"} <= sample.keys()
        assert "energy_delta_j" not in sample  # nothing to difference yet
    for gpu in devices:
        gpu.energy_mj += 18_000_000  # 18 kJ in 60 s: 300 W
    clock.now += 60
    second = take(sampler, backend, clock, T0 + timedelta(seconds=60))
    assert [s["energy_delta_j"] for s in second] == [18_000.0] * 8


def test_a_counter_reset_falls_back_to_power_times_time(node) -> None:
    devices, backend, sampler, clock = node
    take(sampler, backend, clock, T0)
    devices[0].energy_mj = 5  # driver reloaded: the counter starts again
    devices[1].energy_mj += 10**12  # a jump no GPU can consume in a minute
    for gpu in devices[2:]:
        gpu.energy_mj += 18_000_000
    clock.now += 60
    samples = {s["gpu_index"]: s for s in take(sampler, backend, clock, T0 + timedelta(seconds=60))}
    assert samples[0]["energy_delta_j"] == pytest.approx(300 * 60)
    assert samples[1]["energy_delta_j"] == pytest.approx(300 * 60)
    assert samples[2]["energy_delta_j"] == 18_000.0


def test_an_unsupported_counter_uses_power_and_unsupported_fields_are_left_out(node) -> None:
    devices, backend, sampler, clock = node
    devices[3].not_supported |= {"nvmlDeviceGetTotalEnergyConsumption", "nvmlDeviceGetFanSpeed"}
    take(sampler, backend, clock, T0)
    devices[3].power_mw = 100_000  # the mean of the two ends counts: (300 + 100) / 2 W
    clock.now += 10
    sample = next(s for s in take(sampler, backend, clock, T0 + timedelta(seconds=10)) if s["gpu_index"] == 3)
    assert sample["energy_delta_j"] == pytest.approx(200 * 10)
    assert "fan_speed_pct" not in sample


def test_a_gpu_without_a_required_reading_or_lost_sends_nothing(node, caplog) -> None:
    devices, backend, sampler, clock = node
    devices[1].not_supported.add("nvmlDeviceGetTemperature")
    devices[2].lost = True
    devices[4].fan_pct = 250  # a glitch outside the documented range: left out, not sent
    samples = take(sampler, backend, clock, T0)
    assert sorted(s["gpu_index"] for s in samples) == [0, 3, 4, 5, 6, 7]
    assert "fan_speed_pct" not in next(s for s in samples if s["gpu_index"] == 4)
    assert "GPU 1: temperature_c unsupported or out of range" in caplog.text


def test_a_second_reading_within_the_same_second_is_skipped(node) -> None:
    _, backend, sampler, clock = node
    assert len(take(sampler, backend, clock, T0)) == 8
    clock.now += 0.4
    assert take(sampler, backend, clock, T0 + timedelta(milliseconds=400)) == []


def test_the_energy_meter_never_goes_negative_or_absurd() -> None:
    meter = EnergyMeter()
    meter.delta("g", energy_j=1_000.0, power_w=None, power_limit_w=None, at=0.0)
    # No power reading and a counter gone backwards: nothing sane to say.
    assert meter.delta("g", energy_j=10.0, power_w=None, power_limit_w=None, at=1.0) is None
    # No power reading at all: the documented 1500 W ceiling bounds the counter.
    assert meter.delta("g", energy_j=10.0 + 5_000.0, power_w=None, power_limit_w=None, at=2.0) is None
    assert meter.delta("g", energy_j=5_010.0 + 1_000.0, power_w=None, power_limit_w=None, at=3.0) == 1_000.0
