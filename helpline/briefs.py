"""Keeps each escalated ticket's handoff brief current: gathers the ticket's record from the database
and stores :func:`bot.handoff.build_brief`'s result on the ticket (``tickets.brief``, with its plain
text in ``tickets.handoff_summary``).

Called inside the transaction that escalates a ticket, and again for every customer message while a
person owns it, so the brief an agent (or the handoff webhook) reads is the ticket as it stands.
Reads at most :data:`bot.handoff.MAX_TURNS` customer messages, their turn events and replies, the
customer's identities and five earlier tickets: a bounded cost per call.
"""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.handoff import MAX_TURNS, BriefCustomer, BriefInput, BriefTurn, EarlierTicket, build_brief, render_text
from bot.playbook import Playbook
from config.settings import Settings
from state.conversations import shown_address
from state.models import Customer, CustomerIdentity, Event, Message, Ticket

EARLIER_TICKETS = 5


async def _customer(session: AsyncSession, ticket: Ticket) -> BriefCustomer:
    customer = await session.get(Customer, ticket.customer_id)
    identities = (
        await session.execute(
            select(CustomerIdentity.channel, CustomerIdentity.address)
            .where(CustomerIdentity.customer_id == ticket.customer_id)
            .order_by(CustomerIdentity.id)
            .limit(20)
        )
    ).all()
    earlier = await session.scalars(
        select(Ticket)
        .where(Ticket.customer_id == ticket.customer_id, Ticket.id != ticket.id)
        .order_by(Ticket.id.desc())
        .limit(EARLIER_TICKETS)
    )
    return BriefCustomer(
        id=ticket.customer_id,
        name=customer.display_name if customer else None,
        email=customer.email if customer else None,
        identities=tuple((c, shown_address(c, a)) for c, a in identities),
        earlier_tickets=tuple(EarlierTicket(t.id, t.state, t.intent, t.created_at) for t in earlier),
    )


async def gather(session: AsyncSession, ticket: Ticket, settings: Settings) -> BriefInput:
    """The ticket's record as :class:`bot.handoff.BriefInput` (the session's uncommitted rows
    included: call it after the turn event is added and flushed)."""
    inbound = list(
        await session.scalars(
            select(Message)
            .where(Message.ticket_id == ticket.id, Message.direction == "inbound", Message.author == "customer")
            .order_by(Message.id.desc())
            .limit(MAX_TURNS)
        )
    )[::-1]
    decisions: dict[int, dict[str, Any]] = {}
    evidence: dict[str, Any] = {}
    for event in await session.scalars(
        select(Event)
        .where(Event.ticket_id == ticket.id, Event.kind == "turn")
        .order_by(Event.id.desc())
        .limit(MAX_TURNS * 2)
    ):
        payload = event.payload if isinstance(event.payload, dict) else {}
        message_id = payload.get("message_id")
        if isinstance(message_id, int) and payload.get("tier") is not None:
            decisions.setdefault(message_id, payload)  # newest first: a message routed again keeps its last turn
            if payload.get("escalated") and not evidence:
                evidence = dict(payload.get("data") or {})
    reply_ids = [p["reply_message_id"] for p in decisions.values() if isinstance(p.get("reply_message_id"), int)]
    replies = (
        {m.id: m.text for m in await session.scalars(select(Message).where(Message.id.in_(reply_ids)))}
        if reply_ids else {}
    )
    turns = []
    for message in inbound:
        decision = decisions.get(message.id)
        reply_id = decision.get("reply_message_id") if decision else None
        turns.append(BriefTurn(text=message.text, channel=message.channel, decision=decision,
                               reply=replies.get(reply_id) if isinstance(reply_id, int) else None))
    return BriefInput(
        ticket_id=ticket.id,
        customer=await _customer(session, ticket),
        turns=turns,
        reason=ticket.escalation_reason,
        evidence=evidence,
        verified_owner=ticket.verified_owner,
        default_language=(settings.supported_languages or ["en"])[0],
        max_message_chars=settings.max_message_chars,
        confidence_threshold=settings.confidence_threshold,
    )


async def refresh(session: AsyncSession, ticket: Ticket, settings: Settings, playbook: Playbook) -> dict[str, Any]:
    """Rebuild and store ``ticket``'s brief in ``session`` (not committed); returns it."""
    await session.flush()
    # Milliseconds of regular expressions over up to 50 messages: off the event loop.
    brief = await asyncio.to_thread(build_brief, await gather(session, ticket, settings), playbook)
    ticket.brief = brief
    ticket.handoff_summary = render_text(brief)
    ticket.language = str(brief["escalation"]["language"])[:8]
    if brief["want"]["intent"]:
        # The topic, not "get me a person": the queue, the reports and the webhook show what the
        # customer wants (each turn's own intent stays in its event).
        ticket.intent = brief["want"]["intent"]
    return brief
