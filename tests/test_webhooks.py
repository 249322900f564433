"""The handoff webhook against a real receiver (an aiohttp server on loopback that checks every
request with the verification snippet from docs/handoff-webhook.md): the signature, delivery and
its bookkeeping, retries with backoff through the real job queue (SQLite: in-memory jobs; Postgres:
the procrastinate tables), 410, timeouts, redirects, concurrent claims from separate connection
pools, the sweep, and the settings that refuse a URL without a secret."""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from app_fixtures import free_port
from pydantic import HttpUrl, SecretStr, ValidationError
from sqlalchemy import func, select, update

from config.settings import Settings
from helpline import webhooks as sender
from helpline.server import RUNTIME, build_app
from state import webhooks as store
from state.db import Database, open_database
from state.models import Agent, Customer, Ticket, WebhookEvent, utcnow

REPO = Path(__file__).resolve().parents[1]
SECRET = "whsec_test_0123456789abcdefghijklmnopqrstuv"  # 42 characters
BRIEF = {"version": 1, "want": {"summary": "Track order #W5976205", "intent": "track_order"}}


# --- the documented verification snippet, as a receiver would copy it --------------------------------


def _doc_snippet() -> str:
    text = (REPO / "docs" / "handoff-webhook.md").read_text(encoding="utf-8")
    [block] = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "def verify(" in b]
    return block


def _doc_verify() -> Callable[[str, str, bytes, int], bool]:
    namespace: dict[str, Any] = {}
    exec(compile(_doc_snippet(), "docs/handoff-webhook.md", "exec"), namespace)  # noqa: S102
    return namespace["verify"]


doc_verify = _doc_verify()


def test_the_documented_snippet_is_verify_verbatim() -> None:
    snippet = _doc_snippet()
    assert snippet.startswith("import hashlib\nimport hmac\nimport time\n\n\n")
    assert snippet.endswith(inspect.getsource(sender.verify))


# --- signing and verifying -----------------------------------------------------------------------------

VECTOR_BODY = b'{"id":"0b9f3a4e-5c1d-4e2f-9a7b-3c8d1e6f2a40","type":"ticket.escalated"}'
# Computed independently: printf '%s' '1767225600.<body>' | openssl dgst -sha256 -hmac "$SECRET"
VECTOR_HEADER = "t=1767225600,v1=eded30744196905f55a54122832079d53ea020ea70b1ae7b04d00d1968c05385"


def test_signature_vector_is_pinned() -> None:
    assert sender.sign(SECRET, 1767225600, VECTOR_BODY) == VECTOR_HEADER


@pytest.mark.parametrize("verify", [sender.verify, doc_verify], ids=["module", "docs"])
def test_verify_accepts_a_fresh_signature_and_refuses_tampering(verify: Callable[..., bool]) -> None:
    now = int(time.time())
    header = sender.sign(SECRET, now, VECTOR_BODY)
    assert verify(SECRET, header, VECTOR_BODY) is True
    assert verify(SECRET, f"v1=0000,{header}", VECTOR_BODY) is True  # any one v1 entry may match

    assert verify(SECRET, header, VECTOR_BODY.replace(b"escalated", b"resolved")) is False  # tampered body
    assert verify(SECRET, header, VECTOR_BODY + b" ") is False
    assert verify(SECRET[:-1] + "w", header, VECTOR_BODY) is False  # wrong secret
    assert verify(SECRET, VECTOR_HEADER, VECTOR_BODY) is False  # the pinned vector: long expired
    assert verify(SECRET, VECTOR_HEADER, VECTOR_BODY, tolerance_s=10**10) is True
    old = sender.sign(SECRET, now - 301, VECTOR_BODY)
    assert verify(SECRET, old, VECTOR_BODY) is False  # outside the 300 s tolerance
    assert verify(SECRET, sender.sign(SECRET, now - 290, VECTOR_BODY), VECTOR_BODY) is True
    assert verify(SECRET, sender.sign(SECRET, now + 301, VECTOR_BODY), VECTOR_BODY) is False  # from the future
    # A signature moved to another timestamp no longer matches.
    signature = header.split("v1=")[1]
    assert verify(SECRET, f"t={now - 1},v1={signature}", VECTOR_BODY) is False


