"""Web-chat channel: the ``/ws/chat`` websocket that the widget and ``helpline chat`` speak.

Protocol (JSON text frames; see docs/webchat-protocol.md):

client -> server
  ``{"type": "hello", "session_id": str | null, "last_seq": int, "replay"?: bool}``  first, once
  ``{"type": "message", "text": str, "client_message_id": str}``                      idempotent by id
  ``{"type": "ping"}``
  ``{"type": "csat", "ticket": int, "rating": 1-5, "comment"?: str}``                a rating, once per ticket
server -> client
  ``welcome`` (session_id, ticket_id, ticket_state, last_seq, resync, greeting: {text,
  suggestions}: the opening message a client shows while the conversation has no messages, from
  the replies file; never stored), then every message of the
  customer with ``seq > last_seq`` (the backlog), then ``{"type": "synced", "last_seq": int}``,
  then live ``message`` frames; ``ack`` per stored inbound message; ``typing``; ``error`` (code,
  message, and the frame's ``client_message_id`` when it had a readable one); ``pong``;
  ``csat_result`` (ticket, status ``stored`` | ``already_rated``) answering a ``csat`` frame.

Session ids are issued by the server (:mod:`channels.sessions`): ``null`` asks for a new one, and
an id the server did not issue gets ``bad_session`` and the socket closes. A customer row appears
with the first message, not the first hello. A client that claims more messages than the server has
(``last_seq`` ahead, e.g. after a database restore) is resynchronised: ``welcome.resync`` is true,
``welcome.last_seq`` is the server's position, and the recent transcript follows for the client to
show instead of what it had.

Exactly-once, in order, per connection: the subscription to live frames starts before the backlog
is read and each connection remembers the highest ``seq`` it sent, so a frame in both is sent once; a
live frame that skips seqs (another process published them and they have not arrived yet) first
pulls the missing ones from the database, where seqs commit in order.

What one connection may cost is bounded: the backlog is read in pages of :data:`BACKLOG_PAGE`
messages, the live queue holds at most ``state.delivery.LIVE_QUEUE_FRAMES`` frames (a socket that
falls behind is refilled from the database), a client that does not read a frame within
``chat_send_timeout_s`` is disconnected, a socket with no customer message for
``chat_idle_timeout_s`` is closed (4000), and one client address may hold ``chat_sockets_per_address``
sockets and start ``new_sessions_per_address`` sessions per window.

Customer frames never carry the bot's internal labels (tier, intent, confidence): their ``meta`` holds
only what the customer's client acts on (:func:`public_meta`: a rating prompt, quick replies).
Replayed traffic (``helpline replay``, from this machine or with the admin token) gets it all, for
its report.

This adapter normalises frames into :class:`helpline.conversation.Inbound` and renders stored
messages; it knows nothing of routing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from channels.sessions import LEGACY_MIN_LENGTH, REPLAY, WEBCHAT, SessionIssuer
from config.replies import MAX_SUGGESTIONS, Replies, load_replies
from config.settings import Settings
from helpline.clients import (
    UNKNOWN,
    Network,
    client_address,
    has_admin_token,
    is_local,
    origin_allowed,
)
from helpline.conversation import (
    Conversations,
    Inbound,
    RateLimited,
    ServiceUnavailable,
)
from state.conversations import (
    customer_last_seq,
    find_customer_id,
    message_frame,
    messages_after,
    open_ticket,
)
from state import csat
from state.delivery import Delivery, Frame
from state.hot import RateLimiter
from state.models import Message

log = logging.getLogger(__name__)

CHANNEL = WEBCHAT
CHANNELS = (WEBCHAT, REPLAY)
"""Channels whose customers this adapter serves (and whose outbound messages it sends)."""
HELLO_TIMEOUT_S = 10.0
MAX_FRAME_BYTES = 256 * 1024
"""Frames above this close the socket (1009). Longer texts below it are stored up to
``max_stored_chars`` and routed on their first ``max_message_chars`` characters."""
BACKLOG_PAGE = 25
"""Messages read from the database per backlog page (a stored message holds up to
``max_stored_chars`` characters), so a connection holds at most one page at a time."""
RESYNC_MESSAGES = 200
"""Messages sent to a client the server resynchronises (its transcript is replaced with these)."""
IDLE_CLOSE = 4000
"""Close code for a socket idle for ``chat_idle_timeout_s``: the client should not reconnect until
the customer is back (the widget reconnects on the next keystroke, click or focus)."""

FRAME_WINDOW_S = 10.0
FRAMES_PER_WINDOW = 100
"""Frames of any kind one socket may send per window (pings, re-sends of stored messages, broken
frames: none of them reach the per-customer message limit). The widget sends a ping every 25 s and
messages at the customer's pace; past this the socket is closed (1008) and may reconnect."""

