"""The agent inbox's reads and writes: the queue, one ticket's full view, and every agent action.

Who may do what is decided here, for every caller (the pages and any later API), not in a page:

- an **admin** reads every ticket and may act on any handed-off one;
- an **agent** reads the tickets in the shared queue (``escalated`` or ``human``) and any ticket
  assigned to them; anything else is :class:`NotFound`, exactly like a ticket id that does not exist,
  so ids reveal nothing;
- writing on a ticket (reply, note, transfer, priority, resolve, hand back) needs to own it (be its
  assignee) or be an admin; a claim takes an unassigned handed-off ticket atomically (two agents
  claiming at once: exactly one wins, the other gets :class:`Conflict`).

Every action appends an event naming the agent in the transaction that makes it. An agent's reply is
an outbound message (author ``agent``) queued in the outbox in that same transaction and sent on the
customer's channel right after commit by the caller (:meth:`helpline.outbox.Outbox.send_now`).
While a person owns a ticket the bot stays silent: that is enforced where turns run
(:data:`state.tickets.BOT_SILENT_STATES`), not here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import case, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from config.sla import SlaConfig
from state.agents import AgentView
from state.conversations import next_seq, shown_address
from state.db import Database
from state.models import Agent, Customer, CustomerIdentity, Event, Message, Ticket, utcnow
from state.outbox import add as queue_outbound
from state import csat, sla_timers
from state import webhooks as webhook_events
from state.tickets import BOT_SILENT_STATES, TicketState, transition

PRIORITIES = ("urgent", "high", "normal", "low")
"""Most urgent first; the queue sorts by this order, then by waiting time."""
QUEUE_STATES = (TicketState.escalated.value, TicketState.human.value)
QUEUE_VIEWS = ("all", "mine", "unassigned")
HIDDEN_CHANNELS = ("replay",)
"""Replayed traffic (``helpline replay``, benchmarks) never reaches the queue."""
MAX_AGENT_TEXT = 4000
"""Characters in one agent reply or note."""
PREVIEW_CHARS = 140


class InboxError(Exception):
    """An inbox action that cannot be done; ``status`` is the HTTP status the web layer answers."""

    status = 400


class NotFound(InboxError):
    """No such ticket, or not one the caller may read (the two are indistinguishable on purpose)."""

    status = 404

    def __init__(self) -> None:
        super().__init__("no such ticket")


class NotAllowed(InboxError):
    """The caller may read the ticket but not do this to it (for example: not its assignee)."""

    status = 403


class Conflict(InboxError):
    """The ticket is not in a state for this action (claimed by someone else, already resolved)."""

    status = 409


@dataclass(frozen=True)
class QueueItem:
    """One row of the queue. ``waiting_since``: when the ticket last changed hands (UTC)."""

    ticket_id: int
    channel: str
    state: str
    priority: str
    reason: str | None
    intent: str | None
    assignee: str | None
    assignee_id: int | None
    customer: str
    preview: str
    waiting_since: datetime
    sla_due_at: datetime | None = None
    """The earliest due time of the ticket's running SLA timers (None: none running or paused)."""
    sla_breached_at: datetime | None = None
    language: str | None = None


@dataclass(frozen=True)
class TranscriptLine:
    """One message as an agent sees it; ``tier``, ``intent`` and ``confidence`` only on bot replies."""

    id: int
    author: str
    channel: str
    direction: str
    text: str
    created_at: datetime
    tier: str | None = None
    intent: str | None = None
    confidence: float | None = None
    agent: str | None = None


@dataclass(frozen=True)
class TimelineEntry:
    kind: str
    created_at: datetime
    summary: str
    note: str | None = None


@dataclass
class TicketView:
    """Everything the ticket page shows: the ticket, its customer, transcript and timeline."""

    ticket_id: int
    state: str
    channel: str
    priority: str
    reason: str | None
    intent: str | None
    summary: str | None
    verified_owner: str | None
    assignee_id: int | None
    assignee: str | None
    customer_id: int
    customer_name: str | None
    customer_email: str | None
    identities: list[tuple[str, str]]
    earlier_tickets: list[tuple[int, str, datetime]]
    transcript: list[TranscriptLine] = field(default_factory=list)
    timeline: list[TimelineEntry] = field(default_factory=list)
    created_at: datetime | None = None
    sla_due_at: datetime | None = None
    sla_breached_at: datetime | None = None
    brief: dict[str, Any] | None = None
    """The structured handoff brief (bot.handoff, schema version in ``brief["version"]``) or None."""

    @property
    def unanswered(self) -> bool:
        """The customer's last message has no agent reply after it (the bot's handoff message
        answers nothing): handing back now leaves it to nobody."""
        last_customer = max((m.id for m in self.transcript if m.author == "customer"), default=None)
        last_agent = max((m.id for m in self.transcript if m.author == "agent"), default=0)
        return last_customer is not None and last_customer > last_agent


