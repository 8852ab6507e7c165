"""Text formatting and threshold levels shared by the console's widgets (pure functions)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from typing import Literal

from rich.cells import cell_len, set_cell_size
from rich.text import Text

Level = Literal["ok", "warn", "crit"]

# Thresholds: (warn at, critical at). Colours come from the theme via these level names.
MEMORY_PCT = (70.0, 90.0)
TEMP_C = (75.0, 85.0)
POWER_PCT_OF_LIMIT = (80.0, 95.0)
UTIL_PCT = (101.0, 101.0)  # a busy GPU is the point of a GPU: utilisation is never a warning


def level(value: float | None, thresholds: tuple[float, float]) -> Level:
    if value is None or value < thresholds[0]:
        return "ok"
    return "warn" if value < thresholds[1] else "crit"


def short_gpu_name(name: str) -> str:
    """``NVIDIA H100 80GB HBM3`` -> ``H100 80GB HBM3``: the vendor is the same on every row."""
    return name.removeprefix("NVIDIA ").removeprefix("Tesla ")


# The API document's unit: its "GB" figures are MiB / 1024 (81920 MiB is 80.0 GB, as
# server/purge.py's SIZE_UNIT says), so every memory figure on screen is written the same way.
MEMORY_UNIT = "GB"


def fitted_gpu_name(name: str, width: int) -> str:
    """The GPU name in ``width`` cells: ``A100-SXM4-80GB`` -> ``A100 80GB`` rather than ``A100-SXM…``.

    When the short name does not fit, the model (first word) and its memory size say most;
    the caller truncates whatever still does not fit.
    """
    short = short_gpu_name(name)
    if len(short) <= width:
        return short
    words = re.split(r"[\s-]+", short)
    memory = next((w for w in words[1:] if re.fullmatch(r"[0-9]+GB", w)), None)
    return f"{words[0]} {memory}" if memory else short


def workloads_text(labels: Sequence[str], width: int) -> str:
    """A GPU's workloads in ``width`` cells: all of them when they fit, else the first and ``+N``.

    ``data-science / bge-embed + inference / llama3.2-3b`` on a wide screen,
    ``data-science / bge… +1`` on a narrow one: a shared GPU always says it is shared.
    """
    if not labels:
        return "—"
    whole = " + ".join(labels)
    if len(labels) == 1 or cell_len(whole) <= width:
        return whole
    more = f" +{len(labels) - 1}"
    first = labels[0]
    room = width - len(more)
    if cell_len(first) > room:
        first = set_cell_size(first, room - 1).rstrip(" /") + "…" if room > 1 else ""
    return first + more


def gb(mb: float) -> str:
    """A MiB figure in the document's GB (MiB / 1024), one decimal."""
    return f"{mb / 1024:.1f}"


def pct(value: float | int | None) -> str:
    return "—" if value is None else f"{value:.0f}%"


def temp(value: int | None) -> str:
    return "—" if value is None else f"{value}°C"


def watts(value: float | None) -> str:
    return "—" if value is None else f"{value:.0f}W"


def ago(then: datetime | None, now: datetime) -> str:
    """``12s ago``, ``4m ago``, ``3h ago``, ``2d ago``; ``never`` without a time."""
    if then is None:
        return "never"
    seconds = max(0, int((now - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def rtt(ms: float | None, *, masked: bool = False) -> str:
    if ms is None:
        return ""
    return "·· ms" if masked else f"{ms:.0f} ms"


def share_bar(part: float, whole: float, width: int) -> str:
    """A text bar of ``part``'s share of ``whole`` followed by the percentage."""
    share = part / whole if whole > 0 else 0.0
    filled = round(share * width)
    return "█" * filled + "░" * (width - filled) + f" {share * 100:5.1f}%"


def money(value: float) -> str:
    return f"${value:,.2f}"


def hours(value: float) -> str:
    return f"{value:,.1f}"


def numeric(text: str) -> Text:
    """A table cell (or column title) set flush right, so the digits of a column line up."""
    return Text(text, justify="right")
