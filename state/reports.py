"""Support reports: CSAT, deflection, escalations, response and resolution times, SLA breaches.

One function, :func:`compute`, for one time window. Every number is about the tickets **opened**
in the window (``tickets.created_at`` in ``[since, until)``), replayed traffic excluded, so a
ticket counts in exactly one window whatever happens to it later:

- ``csat``: the ratings of those tickets (count, mean, share of 4-5), overall and by resolver
  (``bot`` / ``human``: who resolved the ticket last before the rating), intent and channel;
- ``deflection``: the share of those tickets that are resolved or closed and were never escalated
  (never handed to a person: no ``transition`` event to ``escalated``, whatever its reason);
- ``escalations``: how many of those tickets were escalated at least once, as a share of them,
  overall and by reason (a ticket escalated twice for different reasons counts once under each);
- ``first_response``: the median seconds from a ticket's first escalation to its first agent reply
  (``tickets.first_response_at``; tickets without one are left out and counted as ``waiting``);
- ``resolution``: the median seconds from opening to ``resolved_at`` (the last resolution);
- ``sla``: the ``sla_breached`` events of those tickets and how many tickets breached.

All of it is SQL aggregates (counts, averages, group-bys; a median is one ordered row read at an
offset), on SQLite and Postgres: the cost does not grow with the number of messages, and no
ticket list is loaded into memory. Reads only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, and_, case, exists, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from state.db import Database
from state.inbox import HIDDEN_CHANNELS
from state.models import CsatRating, Event, Ticket, utcnow

DEFAULT_DAYS = 30
RESOLVER_LABELS = {"bot": "bot", "agent": "human"}
NO_INTENT = "(none)"


@dataclass(frozen=True)
class CsatStats:
    """``count`` ratings, their ``mean`` (1-5) and ``satisfied`` (the share rated 4 or 5, 0-1);
    both None without ratings."""

    count: int
    mean: float | None
    satisfied: float | None


@dataclass(frozen=True)
class Median:
    """``seconds``: the median duration (None when ``count`` is 0) over ``count`` tickets."""

    count: int
    seconds: float | None


@dataclass
class Report:
    """The numbers of one window; :meth:`as_dict` is the JSON form (``helpline report --json``)."""

    since: datetime
    until: datetime
    tickets: int
    csat: CsatStats
    csat_by_resolver: dict[str, CsatStats] = field(default_factory=dict)
    csat_by_intent: dict[str, CsatStats] = field(default_factory=dict)
    csat_by_channel: dict[str, CsatStats] = field(default_factory=dict)
    deflected: int = 0
    deflection: float | None = None
    escalated: int = 0
    escalation_rate: float | None = None
    escalations_by_reason: dict[str, dict[str, Any]] = field(default_factory=dict)
    first_response: Median = Median(0, None)
    first_response_waiting: int = 0
    resolution: Median = Median(0, None)
    sla_breaches: int = 0
    sla_breached_tickets: int = 0

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON types: times as ISO 8601 UTC, shares 0-1 rounded to 4 places, seconds to 0.1."""
        data = asdict(self)
        data["since"], data["until"] = self.since.isoformat(), self.until.isoformat()
        return data


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _stats(count: int, total: Any, satisfied: Any) -> CsatStats:
    if not count:
        return CsatStats(0, None, None)
    return CsatStats(int(count), round(float(total) / count, 3), _share(int(satisfied or 0), int(count)))


def _seconds(backend: str, later: Any, earlier: Any) -> ColumnElement[Any]:
    """``later - earlier`` in seconds, as SQL for ``backend`` (``sqlite`` or ``postgresql``)."""
    if backend == "sqlite":
        return (func.julianday(later) - func.julianday(earlier)) * 86400.0
    return func.extract("epoch", later - earlier)


