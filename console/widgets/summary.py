"""The fleet's one-line summary and the fleet screen's status line, fitted to a width (pure, no Textual).

Summary: nodes up and in trouble, GPUs busy and idle, memory used of total,
power, mean utilization and GPUs over a threshold. Each piece has shorter
forms; the widest set of forms that fits is used, so nothing is cut mid-word.
Parts carry a role (a theme variable name) and become markup in ``markup``.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.cells import cell_len

from gpufleet.console.state import FleetState, NodeState

Part = tuple[str, str | None]  # (text, theme variable or None)
SEP: Part = (" · ", "text-muted")


@dataclass(frozen=True, slots=True)
class FleetTotals:
    """The figures of the summary line, over every node that answers."""

    nodes: int
    up: int
    down: int
    auth: int
    stale: int
    gpus: int
    busy: int
    idle: int
    used_mb: int
    total_mb: int
    power_w: float
    mean_util: float | None
    over: int


def totals(state: FleetState) -> FleetTotals:
    down = auth = stale = up = 0
    sums = [0.0] * 9  # gpus, busy, idle, used MiB, total MiB, power W, util sum, util count, over
    for node in state.nodes.values():
        down += node.health == "down"
        auth += node.health == "auth"
        stale += node.health == "stale"
        up += node.health == "up"
        if node.status is None or not node.reachable:
            continue  # a node that does not answer has no current readings to add up
        for i, value in enumerate(_node_sums(node, state)):
            sums[i] += value
    gpus, busy, idle, used, total, power, util_sum, util_n, over = sums
    mean = util_sum / util_n if util_n else None
    return FleetTotals(len(state.nodes), up, down, auth, stale, int(gpus), int(busy), int(idle),
                       int(used), int(total), power, mean, int(over))


def _node_sums(node: NodeState, state: FleetState) -> tuple[float, ...]:
    """One node's share of the totals, added up once per answer (a redraw sums 64 of these, not 512 GPUs)."""
    status = node.status
    assert status is not None
    cached = node._totals
    if cached is not None and cached[0] is status:
        return cached[1]
    levels = state.levels
    gpus = status.gpus
    utils = [g.utilization.gpu_percent for g in gpus if g.utilization.gpu_percent is not None]
    sums = (float(len(gpus)), float(sum(levels.busy(g) for g in gpus)), float(sum(levels.idle(g) for g in gpus)),
            float(sum(g.memory.used_mb for g in gpus)), float(sum(g.memory.total_mb for g in gpus)),
            sum(g.power_draw_w or 0.0 for g in gpus), float(sum(utils)), float(len(utils)),
            float(sum(levels.over(g) for g in gpus)))
    node._totals = (status, sums)
    return sums


def _memory(used_mb: int, total_mb: int) -> str:
    """Used/total in the API's GB (MiB / 1024), or TB (GB / 1024) for a fleet of 10,000 GB and more."""
    if total_mb / 1024 >= 10_000:
        return f"{used_mb / 1024**2:.1f}/{total_mb / 1024**2:.1f} TB"
    return f"{used_mb / 1024:.0f}/{total_mb / 1024:.0f} GB"


def _power(watts: float) -> str:
    return f"{watts / 1000:.1f} kW" if watts >= 10_000 else f"{watts:.0f} W"


def summary_variants(t: FleetTotals) -> list[list[list[Part]]]:
    """Groups of parts, richest first; each later variant shortens or drops something."""
    trouble: list[Part] = []
    for count, word, role in ((t.down, "down", "text-error"), (t.auth, "auth failed", "text-error"),
                              (t.stale, "stale", "text-warning")):
        if count:
            trouble += [(", ", None), (f"{count} {word}", role)]
    nodes_long: list[Part] = [(f"{t.up}/{t.nodes} nodes up", None), *trouble]
    nodes_short: list[Part] = [(f"{t.up}/{t.nodes} up", None), *trouble]
    gpus_long: list[Part] = [(f"{t.gpus} GPUs: {t.busy} busy, {t.idle} idle", None)]
    gpus_short: list[Part] = [(f"{t.busy}/{t.gpus} busy", None)]
    memory_long: list[Part] = [(f"mem {_memory(t.used_mb, t.total_mb)}", None)]
    memory_short: list[Part] = [(_memory(t.used_mb, t.total_mb), None)]
    power: list[Part] = [(_power(t.power_w), None)]
    util_long: list[Part] = [(f"util {t.mean_util:.0f}% avg" if t.mean_util is not None else "util —", None)]
    util_short: list[Part] = [(f"util {t.mean_util:.0f}%" if t.mean_util is not None else "util —", None)]
    over_role = "text-error" if t.over else "text-muted"
    over_long: list[Part] = [(f"{t.over} over threshold", over_role)]
    over_short: list[Part] = [(f"{t.over} over", over_role)]
    # Each step gives up one thing, least missed first; every prefix of the steps is a variant.
    parts = {"nodes": nodes_long, "gpus": gpus_long, "memory": memory_long, "power": power,
             "util": util_long, "over": over_long}
    steps: list[tuple[str, list[Part] | None]] = [
        ("util", util_short), ("gpus", gpus_short), ("nodes", nodes_short), ("memory", memory_short),
        ("over", over_short), ("power", None), ("util", None), ("memory", None), ("gpus", None),
    ]
    order = ("nodes", "gpus", "memory", "power", "util", "over")
    variants = [[parts[name] for name in order]]
    for name, replacement in steps:
        if replacement is None:
            del parts[name]
        else:
            parts[name] = replacement
        variants.append([parts[n] for n in order if n in parts])
    return variants


def join(groups: list[list[Part]]) -> list[Part]:
    parts: list[Part] = []
    for group in groups:
        if parts:
            parts.append(SEP)
        parts.extend(group)
    return parts


def width_of(parts: list[Part]) -> int:
    return sum(cell_len(text) for text, _ in parts)


def fitted(variants: list[list[list[Part]]], width: int) -> list[Part]:
    """The first variant that fits ``width`` cells, else the shortest."""
    options = [join(v) for v in variants]
    return next((p for p in options if width_of(p) <= width), options[-1])


def markup(parts: list[Part]) -> str:
    """Content markup: each role a theme variable; text escaped."""
    out = []
    for text, role in parts:
        safe = text.replace("[", r"\[")
        out.append(f"[${role}]{safe}[/]" if role else safe)
    return "".join(out)


def status_variants(view: str, sort: str, reverse: bool, query: str, matched: int, of: int,
                    noun: str, readonly: bool) -> list[list[list[Part]]]:
    """The fleet screen's status: view, sort and the filter with its count (the count always whole)."""
    arrow = "▼" if reverse else "▲"
    readonly_part: list[list[Part]] = [[("read-only", "text-warning")]] if readonly else []
    count_long = f"{matched} of {of} {noun}"
    count_short = f"{matched}/{of}"
    variants: list[list[list[Part]]] = []
    for shown_view, sort_text, count in (
            (view, f"sort {sort} {arrow}", count_long),
            (view, f"{sort} {arrow}", count_long),
            (None, f"{sort} {arrow}", count_long),
            (None, f"{sort} {arrow}", count_short)):
        groups: list[list[Part]] = [[(shown_view, "text-accent")]] if shown_view else []
        groups.append([(sort_text, None)])
        if query:
            for cut in (None, 16, 8):
                shown = query if cut is None or len(query) <= cut else query[: cut - 1] + "…"
                variants.append([*groups, [(f"filter “{shown}” ", None), (count, "text-warning")], *readonly_part])
        else:
            variants.append([*groups, *readonly_part])
    return variants