_SESSION_ID = re.compile(r"[A-Za-z0-9_.-]{8,128}")
_CLIENT_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
CSAT_FRAMES_PER_MINUTE = 10
"""CSAT frames one customer may send per minute (each one is a database write attempt)."""


MAX_QUICK_REPLIES = MAX_SUGGESTIONS
"""Quick replies shown under one message (the lead's contract: 1-4 short labels)."""
MAX_QUICK_REPLY_CHARS = 80
"""Longest quick-reply label passed to a customer (the replies file's limit for a suggestion)."""


def quick_replies(meta: dict[str, Any] | None) -> list[str] | None:
    """The quick-reply labels of a stored message's ``meta["quick_replies"]`` as a client may show
    them: the labels that are non-blank strings of at most :data:`MAX_QUICK_REPLY_CHARS`
    characters, the first :data:`MAX_QUICK_REPLIES` of them; None when there are none (no key, not
    a list, nothing usable). Labels are passed as text; clients must never render them as markup."""
    labels = meta.get("quick_replies") if isinstance(meta, dict) else None
    if not isinstance(labels, list):
        return None
    shown = [label for label in labels
             if isinstance(label, str) and label.strip() and len(label) <= MAX_QUICK_REPLY_CHARS]
    return shown[:MAX_QUICK_REPLIES] or None


def public_meta(meta: dict[str, Any] | None) -> dict[str, Any] | None:
    """What of a message's ``meta`` a customer's frame carries, or None for nothing: a CSAT
    prompt's ``{"csat": {"ticket", "scale", "rated"?}}`` and a bot reply's
    ``{"quick_replies": [label, ...]}`` (:func:`quick_replies`); the bot's labels and who resolved
    stay inside."""
    shown: dict[str, Any] = {}
    prompt = meta.get("csat") if isinstance(meta, dict) else None
    if isinstance(prompt, dict):
        rating = {"ticket": prompt.get("ticket"), "scale": prompt.get("scale")}
        if prompt.get("rated"):
            rating["rated"] = True
        shown["csat"] = rating
    labels = quick_replies(meta)
    if labels is not None:
        shown["quick_replies"] = labels
    return shown or None


def is_csat_prompt(meta: dict[str, Any] | None) -> bool:
    """Whether a stored message's ``meta`` holds a rating prompt."""
    return isinstance(meta, dict) and isinstance(meta.get("csat"), dict)


def greeting_frame(replies: Replies) -> dict[str, Any]:
    """The welcome frame's ``greeting``: ``{"text": str, "suggestions": [str, ...]}`` (0-4
    suggested questions), from the replies file (``config/replies.yaml``)."""
    return {"text": replies.greeting_text(), "suggestions": list(replies.suggestions)}


def parse_csat(frame: dict[str, Any]) -> tuple[Any, Any, Any]:
    """(ticket, rating, comment) of a csat frame, as sent: :func:`state.csat.rate` checks every
    value (nothing from the client is trusted); raises :class:`FrameError` for unknown fields."""
    unknown = set(frame) - {"type", "ticket", "rating", "comment"}
    if unknown:
        raise FrameError("bad_csat", f"unknown field(s) in a csat frame: {', '.join(sorted(unknown))[:200]}")
    return frame.get("ticket"), frame.get("rating"), frame.get("comment")


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


