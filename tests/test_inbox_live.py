"""The live agent queue (``GET /agent/live``): who may open it, what each agent receives, replay
after a reconnect (including events committed out of id order), session ends, limits, and a
wake-up through Redis reaching another process. Real sockets against the real application, on both
database backends."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import socket
from datetime import timedelta
from typing import Any

import aiohttp
import pytest
from app_fixtures import ChatSocket, idle, runtime
from sqlalchemy import func, select, update

from config.settings import Settings
from helpline.conversation import Inbound
from helpline.inbox import AGENT_CSP, COOKIE, INBOX_LIVE
from helpline.inbox_live import (
    CLOSE_FORBIDDEN,
    CLOSE_SESSION,
    MAX_SEEN,
    CursorError,
    LiveQueue,
    Position,
    change_kind,
)
from helpline.server import build_app
from state import agents as accounts
from state import inbox
from state.models import AgentSession, Customer, Event, Ticket, utcnow

PASSWORD = "correct horse battery staple"
CSRF = re.compile(r'data-csrf="([^"]+)"')
CURSOR = re.compile(r'data-cursor="([^"]+)"')


# --- unit: cursors and kinds ---------------------------------------------------------------------


def test_a_cursor_is_a_set_of_ids_that_survives_gaps() -> None:
    p = Position(9)
    p.add(11)  # id 10 not committed yet
    assert 10 not in p and 11 in p and 9 in p
    assert p.encode() == "9+2" and p.gaps() == [10]
    assert Position.parse("9+2") == p
    p.add(10)  # the late commit fills the gap
    assert p.encode() == "11" and p.gaps() == []
    q = Position.parse("5+3,4")
    q.merge(Position(6, {12}))
    assert q.encode() == "6+2,3,6" and 7 not in q and 8 in q and 9 in q and 12 in q
    q.add(7)
    assert q.encode() == "9+3"
    q.skip_to(20)
    assert q.encode() == "20"
    # Bounded: more listed ids than MAX_SEEN gives up the oldest gap rather than grow.
    r = Position(0)
    for i in range(2, MAX_SEEN + 3):
        r.add(i)
    assert r.encode() == str(MAX_SEEN + 2)  # id 1 given up


@pytest.mark.parametrize("bad", ["", "x", "-1", "1+0", "1+", "1+a", "1,2", "1+" + ",".join(["1"] * (MAX_SEEN + 1)),
                                 "9" * 19, "1" * 5000])
def test_malformed_cursors_are_refused(bad: str) -> None:
    with pytest.raises(CursorError):
        Position.parse(bad)


def test_only_queue_events_become_frames() -> None:
    assert change_kind("transition", {"from": "bot", "to": "escalated"}) == "escalated"
    assert change_kind("transition", {"from": "escalated", "to": "human", "reason": "claimed"}) is None
    assert change_kind("transition", {"from": "resolved", "to": "human"}) == "reopened"
    assert change_kind("transition", {"from": "human", "to": "bot", "reason": "handed_back"}) == "handed_back"
    assert change_kind("transition", {"from": "human", "to": "resolved"}) == "resolved"
    assert change_kind("transition", {"from": "bot", "to": "awaiting_customer"}) is None
    assert change_kind("turn", {"reason": "human_owns_ticket"}) == "customer_message"
    assert change_kind("turn", {"reason": "answered"}) is None
    assert change_kind("note", {"text": "secret"}) is None
    for kind in ("claimed", "assigned", "priority", "agent_reply"):
        assert change_kind(kind, {}) == kind


# --- helpers -------------------------------------------------------------------------------------


def live_of(client: Any) -> LiveQueue:
    return client.server.app[INBOX_LIVE]


async def _escalated(client: Any, address: str, text: str = "I want to talk to a real person") -> int:
    rt = runtime(client)
    accepted = await rt.conversations.receive(Inbound("webchat", address, text))
    await idle(rt)
    async with rt.db.sessions() as session:
        assert (await session.get(Ticket, accepted.ticket.id)).state == "escalated"
    await live_of(client).feed.notify()  # what conversation.py does after such a turn
    return accepted.ticket.id


class Agent:
    """One agent's browser: its own cookie jar, the queue page's CSRF token and cursor."""

    def __init__(self, client: Any, view: accounts.AgentView) -> None:
        self.client = client
        self.view = view
        self.http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        self.csrf = ""
        self.cursor = ""

    def url(self, path: str) -> str:
        return str(self.client.make_url(path))

    async def login(self) -> Agent:
        response = await self.http.post(self.url("/agent/login"), allow_redirects=False,
                                        data={"email": self.view.email, "password": PASSWORD})
        assert response.status == 303, await response.text()
        await self.page()
        return self

    async def page(self, query: str = "") -> str:
        response = await self.http.get(self.url("/agent" + query))
        assert response.status == 200
        text = await response.text()
        self.csrf = CSRF.search(text).group(1)
        self.cursor = CURSOR.search(text).group(1)
        return text

    async def post(self, path: str, **data: str) -> int:
        response = await self.http.post(self.url(path), data={"csrf_token": self.csrf, **data}, allow_redirects=False)
        return response.status

    async def connect(self, cursor: str | None = "page", headers: dict[str, str] | None = None,
                      **hello: Any) -> LiveSocket:
        ws = await self.http.ws_connect(self.url("/agent/live"), headers=headers or {})
        message: dict[str, Any] = {"type": "hello", "csrf_token": self.csrf,
                                   "cursor": self.cursor if cursor == "page" else cursor, **hello}
        await ws.send_json(message)
        return LiveSocket(ws)

    async def close(self) -> None:
        await self.http.close()


class LiveSocket:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.frames: list[dict[str, Any]] = []
        self.cursor: str | None = None

    async def next(self, timeout: float = 10.0) -> dict[str, Any]:
        msg = await self.ws.receive(timeout=timeout)
        if msg.type != aiohttp.WSMsgType.TEXT:
            raise ConnectionError(f"socket closed: {msg.type} {self.ws.close_code} {msg.extra!r}")
        frame = json.loads(msg.data)
        self.frames.append(frame)
        if frame.get("cursor"):
            self.cursor = frame["cursor"]
        return frame

    async def synced(self) -> list[dict[str, Any]]:
        """The replay: ticket frames up to ``synced``."""
        got = []
        while True:
            frame = await self.next()
            if frame["type"] == "synced":
                return got
            if frame["type"] == "ticket":
                got.append(frame)

    async def ticket(self, predicate: Any = lambda f: True, timeout: float = 10.0) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            frame = await self.next(max(0.01, deadline - loop.time()))
            if frame["type"] == "ticket" and predicate(frame):
                return frame

    async def quiet(self, seconds: float = 0.8) -> list[dict[str, Any]]:
        """Ticket frames that arrive within ``seconds``."""
        got = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while (left := deadline - loop.time()) > 0:
            try:
                frame = await self.next(left)
            except (asyncio.TimeoutError, TimeoutError):
                break
            if frame["type"] == "ticket":
                got.append(frame)
        return got

    async def closed(self, timeout: float = 10.0) -> tuple[int | None, str]:
        """Read until the server closes; (close code, reason)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            msg = await self.ws.receive(timeout=max(0.01, deadline - loop.time()))
            if msg.type == aiohttp.WSMsgType.CLOSE:
                # The code the server sent: close_code turns 1006 when the server drops the connection
                # before our close reply is written, which depends on timing.
                return msg.data, str(msg.extra or "")
            if msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
                return self.ws.close_code, str(msg.extra or "")
            if msg.type == aiohttp.WSMsgType.TEXT:
                self.frames.append(json.loads(msg.data))

    async def close(self) -> None:
        await self.ws.close()


