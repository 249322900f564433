"""The outbox and the job queue on the real application (SQLite: in-memory jobs; Postgres: the
procrastinate tables): a reply is committed with its outbox entry, sent once, retried with backoff
when its channel fails, given up after the configured attempts, and picked up by the sweep when its
sender died between commit and send."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from config.settings import Settings
from helpline.conversation import Inbound
from helpline.server import RUNTIME, build_app
from state import outbox as store
from state.models import Message, OutboxEntry, utcnow

CHANNEL = "sms-test"


class ProviderDown(ConnectionError):
    pass


class FlakyProvider:
    """A channel sender whose provider refuses the first ``failures`` sends (a provider outage)."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: list[tuple[int, float]] = []  # (message id, monotonic time)
        self.delivered: list[int] = []

    async def send(self, message: Message) -> str | None:
        self.calls.append((message.id, time.monotonic()))
        if len(self.calls) <= self.failures:
            raise ProviderDown(f"provider unreachable (call {len(self.calls)})")
        self.delivered.append(message.id)
        return f"SM{message.id:032d}"


@pytest.fixture
async def client(app_settings: Settings, aiohttp_client):
    settings = app_settings.model_copy(
        # Pending entries are left to their retry jobs (stale after 60 s); a dead sender's lease (1 s)
        # still lets the 1 s sweep take its entry over.
        update={"sweep_interval_s": 1, "stale_after_s": 60.0, "outbox_lease_s": 1.0, "outbox_max_attempts": 3}
    )
    return await aiohttp_client(build_app(settings))


async def _entries(rt) -> list[OutboxEntry]:
    async with rt.db.sessions() as session:
        return list((await session.execute(select(OutboxEntry).order_by(OutboxEntry.id))).scalars())


async def _until(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.1)


def _first_entry_is(rt, status: str):
    async def check() -> bool:
        entries = await _entries(rt)
        return bool(entries) and entries[0].status == status

    return check


async def _receive(rt, text: str, address: str = "+15550100") -> None:
    await rt.conversations.receive(Inbound(channel=CHANNEL, address=address, text=text))


async def _reply_through(client, provider: FlakyProvider, text: str, until: str) -> OutboxEntry:
    """A customer on CHANNEL (sent through ``provider``) says ``text``; returns the reply's outbox
    entry once it has status ``until``."""
    rt = client.server.app[RUNTIME]
    rt.outbox.register(CHANNEL, provider)
    await _receive(rt, text)
    await _until(_first_entry_is(rt, until), timeout=60)
    [entry] = await _entries(rt)
    return entry


async def test_a_reply_is_sent_once_with_its_outbox_entry(client) -> None:
    provider = FlakyProvider(failures=0)
    entry = await _reply_through(client, provider, "do you ship to Canada?", until=store.SENT)
    assert (entry.channel, entry.attempts, entry.last_error) == (CHANNEL, 1, None)
    assert provider.delivered == [entry.message_id]
    assert entry.provider_message_id == f"SM{entry.message_id:032d}"
    assert entry.sent_at is not None and entry.lease_until is None


async def test_a_failing_provider_is_retried_with_backoff_then_sent_once(client) -> None:
    provider = FlakyProvider(failures=2)
    entry = await _reply_through(client, provider, "how long does a refund take?", until=store.SENT)
    assert entry.attempts == 3
    assert provider.delivered == [entry.message_id]
    assert [m for m, _ in provider.calls] == [entry.message_id] * 3
    # First retry after 1 s, the next after procrastinate's exponential wait (2**1 s).
    gaps = [b - a for (_, a), (_, b) in zip(provider.calls, provider.calls[1:], strict=False)]
    assert gaps[0] >= 0.9 and gaps[1] >= 1.9, gaps