@pytest.mark.parametrize(
    "header",
    ["", "garbage", "t=,v1=abc", "v1=abc", "t=12x,v1=abc", "t=١٢٣,v1=abc", "t=1,t=2,v1=abc", "t=1767225600"],
)
def test_verify_refuses_malformed_headers_without_raising(header: str) -> None:
    assert sender.verify(SECRET, header, VECTOR_BODY) is False
    assert sender.verify(SECRET, header.replace("1767225600", str(int(time.time()))), VECTOR_BODY) is False


def test_body_encoding_is_compact_sorted_and_stable() -> None:
    payload = {"type": "ticket.escalated", "id": "x", "ticket": {"state": "escalated", "id": 1}, "brief": None}
    assert sender.encode_body(payload) == (
        b'{"brief":null,"id":"x","ticket":{"id":1,"state":"escalated"},"type":"ticket.escalated"}'
    )
    assert sender.encode_body({"summary": "Café ☕"}) == '{"summary":"Café ☕"}'.encode()


def test_retry_delays_double_with_jitter_up_to_the_cap() -> None:
    def low() -> float:
        return 0.0

    def high() -> float:
        return 1.0

    assert [sender.retry_delay_s(n, 5, 1800, low) for n in (1, 2, 3, 9, 10, 11, 500)] == [
        2.5, 5, 10, 640, 900, 900, 900,
    ]
    assert [sender.retry_delay_s(n, 5, 1800, high) for n in (1, 2, 3, 9, 10, 11)] == [5, 10, 20, 1280, 1800, 1800]
    assert 2.5 <= sender.retry_delay_s(1, 5, 1800) <= 5


# --- settings ------------------------------------------------------------------------------------------


def test_settings_refuse_a_url_without_a_long_enough_secret() -> None:
    assert Settings().handoff_webhook_url is None  # off by default
    with pytest.raises(ValidationError) as missing:
        Settings(handoff_webhook_url="https://desk.example.com/hook")
    [error] = missing.value.errors()
    assert error["loc"] == ("handoff_webhook_url",)
    assert "HELPLINE_HANDOFF_WEBHOOK_SECRET of at least 32 characters" in error["msg"]

    short = "s3cret-but-only-31-characters!!"
    assert len(short) == 31
    with pytest.raises(ValidationError) as too_short:
        Settings(handoff_webhook_url="https://desk.example.com/hook", handoff_webhook_secret=short)
    assert short not in str(too_short.value)  # a refusal never echoes the secret

    ok = Settings(handoff_webhook_url="https://desk.example.com/hook", handoff_webhook_secret=short + "!")
    assert str(ok.handoff_webhook_url) == "https://desk.example.com/hook"
    assert Settings(handoff_webhook_secret=SECRET).handoff_webhook_url is None  # a secret alone is harmless
    with pytest.raises(ValidationError):
        Settings(handoff_webhook_url="ftp://desk.example.com/hook", handoff_webhook_secret=SECRET)


