"""The replies file (``config/replies.yaml``): what the assistant says in its own words.

The assistant's and the shop's names, the widget's greeting and suggested questions, the clarifying
question, the off-topic reply, the handoff texts (with the team's hours and first-response target
from the SLA file) and the apologies said to an upset customer, by topic. Everything else the bot
says is quoted from the knowledge base or built by an order handler.

- :func:`load_replies` reads and validates the file; a problem is one :class:`RepliesError` line
  naming the file and the key (``handoff.open: unknown placeholder {wait}``).
- :class:`Replies` fills the placeholders: ``{assistant}``, ``{shop}``, ``{capabilities}`` anywhere;
  ``{hours}`` and ``{first_response}`` in handoff texts (:meth:`Replies.handoff`).

Must not: decide when a text is said (that is the router's job), read the environment, or touch the
database.
"""

from __future__ import annotations

import string
from datetime import datetime, timezone
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from config.settings import CONFIG_DIR
from config.sla import WEEKDAYS, BusinessCalendar, SlaConfig
from config.yaml_models import load_yaml_model

DEFAULT_REPLIES_FILE = CONFIG_DIR / "replies.yaml"
MAX_SUGGESTIONS = 4
"""Suggested questions and clarifying topics shown at once (buttons must fit a phone's width)."""
MAX_TEXT_CHARS = 600

_COMMON = {"assistant", "shop", "capabilities"}
_HANDOFF = _COMMON | {"hours", "first_response"}


class RepliesError(ValueError):
    """The replies file cannot be used; the one-line message names the file and the key."""


def _placeholders(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}


class Handoff(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    open: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)
    closed: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)

    @field_validator("open", "closed")
    @classmethod
    def _known(cls, value: str) -> str:
        return _check(value, _HANDOFF)


def _check(value: str, allowed: set[str]) -> str:
    try:
        names = _placeholders(value)
    except ValueError as exc:  # a lone "{" or "}"
        raise ValueError(f"{exc} (write {{{{ and }}}} for a literal brace)") from None
    unknown = sorted(names - allowed)
    if unknown:
        raise ValueError(f"unknown placeholder {{{unknown[0]}}} (allowed: {', '.join(sorted(allowed))})")
    return value


class Replies(BaseModel):
    """The validated replies file. Texts are returned with placeholders filled."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    assistant_name: str = Field(min_length=1, max_length=60)
    shop_name: str = Field(min_length=1, max_length=80)
    capabilities: str = Field(min_length=1, max_length=200)
    greeting: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)
    suggestions: list[str] = Field(default_factory=list, max_length=MAX_SUGGESTIONS)
    clarify: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)
    off_topic: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)
    handoff: Handoff
    apologies: dict[str, str] = Field(default_factory=dict)
    topics: dict[str, str] = Field(default_factory=dict)

    @field_validator("greeting", "clarify", "off_topic")
    @classmethod
    def _common(cls, value: str) -> str:
        return _check(value, _COMMON)

    @field_validator("suggestions")
    @classmethod
    def _short(cls, value: list[str]) -> list[str]:
        for i, text in enumerate(value):
            if not text.strip() or len(text) > 80:
                raise ValueError(f"suggestion {i + 1} must be 1-80 characters")
        return value

    @field_validator("apologies")
    @classmethod
    def _apologies(cls, value: dict[str, str]) -> dict[str, str]:
        if "default" not in value:
            raise ValueError("needs a 'default' apology")
        for key, text in value.items():
            if not text.strip() or len(text) > MAX_TEXT_CHARS:
                raise ValueError(f"{key}: must be 1-{MAX_TEXT_CHARS} characters")
            _check(text, _COMMON)
        return value

    @field_validator("topics")
    @classmethod
    def _topics(cls, value: dict[str, str]) -> dict[str, str]:
        for key, label in value.items():
            if not label.strip() or len(label) > 40:
                raise ValueError(f"{key}: a topic label must be 1-40 characters")
        return value

    @model_validator(mode="after")
    def _renders(self) -> Replies:
        for field in ("greeting", "clarify", "off_topic"):
            self._fill(getattr(self, field))
        return self

    # --- texts ------------------------------------------------------------------------------------
    def _fill(self, text: str, **extra: str) -> str:
        return text.format(
            assistant=self.assistant_name, shop=self.shop_name, capabilities=self.capabilities, **extra
        )

    def fill(self, text: str) -> str:
        """``text`` (a canned reply of ``config/intents.yaml``) with ``{assistant}``, ``{shop}`` and
        ``{capabilities}`` filled; any other brace is left as it is."""
        for name, value in (("assistant", self.assistant_name), ("shop", self.shop_name),
                            ("capabilities", self.capabilities)):
            text = text.replace("{" + name + "}", value)
        return text

    def greeting_text(self) -> str:
        """The widget's opening message."""
        return self._fill(self.greeting)

    def clarify_text(self) -> str:
        return self._fill(self.clarify)

    def off_topic_text(self) -> str:
        return self._fill(self.off_topic)

    def apology(self, topic: str | None) -> str:
        """The apology for ``topic`` (a playbook rule id such as ``refund``), else the default."""
        return self._fill(self.apologies.get(topic or "", self.apologies["default"]))

    def topic_label(self, intent: str) -> str | None:
        """The quick-reply label offering ``intent`` in a clarifying question, or None."""
        return self.topics.get(intent)

    def handoff_text(self, sla: SlaConfig | None, now: datetime | None = None) -> str:
        """What the customer hears at a handoff at ``now`` (UTC; default: the current time): the
        ``open`` text while ``sla``'s calendar is open (or with no calendar), else ``closed``."""
        if sla is None:
            return self._fill(self.handoff.open, hours="during business hours", first_response="a few hours")
        calendar = sla.calendar
        now = now or datetime.now(timezone.utc)
        text = self.handoff.open if is_open(calendar, now) else self.handoff.closed
        return self._fill(
            text, hours=describe_hours(calendar), first_response=describe_duration(
                sla.policies["normal"].first_response
            ),
        )


