"""Chargeback periods: the presets (this month, last 7 days, last month) and validated custom dates.

Pure date arithmetic, no Textual: the chargeback screen asks for a ``Period``
and shows a ``PeriodError``'s message as is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Literal

MAX_SPAN_DAYS = 366
_DAY_SHAPE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
PeriodKind = Literal["this_month", "last_7_days", "last_month", "custom"]
PERIOD_NAMES: dict[PeriodKind, str] = {
    "this_month": "This month",
    "last_7_days": "Last 7 days",
    "last_month": "Last month",
    "custom": "Custom",
}


class PeriodError(ValueError):
    """A custom period the user typed is not valid; the message says how to fix it."""


@dataclass(frozen=True)
class Period:
    """An inclusive range of UTC days and how it was chosen."""

    kind: PeriodKind
    from_: date
    to: date

    @property
    def label(self) -> str:
        return f"{PERIOD_NAMES[self.kind]} · {self.from_.isoformat()} → {self.to.isoformat()}"

    @classmethod
    def preset(cls, kind: PeriodKind, today: date) -> Period:
        if kind == "last_7_days":
            return cls(kind, today - timedelta(days=6), today)
        if kind == "last_month":
            last_day = today.replace(day=1) - timedelta(days=1)
            return cls(kind, last_day.replace(day=1), last_day)
        return cls("this_month", today.replace(day=1), today)

    @classmethod
    def custom(cls, from_text: str, to_text: str) -> Period:
        from_ = parse_day(from_text, "From")
        to = parse_day(to_text, "To")
        if from_ > to:
            raise PeriodError("From must be on or before To")
        if (to - from_).days + 1 > MAX_SPAN_DAYS:
            raise PeriodError(f"A period spans at most {MAX_SPAN_DAYS} days")
        return cls("custom", from_, to)


def parse_day(text: str, field: str) -> date:
    """``YYYY-MM-DD`` (surrounding spaces allowed) or a PeriodError naming ``field``."""
    text = text.strip()
    if not _DAY_SHAPE.fullmatch(text):
        raise PeriodError(f"{field}: enter a date as YYYY-MM-DD")
    try:
        return date.fromisoformat(text)
    except ValueError:
        # The shape is right, so "enter YYYY-MM-DD" would not help: name what is wrong.
        raise PeriodError(f"{field}: {text} is not a calendar date (month 01-12, day within the month)") from None


def utc_today() -> date:
    return datetime.now(UTC).date()