def may_read(ticket: Ticket, agent: AgentView) -> bool:
    """The reading rule of this module's docstring; replayed traffic is nobody's (not even an
    admin's: it is test traffic, kept out of the inbox)."""
    if ticket.channel in HIDDEN_CHANNELS:
        return False
    return agent.is_admin or ticket.state in QUEUE_STATES or ticket.assignee_id == agent.id


def _check_text(text: str, what: str) -> str:
    text = text.replace("\x00", "").strip()
    if not text:
        raise InboxError(f"the {what} is empty")
    if len(text) > MAX_AGENT_TEXT:
        raise InboxError(f"the {what} has {len(text):,} characters; at most {MAX_AGENT_TEXT:,}")
    return text


async def queue(
    db: Database, agent: AgentView, *, view: str = "all", channel: str | None = None,
    priority: str | None = None, language: str | None = None, limit: int = 200,
) -> list[QueueItem]:
    """Handed-off tickets (``escalated`` and ``human``): soonest SLA due time first (the earliest
    running timer's, see :mod:`state.sla_timers`), then most urgent priority, then longest waiting.
    ``view``: ``all``, ``mine`` (assigned to ``agent``) or ``unassigned``; ``channel``, ``priority``
    and ``language`` (ISO 639-1, as the handoff brief found it) filter further. Raises :class:`InboxError` for an unknown view or priority."""
    if view not in QUEUE_VIEWS:
        raise InboxError(f"view must be one of {', '.join(QUEUE_VIEWS)}")
    if priority is not None and priority not in PRIORITIES:
        raise InboxError(f"priority must be one of {', '.join(PRIORITIES)}")
    query = (
        select(Ticket, Customer, Agent)
        .join(Customer, Customer.id == Ticket.customer_id)
        .outerjoin(Agent, Agent.id == Ticket.assignee_id)
        .where(Ticket.state.in_(QUEUE_STATES), Ticket.channel.not_in(HIDDEN_CHANNELS))
    )
    if view == "mine":
        query = query.where(Ticket.assignee_id == agent.id)
    elif view == "unassigned":
        query = query.where(Ticket.assignee_id.is_(None))
    if channel:
        query = query.where(Ticket.channel == channel)
    if priority:
        query = query.where(Ticket.priority == priority)
    if language:
        query = query.where(Ticket.language == language)
    rank = case({p: n for n, p in enumerate(PRIORITIES)}, value=Ticket.priority, else_=len(PRIORITIES))
    async with db.sessions() as session:
        order = (Ticket.sla_due_at.is_(None), Ticket.sla_due_at, rank, Ticket.updated_at, Ticket.id)
        rows = (await session.execute(query.order_by(*order).limit(limit))).all()
        ticket_ids = [t.id for t, _, _ in rows]
        previews = await _last_customer_texts(session, ticket_ids)
    return [
        QueueItem(
            ticket_id=t.id, channel=t.channel, state=t.state, priority=t.priority, reason=t.escalation_reason,
            intent=t.intent, assignee=(a.display_name or a.email) if a is not None else None,
            assignee_id=t.assignee_id, customer=c.display_name or c.email or f"customer {c.id}",
            preview=previews.get(t.id, ""), waiting_since=t.updated_at,
            sla_due_at=t.sla_due_at, sla_breached_at=t.sla_breached_at, language=t.language,
        )
        for t, c, a in rows
    ]


async def _last_customer_texts(session: AsyncSession, ticket_ids: list[int]) -> dict[int, str]:
    if not ticket_ids:
        return {}
    last = (
        select(func.max(Message.id))
        .where(Message.ticket_id.in_(ticket_ids), Message.author == "customer")
        .group_by(Message.ticket_id)
    )
    rows = await session.execute(select(Message.ticket_id, Message.text).where(Message.id.in_(last)))
    return {ticket_id: " ".join(text[:PREVIEW_CHARS * 2].split())[:PREVIEW_CHARS] for ticket_id, text in rows}


