"""The store on a real DuckDB file: schema, keys, the writer's group commit and dedup, hosts, purges."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gpufleet.server.schemas import Heartbeat, MemorySummary, PurgeResult
from gpufleet.server.store import SCHEMA_VERSION, KeyNameTakenError, MetricsStore, UnknownKeyError
from gpufleet.server.store.keys import hash_secret

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def sample(minute: int, uuid: str = "GPU-a", **extra: object) -> dict[str, object]:
    row: dict[str, object] = {
        "timestamp": T0 + timedelta(minutes=minute), "gpu_index": 0, "gpu_uuid": uuid,
        "power_draw_w": 300, "utilization_gpu_pct": 80, "utilization_memory_pct": 50,
        "temperature_c": 60, "memory_used_mb": 1000, "gpu_name": "NVIDIA A100 80GB",
        "team_id": "ml", "model_tag": "m",
    }
    row.update(extra)
    return row


@pytest.fixture
def store(tmp_path: Path):
    s = MetricsStore.open(tmp_path / "gpufleet.duckdb")
    yield s
    s.close()


def test_schema_is_versioned_and_reopens(tmp_path: Path) -> None:
    path = tmp_path / "s.duckdb"
    MetricsStore.open(path).close()
    with MetricsStore.open(path) as again:
        assert again.query("SELECT max(version) FROM schema_version")[0][0] == SCHEMA_VERSION
        tables = {r[0] for r in again.query("SELECT table_name FROM information_schema.tables")}
    assert {"accounts", "api_keys", "samples", "hosts", "purge_audit", "usage_daily"} <= tables


def test_keys_are_hashed_scoped_and_authenticate(store: MetricsStore) -> None:
    created = store.create_key("ci", ["ingest", "read"], "acme")
    assert created.key.startswith("gf_") and len(created.key) >= 40
    stored = store.query("SELECT secret_sha256, prefix FROM api_keys")
    assert stored == [(hash_secret(created.key), created.key[:8])]
    assert created.key not in repr(store.list_keys())
    info = store.authenticate(created.key)
    assert info is not None and info.scopes == ["ingest", "read"] and info.account == "acme"
    assert store.authenticate(created.key + "x") is None
    assert store.authenticate("") is None
    with pytest.raises(KeyNameTakenError):
        store.create_key("ci", ["read"], "acme")
    with pytest.raises(ValueError, match="unknown scope"):
        store.create_key("x", ["admin"], "acme")


def test_rotate_stops_the_old_secret_and_revoke_stops_the_key(store: MetricsStore) -> None:
    first = store.create_key("agent", ["ingest"], "acme")
    assert store.authenticate(first.key) is not None  # now cached
    rotated = store.rotate_key(first.info.id)
    assert rotated.key != first.key
    assert (rotated.info.name, rotated.info.scopes, rotated.info.account) == ("agent", ["ingest"], "acme")
    assert store.authenticate(first.key) is None
    assert store.authenticate(rotated.key) is not None
    revoked = store.revoke_key("agent", account="acme")
    assert revoked.revoked_at is not None
    assert store.authenticate(rotated.key) is None
    with pytest.raises(UnknownKeyError):
        store.revoke_key("nobody")


def test_last_used_is_remembered_without_a_write_per_request(store: MetricsStore, tmp_path: Path) -> None:
    created = store.create_key("k", ["read"], "acme")
    store.authenticate(created.key)
    assert store.query("SELECT last_used_at FROM api_keys")[0][0] is None  # not written yet
    assert store.list_keys("acme")[0].last_used_at is not None  # but shown
    store.close()
    with MetricsStore.open(tmp_path / "gpufleet.duckdb") as again:
        assert again.query("SELECT last_used_at FROM api_keys")[0][0] is not None


async def test_submit_dedups_within_and_across_batches(store: MetricsStore) -> None:
    now = datetime.now(UTC)
    first = await store.writer.submit("acme", [sample(0), sample(1), sample(1)], now)
    assert (first.inserted, first.duplicates) == (2, 1)
    again = await store.writer.submit("acme", [sample(1), sample(2)], now)
    assert (again.inserted, again.duplicates) == (1, 1)
    other = await store.writer.submit("globex", [sample(1)], now)  # same key, other account
    assert other.inserted == 1
    assert store.sample_count("acme") == 3
    assert store.query("SELECT count(*) FROM samples WHERE received_at IS NULL")[0][0] == 0


async def test_concurrent_submissions_share_one_commit_and_all_count(store: MetricsStore) -> None:
    now = datetime.now(UTC)
    batches = [[sample(m, uuid=f"GPU-{g}") for m in range(50)] for g in range(8)]
    batches.append([sample(m, uuid="GPU-0") for m in range(50)])  # a resend racing the original
    results = await asyncio.gather(*(store.writer.submit("acme", b, now) for b in batches))
    assert sum(r.inserted for r in results) == 400
    assert sum(r.duplicates for r in results) == 50
    assert all(r.inserted + r.duplicates == 50 for r in results)
    assert store.sample_count() == 400


async def test_a_failing_group_rolls_back_entirely(store: MetricsStore) -> None:
    now = datetime.now(UTC)
    good = [sample(m) for m in range(5)]
    bad = [sample(10, gpu_index="not a number")]
    results = await asyncio.gather(
        store.writer.submit("acme", good, now), store.writer.submit("acme", bad, now),
        return_exceptions=True,
    )
    if isinstance(results[0], BaseException):  # committed together: both failed, nothing stored
        assert isinstance(results[1], BaseException)
        assert store.sample_count() == 0
    else:  # the good batch committed alone before the bad one was queued
        assert results[0].inserted == 5 and isinstance(results[1], BaseException)
        assert store.sample_count() == 5
    later = await store.writer.submit("acme", [sample(20)], now)
    assert later.inserted == 1  # the writer still works


async def test_close_flushes_queued_batches(tmp_path: Path) -> None:
    path = tmp_path / "c.duckdb"
    store = MetricsStore.open(path)
    pending = [asyncio.create_task(store.writer.submit("acme", [sample(m, uuid=f"G{i}")], datetime.now(UTC)))
               for i in range(20) for m in range(3)]
    await asyncio.sleep(0)  # let every task queue its batch
    await asyncio.to_thread(store.close)
    assert all(r.inserted == 1 for r in await asyncio.gather(*pending))
    with MetricsStore.open(path) as again:
        assert again.sample_count() == 60


async def test_hosts_status_and_last_sample(store: MetricsStore) -> None:
    now = T0 + timedelta(hours=1)
    store.record_heartbeat("acme", Heartbeat(agent_version="0.2.0", gpu_count=4, hostname="alive-1"), now)
    store.record_heartbeat("acme", Heartbeat(agent_version="0.2.0", gpu_count=4, hostname="stale-1"),
                           now - timedelta(seconds=700))
    store.record_heartbeat("acme", Heartbeat(agent_version="0.1.0", gpu_count=2, hostname="gone-1"),
                           now - timedelta(seconds=3100))
    store.record_heartbeat("globex", Heartbeat(agent_version="9", gpu_count=1, hostname="theirs"), now)
    await store.writer.submit("acme", [sample(5, hostname="alive-1")], now - timedelta(seconds=30))
    hosts = {h.hostname: h for h in store.list_hosts("acme", now, 300)}
    assert {n: h.status for n, h in hosts.items()} == {"alive-1": "alive", "stale-1": "stale", "gone-1": "offline"}
    assert hosts["alive-1"].last_sample_at == now - timedelta(seconds=30)
    assert hosts["stale-1"].last_sample_at is None


def test_purge_audit_is_per_account(store: MetricsStore) -> None:
    mem = MemorySummary(used_gb=10, total_gb=80, percent_used=12.5)
    result = PurgeResult(timestamp=T0, actions=["unloaded m"], memory_before=mem, memory_after=mem,
                         memory_freed_gb=0, models_unloaded=["m"], errors=[], recommendation="ok")
    store.record_purge("acme", "ops", True, result)
    store.record_purge("globex", "x", False, result)
    audit = store.list_purges("acme")
    assert len(audit) == 1 and audit[0]["key_name"] == "ops" and audit[0]["force"] is True
    assert audit[0]["result"]["models_unloaded"] == ["m"]