@pytest.fixture
async def agents(helpline_client: Any) -> Any:
    made: list[Agent] = []

    async def make(email: str, role: str = "agent", client: Any = None) -> Agent:
        client = client or helpline_client
        view = await accounts.add_agent(runtime(client).db, email, PASSWORD, role=role)
        agent = await Agent(client, view).login()
        made.append(agent)
        return agent

    yield make
    for agent in made:
        await agent.close()


async def _relevant_after(db: Any, cursor: str) -> list[int]:
    """Ids of queue-relevant events (not replayed traffic) that ``cursor`` does not contain."""
    known = Position.parse(cursor)
    async with db.sessions() as session:
        rows = (await session.execute(
            select(Event.id, Event.kind, Event.payload, Ticket.channel).join(Ticket, Ticket.id == Event.ticket_id)
            .where(Event.id > known.low).order_by(Event.id)
        )).all()
    return [r.id for r in rows if r.id not in known and change_kind(r.kind, r.payload) is not None
            and r.channel not in inbox.HIDDEN_CHANNELS]


# --- access --------------------------------------------------------------------------------------


async def test_the_socket_refuses_anonymous_cross_site_and_csrf_less_callers(helpline_client, agents) -> None:
    client = helpline_client
    async with aiohttp.ClientSession() as anonymous:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await anonymous.ws_connect(str(client.make_url("/agent/live")))
        assert refused.value.status != 101
        assert refused.value.history and refused.value.history[0].status == 303  # to the login form
    amy = await agents("amy@example.com")
    page = await amy.http.get(amy.url("/agent"))
    csp = page.headers["Content-Security-Policy"]
    assert csp == AGENT_CSP and "script-src 'self'" in csp and "connect-src 'self'" in csp
    assert "unsafe-inline" not in csp
    html = await page.text()
    assert '<script src="/agent/static/agent.js" defer></script>' in html and "<script>" not in html
    script = await amy.http.get(amy.url("/agent/static/agent.js"))
    assert script.status == 200 and "innerHTML" not in await script.text()
    for origin in ("https://evil.example", "null"):
        with pytest.raises(aiohttp.WSServerHandshakeError) as cross:
            await amy.http.ws_connect(amy.url("/agent/live"), headers={"Origin": origin})
        assert cross.value.status == 403
    # Our pages send Referrer-Policy: no-referrer, so a browser posts their forms with "Origin: null"
    # and "Sec-Fetch-Site: same-origin" (pages cannot forge the latter): accepted; "null" alone is not.
    for headers, status in (({"Origin": "null", "Sec-Fetch-Site": "same-origin"}, 303),
                            ({"Origin": "null"}, 403),
                            ({"Origin": "null", "Sec-Fetch-Site": "cross-site"}, 403),
                            ({"Origin": str(client.make_url("/")).rstrip("/"), "Sec-Fetch-Site": "same-site"}, 403)):
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
            login = await browser.post(amy.url("/agent/login"), headers=headers, allow_redirects=False,
                                       data={"email": "amy@example.com", "password": PASSWORD})
            assert login.status == status, headers
    # Same-origin page headers are fine.
    ok = await amy.connect(headers={"Origin": str(client.make_url("/")).rstrip("/")})
    assert (await ok.next())["type"] == "welcome"
    assert (await ok.next())["type"] == "synced"
    await ok.close()
    for token in (None, "", "x" * len(amy.csrf)):
        ws = await amy.http.ws_connect(amy.url("/agent/live"))
        await ws.send_json({"type": "hello", "csrf_token": token, "cursor": amy.cursor})
        sock = LiveSocket(ws)
        code, reason = await sock.closed()
        assert code == CLOSE_FORBIDDEN and "CSRF" in reason
        assert not [f for f in sock.frames if f["type"] in ("welcome", "ticket")]
    # Malformed hellos are refused with a reason, not a crash.
    for hello in ({"type": "hello", "csrf_token": amy.csrf, "cursor": "1+0"},
                  {"type": "hello", "csrf_token": amy.csrf, "view": "everything"},
                  {"type": "ping"}):
        ws = await amy.http.ws_connect(amy.url("/agent/live"))
        await ws.send_json(hello)
        code, _ = await LiveSocket(ws).closed()
        assert code == 4400


