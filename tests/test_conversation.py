"""The conversation service on the real application: serialised turns, the kill switch, handoff
silence, reopen window, crash recovery and what every turn records."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from app_fixtures import ChatSocket
from sqlalchemy import select

from config.settings import AgentMode, Settings
from helpline.conversation import Inbound
from helpline.server import RUNTIME, build_app
from state.db import open_database
from state.models import Event, Message, Ticket, utcnow
from state.tickets import TicketState, transition


def runtime(client):
    return client.server.app[RUNTIME]


async def _events(rt, ticket_id: int, kind: str) -> list[dict]:
    async with rt.db.sessions() as session:
        rows = await session.execute(
            select(Event).where(Event.ticket_id == ticket_id, Event.kind == kind).order_by(Event.id)
        )
        return [e.payload for e in rows.scalars()]


async def _wait_idle(rt, timeout: float = 60.0) -> None:
    await asyncio.wait_for(rt.conversations.drain(timeout), timeout)
    while rt.conversations._tasks:
        await asyncio.sleep(0.05)


async def test_fifty_messages_at_once_are_stored_and_answered_in_order_one_at_a_time(helpline_client) -> None:
    rt = runtime(helpline_client)
    active = 0
    peak = 0
    order: list[str] = []
    real_route = rt.router.route

    async def observed_route(text, ctx):
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        order.append(text)
        try:
            await asyncio.sleep(0.005)  # widen the window in which an interleaving would show
            return await real_route(text, ctx)
        finally:
            active -= 1

    rt.router.route = observed_route
    chat = await ChatSocket.open(helpline_client.session, str(helpline_client.make_url("/")))
    # Real orders: a second "order not found" would (rightly) hand the ticket to a person.
    orders = list(rt.orders._orders.values())[:50]
    texts = [f"message {i:02d}: where is order {o.order_id}? my email is {o.email}" for i, o in enumerate(orders)]
    await asyncio.gather(*(chat.send(t, f"burst-{i:02d}") for i, t in enumerate(texts)))
    replies = 0
    while replies < 50:
        frame = await chat.next_frame(timeout=60)
        replies += frame["type"] == "message" and frame["direction"] == "outbound"
    await chat.close()
    await _wait_idle(rt)

    async with rt.db.sessions() as session:
        inbound = (await session.execute(
            select(Message).where(Message.direction == "inbound").order_by(Message.seq))).scalars().all()
        tickets = (await session.execute(select(Ticket))).scalars().all()
    assert len(tickets) == 1
    # Stored in the order sent on the socket, and all processed.
    assert [m.provider_message_id for m in inbound] == [f"burst-{i:02d}" for i in range(50)]
    assert all(m.processed_at is not None for m in inbound)
    assert peak == 1
    assert order == texts
    turns = await _events(rt, tickets[0].id, "turn")
    assert [t["message_id"] for t in turns] == [m.id for m in inbound]
    assert all(t["reply_message_id"] > t["message_id"] for t in turns)
    assert len(rt.locks) == 0  # no lock left behind


async def test_kill_switch_runs_no_model_and_escalates(app_settings: Settings, aiohttp_client) -> None:
    settings = app_settings.model_copy(update={"agent_mode": AgentMode.disabled, "disabled_reply": "We are closed."})
    client = await aiohttp_client(build_app(settings))
    rt = runtime(client)
    embeds_at_start = rt.embedder.calls
    searches_at_start = rt.knowledge.search_calls
    chat = await ChatSocket.open(client.session, str(client.make_url("/")), labels=True)
    for i, text in enumerate(["hi", "where is my order #W2611340", "I want a refund now"]):
        await chat.send(text, f"k-{i}")
        reply = await chat.bot_reply()
        assert reply["text"] == "We are closed."
        assert reply["meta"]["tier"] == "human" and reply["meta"]["escalated"] is True
    await chat.close()
    await _wait_idle(rt)
    assert rt.understander.calls == 0
    assert rt.embedder.calls == embeds_at_start
    assert rt.knowledge.search_calls == searches_at_start
    async with rt.db.sessions() as session:
        ticket = (await session.execute(select(Ticket))).scalar_one()
    assert ticket.state == "escalated" and ticket.escalation_reason == "kill_switch"
    assert "switched off" in ticket.handoff_summary
    turns = await _events(rt, ticket.id, "turn")
    assert [t["reason"] for t in turns] == ["kill_switch"] * 3


async def test_escalation_silences_the_bot_and_records_summary(helpline_client) -> None:
    rt = runtime(helpline_client)
    conv = rt.conversations
    await conv.receive(Inbound("webchat", "customer-esc-1", "hi there"))
    await _wait_idle(rt)
    await conv.receive(Inbound("webchat", "customer-esc-1", "I want to speak to a real person about order #W2611340"))
    await _wait_idle(rt)
    async with rt.db.sessions() as session:
        ticket = (await session.execute(select(Ticket))).scalar_one()
    assert ticket.state == "escalated" and ticket.escalation_reason == "explicit_request"
    assert "asked for a person" in ticket.handoff_summary
    assert "#W2611340" in ticket.handoff_summary
    assert "speak to a real person" in ticket.handoff_summary

    # An agent takes it: the bot stays silent on the next message.
    async with rt.db.write() as session:
        t = await session.get(Ticket, ticket.id)
        transition(session, t, TicketState.human, reason="agent_assigned", agent="ana")
    await conv.receive(Inbound("webchat", "customer-esc-1", "hello? anyone?"))
    await _wait_idle(rt)
    async with rt.db.sessions() as session:
        outbound = (await session.execute(
            select(Message).where(Message.direction == "outbound").order_by(Message.id))).scalars().all()
    assert len(outbound) == 2  # the greeting and the handoff message; nothing after
    last_turn = (await _events(rt, ticket.id, "turn"))[-1]
    assert last_turn["reason"] == "human_owns_ticket" and last_turn["reply"] is False


async def test_every_turn_records_tier_intent_confidence_latency_models_kb_and_cost(helpline_client) -> None:
    rt = runtime(helpline_client)
    await rt.conversations.receive(Inbound("webchat", "customer-rec-1", "how do I reset my password?"))
    await _wait_idle(rt)
    async with rt.db.sessions() as session:
        ticket = (await session.execute(select(Ticket))).scalar_one()
    (turn,) = await _events(rt, ticket.id, "turn")
    assert turn["tier"] == "retrieval" and turn["intent"] == "recover_password"
    assert 0.7 <= turn["confidence"] <= 1.0
    assert turn["latency_ms"] > 0
    assert turn["models"]["embedding"] == rt.embedder.model_id
    assert turn["models"]["intent"] == rt.intent_model.version
    assert turn["kb_version"] == rt.knowledge.version
    assert turn["cost_usd"] == 0.0
    assert turn["citations"] and turn["retrieval_score"] >= rt.settings.retrieval_threshold


async def test_resolved_ticket_reopens_within_window_and_not_after(helpline_client) -> None:
    rt = runtime(helpline_client)
    conv = rt.conversations
    await conv.receive(Inbound("webchat", "customer-reopen", "hi"))
    await _wait_idle(rt)
    await conv.receive(Inbound("webchat", "customer-reopen", "that's all, goodbye!"))
    await _wait_idle(rt)
    async with rt.db.sessions() as session:
        ticket = (await session.execute(select(Ticket))).scalar_one()
    assert ticket.state == "resolved"
    accepted = await conv.receive(Inbound("webchat", "customer-reopen", "actually one more thing"))
    await _wait_idle(rt)
    assert accepted.ticket.id == ticket.id and not accepted.new_ticket
    transitions = await _events(rt, ticket.id, "transition")
    assert {"from": "resolved", "to": "bot", "reason": "reopened"} in transitions

    # Resolve again, then age the resolution past the window: a new ticket opens.
    async with rt.db.write() as session:
        t = await session.get(Ticket, ticket.id)
        if t.state != "resolved":  # every open state may move to resolved
            transition(session, t, TicketState.resolved, reason="test")
        t.resolved_at = utcnow() - timedelta(seconds=rt.settings.reopen_window_s + 60)
    later = await conv.receive(Inbound("webchat", "customer-reopen", "hello again"))
    await _wait_idle(rt)
    assert later.new_ticket and later.ticket.id != ticket.id
    async with rt.db.sessions() as session:
        old = await session.get(Ticket, ticket.id)
    assert old.state == "closed"


async def test_message_stored_before_a_crash_is_answered_after_restart(app_settings: Settings, aiohttp_client) -> None:
    from state.conversations import accept_inbound, get_or_create_customer
    from state.db import open_database
    from state.migrate import upgrade

    # Simulate a crash after intake: the message is committed, no turn ran.
    await upgrade(app_settings.effective_database_url)
    db = open_database(app_settings.effective_database_url)
    customer = await get_or_create_customer(db, "webchat", "crashed-session-1")
    accepted = await accept_inbound(
        db, customer_id=customer.id, channel="webchat", text="what payment methods can I use?",
        provider_message_id="crash-1", reopen_window=timedelta(days=7),
    )
    await db.dispose()

    client = await aiohttp_client(build_app(app_settings))
    rt = runtime(client)
    await _wait_idle(rt)
    async with rt.db.sessions() as session:
        stored = await session.get(Message, accepted.message.id)
        replies = (await session.execute(
            select(Message).where(Message.direction == "outbound"))).scalars().all()
    assert stored.processed_at is not None
    assert len(replies) == 1 and replies[0].meta["intent"] == "check_payment_methods"


async def test_a_failing_turn_hands_the_ticket_to_a_person(helpline_client) -> None:
    rt = runtime(helpline_client)

    async def broken(text, ctx):
        raise RuntimeError("model exploded")

    rt.router.route = broken
    await rt.conversations.receive(Inbound("webchat", "customer-fail", "hi"))
    await _wait_idle(rt)
    async with rt.db.sessions() as session:
        ticket = (await session.execute(select(Ticket))).scalar_one()
        message = (await session.execute(select(Message).where(Message.direction == "inbound"))).scalar_one()
    assert ticket.state == "escalated" and ticket.escalation_reason == "internal_error"
    assert message.processed_at is not None  # not retried forever


@pytest.mark.parametrize("payload", ["UPDATE events SET kind = 'x'", "DELETE FROM events"])
async def test_event_log_is_append_only(helpline_client, payload: str) -> None:
    from sqlalchemy import text

    rt = runtime(helpline_client)
    await rt.conversations.receive(Inbound("webchat", "customer-ao", "hi"))
    await _wait_idle(rt)
    with pytest.raises(Exception, match="append-only"):
        async with rt.db.write() as session:
            await session.execute(text(payload))


async def test_a_worker_whose_lock_expired_cannot_write(helpline_client) -> None:
    from state.conversations import FencedOut, accept_inbound, claim_ticket

    rt = runtime(helpline_client)
    first = await rt.conversations.receive(Inbound("webchat", "customer-fence", "hi"))
    await _wait_idle(rt)
    # A second message stored but not yet routed, and two workers that both think they own the
    # ticket: A claimed first, then its lock expired and B claimed.
    pending = await accept_inbound(
        rt.db, customer_id=first.customer_id, channel="webchat", text="what payment methods do you take?",
        provider_message_id="fence-2", reopen_window=timedelta(days=7),
    )
    epoch_a = await claim_ticket(rt.db, first.ticket.id)
    epoch_b = await claim_ticket(rt.db, first.ticket.id)
    assert epoch_b == epoch_a + 1
    with pytest.raises(FencedOut):
        await rt.conversations._turn(pending.message, epoch_a)
    async with rt.db.sessions() as session:
        assert (await session.get(Message, pending.message.id)).processed_at is None
        assert len((await session.execute(select(Message).where(Message.direction == "outbound"))).all()) == 1
    await rt.conversations._turn(pending.message, epoch_b)
    async with rt.db.sessions() as session:
        assert (await session.get(Message, pending.message.id)).processed_at is not None
        replies = (await session.execute(
            select(Message).where(Message.direction == "outbound").order_by(Message.seq))).scalars().all()
    assert len(replies) == 2 and replies[-1].meta["intent"] == "check_payment_methods"


async def test_sweep_picks_up_a_stale_message_nobody_works_on(helpline_client) -> None:
    from state.conversations import accept_inbound, get_or_create_customer

    rt = runtime(helpline_client)
    customer = await get_or_create_customer(rt.db, "webchat", "customer-sweep")
    stale = await accept_inbound(
        rt.db, customer_id=customer.id, channel="webchat", text="hello",
        provider_message_id="sweep-1", reopen_window=timedelta(days=7),
        now=utcnow() - timedelta(seconds=30),
    )
    # Younger than the app's own periodic sweep threshold (stale_after_s, 45 s), so only the calls
    # below can pick it up.
    assert rt.settings.stale_after_s > 30
    assert await rt.conversations.sweep(stale_after_s=3600) == 0  # not stale enough yet
    assert await rt.conversations.sweep(stale_after_s=20) == 1
    await _wait_idle(rt)
    async with rt.db.sessions() as session:
        assert (await session.get(Message, stale.message.id)).processed_at is not None
    assert await rt.conversations.sweep(stale_after_s=20) == 0


async def test_an_expired_resolved_ticket_with_unanswered_messages_is_not_closed_under_them(helpline_client) -> None:
    from state.conversations import accept_inbound

    rt = runtime(helpline_client)
    first = await rt.conversations.receive(Inbound("webchat", "customer-pending-close", "hi"))
    await _wait_idle(rt)
    pending = await accept_inbound(
        rt.db, customer_id=first.customer_id, channel="webchat", text="one more question",
        provider_message_id="pc-2", reopen_window=timedelta(days=7),
    )
    async with rt.db.write() as session:
        t = await session.get(Ticket, first.ticket.id)
        transition(session, t, TicketState.resolved, reason="test")
        t.resolved_at = utcnow() - timedelta(days=30)
    later = await accept_inbound(
        rt.db, customer_id=first.customer_id, channel="webchat", text="hello again",
        provider_message_id="pc-3", reopen_window=timedelta(days=7),
    )
    assert later.ticket.id == first.ticket.id and not later.new_ticket
    await rt.conversations.process_ticket(first.ticket.id)
    async with rt.db.sessions() as session:
        for message_id in (pending.message.id, later.message.id):
            assert (await session.get(Message, message_id)).processed_at is not None


async def test_a_redelivery_is_answered_from_the_idempotency_claim_without_the_intake_lock(
    helpline_client,
) -> None:
    rt = runtime(helpline_client)
    taken: list[str] = []
    real_hold = rt.locks.hold

    def counting_hold(key: str):
        taken.append(key)
        return real_hold(key)

    rt.locks.hold = counting_hold
    inbound = Inbound(channel="webchat", address="redelivery-1", text="hello", provider_message_id="cm-7")
    first = await rt.conversations.receive(inbound)
    intake_locks = [k for k in taken if k.startswith("intake:")]
    again = await rt.conversations.receive(inbound)
    assert (first.duplicate, again.duplicate) == (False, True)
    assert again.message.id == first.message.id and again.ticket.id == first.ticket.id
    assert [k for k in taken if k.startswith("intake:")] == intake_locks  # no second intake lock
    # A claim whose message never committed (claimed, then the database write failed) is harmless:
    # the next delivery finds no stored original and goes through intake normally.
    assert await rt.hot.idempotency.claim(f"inbound:webchat:{first.customer_id}:cm-8", 60)
    late = await rt.conversations.receive(
        Inbound(channel="webchat", address="redelivery-1", text="still there?", provider_message_id="cm-8")
    )
    assert late.duplicate is False and late.message.text == "still there?"
    await _wait_idle(rt)


async def test_nul_characters_are_dropped_not_refused(helpline_client) -> None:
    rt = runtime(helpline_client)
    accepted = await rt.conversations.receive(Inbound("webchat", "customer-nul", "where is\x00 my order\x00"))
    async with rt.db.sessions() as session:
        assert (await session.get(Message, accepted.message.id)).text == "where is my order"
    await _wait_idle(rt)


async def test_shutdown_finishes_turns_while_their_retries_can_still_be_queued(
    app_settings: Settings, aiohttp_client, caplog: pytest.LogCaptureFixture
) -> None:
    """SIGTERM with a turn in flight whose reply fails to send: the retry is queued before the
    job queue closes (it used to be refused with AppNotOpen and wait for another process's sweep)."""
    from state import outbox as store

    client = await aiohttp_client(build_app(app_settings))
    rt = runtime(client)
    sent: list[int] = []

    class DownProvider:
        async def send(self, message: Message) -> str | None:
            sent.append(message.id)
            raise ConnectionError("provider down")

    rt.outbox.register("sms-test", DownProvider())
    route = rt.conversations.router.route

    async def slow_route(*args, **kwargs):
        await asyncio.sleep(1.0)  # still running when shutdown starts
        return await route(*args, **kwargs)

    rt.conversations.router.route = slow_route
    retries: list[int] = []
    queue_retry = rt.outbox.retry

    async def recording_retry(entry_id: int) -> None:
        await queue_retry(entry_id)  # raises AppNotOpen once the job queue is closed
        retries.append(entry_id)

    rt.outbox.retry = recording_retry
    await rt.conversations.receive(Inbound("sms-test", "+15550123", "hello"))
    assert rt.conversations.in_flight == 1
    await client.close()  # the app's shutdown, as on SIGTERM

    assert len(sent) == 1 and "could not schedule a retry" not in caplog.text
    db = open_database(app_settings.effective_database_url)  # the app's own is closed now
    try:
        async with db.sessions() as session:
            [entry] = (await session.execute(select(store.OutboxEntry))).scalars().all()
    finally:
        await db.dispose()
    assert retries == [entry.id] and (entry.status, entry.attempts) == (store.PENDING, 1)