async def test_the_outbox_gives_up_after_max_attempts_and_keeps_the_error(client) -> None:
    provider = FlakyProvider(failures=100)
    entry = await _reply_through(client, provider, "hello", until=store.FAILED)
    await asyncio.sleep(3)  # no further attempts after giving up
    entry = await store.get(client.server.app[RUNTIME].db, entry.id)
    assert entry.attempts == 3 == len(provider.calls)
    assert entry.last_error == "ProviderDown: provider unreachable (call 3)"
    assert provider.delivered == []


async def test_a_channel_without_a_sender_fails_at_once_with_a_clear_error(client) -> None:
    rt = client.server.app[RUNTIME]
    await rt.conversations.receive(Inbound(channel="carrier-pigeon", address="coop-1", text="hi"))

    await _until(_first_entry_is(rt, store.FAILED))
    [entry] = await _entries(rt)
    assert entry.attempts == 1
    assert entry.last_error == "LookupError: no sender registered for channel 'carrier-pigeon'"


async def test_concurrent_attempts_on_one_entry_send_it_exactly_once(client) -> None:
    rt = client.server.app[RUNTIME]
    provider = FlakyProvider(failures=1)
    rt.outbox.register(CHANNEL, provider)
    rt.outbox.retry = None  # nothing scheduled: this test drives the attempts itself
    await _receive(rt, "thanks")

    await _until(_first_entry_is(rt, store.PENDING))
    [entry] = await _entries(rt)
    results = await asyncio.gather(*(rt.outbox.attempt(entry.id) for _ in range(8)))
    assert sorted(results, key=str) == [None] * 7 + [True]
    assert provider.delivered == [entry.message_id]
    assert await rt.outbox.attempt(entry.id) is None  # sent: never again
    assert (await store.get(rt.db, entry.id)).attempts == 2


async def test_a_sender_that_died_after_commit_is_replaced_by_the_sweep(client) -> None:
    """A process crashed between committing a reply and sending it: the entry stays ``sending``
    with a lease. When the lease runs out the periodic sweep queues a delivery job."""
    rt = client.server.app[RUNTIME]
    provider = FlakyProvider(failures=0)
    rt.outbox.register(CHANNEL, provider)
    dead: list[int] = []
    real_send_now = rt.outbox.send_now

    async def crash_before_sending(entry_id: int, message: Message) -> bool:
        dead.append(entry_id)
        return False

    rt.outbox.send_now = crash_before_sending
    await _receive(rt, "do you ship to Canada?")
    await _until(lambda: asyncio.sleep(0, bool(dead)))
    rt.outbox.send_now = real_send_now
    [entry] = await _entries(rt)
    assert entry.status == store.SENDING and provider.calls == []

    async def sent() -> bool:
        return (await store.get(rt.db, entry.id)).status == store.SENT

    await _until(sent, timeout=30)
    assert provider.delivered == [entry.message_id]
    assert (await store.get(rt.db, entry.id)).attempts == 2


async def test_due_lists_only_entries_nobody_is_working_on(client) -> None:
    rt = client.server.app[RUNTIME]
    rt.outbox.register(CHANNEL, FlakyProvider(failures=0))
    for i in range(3):
        await _receive(rt, "hello", address=f"+1555010{i}")

    async def all_sent() -> bool:
        entries = await _entries(rt)
        return len(entries) == 3 and all(e.status == store.SENT for e in entries)

    await _until(all_sent)
    a, b, c = await _entries(rt)
    old = utcnow() - timedelta(minutes=5)
    async with rt.db.write() as session:
        await session.execute(
            update(OutboxEntry).where(OutboxEntry.id == a.id).values(status=store.PENDING, attempted_at=old)
        )
        await session.execute(
            update(OutboxEntry)
            .where(OutboxEntry.id == b.id)
            .values(status=store.SENDING, lease_until=utcnow() + timedelta(minutes=1))
        )
    assert await store.due(rt.db, older_than_s=60) == [a.id]
    assert await store.due(rt.db, older_than_s=600) == []  # a's last attempt is only 5 min old