def is_open(calendar: BusinessCalendar, now: datetime) -> bool:
    """Whether ``calendar`` is open at the instant ``now`` (aware)."""
    if calendar.always_open:
        return True
    local = now.astimezone(calendar.zone)
    if calendar.is_holiday(local.date()):
        return False
    minute = local.hour * 60 + local.minute
    for period in calendar.periods:
        start, end = period.start, period.end
        if period.weekday == local.weekday() and start <= minute < min(end, 24 * 60):
            return True
        # A period crossing midnight ends on the next day.
        if end > 24 * 60 and period.weekday == (local.weekday() - 1) % 7 and minute < end - 24 * 60:
            return True
    return False


def describe_hours(calendar: BusinessCalendar) -> str:
    """``"Monday to Friday, 09:00-17:00 (Europe/London)"``, or ``"around the clock"``."""
    if calendar.always_open:
        return "around the clock"
    hours = calendar.hours or {}
    days = [d for d in WEEKDAYS if hours.get(d)]
    if not days:
        return "on working days"
    names = dict(zip(WEEKDAYS, ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")))
    same = all(hours[d] == hours[days[0]] for d in days)
    consecutive = [WEEKDAYS.index(d) for d in days] == list(range(WEEKDAYS.index(days[0]), WEEKDAYS.index(days[0]) + len(days)))
    if same and consecutive and len(days) > 1:
        span = f"{names[days[0]]} to {names[days[-1]]}, {', '.join(hours[days[0]])}"
    elif same:
        span = f"{', '.join(names[d] for d in days)}, {', '.join(hours[days[0]])}"
    else:
        span = "; ".join(f"{names[d]} {', '.join(hours[d])}" for d in days)
    return f"{span} ({calendar.time_zone} time)"


def describe_duration(seconds: int) -> str:
    """``14400`` -> ``"4 hours"``, ``1800`` -> ``"30 minutes"``, ``5400`` -> ``"1 hour 30 minutes"``."""
    hours, minutes = divmod(int(seconds) // 60, 60)
    parts = []
    if hours:
        parts.append(f"{hours} hour{'s' if hours != 1 else ''}")
    if minutes or not parts:
        parts.append(f"{minutes} minute{'s' if minutes != 1 else ''}")
    return " ".join(parts)


def load_replies(path: Path = DEFAULT_REPLIES_FILE) -> Replies:
    """Read and validate a replies file (format: ``config/replies.yaml``).

    Raises:
        RepliesError: not YAML, not a mapping, or a bad value; one line, ``PATH: KEY: why``.
        OSError: the file cannot be read.
    """
    return load_yaml_model(Path(path), Replies, RepliesError, "assistant_name, shop_name, greeting, ...")
