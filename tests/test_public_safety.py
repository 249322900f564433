"""The web chat in front of the public: what an anonymous visitor can learn and what one client can
cost, against a real ``helpline serve`` process over real sockets.

- order details only after proof of ownership (order number + the email or postcode on it), the
  same answers for real and made-up orders, and nothing verified carries to another session;
- session ids only from the server, no customer row for a hello;
- per-address limits on chat sockets and new sessions (behind a trusted proxy: the forwarded
  address), a per-address and per-process cap on TCP connections, a header timeout;
- slow readers disconnected, idle sockets closed;
- no internal labels in customer frames, security headers, health endpoints that tell anonymous
  callers nothing about the deployment, an Origin allow-list.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
import time
import urllib.request
from typing import Any

import aiohttp
import pytest
from app_fixtures import ChatSocket
from sqlalchemy import func, select

from state.db import open_database
from state.models import Customer

DEMO_ORDERS: dict[str, Any] = json.loads(
    (__import__("pathlib").Path(__file__).resolve().parents[1] / "config" / "orders.json").read_text()
)


def _messages(frames: list[dict]) -> list[dict]:
    return [f for f in frames if f["type"] == "message"]


async def _customers(database_url: str) -> int:
    db = open_database(database_url)
    try:
        async with db.sessions() as session:
            return int(await session.scalar(select(func.count()).select_from(Customer)) or 0)
    finally:
        await db.dispose()


# --- orders ----------------------------------------------------------------------------------------


async def test_an_anonymous_visitor_cannot_read_other_customers_orders(server_url: str, http) -> None:
    """The harvest that worked before: order numbers three at a time on a fresh session."""
    chat = await ChatSocket.open(http, server_url)
    ids = list(DEMO_ORDERS)[:9]
    for i in range(0, 9, 3):
        await chat.send("where are my orders " + " ".join(ids[i : i + 3]), f"h-{i}")
    replies = [f["text"] for f in _messages(await chat.drain(quiet=3.0)) if f["direction"] == "outbound"]
    # Asked twice for proof and given none, the bot hands the visitor to a person and falls silent.
    # (After an apology: repeated failure is a reason the bot says sorry for.)
    assert len(replies) == 3 and "I'm passing this to a member of our support team" in replies[-1]
    assert replies[-1].startswith("I'm sorry")
    for order_id in ids:
        order = DEMO_ORDERS[order_id]
        leaked = [order["status"], *(t for f in order["fulfillments"] for t in f["tracking_id"]),
                  *(item["name"] for item in order["items"])]
        for reply in replies:
            assert not any(word in reply for word in leaked if len(word) > 4), (order_id, reply)
    await chat.close()
    # The same words for an order that exists and for one that does not.
    answers = []
    for order_id in ("#W0000000", ids[0]):
        fresh = await ChatSocket.open(http, server_url)
        await fresh.send(f"where is my order {order_id}", "h-one")
        answers.append((await fresh.bot_reply())["text"].replace(order_id, "#ORDER"))
        await fresh.close()
    assert answers[0] == answers[1]


async def test_proof_of_ownership_is_remembered_by_the_ticket_and_not_by_other_sessions(server_url: str, http) -> None:
    order_id, order = next((k, v) for k, v in DEMO_ORDERS.items() if v["fulfillments"])
    tracking = order["fulfillments"][0]["tracking_id"][0]
    siblings = [k for k, v in DEMO_ORDERS.items() if v["user_id"] == order["user_id"] and k != order_id]
    chat = await ChatSocket.open(http, server_url)
    await chat.send(f"where is my order {order_id}?", "v-1")
    assert tracking not in (await chat.bot_reply())["text"]
    await chat.send(order["address"]["zip"], "v-2")  # the bot asked for the email or postcode
    assert tracking in (await chat.bot_reply())["text"]
    await chat.send(f"where is my order {siblings[0]}?", "v-3")  # the same owner: no second proof
    assert (await chat.bot_reply())["text"].startswith(f"Your order {siblings[0]} ")
    await chat.close()
    # Another session (another visitor) has proved nothing.
    other = await ChatSocket.open(http, server_url)
    await other.send(f"where is my order {siblings[0]}?", "v-4")
    assert "To protect your privacy" in (await other.bot_reply())["text"]
    await other.close()


# --- sessions --------------------------------------------------------------------------------------


@pytest.mark.parametrize("session_id", ["my-own-session-id", "aaaaaaaa", "w" + "A" * 24 + ".forgedsignature"])
async def test_a_session_id_the_server_did_not_issue_is_refused(server_url: str, http, session_id: str) -> None:
    ws = await http.ws_connect(server_url + "/ws/chat")
    await ws.send_json({"type": "hello", "session_id": session_id, "last_seq": 0})
    err = await ws.receive_json(timeout=10)
    assert (err["type"], err["code"]) == ("error", "bad_session")
    closing = await ws.receive(timeout=10)
    assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED) and ws.close_code == 1008
    await ws.close()


async def test_hellos_create_no_customers_and_the_first_message_creates_one(
    server_url: str, http, database_url: str
) -> None:
    sessions = []
    for _ in range(20):
        chat = await ChatSocket.open(http, server_url)
        assert chat.welcome["ticket_id"] is None
        sessions.append(chat.session_id)
        await chat.close()
    assert await _customers(database_url) == 0
    again = await ChatSocket.open(http, server_url, sessions[0])  # an issued id is valid before any message
    await again.send("hi", "first")
    await again.bot_reply()
    await again.close()
    assert await _customers(database_url) == 1


def test_only_the_issued_spelling_of_a_session_id_is_accepted() -> None:
    """The signature's last base64url character carries unused bits: a break test turned one issued
    id into four accepted ones, each a new customer."""
    from channels.sessions import SessionIssuer

    issuer = SessionIssuer("k" * 32)
    issued = issuer.issue()
    assert issuer.channel_of(issued) == "webchat"
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    others = [issued[:-1] + c for c in alphabet if c != issued[-1]]
    assert [o for o in others if issuer.channel_of(o) is not None] == []


async def test_new_sessions_are_limited_per_client_address(server_factory, http) -> None:
    server = server_factory({"HELPLINE_NEW_SESSIONS_PER_ADDRESS": "3", "HELPLINE_TRUSTED_PROXIES": "127.0.0.1"})
    server.start()

    async def hello(address: str) -> dict:
        ws = await http.ws_connect(server.url + "/ws/chat", headers={"X-Forwarded-For": address})
        await ws.send_json({"type": "hello", "session_id": None, "last_seq": 0})
        frame = await ws.receive_json(timeout=10)
        await ws.close()
        return frame

    assert [(await hello("203.0.113.7"))["type"] for _ in range(3)] == ["welcome"] * 3
    refused = await hello("203.0.113.7")
    assert (refused["type"], refused["code"]) == ("error", "rate_limited")
    assert (await hello("198.51.100.4"))["type"] == "welcome"  # another address is not affected
    # Behind a proxy we do not trust the header is ignored: every such hello counts for the peer.
    spoof = server_factory({"HELPLINE_NEW_SESSIONS_PER_ADDRESS": "2"})
    spoof.start()
    frames = []
    for i in range(3):
        ws = await http.ws_connect(spoof.url + "/ws/chat", headers={"X-Forwarded-For": f"203.0.113.{i}"})
        await ws.send_json({"type": "hello", "session_id": None, "last_seq": 0})
        frames.append((await ws.receive_json(timeout=10))["type"])
        await ws.close()
    assert frames == ["welcome", "welcome", "error"]


async def test_chat_sockets_are_limited_per_client_address(server_factory, http) -> None:
    server = server_factory({"HELPLINE_CHAT_SOCKETS_PER_ADDRESS": "2", "HELPLINE_TRUSTED_PROXIES": "127.0.0.1"})
    server.start()
    first = [await http.ws_connect(server.url + "/ws/chat", headers={"X-Forwarded-For": "203.0.113.7"})
             for _ in range(2)]
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect(server.url + "/ws/chat", headers={"X-Forwarded-For": "203.0.113.7"})
    assert refused.value.status == 429
    other = await http.ws_connect(server.url + "/ws/chat", headers={"X-Forwarded-For": "198.51.100.4"})
    await first[0].close()
    await asyncio.sleep(0.3)
    again = await http.ws_connect(server.url + "/ws/chat", headers={"X-Forwarded-For": "203.0.113.7"})
    for ws in (*first, other, again):
        await ws.close()


# --- connections -----------------------------------------------------------------------------------


def _connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket()
    sock.bind((source, 0))
    sock.settimeout(5)
    sock.connect(("127.0.0.1", port))
    return sock


async def test_tcp_connections_are_capped_per_address_and_a_half_sent_request_times_out(server_factory) -> None:
    server = server_factory({"HELPLINE_MAX_CONNECTIONS_PER_ADDRESS": "4", "HELPLINE_HTTP_IDLE_TIMEOUT_S": "1.5"})
    server.start()
    held = [_connect(server.port, "127.0.0.2") for _ in range(4)]
    for sock in held:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # headers never finished
    extra = _connect(server.port, "127.0.0.2")
    answer = extra.recv(200)
    assert answer.startswith(b"HTTP/1.1 503"), answer
    # Another address still gets in.
    other = _connect(server.port, "127.0.0.3")
    other.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert other.recv(100).startswith(b"HTTP/1.1 200")
    # The half-sent requests are dropped after the header timeout, freeing the address's slots.
    started = time.monotonic()
    for sock in held:
        assert await asyncio.to_thread(sock.recv, 100) == b""
    assert time.monotonic() - started < 5
    again = _connect(server.port, "127.0.0.2")
    again.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert again.recv(100).startswith(b"HTTP/1.1 200")
    for sock in (*held, extra, other, again):
        sock.close()


async def test_the_process_caps_its_open_connections(server_factory) -> None:
    server = server_factory({"HELPLINE_MAX_CONNECTIONS": "10", "HELPLINE_HTTP_IDLE_TIMEOUT_S": "30"})
    server.start()
    held = [_connect(server.port, f"127.0.1.{i}") for i in range(10)]
    extra = _connect(server.port, "127.0.2.1")
    assert extra.recv(200).startswith(b"HTTP/1.1 503")
    held[0].close()
    await asyncio.sleep(0.3)
    ok = _connect(server.port, "127.0.2.2")
    ok.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert ok.recv(100).startswith(b"HTTP/1.1 200")
    for sock in (*held, extra, ok):
        sock.close()


# --- slow and idle clients ------------------------------------------------------------------------


def _raw_websocket(port: int, hello: dict[str, Any], rcvbuf: int = 4096) -> socket.socket:
    """A websocket client that sends its hello and then never reads (tiny receive buffer)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET /ws/chat HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    payload = json.dumps(hello).encode()
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    header = bytes([0x81]) + (bytes([0x80 | len(payload)]) if len(payload) < 126 else bytes([0x80 | 126]) + struct.pack("!H", len(payload)))
    sock.sendall(header + mask + masked)
    return sock