async def ticket_view(db: Database, ticket_id: int, agent: AgentView, *, max_messages: int = 500) -> TicketView:
    """The full view of one ticket; :class:`NotFound` when it does not exist or ``agent`` may not
    read it. The transcript holds the last ``max_messages`` messages, oldest first."""
    async with db.sessions() as session:
        ticket = await session.get(Ticket, ticket_id)
        if ticket is None or not may_read(ticket, agent):
            raise NotFound()
        customer = await session.get(Customer, ticket.customer_id)
        assert customer is not None
        assignee = await session.get(Agent, ticket.assignee_id) if ticket.assignee_id else None
        identities = [
            (i.channel, shown_address(i.channel, i.address))
            for i in await session.scalars(
                select(CustomerIdentity).where(CustomerIdentity.customer_id == customer.id).order_by(CustomerIdentity.id)
            )
        ]
        earlier = [
            (t.id, t.state, t.created_at)
            for t in await session.scalars(
                select(Ticket).where(Ticket.customer_id == customer.id, Ticket.id != ticket.id)
                .order_by(Ticket.id.desc()).limit(20)
            )
        ]
        messages = list(await session.scalars(
            select(Message).where(Message.ticket_id == ticket.id).order_by(Message.id.desc()).limit(max_messages)
        ))[::-1]
        events = list(await session.scalars(
            select(Event).where(Event.ticket_id == ticket.id).order_by(Event.id.desc()).limit(max_messages)
        ))[::-1]
        agent_names = {a.id: a.display_name or a.email for a in await session.scalars(select(Agent))}
    view = TicketView(
        ticket_id=ticket.id, state=ticket.state, channel=ticket.channel, priority=ticket.priority,
        reason=ticket.escalation_reason, intent=ticket.intent, summary=ticket.handoff_summary,
        verified_owner=ticket.verified_owner, assignee_id=ticket.assignee_id,
        assignee=(assignee.display_name or assignee.email) if assignee is not None else None,
        customer_id=customer.id, customer_name=customer.display_name, customer_email=customer.email,
        identities=identities, earlier_tickets=earlier, created_at=ticket.created_at,
        sla_due_at=ticket.sla_due_at, sla_breached_at=ticket.sla_breached_at,
        brief=ticket.brief if isinstance(ticket.brief, dict) and ticket.brief.get("version") == 1 else None,
    )
    for m in messages:
        meta = m.meta or {}
        bot = m.author == "bot"
        view.transcript.append(TranscriptLine(
            id=m.id, author=m.author, channel=m.channel, direction=m.direction, text=m.text,
            created_at=m.created_at, tier=meta.get("tier") if bot else None,
            intent=meta.get("intent") if bot else None,
            confidence=meta.get("confidence") if bot else None,
            agent=agent_names.get(meta.get("agent_id")) if m.author == "agent" else None,
        ))
    for e in events:
        view.timeline.append(_timeline_entry(e, agent_names))
    return view


def _timeline_entry(event: Event, agent_names: dict[int, str]) -> TimelineEntry:
    p: dict[str, Any] = event.payload or {}
    who = agent_names.get(p.get("agent_id"), "")
    if event.kind == "transition":
        text = f"{p.get('from')} -> {p.get('to')} ({p.get('reason')})"
        if who:
            text += f" by {who}"
    elif event.kind == "turn":
        text = f"turn: tier {p.get('tier')}, intent {p.get('intent')}, reason {p.get('reason')}"
        if p.get("confidence") is not None:
            text += f", confidence {float(p['confidence']):.2f}"
    elif event.kind == "note":
        return TimelineEntry("note", event.created_at, f"internal note by {who}", p.get("text"))
    elif event.kind in ("claimed", "assigned", "priority", "agent_reply"):
        detail = {
            "claimed": "claimed",
            "assigned": f"assigned to {agent_names.get(p.get('to_agent_id'), '?')}",
            "priority": f"priority {p.get('from')} -> {p.get('to')}",
            "agent_reply": "replied to the customer",
        }[event.kind]
        text = f"{detail} by {who}"
    else:
        text = event.kind
    return TimelineEntry(event.kind, event.created_at, text)


async def _for_update(session: AsyncSession, ticket_id: int, agent: AgentView) -> Ticket:
    """The ticket row, locked for the rest of the transaction (Postgres; SQLite writers take turns),
    after the reading check."""
    ticket = await session.scalar(
        select(Ticket).where(Ticket.id == ticket_id).with_for_update().execution_options(populate_existing=True)
    )
    if ticket is None or not may_read(ticket, agent):
        raise NotFound()
    return ticket


def _must_own(ticket: Ticket, agent: AgentView) -> None:
    if ticket.state not in QUEUE_STATES:
        raise Conflict(f"ticket {ticket.id} is {ticket.state}: reopen it first")
    if ticket.assignee_id != agent.id and not agent.is_admin:
        raise NotAllowed("claim the ticket first" if ticket.assignee_id is None else "another agent owns this ticket")


