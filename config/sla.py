"""The SLA file (``config/sla.yaml``): targets per ticket priority and the team's business-hours calendar.

- :func:`load_sla_config` reads and validates the file; every problem is one :class:`SlaConfigError`
  line naming the file and the bad key (``calendar.hours.fri[0]: ...``).
- :class:`BusinessCalendar` is the validated calendar: an IANA zone, weekly opening periods (wall
  clock, several a day, possibly crossing midnight), holidays (the ``holidays`` package by country
  plus explicit dates) or ``always_open``. :meth:`BusinessCalendar.is_holiday` answers per local date.

Durations are business time: ``"30m"``, ``"4h"``, ``"1h30m"``, ``"2d"`` (a ``d`` is 24 hours of open
time, not a working day) or a bare integer of minutes; stored as whole seconds.

Must not: compute deadlines (that is :mod:`state.sla`), read the environment, or touch the database.
The rules themselves are written down in ``docs/sla.md``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from functools import lru_cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import holidays
import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from config.settings import CONFIG_DIR

DEFAULT_SLA_FILE = CONFIG_DIR / "sla.yaml"
"""The shipped SLA file (Mon-Fri 09:00-17:00 Europe/London, England's bank holidays)."""

PRIORITIES = ("urgent", "high", "normal", "low")
"""Ticket priorities, most urgent first; the same names as ``state.inbox.PRIORITIES`` (a test checks)."""
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
"""Keys of ``calendar.hours``; index = ``date.weekday()`` (0 = Monday)."""
MAX_TARGET_S = 60 * 24 * 3600
"""Longest target (60d = 1,440 business hours, 36 weeks of 40 hours): deadlines stay well inside the
400-day search horizon of :mod:`state.sla`."""
MAX_PERIODS_PER_DAY = 24
MAX_EXTRA_HOLIDAYS = 1000

_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?$")
_NESTED_KEY = re.compile(r"^([a-z_]+(?:\.[a-z_]+|\[\d+\])*): (.*)$")
_PERIOD = re.compile(r"^(\d{2}):(\d{2})-(\d{2}):(\d{2})$")


class SlaConfigError(ValueError):
    """The SLA file cannot be used; the one-line message names the file and the key."""


def parse_duration(value: Any) -> int:
    """Seconds of a duration: ``"30m"``, ``"4h"``, ``"1h30m"``, ``"2d"`` (24 h each) or an integer of
    minutes. Raises ``ValueError`` for anything else, zero, or more than 60 days."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like '30m', '4h', '1h30m', '2d' or a number of minutes")
    if isinstance(value, int):
        seconds = value * 60
    elif isinstance(value, str) and (match := _DURATION.match(value.strip().lower())) and any(match.groups()):
        days, hours, minutes = (int(g or 0) for g in match.groups())
        seconds = ((days * 24 + hours) * 60 + minutes) * 60
    else:
        raise ValueError(f"{value!r} is not a duration like '30m', '4h', '1h30m', '2d' or a number of minutes")
    if seconds <= 0:
        raise ValueError("a duration must be more than zero")
    if seconds > MAX_TARGET_S:
        raise ValueError(f"{value!r} is longer than the 60d limit")
    return seconds


@dataclass(frozen=True)
class OpeningPeriod:
    """One weekly opening period, in wall-clock minutes of its start day.

    ``weekday``: 0 = Monday. ``start``: 0..1439 minutes after local midnight. ``end``: minutes after
    the same midnight, ``start < end <= start + 1440``; above 1440 the period crosses midnight and
    ends on the next day (``fri 22:00-02:00`` is ``OpeningPeriod(4, 1320, 1560)``).
    """

    weekday: int
    start: int
    end: int


def parse_period(text: str, weekday: int) -> OpeningPeriod:
    """``"HH:MM-HH:MM"`` -> :class:`OpeningPeriod`. ``24:00`` is allowed as an end; an end at or before
    the start means the next day (``22:00-02:00``); equal times are refused as ambiguous (a whole day
    is ``00:00-24:00``). Raises ``ValueError``."""
    match = _PERIOD.match(text.strip()) if isinstance(text, str) else None
    if not match:
        raise ValueError(f"{text!r} is not a period like '09:00-17:00'")
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    if h1 > 23 or m1 > 59 or h2 > 24 or m2 > 59 or (h2 == 24 and m2):
        raise ValueError(f"{text!r}: times go from 00:00 to 23:59 (24:00 only as an end)")
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if start == end:
        raise ValueError(f"{text!r} is empty; a whole day is '00:00-24:00'")
    if end < start:
        end += 1440  # crosses midnight
    return OpeningPeriod(weekday, start, end)


@lru_cache(maxsize=256)
def _public_holidays(country: str, subdivision: str | None, year: int) -> frozenset[date]:
    # Building one year of the holidays package costs milliseconds; a deadline touches a year per day.
    return frozenset(holidays.country_holidays(country, subdiv=subdivision, years=year).keys())


class HolidayRules(BaseModel):
    """Which local dates are closed: the public holidays of ``country`` (ISO 3166-1 alpha-2, as the
    ``holidays`` package knows it, observed/substitute days included) and its ``subdivision``, plus
    explicit ``dates``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    country: str | None = None
    subdivision: str | None = None
    dates: frozenset[date] = Field(default_factory=frozenset, max_length=MAX_EXTRA_HOLIDAYS)

    @model_validator(mode="after")
    def _known_country(self) -> HolidayRules:
        if self.country is None:
            if self.subdivision is not None:
                raise ValueError("a subdivision needs a country")
            return self
        try:
            holidays.country_holidays(self.country, subdiv=self.subdivision, years=2026)
        except NotImplementedError as exc:  # the package's error for unknown country or subdivision
            raise ValueError(f"the holidays package does not know it: {exc}") from None
        return self


class BusinessCalendar(BaseModel):
    """The team's business hours. Build it from the YAML shape::

        BusinessCalendar(time_zone="Europe/London", hours={"mon": ["09:00-17:00"]},
                         holidays={"country": "GB", "subdivision": "ENG", "dates": ["2026-12-24"]})

    or ``BusinessCalendar(time_zone="UTC", always_open=True)`` for 24/7 (then no hours, no holidays).
    ``zone`` and ``periods`` are the parsed forms :mod:`state.sla` uses.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    time_zone: str = "Europe/London"
    always_open: bool = False
    hours: dict[str, list[str]] | None = None
    holidays: HolidayRules = Field(default_factory=HolidayRules)

    _zone: ZoneInfo = PrivateAttr()
    _periods: tuple[OpeningPeriod, ...] = PrivateAttr(default=())

    @field_validator("time_zone")
    @classmethod
    def _zone_exists(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not an IANA time zone (e.g. 'Europe/London')") from None
        return value

    @field_validator("hours")
    @classmethod
    def _weekday_keys(cls, value: dict[str, list[str]] | None) -> dict[str, list[str]] | None:
        if value is not None:
            unknown = sorted(set(value) - set(WEEKDAYS))
            if unknown:
                raise ValueError(f"unknown day {', '.join(map(repr, unknown))}; days are {', '.join(WEEKDAYS)}")
            for day, periods in value.items():
                if len(periods) > MAX_PERIODS_PER_DAY:
                    raise ValueError(f"{day}: at most {MAX_PERIODS_PER_DAY} periods a day")
        return value

    @model_validator(mode="after")
    def _parse(self) -> BusinessCalendar:
        rules = self.holidays
        if self.always_open:
            if self.hours:
                raise ValueError("always_open: true takes no hours (it is open every minute)")
            if rules.country or rules.dates:
                raise ValueError("always_open: true takes no holidays; for 24/7 with holidays give "
                                 "hours of '00:00-24:00' every day")
            periods: list[OpeningPeriod] = []
        else:
            hours = self.hours if self.hours is not None else {d: ["09:00-17:00"] for d in WEEKDAYS[:5]}
            periods = []
            for day, texts in hours.items():
                for index, text in enumerate(texts or []):
                    try:
                        periods.append(parse_period(text, WEEKDAYS.index(day)))
                    except ValueError as exc:
                        raise ValueError(f"hours.{day}[{index}]: {exc}") from None
            if not periods:
                raise ValueError("no opening hours: give at least one period, or always_open: true")
        self._zone = ZoneInfo(self.time_zone)
        self._periods = tuple(sorted(periods, key=lambda p: (p.weekday, p.start, p.end)))
        return self

    @property
    def zone(self) -> ZoneInfo:
        return self._zone

    @property
    def periods(self) -> tuple[OpeningPeriod, ...]:
        """Weekly periods sorted by weekday and start; empty when ``always_open``."""
        return self._periods

    def is_holiday(self, day: date) -> bool:
        """Whether local ``day`` is closed: an explicit date or a public holiday of the country."""
        rules = self.holidays
        if day in rules.dates:
            return True
        return rules.country is not None and day in _public_holidays(rules.country, rules.subdivision, day.year)


class SlaPolicy(BaseModel):
    """Business-time targets of one priority, in seconds (parsed from durations)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    first_response: int
    next_response: int
    resolution: int

    @field_validator("first_response", "next_response", "resolution", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> int:
        return parse_duration(value)


class SlaConfig(BaseModel):
    """``policies[priority]`` for each of :data:`PRIORITIES`, and the one ``calendar``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    policies: dict[str, SlaPolicy]
    calendar: BusinessCalendar = Field(default_factory=BusinessCalendar)

    @field_validator("policies")
    @classmethod
    def _every_priority(cls, value: dict[str, SlaPolicy]) -> dict[str, SlaPolicy]:
        unknown = sorted(set(value) - set(PRIORITIES))
        if unknown:
            raise ValueError(f"unknown priority {', '.join(map(repr, unknown))}; priorities are {', '.join(PRIORITIES)}")
        missing = [p for p in PRIORITIES if p not in value]
        if missing:
            raise ValueError(f"missing priority {', '.join(missing)}")
        return value


def _where(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not str(part).startswith("function-"):  # pydantic's name for a validator step
            out += ("." if out else "") + str(part)
    return out


def load_sla_config(path: Path = DEFAULT_SLA_FILE) -> SlaConfig:
    """Read and validate an SLA file (format: ``config/sla.yaml``, rules: ``docs/sla.md``).

    Raises:
        SlaConfigError: not YAML, not a mapping, or a bad value; one line, ``PATH: KEY: why``.
        OSError: the file cannot be read.
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise SlaConfigError(f"{path}{line}: not valid YAML ({getattr(exc, 'problem', None) or exc})") from None
    if not isinstance(data, dict):
        raise SlaConfigError(f"{path}: expected a mapping with 'policies' and 'calendar'")
    try:
        return SlaConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        message = str(first["msg"]).removeprefix("Value error, ")
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        where = _where(tuple(first["loc"]))
        nested = _NESTED_KEY.match(message)  # a model validator's "hours.fri[0]: why" joins the key
        if nested:
            where, message = f"{where}.{nested[1]}" if where else nested[1], nested[2]
        raise SlaConfigError(f"{path}: {where + ': ' if where else ''}{message}{more}") from None