def test_serve_refuses_to_start_with_a_url_and_a_short_secret(tmp_path: Path) -> None:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("HELPLINE_")}
    environment.update(
        HELPLINE_DATA_DIR=str(tmp_path / "var"),
        HELPLINE_HANDOFF_WEBHOOK_URL="https://desk.example.com/hook",
        HELPLINE_HANDOFF_WEBHOOK_SECRET="tooshort-tooshort",
    )
    result = subprocess.run(
        [sys.executable, "-m", "helpline.cli", "serve", "--port", str(free_port())],
        env=environment, capture_output=True, text=True, timeout=120, cwd=REPO,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    [error] = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert error.startswith("Error: invalid settings: HELPLINE_HANDOFF_WEBHOOK_URL: "), error
    assert "HELPLINE_HANDOFF_WEBHOOK_SECRET of at least 32 characters" in error
    assert "tooshort" not in result.stderr + result.stdout
    assert not (tmp_path / "var" / "helpline.db").exists()


# --- a real receiver -----------------------------------------------------------------------------------


@dataclass
class Receiver:
    """A help desk's endpoint. ``script``: what to do for each call in turn (then 204): an HTTP
    status, ``("sleep", seconds, status)`` or ``("redirect", path)``. Every call is checked with the
    documented ``verify``; ``accepted`` holds the event ids it acted on, de-duplicated by id."""

    script: list[Any] = field(default_factory=list)
    calls: list[dict[str, Any]] = field(default_factory=list)
    accepted: list[str] = field(default_factory=list)
    redirected_to: int = 0
    url: str = ""

    async def hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        verified = doc_verify(SECRET, request.headers.get("Helpline-Signature", ""), body, 300)
        event = json.loads(body)
        self.calls.append({"at": time.monotonic(), "verified": verified, "event": event,
                           "headers": dict(request.headers), "body": body})
        if not verified:
            raise web.HTTPUnauthorized()
        action = self.script[len(self.calls) - 1] if len(self.calls) <= len(self.script) else 204
        if isinstance(action, tuple) and action[0] == "redirect":
            raise web.HTTPFound(action[1])
        if isinstance(action, tuple) and action[0] == "sleep":
            await asyncio.sleep(action[1])
            action = action[2]
        if 200 <= action < 300 and event["id"] not in self.accepted:
            self.accepted.append(event["id"])
        return web.Response(status=action, text="" if action < 300 else f"receiver says {action}")

    async def elsewhere(self, request: web.Request) -> web.Response:
        self.redirected_to += 1
        return web.Response(status=204)


@pytest.fixture
async def receiver(aiohttp_server: Any) -> AsyncIterator[Receiver]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/hook", rec.hook)
    app.router.add_post("/elsewhere", rec.elsewhere)
    server = await aiohttp_server(app, host="127.0.0.1")
    rec.url = str(server.make_url("/hook"))
    yield rec


def _webhook_settings(base: Settings, receiver: Receiver, **overrides: Any) -> Settings:
    update = {
        "handoff_webhook_url": HttpUrl(receiver.url),
        "handoff_webhook_secret": SecretStr(SECRET),
        "webhook_timeout_s": 5.0,
        "webhook_max_attempts": 4,
        "webhook_retry_base_s": 0.2,
        "webhook_retry_max_s": 1.0,
        **overrides,
    }
    return base.model_copy(update=update)


async def _ticket(db: Database, *, assign: bool = False, state: str = "escalated") -> int:
    async with db.write() as session:
        customer = Customer(display_name="Ada", email="ada@example.com")
        session.add(customer)
        await session.flush()
        agent_id = None
        if assign:
            agent = Agent(email="sam@example.com", display_name="Sam", password_hash="x", role="agent")
            session.add(agent)
            await session.flush()
            agent_id = agent.id
        ticket = Ticket(
            customer_id=customer.id, channel="webchat", state=state, intent="track_order",
            escalation_reason="asked_for_human", handoff_summary="Wants: Track order #W5976205",
            brief=BRIEF, priority="high", assignee_id=agent_id,
        )
        session.add(ticket)
        await session.flush()
        return ticket.id


async def _event(db: Database, ticket_id: int, event_type: str = store.ESCALATED,
                 data: dict[str, Any] | None = None, *, enabled: bool = True) -> WebhookEvent | None:
    async with db.write() as session:
        ticket = await session.get(Ticket, ticket_id)
        assert ticket is not None
        return await store.add(session, event_type, ticket, data, enabled=enabled)


async def _until(predicate: Callable[[], Any], timeout: float = 45.0) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


def _status_is(db: Database, row_id: int, status: str) -> Callable[[], Any]:
    async def check() -> bool:
        row = await store.get(db, row_id)
        return row is not None and row.status == status

    return check


# --- without the application: the store and one sender -------------------------------------------------


@pytest.fixture
async def db(migrated_database_url: str) -> AsyncIterator[Database]:
    database = open_database(migrated_database_url)
    yield database
    await database.dispose()


async def test_no_url_configured_writes_nothing(db: Database) -> None:
    ticket_id = await _ticket(db)
    assert Settings().handoff_webhook_url is None
    assert sender.Webhooks(db, Settings()).enabled is False
    assert await _event(db, ticket_id, enabled=False) is None
    async with db.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(WebhookEvent)) == 0
    with pytest.raises(ValueError, match="unknown webhook event type 'ticket.exploded'"):
        await _event(db, ticket_id, "ticket.exploded", enabled=False)


