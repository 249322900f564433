"""SLA timers on handed-off tickets (state/sla_timers.py) and the clock that breaches them
(helpline/sla.py): started at the handoff, met by agent replies, paused while the ticket waits on
the customer, re-measured on a priority change, stopped at resolve and hand-back; each breach
recorded exactly once across processes and restarts, raising the priority, with its event and
webhook. On the real application, both database backends."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from config.settings import Settings
from config.sla import SlaConfig, load_sla_config
from helpline.conversation import Inbound
from helpline.inbox import resolve_ticket, send_reply
from helpline.server import RUNTIME, build_app
from state import agents as accounts
from state import inbox
from state import sla_timers
from state.db import open_database
from state.models import Event, SlaTimer, Ticket, WebhookEvent, utcnow

SLA_24_7 = """
policies:
  urgent: {first_response: 10m, next_response: 20m, resolution: 1h}
  high:   {first_response: 30m, next_response: 1h, resolution: 4h}
  normal: {first_response: 1h,  next_response: 2h, resolution: 8h}
  low:    {first_response: 2h,  next_response: 4h, resolution: 16h}
calendar:
  time_zone: UTC
  always_open: true
"""


@pytest.fixture
def sla_file(tmp_path: Path) -> Path:
    path = tmp_path / "sla.yaml"
    path.write_text(SLA_24_7)
    return path


@pytest.fixture
def make_client(app_settings: Settings, aiohttp_client: Any, sla_file: Path) -> Any:
    async def make(**overrides: Any) -> Any:
        settings = app_settings.model_copy(update={"sla_file": sla_file, "sla_tick_s": 1, **overrides})
        return await aiohttp_client(build_app(settings))

    return make


async def _escalate(rt: Any, address: str) -> int:
    accepted = await rt.conversations.receive(Inbound("webchat", address, "I want to talk to a real person"))
    await rt.conversations.process_ticket(accepted.ticket.id)
    return accepted.ticket.id


def _key(timer: SlaTimer, seen: dict[str, int]) -> str:
    seen[timer.target] = seen.get(timer.target, 0) + 1
    return timer.target if seen[timer.target] == 1 else f"{timer.target}#{seen[timer.target]}"


async def timers_of(rt: Any, ticket_id: int) -> dict[str, SlaTimer]:
    """The ticket's timers by target, in creation order (``next_response#2`` for a second one)."""
    async with rt.db.sessions() as session:
        rows = list(await session.scalars(select(SlaTimer).where(SlaTimer.ticket_id == ticket_id).order_by(SlaTimer.id)))
    seen: dict[str, int] = {}
    return {_key(t, seen): t for t in rows}


async def ticket_of(rt: Any, ticket_id: int) -> Ticket:
    async with rt.db.sessions() as session:
        ticket = await session.get(Ticket, ticket_id)
        assert ticket is not None
        return ticket


def close_to(a: datetime | None, b: datetime, seconds: float = 5.0) -> bool:
    return a is not None and abs((a - b).total_seconds()) <= seconds


def test_the_shipped_policies_cover_every_inbox_priority() -> None:
    config = load_sla_config(Settings().sla_file)
    assert set(config.policies) == set(inbox.PRIORITIES)
    for policy in config.policies.values():
        assert 0 < policy.first_response <= policy.next_response <= policy.resolution


