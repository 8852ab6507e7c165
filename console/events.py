"""The console's event log: changes of node health and GPU trouble, with their times (pure data)."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

Severity = Literal["information", "warning", "error"]
Kind = Literal["down", "auth", "stale", "up", "gpu"]
TITLES: dict[Kind, str] = {"down": "Node down", "auth": "Token refused", "stale": "Node stale",
                           "up": "Node back up", "gpu": "GPU"}
LOG_SIZE = 1000  # a day of flapping on a big fleet stays readable and bounded


@dataclass(frozen=True, slots=True)
class Event:
    """Something that changed: when, how bad, on which node (and GPU), in words."""

    at: datetime
    severity: Severity
    node: str
    gpu: int | None
    text: str
    kind: Kind = "gpu"
    initial: bool = False  # found on the first answer: already so when the console started watching


class EventLog:
    """The newest ``size`` events, oldest first; ``version`` moves on every append."""

    def __init__(self, size: int = LOG_SIZE) -> None:
        self._events: deque[Event] = deque(maxlen=size)
        self.version = 0

    def extend(self, events: list[Event]) -> None:
        if events:
            self._events.extend(events)
            self.version += 1

    def __iter__(self) -> Iterator[Event]:
        return iter(self._events)

    def __len__(self) -> int:
        return len(self._events)

    def newest_first(self) -> list[Event]:
        """Newest first; events of the same moment by node and GPU (answers arrive in any order)."""
        return sorted(self._events, key=lambda e: (-e.at.timestamp(), e.node, e.gpu if e.gpu is not None else -1))
