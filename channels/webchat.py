"""Web-chat channel: the ``/ws/chat`` websocket that the widget and ``helpline chat`` speak.

Protocol (JSON text frames; see README "Web chat"):

client -> server
  ``{"type": "hello", "session_id": str | null, "last_seq": int}``   first frame, once
  ``{"type": "message", "text": str, "client_message_id": str}``       idempotent by client id
  ``{"type": "ping"}``
server -> client
  ``welcome`` (session_id, ticket_id, ticket_state), then every message of the customer with
  ``seq > last_seq`` (the backlog), then ``{"type": "synced", "last_seq": int}``, then live
  ``message`` frames; ``ack`` per stored inbound message; ``typing``; ``error`` (code, message, and
  the frame's ``client_message_id`` when it had a readable one); ``pong``.

Exactly-once, in order, per connection: the subscription to live frames starts before the backlog
is read and each connection remembers the highest ``seq`` it sent, so a frame in both is sent once; a
live frame that skips seqs (another process published them and they have not arrived yet) first
pulls the missing ones from the database, where seqs commit in order. A client
that reconnects with its last seen ``seq`` receives what it missed and nothing twice.

This adapter normalises frames into :class:`helpline.conversation.Inbound` and renders stored
messages; it knows nothing of routing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import weakref
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from helpline.conversation import Conversations, Inbound, RateLimited, ServiceUnavailable
from state.conversations import customer_last_seq, message_frame, messages_after, open_ticket
from state.delivery import Delivery, Frame
from state.models import Message

log = logging.getLogger(__name__)

CHANNEL = "webchat"
HELLO_TIMEOUT_S = 10.0
MAX_FRAME_BYTES = 256 * 1024
"""Frames above this close the socket (1009). Texts above ``max_message_chars`` but under this are
stored and answered with a clear reply, so nothing the customer typed is lost."""

_SESSION_ID = re.compile(r"[A-Za-z0-9_-]{8,128}")
_CLIENT_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")


class FrameError(ValueError):
    """A client frame that breaks the protocol; ``code`` goes back in the error frame."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def parse_frame(raw: str) -> dict[str, Any]:
    """Decode one client frame; raises :class:`FrameError` (``bad_frame``) with the reason."""
    try:
        frame = json.loads(raw)
    except ValueError as exc:
        raise FrameError("bad_frame", f"frame is not JSON: {exc}") from None
    except RecursionError:
        raise FrameError("bad_frame", "frame is nested too deeply") from None
    if not isinstance(frame, dict) or not isinstance(frame.get("type"), str):
        raise FrameError("bad_frame", 'frame must be a JSON object with a string "type"')
    return frame


def parse_hello(frame: dict[str, Any]) -> tuple[str | None, int]:
    """(session_id or None, last_seq) from a hello frame; raises :class:`FrameError`."""
    if frame.get("type") != "hello":
        raise FrameError("bad_frame", 'the first frame must be {"type": "hello", ...}')
    session_id = frame.get("session_id")
    if session_id is not None and (not isinstance(session_id, str) or not _SESSION_ID.fullmatch(session_id)):
        raise FrameError("bad_frame", "session_id must be null or 8-128 characters of [A-Za-z0-9_-]")
    last_seq = frame.get("last_seq", 0)
    if not isinstance(last_seq, int) or isinstance(last_seq, bool) or not 0 <= last_seq < 2**53:
        raise FrameError("bad_frame", "last_seq must be an integer from 0 to 2**53 - 1")
    return session_id, last_seq


def parse_message(frame: dict[str, Any]) -> tuple[str, str]:
    """(text, client_message_id) from a message frame; raises :class:`FrameError`."""
    text = frame.get("text")
    if not isinstance(text, str):
        raise FrameError("bad_frame", 'a message frame needs a string "text"')
    client_id = frame.get("client_message_id")
    if not isinstance(client_id, str) or not _CLIENT_ID.fullmatch(client_id):
        raise FrameError("bad_frame", "client_message_id must be 1-128 characters of [A-Za-z0-9_.:-]")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate from a broken client encoding
        raise FrameError(
            "bad_encoding", f"text is not valid Unicode at character {exc.start}; please resend it"
        ) from None
    return text, client_id


class _Connection:
    """One open socket: a single writer lock and the highest seq sent on it."""

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws
        self.sent_seq = 0
        self._lock = asyncio.Lock()

    async def send(self, frame: Frame) -> None:
        async with self._lock:
            if frame.get("type") == "message":
                if frame["seq"] <= self.sent_seq:
                    return  # already sent from the backlog or an earlier publish
                self.sent_seq = frame["seq"]
            if not self.ws.closed:
                try:
                    await self.ws.send_str(json.dumps(frame))
                except ConnectionResetError:
                    pass  # the client left; it reads what it missed from the backlog next time

    async def error(self, code: str, message: str, client_message_id: str | None = None) -> None:
        await self.send(
            {"type": "error", "code": code, "message": message, "client_message_id": client_message_id}
        )


