"""The transactional outbox: outbound messages and their send attempts, in the database.

Exactly-once bookkeeping: a send attempt first *claims* the row (one conditional UPDATE: only a
``pending`` row, or a ``sending`` row whose lease ran out, can be claimed), so two workers never send
the same message at the same time, and a ``sent`` row is never sent again. What this cannot promise is
a provider that took the message while the worker died before recording ``sent``: after the lease the
message is sent again. Receivers deduplicate (web chat by ``seq``, email by Message-ID, SMS by the
outbox id in the status callback), so customers see it once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from state.db import Database
from state.models import Message, OutboxEntry, utcnow

PENDING, SENDING, SENT, FAILED = "pending", "sending", "sent", "failed"
MAX_ERROR_CHARS = 2000


@dataclass(frozen=True)
class Claim:
    """A claimed send: the entry, its message, and the attempt number (1 = first try)."""

    entry_id: int
    message: Message
    attempt: int


def add(session: AsyncSession, message: Message, lease_s: float) -> OutboxEntry:
    """Queue ``message`` for sending, already claimed by the caller (who sends right after commit).

    Call in the transaction that stores the message. If the caller dies before sending, the lease
    (``lease_s`` seconds) runs out and the outbox sweep hands the entry to the job queue.
    """
    now = utcnow()
    entry = OutboxEntry(
        message_id=message.id,
        channel=message.channel,
        status=SENDING,
        attempts=1,
        lease_until=now + timedelta(seconds=lease_s),
        attempted_at=now,
        created_at=now,
    )
    session.add(entry)
    return entry


async def claim(db: Database, entry_id: int, lease_s: float) -> Claim | None:
    """Claim entry ``entry_id`` for one send attempt; None when it is sent, failed, or held by a
    live lease elsewhere."""
    now = utcnow()
    async with db.write() as session:
        row = (
            await session.execute(
                update(OutboxEntry)
                .where(
                    OutboxEntry.id == entry_id,
                    or_(
                        OutboxEntry.status == PENDING,
                        (OutboxEntry.status == SENDING) & (OutboxEntry.lease_until < now),
                    ),
                )
                .values(
                    status=SENDING,
                    attempts=OutboxEntry.attempts + 1,
                    lease_until=now + timedelta(seconds=lease_s),
                    attempted_at=now,
                )
                .returning(OutboxEntry.message_id, OutboxEntry.attempts)
            )
        ).one_or_none()
        if row is None:
            return None
        message = await session.get(Message, row.message_id)
        assert message is not None, "outbox entries reference stored messages"
        return Claim(entry_id=entry_id, message=message, attempt=row.attempts)


async def mark_sent(db: Database, entry_id: int, provider_message_id: str | None) -> None:
    """Record a successful send."""
    async with db.write() as session:
        await session.execute(
            update(OutboxEntry)
            .where(OutboxEntry.id == entry_id)
            .values(status=SENT, sent_at=utcnow(), lease_until=None, provider_message_id=provider_message_id)
        )


async def release(db: Database, entry_id: int, error: str, *, final: bool) -> None:
    """Record a failed attempt: back to ``pending`` for a retry, or ``failed`` when ``final``."""
    async with db.write() as session:
        await session.execute(
            update(OutboxEntry)
            .where(OutboxEntry.id == entry_id, OutboxEntry.status == SENDING)
            .values(status=FAILED if final else PENDING, lease_until=None, last_error=error[:MAX_ERROR_CHARS])
        )


async def due(db: Database, older_than_s: float, limit: int = 500) -> list[int]:
    """Ids of entries nobody is working on: ``pending`` with no attempt for over ``older_than_s``
    seconds (their retry job may be lost; re-queueing one that is merely waiting is a no-op, see
    :func:`helpline.jobs.defer_delivery`) or ``sending`` with an expired lease (the sender died).
    Oldest first."""
    now = utcnow()
    cutoff: datetime = now - timedelta(seconds=older_than_s)
    async with db.sessions() as session:
        rows = await session.execute(
            select(OutboxEntry.id)
            .where(
                or_(
                    (OutboxEntry.status == PENDING) & (OutboxEntry.attempted_at < cutoff),
                    (OutboxEntry.status == SENDING) & (OutboxEntry.lease_until < now),
                )
            )
            .order_by(OutboxEntry.id)
            .limit(limit)
        )
        return list(rows.scalars())


async def get(db: Database, entry_id: int) -> OutboxEntry | None:
    """The entry as stored now (tests, the agent inbox)."""
    async with db.sessions() as session:
        return await session.get(OutboxEntry, entry_id)
