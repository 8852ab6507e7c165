"""``gpufleet keys`` while ``gpufleet serve`` holds the store: the owner-only admin socket."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from gpufleet.server.admin import AdminChannel, AdminChannelError, admin_dir, peer_uid
from gpufleet.server.admin_client import AdminKeys, AdminUnavailableError
from gpufleet.server.config import Limits
from gpufleet.server.store import KeyNameTakenError, MetricsStore, UnknownKeyError
from tests.serve_process import start_serve


def keys(db: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gpufleet.server.cli", "keys", "--db", str(db), *argv],
                          capture_output=True, text=True, timeout=60)


def gpu_status(url: str, secret: str) -> int:
    return httpx.get(f"{url}/v1/gpu/status", headers={"Authorization": f"Bearer {secret}"},
                     timeout=30).status_code


def test_keys_work_against_a_running_server(tmp_path: Path) -> None:
    db = tmp_path / "live.duckdb"
    server = start_serve(db, "--no-sampler")
    sock = admin_dir(db) / "sock"
    try:
        assert stat.S_IMODE(os.stat(admin_dir(db)).st_mode) == 0o700
        assert stat.S_ISSOCK(os.lstat(sock).st_mode) and stat.S_IMODE(os.lstat(sock).st_mode) == 0o600

        created = keys(db, "create", "--name", "ops", "--scope", "operator,read")
        assert created.returncode == 0, created.stderr
        secret = created.stdout.strip()
        assert secret.startswith("gf_") and "will not be shown again" in created.stderr
        assert "'ops' (account default, scopes operator,read)" in created.stderr
        assert gpu_status(server.url, secret) == 200  # usable at once, same server

        listing = keys(db, "list")
        assert listing.returncode == 0 and "ops" in listing.stdout and "active" in listing.stdout
        assert secret not in listing.stdout + listing.stderr and secret[:8] + "…" in listing.stdout

        rotated = keys(db, "rotate", "ops")
        assert rotated.returncode == 0, rotated.stderr
        new_secret = rotated.stdout.strip()
        assert new_secret.startswith("gf_") and new_secret != secret
        assert "will not be shown again" in rotated.stderr
        assert gpu_status(server.url, secret) == 401  # the old secret stops now, not after a cache TTL
        assert gpu_status(server.url, new_secret) == 200

        revoked = keys(db, "revoke", "ops")
        assert revoked.returncode == 0 and revoked.stdout.startswith("revoked key_")
        assert gpu_status(server.url, new_secret) == 401

        missing = keys(db, "revoke", "nobody")
        assert missing.returncode == 1 and missing.stderr == "gpufleet keys: no key 'nobody'\n"
        bad_scope = keys(db, "create", "--name", "x", "--scope", "admin")
        assert bad_scope.returncode == 1 and "unknown scope" in bad_scope.stderr

        # The admin routes exist only on the socket: over TCP they are unknown, key or not.
        for path in ("/admin/v1/info", "/admin/v1/keys"):
            assert httpx.get(server.url + path, timeout=30).status_code == 404
        assert httpx.post(server.url + "/admin/v1/keys", json={"name": "t", "scopes": ["read"],
                                                               "account": "default"},
                          timeout=30).status_code == 404
    finally:
        server.proc.send_signal(signal.SIGTERM)
    assert server.wait_exit() == 0
    assert not sock.exists() and not admin_dir(db).exists()
    with MetricsStore.open(db) as store:  # everything the server did is in the store
        states = [(k.name, k.revoked_at is not None) for k in store.list_keys()]
    assert states == [("ops", True)]  # a rotation keeps the key: one key, revoked at the end


def test_a_killed_servers_socket_is_replaced_at_the_next_start(tmp_path: Path) -> None:
    db = tmp_path / "crash.duckdb"
    server = start_serve(db, "--no-sampler")
    server.proc.kill()
    server.wait_exit()
    assert (admin_dir(db) / "sock").exists()  # left behind: SIGKILL runs no cleanup
    server = start_serve(db, "--no-sampler")
    try:
        listing = keys(db, "list")
        assert listing.returncode == 0 and listing.stdout == "no keys\n"
    finally:
        server.proc.send_signal(signal.SIGTERM)
    assert server.wait_exit() == 0


async def test_channel_in_process_maps_store_errors(tmp_path: Path) -> None:
    # A deep folder: the socket path is past sun_path's 107 bytes; the folder's fd reaches it.
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    db = deep / "s.duckdb"
    with MetricsStore.open(db) as store:
        channel = AdminChannel(store, db, Limits())
        await channel.start()
        try:
            def use() -> None:
                with AdminKeys(db, os.getpid()) as client:
                    created = client.create_key("ci", ["ingest"], "acme")
                    assert store.authenticate(created.key) is not None
                    with pytest.raises(KeyNameTakenError, match="already has an active key"):
                        client.create_key("ci", ["read"], "acme")
                    with pytest.raises(ValueError, match="unknown scope"):
                        client.create_key("y", ["root"], "acme")
                    with pytest.raises(UnknownKeyError, match="no key 'zz'"):
                        client.rotate_key("zz")
                    assert [k.name for k in client.list_keys("acme")] == ["ci"]
                    assert client.list_keys("other") == []
                with pytest.raises(AdminUnavailableError, match="not by pid 1 "):
                    AdminKeys(db, 1)

            await asyncio.to_thread(use)
        finally:
            await channel.stop()
        assert not admin_dir(db).exists()


async def test_an_unsafe_folder_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "open.duckdb"
    admin_dir(db).mkdir(mode=0o755)
    os.chmod(admin_dir(db), 0o755)  # the umask may have narrowed mkdir's mode
    with MetricsStore.open(db) as store, pytest.raises(AdminChannelError, match="group or others"):
        await AdminChannel(store, db, Limits()).start()
    assert list(admin_dir(db).iterdir()) == []
    with pytest.raises(AdminUnavailableError, match="not safe"):
        AdminKeys(db)


async def test_a_symlinked_folder_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "link.duckdb"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    admin_dir(db).symlink_to(elsewhere)
    with MetricsStore.open(db) as store, pytest.raises(AdminChannelError, match="symbolic link"):
        await AdminChannel(store, db, Limits()).start()
    assert list(elsewhere.iterdir()) == []
    with pytest.raises(AdminUnavailableError, match="symbolic link"):
        AdminKeys(db)


def test_peer_credentials_are_read() -> None:
    left, right = socket.socketpair(socket.AF_UNIX)
    with left, right:
        assert peer_uid(left) == os.getuid()


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to connect as another user")
async def test_another_user_is_refused_even_with_open_permissions(tmp_path: Path) -> None:
    db = tmp_path / "peer.duckdb"
    with MetricsStore.open(db) as store:
        channel = AdminChannel(store, db, Limits())
        await channel.start()
        try:
            # Weaken the file modes on purpose: only the SO_PEERCRED check is left to refuse.
            os.chmod(admin_dir(db), 0o755)
            os.chmod(channel.socket_path, 0o666)
            # The parent folders may be closed to that user: reach the socket through an fd.
            dir_fd = os.open(admin_dir(db), os.O_PATH | os.O_DIRECTORY)
            probe = ("import os, socket, sys; os.setgid(65534); os.setuid(65534)\n"
                     "s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n"
                     "try:\n"
                     "    s.sendall(b'GET /admin/v1/keys HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n')\n"
                     "    print(repr(s.recv(65536)))\n"
                     "except (BrokenPipeError, ConnectionResetError):\n"
                     "    print('reset')")
            try:
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-I", "-S", "-c", probe, f"/proc/self/fd/{dir_fd}/sock",
                    pass_fds=(dir_fd,), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
                out, err = await asyncio.wait_for(proc.communicate(), 60)
            finally:
                os.close(dir_fd)
            assert proc.returncode == 0, err
            assert out.decode().strip() in ("b''", "reset")  # closed without a byte of answer
        finally:
            await channel.stop()


async def test_responses_carrying_a_new_secret_are_never_cached(tmp_path: Path) -> None:
    db = tmp_path / "s.duckdb"
    with MetricsStore.open(db) as store:
        channel = AdminChannel(store, db, Limits())
        await channel.start()
        try:
            transport = httpx.AsyncHTTPTransport(uds=str(channel.socket_path))
            async with httpx.AsyncClient(transport=transport, base_url="http://admin") as http:
                created = await http.post("/admin/v1/keys", json={
                    "name": "ci", "scopes": ["ingest"], "account": "acme"})
                assert created.status_code == 201 and created.json()["key"]
                rotated = await http.post("/admin/v1/keys/rotate",
                                          json={"key": "ci", "account": "acme"})
                assert rotated.status_code == 200 and rotated.json()["key"] != created.json()["key"]
                listed = await http.get("/admin/v1/keys", params={"account": "acme"})
            for response in (created, rotated):
                assert response.headers["cache-control"] == "no-store"
                assert response.headers["pragma"] == "no-cache"
            assert "cache-control" not in listed.headers  # no secret there
        finally:
            await channel.stop()