async def test_a_new_escalation_appears_live_on_a_connected_queue(helpline_client, agents) -> None:
    client = helpline_client
    live = live_of(client)
    live.feed.poll_s = 60.0  # only the wake-up can bring it in time
    bea = await agents("bea@example.com")
    sock = await bea.connect()
    assert await sock.synced() == []
    chat = await ChatSocket.open(client.session, str(client.make_url("/")))
    await chat.send("I want to talk to a real person <img src=x onerror=alert(1)>", "m-1")
    handoff = await chat.bot_reply()
    # The turn that handed off wakes the feed itself (conversation's on_queue_change): with the
    # safety-net re-read at 60 s, only that can bring the row this fast.
    frame = await sock.ticket(lambda f: f["kind"] == "escalated", timeout=3)
    row = frame["row"]
    assert frame["ticket_id"] == handoff["ticket_id"] == row["id"]
    assert row["state"] == "escalated" and row["assignee"] is None and row["reason"] == "explicit_request"
    assert row["preview"] == "I want to talk to a real person <img src=x onerror=alert(1)>"  # data, not markup
    assert set(row) == {"id", "state", "priority", "rank", "channel", "customer", "assignee", "reason", "intent",
                        "preview", "updated_at", "sla_due_at", "sla_breached", "language"}
    assert row["sla_breached"] is False and row["sla_due_at"] is not None  # the first-response clock runs
    assert frame["cursor"] == sock.cursor
    # A claim from the page updates the row for everyone, live.
    assert await bea.post(f"/agent/tickets/{row['id']}/claim") == 303
    claimed = await sock.ticket(lambda f: f["kind"] == "claimed")
    assert claimed["row"]["assignee"] == "bea@example.com" and claimed["row"]["state"] == "human"
    # The customer writes again: the row's preview follows.
    await chat.send("hello? anyone there?", "m-2")
    await chat.until(lambda f: f["type"] == "ack")
    await idle(runtime(client))
    await live.feed.notify()
    message = await sock.ticket(lambda f: f["kind"] == "customer_message")
    assert message["row"]["preview"] == "hello? anyone there?"
    await chat.close()
    await sock.close()


