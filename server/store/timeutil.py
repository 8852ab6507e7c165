"""UTC datetimes in and out of the store's naive-UTC TIMESTAMP columns."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def to_db(value: datetime) -> datetime:
    """A naive UTC datetime for a TIMESTAMP column (naive input is taken as UTC)."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value


def from_db(value: datetime | None) -> datetime | None:
    return None if value is None else value.replace(tzinfo=UTC)


def epoch_us(value: datetime) -> int:
    value = value if value.tzinfo else value.replace(tzinfo=UTC)
    return (value - _EPOCH) // _MICROSECOND


def day_start_us(day: date) -> int:
    return epoch_us(datetime.combine(day, time(), tzinfo=UTC))
