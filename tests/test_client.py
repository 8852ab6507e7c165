"""The SDK against a real server (EmbeddedServer on a real store): every method, every error."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from gpufleet.server.client import (
    AsyncGpuFleetClient,
    BadRequest,
    ConnectionFailed,
    Forbidden,
    GpuFleetClient,
    NotFound,
    PayloadTooLarge,
    RequestTimeout,
    ServerError,
    Unauthorized,
    encode_samples,
    parse_retry_after,
)
from gpufleet.server.embedded import EmbeddedServer
from gpufleet.server.gpu.base import BackendUnavailable, GpuBackend, GpuSnapshot
from gpufleet.server.gpu.simulated import SimulatedBackend
from gpufleet.server.schemas import Heartbeat
from gpufleet.server.store import MetricsStore
from tests.api_server import KEY_ROLES, api_settings

NOW = datetime.now(UTC).replace(microsecond=0)


@dataclass
class Served:
    url: str
    keys: dict[str, str]
    store: MetricsStore


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    store = MetricsStore.open(tmp_path / "db.duckdb")
    keys = {role: store.create_key(f"{role}-key", scopes, account).key
            for role, (scopes, account) in KEY_ROLES.items()}
    server = EmbeddedServer(api_settings(**{"limits.max_body_bytes": 64 * 1024}),
                            backend=SimulatedBackend(), store=store)
    url = server.start()
    try:
        yield Served(url, keys, store)
    finally:
        server.stop()
        store.close()


def sample(minutes_ago: int, **extra: object) -> dict[str, object]:
    return {"timestamp": NOW - timedelta(minutes=minutes_ago), "gpu_index": 0,
            "gpu_uuid": "GPU-sdk", "power_draw_w": 250.0, "utilization_gpu_pct": 50,
            "utilization_memory_pct": 40, "temperature_c": 60, "memory_used_mb": 2048,
            "team_id": "sdk-team", **extra}


def test_every_method_of_the_sync_client(served: Served) -> None:
    with GpuFleetClient(served.url, api_key=served.keys["operator"]) as client:
        status = client.get_gpu_status()
        assert status.total_gpus == len(status.gpus) > 0
        memory = client.get_gpu_memory()
        assert len(memory.memory) == status.total_gpus
        purge = client.purge_gpu(force=True, gpu_indices=[0])
        assert purge.status in ("success", "partial")
        assert client.ingest_health().status == "ok"
        result = client.ingest([sample(3), sample(2), sample(1)])
        assert (result.inserted, result.duplicates) == (3, 0)
        assert client.ingest(encode_samples([sample(1)])).duplicates == 1
        beat = client.heartbeat(Heartbeat(agent_version="1.0", gpu_count=1, hostname="sdk-host"))
        assert beat.hostname == "sdk-host"
        assert [h.hostname for h in client.hosts().hosts] == ["sdk-host"]
        today = NOW.date()
        report = client.chargeback_report(today - timedelta(days=1), today)
        assert [t.team_id for t in report.teams] == ["sdk-team"]
        text = client.chargeback_csv(today - timedelta(days=1), today)
        assert text.splitlines()[0].startswith("team_id,model_tag,gpu_arch")
        assert "/v1/gpu/status" in client.openapi()["paths"]
        rotated = client.rotate_key()
        assert rotated.info.scopes == ["operator"]
    with GpuFleetClient(served.url, api_key=served.keys["operator"]) as stale, \
            pytest.raises(Unauthorized):
        stale.get_gpu_status()


async def test_async_client_against_the_embedded_server(served: Served) -> None:
    async with AsyncGpuFleetClient(served.url, api_key=served.keys["ingest_read"]) as client:
        result = await client.ingest([sample(5)])
        assert result.inserted == 1
        assert result.message == "Successfully ingested 1 metric"
        with pytest.raises(Forbidden) as caught:
            await client.get_gpu_status()
        assert caught.value.message == "This endpoint requires an operator-scoped key"
        with pytest.raises(BadRequest) as bad:
            await client.chargeback_report(date(2026, 3, 2), date(2026, 3, 1))
        assert bad.value.message == "Query parameter from must not be after to"


def test_bad_batch_is_bad_request_with_the_server_text(served: Served) -> None:
    with GpuFleetClient(served.url, api_key=served.keys["ingest"]) as client, \
            pytest.raises(BadRequest) as caught:
        client.ingest([sample(1, temperature_c=500)])
    assert caught.value.message == "Metric at index 0: temperature_c must be between 0 and 120"


def test_oversize_body_is_payload_too_large(served: Served) -> None:
    with GpuFleetClient(served.url, api_key=served.keys["ingest"]) as client, \
            pytest.raises(PayloadTooLarge):
        client.ingest([sample(1, job_id="x" * 100_000)])


def test_unknown_route_is_not_found(served: Served) -> None:
    with GpuFleetClient(served.url + "/nope", api_key=served.keys["read"]) as client, \
            pytest.raises(NotFound):
        client.hosts()


def test_key_and_url_come_from_the_environment(served: Served,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPUFLEET_URL", served.url)
    monkeypatch.setenv("GPUFLEET_KEY", served.keys["read"])
    with GpuFleetClient() as client:
        assert client.hosts().hosts == []


def test_server_errors_are_server_error(tmp_path: Path) -> None:
    class Broken(GpuBackend):
        def snapshot(self) -> GpuSnapshot:
            raise BackendUnavailable("no driver")

    from gpufleet.server.auth import StaticKeyResolver

    server = EmbeddedServer(api_settings(), backend=Broken(),
                            key_resolver=StaticKeyResolver.operator("tok"))
    url = server.start()
    try:
        with GpuFleetClient(url, api_key="tok") as client, pytest.raises(ServerError) as caught:
            client.get_gpu_status()
        assert caught.value.status == 503
        assert "no driver" in caught.value.message
    finally:
        server.stop()


def test_refused_connection_is_connection_failed() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with GpuFleetClient(f"http://127.0.0.1:{port}", api_key="k") as client, \
            pytest.raises(ConnectionFailed) as caught:
        client.get_gpu_status()
    assert caught.value.status is None


def test_silent_server_is_request_timeout() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        with GpuFleetClient(url, api_key="k", timeout=0.3) as client, \
                pytest.raises(RequestTimeout):
            client.get_gpu_status()


def test_retry_after_forms() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert parse_retry_after("soon") is None


def test_samples_with_datetimes_encode_as_utc_z() -> None:
    body = encode_samples([{"timestamp": datetime(2026, 2, 25, 12, tzinfo=UTC)}])
    assert body == b'[{"timestamp":"2026-02-25T12:00:00Z"}]'
    with pytest.raises(ValueError):
        encode_samples([{"power_draw_w": float("nan")}])


def test_read_key_file_refuses_a_file_others_can_read(tmp_path) -> None:
    from gpufleet.server.client import KeyFileError, read_key_file

    key_file = tmp_path / "key"
    key_file.write_text("gf_secret\n")
    key_file.chmod(0o640)
    with pytest.raises(KeyFileError, match=r"\(mode 0640\); run: chmod 600") as caught:
        read_key_file(key_file)
    assert "gf_secret" not in str(caught.value)
    key_file.chmod(0o600)
    assert read_key_file(key_file) == "gf_secret"
    key_file.write_text("  \n")
    with pytest.raises(KeyFileError, match="is empty"):
        read_key_file(key_file)
    with pytest.raises(KeyFileError, match="cannot read key file"):
        read_key_file(tmp_path / "absent")


def test_report_refuses_a_shared_key_file(tmp_path) -> None:
    import subprocess
    import sys

    key_file = tmp_path / "key"
    key_file.write_text("gf_secret\n")
    key_file.chmod(0o644)
    done = subprocess.run(
        [sys.executable, "-m", "gpufleet.server.cli", "report", "--from", "2026-11-01", "--to", "2026-11-02",
         "--server", "http://127.0.0.1:9", "--key-file", str(key_file)],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 1
    assert "accessible by group or others" in done.stderr
    assert "gf_secret" not in done.stderr
