"""The ticket state machine: every legal and every illegal transition, on the real database."""

from __future__ import annotations

import itertools

import pytest
from sqlalchemy import select

from state.db import open_database
from state.models import Customer, Event, Ticket
from state.tickets import (
    BOT_SILENT_STATES,
    TRANSITIONS,
    IllegalTransition,
    TicketState,
    can_transition,
    transition,
)

S = TicketState

EXPECTED_LEGAL = {
    (S.bot, S.awaiting_customer), (S.bot, S.escalated), (S.bot, S.resolved), (S.bot, S.closed),
    (S.awaiting_customer, S.bot), (S.awaiting_customer, S.escalated),
    (S.awaiting_customer, S.resolved), (S.awaiting_customer, S.closed),
    (S.escalated, S.human), (S.escalated, S.bot), (S.escalated, S.resolved), (S.escalated, S.closed),
    (S.human, S.bot), (S.human, S.awaiting_customer), (S.human, S.resolved), (S.human, S.closed),
    (S.resolved, S.bot), (S.resolved, S.human), (S.resolved, S.closed),
}
ALL_PAIRS = list(itertools.product(list(S), list(S)))


def test_table_is_exactly_the_documented_one() -> None:
    table = {(a, b) for a, targets in TRANSITIONS.items() for b in targets}
    assert table == EXPECTED_LEGAL
    assert set(TRANSITIONS) == set(S)
    assert TRANSITIONS[S.closed] == frozenset()
    assert BOT_SILENT_STATES == {S.escalated, S.human}


@pytest.fixture
async def db(migrated_database_url: str):
    database = open_database(migrated_database_url)
    yield database
    await database.dispose()


async def _ticket(db, state: TicketState) -> int:
    async with db.write() as session:
        customer = Customer()
        session.add(customer)
        await session.flush()
        ticket = Ticket(customer_id=customer.id, channel="webchat", state=state.value)
        session.add(ticket)
        await session.flush()
        return ticket.id


@pytest.mark.parametrize(("current", "target"), ALL_PAIRS, ids=[f"{a.value}->{b.value}" for a, b in ALL_PAIRS])
async def test_every_transition(db, current: TicketState, target: TicketState) -> None:
    ticket_id = await _ticket(db, current)
    legal = (current, target) in EXPECTED_LEGAL
    assert can_transition(current, target) is legal
    if legal:
        async with db.write() as session:
            ticket = await session.get(Ticket, ticket_id)
            transition(session, ticket, target, reason="test", agent="a1")
        async with db.sessions() as session:
            ticket = await session.get(Ticket, ticket_id)
            assert ticket.state == target.value
            events = (await session.execute(select(Event).where(Event.ticket_id == ticket_id))).scalars().all()
            assert [e.payload for e in events] == [
                {"from": current.value, "to": target.value, "reason": "test", "agent": "a1"}
            ]
            assert (ticket.resolved_at is not None) is (target is S.resolved)
            assert (ticket.closed_at is not None) is (target is S.closed)
    else:
        with pytest.raises(IllegalTransition) as err:
            async with db.write() as session:
                ticket = await session.get(Ticket, ticket_id)
                transition(session, ticket, target, reason="test")
        assert f"illegal transition {current.value} -> {target.value}" in str(err.value)
        async with db.sessions() as session:
            ticket = await session.get(Ticket, ticket_id)
            assert ticket.state == current.value  # unchanged, nothing committed
            count = len((await session.execute(select(Event).where(Event.ticket_id == ticket_id))).all())
            assert count == 0


def test_unknown_state_name_raises() -> None:
    with pytest.raises(ValueError):
        can_transition("bot", "sleeping")