async def test_the_periodic_re_read_delivers_when_no_wake_up_comes(helpline_client, agents) -> None:
    client = helpline_client
    live = live_of(client)
    live.feed.poll_s = 0.3
    cy = await agents("cy@example.com")
    sock = await cy.connect()
    await sock.synced()
    rt = runtime(client)
    accepted = await rt.conversations.receive(Inbound("webchat", "no-wake", "I want to talk to a real person"))
    await idle(rt)  # nobody calls notify()
    frame = await sock.ticket(lambda f: f["kind"] == "escalated", timeout=5)
    assert frame["ticket_id"] == accepted.ticket.id
    await sock.close()


async def test_agents_receive_only_tickets_they_may_read_in_their_view(helpline_client, agents) -> None:
    client = helpline_client
    rt = runtime(client)
    owner = await agents("dan@example.com")
    other = await agents("eli@example.com")
    admin = await agents("fox@example.com", role="admin")
    everyone = await other.connect()
    mine = await other.connect(view="mine")
    boss = await admin.connect()
    for sock in (everyone, mine, boss):
        await sock.synced()
    # Replayed traffic is nobody's, not even an admin's.
    replayed = await rt.conversations.receive(Inbound("replay", "replayed", "I want to talk to a real person"))
    await idle(rt)
    ticket_id = await _escalated(client, "private", "I want to talk to a real person, my secret is 4242")
    first = await everyone.ticket(lambda f: f["kind"] == "escalated")
    assert first["ticket_id"] == ticket_id and "4242" in first["row"]["preview"]
    assert (await boss.ticket(lambda f: f["kind"] == "escalated"))["ticket_id"] == ticket_id
    # The "mine" view is told the ticket is not in it, with nothing about it.
    hidden = await mine.ticket(lambda f: f["kind"] == "escalated")
    assert hidden["row"] is None and hidden["ticket_id"] == ticket_id
    await inbox.claim(rt.db, ticket_id, owner.view)
    await inbox.resolve(rt.db, ticket_id, owner.view)
    await live_of(client).feed.notify()
    gone = await everyone.ticket(lambda f: f["kind"] == "resolved")
    assert gone["row"] is None  # resolved and not theirs: no longer readable, so no data
    assert (await boss.ticket(lambda f: f["kind"] == "resolved"))["row"] is None  # out of the queue
    frames = everyone.frames + mine.frames + boss.frames + await everyone.quiet(0.5) + await mine.quiet(0.1)
    assert all(f.get("ticket_id") != replayed.ticket.id for f in frames)
    after_resolve = everyone.frames[everyone.frames.index(gone):]
    assert "4242" not in json.dumps(after_resolve) and "4242" not in json.dumps(mine.frames)
    for sock in (everyone, mine, boss):
        await sock.close()