async def _median(session: AsyncSession, values: Select[Any]) -> Median:
    """The median of the one-column query ``values`` (NULLs already excluded): its count, then the
    middle one or two rows read at an offset, so no list of values is loaded."""
    sub = values.subquery()
    column = sub.c[0]
    count = int(await session.scalar(select(func.count()).select_from(sub)) or 0)
    if not count:
        return Median(0, None)
    middle = list(await session.scalars(
        select(column).order_by(column).offset((count - 1) // 2).limit(2 - count % 2)
    ))
    return Median(count, round(sum(float(v) for v in middle) / len(middle), 1))


def _escalation_events() -> Any:
    """``(ticket_id, reason, created_at)`` of every transition to ``escalated``, as a subquery: its
    columns are plain names, so GROUP BY works on Postgres, where a JSON path with a bound key is
    not recognised as the same expression twice."""
    return (
        select(
            Event.ticket_id.label("ticket_id"),
            Event.payload["reason"].as_string().label("reason"),
            Event.created_at.label("created_at"),
        )
        .where(Event.kind == "transition", Event.payload["to"].as_string() == "escalated")
        .subquery()
    )


async def compute(db: Database, since: datetime | None = None, until: datetime | None = None) -> Report:
    """The report for tickets opened in ``[since, until)`` (timezone-aware; default: the last
    :data:`DEFAULT_DAYS` days up to now). Raises ``ValueError`` when ``since`` is not before
    ``until`` or a time is naive."""
    until = until or utcnow()
    since = since or until - timedelta(days=DEFAULT_DAYS)
    if since.tzinfo is None or until.tzinfo is None:
        raise ValueError("since and until must be timezone-aware (UTC)")
    if since >= until:
        raise ValueError(f"since ({since.isoformat()}) must be before until ({until.isoformat()})")
    in_window = and_(Ticket.created_at >= since, Ticket.created_at < until, Ticket.channel.not_in(HIDDEN_CHANNELS))
    window_ids = select(Ticket.id).where(in_window)
    escalations = _escalation_events()
    async with db.sessions() as session:
        tickets = int(await session.scalar(select(func.count()).select_from(Ticket).where(in_window)) or 0)

        satisfied = func.sum(case((CsatRating.rating >= 4, 1), else_=0))
        rated = (
            select(func.count(CsatRating.id), func.sum(CsatRating.rating), satisfied)
            .where(CsatRating.ticket_id.in_(window_ids))
        )
        overall = _stats(*(await session.execute(rated)).one())
        by: dict[str, dict[str, CsatStats]] = {}
        for name, column in (("resolver", CsatRating.resolved_by), ("intent", CsatRating.intent),
                             ("channel", CsatRating.channel)):
            rows = await session.execute(
                select(column, func.count(CsatRating.id), func.sum(CsatRating.rating), satisfied)
                .where(CsatRating.ticket_id.in_(window_ids)).group_by(column).order_by(column)
            )
            by[name] = {
                (RESOLVER_LABELS.get(key, key) if name == "resolver" else key or NO_INTENT): _stats(n, total, good)
                for key, n, total, good in rows
            }

        ever_escalated = exists().where(escalations.c.ticket_id == Ticket.id)
        deflected = int(await session.scalar(
            select(func.count()).select_from(Ticket)
            .where(in_window, Ticket.state.in_(("resolved", "closed")), ~ever_escalated)
        ) or 0)
        escalated = int(await session.scalar(
            select(func.count(func.distinct(escalations.c.ticket_id))).where(escalations.c.ticket_id.in_(window_ids))
        ) or 0)
        reasons = await session.execute(
            select(escalations.c.reason, func.count(func.distinct(escalations.c.ticket_id)))
            .where(escalations.c.ticket_id.in_(window_ids))
            .group_by(escalations.c.reason).order_by(escalations.c.reason)
        )
        by_reason = {
            reason or "(unknown)": {"tickets": int(n), "rate": _share(int(n), tickets)} for reason, n in reasons
        }

        first_escalation = (
            select(escalations.c.ticket_id.label("ticket_id"), func.min(escalations.c.created_at).label("at"))
            .group_by(escalations.c.ticket_id).subquery()
        )
        first_response = await _median(session, select(
            _seconds(db.backend, Ticket.first_response_at, first_escalation.c.at).label("s")
        ).join_from(Ticket, first_escalation, first_escalation.c.ticket_id == Ticket.id)
            .where(in_window, Ticket.first_response_at.is_not(None)))
        resolution = await _median(session, select(
            _seconds(db.backend, Ticket.resolved_at, Ticket.created_at).label("s")
        ).where(in_window, Ticket.resolved_at.is_not(None)))

        breach = select(Event.ticket_id).where(Event.kind == "sla_breached", Event.ticket_id.in_(window_ids))
        breaches = int(await session.scalar(select(func.count()).select_from(breach.subquery())) or 0)
        breached_tickets = int(await session.scalar(
            select(func.count(func.distinct(Event.ticket_id)))
            .where(Event.kind == "sla_breached", Event.ticket_id.in_(window_ids))
        ) or 0)

    return Report(
        since=since, until=until, tickets=tickets, csat=overall,
        csat_by_resolver=by["resolver"], csat_by_intent=by["intent"], csat_by_channel=by["channel"],
        deflected=deflected, deflection=_share(deflected, tickets),
        escalated=escalated, escalation_rate=_share(escalated, tickets), escalations_by_reason=by_reason,
        first_response=first_response, first_response_waiting=escalated - first_response.count,
        resolution=resolution,
        sla_breaches=breaches, sla_breached_tickets=breached_tickets,
    )
