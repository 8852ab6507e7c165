"""Messages the pollers post to the App; the App's handlers own every state change."""

from __future__ import annotations

from datetime import datetime

from textual.message import Message

from gpufleet.server.schemas import GpuStatusResponse


class NodePolled(Message):
    """A node answered ``GET /v1/gpu/status``."""

    def __init__(self, node: str, status: GpuStatusResponse, rtt_ms: float, at: datetime) -> None:
        super().__init__()
        self.node, self.status, self.rtt_ms, self.at = node, status, rtt_ms, at


class NodeFailed(Message):
    """A node did not answer, or answered with an error; ``error`` is short and secret-free."""

    def __init__(self, node: str, error: str, at: datetime, *, auth: bool = False,
                 status: int | None = None) -> None:
        super().__init__()
        self.node, self.error, self.at = node, error, at
        self.auth = auth  # the node answered and refused the token (401/403): not "unreachable"
        self.status = status


class FleetChanged(Message):
    """Sent to the active screen once per coalesced burst of node updates."""
