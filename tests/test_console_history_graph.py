"""The history graph's arithmetic: readings to columns by time, bars, the time axis (no UI)."""

from __future__ import annotations

import random

from gpufleet.console.widgets.history_graph import FLOOR, axis_labels, bar_cells, bucket

NOW = 1_800_000_000.0
WINDOW = 900.0


def test_readings_land_in_the_column_of_their_time_not_their_count() -> None:
    # Two readings a minute apart over the last two minutes of a 15-minute, 15-column window.
    columns = bucket([NOW - 120, NOW - 60], [10.0, 20.0], now=NOW, window_s=WINDOW, width=15, hold_s=120)
    assert columns[:13] == [None] * 13  # nothing before: a short history is a sliver at the right
    assert columns[13:] == [10.0, 20.0]


def test_a_column_shows_the_peak_of_its_readings() -> None:
    times = [NOW - 50 + i for i in range(10)]
    values = [5.0, 90.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0]
    assert bucket(times, values, now=NOW, window_s=WINDOW, width=15, hold_s=2)[-1] == 90.0


def test_a_node_that_stopped_answering_leaves_a_gap_up_to_now() -> None:
    # Polled every 2 s until 5 minutes ago: each reading holds 2 polls at most, then nothing.
    times = [NOW - 600 + 2 * i for i in range(150)]
    columns = bucket(times, [50.0] * 150, now=NOW, window_s=WINDOW, width=30, hold_s=4)
    assert columns[-9:] == [None] * 9  # the last 5 minutes (10 columns of 30 s) are empty...
    assert columns[10:19] == [50.0] * 9  # ...and the 5 minutes before them full


def test_missing_readings_are_gaps_and_readings_hold_until_the_next() -> None:
    # One reading a minute on 30 s columns: each fills its two columns; an unsupported one is a gap.
    times = [NOW - 240, NOW - 180, NOW - 120, NOW - 60]
    columns = bucket(times, [1.0, None, 3.0, 4.0], now=NOW, window_s=WINDOW, width=30, hold_s=120)
    assert columns[-8:] == [1.0, 1.0, None, None, 3.0, 3.0, 4.0, 4.0]


def test_bucket_never_invents_or_loses_a_reading() -> None:
    rng = random.Random(13)
    for _ in range(300):
        ages = sorted((rng.uniform(0, 2000) for _ in range(rng.randrange(40))), reverse=True)
        values = [None if rng.random() < 0.2 else rng.uniform(0, 1000) for _ in ages]
        width, hold_s = rng.randrange(1, 120), rng.uniform(0.5, 400)
        columns = bucket([NOW - a for a in ages], values, now=NOW, window_s=WINDOW, width=width,
                         hold_s=hold_s)
        assert len(columns) == width
        assert {v for v in columns if v is not None} <= {v for v in values if v is not None}
        # Every known reading inside the window is in its own column, or a bigger one is.
        for age, value in zip(ages, values, strict=True):
            if value is not None and age < WINDOW:
                column = min(width - 1, int((WINDOW - age) // (WINDOW / width)))
                assert columns[column] is not None and columns[column] >= value


def test_a_reading_taken_now_is_in_the_last_column_at_every_width() -> None:
    # The float division put it one column past the end at some widths (44 of 40..59): an
    # 80x24 detail then drew an empty memory graph beside "13.2 GB now".
    for width in range(1, 200):
        columns = bucket([NOW], [42.0], now=NOW, window_s=WINDOW, width=width, hold_s=7200)
        assert columns[-1] == 42.0, width


def test_bars_use_eighths_and_a_floor_for_readings_below_an_eighth() -> None:
    rows = bar_cells([0.0, 50.0, 100.0, None, 1.0], height=2, top=100)
    assert rows == [[" ", " ", "█", " ", " "], [FLOOR, "█", "█", " ", FLOOR]]
    # A reading over the top is drawn full, never past the graph.
    assert bar_cells([250.0], height=1, top=100) == [["█"]]


def test_time_axis_names_the_window_and_now() -> None:
    line = axis_labels(900, 33)
    assert len(line) == 33
    assert line.startswith("-15m") and line.endswith("now")
    assert "-10m" in line and "-5m" in line
    assert line.index("-10m") < line.index("-5m")
    # Narrow: only the ends; narrower still: only "now".
    assert axis_labels(900, 12).split() == ["-15m", "now"]
    assert axis_labels(900, 5).strip() == "now"
    assert axis_labels(45, 30).startswith("-45s")
