"""Faults with real parts: ``helpline serve`` processes, the test's database (SQLite or Postgres),
a real Redis, real websockets.

- a process SIGKILLed while it holds a ticket's lock mid-burst: another process takes the ticket
  once the lock expires and answers every message exactly once, in order;
- Redis stopped and restarted under a running process: ``/readyz`` and intake refuse while it is
  down (nothing stored, nothing acknowledged), and both recover by themselves;
- 50 concurrent messages to one ticket through two processes: all stored, answered one at a time,
  oldest first; a resuming client sees the whole conversation once, in order;
- one process with a slow link to Redis publishes a frame after the other process published a
  later seq: open sockets still receive every message live, in seq order (the gap is filled from
  the database);
- the same client message id sent at the same moment to two processes: stored and answered once.

Tests 1, 3 and 4 share the suite's Redis (``HELPLINE_TEST_REDIS_URL``); test 2 stops and starts a
redis-server of its own (daemonized, stopped by the PID in its pidfile).

Replies are order-status lookups: each names the order asked about, so every reply maps to exactly
one inbound message and the order of replies is checkable without relying on timing.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio
from app_fixtures import REPO, ChatSocket, OwnRedis, free_port
from sqlalchemy import select

from state.db import open_database
from state.models import CustomerIdentity, Event, Message, Ticket

ORDERS: dict[str, Any] = json.loads((REPO / "config" / "orders.json").read_text())
ORDER_IDS: list[str] = list(ORDERS)

NO_RATE_LIMIT = {  # the suite shares one Redis and customer ids restart with each fresh database
    "HELPLINE_CUSTOMER_RATE_LIMIT": "100000",
}

FAST_TAKEOVER = {  # a crashed holder blocks a ticket 2 s; the sweep looks every 0.5 s
    "HELPLINE_LOCK_TTL_S": "2",
    "HELPLINE_SWEEP_INTERVAL_S": "1",
    "HELPLINE_STALE_AFTER_S": "3",
    **NO_RATE_LIMIT,
}



# --- helpers ---------------------------------------------------------------------------------------


def order_question(order_id: str) -> str:
    """A status question that carries its proof of ownership, so every one is answered (an order
    number alone gets a proof question, and a third unanswered one a handoff)."""
    return f"where is my order {order_id}? my email is {ORDERS[order_id]['email']}"


def named_order(text: str) -> str | None:
    """The order id a reply (or question) names, or None."""
    found = [oid for oid in ORDER_IDS if oid in text]
    return found[0] if len(found) == 1 else None


def messages(frames: list[dict[str, Any]], direction: str | None = None) -> list[dict[str, Any]]:
    return [
        f for f in frames
        if f.get("type") == "message" and (direction is None or f["direction"] == direction)
    ]


async def read_until(
    sock: ChatSocket, done: Callable[[list[dict[str, Any]]], bool], timeout: float, what: str
) -> None:
    """Read frames into ``sock.frames`` until ``done(sock.frames)``; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while not done(sock.frames):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"{what}: not within {timeout:.0f} s; last frames {sock.frames[-6:]}")
        try:
            await sock.next_frame(timeout=left)
        except (asyncio.TimeoutError, TimeoutError):
            continue
        except aiohttp.WSMessageTypeError as exc:  # the server closed the socket
            raise AssertionError(f"{what}: socket closed ({exc}); last frames {sock.frames[-6:]}") from None