async def test_an_event_is_delivered_signed_and_recorded_sent(db: Database, receiver: Receiver) -> None:
    ticket_id = await _ticket(db, assign=True)
    event = await _event(db, ticket_id, store.SLA_BREACHED, {"target": "first_response"})
    assert event is not None and event.status == store.PENDING and event.attempts == 0
    webhooks = sender.Webhooks(db, _webhook_settings(Settings(), receiver))

    assert await webhooks.send_now(event.id) is True

    [call] = receiver.calls
    assert call["verified"] is True and receiver.accepted == [event.event_id]
    headers = call["headers"]
    assert headers["Helpline-Event-Id"] == event.event_id
    assert headers["Helpline-Event-Type"] == "ticket.sla_breached"
    assert headers["Content-Type"] == "application/json"
    assert headers["User-Agent"].startswith("Helpline-Webhook/")
    assert call["body"] == sender.encode_body(call["event"])  # compact, sorted keys
    body = call["event"]
    assert list(body) == ["brief", "created_at", "data", "id", "summary", "ticket", "type"]
    assert (body["id"], body["type"], body["data"]) == (event.event_id, "ticket.sla_breached",
                                                         {"target": "first_response"})
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", body["created_at"])
    assert body["brief"] == BRIEF and body["summary"] == "Wants: Track order #W5976205"
    async with db.sessions() as session:
        agent_id = await session.scalar(select(Agent.id))
    assert body["ticket"] == {
        "id": ticket_id, "state": "escalated", "priority": "high", "channel": "webchat",
        "customer_id": body["ticket"]["customer_id"], "intent": "track_order",
        "escalation_reason": "asked_for_human",
        "assignee": {"id": agent_id, "email": "sam@example.com", "name": "Sam"},
    }

    row = await store.get(db, event.id)
    assert (row.status, row.attempts, row.response_status, row.last_error) == (store.SENT, 1, 204, None)
    assert row.sent_at is not None and row.lease_until is None
    assert await webhooks.attempt(event.id) == sender.Outcome(sent=False)  # sent: never again
    assert len(receiver.calls) == 1


async def test_410_gone_stops_at_once(db: Database, receiver: Receiver) -> None:
    receiver.script = [410]
    event = await _event(db, await _ticket(db))
    webhooks = sender.Webhooks(db, _webhook_settings(Settings(), receiver))
    scheduled: list[tuple[int, float]] = []

    async def retry(row_id: int, delay_s: float) -> None:
        scheduled.append((row_id, delay_s))

    webhooks.retry = retry
    assert await webhooks.send_now(event.id) is False
    row = await store.get(db, event.id)
    assert (row.status, row.attempts, row.response_status) == (store.FAILED, 1, 410)
    assert row.last_error == "HTTP 410: receiver says 410"
    assert scheduled == [] and receiver.accepted == []
    assert await webhooks.attempt(event.id) == sender.Outcome(sent=False)
    assert len(receiver.calls) == 1


async def test_redirects_are_not_followed(db: Database, receiver: Receiver) -> None:
    receiver.script = [("redirect", "/elsewhere")]
    event = await _event(db, await _ticket(db))
    webhooks = sender.Webhooks(db, _webhook_settings(Settings(), receiver))
    outcome = await webhooks.attempt(event.id)
    assert outcome.sent is False and 0.1 <= outcome.retry_in_s <= 0.2  # first retry: base 0.2 s, jittered
    assert receiver.redirected_to == 0
    row = await store.get(db, event.id)
    assert (row.status, row.response_status) == (store.PENDING, 302)
    assert row.last_error.startswith("HTTP 302 (redirects are not followed)")


async def test_a_refused_connection_is_retried_then_given_up(db: Database) -> None:
    dead = Receiver(url=f"http://127.0.0.1:{free_port()}/hook")  # nothing listens there
    event = await _event(db, await _ticket(db))
    webhooks = sender.Webhooks(db, _webhook_settings(Settings(), dead, webhook_max_attempts=2))
    first = await webhooks.attempt(event.id)
    assert first.sent is False and first.retry_in_s is not None
    row = await store.get(db, event.id)
    assert row.status == store.PENDING and row.response_status is None
    assert row.last_error.startswith("ClientConnectorError: ")
    assert await webhooks.attempt(event.id) == sender.Outcome(sent=False)  # attempt 2 of 2: final
    row = await store.get(db, event.id)
    assert (row.status, row.attempts) == (store.FAILED, 2)


async def test_two_workers_claiming_at_once_send_once(migrated_database_url: str, receiver: Receiver) -> None:
    """Four "processes" (each its own engine and connection pool; on SQLite each its own writer
    queue, so they meet at the database's lock) try the same event twice each, at once."""
    pools = [open_database(migrated_database_url) for _ in range(4)]
    try:
        event = await _event(pools[0], await _ticket(pools[0]))
        settings = _webhook_settings(Settings(), receiver)
        workers = [sender.Webhooks(pool, settings) for pool in pools]
        outcomes = await asyncio.gather(*(w.attempt(event.id) for w in workers * 2))
        assert sorted(o.sent for o in outcomes) == [False] * 7 + [True]
        assert all(o.retry_in_s is None for o in outcomes)
        assert len(receiver.calls) == 1 and receiver.accepted == [event.event_id]
        row = await store.get(pools[0], event.id)
        assert (row.status, row.attempts) == (store.SENT, 1)
    finally:
        for pool in pools:
            await pool.dispose()


