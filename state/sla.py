"""SLA deadline arithmetic: business time on a :class:`config.sla.BusinessCalendar`, minus pauses.

- :func:`due_at`: the UTC instant at which a business-time budget started at ``start`` runs out.
- :func:`business_seconds_between`: business seconds from ``a`` to ``b`` (elapsed, countdowns).

The rules (``docs/sla.md``):

- An instant is *open* when the wall clock of the calendar's zone at that instant reads a time inside
  an opening period whose start date is not a holiday, and no pause covers it. Membership is by wall
  clock, so a period has its real elapsed length on DST days: wall times skipped by a spring-forward
  gap never occur and count nothing (``01:00-03:00`` on 2026-03-29 in London is one hour); wall times
  repeated by a fall-back count each time they occur (``01:00-03:00`` on 2026-10-25 is three hours).
- A period belongs to the local date it starts on: a holiday closes the periods that start that day,
  including the part of a ``22:00-02:00`` period after midnight; a holiday on the next day does not.
- Overlapping periods count once. A pause is ``[start, end)`` in UTC; ``end=None`` is "still paused".
- ``always_open`` calendars are open at every instant (pauses still apply).

Work is proportional to the days searched (each date's periods become UTC intervals in one step,
with the zone's offset changes found by probing, never minute by minute) and bounded: a deadline
more than :data:`HORIZON` of search past the start (or past the end of the last finished pause)
raises ``ValueError``, as does a calendar with no opening period.

Must not: read the clock, the config file or the database; callers pass everything in.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Iterator, Sequence
from datetime import date, datetime, time, timedelta, timezone
from functools import lru_cache
from zoneinfo import ZoneInfo

from config.sla import BusinessCalendar

UTC = timezone.utc
HORIZON = timedelta(days=400)
"""Longest search for a deadline, counted from the start or the end of the last finished pause."""
MAX_SPAN = timedelta(days=800)
"""Longest ``a``..``b`` span :func:`business_seconds_between` accepts (about two years; ~30 ms of CPU
on a 40-hour week, so a countdown never holds the event loop long)."""

_FOREVER = datetime(9999, 1, 1, tzinfo=UTC)
_DAY = timedelta(days=1)
_PROBE = timedelta(hours=6)
# Wall time W happens at UTC W - offset, offsets lie within -12h..+14h: a day either side is safe.
_SLACK = timedelta(days=1)

Pause = tuple[datetime, datetime | None]
"""``(start, end)`` in UTC, ``end`` None while the ticket still waits on the customer."""


def due_at(
    start: datetime, budget_s: float, calendar: BusinessCalendar, pauses: Iterable[Pause] = (),
) -> datetime | None:
    """The UTC instant when ``budget_s`` seconds of open business time, counted from ``start``, are used.

    Args:
        start: timezone-aware instant the clock starts (any zone; the result is UTC).
        budget_s: business seconds, ``>= 0`` (``0`` -> ``start``). Microsecond precision.
        calendar: the team's calendar (:class:`config.sla.BusinessCalendar`).
        pauses: ``(start, end)`` intervals (aware; ``end`` None = still paused) during which the clock
            stops; any order, overlaps allowed.

    Returns:
        The earliest instant ``t >= start`` with ``business_seconds_between(start, t) == budget_s``, in
        UTC; None when an open-ended pause begins before the budget is used (paused forever).

    Raises:
        ValueError: a naive datetime, a negative budget, a pause ending before it starts, a calendar
            with no opening period, or no deadline within :data:`HORIZON` of search.
    """
    start = _utc(start, "start")
    if not 0 <= budget_s < math.inf:
        raise ValueError(f"budget_s must be >= 0 and finite, not {budget_s}")
    need = timedelta(seconds=budget_s)
    if not need:
        return start
    merged = _merge_pauses(pauses)
    finished = [end for _, end in merged if end != _FOREVER]
    limit = max([start, *finished]) + HORIZON
    for a, b in _open_unpaused(calendar, start, merged, limit):
        if b == _FOREVER and a == _FOREVER:  # an open-ended pause began: the clock never runs again
            return None
        if b - a >= need:
            return a + need
        need -= b - a
    raise ValueError(f"no SLA deadline within {HORIZON.days} days of search: the calendar has too little open time")


def business_seconds_between(
    a: datetime, b: datetime, calendar: BusinessCalendar, pauses: Iterable[Pause] = (),
) -> float:
    """Open business seconds in ``[a, b)``, minus pauses; negative (``-between(b, a)``) when ``b < a``.

    For a countdown pass ``(now, due)``: positive is time left, negative is time overdue. Same rules and
    arguments as :func:`due_at`. Raises ``ValueError`` for naive datetimes, a bad pause, a calendar
    with no opening period, or a span over :data:`MAX_SPAN`.
    """
    a, b = _utc(a, "a"), _utc(b, "b")
    if b < a:
        return -business_seconds_between(b, a, calendar, pauses)
    if b - a > MAX_SPAN:
        raise ValueError(f"span over {MAX_SPAN.days} days")
    total = timedelta(0)
    for lo, hi in _open_unpaused(calendar, a, _merge_pauses(pauses), b):
        if lo >= b:
            break
        total += min(hi, b) - lo
    return total.total_seconds()


# --- open intervals ----------------------------------------------------------------------------------

def _open_unpaused(
    calendar: BusinessCalendar, start: datetime, pauses: Sequence[tuple[datetime, datetime]], until: datetime,
) -> Iterator[tuple[datetime, datetime]]:
    """Sorted disjoint UTC intervals that are open and not paused, from ``start``, beginning before
    ``until``. Yields ``(_FOREVER, _FOREVER)`` once and stops when an open-ended pause is reached."""
    cursor = start
    index = 0
    while True:
        # Jump over pauses: restart the calendar walk at a pause's end instead of walking through it.
        while index < len(pauses) and pauses[index][1] <= cursor:
            index += 1
        if index < len(pauses) and pauses[index][0] <= cursor:
            if pauses[index][1] == _FOREVER:
                yield _FOREVER, _FOREVER
                return
            cursor = pauses[index][1]
            continue
        next_pause = pauses[index][0] if index < len(pauses) else _FOREVER
        for lo, hi in _open_intervals(calendar, cursor, until):
            if lo >= next_pause:
                cursor = lo
                break
            if hi > next_pause:
                yield lo, next_pause
                cursor = next_pause  # the pause is skipped above; the walk resumes where it ends
                break
            yield lo, hi
        else:
            return


def _open_intervals(calendar: BusinessCalendar, start: datetime, until: datetime) -> Iterator[tuple[datetime, datetime]]:
    """Calendar-open UTC intervals, sorted, merged, clipped to begin at ``start``, up to the first that
    begins at or after ``until`` (exclusive)."""
    if calendar.always_open:
        yield start, _FOREVER
        return
    periods = calendar.periods
    if not periods:
        raise ValueError("the calendar has no opening period, so no business time ever passes")
    by_weekday: list[list[tuple[int, int]]] = [[] for _ in range(7)]
    for p in periods:
        by_weekday[p.weekday].append((p.start, p.end))
    zone = calendar.zone
    # A period starting on local date S lies in UTC [S - slack, S + 2 days + slack]; begin a day early
    # for yesterday's periods that cross midnight.
    day = start.astimezone(zone).date() - _DAY
    last = until.astimezone(zone).date() + _DAY
    heap: list[tuple[datetime, datetime]] = []
    current: tuple[datetime, datetime] | None = None
    while day <= last:
        todays = by_weekday[day.weekday()]
        if todays and not calendar.is_holiday(day):
            for lo, hi in _day_intervals(zone, day, todays):
                if hi > start:
                    heapq.heappush(heap, (max(lo, start), hi))
        day += _DAY
        # Nothing from later days can begin before the next day's midnight minus the slack.
        floor = _wall(day) - _SLACK
        while heap and heap[0][0] < floor:
            lo, hi = heapq.heappop(heap)
            if current is not None and lo <= current[1]:
                current = (current[0], max(current[1], hi))
                continue
            if current is not None:
                yield current
            if lo >= until:
                return
            current = (lo, hi)
    while heap:
        lo, hi = heapq.heappop(heap)
        if current is not None and lo <= current[1]:
            current = (current[0], max(current[1], hi))
            continue
        if current is not None:
            yield current
        current = (lo, hi)
    if current is not None and current[0] < until:
        yield current


def _day_intervals(zone: ZoneInfo, day: date, periods: Sequence[tuple[int, int]]) -> Iterator[tuple[datetime, datetime]]:
    """The UTC instants whose wall clock lies in each period of local ``day``: per constant-offset
    segment of the zone, ``[max(seg_lo, W1 - off), min(seg_hi, W2 - off))``."""
    midnight = _wall(day)
    segments = _segments(zone, midnight - _SLACK, midnight + 2 * _DAY + _SLACK)
    for start_min, end_min in periods:
        w1 = midnight + timedelta(minutes=start_min)
        w2 = midnight + timedelta(minutes=end_min)
        for seg_lo, seg_hi, offset in segments:
            lo, hi = max(seg_lo, w1 - offset), min(seg_hi, w2 - offset)
            if lo < hi:
                yield lo, hi


def _wall(day: date) -> datetime:
    """Local midnight of ``day`` written as if it were UTC (wall time W; its instant is W - offset)."""
    return datetime.combine(day, time(), UTC)


# --- the zone's offset changes ----------------------------------------------------------------------

def _segments(zone: ZoneInfo, lo: datetime, hi: datetime) -> list[tuple[datetime, datetime, timedelta]]:
    """``[lo, hi)`` cut where the zone's UTC offset changes: ``(seg_lo, seg_hi, offset)`` each."""
    out: list[tuple[datetime, datetime, timedelta]] = []
    seg_lo, offset = lo, _offset(zone, lo)
    utc_day = lo.date()
    while utc_day <= hi.date():
        for instant, new_offset in _transitions(zone, utc_day.toordinal()):
            if seg_lo < instant < hi:
                out.append((seg_lo, instant, offset))
                seg_lo = instant
            if instant < hi:
                offset = new_offset
        utc_day += _DAY
    out.append((seg_lo, hi, offset))
    return out


