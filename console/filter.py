"""The fleet filter: words that must all match, by name, PID, user or state (pure, no Textual).

Each space-separated word must match, case-insensitively, either its node or
its GPU (or, in the process view, the process). A word matches when it is:

- a state word: ``down`` (unreachable or refusing the token), ``auth``, ``stale``,
  ``up`` for nodes; ``hot``, ``idle``, ``busy``, ``throttled``, ``ecc``, ``errors``
  (ECC, pending or failed page retirement / row remap, XID errors), ``lost``,
  ``over`` (over a threshold) for GPUs;
- all digits and equal to the PID of a process on the GPU;
- part of the node's name or hostname, the GPU's name, team, model or holder,
  or a process's name, command or user.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from gpufleet.console.thresholds import Levels
from gpufleet.server.schemas import GpuInfo, GpuProcess

if TYPE_CHECKING:
    from gpufleet.console.state import FleetRow, NodeState, ProcessRow

NODE_WORDS: dict[str, Callable[[NodeState], bool]] = {
    "down": lambda n: n.health in ("down", "auth"),
    "auth": lambda n: n.health == "auth",
    "stale": lambda n: n.health == "stale",
    "up": lambda n: n.health == "up",
}


def _gpu_words(levels: Levels) -> dict[str, Callable[[GpuInfo], bool]]:
    return {
        "hot": levels.hot,
        "idle": levels.idle,
        "busy": levels.busy,
        "throttled": lambda g: bool(levels.throttle_reasons(g)),
        "ecc": lambda g: levels.ecc_level(g) != "ok",
        "errors": lambda g: levels.ecc_level(g) != "ok" or levels.memory_faults(g) or g.lost,
        "lost": lambda g: g.lost,
        "over": levels.over,
    }


STATE_WORDS = (*NODE_WORDS, "hot", "idle", "busy", "throttled", "ecc", "errors", "lost", "over")


class FleetFilter:
    """A parsed filter; ``active`` is False for an empty one (everything matches)."""

    def __init__(self, text: str, levels: Levels) -> None:
        self.words = [w for w in text.lower().split() if w]
        self.active = bool(self.words)
        self._gpu_words = _gpu_words(levels)

    # -- one word against one thing ------------------------------------------------------

    def _node_word(self, word: str, node: NodeState) -> bool:
        if word in NODE_WORDS:
            return NODE_WORDS[word](node)
        hostname = node.status.node.hostname if node.status and node.status.node else ""
        return word in node.name.lower() or word in hostname.lower()

    def _gpu_word(self, word: str, row: FleetRow) -> bool:
        gpu = row.gpu
        assert gpu is not None
        if word in self._gpu_words:
            return self._gpu_words[word](gpu)
        if _in(word, [gpu.name, gpu.team_id or "", gpu.model_tag or "", row.holder, *row.shared]):
            return True  # the cheap fields first: most words are a GPU or team name
        processes = row.node.processes_on(gpu.index)
        if word.isdigit() and any(p.pid == int(word) for p in processes):
            return True
        return (any(_process_text(word, p) for p in processes)
                or _in(word, [m.name for m in row.node.models_on([gpu.index])]))

    # -- whole filters -----------------------------------------------------------------

    def node_matches(self, node: NodeState) -> bool:
        """Every word matches the node itself: all of its GPUs are shown."""
        return all(self._node_word(w, node) for w in self.words)

    def gpu_matches(self, row: FleetRow) -> bool:
        return all(self._node_word(w, row.node) or self._gpu_word(w, row) for w in self.words)

    def gpu_filter(self, node: NodeState) -> Callable[[FleetRow], bool] | None:
        """The test for ``node``'s GPUs, with the words the node matches itself settled once.

        ``None`` when the node matches every word: all of its GPUs are shown.
        """
        left = [w for w in self.words if not self._node_word(w, node)]
        if not left:
            return None
        return lambda row: all(self._gpu_word(w, row) for w in left)

    def process_matches(self, row: ProcessRow) -> bool:
        proc = row.proc
        for word in self.words:
            if self._node_word(word, row.node):
                continue
            if word.isdigit() and proc.pid == int(word):
                continue
            if _process_text(word, proc):
                continue
            gpu = row.gpu
            if gpu is not None and (
                    (word in self._gpu_words and self._gpu_words[word](gpu))
                    or _in(word, [gpu.name, gpu.team_id or "", gpu.model_tag or ""])):
                continue
            return False
        return True


def _in(word: str, haystack: list[str]) -> bool:
    return any(word in text.lower() for text in haystack)


def _process_text(word: str, proc: GpuProcess) -> bool:
    return _in(word, [proc.name, proc.command or "", proc.user or ""])
