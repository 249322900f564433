"""Handoff-webhook events and their delivery attempts, in the database: an outbox for the webhook.

An event (``ticket.escalated``, ``ticket.sla_breached``, ``ticket.resolved``) is written by
:func:`add` in the transaction that causes it, so a committed escalation always has its event and a
rolled-back one never does. Its body is a snapshot taken there and then (the ticket as it was at the
event, not when the send finally succeeds), and the same bytes go out on every attempt.

Bookkeeping mirrors :mod:`state.outbox`: a send attempt first *claims* the row with one conditional
UPDATE (only a ``pending`` row, or a ``sending`` row whose lease ran out, can be claimed), so two
workers, in one process or several, never send one event at the same time, and a ``sent`` row is never
sent again. A receiver that took the event while the sender died before recording ``sent`` gets it
again after the lease: receivers de-duplicate on ``event_id`` (see docs/handoff-webhook.md).

This module does no HTTP and knows no URL or secret: :mod:`helpline.webhooks` signs and sends.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from state.db import Database
from state.models import Agent, Ticket, WebhookEvent, utcnow

PENDING, SENDING, SENT, FAILED = "pending", "sending", "sent", "failed"
ESCALATED, SLA_BREACHED, RESOLVED = "ticket.escalated", "ticket.sla_breached", "ticket.resolved"
EVENT_TYPES = frozenset({ESCALATED, SLA_BREACHED, RESOLVED})
MAX_ERROR_CHARS = 2000


@dataclass(frozen=True)
class Claim:
    """A claimed send: the row id, the event body as stored (see :func:`body_for`) and the attempt
    number (1 = first try)."""

    row_id: int
    event_id: str
    event_type: str
    payload: dict[str, Any]
    attempt: int


def iso_utc(moment: datetime) -> str:
    """``2026-12-07T10:15:02.123Z``: ISO 8601, UTC, milliseconds."""
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def _assignee(session: AsyncSession, agent_id: int | None) -> dict[str, Any] | None:
    if agent_id is None:
        return None
    agent = await session.get(Agent, agent_id)
    if agent is None:
        return {"id": agent_id, "email": None, "name": None}
    return {"id": agent.id, "email": agent.email, "name": agent.display_name}


async def body_for(
    session: AsyncSession, event_id: str, event_type: str, ticket: Ticket, created_at: datetime,
    data: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The event body (JSON-ready), as documented in docs/handoff-webhook.md::

        {"id": UUID, "type": "ticket.escalated", "created_at": ISO 8601 UTC,
         "ticket": {"id", "state", "priority", "channel", "customer_id", "intent",
                    "escalation_reason", "assignee": {"id", "email", "name"} | null},
         "brief": the ticket's brief (JSON) | null, "summary": plain-text handoff summary | null,
         "data": event details, e.g. {"target": "first_response"} for an SLA breach ({} if none)}
    """
    return {
        "id": event_id,
        "type": event_type,
        "created_at": iso_utc(created_at),
        "ticket": {
            "id": ticket.id,
            "state": ticket.state,
            "priority": ticket.priority,
            "channel": ticket.channel,
            "customer_id": ticket.customer_id,
            "intent": ticket.intent,
            "escalation_reason": ticket.escalation_reason,
            "assignee": await _assignee(session, ticket.assignee_id),
        },
        "brief": ticket.brief,
        "summary": ticket.handoff_summary,
        "data": dict(data or {}),
    }


async def add(
    session: AsyncSession, event_type: str, ticket: Ticket, payload: dict[str, Any] | None = None,
    *, enabled: bool,
) -> WebhookEvent | None:
    """Record event ``event_type`` for ``ticket`` in the caller's transaction; None (and nothing
    written) when ``enabled`` is false, i.e. no ``HELPLINE_HANDOFF_WEBHOOK_URL`` is configured
    (callers pass ``settings.handoff_webhook_url is not None``).

    Call after the change the event reports (state, assignee, brief) is applied to ``ticket``: the
    body is a snapshot of it. ``payload``: event details sent as ``data`` (JSON-ready). The row is
    flushed, so its ``id`` is known: after commit, hand it to
    :meth:`helpline.webhooks.Webhooks.send_now`. Until a sender claims it the row is ``pending``;
    if nobody does, the sweep queues it after ``stale_after_s``. Raises ``ValueError`` for an
    unknown event type.
    """
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown webhook event type {event_type!r}: one of {', '.join(sorted(EVENT_TYPES))}")
    if not enabled:
        return None
    now = utcnow()
    event_id = str(uuid.uuid4())
    event = WebhookEvent(
        event_id=event_id,
        event_type=event_type,
        ticket_id=ticket.id,
        payload=await body_for(session, event_id, event_type, ticket, now, payload),
        status=PENDING,
        attempts=0,
        created_at=now,
    )
    session.add(event)
    await session.flush()
    return event


