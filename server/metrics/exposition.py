"""Prometheus exposition: metric families rendered as text format 0.0.4 or OpenMetrics 1.0.

Families are named as they appear in the text format (a counter ``x_total``, an info
metric ``x_info``); the OpenMetrics renderer derives its family names from them. A
counter whose name does not end in ``_total`` (dcgm-exporter's
``DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION``, say) is declared ``unknown`` in OpenMetrics,
whose counters must end in ``_total``: the series keeps the name dashboards query.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"
_OPENMETRICS = "application/openmetrics-text"
_OPENMETRICS_VERSIONS = ("1.0.0", "0.0.1")

Labels = tuple[tuple[str, str], ...]


@dataclass(slots=True)
class Family:
    """One metric family: its samples share a name, a type and a help text."""

    name: str
    type: str  # gauge | counter | histogram | info | unknown
    help: str
    samples: list[tuple[str, Labels, float]] = field(default_factory=list)  # (suffix, labels, value)
    unit: str | None = None  # OpenMetrics' UNIT, given only where the name ends in it

    def add(self, labels: Labels, value: float, suffix: str = "") -> None:
        self.samples.append((suffix, labels, value))


def format_value(value: float) -> str:
    """A sample value as both formats write it: integers without a fraction, NaN, +Inf, -Inf."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str, *, openmetrics: bool) -> str:
    text = text.replace("\\", "\\\\").replace("\n", "\\n")
    return text.replace('"', '\\"') if openmetrics else text


def render_labels(labels: Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{escape_label(v)}"' for k, v in labels) + "}"


def render_samples(family: Family) -> str:
    """The sample lines of a family (identical in both formats)."""
    name = family.name
    return "".join(f"{name}{suffix}{render_labels(labels)} {format_value(value)}\n"
                   for suffix, labels, value in family.samples)


def _text_type(family: Family) -> str:
    return {"info": "gauge", "unknown": "untyped"}.get(family.type, family.type)


def _openmetrics_head(family: Family) -> tuple[str, str]:
    """(family name, type) as OpenMetrics declares them."""
    name, kind = family.name, family.type
    if kind == "counter":
        return (name[: -len("_total")], kind) if name.endswith("_total") else (name, "unknown")
    if kind == "info":
        return (name[: -len("_info")], kind) if name.endswith("_info") else (name, "gauge")
    return name, kind


def render(families: Iterable[Family | str], *, openmetrics: bool) -> str:
    """Every family in order; a ``str`` is a family already rendered by ``render_family``."""
    parts = [f if isinstance(f, str) else render_family(f, openmetrics=openmetrics)
             for f in families]
    if openmetrics:
        parts.append("# EOF\n")
    return "".join(parts)


def render_family(family: Family, *, openmetrics: bool) -> str:
    if openmetrics:
        name, kind = _openmetrics_head(family)
        head = f"# TYPE {name} {kind}\n"
        if family.unit and name.endswith("_" + family.unit):
            head += f"# UNIT {name} {family.unit}\n"
        head += f"# HELP {name} {_escape_help(family.help, openmetrics=True)}\n"
    else:
        head = (f"# HELP {family.name} {_escape_help(family.help, openmetrics=False)}\n"
                f"# TYPE {family.name} {_text_type(family)}\n")
    return head + render_samples(family)


def histogram(name: str, help_text: str, buckets: Sequence[float],
              series: Iterable[tuple[Labels, Sequence[int], float, int]], *,
              unit: str | None = None) -> Family:
    """A histogram family from ``(labels, count per bucket (not cumulative), sum, count)``."""
    family = Family(name, "histogram", help_text, unit=unit)
    bounds = [format_value(float(b)) for b in buckets]
    for labels, counts, total, count in series:
        running = 0
        for bound, n in zip(bounds, counts, strict=False):
            running += n
            family.add((*labels, ("le", _le(bound))), running, "_bucket")
        family.add((*labels, ("le", "+Inf")), count, "_bucket")
        family.add(labels, total, "_sum")
        family.add(labels, count, "_count")
    return family


def _le(bound: str) -> str:
    # OpenMetrics wants a float's canonical text in ``le``: "1.0", not "1"
    return bound if any(c in bound for c in ".eE") or bound.endswith("Inf") else bound + ".0"


def negotiate(accept: str | None) -> bool:
    """Whether the scraper's ``Accept`` prefers OpenMetrics over the text format.

    Prometheus asks for both with q-values; the higher q wins, the one listed first on
    a tie. A version of OpenMetrics we do not write (or q=0) does not count.
    """
    if not accept:
        return False
    best_om, best_text = 0.0, 0.0
    for position, item in enumerate(accept.split(",")):
        media, *params = [p.strip() for p in item.split(";")]
        values: dict[str, str] = {}
        for param in params:
            key, _, value = param.partition("=")
            values[key.strip().lower()] = value.strip().strip('"')
        try:
            q = float(values.get("q", "1"))
        except ValueError:
            q = 0.0
        q -= position * 1e-6  # equal q: the first listed wins
        media = media.lower()
        if media == _OPENMETRICS and values.get("version", "1.0.0") in _OPENMETRICS_VERSIONS:
            best_om = max(best_om, q)
        elif media in ("text/plain", "text/*", "*/*"):
            best_text = max(best_text, q)
    return best_om > 0 and best_om >= best_text