async def test_due_lists_only_events_nobody_is_working_on(db: Database) -> None:
    ticket_id = await _ticket(db)
    rows = [await _event(db, ticket_id) for _ in range(6)]
    fresh, old, retrying, live, dead, sent = (r.id for r in rows)
    five_min_ago = utcnow() - timedelta(minutes=5)

    async def set_row(row_id: int, **values: Any) -> None:
        async with db.write() as session:
            await session.execute(update(WebhookEvent).where(WebhookEvent.id == row_id).values(**values))

    for row_id in (old, retrying, live, dead, sent):
        await set_row(row_id, created_at=five_min_ago)
    await set_row(retrying, attempts=1, attempted_at=utcnow() - timedelta(minutes=2))
    await set_row(live, status=store.SENDING, lease_until=utcnow() + timedelta(minutes=1), attempted_at=five_min_ago)
    await set_row(dead, status=store.SENDING, lease_until=utcnow() - timedelta(seconds=1), attempted_at=utcnow())
    await set_row(sent, status=store.SENT, attempted_at=five_min_ago)

    assert await store.due(db, older_than_s=60) == [old, retrying, dead]
    assert await store.due(db, older_than_s=600) == [dead]  # old was made only 5 min ago
    # A tried event waits out a whole attempt too, however short the staleness is set.
    assert await store.due(db, older_than_s=1, attempt_s=300) == [old, dead]
    # The sweep's view: an attempt may run for the timeout, so a lease (timeout + 30 s) must pass.
    assert await sender.Webhooks(db, Settings(webhook_timeout_s=60.0)).due(45) == [old, retrying, dead]
    assert await sender.Webhooks(db, Settings(webhook_timeout_s=100.0)).due(45) == [old, dead]


# --- the application: runtime, job queue and sweep ------------------------------------------------------


@pytest.fixture
def make_client(app_settings: Settings, aiohttp_client: Any, receiver: Receiver) -> Callable[..., Any]:
    async def make(**overrides: Any) -> Any:
        settings = _webhook_settings(
            app_settings.model_copy(update={"sweep_interval_s": 1, "stale_after_s": 60.0}), receiver, **overrides
        )
        return await aiohttp_client(build_app(settings))

    return make


async def test_a_receiver_that_fails_twice_gets_three_attempts_and_one_event(
    make_client: Any, receiver: Receiver
) -> None:
    receiver.script = [503, 500]
    rt = (await make_client()).server.app[RUNTIME]
    assert rt.webhooks.enabled is True
    ticket_id = await _ticket(rt.db)
    event = await _event(rt.db, ticket_id, enabled=rt.webhooks.enabled)

    assert await rt.webhooks.send_now(event.id) is False  # the first attempt, right after commit
    await _until(_status_is(rt.db, event.id, store.SENT))

    assert [c["event"]["id"] for c in receiver.calls] == [event.event_id] * 3
    assert all(c["verified"] for c in receiver.calls)
    assert receiver.accepted == [event.event_id]
    # Same bytes every time, signed afresh each time.
    assert len({c["body"] for c in receiver.calls}) == 1
    gaps = [b["at"] - a["at"] for a, b in zip(receiver.calls, receiver.calls[1:])]
    assert gaps[0] >= 0.1 and gaps[1] >= 0.2, gaps  # backoff: >= half of 0.2 s, then of 0.4 s
    row = await store.get(rt.db, event.id)
    assert (row.attempts, row.response_status) == (3, 204)
    assert row.last_error == "HTTP 500: receiver says 500"  # the last failure is kept
    await asyncio.sleep(1.5)
    assert len(receiver.calls) == 3


async def test_a_timeout_is_retried(make_client: Any, receiver: Receiver) -> None:
    receiver.script = [("sleep", 3.0, 200)]
    rt = (await make_client(webhook_timeout_s=1.0)).server.app[RUNTIME]
    event = await _event(rt.db, await _ticket(rt.db), store.RESOLVED)

    assert await rt.webhooks.send_now(event.id) is False
    row = await store.get(rt.db, event.id)
    assert row.status == store.PENDING and row.response_status is None
    assert "Timeout" in row.last_error
    await _until(_status_is(rt.db, event.id, store.SENT))
    await _until(lambda: asyncio.sleep(0, len(receiver.calls) == 2 and len(receiver.accepted) == 1))
    # The slow first call did reach the receiver: it sees the event twice and acts on it once.
    assert [c["event"]["id"] for c in receiver.calls] == [event.event_id] * 2
    assert receiver.accepted == [event.event_id]
    assert (await store.get(rt.db, event.id)).attempts == 2