async def read_raw_until_closed(sock: ChatSocket, timeout: float = 3.0) -> None:
    """After the server died: keep what it sent before dying, stop at the close."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            msg = await sock.ws.receive(timeout=left)
        except (asyncio.TimeoutError, TimeoutError):
            return
        if msg.type != aiohttp.WSMsgType.TEXT:
            return
        sock.frames.append(json.loads(msg.data))


def assert_exactly_once_per_connection(frames: list[dict[str, Any]], where: str) -> None:
    seqs = [f["seq"] for f in messages(frames)]
    dups = [s for s, n in Counter(seqs).items() if n > 1]
    assert not dups, f"{where}: seqs delivered twice on one connection: {dups}"


def http_status(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


async def wait_status(url: str, status: int, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    seen: tuple[int, dict[str, Any]] | None = None
    while time.monotonic() < deadline:
        seen = await asyncio.to_thread(http_status, url)
        if seen[0] == status:
            return seen[1]
        await asyncio.sleep(0.2)
    raise AssertionError(f"{url} did not answer {status} within {timeout:.0f} s; last: {seen}")


async def db_rows(database_url: str, session_id: str) -> dict[str, Any]:
    """Everything the database holds for the web-chat customer ``session_id``."""
    db = open_database(database_url)
    try:
        async with db.sessions() as session:
            customer_id = await session.scalar(
                select(CustomerIdentity.customer_id).where(
                    CustomerIdentity.channel.in_(("webchat", "replay")), CustomerIdentity.address == session_id
                )
            )
            assert customer_id is not None, f"no customer for session {session_id}"
            msgs = list(
                (await session.execute(
                    select(Message).where(Message.customer_id == customer_id).order_by(Message.seq)
                )).scalars()
            )
            tickets = list(
                (await session.execute(select(Ticket).where(Ticket.customer_id == customer_id))).scalars()
            )
            turns = list(
                (await session.execute(
                    select(Event)
                    .where(Event.kind == "turn", Event.ticket_id.in_([t.id for t in tickets]))
                    .order_by(Event.id)
                )).scalars()
            )
    finally:
        await db.dispose()
    return {
        "inbound": [m for m in msgs if m.direction == "inbound"],
        "outbound": [m for m in msgs if m.direction == "outbound"],
        "tickets": tickets,
        "turns": turns,
    }


def assert_processed_once_in_order(rows: dict[str, Any], expected_client_ids: set[str]) -> None:
    """Every inbound stored once and processed by exactly one turn, turns committed one at a time
    oldest message first, one reply per inbound naming the order that message asked about."""
    inbound, outbound, turns = rows["inbound"], rows["outbound"], rows["turns"]
    client_ids = [m.provider_message_id for m in inbound]
    assert Counter(client_ids) == Counter(expected_client_ids), (
        f"stored inbound client ids differ: {sorted(client_ids)}"
    )
    assert all(m.processed_at is not None for m in inbound), (
        f"unprocessed: {[m.seq for m in inbound if m.processed_at is None]}"
    )
    turn_message_ids = [t.payload["message_id"] for t in turns]
    assert Counter(turn_message_ids) == Counter(m.id for m in inbound), (
        f"turn events per inbound message are not exactly one each: {turn_message_ids}"
    )
    seq_of = {m.id: m.seq for m in inbound}
    turn_seqs = [seq_of[mid] for mid in turn_message_ids]
    assert turn_seqs == sorted(turn_seqs), f"turns not oldest message first: {turn_seqs}"
    stamps = [t.created_at for t in turns]
    assert all(a <= b for a, b in zip(stamps, stamps[1:])), f"turns overlap: {stamps}"
    assert len(outbound) == len(inbound), f"{len(outbound)} replies for {len(inbound)} messages"
    assert sorted(t.payload["reply_message_id"] for t in turns) == sorted(m.id for m in outbound)
    by_id = {m.id: m for m in outbound}
    for turn in turns:
        asked = next(m for m in inbound if m.id == turn.payload["message_id"])
        reply = by_id[turn.payload["reply_message_id"]]
        assert named_order(reply.text) == named_order(asked.text), (asked.text, reply.text)
        assert reply.seq > asked.seq


def assert_replies_in_order(frames: list[dict[str, Any]], n: int, where: str) -> None:
    """On one connection: ``n`` inbound and ``n`` replies, the k-th reply answers the k-th message."""
    assert_exactly_once_per_connection(frames, where)
    inbound = sorted(messages(frames, "inbound"), key=lambda f: f["seq"])
    outbound = sorted(messages(frames, "outbound"), key=lambda f: f["seq"])
    assert len(inbound) == n, f"{where}: {len(inbound)} inbound frames, expected {n}"
    assert len(outbound) == n, f"{where}: {len(outbound)} replies, expected {n}"
    asked = [named_order(f["text"]) for f in inbound]
    answered = [named_order(f["text"]) for f in outbound]
    assert answered == asked, (
        f"{where}: replies not in message order:\n{asked}\n{answered}\n" + "\n".join(f["text"] for f in outbound)
    )
    assert all(not f["meta"]["escalated"] for f in outbound)


@pytest.mark.timeout(120)
async def test_sigkill_mid_turn_another_process_takes_over_and_answers_each_message_once(
    server_factory: Any, redis_url: str, database_url: str, http: aiohttp.ClientSession
) -> None:
    a = server_factory({"HELPLINE_REDIS_URL": redis_url, **FAST_TAKEOVER})
    b = server_factory({"HELPLINE_REDIS_URL": redis_url, **FAST_TAKEOVER})
    await asyncio.to_thread(a.start)
    await asyncio.to_thread(b.start)
    r = redis.asyncio.Redis.from_url(redis_url)
    try:
        burst = {f"kill-{i}": order_question(oid) for i, oid in enumerate(ORDER_IDS[:24])}
        on_a = await ChatSocket.open(http, a.url, labels=True)
        for client_id, text in burst.items():  # the whole burst is on the wire at once
            await on_a.send(text, client_id)
        await read_until(on_a, lambda fs: any(f["type"] == "ack" for f in fs), 20, "first ack on A")

        # Kill A while it holds the ticket's lock, i.e. between turns or inside one.
        owner = f"{socket.gethostname()}:{a.proc.pid}:".encode()
        lock_key = None
        deadline = time.monotonic() + 5
        while lock_key is None and time.monotonic() < deadline:
            namespace = a.env["HELPLINE_REDIS_NAMESPACE"]
            async for key in r.scan_iter(match=f"{namespace}:lock:{{ticket:*}}", count=1000):
                if (await r.get(key) or b"").startswith(owner):
                    lock_key = key
                    break
        assert lock_key is not None, "A never held a ticket lock"
        assert a.stop("kill") == -signal.SIGKILL
        left_ms = await r.pttl(lock_key)
        assert left_ms > 0, "A released the ticket lock before it died: not a mid-turn kill"
        await read_raw_until_closed(on_a)
        acked_on_a = {f["client_message_id"] for f in on_a.frames if f["type"] == "ack"}

        before = await db_rows(database_url, on_a.session_id)
        unanswered = [m.seq for m in before["inbound"] if m.processed_at is None]
        assert unanswered or len(before["inbound"]) < len(burst), "A finished the burst before dying"

        # The customer comes back on B from the start and re-sends what A never acknowledged (as
        # the widget does). B must wait out A's lock, then answer everything exactly once.
        killed_at = time.monotonic()
        on_b = await ChatSocket.open(http, b.url, on_a.session_id, last_seq=0, labels=True)
        resend = [cid for cid in burst if cid not in acked_on_a]
        for client_id in resend:
            await on_b.send(burst[client_id], client_id)
        await read_until(
            on_b, lambda fs: len({f["seq"] for f in messages(fs, "outbound")}) >= len(burst), 30,
            f"{len(burst)} replies on B after A was killed",
        )
        took_over_after = time.monotonic() - killed_at
        await on_b.drain(quiet=1.0)  # nothing more may come

        acked_on_b = {f["client_message_id"] for f in on_b.frames if f["type"] == "ack"}
        assert set(resend) <= acked_on_b, f"resent but not acked on B: {set(resend) - acked_on_b}"
        assert not [f for f in on_b.frames if f["type"] == "error"], on_b.frames
        assert_replies_in_order(on_b.frames, len(burst), "B")

        rows = await db_rows(database_url, on_a.session_id)
        assert_processed_once_in_order(rows, set(burst))
        assert len(rows["tickets"]) == 1
        assert rows["tickets"][0].fence >= 2, "B never claimed the ticket after A"
        # B could only work once A's lock expired (at most 2 s after the kill).
        assert took_over_after >= left_ms / 1000 - 0.2
        await on_b.close()
    finally:
        await r.aclose()


# --- 2. Redis stopped and restarted ----------------------------------------------------------------


@pytest.mark.timeout(120)
async def test_redis_outage_refuses_intake_and_recovers_by_itself(
    server_factory: Any, database_url: str, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    own = OwnRedis(tmp_path / "redis")
    own.start()
    try:
        server = server_factory({"HELPLINE_REDIS_URL": own.url, **FAST_TAKEOVER})
        await asyncio.to_thread(server.start)
        await wait_status(server.url + "/readyz", 200, 5)

        sock = await ChatSocket.open(http, server.url, labels=True)
        await sock.send(order_question(ORDER_IDS[0]), "outage-0")
        await read_until(sock, lambda fs: len(messages(fs, "outbound")) == 1, 20, "reply before outage")

        own.stop()
        down = await wait_status(server.url + "/readyz", 503, 10)
        assert (down["ready"], down["reason"], down["hot_state"]) == (False, "hot_state", "redis"), down

        mark = len(sock.frames)
        await sock.send(order_question(ORDER_IDS[1]), "outage-1")
        await read_until(
            sock, lambda fs: any(f["type"] == "error" for f in fs[mark:]), 15, "refusal while Redis is down"
        )
        during = sock.frames[mark:]
        error = next(f for f in during if f["type"] == "error")
        assert error["code"] == "unavailable" and error["client_message_id"] == "outage-1", error
        assert not [f for f in during if f["type"] == "ack"], during
        assert not messages(during), f"a refused message was echoed: {during}"
        rows = await db_rows(database_url, sock.session_id)
        assert [m.provider_message_id for m in rows["inbound"]] == ["outage-0"], "refused message was stored"

        own.start()  # same port, empty: Redis lost every key
        up = await wait_status(server.url + "/readyz", 200, 15)
        assert up["ready"] is True, up

        # The same socket works again; the refused message is sent again and answered, once.
        await sock.send(order_question(ORDER_IDS[1]), "outage-1")
        await sock.send(order_question(ORDER_IDS[2]), "outage-2")
        await read_until(
            sock, lambda fs: len(messages(fs, "outbound")) == 3, 20, "replies after Redis came back"
        )
        await sock.drain(quiet=1.0)
        acked = [f["client_message_id"] for f in sock.frames if f["type"] == "ack"]
        assert sorted(acked) == ["outage-0", "outage-1", "outage-2"], acked
        assert_replies_in_order(sock.frames, 3, "socket across the outage")
        assert_processed_once_in_order(
            await db_rows(database_url, sock.session_id), {"outage-0", "outage-1", "outage-2"}
        )
        await sock.close()
    finally:
        own.stop()


@pytest.mark.timeout(120)
async def test_a_message_whose_echo_redis_refuses_to_publish_is_acknowledged_and_answered(
    server_factory: Any, database_url: str, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """Redis up but refusing PUBLISH (an ACL, or a replica after failover) once the message is
    stored: intake must acknowledge it (it used to answer ``internal``, and the widget showed a
    stored message as failed) and start its turn at once rather than leave it to the sweep."""
    own = OwnRedis(tmp_path / "redis")
    own.start()
    try:
        server = server_factory({"HELPLINE_REDIS_URL": own.url, **NO_RATE_LIMIT})  # sweep: 45 s
        await asyncio.to_thread(server.start)
        sock = await ChatSocket.open(http, server.url, labels=True)
        admin = redis.asyncio.Redis.from_url(own.url)
        await admin.execute_command("ACL", "SETUSER", "default", "-publish")
        await admin.aclose()

        started = time.monotonic()
        await sock.send(order_question(ORDER_IDS[0]), "echo-0")
        ack = await sock.until(lambda f: f["type"] in ("ack", "error"))
        assert (ack["type"], ack["client_message_id"]) == ("ack", "echo-0"), ack
        rows = await wait_processed(database_url, sock.session_id, 1, timeout=20)
        assert time.monotonic() - started < 20  # its own turn, not the 45 s sweep
        assert_processed_once_in_order(rows, {"echo-0"})
        assert named_order(rows["outbound"][0].text) == ORDER_IDS[0]
        assert "its live echo was not published" in server.log()
        await sock.close()
    finally:
        own.stop()


# --- 2b. Postgres restarted under a running process -----------------------------------------------


class OwnPostgres:
    """A throw-away Postgres of one test (``scripts/pg.py``), stopped and restarted on one port."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = ""

    def _pg(self, *args: str) -> str:
        result = subprocess.run(
            [sys.executable, str(REPO / "scripts" / "pg.py"), *args, "--dir", str(self.workdir)],
            capture_output=True, text=True, timeout=120,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    def start(self) -> None:
        self.url = self._pg("start", "--port", str(self.port))

    def stop(self) -> None:
        self._pg("stop")


@pytest.fixture
def own_postgres() -> Any:
    # Not under tmp_path: as root the server runs as another user, who must be able to enter it.
    workdir = Path(tempfile.mkdtemp(prefix="helpline-test-pg-"))
    workdir.chmod(0o755)
    pg = OwnPostgres(workdir / "pg")
    try:
        pg.start()
        yield pg
        pg.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.mark.timeout(180)
async def test_background_jobs_come_back_after_a_postgres_restart(own_postgres: OwnPostgres, server_factory: Any) -> None:
    """procrastinate stops a worker whose LISTEN connection dies (any Postgres restart). Without a
    restart the process kept serving chats but ran no sweep and no outbox retry until it was itself
    restarted, and a crashed peer's messages stayed unanswered."""
    from datetime import timedelta

    from state.conversations import accept_inbound, get_or_create_customer
    from state.models import utcnow

    server = server_factory({"HELPLINE_DATABASE_URL": own_postgres.url, **FAST_TAKEOVER})
    await asyncio.to_thread(server.start)
    await wait_status(server.url + "/readyz", 200, 10)

    await asyncio.to_thread(own_postgres.stop)
    # A chat opened while the database is down is told to come back (it used to be an aborted
    # connection and an aiohttp traceback); the widget reconnects after close code 1013.
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(server.url + "/ws/chat")
        await ws.send_json({"type": "hello", "session_id": None, "last_seq": 0})
        refused = await ws.receive_json(timeout=15)
        assert (refused["type"], refused["code"]) == ("error", "unavailable"), refused
        closing = await ws.receive(timeout=10)
        assert closing.type == aiohttp.WSMsgType.CLOSE and closing.data == 1013
    await asyncio.to_thread(own_postgres.start)
    await wait_status(server.url + "/readyz", 200, 30)

    # A message a crashed process stored and never answered: only the periodic sweep (a job) finds it.
    db = open_database(own_postgres.url)
    try:
        customer = await get_or_create_customer(db, "webchat", "pg-restart")
        stale = await accept_inbound(
            db, customer_id=customer.id, channel="webchat", text=order_question(ORDER_IDS[0]),
            provider_message_id="pg-restart-1", reopen_window=timedelta(days=7),
            now=utcnow() - timedelta(seconds=30),
        )
        deadline = time.monotonic() + 60
        while True:
            async with db.sessions() as session:
                if (await session.get(Message, stale.message.id)).processed_at is not None:
                    break
            assert time.monotonic() < deadline, f"the sweep never ran after the restart:\n{server.log()}"
            await asyncio.sleep(0.5)
    finally:
        await db.dispose()
    assert "job worker stopped; restarting" in server.log() or "job worker failed" in server.log()
    server.stop()  # before the fixture stops Postgres


# --- 3. 50 concurrent messages, one ticket, two processes -----------------------------------------


async def wait_processed(database_url: str, session_id: str, n: int, timeout: float) -> dict[str, Any]:
    """Poll the database until ``n`` inbound messages of the customer are processed."""
    deadline = time.monotonic() + timeout
    while True:
        rows = await db_rows(database_url, session_id)
        done = [m for m in rows["inbound"] if m.processed_at is not None]
        if len(done) >= n:
            return rows
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(done)}/{n} messages processed after {timeout:.0f} s")
        await asyncio.sleep(0.3)