async def claim(db: Database, row_id: int, lease_s: float) -> Claim | None:
    """Claim event row ``row_id`` for one send attempt, for ``lease_s`` seconds; None when it is
    sent, failed, or held by a live lease elsewhere."""
    now = utcnow()
    async with db.write() as session:
        row = (
            await session.execute(
                update(WebhookEvent)
                .where(
                    WebhookEvent.id == row_id,
                    or_(
                        WebhookEvent.status == PENDING,
                        (WebhookEvent.status == SENDING) & (WebhookEvent.lease_until < now),
                    ),
                )
                .values(
                    status=SENDING,
                    attempts=WebhookEvent.attempts + 1,
                    lease_until=now + timedelta(seconds=lease_s),
                    attempted_at=now,
                )
                .returning(
                    WebhookEvent.event_id, WebhookEvent.event_type, WebhookEvent.payload, WebhookEvent.attempts
                )
            )
        ).one_or_none()
        if row is None:
            return None
        return Claim(
            row_id=row_id, event_id=row.event_id, event_type=row.event_type, payload=row.payload,
            attempt=row.attempts,
        )


async def mark_sent(db: Database, row_id: int, response_status: int) -> None:
    """Record a successful send (the receiver answered ``response_status``, a 2xx)."""
    async with db.write() as session:
        await session.execute(
            update(WebhookEvent)
            .where(WebhookEvent.id == row_id)
            .values(status=SENT, sent_at=utcnow(), lease_until=None, response_status=response_status)
        )


async def release(
    db: Database, row_id: int, error: str, *, final: bool, response_status: int | None = None
) -> None:
    """Record a failed attempt: back to ``pending`` for a retry, or ``failed`` when ``final``.
    ``response_status``: the receiver's HTTP status, None when there was no response (timeout,
    refused connection)."""
    async with db.write() as session:
        await session.execute(
            update(WebhookEvent)
            .where(WebhookEvent.id == row_id, WebhookEvent.status == SENDING)
            .values(
                status=FAILED if final else PENDING, lease_until=None,
                last_error=error[:MAX_ERROR_CHARS], response_status=response_status,
            )
        )


async def due(db: Database, older_than_s: float, limit: int = 500, *, attempt_s: float = 0.0) -> list[int]:
    """Ids of event rows nobody is working on, oldest first: ``pending`` and never tried, made over
    ``older_than_s`` seconds ago (the process that recorded it died before sending); ``pending``
    with its last attempt started over ``max(older_than_s, attempt_s)`` seconds ago (its retry job
    may be lost; re-queueing one that is merely waiting for its backoff is a no-op, see
    :func:`helpline.jobs.defer_webhook`); or ``sending`` with an expired lease (the sender died).
    ``attempt_s``: the longest an attempt may run, so that a retry is never queued beside a job
    whose attempt is still running."""
    now = utcnow()
    cutoff: datetime = now - timedelta(seconds=older_than_s)
    attempt_cutoff: datetime = now - timedelta(seconds=max(older_than_s, attempt_s))
    async with db.sessions() as session:
        rows = await session.execute(
            select(WebhookEvent.id)
            .where(
                or_(
                    (WebhookEvent.status == PENDING)
                    & WebhookEvent.attempted_at.is_(None)
                    & (WebhookEvent.created_at < cutoff),
                    (WebhookEvent.status == PENDING) & (WebhookEvent.attempted_at < attempt_cutoff),
                    (WebhookEvent.status == SENDING) & (WebhookEvent.lease_until < now),
                )
            )
            .order_by(WebhookEvent.id)
            .limit(limit)
        )
        return list(rows.scalars())


async def get(db: Database, row_id: int) -> WebhookEvent | None:
    """The event row as stored now (tests, operators)."""
    async with db.sessions() as session:
        return await session.get(WebhookEvent, row_id)
