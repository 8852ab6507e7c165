"""ProcessInspector on real processes: CPU, host memory, start, cgroup, children, odd cases."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import psutil
import pytest

from gpufleet.server.gpu.processes import (
    CHILDREN_MAX,
    ProcessInspector,
    clean_text,
    in_nested_pid_namespace,
    parse_cgroup,
)
from gpufleet.server.schemas import GpuProcess

GONE_PID = 99_999_999


class Ticks:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def spawn() -> Iterator[Callable[..., subprocess.Popen]]:
    children: list[subprocess.Popen] = []

    def start(*args: str | bytes, code: str = "import sys; sys.stdin.read()") -> subprocess.Popen:
        child = subprocess.Popen([sys.executable, "-c", code, *args], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE)
        children.append(child)
        return child

    yield start
    for child in children:
        for descendant in psutil.Process(child.pid).children(recursive=True) if child.poll() is None else ():
            descendant.kill()
        child.kill()
        child.wait()


def _burn_cpu(seconds: float) -> None:
    start = time.process_time()
    while time.process_time() - start < seconds:
        pass


def test_first_sight_is_the_lifetime_average_then_the_interval(spawn):
    ticks = Ticks()
    inspector = ProcessInspector(monotonic=ticks)
    me = os.getpid()
    first = inspector.describe([me])[me]
    proc = psutil.Process(me)
    times = proc.cpu_times()
    lifetime = 100 * (times.user + times.system) / (time.time() - proc.create_time())
    assert first.visible and first.cpu_percent == pytest.approx(lifetime, abs=2.0)
    assert first.started_at == datetime.fromtimestamp(proc.create_time(), UTC)
    assert first.elapsed_s >= 0
    assert abs(first.host_rss_mb - proc.memory_info().rss // 2**20) <= 8  # it lives on meanwhile
    assert first.user == proc.username() and first.name == proc.name()
    assert first.command == " ".join(proc.cmdline())
    before = sum(proc.cpu_times()[:2])
    _burn_cpu(0.05)
    used = sum(proc.cpu_times()[:2]) - before
    ticks.now += 2.0
    second = inspector.describe([me])[me]
    assert second.cpu_percent == pytest.approx(100 * used / 2.0, abs=1.0) and second.cpu_percent > 0
    idle = spawn(code="import sys; print(flush=True); sys.stdin.read()")
    idle.stdout.readline()  # started up: from here on it only waits
    inspector.describe([idle.pid])  # first sight
    ticks.now += 10.0
    assert inspector.describe([idle.pid])[idle.pid].cpu_percent <= 0.1  # one clock tick at most


def test_snapshots_closer_than_the_minimum_window_repeat_the_last_figure():
    ticks = Ticks()
    inspector = ProcessInspector(monotonic=ticks)
    me = os.getpid()
    inspector.describe([me])
    ticks.now += 2.0
    figure = inspector.describe([me])[me].cpu_percent
    _burn_cpu(0.03)
    ticks.now += 0.005  # another client's poll a few ms later: no new, noisy figure
    assert inspector.describe([me])[me].cpu_percent == figure
    ticks.now += 1.0  # a full window since the kept reading: a new figure, burn included
    assert inspector.describe([me])[me].cpu_percent > 0


def test_children_and_grandchildren_are_listed_nearest_first(spawn):
    code = ("import subprocess, sys\n"
            "kid = subprocess.Popen([sys.executable, '-c', 'import subprocess, sys; "
            "subprocess.Popen([sys.executable, \"-c\", \"import time; time.sleep(60)\"]); "
            "print(flush=True); sys.stdin.read()'], stdin=subprocess.PIPE, stdout=sys.stdout)\n"
            "print(flush=True); sys.stdin.read()")
    parent = spawn(code=code)
    parent.stdout.readline()  # both generations are up once the two lines came
    parent.stdout.readline()
    kid = psutil.Process(parent.pid).children()[0]
    grandkid = kid.children()[0]
    host = ProcessInspector().describe([parent.pid])[parent.pid]
    assert [(c.pid, c.ppid) for c in host.children] == [(kid.pid, parent.pid),
                                                        (grandkid.pid, kid.pid)]
    assert host.children[0].name == kid.name() and host.children[0].host_rss_mb > 0
    lonely = spawn()
    assert ProcessInspector().describe([lonely.pid])[lonely.pid].children == ()


def test_the_children_scan_is_kept_for_its_refresh_interval(spawn):
    ticks = Ticks()
    inspector = ProcessInspector(monotonic=ticks, children_refresh_s=5.0)
    parent = spawn(code="import subprocess, sys; sys.stdin.readline(); "
                        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
                        "print(flush=True); sys.stdin.read()")
    assert inspector.describe([parent.pid])[parent.pid].children == ()
    parent.stdin.write(b"go\n")
    parent.stdin.flush()
    parent.stdout.readline()
    ticks.now += 1.0
    assert inspector.describe([parent.pid])[parent.pid].children == ()  # the kept scan
    ticks.now += 5.0
    assert len(inspector.describe([parent.pid])[parent.pid].children) == 1


def test_children_are_capped(spawn):
    code = ("import subprocess, sys\n"
            f"kids = [subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']) "
            f"for _ in range({CHILDREN_MAX + 3})]\n"
            "print(flush=True); sys.stdin.read()")
    parent = spawn(code=code)
    parent.stdout.readline()
    assert len(ProcessInspector().describe([parent.pid])[parent.pid].children) == CHILDREN_MAX


def test_a_pid_this_host_cannot_see_has_only_what_nvml_knows():
    host = ProcessInspector().describe([GONE_PID])[GONE_PID]
    assert (host.visible, host.name, host.user, host.cpu_percent, host.children) == (
        False, "unknown", None, None, None)


def test_readings_of_pids_no_longer_listed_are_dropped(spawn):
    ticks = Ticks()
    inspector = ProcessInspector(monotonic=ticks)
    child = spawn()
    inspector.describe([child.pid, os.getpid()])
    inspector.describe([os.getpid()])  # the driver no longer lists the child
    ticks.now += 1.0
    again = inspector.describe([child.pid])[child.pid]
    lifetime = again.cpu_percent  # first sight again: the average since start, not an interval
    assert lifetime is not None and again.visible


def test_invalid_utf8_in_a_command_line_still_serialises(spawn):
    child = spawn("caf\xe9".encode("latin-1"), code="import sys; print(flush=True); sys.stdin.read()")
    child.stdout.readline()  # exec'd: /proc shows its own command line, not the parent's
    host = ProcessInspector().describe([child.pid])[child.pid]
    assert host.command.endswith("caf\ufffd")
    entry = GpuProcess(pid=child.pid, name=host.name, command=host.command)
    assert "caf\ufffd" in entry.model_dump_json()


def test_clean_text_replaces_only_what_is_not_utf8():
    assert clean_text("ok é") == "ok é"
    assert clean_text(b"a\xffb".decode("utf-8", "surrogateescape")) == "a\ufffdb"


@pytest.mark.parametrize(("text", "path"), [
    ("0::/system.slice/docker-" + "ab" * 32 + ".scope\n", "/system.slice/docker-" + "ab" * 32 + ".scope"),
    ("12:pids:/kubepods/burstable/pod1/" + "cd" * 32 + "\n11:memory:/x\n",
     "/kubepods/burstable/pod1/" + "cd" * 32),
    ("1:name=systemd:/user.slice\n0::/user.slice/user-1000.slice/session-3.scope\n",
     "/user.slice/user-1000.slice/session-3.scope"),
    ("", None),
])
def test_cgroup_paths(text, path):
    assert parse_cgroup(text) == path


def test_the_cgroup_names_the_container(tmp_path: Path):
    me = os.getpid()
    fake_proc = tmp_path / "proc"
    (fake_proc / str(me)).mkdir(parents=True)
    cid = "0123456789abcdef" * 4
    (fake_proc / str(me) / "cgroup").write_text(f"0::/kubepods.slice/cri-containerd-{cid}.scope\n")
    (fake_proc / "self").mkdir()
    (fake_proc / "self" / "status").write_text("Name:\tpython\nNSpid:\t42\n")
    host = ProcessInspector(proc_root=fake_proc).describe([me])[me]
    assert host.container_id == cid and host.cgroup.endswith(f"{cid}.scope")
    real = ProcessInspector().describe([me])[me]
    assert real.cgroup == parse_cgroup(Path(f"/proc/{me}/cgroup").read_text())


def test_in_a_nested_pid_namespace_only_processes_holding_the_gpu_count(spawn, tmp_path: Path):
    device = tmp_path / "nvidia0"
    device.write_bytes(b"")
    holder = spawn(code=f"import sys; f = open({str(device)!r}); print(flush=True); sys.stdin.read()")
    bystander = spawn()
    holder.stdout.readline()  # the device is open once the line came
    inspector = ProcessInspector(nested_pid_namespace=True, gpu_device_prefix=str(device))
    found = inspector.describe([holder.pid, bystander.pid])
    assert found[holder.pid].visible and not found[bystander.pid].visible


def test_nested_namespace_detection(tmp_path: Path):
    (tmp_path / "self").mkdir()
    status = tmp_path / "self" / "status"
    status.write_text("Name:\tx\nNSpid:\t4182\n")
    assert not in_nested_pid_namespace(tmp_path)
    status.write_text("Name:\tx\nNSpid:\t4182\t7\n")
    assert in_nested_pid_namespace(tmp_path)
    assert not in_nested_pid_namespace(tmp_path / "missing")