# --- replay ---------------------------------------------------------------------------------------


async def test_a_reconnect_replays_exactly_the_events_it_missed(helpline_client, agents) -> None:
    client = helpline_client
    rt = runtime(client)
    gil = await agents("gil@example.com")
    sock = await gil.connect()
    await sock.synced()
    first = await _escalated(client, "replay-0")
    await sock.ticket(lambda f: f["ticket_id"] == first)
    cursor = sock.cursor
    await sock.close()
    # Missed while away: two escalations, a claim, a priority change, a customer message.
    ids = [await _escalated(client, f"replay-{n}") for n in (1, 2)]
    await inbox.claim(rt.db, ids[0], gil.view)
    await inbox.set_priority(rt.db, ids[0], gil.view, "urgent")
    await rt.conversations.receive(Inbound("webchat", "replay-1", "are you still there?"))
    await idle(rt)
    expected = await _relevant_after(rt.db, cursor)
    assert len(expected) >= 5
    again = await gil.connect(cursor=cursor)
    replayed = await again.synced()
    assert [f["event_id"] for f in replayed] == expected  # in order, none lost, none twice
    kinds = [f["kind"] for f in replayed]
    assert kinds.count("escalated") == 2 and {"claimed", "priority", "customer_message"} <= set(kinds)
    by_ticket = {f["ticket_id"]: f["row"] for f in replayed}
    assert by_ticket[ids[0]]["priority"] == "urgent" and by_ticket[ids[0]]["assignee"] == "gil@example.com"
    assert not await again.quiet(0.5)  # nothing more, nothing again
    # Live again: the next one arrives once; a reconnect from the newest cursor replays nothing.
    third = await _escalated(client, "replay-3")
    assert (await again.ticket(lambda f: f["kind"] == "escalated"))["ticket_id"] == third
    assert not [f for f in await again.quiet(0.5) if f["ticket_id"] == third]
    latest = again.cursor
    await again.close()
    assert await (await gil.connect(cursor=latest)).synced() == []


async def test_events_committed_out_of_id_order_are_not_lost(helpline_client, agents) -> None:
    """Postgres hands out sequence values before commit: id N can commit after id N + 1. A reader
    that kept only "the highest id seen" would skip N for good."""
    client = helpline_client
    rt = runtime(client)
    feed = live_of(client).feed
    hal = await agents("hal@example.com")
    ticket_id = await _escalated(client, "out-of-order")
    stays = await hal.connect()
    leaves = await hal.connect()
    await stays.synced()
    await leaves.synced()
    await stays.quiet(0.3)
    await leaves.quiet(0.3)

    def priority_event(**extra: Any) -> Event:
        return Event(ticket_id=ticket_id, kind="priority", created_at=utcnow(),
                     payload={"agent_id": hal.view.id, "from": "normal", "to": "high"}, **extra)

    if rt.db.backend == "postgresql":
        async with rt.db.sessions() as slow, rt.db.sessions() as fast:
            async with slow.begin():
                early = priority_event()
                slow.add(early)
                await slow.flush()  # id N taken, not committed
                async with fast.begin():
                    late = priority_event()
                    fast.add(late)
                    await fast.flush()  # id N + 1
                assert late.id > early.id  # and N + 1 is committed first
                await feed.notify()
                assert (await stays.ticket())["event_id"] == late.id
                assert (await leaves.ticket())["event_id"] == late.id
                cursor = leaves.cursor
                await leaves.close()
    else:
        # SQLite commits one writer at a time, so ids are commit-ordered there; the same order of
        # commits is made with explicit ids.
        async with rt.db.sessions() as session:
            top = await session.scalar(select(func.max(Event.id)))
        async with rt.db.write() as session:
            late = priority_event(id=top + 2)
            session.add(late)
        early = priority_event(id=top + 1)
        await feed.notify()
        assert (await stays.ticket())["event_id"] == late.id
        assert (await leaves.ticket())["event_id"] == late.id
        cursor = leaves.cursor
        await leaves.close()
        async with rt.db.write() as session:
            session.add(early)
    assert early.id not in Position.parse(cursor) and late.id in Position.parse(cursor)
    await feed.notify()
    assert (await stays.ticket())["event_id"] == early.id  # the live socket gets the late commit
    back = await hal.connect(cursor=cursor)
    assert [f["event_id"] for f in await back.synced()] == [early.id]  # and so does a reconnect
    assert not await stays.quiet(0.5)
    await stays.close()
    await back.close()