async def test_timers_follow_the_ticket_through_the_inbox(make_client: Any) -> None:
    rt = (await make_client()).server.app[RUNTIME]
    started = utcnow()
    ticket_id = await _escalate(rt, "sla-life")
    t = await timers_of(rt, ticket_id)
    assert set(t) == {"first_response", "resolution"}
    assert t["first_response"].status == "running" and close_to(t["first_response"].due_at, started + timedelta(hours=1))
    assert close_to(t["resolution"].due_at, started + timedelta(hours=8))
    assert close_to((await ticket_of(rt, ticket_id)).sla_due_at, started + timedelta(hours=1))

    agent = await accounts.add_agent(rt.db, "sla-agent@example.com", "correct horse battery staple")
    await inbox.claim(rt.db, ticket_id, agent)
    await send_reply(rt, ticket_id, agent, "Hello, I am here to help.")
    t = await timers_of(rt, ticket_id)
    assert t["first_response"].status == "met"
    # Waiting on the customer: the resolution clock is paused with what is left of its 8 hours.
    assert t["resolution"].status == "running" and t["resolution"].due_at is None
    assert 8 * 3600 - 60 <= t["resolution"].budget_s <= 8 * 3600
    ticket = await ticket_of(rt, ticket_id)
    assert ticket.first_response_at is not None and ticket.sla_due_at is None

    resumed = utcnow()
    more = await rt.conversations.receive(Inbound("webchat", "sla-life", "thanks, my order is #W5976205"))
    await rt.conversations.process_ticket(more.ticket.id)
    t = await timers_of(rt, ticket_id)
    assert t["next_response"].status == "running" and close_to(t["next_response"].due_at, resumed + timedelta(hours=2))
    assert close_to(t["resolution"].due_at, resumed + timedelta(seconds=t["resolution"].budget_s))

    # Urgent: both running targets are re-measured against 20 min / 1 h, the time used kept.
    await inbox.set_priority(rt.db, ticket_id, agent, "urgent", sla=rt.sla.config)
    t = await timers_of(rt, ticket_id)
    assert close_to(t["next_response"].due_at, resumed + timedelta(minutes=20))
    assert close_to(t["resolution"].due_at, started + timedelta(hours=1), seconds=10)
    assert close_to((await ticket_of(rt, ticket_id)).sla_due_at, resumed + timedelta(minutes=20))

    await resolve_ticket(rt, ticket_id, agent)
    t = await timers_of(rt, ticket_id)
    assert (t["resolution"].status, t["next_response"].status) == ("met", "cancelled")
    assert (await ticket_of(rt, ticket_id)).sla_due_at is None


async def test_handing_back_cancels_the_running_timers(make_client: Any) -> None:
    rt = (await make_client()).server.app[RUNTIME]
    ticket_id = await _escalate(rt, "sla-back")
    agent = await accounts.add_agent(rt.db, "sla-back@example.com", "correct horse battery staple")
    await inbox.claim(rt.db, ticket_id, agent)
    await inbox.hand_back(rt.db, ticket_id, agent)
    assert {t.status for t in (await timers_of(rt, ticket_id)).values()} == {"cancelled"}
    assert (await ticket_of(rt, ticket_id)).sla_due_at is None


async def _overdue(rt: Any, ticket_id: int, target: str = "first_response", ago_s: float = 5) -> int:
    async with rt.db.write() as session:
        timer = await session.scalar(select(SlaTimer).where(SlaTimer.ticket_id == ticket_id, SlaTimer.target == target))
        timer.due_at = utcnow() - timedelta(seconds=ago_s)
        ticket = await session.get(Ticket, ticket_id)
        ticket.sla_due_at = timer.due_at
        return timer.id


async def test_a_breach_is_recorded_once_by_racing_processes_and_raises_the_priority(
    make_client: Any, migrated_database_url: str
) -> None:
    rt = (await make_client(sla_tick_s=60)).server.app[RUNTIME]
    ticket_id = await _escalate(rt, "sla-race")
    timer_id = await _overdue(rt, ticket_id)
    # Four "processes": separate connection pools, all at once.
    pools = [open_database(rt.settings.effective_database_url) for _ in range(4)]
    try:
        results = await asyncio.gather(*(
            sla_timers.breach(db, timer_id, rt.sla.config, webhooks_enabled=True) for db in pools
        ))
    finally:
        for db in pools:
            await db.dispose()
    won = [r for r in results if r is not None]
    assert len(won) == 1
    breach = won[0]
    assert (breach.target, breach.priority_from, breach.priority_to) == ("first_response", "normal", "high")
    ticket = await ticket_of(rt, ticket_id)
    assert ticket.priority == "high" and ticket.sla_breached_at is not None
    t = await timers_of(rt, ticket_id)
    assert t["first_response"].status == "breached"
    # The resolution target now follows the high policy (4 h from the handoff, not 8 h).
    assert close_to(t["resolution"].due_at, t["first_response"].started_at + timedelta(hours=4), seconds=10)
    async with rt.db.sessions() as session:
        events = list(await session.scalars(select(Event).where(Event.ticket_id == ticket_id, Event.kind == "sla_breached")))
        hooks = await session.scalar(select(func.count()).select_from(WebhookEvent).where(WebhookEvent.ticket_id == ticket_id))
    assert len(events) == 1 and events[0].payload["target"] == "first_response"
    assert events[0].payload["priority"] == ["normal", "high"]
    assert hooks == 1  # webhooks_enabled=True here: the ticket.sla_breached event was written once