class WebChatChannel:
    """aiohttp handler for ``GET /ws/chat``."""

    def __init__(self, conversations: Conversations, delivery: Delivery) -> None:
        self.conversations = conversations
        self.delivery = delivery
        self._sockets: weakref.WeakSet[web.WebSocketResponse] = weakref.WeakSet()

    async def send(self, message: Message) -> str | None:
        """Outbound sender (the outbox calls it): publish the message to the customer's open
        sockets, on whichever process holds them. Raises the hot state's errors when the publish
        fails (the outbox retries). No socket open: nothing to do, the customer reads the message
        from the backlog at their next connect. Web chat has no provider message id: returns None."""
        await self.delivery.publish(message.customer_id, message_frame(message))
        return None

    async def close_all(self) -> None:
        """Close every open socket with 1001 (going away), at shutdown: a browser that keeps
        answering pings would otherwise hold the server open forever. Clients reconnect to
        another process and resume from their last seq."""
        for ws in list(self._sockets):
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down")

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=30.0, max_msg_size=MAX_FRAME_BYTES)
        await ws.prepare(request)
        self._sockets.add(ws)
        conn = _Connection(ws)
        try:
            hello = await ws.receive(timeout=HELLO_TIMEOUT_S)
        except asyncio.TimeoutError:
            await conn.error("bad_frame", f"no hello frame within {HELLO_TIMEOUT_S:.0f} s")
            await ws.close()
            return ws
        if hello.type != WSMsgType.TEXT:
            if hello.type == WSMsgType.BINARY:
                await conn.error("bad_frame", "the first frame must be a JSON text hello frame")
            await ws.close()
            return ws
        try:
            session_id, last_seq = parse_hello(parse_frame(hello.data))
        except FrameError as exc:
            await conn.error(exc.code, str(exc))
            await ws.close()
            return ws

        session_id = session_id or secrets.token_urlsafe(24)
        try:
            customer_id = await self.conversations.customer_id(CHANNEL, session_id)
            # A client can remember more than the server has (a restored or replaced database);
            # trust the server's count, or every message up to the client's number would be hidden.
            conn.sent_seq = min(last_seq, await customer_last_seq(self.conversations.db, customer_id))
        except self.conversations.outage_errors as exc:
            log.warning("web-chat hello refused, storage unavailable: %s", exc)
            await conn.error("unavailable", "We cannot open the chat just now; reconnecting shortly.")
            await ws.close(code=WSCloseCode.TRY_AGAIN_LATER, message=b"storage unavailable")
            return ws
        with self.delivery.subscribe(customer_id) as live:
            async with self.conversations.db.sessions() as session:
                ticket = await open_ticket(session, customer_id)
            await conn.send(
                {
                    "type": "welcome",
                    "session_id": session_id,
                    "ticket_id": ticket.id if ticket else None,
                    "ticket_state": ticket.state if ticket else None,
                }
            )
            await self._send_backlog(conn, customer_id, last_seq)
            await conn.send({"type": "synced", "last_seq": conn.sent_seq})
            pump = asyncio.create_task(self._pump(conn, live, customer_id))
            try:
                await self._read(conn, session_id, customer_id)
            finally:
                pump.cancel()
                await asyncio.gather(pump, return_exceptions=True)
        return ws

    async def _send_backlog(self, conn: _Connection, customer_id: int, after: int) -> None:
        while True:
            batch = await messages_after(self.conversations.db, customer_id, after)
            for message in batch:
                await conn.send(message_frame(message))
            if len(batch) < 500:
                return
            after = batch[-1].seq

    async def _deliver(self, conn: _Connection, customer_id: int, frame: Frame) -> None:
        if frame.get("type") == "message" and frame["seq"] > conn.sent_seq + 1:
            # A gap: frames published by different processes can reach us out of seq order.
            # Seqs commit in order, so everything below this one is in the database already:
            # send it from there, in order; the late live copies are then skipped as sent.
            await self._send_backlog(conn, customer_id, conn.sent_seq)
        await conn.send(frame)

    async def _pump(self, conn: _Connection, live: asyncio.Queue[Frame], customer_id: int) -> None:
        while True:
            await self._deliver(conn, customer_id, await live.get())

    async def _read(self, conn: _Connection, session_id: str, customer_id: int) -> None:
        async for msg in conn.ws:
            if msg.type == WSMsgType.ERROR:
                log.info("web-chat socket error: %s", conn.ws.exception())
                return
            if msg.type != WSMsgType.TEXT:
                await conn.error("bad_frame", "only JSON text frames are accepted")
                continue
            frame = {}
            try:
                frame = parse_frame(msg.data)
                kind = frame["type"]
                if kind == "ping":
                    await conn.send({"type": "pong"})
                    continue
                if kind != "message":
                    raise FrameError("bad_frame", f"unknown frame type {kind!r}")
                text, client_id = parse_message(frame)
            except FrameError as exc:
                client_id = frame.get("client_message_id")
                await conn.error(exc.code, str(exc), client_id if isinstance(client_id, str) else None)
                continue
            try:
                accepted = await self.conversations.receive(
                    Inbound(channel=CHANNEL, address=session_id, text=text, provider_message_id=client_id),
                    customer_id,
                )
            except RateLimited as exc:
                await conn.error(
                    "rate_limited", f"You are sending messages too fast ({exc}); please wait a minute.",
                    client_id,
                )
                continue
            except ServiceUnavailable:
                # Not stored and not acked: the client keeps the message and sends it again.
                await conn.error(
                    "unavailable", "We could not take your message just now; please send it again.",
                    client_id,
                )
                continue
            except Exception:
                # A bug must not kill the socket (the client would resend the same message forever).
                log.exception("web-chat intake failed for client message %s", client_id)
                await conn.error("internal", "Something went wrong storing that message.", client_id)
                continue
            await conn.send({"type": "ack", "client_message_id": client_id, "seq": accepted.message.seq})
            if accepted.duplicate:
                # A re-send after a reconnect: the original is stored; make sure this socket has it.
                await self._deliver(conn, customer_id, message_frame(accepted.message))