async def test_a_client_that_does_not_read_is_disconnected_and_holds_one_page(server_factory, http) -> None:
    server = server_factory({
        "HELPLINE_CHAT_SEND_TIMEOUT_S": "2", "HELPLINE_MAX_STORED_CHARS": "100000",
        "HELPLINE_CUSTOMER_RATE_LIMIT": "100000", "HELPLINE_ADDRESS_RATE_LIMIT": "100000",
    })
    server.start()
    chat = await ChatSocket.open(http, server.url)
    for i in range(60):  # 6 MB of stored text, more than the kernel buffers hold
        await chat.send(f"message {i} " + "y" * 100_000, f"big-{i}")
        await chat.until(lambda f: f["type"] == "ack")
    await chat.close()
    readers = [_raw_websocket(server.port, {"type": "hello", "session_id": chat.session_id, "last_seq": 0})
               for _ in range(3)]
    deadline = time.monotonic() + 30
    while server.health()["chat_sockets"] > 0:
        assert time.monotonic() < deadline, server.health()
        await asyncio.sleep(0.5)
    for sock in readers:
        sock.close()


class _SendGate:
    """The one method of a websocket that :class:`channels.webchat._Connection` sends with, whose
    send completes when the test says so."""

    closed = False

    def __init__(self) -> None:
        self.sent = asyncio.get_running_loop().create_future()

    async def send_str(self, data: str) -> None:
        await self.sent