def parse_hello(frame: dict[str, Any]) -> tuple[str | None, int, bool]:
    """(session_id or None, last_seq, replay) from a hello frame; raises :class:`FrameError`."""
    if frame.get("type") != "hello":
        raise FrameError("bad_frame", 'the first frame must be {"type": "hello", ...}')
    session_id = frame.get("session_id")
    if session_id is not None and (not isinstance(session_id, str) or not _SESSION_ID.fullmatch(session_id)):
        raise FrameError("bad_session", "session_id must be null or a session id this server issued")
    last_seq = frame.get("last_seq", 0)
    if not isinstance(last_seq, int) or isinstance(last_seq, bool) or not 0 <= last_seq < 2**53:
        raise FrameError("bad_frame", "last_seq must be an integer from 0 to 2**53 - 1")
    replay = frame.get("replay", False)
    if not isinstance(replay, bool):
        raise FrameError("bad_frame", "replay must be true or false")
    return session_id, last_seq, replay


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


class _SlowReader(Exception):
    """The client did not read a frame within the send timeout."""


class _Connection:
    """One open socket: a single writer lock, the highest seq sent on it, and what it may see."""

    def __init__(
        self, ws: web.WebSocketResponse, *, internal: bool, send_timeout_s: float,
        transport: asyncio.BaseTransport | None = None, address: str = UNKNOWN,
    ) -> None:
        self.ws = ws
        self.transport = transport
        self.address = address
        self.sent_seq = 0
        self.internal = internal  # replay traffic: frames keep the bot's labels
        self.send_timeout_s = send_timeout_s
        self._lock = asyncio.Lock()
        # Set once the welcome is sent: live frames (a typing hint of a turn still running from an
        # earlier connection) wait for it, so that the welcome is always a socket's first frame.
        self.welcomed = asyncio.Event()
        self._window_start = 0.0
        self._frames = 0

    async def send(self, frame: Frame) -> None:
        """Send ``frame`` once (message frames: only seqs above the last sent). Raises
        :class:`_SlowReader` when the client does not take it within the send timeout; a client
        that has gone away is ignored (it reads what it missed from the backlog next time)."""
        async with self._lock:
            if frame.get("type") == "message":
                if frame["seq"] <= self.sent_seq:
                    return  # already sent from the backlog or an earlier publish
                self.sent_seq = frame["seq"]
                if not self.internal:
                    frame = {**frame, "meta": public_meta(frame.get("meta"))}
            if self.ws.closed:
                return
            try:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for drops a cancellation that
                # lands as the send completes, and a pump cancelled at shutdown then waited for ever.
                async with asyncio.timeout(self.send_timeout_s):
                    await self.ws.send_str(json.dumps(frame))
            except TimeoutError:
                raise _SlowReader() from None
            except ConnectionError:
                pass

    def drop(self) -> None:
        """Cut a client that does not read: no close handshake (it would wait on the same full
        buffer); it resumes from its last seq when it reconnects."""
        log.info("web-chat client %s did not read for %.0f s; disconnected", self.address, self.send_timeout_s)
        if self.transport is not None:
            self.transport.abort()

    def frame_allowed(self, now: float) -> bool:
        """Count one frame from the client; False past :data:`FRAMES_PER_WINDOW` in the window."""
        if now - self._window_start >= FRAME_WINDOW_S:
            self._window_start, self._frames = now, 0
        self._frames += 1
        return self._frames <= FRAMES_PER_WINDOW

    async def error(self, code: str, message: str, client_message_id: str | None = None) -> None:
        await self.send(
            {"type": "error", "code": code, "message": message, "client_message_id": client_message_id}
        )


