"""The signal audit table: rows per account, pending then completed, long text cut."""

from __future__ import annotations

from datetime import UTC, datetime

from gpufleet.server.store import SCHEMA_VERSION, MetricsStore
from gpufleet.server.store.signal_audit import DETAIL_MAX_CHARS, TEXT_MAX_CHARS, SignalAttempt

AT = datetime(2026, 3, 3, 14, 0, tzinfo=UTC)


def test_pending_rows_are_completed_and_accounts_see_only_their_own(tmp_path):
    store = MetricsStore.open(tmp_path / "db.duckdb")
    try:
        attempt = SignalAttempt("acme", "ops", AT, 4242, "TERM", "python", "alice",
                                "python train.py", (0, 3), 40960)
        row_id = store.record_signal(attempt, "pending", "about to send the signal")
        store.record_signal(SignalAttempt("globex", None, AT, 7, "KILL"), "not_found", "no")
        assert store.list_signals("acme")[0]["outcome"] == "pending"
        store.finish_signal(row_id, "sent", "sent SIGTERM to python[4242]")
        (row,) = store.list_signals("acme")
        assert row == {"id": row_id, "key_name": "ops", "at": AT, "pid": 4242, "signal": "TERM",
                       "process_name": "python", "process_user": "alice",
                       "command": "python train.py", "gpu_indices": [0, 3], "memory_mb": 40960,
                       "outcome": "sent", "detail": "sent SIGTERM to python[4242]"}
        (other,) = store.list_signals("globex")
        assert (other["pid"], other["gpu_indices"], other["process_name"]) == (7, [], None)
    finally:
        store.close()


def test_runaway_text_is_cut_and_the_rows_survive_a_reopen(tmp_path):
    path = tmp_path / "db.duckdb"
    store = MetricsStore.open(path)
    store.record_signal(SignalAttempt("acme", "ops", AT, 1, "INT", command="x" * 100_000),
                        "refused", "y" * 100_000)
    store.close()
    again = MetricsStore.open(path)
    try:
        (row,) = again.list_signals("acme")
        assert len(row["command"]) == TEXT_MAX_CHARS and len(row["detail"]) == DETAIL_MAX_CHARS
        version = again._root.execute("SELECT max(version) FROM schema_version").fetchone()[0]
        assert version == SCHEMA_VERSION
    finally:
        again.close()