async def test_a_send_cancelled_as_it_completes_is_still_cancelled() -> None:
    """Shutdown cancels each socket's pumps; a pump whose send finished in the same loop turn kept
    running (Python 3.11's wait_for drops that cancellation), waited for the next live frame for
    ever, and the server ignored SIGTERM."""
    from channels.webchat import _Connection

    ws = _SendGate()
    conn = _Connection(ws, internal=False, send_timeout_s=5)  # type: ignore[arg-type]
    sending = asyncio.create_task(conn.send({"type": "pong"}))
    await asyncio.sleep(0)  # the task now waits on the send
    ws.sent.set_result(None)
    sending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sending


async def test_a_socket_flooding_frames_is_closed(server_url: str, http) -> None:
    """Pings, re-sends and broken frames never reach the per-customer message limit: a break test
    flooded pings from four sockets and slowed every other customer's turns to seconds."""
    from channels.webchat import FRAMES_PER_WINDOW

    chat = await ChatSocket.open(http, server_url)
    for _ in range(FRAMES_PER_WINDOW + 1):
        await chat.ws.send_json({"type": "ping"})
    frames = []
    while (msg := await chat.ws.receive(timeout=10)).type == aiohttp.WSMsgType.TEXT:
        frames.append(json.loads(msg.data))
    assert [f["type"] for f in frames].count("pong") == FRAMES_PER_WINDOW
    assert frames[-1]["code"] == "too_many_frames" and chat.ws.close_code == 1008