class WebChatChannel:
    """aiohttp handler for ``GET /ws/chat``.

    ``replies``: the validated replies file, whose greeting and suggested questions every welcome
    frame carries; when None it is read here, once, from ``settings.replies_file`` (raises
    :class:`config.replies.RepliesError` for a bad file, ``OSError`` for an unreadable one).
    """

    def __init__(
        self,
        conversations: Conversations,
        delivery: Delivery,
        sessions: SessionIssuer,
        settings: Settings,
        limiter: RateLimiter,
        proxies: Sequence[Network] = (),
        replies: Replies | None = None,
    ) -> None:
        self.greeting = greeting_frame(replies if replies is not None else load_replies(settings.replies_file))
        self.conversations = conversations
        self.delivery = delivery
        self.sessions = sessions
        self.settings = settings
        self.limiter = limiter
        self.proxies = tuple(proxies)
        self._sockets: set[web.WebSocketResponse] = set()
        self._by_address: Counter[str] = Counter()
        self._refused_origins: set[str | None] = set()

    async def send(self, message: Message) -> str | None:
        """Outbound sender (the outbox calls it): publish the message to the customer's open
        sockets, on whichever process holds them. Raises the hot state's errors when the publish
        fails (the outbox retries). No socket open: nothing to do, the customer reads the message
        from the backlog at their next connect. Web chat has no provider message id: returns None."""
        await self.delivery.publish(message.customer_id, message_frame(message))
        return None

    def _log_refused_origin(self, origin: str | None) -> None:
        # A warning the first time per origin (a page the team forgot to allow, whose customers see
        # the chat "reconnecting" for ever); then quiet, so an attacker cannot flood the log.
        if origin in self._refused_origins or len(self._refused_origins) >= 100:
            log.debug("web-chat refused: origin %r not allowed", origin)
            return
        self._refused_origins.add(origin)
        log.warning("web-chat refused: origin %r is not allowed (HELPLINE_ALLOWED_ORIGINS); its "
                    "visitors cannot chat", origin)

    @property
    def open_sockets(self) -> int:
        return len(self._sockets)

    async def close_all(self) -> None:
        """Close every open socket with 1001 (going away), at shutdown: a browser that keeps
        answering pings would otherwise hold the server open forever. Clients reconnect to
        another process and resume from their last seq."""
        for ws in list(self._sockets):
            with contextlib.suppress(ConnectionError):
                await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down")

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if not origin_allowed(request, self.settings.allowed_origins):
            self._log_refused_origin(request.headers.get("Origin"))
            return web.Response(status=403, text="This page may not open the chat (origin not allowed).\n")
        address = client_address(request, self.proxies)
        if self._by_address[address] >= self.settings.chat_sockets_per_address:
            log.info("web-chat refused: %s already holds %d sockets", address, self._by_address[address])
            return web.Response(status=429, text="Too many open chats from your address.\n",
                                headers={"Retry-After": "30"})
        self._by_address[address] += 1
        try:
            return await self._session(request, address)
        except ConnectionError as exc:  # the client left mid-frame: nothing to report
            log.debug("web-chat client %s went away: %s", address, exc)
            return web.Response(status=499)
        finally:
            self._by_address[address] -= 1
            if self._by_address[address] <= 0:
                del self._by_address[address]

    async def _session(self, request: web.Request, address: str) -> web.StreamResponse:
        ws = web.WebSocketResponse(heartbeat=30.0, max_msg_size=MAX_FRAME_BYTES)
        await ws.prepare(request)
        self._sockets.add(ws)
        conn = _Connection(
            ws, internal=False, send_timeout_s=self.settings.chat_send_timeout_s, transport=request.transport,
            address=address,
        )
        try:
            await self._converse(request, conn, address)
        except _SlowReader:
            conn.drop()
        finally:
            self._sockets.discard(ws)
        return ws

    async def _hello(
        self, request: web.Request, conn: _Connection, address: str
    ) -> tuple[str, str, int] | None:
        """Read the hello; (session_id, channel, last_seq), or None after answering a refusal."""
        ws = conn.ws
        try:
            hello = await ws.receive(timeout=HELLO_TIMEOUT_S)
        except asyncio.TimeoutError:
            await conn.error("bad_frame", f"no hello frame within {HELLO_TIMEOUT_S:.0f} s")
            await ws.close()
            return None
        if hello.type != WSMsgType.TEXT:
            if hello.type == WSMsgType.BINARY:
                await conn.error("bad_frame", "the first frame must be a JSON text hello frame")
            await ws.close()
            return None
        try:
            session_id, last_seq, replay = parse_hello(parse_frame(hello.data))
        except FrameError as exc:
            await conn.error(exc.code, str(exc))
            await ws.close(code=WSCloseCode.POLICY_VIOLATION if exc.code == "bad_session" else WSCloseCode.OK)
            return None
        if session_id is None:
            if replay and not (
                is_local(request, self.proxies)
                or has_admin_token(request, _secret(self.settings.admin_token))
            ):
                await conn.error("forbidden", "replay sessions need a connection from this machine or "
                                 "the admin token (Authorization: Bearer ...)")
                await ws.close(code=WSCloseCode.POLICY_VIOLATION)
                return None
            # Replayed traffic comes from an operator (this machine or the admin token): the
            # per-address limits are for the public.
            if not replay and not await self.limiter.hit(
                f"sessions:{address}", self.settings.new_sessions_per_address, self.settings.session_window_s
            ):
                await conn.error("rate_limited", "Too many new chats from your address; please try again later.")
                await ws.close(code=WSCloseCode.TRY_AGAIN_LATER, message=b"too many new sessions")
                return None
            channel = REPLAY if replay else WEBCHAT
            return self.sessions.issue(channel), channel, last_seq
        channel = self.sessions.channel_of(session_id)
        if channel is None and self.settings.legacy_session_ids and len(session_id) >= LEGACY_MIN_LENGTH:
            # An id from before signed ids: valid while its customer exists.
            if await find_customer_id(self.conversations.db, WEBCHAT, session_id) is not None:
                channel = WEBCHAT
        if channel is None:
            await conn.error("bad_session", "This chat session is not valid; start a new one "
                             '(send "session_id": null).')
            await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"unknown session")
            return None
        return session_id, channel, last_seq

    async def _converse(self, request: web.Request, conn: _Connection, address: str) -> None:
        try:
            hello = await self._hello(request, conn, address)
            if hello is None:
                return
            session_id, channel, last_seq = hello
            conn.internal = channel == REPLAY
            customer_id = await find_customer_id(self.conversations.db, channel, session_id)
        except self.conversations.outage_errors as exc:
            log.warning("web-chat hello refused, storage unavailable: %s", exc)
            await conn.error("unavailable", "We cannot open the chat just now; reconnecting shortly.")
            await conn.ws.close(code=WSCloseCode.TRY_AGAIN_LATER, message=b"storage unavailable")
            return
        pumps: list[asyncio.Task[None]] = []
        try:
            with contextlib.ExitStack() as subscriptions:
                await self._open(conn, session_id, channel, customer_id, last_seq, address, subscriptions, pumps)
        except self.conversations.outage_errors as exc:
            log.warning("web-chat session stopped, storage unavailable: %s", exc)
            await conn.error("unavailable", "We cannot keep the chat open just now; reconnecting shortly.")
            await conn.ws.close(code=WSCloseCode.TRY_AGAIN_LATER, message=b"storage unavailable")
        finally:
            # Every way out (a slow reader, an outage, the client leaving) stops this socket's pumps.
            for task in pumps:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)

    async def _open(
        self, conn: _Connection, session_id: str, channel: str, customer_id: int | None, last_seq: int,
        address: str, subscriptions: contextlib.ExitStack, pumps: list[asyncio.Task[None]],
    ) -> None:
        """Welcome, backlog, then the read loop, with the customer's live frames followed."""
        followed: set[int] = set()

        def follow(customer: int) -> None:
            # Live frames of the customer reach this socket from now on (once per customer).
            if customer in followed:
                return
            followed.add(customer)
            live = subscriptions.enter_context(self.delivery.subscribe(customer))
            pumps.append(asyncio.create_task(self._pump(conn, live, customer)))

        if customer_id is None:
            # No customer yet: another tab or process may create it with the first message.
            # Listen for that announcement before looking again, so it cannot slip past.
            announced = subscriptions.enter_context(self.delivery.subscribe(_session_key(channel, session_id)))
            customer_id = await find_customer_id(self.conversations.db, channel, session_id)
            if customer_id is None:
                pumps.append(asyncio.create_task(self._await_customer(conn, announced, follow)))
        ticket_id = ticket_state = None
        server_seq = 0
        if customer_id is not None:
            follow(customer_id)
            async with self.conversations.db.sessions() as session:
                ticket = await open_ticket(session, customer_id)
            if ticket is not None:
                ticket_id, ticket_state = ticket.id, ticket.state
            server_seq = await customer_last_seq(self.conversations.db, customer_id)
        resync = last_seq > server_seq
        start = max(0, server_seq - RESYNC_MESSAGES) if resync else last_seq
        conn.sent_seq = start
        await conn.send({
            "type": "welcome", "session_id": session_id, "ticket_id": ticket_id,
            "ticket_state": ticket_state, "last_seq": server_seq, "resync": resync,
            "greeting": self.greeting,
        })
        conn.welcomed.set()
        if customer_id is not None:
            await self._send_backlog(conn, customer_id, start)
        await conn.send({"type": "synced", "last_seq": conn.sent_seq})
        await self._read(conn, session_id, channel, customer_id, address, follow)

    async def _await_customer(
        self, conn: _Connection, announced: asyncio.Queue[Frame], follow: Callable[[int], None]
    ) -> None:
        # Another socket of this session stored the first message: follow that customer and send
        # what this socket has not seen (the gap fill reads it from the database).
        await conn.welcomed.wait()
        while True:
            frame = await announced.get()
            if frame.get("type") == "customer" and isinstance(frame.get("customer_id"), int):
                follow(frame["customer_id"])
                await self._send_backlog(conn, frame["customer_id"], conn.sent_seq)
                return

    async def _send_backlog(self, conn: _Connection, customer_id: int, after: int) -> None:
        while True:
            batch = await messages_after(self.conversations.db, customer_id, after, limit=BACKLOG_PAGE)
            prompts = [m.ticket_id for m in batch if is_csat_prompt(m.meta)]
            # A CSAT prompt replayed to a client that lost its state says whether it was answered.
            answered = await csat.rated(self.conversations.db, prompts) if prompts else set()
            for message in batch:
                frame = message_frame(message)
                if message.ticket_id in answered and is_csat_prompt(message.meta):
                    frame["meta"] = {**message.meta, "csat": {**message.meta["csat"], "rated": True}}
                await conn.send(frame)
            if len(batch) < BACKLOG_PAGE:
                return
            after = batch[-1].seq

    async def _deliver(self, conn: _Connection, customer_id: int, frame: Frame) -> None:
        if frame.get("type") == "message" and frame["seq"] > conn.sent_seq + 1:
            # A gap: frames published by different processes can reach us out of seq order, and a
            # full live queue drops frames. Seqs commit in order, so everything below this one is
            # in the database already: send it from there; late live copies are skipped as sent.
            await self._send_backlog(conn, customer_id, conn.sent_seq)
        await conn.send(frame)

    async def _pump(self, conn: _Connection, live: asyncio.Queue[Frame], customer_id: int) -> None:
        try:
            await conn.welcomed.wait()
            while True:
                await self._deliver(conn, customer_id, await live.get())
        except _SlowReader:
            conn.drop()

    async def _announce_customer(self, channel: str, session_id: str, customer_id: int) -> None:
        """Tell this session's other open tabs (subscribed to the session, not yet to a customer)
        which customer to follow. Live delivery only: when the shared state refuses the publish, the
        message is still taken, and those tabs catch up from the database when they reconnect."""
        try:
            await self.delivery.publish(
                _session_key(channel, session_id), {"type": "customer", "customer_id": customer_id}
            )
        except self.conversations.outage_errors as exc:
            log.warning("session's other tabs not told of customer %s: %s", customer_id, exc)

    async def _read(
        self,
        conn: _Connection,
        session_id: str,
        channel: str,
        customer_id: int | None,
        address: str,
        follow: Callable[[int], None],
    ) -> None:
        loop = asyncio.get_running_loop()
        idle_s = self.settings.chat_idle_timeout_s
        active_at = loop.time()
        while True:
            try:
                # (aiohttp reads a timeout of 0 as "none": never pass less than a millisecond)
                msg = await conn.ws.receive(timeout=max(0.001, active_at + idle_s - loop.time()))
            except asyncio.TimeoutError:
                await conn.ws.close(code=IDLE_CLOSE, message=b"idle")
                return
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                return
            if msg.type == WSMsgType.ERROR:
                log.info("web-chat socket error: %s", conn.ws.exception())
                return
            if not conn.frame_allowed(loop.time()):
                log.info("web-chat client %s sent over %d frames in %.0f s; closed", address,
                         FRAMES_PER_WINDOW, FRAME_WINDOW_S)
                await conn.error("too_many_frames", "Too many frames; reconnect and slow down.")
                await conn.ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"too many frames")
                return
            if msg.type != WSMsgType.TEXT:
                await conn.error("bad_frame", "only JSON text frames are accepted")
                continue
            frame: dict[str, Any] = {}
            try:
                frame = parse_frame(msg.data)
                kind = frame["type"]
                if kind == "ping":
                    await conn.send({"type": "pong"})
                    continue
                if kind == "csat":
                    active_at = loop.time()
                    await self._csat(conn, frame, channel, session_id, customer_id)
                    continue
                if kind != "message":
                    raise FrameError("bad_frame", f"unknown frame type {kind!r}")
                text, client_id = parse_message(frame)
            except FrameError as exc:
                client_id = frame.get("client_message_id")
                await conn.error(exc.code, str(exc), client_id if isinstance(client_id, str) else None)
                continue
            active_at = loop.time()
            try:
                if customer_id is None:
                    # The first message makes the customer (a hello alone stores nothing); from
                    # here this socket receives the customer's frames.
                    customer_id = await self.conversations.customer_id(channel, session_id)
                    follow(customer_id)
                    await self._announce_customer(channel, session_id, customer_id)
                accepted = await self.conversations.receive(
                    Inbound(channel=channel, address=session_id, text=text, provider_message_id=client_id,
                            origin=None if channel == REPLAY else address),
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
            except self.conversations.outage_errors as exc:
                log.warning("web-chat message refused, storage unavailable: %s", exc)
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


    async def _csat(
        self, conn: _Connection, frame: dict[str, Any], channel: str, session_id: str, customer_id: int | None
    ) -> None:
        """A customer's rating of a resolved ticket (``{"type": "csat", "ticket", "rating",
        "comment"?}``): ``csat_result`` when stored or already rated, else an ``error`` frame whose
        ``ticket`` echoes the frame's. Another customer's ticket answers like a missing one."""
        ticket = frame.get("ticket")
        echo = ticket if isinstance(ticket, int) and not isinstance(ticket, bool) else None

        async def refuse(code: str, message: str) -> None:
            await conn.send({"type": "error", "code": code, "message": message, "client_message_id": None,
                             "ticket": echo})

        try:
            ticket, rating, comment = parse_csat(frame)
        except FrameError as exc:
            await refuse(exc.code, str(exc))
            return
        try:
            if customer_id is None:  # this socket sent no message; another tab of the session may have
                customer_id = await find_customer_id(self.conversations.db, channel, session_id)
            if customer_id is None:  # no message at all yet: the session has no ticket
                await refuse(csat.NoSuchTicket.code, str(csat.NoSuchTicket()))
                return
            if not await self.limiter.hit(f"csat:{customer_id}", CSAT_FRAMES_PER_MINUTE, 60):
                await refuse("rate_limited", "Too many ratings sent; please wait a minute.")
                return
            await csat.rate(self.conversations.db, customer_id, ticket, rating, comment, channel=channel)
        except csat.AlreadyRated:
            await conn.send({"type": "csat_result", "ticket": echo, "status": "already_rated"})
        except csat.CsatError as exc:
            await refuse(exc.code, str(exc))
        except self.conversations.outage_errors as exc:
            log.warning("web-chat rating refused, storage unavailable: %s", exc)
            await refuse("unavailable", "We could not take your rating just now; please send it again.")
        except _SlowReader:
            raise
        except Exception:
            log.exception("web-chat rating failed for ticket %r", echo)
            await refuse("internal", "Something went wrong storing your rating.")
        else:
            await conn.send({"type": "csat_result", "ticket": echo, "status": "stored"})


def _session_key(channel: str, session_id: str) -> int:
    """The delivery key on which sockets of a session with no customer yet hear that the customer
    now exists: negative, so it never names a customer (customer ids are positive)."""
    digest = hashlib.sha256(f"{channel}:{session_id}".encode()).digest()
    return -(int.from_bytes(digest[:7], "big") + 1)


def _secret(value: Any) -> str | None:
    return value.get_secret_value() if value is not None else None
