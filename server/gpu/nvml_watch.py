"""One background thread for what NVML cannot answer at once: XID events and PCIe throughput.

XIDs arrive as NVML events (``nvmlEventSetWait_v2`` blocks until one comes), so they
are collected from the server's start, not sampled. ``nvmlDeviceGetPcieThroughput``
samples a byte counter for 20 ms before it answers, twice per GPU: done inline it
would add a third of a second to every snapshot of an 8-GPU node, so the thread
refreshes it every ``pcie_interval_s`` and snapshots use the latest figures.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime
from types import ModuleType
from typing import Any

from gpufleet.server.schemas import XID_ERRORS_KEPT, XidError, utc_now

log = logging.getLogger("gpufleet.gpu")

PCIE_INTERVAL_S = 2.0
EVENT_WAIT_MS = 200  # also how long close() may wait for the thread


class NvmlWatcher:
    """XIDs since start and the latest PCIe throughput, per GPU index."""

    def __init__(self, nvml: ModuleType, handles: list[Any | None], *,
                 clock: Callable[[], datetime] = utc_now,
                 pcie_interval_s: float = PCIE_INTERVAL_S,
                 event_wait_ms: int = EVENT_WAIT_MS) -> None:
        self._nvml = nvml
        self._handles = list(handles)
        self._clock = clock
        self._pcie_interval_s = pcie_interval_s
        self._event_wait_ms = event_wait_ms
        self._lock = threading.Condition()
        self._stop = threading.Event()
        self._xids: dict[int, deque[XidError]] = {}
        self._xid_counts: dict[int, int] = {}
        self._pcie: dict[int, tuple[int | None, int | None]] = {}
        self._pcie_unsupported: set[int] = set()
        self.pcie_rounds = 0  # completed refreshes (tests wait on it)
        self._event_set: Any | None = None
        self._register_xid_events()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ readings
    def xids(self, index: int) -> tuple[list[XidError], int] | None:
        """The latest XIDs and how many there were, or None when this GPU cannot report them."""
        with self._lock:
            if index not in self._xids:
                return None
            return list(self._xids[index]), self._xid_counts[index]

    def pcie_throughput(self, index: int) -> tuple[int | None, int | None] | None:
        """The latest (TX, RX) in KB/s; None before the first refresh or when unsupported."""
        with self._lock:
            return self._pcie.get(index)

    def wait_for(self, predicate: Callable[[], bool], timeout_s: float) -> bool:
        """Block until ``predicate()`` holds after some round or event (tests await with it)."""
        with self._lock:
            return self._lock.wait_for(predicate, timeout_s)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # ------------------------------------------------------------ life
    def start(self) -> None:
        if self._thread is None:
            self._refresh_pcie()  # the first snapshot has figures, not None
            self._thread = threading.Thread(target=self._run, name="gpufleet-nvml-watch",
                                            daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop the thread and free the event set; before nvmlShutdown."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._event_set is not None:
            try:
                self._nvml.nvmlEventSetFree(self._event_set)
            except self._nvml.NVMLError as exc:
                log.debug("nvmlEventSetFree: %s", exc)
            self._event_set = None

    # ------------------------------------------------------------ thread
    def _run(self) -> None:
        next_pcie = time.monotonic() + self._pcie_interval_s
        while not self._stop.is_set():
            wait_s = max(0.0, min(next_pcie - time.monotonic(), self._event_wait_ms / 1000))
            if self._event_set is not None:
                self._wait_event(int(wait_s * 1000))
            else:
                self._stop.wait(wait_s)
            if time.monotonic() >= next_pcie and not self._stop.is_set():
                self._refresh_pcie()
                next_pcie = time.monotonic() + self._pcie_interval_s

    def _wait_event(self, timeout_ms: int) -> None:
        nvml = self._nvml
        try:
            data = nvml.nvmlEventSetWait_v2(self._event_set, timeout_ms)
        except nvml.NVMLError_Timeout:
            return
        except nvml.NVMLError_Uninitialized:  # the NVML session is over: nothing left to watch
            self._stop.set()
            return
        except nvml.NVMLError as exc:
            # Stop waiting on a broken event set rather than spin; XIDs then stay as they are.
            log.warning("NVML event wait failed (%s): XID errors are no longer collected", exc)
            self._event_set_broken()
            return
        if data.eventType & nvml.nvmlEventTypeXidCriticalError:
            self._record_xid(data)

    def _event_set_broken(self) -> None:
        event_set, self._event_set = self._event_set, None
        try:
            self._nvml.nvmlEventSetFree(event_set)
        except self._nvml.NVMLError:
            pass

    def _record_xid(self, data: Any) -> None:
        index = self._index_of(data.device)
        xid = int(data.eventData)
        log.warning("GPU %s: XID %d", "?" if index is None else index, xid)
        if index is None:
            return
        with self._lock:
            if index in self._xids:
                self._xids[index].append(XidError(xid=xid, at=self._clock()))
                self._xid_counts[index] += 1
            self._lock.notify_all()

    def _index_of(self, device: Any) -> int | None:
        for index, handle in enumerate(self._handles):
            if handle is not None and handle == device:
                return index
        try:
            return int(self._nvml.nvmlDeviceGetIndex(device))
        except self._nvml.NVMLError:
            return None

    def _refresh_pcie(self) -> None:
        nvml = self._nvml
        for index, handle in enumerate(self._handles):
            if handle is None or index in self._pcie_unsupported or self._stop.is_set():
                continue
            try:
                tx = nvml.nvmlDeviceGetPcieThroughput(handle, nvml.NVML_PCIE_UTIL_TX_BYTES)
                rx = nvml.nvmlDeviceGetPcieThroughput(handle, nvml.NVML_PCIE_UTIL_RX_BYTES)
            except (nvml.NVMLError_NotSupported, nvml.NVMLError_NoPermission,
                    nvml.NVMLError_FunctionNotFound):
                self._pcie_unsupported.add(index)
                continue
            except nvml.NVMLError_Uninitialized:
                self._stop.set()
                break
            except nvml.NVMLError:  # a lost GPU or a timeout: no fresh figure this round
                with self._lock:
                    self._pcie.pop(index, None)
                continue
            with self._lock:
                self._pcie[index] = (int(tx), int(rx))
        with self._lock:
            self.pcie_rounds += 1
            self._lock.notify_all()

    def _register_xid_events(self) -> None:
        nvml = self._nvml
        try:
            self._event_set = nvml.nvmlEventSetCreate()
        except nvml.NVMLError as exc:
            log.info("NVML events unavailable (%s): XID errors are not collected", exc)
            return
        for index, handle in enumerate(self._handles):
            if handle is None:
                continue
            try:
                nvml.nvmlDeviceRegisterEvents(handle, nvml.nvmlEventTypeXidCriticalError,
                                              self._event_set)
            except nvml.NVMLError as exc:
                log.debug("GPU %d: no XID events (%s)", index, exc)
                continue
            self._xids[index] = deque(maxlen=XID_ERRORS_KEPT)
            self._xid_counts[index] = 0
        if not self._xids:
            self._event_set_broken()
