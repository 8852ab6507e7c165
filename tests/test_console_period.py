"""Chargeback periods: presets across month and year edges, custom dates and their validation."""

from __future__ import annotations

from datetime import date

import pytest

from gpufleet.console.period import MAX_SPAN_DAYS, Period, PeriodError, parse_day
from gpufleet.console.widgets.format import hours, money, share_bar


@pytest.mark.parametrize(("today", "kind", "expected"), [
    (date(2026, 3, 11), "this_month", (date(2026, 3, 1), date(2026, 3, 11))),
    (date(2026, 3, 1), "this_month", (date(2026, 3, 1), date(2026, 3, 1))),
    (date(2026, 3, 11), "last_7_days", (date(2026, 3, 5), date(2026, 3, 11))),
    (date(2026, 3, 3), "last_7_days", (date(2026, 2, 25), date(2026, 3, 3))),
    (date(2026, 3, 11), "last_month", (date(2026, 2, 1), date(2026, 2, 28))),
    (date(2024, 3, 31), "last_month", (date(2024, 2, 1), date(2024, 2, 29))),  # leap year
    (date(2026, 1, 15), "last_month", (date(2025, 12, 1), date(2025, 12, 31))),  # year edge
])
def test_presets(today: date, kind: str, expected: tuple[date, date]) -> None:
    period = Period.preset(kind, today)  # type: ignore[arg-type]
    assert (period.kind, period.from_, period.to) == (kind, *expected)


def test_an_unknown_or_custom_kind_falls_back_to_this_month() -> None:
    assert Period.preset("custom", date(2026, 3, 11)) == Period("this_month", date(2026, 3, 1), date(2026, 3, 11))


def test_label_names_the_kind_and_the_days() -> None:
    assert Period.preset("last_month", date(2026, 3, 11)).label == "Last month · 2026-02-01 → 2026-02-28"


def test_custom_dates_accept_iso_days_with_spaces() -> None:
    assert Period.custom(" 2026-02-01", "2026-02-14 ") == Period("custom", date(2026, 2, 1), date(2026, 2, 14))
    assert Period.custom("2026-02-01", "2026-02-01").to == date(2026, 2, 1)  # one day is fine


@pytest.mark.parametrize(("from_text", "to_text", "message"), [
    ("2026-2-1", "2026-02-14", "From: enter a date as YYYY-MM-DD"),  # not zero-padded
    ("20260201", "2026-02-14", "From: enter a date as YYYY-MM-DD"),  # basic ISO form
    ("", "2026-02-14", "From: enter a date as YYYY-MM-DD"),
    ("2026-02-01", "2026-02-30", "To: 2026-02-30 is not a calendar date (month 01-12, day within the month)"),
    ("2026-13-01", "2026-02-14", "From: 2026-13-01 is not a calendar date (month 01-12, day within the month)"),
    ("2026-02-14", "2026-02-01", "From must be on or before To"),
    ("2025-01-01", "2026-01-02", f"A period spans at most {MAX_SPAN_DAYS} days"),
])
def test_custom_dates_are_refused_with_a_fix(from_text: str, to_text: str, message: str) -> None:
    with pytest.raises(PeriodError) as caught:
        Period.custom(from_text, to_text)
    assert str(caught.value) == message


def test_the_longest_custom_period() -> None:
    period = Period.custom("2024-01-01", "2024-12-31")  # 366 days in a leap year
    assert (period.to - period.from_).days + 1 == MAX_SPAN_DAYS
    assert parse_day("2024-02-29", "From") == date(2024, 2, 29)


def test_chargeback_number_formats() -> None:
    assert money(1234.5) == "$1,234.50" and hours(12345.67) == "12,345.7"
    assert share_bar(1, 4, 8) == "██░░░░░░  25.0%"
    assert share_bar(0, 0, 4) == "░░░░   0.0%"