async def send_interleaved(on_a: ChatSocket, on_b: ChatSocket, sent: dict[str, str]) -> None:
    """All of ``sent`` at once, alternating between the socket on A and the socket on B."""
    await asyncio.gather(*(
        (on_a if i % 2 == 0 else on_b).send(text, client_id)
        for i, (client_id, text) in enumerate(sent.items())
    ))


@pytest.mark.timeout(120)
async def test_fifty_concurrent_messages_through_two_processes_are_answered_one_at_a_time_in_order(
    server_factory: Any, redis_url: str, database_url: str, http: aiohttp.ClientSession
) -> None:
    a = server_factory({"HELPLINE_REDIS_URL": redis_url, **NO_RATE_LIMIT})
    b = server_factory({"HELPLINE_REDIS_URL": redis_url, **NO_RATE_LIMIT})
    await asyncio.to_thread(a.start)
    await asyncio.to_thread(b.start)
    on_a = await ChatSocket.open(http, a.url, labels=True)
    on_b = await ChatSocket.open(http, b.url, on_a.session_id, labels=True)
    sent = {f"c50-{i}": order_question(oid) for i, oid in enumerate(ORDER_IDS[:50])}
    await send_interleaved(on_a, on_b, sent)
    for sock, name, mine in ((on_a, "A", 25), (on_b, "B", 25)):
        await read_until(
            sock, lambda fs, k=mine: sum(f["type"] == "ack" for f in fs) >= k, 30, f"acks on {name}"
        )
    rows = await wait_processed(database_url, on_a.session_id, 50, 45)
    assert len(rows["tickets"]) == 1, "one customer, one ticket"
    assert_processed_once_in_order(rows, set(sent))

    for sock, name in ((on_a, "A"), (on_b, "B")):
        await sock.drain(quiet=1.0)
        assert not [f for f in sock.frames if f["type"] == "error"], f"error frames on {name}"
        assert_exactly_once_per_connection(sock.frames, f"live socket on {name}")
    acks = Counter(f["client_message_id"] for s in (on_a, on_b) for f in s.frames if f["type"] == "ack")
    assert acks == Counter(set(sent)), "each message acked once, on the socket that sent it"

    # Whatever the live stream showed, a client resuming from 0 on either process sees the whole
    # conversation once, each reply after its message and in message order.
    for server, name in ((a, "A"), (b, "B")):
        again = await ChatSocket.open(http, server.url, on_a.session_id, last_seq=0, labels=True)
        await read_until(again, lambda fs: any(f["type"] == "synced" for f in fs), 20, f"resync on {name}")
        assert_replies_in_order(again.frames, 50, f"resumed on {name}")
        await again.close()
    await on_a.close()
    await on_b.close()


