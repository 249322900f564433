"""The ticket state machine: the one explicit table of legal transitions.

Every change of ``Ticket.state`` goes through :func:`transition`, which checks the table, stamps the
ticket and appends a ``transition`` event in the same database session (so the change and its record
commit together). An illegal transition raises :class:`IllegalTransition` and changes nothing.

States:
- ``bot``: the bot owns the ticket and is working on the customer's latest message;
- ``awaiting_customer``: the bot answered or asked for something and waits for the customer;
- ``escalated``: handed off; waiting in the agent inbox for a human (the bot stays silent);
- ``human``: an agent owns the ticket (the bot stays silent);
- ``resolved``: answered; reopens on a new customer message within the reopen window;
- ``closed``: final. A later message opens a new ticket.
"""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from state.models import Event, Ticket, utcnow


class TicketState(str, Enum):
    bot = "bot"
    awaiting_customer = "awaiting_customer"
    escalated = "escalated"
    human = "human"
    resolved = "resolved"
    closed = "closed"


S = TicketState

TRANSITIONS: dict[TicketState, frozenset[TicketState]] = {
    S.bot: frozenset({S.awaiting_customer, S.escalated, S.resolved, S.closed}),
    S.awaiting_customer: frozenset({S.bot, S.escalated, S.resolved, S.closed}),
    S.escalated: frozenset({S.human, S.bot, S.resolved, S.closed}),
    S.human: frozenset({S.bot, S.awaiting_customer, S.resolved, S.closed}),
    S.resolved: frozenset({S.bot, S.human, S.closed}),  # human: an agent reopens it
    S.closed: frozenset(),
}
"""Legal moves: ``TRANSITIONS[from]`` is the set of states reachable in one step."""

BOT_SILENT_STATES = frozenset({S.escalated, S.human})
"""While a ticket is in one of these states a human owns it and the bot sends nothing."""


class IllegalTransition(ValueError):
    """Raised for a move that is not in :data:`TRANSITIONS`; the ticket is left unchanged."""

    def __init__(self, ticket_id: int | None, current: str, target: str) -> None:
        allowed = ", ".join(sorted(s.value for s in TRANSITIONS.get(TicketState(current), ())))
        super().__init__(
            f"ticket {ticket_id}: illegal transition {current} -> {target} "
            f"(allowed from {current}: {allowed or 'none'})"
        )
        self.ticket_id = ticket_id
        self.current = current
        self.target = target


def can_transition(current: TicketState | str, target: TicketState | str) -> bool:
    """True when ``current -> target`` is a legal move. Unknown state names raise ``ValueError``."""
    return TicketState(target) in TRANSITIONS[TicketState(current)]


def transition(
    session: AsyncSession,
    ticket: Ticket,
    target: TicketState | str,
    *,
    reason: str,
    now: datetime | None = None,
    **details: Any,
) -> Event:
    """Move ``ticket`` to ``target`` and add the ``transition`` event to ``session`` (not committed).

    ``reason`` is a short machine-readable cause (``"answered"``, ``"low_confidence"``...); extra
    keyword ``details`` go into the event payload. Raises :class:`IllegalTransition`.
    """
    target_state = TicketState(target)
    current = TicketState(ticket.state)
    if target_state not in TRANSITIONS[current]:
        raise IllegalTransition(ticket.id, current.value, target_state.value)
    now = now or utcnow()
    ticket.state = target_state.value
    ticket.updated_at = now
    if target_state is S.resolved:
        ticket.resolved_at = now
    elif target_state is S.closed:
        ticket.closed_at = now
    if target_state is S.escalated:
        ticket.escalation_reason = reason
    event = Event(
        ticket_id=ticket.id,
        kind="transition",
        payload={"from": current.value, "to": target_state.value, "reason": reason, **details},
        created_at=now,
    )
    session.add(event)
    return event
