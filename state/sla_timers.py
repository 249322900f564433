"""SLA timers of handed-off tickets: when each service-level target starts, pauses, is met, and is breached.

A ticket that reaches the inbox is measured against its priority's policy (``config/sla.yaml``, see
docs/sla.md), in business time of the configured calendar (:func:`state.sla.due_at`):

==================  ===================================================================================
``first_response``  starts when the ticket escalates; met by the first agent reply
``next_response``   starts at each customer message after an agent has replied; met by the next reply
``resolution``      starts when the ticket escalates; met when it is resolved. Its clock pauses while
                    the ticket waits on the customer (from an agent's reply to the customer's next
                    message): a paused timer has ``due_at`` NULL and keeps the business seconds it
                    had left in ``budget_s``; resuming restarts the clock from then with that budget
==================  ===================================================================================

Handing the ticket back to the bot cancels its running timers; a priority change re-computes them
against the new policy, keeping the business time already used. ``tickets.sla_due_at`` is the earliest
due time of the ticket's running timers (the queue's order).

A breach (:func:`breach`) is one conditional UPDATE from ``running`` with ``due_at`` in the past, so
it happens exactly once however many processes run the ``sla_tick`` job at once, or a restarted
process runs it again; the winner marks the ticket (``sla_breached_at``), raises its priority one
step, records an ``sla_breached`` event and, when configured, a ``ticket.sla_breached`` webhook event,
in that same transaction.

Every function here runs inside the caller's transaction (an :class:`AsyncSession` from
``Database.write``) and commits nothing. Must not: schedule jobs or send anything (the app does, after
the commit: :mod:`helpline.jobs`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from config.sla import SlaConfig
from state import webhooks as webhook_events
from state.db import Database
from state.models import Event, SlaTimer, Ticket, utcnow
from state.sla import business_seconds_between, due_at

FIRST_RESPONSE, NEXT_RESPONSE, RESOLUTION = "first_response", "next_response", "resolution"
TARGETS = (FIRST_RESPONSE, NEXT_RESPONSE, RESOLUTION)
RUNNING, MET, BREACHED, CANCELLED = "running", "met", "breached", "cancelled"
RAISE = {"low": "normal", "normal": "high", "high": "urgent", "urgent": "urgent"}
"""The priority a breach raises a ticket to."""


@dataclass(frozen=True)
class Breach:
    """A breach this call recorded: the timer, its ticket and target, when it was due, the ticket's
    priority before and after, and the webhook event row to queue (None when none is configured)."""

    timer_id: int
    ticket_id: int
    target: str
    due_at: datetime
    priority_from: str
    priority_to: str
    webhook_event: int | None


def _budget(config: SlaConfig, priority: str, target: str) -> int:
    policy = config.policies.get(priority) or config.policies["normal"]
    return int(getattr(policy, target))


async def _running(session: AsyncSession, ticket_id: int, targets: tuple[str, ...] = TARGETS) -> list[SlaTimer]:
    return list(await session.scalars(
        select(SlaTimer).where(SlaTimer.ticket_id == ticket_id, SlaTimer.status == RUNNING,
                               SlaTimer.target.in_(targets)).order_by(SlaTimer.id)
    ))


async def _refresh_due(session: AsyncSession, ticket: Ticket) -> None:
    await session.flush()
    ticket.sla_due_at = await session.scalar(
        select(func.min(SlaTimer.due_at)).where(SlaTimer.ticket_id == ticket.id, SlaTimer.status == RUNNING)
    )


async def _start(session: AsyncSession, ticket: Ticket, target: str, config: SlaConfig, now: datetime,
                 started: list[SlaTimer]) -> None:
    if await _running(session, ticket.id, (target,)):
        return  # one running timer per target
    budget = _budget(config, ticket.priority, target)
    timer = SlaTimer(ticket_id=ticket.id, target=target, priority=ticket.priority, budget_s=budget,
                     started_at=now, due_at=due_at(now, budget, config.calendar), status=RUNNING)
    session.add(timer)
    started.append(timer)


async def on_escalated(session: AsyncSession, ticket: Ticket, config: SlaConfig, now: datetime | None = None,
                       *, reopened: bool = False) -> list[SlaTimer]:
    """The ticket reached the inbox: the first-response and resolution clocks start (a target
    already running keeps its clock), also when it comes back after a hand-back to the bot: the
    customer is waiting for a person again. ``reopened``: an agent took a resolved ticket back
    (the agent is already on it): only the resolution clock starts. Returns the timers started."""
    now = now or utcnow()
    started: list[SlaTimer] = []
    targets = (RESOLUTION,) if reopened else (FIRST_RESPONSE, RESOLUTION)
    for target in targets:
        await _start(session, ticket, target, config, now, started)
    await _refresh_due(session, ticket)
    return started


async def on_agent_reply(session: AsyncSession, ticket: Ticket, config: SlaConfig, now: datetime | None = None) -> None:
    """An agent answered: first and next response are met, the resolution clock pauses (the ticket
    waits on the customer); the first reply after the handoff is stamped on the ticket."""
    now = now or utcnow()
    if ticket.first_response_at is None:
        ticket.first_response_at = now
    for timer in await _running(session, ticket.id, (FIRST_RESPONSE, NEXT_RESPONSE)):
        timer.status, timer.stopped_at = MET, now
    for timer in await _running(session, ticket.id, (RESOLUTION,)):
        if timer.due_at is not None:
            used = business_seconds_between(timer.started_at, now, config.calendar)
            timer.budget_s = max(0, int(timer.budget_s - used))
            timer.started_at, timer.due_at = now, None
    await _refresh_due(session, ticket)


async def on_customer_message(session: AsyncSession, ticket: Ticket, config: SlaConfig,
                              now: datetime | None = None) -> list[SlaTimer]:
    """The customer wrote while a person has the ticket: after an agent's reply the next-response
    clock starts, and a paused resolution clock resumes. Returns the timers started or resumed."""
    now = now or utcnow()
    changed: list[SlaTimer] = []
    waiting_first = await _running(session, ticket.id, (FIRST_RESPONSE,))
    if ticket.first_response_at is not None and not waiting_first:  # a person already answered
        await _start(session, ticket, NEXT_RESPONSE, config, now, changed)
    for timer in await _running(session, ticket.id, (RESOLUTION,)):
        if timer.due_at is None:
            timer.started_at, timer.due_at = now, due_at(now, timer.budget_s, config.calendar)
            changed.append(timer)
    await _refresh_due(session, ticket)
    return changed


async def on_priority(session: AsyncSession, ticket: Ticket, config: SlaConfig, now: datetime | None = None) -> list[SlaTimer]:
    """The ticket's priority changed: each running timer is measured against the new policy, the
    business time it already used kept. Returns the timers whose due time moved."""
    now = now or utcnow()
    moved = _remeasure(await _running(session, ticket.id), ticket.priority, config, now)
    await _refresh_due(session, ticket)
    return moved


def _remeasure(timers: list[SlaTimer], priority: str, config: SlaConfig, now: datetime) -> list[SlaTimer]:
    moved = []
    for timer in timers:
        if timer.priority == priority or timer.status != RUNNING:
            continue
        used = _budget(config, timer.priority, timer.target) - timer.budget_s
        if timer.due_at is not None:
            used += business_seconds_between(timer.started_at, now, config.calendar)
        timer.budget_s = max(0, int(_budget(config, priority, timer.target) - used))
        timer.priority, timer.started_at = priority, now
        if timer.due_at is not None:
            timer.due_at = due_at(now, timer.budget_s, config.calendar)
            moved.append(timer)
    return moved


async def stop(session: AsyncSession, ticket: Ticket, *, resolved: bool, now: datetime | None = None) -> None:
    """The ticket left the inbox: resolved (the resolution target is met, open response targets are
    cancelled) or handed back to the bot (every running timer is cancelled)."""
    now = now or utcnow()
    for timer in await _running(session, ticket.id):
        timer.status = MET if resolved and timer.target == RESOLUTION else CANCELLED
        timer.stopped_at = now
    await _refresh_due(session, ticket)


async def breach(db: Database, timer_id: int, config: SlaConfig, *, webhooks_enabled: bool,
                 now: datetime | None = None) -> Breach | None:
    """Record the breach of timer ``timer_id`` if it is still running and overdue; None when it is
    not (met, cancelled, breached by someone else, paused, or not due yet). One transaction."""
    found = await _breach_where(db, SlaTimer.id == timer_id, config, webhooks_enabled=webhooks_enabled,
                                now=now or utcnow(), limit=1)
    return found[0] if found else None


async def breach_due(db: Database, config: SlaConfig, *, webhooks_enabled: bool, now: datetime | None = None,
                     limit: int = 100) -> list[Breach]:
    """Breach up to ``limit`` running timers whose due time has passed, oldest due first, in one
    transaction; returns them (empty: none left). On Postgres the candidates are taken with
    ``FOR UPDATE SKIP LOCKED``, so processes ticking at once split the work instead of queueing
    behind each other; either way the conditional UPDATE lets each timer be breached once."""
    return await _breach_where(db, None, config, webhooks_enabled=webhooks_enabled, now=now or utcnow(),
                               limit=limit)


async def _breach_where(db: Database, only: Any, config: SlaConfig, *, webhooks_enabled: bool,
                        now: datetime, limit: int) -> list[Breach]:
    due = (SlaTimer.status == RUNNING, SlaTimer.due_at.is_not(None), SlaTimer.due_at <= now)
    candidates = select(SlaTimer.id).where(*due).order_by(SlaTimer.due_at).limit(limit).with_for_update(skip_locked=True)
    if only is not None:
        candidates = candidates.where(only)
    breaches: list[Breach] = []
    async with db.write() as session:
        won = (await session.execute(
            update(SlaTimer).where(SlaTimer.id.in_(candidates.scalar_subquery()), *due)
            .values(status=BREACHED, stopped_at=now)
            .returning(SlaTimer.id, SlaTimer.ticket_id, SlaTimer.target, SlaTimer.due_at)
        )).all()
        if not won:
            return []
        ticket_ids = sorted({row[1] for row in won})
        # Tickets locked in id order: two processes' batches never wait on each other in a cycle.
        tickets = {t.id: t for t in await session.scalars(
            select(Ticket).where(Ticket.id.in_(ticket_ids)).order_by(Ticket.id).with_for_update()
            .execution_options(populate_existing=True)
        )}
        running: dict[int, list[SlaTimer]] = {t: [] for t in ticket_ids}
        for timer in await session.scalars(
            select(SlaTimer).where(SlaTimer.ticket_id.in_(ticket_ids), SlaTimer.status == RUNNING)
            .execution_options(populate_existing=True)
        ):
            running[timer.ticket_id].append(timer)
        for timer_id, ticket_id, target, due_at_ in sorted(won, key=lambda row: (row[1], row[0])):
            ticket = tickets[ticket_id]
            before = ticket.priority
            ticket.priority = RAISE.get(before, before)
            ticket.sla_breached_at = ticket.sla_breached_at or now
            ticket.updated_at = now
            _remeasure(running[ticket_id], ticket.priority, config, now)  # the other targets follow
            ticket.sla_due_at = min((t.due_at for t in running[ticket_id] if t.due_at is not None), default=None)
            details: dict[str, Any] = {"timer_id": timer_id, "target": target,
                                       "due_at": due_at_.isoformat(), "priority": [before, ticket.priority]}
            session.add(Event(ticket_id=ticket.id, kind="sla_breached", payload=details, created_at=now))
            event = await webhook_events.add(session, webhook_events.SLA_BREACHED, ticket,
                                             {"target": target, "due_at": details["due_at"]},
                                             enabled=webhooks_enabled)
            breaches.append(Breach(timer_id, ticket.id, target, due_at_, before, ticket.priority,
                                   event.id if event is not None else None))
    return breaches