@lru_cache(maxsize=8192)
def _transitions(zone: ZoneInfo, utc_ordinal: int) -> tuple[tuple[datetime, timedelta], ...]:
    """Offset changes in one UTC day, ``(instant, offset from then on)``, found by probing every six
    hours and bisecting to the second (zoneinfo has no public transition list; tzdata changes offset
    at whole seconds and never twice within six hours)."""
    day_start = datetime.combine(date.fromordinal(utc_ordinal), time(), UTC)
    found: list[tuple[datetime, timedelta]] = []
    lo = day_start
    lo_offset = _offset(zone, lo)
    while lo < day_start + _DAY:
        hi = lo + _PROBE
        hi_offset = _offset(zone, hi)
        if hi_offset != lo_offset:
            a, b = 0, int(_PROBE.total_seconds())  # offset(lo + a) == old, offset(lo + b) == new
            while b - a > 1:
                mid = (a + b) // 2
                if _offset(zone, lo + timedelta(seconds=mid)) == lo_offset:
                    a = mid
                else:
                    b = mid
            found.append((lo + timedelta(seconds=b), hi_offset))
        lo, lo_offset = hi, hi_offset
    return tuple(found)


def _offset(zone: ZoneInfo, instant: datetime) -> timedelta:
    offset = instant.astimezone(zone).utcoffset()
    assert offset is not None  # a ZoneInfo always has one
    return offset


# --- inputs -----------------------------------------------------------------------------------------

def _utc(value: datetime, name: str) -> datetime:
    if not isinstance(value, datetime):
        raise ValueError(f"{name} must be a datetime, not {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware (UTC), not naive: {value.isoformat()}")
    return value.astimezone(UTC)


def _merge_pauses(pauses: Iterable[Pause]) -> list[tuple[datetime, datetime]]:
    """Sorted, merged ``(start, end)`` in UTC; an open end becomes ``_FOREVER``."""
    spans: list[tuple[datetime, datetime]] = []
    for index, (lo, hi) in enumerate(pauses):
        lo_utc = _utc(lo, f"pauses[{index}] start")
        hi_utc = _FOREVER if hi is None else _utc(hi, f"pauses[{index}] end")
        if hi_utc < lo_utc:
            raise ValueError(f"pauses[{index}] ends before it starts ({lo_utc.isoformat()} > {hi_utc.isoformat()})")
        if hi_utc > lo_utc:
            spans.append((lo_utc, hi_utc))
    spans.sort()
    merged: list[tuple[datetime, datetime]] = []
    for lo_utc, hi_utc in spans:
        if merged and lo_utc <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi_utc))
        else:
            merged.append((lo_utc, hi_utc))
    return merged