class DelayedRedisLink:
    """A TCP proxy to Redis that delays everything one process sends by ``delay`` seconds (in
    order): that process's link to Redis is slow, as across a congested network or zone."""

    def __init__(self, redis_url: str, delay: float) -> None:
        from urllib.parse import urlsplit

        parts = urlsplit(redis_url)
        self.target = (parts.hostname or "127.0.0.1", parts.port or 6379)
        self.path = parts.path
        self.delay = delay
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{port}{self.path}"

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.create_task(self._relay(reader, writer))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _relay(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        rreader, rwriter = await asyncio.open_connection(*self.target)
        due: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def upstream_in() -> None:
            while data := await creader.read(65536):
                due.put_nowait((loop.time() + self.delay, data))
            due.put_nowait((loop.time() + self.delay, b""))

        async def upstream_out() -> None:
            while True:
                at, data = await due.get()
                await asyncio.sleep(max(0.0, at - loop.time()))
                if not data:
                    rwriter.close()
                    return
                rwriter.write(data)
                await rwriter.drain()

        async def downstream() -> None:
            while data := await rreader.read(65536):
                cwriter.write(data)
                await cwriter.drain()
            cwriter.close()

        try:
            await asyncio.gather(upstream_in(), upstream_out(), downstream())
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            rwriter.close()
            cwriter.close()


@pytest.mark.timeout(120)
async def test_live_frames_published_out_of_order_by_two_processes_all_reach_open_sockets(
    server_factory: Any, redis_url: str, database_url: str, http: aiohttp.ClientSession
) -> None:
    # A's link to Redis is slow: its PUBLISH of message 1 reaches Redis after B has stored and
    # published message 2, so every subscriber sees seq 2 before seq 1. Both sockets must still
    # show both messages (and their replies) live, without reconnecting.
    link = DelayedRedisLink(redis_url, delay=0.6)
    a = server_factory({"HELPLINE_REDIS_URL": await link.start(), **NO_RATE_LIMIT})
    b = server_factory({"HELPLINE_REDIS_URL": redis_url, **NO_RATE_LIMIT})
    try:
        await asyncio.to_thread(a.start)
        await asyncio.to_thread(b.start)
        on_a = await ChatSocket.open(http, a.url, labels=True)
        on_b = await ChatSocket.open(http, b.url, on_a.session_id, labels=True)
        await on_a.send(order_question(ORDER_IDS[0]), "slow-1")
        db = open_database(database_url)
        try:
            deadline = time.monotonic() + 10
            while True:  # A committed message 1; its publish is still on the slow link
                async with db.sessions() as session:
                    if await session.scalar(select(Message.id).where(Message.provider_message_id == "slow-1")):
                        break
                assert time.monotonic() < deadline, "A never stored message 1"
                await asyncio.sleep(0.01)
        finally:
            await db.dispose()
        await on_b.send(order_question(ORDER_IDS[1]), "slow-2")
        await wait_processed(database_url, on_a.session_id, 2, 20)
        missing = {}
        for sock, name in ((on_a, "A"), (on_b, "B")):
            await sock.drain(quiet=2.0)
            assert_exactly_once_per_connection(sock.frames, name)
            if lost := sorted({1, 2, 3, 4} - {f["seq"] for f in messages(sock.frames)}):
                missing[name] = lost
        await on_a.close()
        await on_b.close()
        assert not missing, f"live frames never delivered to open sockets (seqs): {missing}"
    finally:
        a.stop()
        await link.close()


# --- 4. the same message delivered to two processes at once ---------------------------------------


@pytest.mark.timeout(120)
async def test_same_client_message_id_on_two_processes_at_once_is_stored_and_answered_once(
    server_factory: Any, redis_url: str, database_url: str, http: aiohttp.ClientSession
) -> None:
    a = server_factory({"HELPLINE_REDIS_URL": redis_url, **NO_RATE_LIMIT})
    b = server_factory({"HELPLINE_REDIS_URL": redis_url, **NO_RATE_LIMIT})
    await asyncio.to_thread(a.start)
    await asyncio.to_thread(b.start)
    on_a = await ChatSocket.open(http, a.url, labels=True)
    on_b = await ChatSocket.open(http, b.url, on_a.session_id, labels=True)
    rounds = {f"dup-{i}": order_question(oid) for i, oid in enumerate(ORDER_IDS[:5])}
    for client_id, text in rounds.items():
        await asyncio.gather(on_a.send(text, client_id), on_b.send(text, client_id))
        for sock in (on_a, on_b):
            await read_until(
                sock,
                lambda fs, cid=client_id: any(f["type"] == "ack" and f["client_message_id"] == cid for f in fs),
                20, f"ack of {client_id}",
            )
    for sock, name in ((on_a, "A"), (on_b, "B")):
        await read_until(sock, lambda fs: len(messages(fs, "outbound")) >= 5, 20, f"replies on {name}")
        await sock.drain(quiet=1.5)
        assert_replies_in_order(sock.frames, 5, name)
        acks = [f for f in sock.frames if f["type"] == "ack"]
        assert Counter(f["client_message_id"] for f in acks) == Counter(set(rounds)), acks
    # Both processes acknowledged each message with the one stored seq.
    seq_a = {f["client_message_id"]: f["seq"] for f in on_a.frames if f["type"] == "ack"}
    seq_b = {f["client_message_id"]: f["seq"] for f in on_b.frames if f["type"] == "ack"}
    assert seq_a == seq_b

    rows = await db_rows(database_url, on_a.session_id)
    assert_processed_once_in_order(rows, set(rounds))
    await on_a.close()
    await on_b.close()
