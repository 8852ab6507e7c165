"""The text of a node's header row in the fleet table, fitted to a width (pure, no Textual).

A node row says, in order of importance: the node's name, whether it answers,
when it was last seen (if not), the SIM label, memory in use, power, round-trip
time and the GPU model summary. When the row is too wide the least important
parts are shortened, then dropped, so that what stays on screen is whole.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

from rich.cells import cell_len

from gpufleet.console.state import NodeState
from gpufleet.console.widgets.format import MEMORY_UNIT, ago, gb, rtt, short_gpu_name

# A part's role names the fleet table's component class that styles it.
Part = tuple[str, str | None]
GAP = "  "


@dataclass(frozen=True, slots=True)
class _Summary:
    """The optional parts of an answering node's row; ``None`` means dropped."""

    gpus: str | None
    memory: str | None
    power: str | None
    rtt: str | None


def _summary_variants(node: NodeState, *, mask_rtt: bool) -> list[_Summary]:
    """The summary from richest to poorest: each step shortens or drops one less important part."""
    status = node.status
    assert status is not None
    count = len(status.gpus)
    names = sorted({short_gpu_name(g.name) for g in status.gpus})
    many = f"{count} GPU" if count == 1 else f"{count} GPUs"
    used = sum(g.memory.used_mb for g in status.gpus)
    total = sum(g.memory.total_mb for g in status.gpus)
    power = sum(g.power_draw_w or 0 for g in status.gpus)
    full = _Summary(
        gpus=f"{count} x {names[0]}" if len(names) == 1 else many,
        memory=f"mem {gb(used)}/{gb(total)} {MEMORY_UNIT}",
        power=f"{power:.0f} W",
        rtt=rtt(node.rtt_ms, masked=mask_rtt) or None,
    )
    steps = [
        replace(full, gpus=many),  # the model's name first: every GPU row shows it
        replace(full, gpus=many, memory=f"{used / 1024:.0f}/{total / 1024:.0f} {MEMORY_UNIT}"),
    ]
    steps.append(replace(steps[-1], gpus=None))
    steps.append(replace(steps[-1], rtt=None))
    steps.append(replace(steps[-1], power=None))
    steps.append(replace(steps[-1], memory=None))
    return [full, *steps]


def _width(parts: list[Part]) -> int:
    return sum(cell_len(text) for text, _ in parts)


def _with_gaps(groups: list[list[Part]]) -> list[Part]:
    parts: list[Part] = []
    for group in groups:
        if not group:  # a real node has no badge: nothing to set apart
            continue
        if parts:
            # A gap wears the name's style after the name, else the style of what follows
            # (plain before the badge, whose background would otherwise spread).
            role = group[0][1]
            parts.append((GAP, "node" if len(parts) == 1 else None if role == "badge" else role))
        parts.extend(group)
    return parts


def node_header_parts(node: NodeState, width: int, *, now: datetime | None,
                      mask_rtt: bool = False) -> list[Part]:
    """(text, role) parts of ``node``'s header row, at most ``width`` cells when it can be."""
    head: list[Part] = [(f"▾ {node.name}", "node")]
    sim: list[Part] = [(" SIM ", "badge")] if node.simulated else []
    if node.reachable is None:
        return _with_gaps([head, [("… waiting for the first answer", "dim")]])
    if not node.reachable:
        seen = f"last seen {ago(node.last_ok_at, now)}" if now else ""
        candidates = [
            [head, [("✖ unreachable", "crit")], [(seen, "warn")], [(node.last_error or "", "dim")], sim],
            [head, [("✖ unreachable", "crit")], [(seen, "warn")], sim],
            [head, [("✖ unreachable", "crit")], sim],
        ]
        options = [_with_gaps([g for g in groups if g and g[0][0]]) for groups in candidates]
        return next((p for p in options if _width(p) <= width), options[-1])
    options = []
    for summary in _summary_variants(node, mask_rtt=mask_rtt) if node.status else []:
        up: list[Part] = [("● up", "ok")]
        if summary.rtt:
            up.append((f"{GAP}{summary.rtt}", "dim"))
        rest = [[(text, "dim")] for text in (summary.gpus, summary.memory, summary.power) if text]
        options.append(_with_gaps([head, up, sim, *rest]))
    if not options:
        options = [_with_gaps([head, [("● up", "ok")], sim])]
    return next((p for p in options if _width(p) <= width), options[-1])
