"""Customer satisfaction (CSAT): asking once when a ticket is resolved, and storing the answer.

:func:`request` runs inside the transaction that resolves a ticket (the bot's goodbye turn in
:mod:`helpline.conversation`, an agent's resolve in :func:`state.inbox.resolve`): the first time a
ticket is resolved it stamps ``tickets.csat_requested_at`` and queues one outbound ``system``
message on the customer's channel whose ``meta`` carries ``{"csat": {"ticket": id, "scale": [1, 5]}}``
(the widget shows rating buttons for it). A ticket is asked at most once, whatever happens later
(reopened and resolved again: not asked again). An automatic close (the reopen window ran out) and
the kill switch never resolve a ticket, so they never ask.

:func:`rate` stores the customer's answer. Who resolved the ticket is read from the ticket's last
``transition`` event to ``resolved`` (an agent's resolve names ``agent_id`` in its payload, the
bot's does not), so a ticket reopened and then resolved by someone else is credited to whoever
resolved it last, before the rating.

This module sends nothing: callers send the queued message after their commit
(:meth:`helpline.outbox.Outbox.send_now`).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from state.conversations import next_seq
from state.db import Database
from state.models import CsatRating, Event, Message, Ticket, utcnow
from state.outbox import add as queue_outbound

PROMPT_TEXT = "How did we do? Rate this conversation from 1 to 5."
SCALE = (1, 5)
MAX_COMMENT_CHARS = 1000
"""Characters in a comment after cleaning; a longer one is refused, not cut."""
MAX_RAW_COMMENT_CHARS = 4 * MAX_COMMENT_CHARS
"""A comment longer than this before cleaning is refused without looking at it further."""
RESOLVERS = ("bot", "agent")
_KEEP_CONTROLS = {"\n", "\t"}


class CsatError(ValueError):
    """A rating that cannot be stored; ``code`` is machine-readable (web chat sends it as the error
    frame's code), the message says why in words a customer understands."""

    code = "bad_csat"

    def __init__(self, message: str) -> None:
        super().__init__(message)


class NoSuchTicket(CsatError):
    """No such ticket, or another customer's: the two answer exactly alike, so ids reveal nothing."""

    code = "no_such_ticket"

    def __init__(self) -> None:
        super().__init__("There is no conversation with that number to rate.")


class NotAsked(CsatError):
    """The customer's own ticket, but nobody asked for a rating (it was never resolved)."""

    code = "not_asked"

    def __init__(self) -> None:
        super().__init__("This conversation is not waiting for a rating.")


class AlreadyRated(CsatError):
    """The ticket has its rating; a second one is refused, never overwrites the first."""

    code = "already_rated"

    def __init__(self) -> None:
        super().__init__("This conversation has already been rated. Thank you!")


@dataclass(frozen=True)
class Asked:
    """The prompt :func:`request` queued: the message and its outbox entry id, for ``send_now``."""

    message: Message
    entry_id: int


def will_ask(ticket: Ticket) -> bool:
    """True when resolving ``ticket`` now would ask the customer (never asked before). Callers that
    lock the ticket row use it to take the customer's seq first (the lock order of every writer)."""
    return ticket.csat_requested_at is None


async def request(
    session: AsyncSession,
    ticket: Ticket,
    resolved_by: str,
    agent_id: int | None,
    *,
    lease_s: float,
    channel: str | None = None,
    seq: int | None = None,
    now: datetime | None = None,
) -> Asked | None:
    """Ask for a rating of ``ticket``, in the caller's (resolving) transaction: None when it was
    asked before (at most once per ticket), else the queued prompt to send after the commit.

    ``resolved_by``: ``bot`` or ``agent`` (with ``agent_id``); recorded in the message's ``meta``
    for the timeline (the rating itself reads the last resolving transition, see the module
    docstring). ``channel``: where to ask; default the channel of the customer's latest message on
    the ticket. ``seq``: a seq the caller took for this message with
    :func:`state.conversations.next_seq` before it locked the ticket row; without one this takes
    the next seq, which is safe when the caller already took one in this transaction (the
    customer's row is then locked by it) or holds no ticket row lock. ``lease_s``: the outbox lease.
    Raises ``ValueError`` for an unknown ``resolved_by``.
    """
    if resolved_by not in RESOLVERS:
        raise ValueError(f"resolved_by must be one of {', '.join(RESOLVERS)}, got {resolved_by!r}")
    if not will_ask(ticket):
        return None
    now = now or utcnow()
    if seq is None:
        seq = await next_seq(session, ticket.customer_id)
    if channel is None:
        channel = await session.scalar(
            select(Message.channel).where(Message.ticket_id == ticket.id, Message.direction == "inbound")
            .order_by(Message.id.desc()).limit(1)
        ) or ticket.channel
    ticket.csat_requested_at = now
    message = Message(
        seq=seq, ticket_id=ticket.id, customer_id=ticket.customer_id, direction="outbound", author="system",
        channel=channel, text=PROMPT_TEXT, created_at=now,
        meta={"csat": {"ticket": ticket.id, "scale": list(SCALE)}, "resolved_by": resolved_by, "agent_id": agent_id},
    )
    session.add(message)
    await session.flush()
    entry = queue_outbound(session, message, lease_s)
    await session.flush()
    session.add(Event(ticket_id=ticket.id, kind="csat_requested",
                      payload={"message_id": message.id, "resolved_by": resolved_by, "agent_id": agent_id},
                      created_at=now))
    return Asked(message=message, entry_id=entry.id)


def check_rating(rating: object) -> int:
    """``rating`` when it is an integer from 1 to 5 (JSON ``5``; not ``"5"``, ``5.0``, ``true``),
    else :class:`CsatError`."""
    if not isinstance(rating, int) or isinstance(rating, bool) or not SCALE[0] <= rating <= SCALE[1]:
        raise CsatError(f"The rating must be a whole number from {SCALE[0]} to {SCALE[1]}.")
    return rating


def clean_comment(comment: object) -> str | None:
    """The comment as stored: None for none or blank; control characters (except newline and tab)
    and surrounding space removed. :class:`CsatError` when it is not text or longer than
    :data:`MAX_COMMENT_CHARS` after cleaning."""
    if comment is None:
        return None
    if not isinstance(comment, str):
        raise CsatError("The comment must be text.")
    if len(comment) > MAX_RAW_COMMENT_CHARS:
        raise CsatError(f"The comment is too long: at most {MAX_COMMENT_CHARS:,} characters.")
    # Cc: C0/C1 controls (NUL cannot even be stored in Postgres); Cs: lone surrogates from a
    # broken client encoding, which no database can store as text.
    cleaned = "".join(
        c for c in comment if c in _KEEP_CONTROLS or unicodedata.category(c) not in ("Cc", "Cs")
    ).strip()
    if len(cleaned) > MAX_COMMENT_CHARS:
        raise CsatError(
            f"The comment is too long ({len(cleaned):,} characters): at most {MAX_COMMENT_CHARS:,}."
        )
    return cleaned or None


async def _resolver(session: AsyncSession, ticket_id: int) -> tuple[str, int | None]:
    """(``bot`` | ``agent``, agent id) from the ticket's last transition to ``resolved``."""
    payload = await session.scalar(
        select(Event.payload)
        .where(Event.ticket_id == ticket_id, Event.kind == "transition",
               Event.payload["to"].as_string() == "resolved")
        .order_by(Event.id.desc()).limit(1)
    )
    agent_id = payload.get("agent_id") if isinstance(payload, dict) else None
    if isinstance(agent_id, int) and not isinstance(agent_id, bool):
        return "agent", agent_id
    return "bot", None


async def rate(
    db: Database, customer_id: int, ticket_id: object, rating: object, comment: object = None,
    *, channel: str | None = None,
) -> CsatRating:
    """Store ``customer_id``'s rating of ``ticket_id`` (both ``ticket_id`` and the rest come from
    the client: nothing is trusted) and commit; returns the stored row.

    Raises :class:`CsatError` (bad rating or comment; checked before the database is touched),
    :class:`NoSuchTicket` (no such ticket, or another customer's: the same answer),
    :class:`NotAsked` (never asked) or :class:`AlreadyRated` (a rating exists: it is kept; of two
    submits at once exactly one is stored, the unique ``ticket_id`` decides). ``channel``: where
    the rating came from (default the ticket's channel).
    """
    if not isinstance(ticket_id, int) or isinstance(ticket_id, bool) or not 0 < ticket_id < 2**53:
        raise NoSuchTicket()
    rating = check_rating(rating)
    text = clean_comment(comment)
    try:
        async with db.write() as session:
            ticket = await session.get(Ticket, ticket_id)
            if ticket is None or ticket.customer_id != customer_id:
                raise NoSuchTicket()
            if ticket.csat_requested_at is None:
                raise NotAsked()
            if await session.scalar(select(CsatRating.id).where(CsatRating.ticket_id == ticket_id)) is not None:
                raise AlreadyRated()
            resolved_by, agent_id = await _resolver(session, ticket_id)
            row = CsatRating(
                ticket_id=ticket_id, customer_id=customer_id, rating=rating, comment=text,
                resolved_by=resolved_by, agent_id=agent_id, channel=channel or ticket.channel,
                intent=ticket.intent, created_at=utcnow(),
            )
            session.add(row)
            await session.flush()
            session.add(Event(ticket_id=ticket_id, kind="csat_rated",
                              payload={"rating": rating, "resolved_by": resolved_by, "agent_id": agent_id},
                              created_at=row.created_at))
    except IntegrityError:
        # A concurrent submit for the same ticket committed first (Postgres: the unique key).
        raise AlreadyRated() from None
    return row


async def rated(db: Database, ticket_ids: Iterable[int]) -> set[int]:
    """Which of ``ticket_ids`` have a rating (for prompts replayed to a reconnecting client)."""
    ids = sorted(set(ticket_ids))
    if not ids:
        return set()
    async with db.sessions() as session:
        return set(await session.scalars(select(CsatRating.ticket_id).where(CsatRating.ticket_id.in_(ids))))