async def test_an_idle_chat_socket_is_closed_with_code_4000(server_factory, http) -> None:
    server = server_factory({"HELPLINE_CHAT_IDLE_TIMEOUT_S": "2"})
    server.start()
    chat = await ChatSocket.open(http, server.url)
    await chat.send("hi", "i-1")
    await chat.bot_reply()
    started = time.monotonic()
    while True:  # pings do not count as activity
        await chat.ws.send_json({"type": "ping"})
        msg = await chat.ws.receive(timeout=10)
        if msg.type != aiohttp.WSMsgType.TEXT:
            break
        await asyncio.sleep(0.3)
    assert chat.ws.close_code == 4000 and 1.5 < time.monotonic() - started < 6


# --- what a customer sees ------------------------------------------------------------------------


async def test_customer_frames_carry_no_internal_labels(server_url: str, http) -> None:
    chat = await ChatSocket.open(http, server_url)
    await chat.send("how long does a refund take?", "m-1")
    reply = await chat.bot_reply()
    assert reply["meta"] is None and "retrieval" not in json.dumps(reply)
    echoed = [f for f in _messages(chat.frames) if f["direction"] == "inbound"]
    assert echoed and all(f["meta"] is None for f in echoed)
    await chat.close()


async def test_a_replay_session_needs_a_local_caller_or_the_admin_token(server_factory, http) -> None:
    server = server_factory({"HELPLINE_ADMIN_TOKEN": "s3cret-admin-token-0123", "HELPLINE_TRUSTED_PROXIES": "127.0.0.1"})
    server.start()

    async def hello(headers: dict[str, str]) -> dict:
        ws = await http.ws_connect(server.url + "/ws/chat", headers=headers)
        await ws.send_json({"type": "hello", "session_id": None, "last_seq": 0, "replay": True})
        frame = await ws.receive_json(timeout=10)
        await ws.close()
        return frame

    remote = {"X-Forwarded-For": "203.0.113.7"}
    refused = await hello(remote)
    assert (refused["type"], refused["code"]) == ("error", "forbidden")
    assert (await hello({**remote, "Authorization": "Bearer s3cret-admin-token-0123"}))["type"] == "welcome"
    assert (await hello({"Authorization": "Bearer wrong"}))["type"] == "welcome"  # local: no token needed
    assert (await hello({**remote, "Authorization": "Bearer wrong"}))["code"] == "forbidden"
    # From the trusted proxy, a request that does not name its client in a readable X-Forwarded-For
    # is from someone unknown, not from this machine (a break test got replay sessions, and the
    # health details, this way).
    for unnamed in ({"X-Real-IP": "8.8.8.8"}, {"Forwarded": "for=8.8.8.8"}, {"X-Forwarded-For": "junk"},
                    {"X-Forwarded-For": ""}):
        assert (await hello(unnamed))["code"] == "forbidden", unnamed
        assert json.loads(_get(server.url + "/healthz", unnamed)[2]) == {"status": "ok"}, unnamed
    assert (await hello({"X-Forwarded-For": "127.0.0.1"}))["type"] == "welcome"  # the proxy's own machine