async def test_a_timer_not_yet_due_met_or_paused_is_never_breached(make_client: Any) -> None:
    rt = (await make_client(sla_tick_s=60)).server.app[RUNTIME]
    ticket_id = await _escalate(rt, "sla-not-due")
    t = await timers_of(rt, ticket_id)
    config: SlaConfig = rt.sla.config
    assert await sla_timers.breach(rt.db, t["first_response"].id, config, webhooks_enabled=False) is None
    agent = await accounts.add_agent(rt.db, "sla-nd@example.com", "correct horse battery staple")
    await inbox.claim(rt.db, ticket_id, agent)
    await send_reply(rt, ticket_id, agent, "On it.")
    later = utcnow() + timedelta(days=30)
    for timer in (await timers_of(rt, ticket_id)).values():  # met, and paused
        assert await sla_timers.breach(rt.db, timer.id, config, webhooks_enabled=False, now=later) is None
    assert (await ticket_of(rt, ticket_id)).sla_breached_at is None


async def test_the_periodic_tick_breaches_overdue_timers(make_client: Any) -> None:
    rt = (await make_client()).server.app[RUNTIME]
    ticket_id = await _escalate(rt, "sla-tick")
    await _overdue(rt, ticket_id)
    deadline = time.monotonic() + 20
    while (await ticket_of(rt, ticket_id)).sla_breached_at is None:
        assert time.monotonic() < deadline, "the sla_tick job never breached the timer"
        await asyncio.sleep(0.2)
    assert (await timers_of(rt, ticket_id))["first_response"].status == "breached"
    assert (await ticket_of(rt, ticket_id)).priority == "high"


async def test_two_servers_and_a_restart_breach_each_timer_once(app_settings: Settings, aiohttp_client: Any,
                                                                sla_file: Path) -> None:
    """Two servers on one database tick every second; one of them stops and another starts
    (a restart) while timers fall due. Every overdue timer ends breached, each exactly once."""
    settings = app_settings.model_copy(update={"sla_file": sla_file, "sla_tick_s": 1})
    first = await aiohttp_client(build_app(settings))
    second = await aiohttp_client(build_app(settings))
    rt = first.server.app[RUNTIME]
    ids = [await _escalate(rt, f"sla-two-{n}") for n in range(6)]
    for ticket_id in ids[:3]:
        await _overdue(rt, ticket_id)
    await first.close()  # "restart": the first server goes away with timers due
    for ticket_id in ids[3:]:
        await _overdue(second.server.app[RUNTIME], ticket_id)
    third = await aiohttp_client(build_app(settings))
    rt3 = third.server.app[RUNTIME]
    deadline = time.monotonic() + 30
    while True:
        async with rt3.db.sessions() as session:
            breached = await session.scalar(
                select(func.count()).select_from(Event).where(Event.kind == "sla_breached", Event.ticket_id.in_(ids))
            )
        if breached >= 6:
            break
        assert time.monotonic() < deadline, f"only {breached} of 6 breaches recorded"
        await asyncio.sleep(0.2)
    await asyncio.sleep(2.5)  # two more ticks on both servers: nothing recorded twice
    async with rt3.db.sessions() as session:
        per_ticket = dict((await session.execute(
            select(Event.ticket_id, func.count()).where(Event.kind == "sla_breached", Event.ticket_id.in_(ids))
            .group_by(Event.ticket_id)
        )).all())
    assert per_ticket == {ticket_id: 1 for ticket_id in ids}


async def test_a_ticket_handed_back_and_escalated_again_is_due_a_first_response_again(make_client: Any) -> None:
    """Found by a support lead trying the inbox: the returning customer's ticket only had the
    resolution target (due days later), so it sorted behind every fresh ticket."""
    rt = (await make_client()).server.app[RUNTIME]
    ticket_id = await _escalate(rt, "sla-again")
    agent = await accounts.add_agent(rt.db, "sla-again@example.com", "correct horse battery staple")
    await inbox.claim(rt.db, ticket_id, agent)
    await send_reply(rt, ticket_id, agent, "Hello!")
    await inbox.hand_back(rt.db, ticket_id, agent)
    again = utcnow()
    assert await _escalate(rt, "sla-again") == ticket_id
    t = await timers_of(rt, ticket_id)
    assert t["first_response#2"].status == "running" and close_to(t["first_response#2"].due_at, again + timedelta(hours=1))
    assert close_to((await ticket_of(rt, ticket_id)).sla_due_at, again + timedelta(hours=1))
    # The customer writes again before anyone answers: still the first response, no next-response clock.
    more = await rt.conversations.receive(Inbound("webchat", "sla-again", "hello??"))
    await rt.conversations.process_ticket(more.ticket.id)
    assert "next_response" not in await timers_of(rt, ticket_id)