def _event(session: AsyncSession, ticket: Ticket, kind: str, agent: AgentView, now: datetime, **payload: Any) -> None:
    session.add(Event(ticket_id=ticket.id, kind=kind, payload={"agent_id": agent.id, **payload}, created_at=now))


async def claim(db: Database, ticket_id: int, agent: AgentView) -> None:
    """Take an unassigned handed-off ticket: one conditional UPDATE, so of two agents claiming at
    once exactly one wins; the other gets :class:`Conflict` (as does a ticket already owned)."""
    now = utcnow()
    async with db.write() as session:
        won = await session.execute(
            update(Ticket)
            .where(Ticket.id == ticket_id, Ticket.assignee_id.is_(None), Ticket.state.in_(QUEUE_STATES))
            .values(assignee_id=agent.id)
        )
        ticket = await session.get(Ticket, ticket_id, populate_existing=True)
        if ticket is None or not may_read(ticket, agent):
            raise NotFound()
        if won.rowcount != 1:
            if ticket.assignee_id == agent.id:
                raise Conflict("you already own this ticket")
            raise Conflict("another agent claimed this ticket first" if ticket.assignee_id else
                           f"ticket {ticket_id} is {ticket.state}, not waiting for an agent")
        if ticket.state == TicketState.escalated.value:
            transition(session, ticket, TicketState.human, reason="claimed", now=now, agent_id=agent.id)
        ticket.updated_at = now
        _event(session, ticket, "claimed", agent, now)


async def reply(db: Database, ticket_id: int, agent: AgentView, text: str, *, lease_s: float,
                sla: SlaConfig | None = None) -> tuple[Message, int]:
    """Store the agent's reply and queue it in the outbox; returns the message and its outbox entry
    id for the caller to send right after (it goes out on the channel of the customer's latest
    message). Needs ownership (see the module docstring). Raises :class:`InboxError`. With ``sla``
    (every caller but some tests) the ticket's SLA timers see the reply (:mod:`state.sla_timers`);
    the same holds for the ``sla`` argument of the actions below."""
    text = _check_text(text, "reply")
    now = utcnow()
    async with db.write() as session:
        ticket = await session.get(Ticket, ticket_id)
        if ticket is None or not may_read(ticket, agent):
            raise NotFound()
        # Row locks in the turns' order: the customer (seq) first, then the ticket.
        seq = await next_seq(session, ticket.customer_id)
        ticket = await _for_update(session, ticket_id, agent)
        _must_own(ticket, agent)
        channel = await session.scalar(
            select(Message.channel).where(Message.ticket_id == ticket.id, Message.direction == "inbound")
            .order_by(Message.id.desc()).limit(1)
        ) or ticket.channel
        message = Message(
            seq=seq, ticket_id=ticket.id, customer_id=ticket.customer_id, direction="outbound", author="agent",
            channel=channel, text=text, meta={"agent_id": agent.id}, created_at=now,
        )
        session.add(message)
        await session.flush()
        entry = queue_outbound(session, message, lease_s)
        await session.flush()
        if ticket.state == TicketState.escalated.value:
            transition(session, ticket, TicketState.human, reason="agent_replied", now=now, agent_id=agent.id)
        ticket.updated_at = now
        _event(session, ticket, "agent_reply", agent, now, message_id=message.id)
        if sla is not None:
            await sla_timers.on_agent_reply(session, ticket, sla, now)
        return message, entry.id


async def note(db: Database, ticket_id: int, agent: AgentView, text: str) -> None:
    """An internal note: an event on the ticket, never a message, so no customer path can carry it.
    Any agent who may read the ticket may add one."""
    text = _check_text(text, "note")
    async with db.write() as session:
        ticket = await _for_update(session, ticket_id, agent)
        _event(session, ticket, "note", agent, utcnow(), text=text)


async def transfer(db: Database, ticket_id: int, agent: AgentView, to_agent_id: int) -> None:
    """Give an owned ticket to another active agent. Raises :class:`InboxError`."""
    now = utcnow()
    async with db.write() as session:
        ticket = await _for_update(session, ticket_id, agent)
        _must_own(ticket, agent)
        target = await session.get(Agent, to_agent_id)
        if target is None or target.disabled_at is not None:
            raise InboxError("no active agent with that id")
        ticket.assignee_id = target.id
        ticket.updated_at = now
        if ticket.state == TicketState.escalated.value:
            transition(session, ticket, TicketState.human, reason="assigned", now=now, agent_id=agent.id)
        _event(session, ticket, "assigned", agent, now, to_agent_id=target.id)