# --- sessions and limits --------------------------------------------------------------------------


async def test_an_ended_or_expired_session_closes_the_socket_at_its_next_message(helpline_client, agents) -> None:
    client = helpline_client
    rt = runtime(client)
    ivy = await agents("ivy@example.com")
    # Logged out (another tab): the next ping is answered with the close.
    sock = await ivy.connect()
    await sock.synced()
    await sock.ws.send_json({"type": "ping"})
    assert (await sock.next())["type"] == "pong"
    assert await ivy.post("/agent/logout") == 303
    await sock.ws.send_json({"type": "ping"})
    code, reason = await sock.closed()
    assert code == CLOSE_SESSION and "log in again" in reason
    # Expired while connected: the next push closes it instead of delivering.
    await ivy.login()
    sock = await ivy.connect()
    await sock.synced()
    async with rt.db.write() as session:
        await session.execute(update(AgentSession).where(AgentSession.agent_id == ivy.view.id)
                              .values(expires_at=utcnow() - timedelta(seconds=1)))
    await _escalated(client, "expired")
    code, _ = await sock.closed()
    assert code == CLOSE_SESSION
    assert not [f for f in sock.frames if f["type"] == "ticket"]
    # Disabled agent: same.
    await ivy.login()
    sock = await ivy.connect()
    await sock.synced()
    await accounts.set_disabled(rt.db, ivy.view.email)
    await sock.ws.send_json({"type": "ping"})
    assert (await sock.closed())[0] == CLOSE_SESSION


async def test_limits_on_tabs_frame_size_and_frame_rate(helpline_client, agents) -> None:
    live = live_of(helpline_client)
    live.sockets_per_agent = 2
    jo = await agents("jo@example.com")
    open_ = [await jo.connect(), await jo.connect()]
    for sock in open_:
        await sock.synced()
    with pytest.raises(aiohttp.WSServerHandshakeError) as third:
        await jo.http.ws_connect(jo.url("/agent/live"))
    assert third.value.status == 429
    await open_[0].ws.send_str(json.dumps({"type": "ping", "pad": "x" * 10_000}))
    code, _ = await open_[0].closed()
    assert code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
    for _ in range(70):
        await open_[1].ws.send_json({"type": "ping"})
    code, _ = await open_[1].closed()
    assert code == aiohttp.WSCloseCode.POLICY_VIOLATION
    for _ in range(50):
        if live.open_sockets == 0:
            break
        await asyncio.sleep(0.1)
    assert live.open_sockets == 0 and live.feed.subscribers == 0