async def test_an_event_whose_sender_died_is_sent_by_the_sweep(make_client: Any, receiver: Receiver) -> None:
    """A process committed the event and died before send_now: the sweep finds the pending event
    (stale after 1 s here) and the job queue sends it."""
    rt = (await make_client(stale_after_s=1.0)).server.app[RUNTIME]
    event = await _event(rt.db, await _ticket(rt.db))
    assert receiver.calls == []
    await _until(_status_is(rt.db, event.id, store.SENT))
    assert receiver.accepted == [event.event_id]
    assert (await store.get(rt.db, event.id)).attempts == 1


async def test_queue_hands_an_event_to_the_job_queue_at_once(make_client: Any, receiver: Receiver) -> None:
    rt = (await make_client()).server.app[RUNTIME]
    event = await _event(rt.db, await _ticket(rt.db, state="resolved"), store.RESOLVED, {"resolved_by": "agent"})
    assert await rt.webhooks.queue(event.id) is True
    await _until(_status_is(rt.db, event.id, store.SENT), timeout=20)  # well before the 60 s sweep
    [call] = receiver.calls
    assert call["event"]["type"] == "ticket.resolved" and call["event"]["ticket"]["state"] == "resolved"
    assert call["event"]["data"] == {"resolved_by": "agent"}


async def test_a_customer_escalation_and_an_agent_resolve_reach_the_receiver_with_the_brief(
    make_client: Any, receiver: Receiver
) -> None:
    from helpline.conversation import Inbound
    from helpline.inbox import resolve_ticket
    from state import agents as accounts
    from state import inbox

    client = await make_client()
    rt = client.server.app[RUNTIME]
    accepted = await rt.conversations.receive(
        Inbound("webchat", "hook-1", "where is #W5976205? I want to talk to a real person")
    )
    await rt.conversations.process_ticket(accepted.ticket.id)
    await _until(lambda: asyncio.sleep(0, len(receiver.accepted) == 1), timeout=20)
    [escalated] = [c["event"] for c in receiver.calls]
    assert escalated["type"] == "ticket.escalated" and escalated["ticket"]["id"] == accepted.ticket.id
    assert escalated["ticket"]["state"] == "escalated" and escalated["ticket"]["escalation_reason"] == "explicit_request"
    assert escalated["brief"]["version"] == 1 and escalated["brief"]["want"]["order_ids"] == ["#W5976205"]
    assert escalated["summary"].startswith("Escalated because the customer asked for a person.")

    # A message while the ticket waits is no new escalation: still one event.
    more = await rt.conversations.receive(Inbound("webchat", "hook-1", "hello? anyone?"))
    await rt.conversations.process_ticket(more.ticket.id)

    agent = await accounts.add_agent(rt.db, "hook-agent@example.com", "correct horse battery staple")
    await inbox.claim(rt.db, accepted.ticket.id, agent)
    await resolve_ticket(rt, accepted.ticket.id, agent)
    await _until(lambda: asyncio.sleep(0, len(receiver.accepted) == 2), timeout=20)
    resolved = receiver.calls[-1]["event"]
    assert [c["event"]["type"] for c in receiver.calls] == ["ticket.escalated", "ticket.resolved"]
    assert resolved["ticket"]["state"] == "resolved" and resolved["ticket"]["assignee"]["email"] == "hook-agent@example.com"
    assert resolved["data"] == {"resolved_by": "agent", "agent_id": agent.id}
    assert len({c["event"]["id"] for c in receiver.calls}) == 2


async def test_a_bot_resolved_ticket_reaches_the_receiver(make_client: Any, receiver: Receiver) -> None:
    from helpline.conversation import Inbound

    rt = (await make_client()).server.app[RUNTIME]
    accepted = await rt.conversations.receive(Inbound("webchat", "hook-2", "ok bye, have a nice day"))
    await rt.conversations.process_ticket(accepted.ticket.id)
    await _until(lambda: asyncio.sleep(0, len(receiver.accepted) == 1), timeout=20)
    [call] = receiver.calls
    assert call["event"]["type"] == "ticket.resolved" and call["event"]["data"] == {"resolved_by": "bot"}
