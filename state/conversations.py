"""Customers, tickets and messages: intake of inbound messages and the queries turns need.

Intake is the durability boundary: :func:`accept_inbound` commits the customer's message (and, when
needed, a new ticket) before any routing starts, so a crash mid-turn loses nothing; the message stays
``processed_at IS NULL`` until its turn finishes. Nothing here knows about routing or channels'
wire formats.
"""

from __future__ import annotations

import hashlib

from dataclasses import dataclass
from functools import partial
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from state import sla_timers
from state.db import Database
from state.models import Customer, CustomerIdentity, Event, Message, Ticket, utcnow
from state.tickets import TicketState, transition


SECRET_ADDRESS_CHANNELS = frozenset({"webchat", "replay", "eval"})
"""Channels whose customer address is a credential: a web-chat session id lets whoever holds it
resume that customer's chat (see docs/webchat-protocol.md). It never leaves the server."""


def shown_address(channel: str, address: str) -> str:
    """``address`` as agents, the JSON API and the handoff webhook may see it: a phone number or an
    email address as it is, a credential (:data:`SECRET_ADDRESS_CHANNELS`) as ``session 1a2b3c4d``
    (the first 8 hex digits of its SHA-256: the same session reads the same, nothing to reuse)."""
    if channel in SECRET_ADDRESS_CHANNELS:
        return "session " + hashlib.sha256(address.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return address


@dataclass(frozen=True)
class Accepted:
    """Result of intake. ``duplicate`` is True when the provider message id was seen before; then
    ``message`` is the stored original and nothing new was written."""

    message: Message
    ticket: Ticket
    customer_id: int
    duplicate: bool
    new_ticket: bool


async def find_customer(session: AsyncSession, channel: str, address: str) -> Customer | None:
    """The customer known on ``channel`` by ``address`` (session id, phone, email), or None."""
    row = await session.execute(
        select(Customer)
        .join(CustomerIdentity)
        .where(CustomerIdentity.channel == channel, CustomerIdentity.address == address)
    )
    return row.scalar_one_or_none()


async def find_customer_id(db: Database, channel: str, address: str) -> int | None:
    """Id of the customer known on ``channel`` by ``address``, or None; creates nothing."""
    async with db.sessions() as session:
        return await session.scalar(
            select(CustomerIdentity.customer_id).where(
                CustomerIdentity.channel == channel, CustomerIdentity.address == address
            )
        )


async def get_or_create_customer(db: Database, channel: str, address: str) -> Customer:
    """Find or create the customer for ``(channel, address)``; safe against concurrent creators
    (the unique identity constraint decides, the loser re-reads)."""
    async with db.sessions() as session:
        customer = await find_customer(session, channel, address)
        if customer is not None:
            return customer
    try:
        async with db.write() as session:
            customer = Customer()
            session.add(customer)
            await session.flush()
            session.add(CustomerIdentity(customer_id=customer.id, channel=channel, address=address))
        return customer
    except IntegrityError:
        async with db.sessions() as session:
            found = await find_customer(session, channel, address)
            if found is None:  # pragma: no cover - the constraint said it exists
                raise
            return found


async def next_seq(session: AsyncSession, customer_id: int) -> int:
    """Take the customer's next message seq inside the caller's transaction.

    The UPDATE locks the customer's row until commit, so two transactions that add messages for one
    customer commit in the order of their seqs: a client that has seen seq N has seen every message
    before it. Call it first in a transaction (before touching the ticket) to keep one lock order.
    """
    result = await session.execute(
        update(Customer)
        .where(Customer.id == customer_id)
        .values(last_seq=Customer.last_seq + 1)
        .returning(Customer.last_seq)
    )
    return int(result.scalar_one())


class FencedOut(RuntimeError):
    """A later worker claimed the ticket: this worker's lock expired and it must write nothing."""


async def claim_ticket(db: Database, ticket_id: int) -> int:
    """Bump and return the ticket's fence: call once after taking the ticket's lock.

    The returned epoch is passed to :func:`check_fence` in every turn transaction. Raises
    ``LookupError`` for an unknown ticket.
    """
    async with db.write() as session:
        result = await session.execute(
            update(Ticket).where(Ticket.id == ticket_id).values(fence=Ticket.fence + 1).returning(Ticket.fence)
        )
        epoch = result.scalar_one_or_none()
    if epoch is None:
        raise LookupError(f"ticket {ticket_id} does not exist")
    return int(epoch)


async def check_fence(session: AsyncSession, ticket_id: int, epoch: int) -> None:
    """Inside a write transaction: lock the ticket row if its fence is still ``epoch``, else raise
    :class:`FencedOut` (the caller's transaction then rolls back, so nothing is written)."""
    result = await session.execute(
        update(Ticket).where(Ticket.id == ticket_id, Ticket.fence == epoch).values(fence=epoch)
    )
    if result.rowcount != 1:
        raise FencedOut(f"ticket {ticket_id}: fence moved past epoch {epoch}; another worker owns it")


async def customer_last_seq(db: Database, customer_id: int) -> int:
    """The highest message seq handed out for the customer (0 when none)."""
    async with db.sessions() as session:
        value = await session.scalar(select(Customer.last_seq).where(Customer.id == customer_id))
    return int(value or 0)


async def open_ticket(session: AsyncSession, customer_id: int) -> Ticket | None:
    """The customer's ticket that is not closed, or None (the database allows at most one)."""
    row = await session.execute(
        select(Ticket).where(Ticket.customer_id == customer_id, Ticket.state != "closed")
    )
    return row.scalar_one_or_none()


async def find_duplicate(
    session: AsyncSession, customer_id: int, channel: str, provider_message_id: str
) -> Accepted | None:
    """The stored inbound message with this provider message id from this customer on this channel,
    as a duplicate :class:`Accepted`; None when there is none."""
    existing = (
        await session.execute(
            select(Message).where(
                Message.customer_id == customer_id,
                Message.channel == channel,
                Message.direction == "inbound",
                Message.provider_message_id == provider_message_id,
            )
        )
    ).scalar_one_or_none()
    if existing is None:
        return None
    ticket = await session.get(Ticket, existing.ticket_id)
    assert ticket is not None
    return Accepted(existing, ticket, customer_id, duplicate=True, new_ticket=False)


async def accept_inbound(
    db: Database,
    *,
    customer_id: int,
    channel: str,
    text: str,
    provider_message_id: str | None,
    reopen_window: timedelta,
    now: datetime | None = None,
    meta: dict[str, Any] | None = None,
) -> Accepted:
    """Store one inbound customer message on the customer's open ticket, creating the ticket if
    there is none, and commit.

    ``meta``: facts about the message itself (``{"truncated_from": n}`` when intake cut it).
    A resolved ticket older than ``reopen_window`` is closed first and a new one opened. A repeated
    ``provider_message_id`` from the same customer on the same channel returns the stored original with ``duplicate=True``.
    Callers serialise intake per customer (see :class:`state.locks.Locks`) so that arrival order is
    storage order; the database's unique indexes guard the same rules across processes.
    """
    attempt = partial(
        _accept, db, customer_id=customer_id, channel=channel, text=text,
        provider_message_id=provider_message_id, reopen_window=reopen_window, now=now or utcnow(),
        meta=meta,
    )
    try:
        return await attempt()
    except IntegrityError:
        # Another process stored the same provider message id (or opened the ticket) first; the
        # database's unique indexes decided. Read again: it is now a duplicate, or one open ticket.
        return await attempt()


async def _accept(
    db: Database,
    *,
    customer_id: int,
    channel: str,
    text: str,
    provider_message_id: str | None,
    reopen_window: timedelta,
    now: datetime,
    meta: dict[str, Any] | None,
) -> Accepted:
    async with db.write() as session:
        if provider_message_id is not None:
            duplicate = await find_duplicate(session, customer_id, channel, provider_message_id)
            if duplicate is not None:
                return duplicate

        seq = await next_seq(session, customer_id)
        ticket = await open_ticket(session, customer_id)
        if (
            ticket is not None
            and ticket.state == TicketState.resolved.value
            and ticket.resolved_at is not None
            and now - ticket.resolved_at > reopen_window
            # Messages still waiting for their turn keep the ticket open: closing it under them
            # would leave them unanswered on a ticket no turn may change.
            and await next_pending_inbound(session, ticket.id) is None
        ):
            transition(session, ticket, TicketState.closed, reason="reopen_window_expired", now=now)
            await session.flush()
            ticket = None
        new_ticket = ticket is None
        if ticket is None:
            ticket = Ticket(
                customer_id=customer_id, channel=channel, state=TicketState.bot.value,
                created_at=now, updated_at=now,
            )
            session.add(ticket)
            await session.flush()
            session.add(
                Event(ticket_id=ticket.id, kind="ticket_opened", payload={"channel": channel},
                      created_at=now)
            )
        message = Message(
            seq=seq,
            ticket_id=ticket.id,
            customer_id=customer_id,
            direction="inbound",
            author="customer",
            channel=channel,
            text=text,
            provider_message_id=provider_message_id,
            meta=meta,
            created_at=now,
        )
        session.add(message)
        await session.flush()
    return Accepted(message, ticket, customer_id, duplicate=False, new_ticket=new_ticket)


async def next_pending_inbound(session: AsyncSession, ticket_id: int) -> Message | None:
    """The oldest inbound message of the ticket whose turn has not finished, or None."""
    row = await session.execute(
        select(Message)
        .where(
            Message.ticket_id == ticket_id,
            Message.direction == "inbound",
            Message.processed_at.is_(None),
        )
        .order_by(Message.seq)
        .limit(1)
    )
    return row.scalar_one_or_none()


async def tickets_with_pending_inbound(db: Database, older_than_s: float = 0.0) -> list[int]:
    """Ids of tickets that hold unprocessed inbound messages (left by a crash or a shutdown),
    only those stored more than ``older_than_s`` seconds ago when it is given."""
    query = select(Message.ticket_id).where(
        Message.direction == "inbound", Message.processed_at.is_(None)
    )
    if older_than_s > 0:
        query = query.where(Message.created_at < utcnow() - timedelta(seconds=older_than_s))
    async with db.sessions() as session:
        rows = await session.execute(query.distinct())
        return sorted(rows.scalars())


async def return_kill_switch_tickets(db: Database, *, limit: int = 200) -> list[int]:
    """Give the bot back the tickets the kill switch handed over, once the bot is switched on again.

    A ticket counts when it is still ``escalated`` with reason ``kill_switch`` (no agent took it).
    It moves to ``bot`` (transition reason ``kill_switch_lifted``) and every customer message that
    got the static auto-reply since that escalation is marked unanswered again, so the caller's
    turns answer each one, oldest first. Each ticket is moved in its own transaction with the
    ticket row locked, so processes racing on this move a ticket once. Returns the moved ticket ids
    (at most ``limit`` per call; the next call takes the rest).
    """
    async with db.sessions() as session:
        candidates = list(
            (
                await session.execute(
                    select(Ticket.id)
                    .where(Ticket.state == TicketState.escalated.value, Ticket.escalation_reason == "kill_switch")
                    .order_by(Ticket.id)
                    .limit(limit)
                )
            ).scalars()
        )
    return [ticket_id for ticket_id in candidates if await return_kill_switch_ticket(db, ticket_id)]


async def return_kill_switch_ticket(db: Database, ticket_id: int) -> bool:
    """Give the bot back one ticket the kill switch handed over (see
    :func:`return_kill_switch_tickets`); False when an agent took it or another process moved it
    first. The conversation service also calls it when a message arrives on such a ticket after the
    switch is lifted, before the sweep has come by."""
    async with db.write() as session:
        ticket = await session.get(Ticket, ticket_id, with_for_update=True, populate_existing=True)
        if ticket is None or ticket.state != TicketState.escalated.value or ticket.escalation_reason != "kill_switch":
            return False  # an agent took it, or another process moved it first
        handed_over = await session.scalar(
            select(func.max(Event.id)).where(
                Event.ticket_id == ticket_id,
                Event.kind == "transition",
                Event.payload["to"].as_string() == TicketState.escalated.value,
            )
        )
        auto_replied = [
            payload.get("message_id")
            for payload in (
                await session.execute(
                    select(Event.payload).where(
                        Event.ticket_id == ticket_id,
                        Event.kind == "turn",
                        Event.id > (handed_over or 0),
                        Event.payload["reason"].as_string() == "kill_switch",
                    )
                )
            ).scalars()
        ]
        ids = [i for i in auto_replied if isinstance(i, int)]
        if ids:
            await session.execute(
                update(Message)
                .where(Message.id.in_(ids), Message.direction == "inbound")
                .values(processed_at=None)
            )
        transition(session, ticket, TicketState.bot, reason="kill_switch_lifted", reanswer=len(ids))
        ticket.handoff_summary = ticket.brief = None  # they were for a person; the bot has the ticket again
        await sla_timers.stop(session, ticket, resolved=False)
    return True


async def recent_messages(session: AsyncSession, ticket_id: int, limit: int) -> list[Message]:
    """The ticket's last ``limit`` messages, oldest first. Bounded so turns stay fast as tickets age."""
    rows = await session.execute(
        select(Message).where(Message.ticket_id == ticket_id).order_by(Message.seq.desc()).limit(limit)
    )
    return list(reversed(rows.scalars().all()))


async def messages_after(db: Database, customer_id: int, after_seq: int, limit: int = 500) -> list[Message]:
    """The customer's messages (all tickets, both directions) with seq > ``after_seq``, in seq order."""
    async with db.sessions() as session:
        rows = await session.execute(
            select(Message)
            .where(Message.customer_id == customer_id, Message.seq > after_seq)
            .order_by(Message.seq)
            .limit(limit)
        )
        return list(rows.scalars())


def message_frame(message: Message, client_message_id: str | None = None) -> dict[str, Any]:
    """The neutral JSON shape of a stored message that channels render (web chat sends it as is)."""
    return {
        "type": "message",
        "seq": message.seq,
        "direction": message.direction,
        "author": message.author,
        "text": message.text,
        "ticket_id": message.ticket_id,
        "created_at": message.created_at.isoformat(),
        "client_message_id": (
            client_message_id
            if client_message_id is not None
            else (message.provider_message_id if message.direction == "inbound" else None)
        ),
        "meta": message.meta,
    }
