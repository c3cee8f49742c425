"""Fixed data days: no test may depend on the date the suite runs (issue 15).

The window ends well after ``DIDACT_START_DATE``'s default (2026-01-01) and before the
suite's first run, so every day is a valid, complete partition whenever the suite runs.
The simulator's data of a day depend on the day, so a test's outcome may too: with
these days the small models of the tests pass the promotion gate on three days in a
row (with the window ending 2026-03-10 the third day's challenger is 9 % worse).
"""

from __future__ import annotations

import datetime as dt

#: the newest day of the window
LAST_DAY = dt.date(2026, 2, 10)
#: where the simulated live feed of the serving tests starts (epoch seconds): the day after
#: :data:`LAST_DAY`, at noon.  Not the real now: the simulator's data faults (a missed or late
#: scrape) fall where the day puts them, so a test starting at the real now met one now and
#: then and failed on a sample count (a CI run, session 7)
LIVE_START_AT = dt.datetime.combine(LAST_DAY + dt.timedelta(days=1), dt.time(12), dt.timezone.utc)
LIVE_START = LIVE_START_AT.timestamp()
#: the same for ``didact serve --start``
LIVE_START_ARG = LIVE_START_AT.isoformat()


def fixed_days(n: int) -> list[str]:
    """``n`` consecutive days ending on :data:`LAST_DAY`, oldest first (ISO strings)."""
    return [(LAST_DAY - dt.timedelta(days=i)).isoformat() for i in reversed(range(n))]