def _get(url: str, headers: dict[str, str] | None = None, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers or {}, method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


async def test_pages_and_files_carry_security_headers(server_url: str) -> None:
    status, headers, body = _get(server_url + "/")
    assert status == 200 and b"/static/widget.js" in body and b"<style" not in body
    csp = headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert headers["X-Frame-Options"] == "DENY" and headers["X-Content-Type-Options"] == "nosniff"
    status, headers, _ = _get(server_url + "/static/widget.js")
    assert status == 200 and headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Cross-Origin-Resource-Policy"] == "cross-origin"  # other sites embed it
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    # Error responses are raised, not returned: they carry the headers too.
    for path, method, expected in (("/nope", "GET", 404), ("/healthz", "POST", 405), ("/ws/chat", "GET", 400)):
        status, headers, _ = _get(server_url + path, method=method)
        assert status == expected, (path, status)
        assert headers.get("X-Content-Type-Options") == "nosniff", (path, headers)
        assert "frame-ancestors 'none'" in headers.get("Content-Security-Policy", ""), (path, headers)



async def test_health_endpoints_tell_anonymous_callers_only_the_status(server_factory) -> None:
    server = server_factory({"HELPLINE_TRUSTED_PROXIES": "127.0.0.1", "HELPLINE_ADMIN_TOKEN": "s3cret-admin-token-0123"})
    server.start()
    public = {"X-Forwarded-For": "203.0.113.7"}
    status, _, body = _get(server.url + "/healthz", public)
    assert (status, json.loads(body)) == (200, {"status": "ok"})
    status, _, body = _get(server.url + "/readyz", public)
    assert (status, json.loads(body)) == (200, {"ready": True})
    status, _, body = _get(server.url + "/healthz", {**public, "Authorization": "Bearer s3cret-admin-token-0123"})
    assert json.loads(body)["orders"] == 200
    # A forwarding header from a peer that is not a trusted proxy is not "local" either.
    plain = server_factory()
    plain.start()
    assert json.loads(_get(plain.url + "/healthz", {"X-Forwarded-For": "127.0.0.1"})[2]) == {"status": "ok"}
    assert "orders" in json.loads(_get(plain.url + "/healthz")[2])


async def test_the_chat_accepts_only_allowed_origins(server_factory, http) -> None:
    server = server_factory({"HELPLINE_ALLOWED_ORIGINS": "https://shop.example.com,https://*.example.org"})
    server.start()

    async def origin(value: str) -> int:
        try:
            ws = await http.ws_connect(server.url + "/ws/chat", headers={"Origin": value})
        except aiohttp.WSServerHandshakeError as err:
            return err.status
        await ws.close()
        return 101

    own = f"http://127.0.0.1:{server.port}"
    assert await origin(own) == 101
    assert await origin("https://shop.example.com") == 101
    assert await origin("https://help.eu.example.org") == 101
    assert await origin("https://evil.example") == 403
    assert await origin("https://example.org.evil.example") == 403
    assert await origin("http://shop.example.com") == 403  # scheme matters


def test_a_malformed_allowed_origin_stops_the_settings() -> None:
    from pydantic import ValidationError

    from config.settings import Settings

    with pytest.raises(ValidationError, match="is not an origin"):
        Settings(allowed_origins=["127.0.0.1:8091"])  # no scheme: it would never match
    assert Settings(allowed_origins=["https://*.example.com", "http://127.0.0.1:8091/", "*"]).allowed_origins


async def test_any_forwarding_header_makes_a_loopback_caller_anonymous(server_url: str) -> None:
    for header in ("X-Real-IP", "X-Forwarded-For", "Forwarded", "True-Client-IP"):
        value = "for=203.0.113.5" if header == "Forwarded" else "203.0.113.5"
        assert json.loads(_get(server_url + "/healthz", {header: value})[2]) == {"status": "ok"}, header


async def test_unsigned_session_ids_of_earlier_releases_can_be_switched_off(app_settings, aiohttp_client) -> None:
    from helpline.server import RUNTIME, build_app
    from state.conversations import get_or_create_customer

    legacy = "L" * 32  # what the previous release issued: secrets.token_urlsafe(24)
    for accept, expected in ((True, "welcome"), (False, "error")):
        client = await aiohttp_client(build_app(app_settings.model_copy(update={"legacy_session_ids": accept})))
        await get_or_create_customer(client.server.app[RUNTIME].db, "webchat", legacy)
        ws = await client.ws_connect("/ws/chat")
        await ws.send_json({"type": "hello", "session_id": legacy, "last_seq": 0})
        assert (await ws.receive_json(timeout=10))["type"] == expected
        await ws.close()
        await client.close()