async def _raw_socket(host: str, port: int, cookie: str, hello: dict[str, Any]) -> socket.socket:
    """A websocket client that sends its hello and then never reads (a tiny receive buffer)."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await loop.sock_connect(sock, (host, port))
    key = base64.b64encode(os.urandom(16)).decode()
    await loop.sock_sendall(sock, (
        f"GET /agent/live HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nCookie: {COOKIE}={cookie}\r\n\r\n"
    ).encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += await loop.sock_recv(sock, 1024)
    assert head.startswith(b"HTTP/1.1 101"), head
    payload = json.dumps(hello).encode()
    mask = os.urandom(4)
    header = bytes([0x81, 0x80 | 126]) + len(payload).to_bytes(2, "big") + mask
    await loop.sock_sendall(sock, header + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
    return sock


async def test_a_socket_that_does_not_read_is_cut_not_buffered(helpline_client, agents) -> None:
    client = helpline_client
    rt = runtime(client)
    live = live_of(client)
    live.send_timeout_s = 1.0
    live.queue_batches = 2
    kit = await agents("kit@example.com")
    ticket_id = await _escalated(client, "flood", "I want to talk to a real person " + "z" * 120)
    async with rt.db.write() as session:
        customer_id = (await session.get(Ticket, ticket_id)).customer_id
        await session.execute(update(Customer).where(Customer.id == customer_id).values(display_name="N" * 200))
    cookie = kit.http.cookie_jar.filter_cookies(client.make_url("/agent"))[COOKIE].value
    raw = await _raw_socket(client.server.host, client.server.port, cookie,
                            {"type": "hello", "csrf_token": kit.csrf, "cursor": kit.cursor})
    try:
        for _ in range(50):
            if live.feed.subscribers == 1:
                break
            await asyncio.sleep(0.05)
        assert live.open_sockets == 1
        for _round in range(4):  # about 700 bytes a frame, 12,000 frames at most
            async with rt.db.write() as session:
                session.add_all([
                    Event(ticket_id=ticket_id, kind="priority", created_at=utcnow(),
                          payload={"agent_id": kit.view.id, "from": "normal", "to": "high"})
                    for _ in range(3000)
                ])
            await live.feed.notify()
            for _ in range(100):
                if live.open_sockets == 0:
                    break
                await asyncio.sleep(0.1)
            if live.open_sockets == 0:
                break
        assert live.open_sockets == 0 and live.feed.subscribers == 0
    finally:
        raw.close()
    # The server is fine afterwards: a reading agent connects and is served.
    sock = await kit.connect(cursor=None)
    assert (await sock.next())["type"] == "welcome"
    await sock.close()


# --- several processes ----------------------------------------------------------------------------


async def test_an_escalation_on_one_process_reaches_a_socket_on_another_through_redis(
    database_url: str, intent_model_dir: Any, tmp_path: Any, redis_url: str, aiohttp_client: Any
) -> None:
    namespace = f"helpline-live-{os.urandom(6).hex()}"

    def settings(name: str) -> Settings:
        return Settings(data_dir=tmp_path / name, database_url=database_url, intent_model_dir=intent_model_dir,
                        redis_url=redis_url, redis_namespace=namespace)

    a = await aiohttp_client(build_app(settings("a")))
    b = await aiohttp_client(build_app(settings("b")))
    assert runtime(a).hot.backend == runtime(b).hot.backend == "redis"
    live_of(b).feed.poll_s = 60.0  # only a wake-up through Redis can bring it in time
    view = await accounts.add_agent(runtime(b).db, "lou@example.com", PASSWORD)
    lou = await Agent(b, view).login()
    try:
        sock = await lou.connect()
        await sock.synced()
        rt = runtime(a)
        accepted = await rt.conversations.receive(Inbound("webchat", "across", "I want to talk to a real person"))
        await idle(rt)
        started = asyncio.get_running_loop().time()
        await live_of(a).feed.notify()
        frame = await sock.ticket(lambda f: f["kind"] == "escalated", timeout=5)
        assert frame["ticket_id"] == accepted.ticket.id
        assert asyncio.get_running_loop().time() - started < 3
        # An action on process A is pushed to the socket on B as well.
        await inbox.claim(rt.db, accepted.ticket.id, view)
        await live_of(a).feed.notify()
        assert (await sock.ticket(lambda f: f["kind"] == "claimed", timeout=5))["row"]["assignee"] == "lou@example.com"
        await sock.close()
    finally:
        await lou.close()


async def test_an_action_through_the_json_api_reaches_live_queues_at_once(helpline_client, agents) -> None:
    """Found by a support lead trying the inbox: API actions reached open queues only at the 5 s
    re-read, so a ticket a help desk had claimed still showed as unassigned."""
    from state import api_tokens

    client = helpline_client
    live_of(client).feed.poll_s = 60.0
    cy = await agents("cy@example.com")
    sock = await cy.connect()
    await sock.synced()
    ticket_id = await _escalated(client, "api-live")
    await sock.ticket(lambda f: f["kind"] == "escalated" and f["ticket_id"] == ticket_id, timeout=3)
    await accounts.add_agent(runtime(client).db, "desk@example.com", PASSWORD)
    token, _ = await api_tokens.issue(runtime(client).db, "desk@example.com")
    response = await client.post(f"/agent/api/tickets/{ticket_id}/claim", headers={"Authorization": f"Bearer {token}"})
    assert response.status == 200
    claimed = await sock.ticket(lambda f: f["kind"] == "claimed", timeout=3)
    assert claimed["row"]["assignee"] == "desk@example.com"