async def set_priority(db: Database, ticket_id: int, agent: AgentView, priority: str,
                       *, sla: SlaConfig | None = None) -> None:
    """Set an owned ticket's priority; its running SLA timers follow the new policy."""
    if priority not in PRIORITIES:
        raise InboxError(f"priority must be one of {', '.join(PRIORITIES)}")
    async with db.write() as session:
        ticket = await _for_update(session, ticket_id, agent)
        _must_own(ticket, agent)
        if ticket.priority != priority:
            _event(session, ticket, "priority", agent, utcnow(), **{"from": ticket.priority, "to": priority})
            ticket.priority = priority
            if sla is not None:
                await sla_timers.on_priority(session, ticket, sla)


@dataclass(frozen=True)
class Resolved:
    """What :func:`resolve` leaves the caller to do after its commit: queue the ``ticket.resolved``
    webhook event (``WebhookEvent.id``, None when webhooks are off) and send the CSAT prompt
    (:class:`state.csat.Asked`, None when the ticket was asked before)."""

    webhook_event: int | None = None
    csat_prompt: csat.Asked | None = None


async def resolve(
    db: Database, ticket_id: int, agent: AgentView, *, webhooks_enabled: bool = False, lease_s: float = 30.0,
) -> Resolved:
    """Mark an owned ticket resolved; the customer's next message within the reopen window reopens
    it (to the bot). The first resolve of a ticket asks the customer for a rating (a prompt queued
    in the outbox with ``lease_s``; see :mod:`state.csat`). With ``webhooks_enabled`` a
    ``ticket.resolved`` handoff-webhook event is written in the same transaction. Returns what the
    caller sends or queues after the commit (:class:`Resolved`)."""
    async with db.write() as session:
        peek = await session.get(Ticket, ticket_id)
        if peek is None or not may_read(peek, agent):
            raise NotFound()
        # Row locks in the turns' order: the customer (seq, for the CSAT prompt) first, then the ticket.
        seq = await next_seq(session, peek.customer_id) if csat.will_ask(peek) else None
        ticket = await _for_update(session, ticket_id, agent)
        _must_own(ticket, agent)
        transition(session, ticket, TicketState.resolved, reason="resolved_by_agent", agent_id=agent.id)
        await sla_timers.stop(session, ticket, resolved=True)
        asked = await csat.request(session, ticket, "agent", agent.id, lease_s=lease_s, seq=seq)
        event = await webhook_events.add(
            session, webhook_events.RESOLVED, ticket, {"resolved_by": "agent", "agent_id": agent.id},
            enabled=webhooks_enabled,
        )
    return Resolved(webhook_event=event.id if event is not None else None, csat_prompt=asked)


async def reopen(db: Database, ticket_id: int, agent: AgentView, *, sla: SlaConfig | None = None) -> None:
    """Take a resolved ticket back into the inbox, owned by ``agent`` (its resolution clock starts
    again)."""
    async with db.write() as session:
        ticket = await _for_update(session, ticket_id, agent)
        if ticket.state != TicketState.resolved.value:
            raise Conflict(f"ticket {ticket_id} is {ticket.state}, not resolved")
        if ticket.assignee_id not in (None, agent.id) and not agent.is_admin:
            raise NotAllowed("another agent resolved this ticket")
        ticket.assignee_id = agent.id
        transition(session, ticket, TicketState.human, reason="reopened_by_agent", agent_id=agent.id)
        if sla is not None:
            await sla_timers.on_escalated(session, ticket, sla, reopened=True)


async def hand_back(db: Database, ticket_id: int, agent: AgentView) -> None:
    """Give an owned ticket back to the bot: it answers the customer's next message (what the
    customer wrote while a person owned the ticket stays answered by that person)."""
    async with db.write() as session:
        ticket = await _for_update(session, ticket_id, agent)
        _must_own(ticket, agent)
        assert TicketState(ticket.state) in BOT_SILENT_STATES
        ticket.assignee_id = None
        ticket.pending = None
        transition(session, ticket, TicketState.bot, reason="handed_back", agent_id=agent.id)
        await sla_timers.stop(session, ticket, resolved=False)


async def active_agents(db: Database) -> list[tuple[int, str]]:
    """``(id, label)`` of every agent who can log in, for the transfer list."""
    async with db.sessions() as session:
        rows = await session.scalars(select(Agent).where(Agent.disabled_at.is_(None)).order_by(Agent.id))
        return [(a.id, a.display_name or a.email) for a in rows]
