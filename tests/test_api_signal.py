"""POST /v1/gpu/processes/{pid}/signal over HTTP: real processes, the SDK, refusals, the audit."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import timedelta

import psutil
import pytest

from gpufleet.server.client import (
    AsyncGpuFleetClient,
    BadRequest,
    Forbidden,
    GpuFleetClient,
    NotFound,
)
from gpufleet.server.gpu.nvml import NvmlBackend
from gpufleet.server.gpu.nvml_watch import NvmlWatcher
from gpufleet.server.gpu.processes import ProcessInspector
from gpufleet.server.gpu.signals import ProcessGone, SignalRefused, send_os_signal
from gpufleet.server.gpu.simulated import SimulatedBackend
from gpufleet.server.schemas import GpuProcess, GpuStatusResponse, SignalResult
from tests.api_server import running_app, store_app
from tests.fakes.pynvml import FakeGpu, FakeProcess

WAIT_S = 10.0


@pytest.fixture
def target() -> Iterator[Callable[..., subprocess.Popen]]:
    """Real processes to signal; whatever is left is killed and reaped."""
    children: list[subprocess.Popen] = []

    def start(code: str = "import sys; print(flush=True); sys.stdin.read()") -> subprocess.Popen:
        child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE)
        child.stdout.readline()  # up, and its signal handlers (if any) installed
        children.append(child)
        return child

    yield start
    for child in children:
        if child.poll() is None:
            child.kill()
        child.wait()


@pytest.fixture
def nvml_node(fake_nvml) -> Iterator[Callable[[list[FakeProcess]], NvmlBackend]]:
    """An NVML node (fake driver, real /proc) whose GPU 0 runs the given processes."""
    backends: list[NvmlBackend] = []

    def open_(procs: list[FakeProcess]) -> NvmlBackend:
        fake_nvml.configure([FakeGpu(uuid="GPU-0", compute_processes=procs), FakeGpu(uuid="GPU-1")])
        backend = NvmlBackend(fake_nvml, watcher=lambda n, h: NvmlWatcher(n, h, event_wait_ms=20))
        backends.append(backend)
        return backend

    yield open_
    for backend in backends:
        backend.close()


async def _exit_code(child: subprocess.Popen) -> int:
    return await asyncio.wait_for(asyncio.to_thread(child.wait), WAIT_S)


async def test_term_ends_a_real_gpu_process_and_is_audited(tmp_path, target, nvml_node, fake_nvml):
    child = target()
    backend = nvml_node([FakeProcess(child.pid, 4096)])
    fake_nvml.set_processes(1, [FakeProcess(child.pid, 1024)])  # on both GPUs
    async with store_app(tmp_path / "db.duckdb", backend=backend) as srv:
        async with AsyncGpuFleetClient(srv.url, api_key=srv.keys["operator"]) as client:
            result = await client.signal_process(child.pid, "TERM")
        assert await _exit_code(child) == -signal.SIGTERM
        assert (result.pid, result.signal, result.gpu_indices, result.memory_mb) == (
            child.pid, "TERM", [0, 1], 5120)
        assert result.user == psutil.Process().username() and "sys.stdin.read()" in result.command
        assert result.message == f"sent SIGTERM to {result.name}[{child.pid}] of user {result.user}"
        (row,) = srv.app.store.list_signals("default")
        assert (row["key_name"], row["pid"], row["signal"], row["outcome"]) == (
            "operator-key", child.pid, "TERM", "sent")
        assert (row["gpu_indices"], row["memory_mb"], row["process_user"]) == ([0, 1], 5120,
                                                                              result.user)
        assert abs(row["at"] - result.timestamp) < timedelta(seconds=1)


async def test_int_and_kill_through_the_sync_sdk(tmp_path, target, nvml_node):
    polite = target("import signal, sys; signal.signal(signal.SIGINT, lambda *a: sys.exit(7)); "
                    "print(flush=True); sys.stdin.read()")
    stubborn = target("import signal, sys; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                      "print(flush=True); sys.stdin.read()")
    backend = nvml_node([FakeProcess(polite.pid, 100), FakeProcess(stubborn.pid, 200)])
    async with store_app(tmp_path / "db.duckdb", backend=backend) as srv:
        def use_sdk() -> list[SignalResult]:
            with GpuFleetClient(srv.url, api_key=srv.keys["operator"]) as client:
                return [client.signal_process(polite.pid, "INT"),
                        client.signal_process(stubborn.pid, "KILL")]

        results = await asyncio.to_thread(use_sdk)
        assert [r.signal for r in results] == ["INT", "KILL"]
        assert await _exit_code(polite) == 7
        assert await _exit_code(stubborn) == -signal.SIGKILL
        assert [r["outcome"] for r in srv.app.store.list_signals("default")] == ["sent", "sent"]


async def test_a_pid_that_is_not_a_gpu_process_is_404_and_audited(tmp_path, target, nvml_node):
    bystander = target()
    backend = nvml_node([])
    async with store_app(tmp_path / "db.duckdb", backend=backend) as srv:
        async with AsyncGpuFleetClient(srv.url, api_key=srv.keys["operator"]) as client:
            with pytest.raises(NotFound, match=f"PID {bystander.pid} is not a GPU process"):
                await client.signal_process(bystander.pid, "KILL")
        assert bystander.poll() is None  # a real process, but not the GPU's: left alone
        (row,) = srv.app.store.list_signals("default")
        assert (row["outcome"], row["process_name"], row["gpu_indices"]) == ("not_found", None, [])


async def test_what_the_server_may_not_signal_is_403_with_the_reason(tmp_path, nvml_node):
    backend = nvml_node([FakeProcess(1, 64), FakeProcess(os.getpid(), 64),
                         FakeProcess(99_999_999, 512)])
    async with store_app(tmp_path / "db.duckdb", backend=backend) as srv:
        answers = {}
        for pid in (1, os.getpid(), 99_999_999):
            response = await srv.http.post(f"/v1/gpu/processes/{pid}/signal",
                                           json={"signal": "KILL"}, headers=srv.auth("operator"))
            answers[pid] = (response.status_code, response.json()["error"])
        assert answers[1] == (403, "Not signalled: PID 1 is the system's init process")
        assert answers[os.getpid()] == (403, f"Not signalled: PID {os.getpid()} is this gpufleet "
                                             "server")
        status, text = answers[99_999_999]
        assert status == 403 and "another PID namespace" in text
        outcomes = [(r["pid"], r["outcome"]) for r in srv.app.store.list_signals("default")]
        assert sorted(outcomes) == sorted([(1, "refused"), (os.getpid(), "refused"),
                                           (99_999_999, "refused")])


@pytest.mark.skipif(os.geteuid() == 0, reason="root may signal every process")
def test_the_operating_systems_refusal_is_a_refusal_with_the_reason():
    root_owned = next((p for p in psutil.process_iter(["uids"])
                       if p.pid > 1 and p.info["uids"] and p.info["uids"].real == 0), None)
    if root_owned is None:
        pytest.skip("no process of another user to try")
    entry = GpuProcess(pid=root_owned.pid, name=root_owned.name(), user="root",
                       started_at=None)
    with pytest.raises(SignalRefused, match="run the server as that user or root"):
        send_os_signal(entry, "TERM")


def test_a_reused_pid_is_never_signalled(target):
    child = target()
    seen = ProcessInspector().describe([child.pid])[child.pid]
    entry = GpuProcess(pid=child.pid, name=seen.name, started_at=seen.started_at)
    earlier = replace_started(entry, seconds=-30)  # the listed process started 30 s before this one
    with pytest.raises(ProcessGone, match="now names another process"):
        send_os_signal(earlier, "KILL")
    assert child.poll() is None
    send_os_signal(entry, "KILL")
    assert child.wait() == -signal.SIGKILL


def replace_started(entry: GpuProcess, *, seconds: float) -> GpuProcess:
    return entry.model_copy(update={"started_at": entry.started_at + timedelta(seconds=seconds)})


async def test_nothing_is_sent_when_the_audit_cannot_be_written(tmp_path, target, nvml_node):
    child = target()
    backend = nvml_node([FakeProcess(child.pid, 100)])
    async with store_app(tmp_path / "db.duckdb", backend=backend) as srv:
        srv.app.store.writer.close()  # the store stops taking writes (a dying disk, say)
        response = await srv.http.post(f"/v1/gpu/processes/{child.pid}/signal",
                                       json={"signal": "KILL"}, headers=srv.auth("operator"))
        assert response.status_code == 503
        assert response.json()["error"].endswith("nothing was sent")
        assert child.poll() is None
        ok = await srv.http.get("/v1/gpu/status", headers=srv.auth("operator"))
        assert ok.status_code == 200  # and the server keeps serving


async def test_a_full_disk_is_507_and_nothing_is_sent(tmp_path, target, nvml_node, monkeypatch):
    import duckdb

    from gpufleet.server.store import signal_audit

    def no_space(*args):
        raise duckdb.IOException('IO Error: Could not write file "gpufleet.duckdb.wal": '
                                 "No space left on device")

    child = target()
    backend = nvml_node([FakeProcess(child.pid, 100)])
    async with store_app(tmp_path / "db.duckdb", backend=backend) as srv:
        monkeypatch.setattr(signal_audit, "write_signal", no_space)
        response = await srv.http.post(f"/v1/gpu/processes/{child.pid}/signal",
                                       json={"signal": "KILL"}, headers=srv.auth("operator"))
        assert response.status_code == 507 and response.headers["retry-after"] == "30"
        assert "nothing was sent" in response.json()["error"]
        assert child.poll() is None
        monkeypatch.undo()  # space is back: the same request goes through
        again = await srv.http.post(f"/v1/gpu/processes/{child.pid}/signal",
                                    json={"signal": "KILL"}, headers=srv.auth("operator"))
        assert again.status_code == 200, again.text
        assert await _exit_code(child) == -signal.SIGKILL


@pytest.mark.parametrize("pid", ["abc", "0", "-5", "1e3", "2147483648", "99999999999999999999",
                                 "%C2%B2", "+7", " 7"])
async def test_a_pid_that_cannot_be_a_process_is_400(pid):
    async with running_app() as srv:
        response = await srv.http.post(f"/v1/gpu/processes/{pid}/signal", json={"signal": "TERM"},
                                       headers=srv.auth("operator"))
        assert response.status_code == 400, response.text
        assert response.json()["error"].startswith("pid must be a process ID")


@pytest.mark.parametrize(("body", "status"), [
    (b'{"signal": "HUP"}', 400), (b'{"signal": "SIGTERM"}', 400), (b"{}", 400),
    (b'{"signal": 9}', 400), (b"[]", 400), (b'{"signal": "TERM"', 400), (b"", 400),
    (b'{"signal": "\\ud800"}', 400),
])
async def test_a_body_that_is_not_one_of_the_three_signals_is_400(body, status):
    async with running_app() as srv:
        pid = srv.app.backend.snapshot().processes[0].pid
        response = await srv.http.post(f"/v1/gpu/processes/{pid}/signal", content=body,
                                       headers={**srv.auth("operator"),
                                                "Content-Type": "application/json"})
        assert response.status_code == status, response.text
        assert "error" in response.json()
        assert srv.app.backend.snapshot().processes[0].pid == pid  # untouched


async def test_operator_scope_only(tmp_path):
    async with store_app(tmp_path / "db.duckdb") as srv:
        pid = srv.app.backend.snapshot().processes[0].pid
        path = f"/v1/gpu/processes/{pid}/signal"
        nobody = await srv.http.post(path, json={"signal": "TERM"})
        reader = await srv.http.post(path, json={"signal": "TERM"}, headers=srv.auth("read"))
        assert nobody.status_code == 401 and reader.status_code == 403
        assert reader.json()["error"] == "This endpoint requires an operator-scoped key"
        assert srv.app.store.list_signals("default") == []  # not decided: nothing to audit
        with pytest.raises(Forbidden):
            async with AsyncGpuFleetClient(srv.url, api_key=srv.keys["ingest"]) as client:
                await client.signal_process(pid)


async def test_on_the_simulated_node_a_signal_ends_the_job_and_frees_its_memory():
    backend = SimulatedBackend()
    async with running_app(backend=backend) as srv:
        async with AsyncGpuFleetClient(srv.url, api_key=srv.keys["operator"]) as client:
            before = await client.get_gpu_status()
            ollama = next(p for p in before.processes if p.visible)
            result = await client.signal_process(ollama.pid, "TERM")
            after = await client.get_gpu_status()
            foreign = next(p for p in after.processes if not p.visible)
            with pytest.raises(Forbidden, match="not visible to this server"):
                await client.signal_process(foreign.pid, "KILL")
            with pytest.raises(NotFound):
                await client.signal_process(ollama.pid, "TERM")  # already gone
            with pytest.raises(ValueError):
                await client.signal_process(-1)
        assert result.node.simulated and result.gpu_indices == [ollama.gpu_index]
        assert ollama.pid not in {p.pid for p in after.processes}
        freed = after.gpus[ollama.gpu_index].memory.used_mb
        assert freed < before.gpus[ollama.gpu_index].memory.used_mb - ollama.memory_mb + 1024


async def test_memory_route_lists_processes_like_status():
    async with running_app() as srv:
        memory = (await srv.http.get("/v1/gpu/memory", headers=srv.auth("operator"))).json()
        status = GpuStatusResponse.model_validate(
            (await srv.http.get("/v1/gpu/status", headers=srv.auth("operator"))).json())
        assert [p["pid"] for p in memory["processes"]] == [p.pid for p in status.processes]
        assert {"cpu_percent", "host_rss_mb", "started_at", "children"} <= set(memory["processes"][0])


async def test_openapi_documents_the_signal_route():
    async with running_app() as srv:
        doc = (await srv.http.get("/v1/openapi.json")).json()
    op = doc["paths"]["/v1/gpu/processes/{pid}/signal"]["post"]
    assert op["operationId"] == "signalGpuProcess"
    assert op["parameters"][0]["schema"]["type"] == "integer"
    assert op["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/SignalRequest"}
    assert {"200", "400", "401", "403", "404", "415", "503", "507"} <= set(op["responses"])
    assert "may not signal" in op["responses"]["403"]["description"]
    assert doc["components"]["schemas"]["SignalRequest"]["properties"]["signal"]["enum"] == [
        "TERM", "INT", "KILL"]


async def test_the_sdk_raises_bad_request_for_another_signal():
    async with running_app() as srv:
        pid = srv.app.backend.snapshot().processes[0].pid
        async with AsyncGpuFleetClient(srv.url, api_key=srv.keys["operator"]) as client:
            with pytest.raises(BadRequest, match="signal"):
                await client.signal_process(pid, "HUP")  # type: ignore[arg-type]
