"""The live agent queue: ``GET /agent/live``, a websocket that keeps the queue page current.

Source of truth: the append-only ``events`` table. Nothing is pushed from memory that is not read
from there, so a socket that reconnects (to this process or another) catches up from the database:

- **Wake-ups.** Whoever commits a change to the queue calls :meth:`InboxFeed.notify`, which
  publishes a wake-up through the hot state (in process, or Redis pub/sub shared by every process:
  key :data:`WAKE_KEY` of ``state.delivery``). Each process has one :class:`InboxFeed` that then
  re-reads the events table once for all its sockets, and also every ``poll_s`` (5 s) in case a
  wake-up was lost (Redis down, a process that forgot to notify). A wake-up carries no data.
- **Cursors.** Event ids come from a sequence, and on Postgres sequence values are not handed out in
  commit order: id 10 can commit after id 11, so "everything after the highest id I saw" can skip
  id 10 for good. A cursor (:class:`Position`) is therefore a *set* of event ids, written
  ``LOW`` or ``LOW+d1,d2,...``: every id up to ``LOW``, plus ``LOW + d`` for each listed offset. A
  reader adds the ids it actually read; ``LOW`` moves up only over ids it read, or over a missing
  id ("gap") that stayed missing :data:`GRACE_S` seconds after this process first noticed it (the
  value of a rolled-back transaction never commits). Transactions that write events are short (they
  insert their events just before commit), so 30 s is far above any real gap. On SQLite there is
  one writer at a time and ids are commit-ordered anyway; the same rule holds.
- **Replay.** The client sends its last cursor in its hello; the server sends every event the
  cursor does not contain, up to this process's own position, then ``synced``, then live frames
  (each process reads events once and fans them out; a socket skips what its cursor already holds,
  so nothing is sent twice and nothing falls between the replay and the live stream).

What an agent receives is decided per socket, on the ticket's current state, with
:func:`state.inbox.may_read` and the page's view and filters: a ``ticket`` frame with the queue row
(``row``) when the ticket is in the agent's view, else with ``row: null`` ("remove it"), which says
no more than that a ticket the agent could see in the queue at that moment has left the view.
Customer text in rows has bidi controls shown as codes (:func:`helpline.inbox.bidi_safe`); the page
inserts it with ``textContent`` only.

Every socket is checked like any ``/agent`` request (session cookie at the upgrade, same ``Origin``),
then must send the session's CSRF token in its first frame; the session is checked again before
every push and on every client frame (an expired or ended session gets close code 4401). Bounded:
:data:`SOCKETS_PER_AGENT` per agent per process, client frames of at most :data:`MAX_FRAME_BYTES`
and :data:`FRAMES_PER_WINDOW` per window, :data:`QUEUE_BATCHES` read batches waiting per socket and
``send_timeout_s`` per frame (a socket that does not read is cut), a replay of at most
:data:`MAX_REPLAY` events (more: ``resync``, the page reloads), heartbeats every 30 s.

Protocol and close codes: docs/agent-inbox.md ("The live queue"). Must not import
:mod:`helpline.inbox` at module level (it imports this module; :mod:`helpline.runtime` may too).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web
from sqlalchemy import ColumnElement, and_, func, or_, select

from state import inbox
from state.agents import AgentView, LoginSession
from state.db import OUTAGE_ERRORS as DATABASE_OUTAGE_ERRORS
from state.db import Database
from state.hot import HotState
from state.models import Agent, Customer, Event, Message, Ticket

log = logging.getLogger(__name__)

WAKE_KEY = 0
"""Delivery key of inbox wake-ups: customer ids are positive and web-chat session keys negative,
so 0 names no customer."""
POLL_S = 5.0
"""The safety-net re-read when no wake-up came."""
GRACE_S = 30.0
"""How long a missing event id may still commit (see the module docstring)."""
PAGE = 200
"""Events read per query."""
MAX_SEEN = 200
"""Ids above ``LOW`` one cursor may list; past this the lowest gap is given up (logged)."""
MAX_GAPS = 1000
"""Missing ids the feed waits for at once (a sequence that jumped further is taken as settled)."""
MAX_REPLAY = 5000
"""Events a reconnecting socket may be behind; further behind, it gets ``resync`` (reload)."""
MAX_CURSOR_CHARS = 4096
MAX_FRAME_BYTES = 8192
HELLO_TIMEOUT_S = 10.0
HEARTBEAT_S = 30.0
SOCKETS_PER_AGENT = 8
QUEUE_BATCHES = 64
SEND_TIMEOUT_S = 10.0
FRAME_WINDOW_S = 10.0
FRAMES_PER_WINDOW = 60
"""Client frames per socket per window; the page sends a ping every 25 s."""

CLOSE_BAD_FRAME = 4400
CLOSE_SESSION = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_RESYNC = 4409

_CURSOR = re.compile(r"(\d{1,18})(?:\+(\d{1,18}(?:,\d{1,18})*))?")


class CursorError(ValueError):
    """A cursor string that is not ``LOW`` or ``LOW+d1,d2,...`` within the limits."""


# --- cursors ---------------------------------------------------------------------------------------


@dataclass
class Position:
    """A set of event ids: all ids ``<= low``, plus those in ``seen`` (each above ``low``)."""

    low: int = 0
    seen: set[int] = field(default_factory=set)

    def __contains__(self, event_id: int) -> bool:
        return event_id <= self.low or event_id in self.seen

    def copy(self) -> Position:
        return Position(self.low, set(self.seen))

    def top(self) -> int:
        """The highest id in the set."""
        return max(self.seen, default=self.low)

    def add(self, event_id: int) -> None:
        if event_id > self.low:
            self.seen.add(event_id)
            self._compact()

    def skip_to(self, event_id: int) -> None:
        """Take every id up to ``event_id`` as done (read, or given up on)."""
        if event_id > self.low:
            self.low = event_id
            self.seen = {i for i in self.seen if i > event_id}
            self._compact()

    def merge(self, other: Position) -> None:
        self.skip_to(other.low)
        self.seen.update(i for i in other.seen if i > self.low)
        self._compact()

    def gaps(self, limit: int = MAX_GAPS) -> list[int]:
        """Up to ``limit`` ids between ``low`` and :meth:`top` that are not in the set, lowest first."""
        found: list[int] = []
        for i in range(self.low + 1, self.top()):
            if i not in self.seen:
                found.append(i)
                if len(found) >= limit:
                    break
        return found

    def _compact(self) -> None:
        while self.low + 1 in self.seen:
            self.low += 1
            self.seen.discard(self.low)
        if len(self.seen) > MAX_SEEN:
            # Only when ids stay missing under heavy traffic: the oldest gap is given up.
            lowest = min(self.seen)
            log.warning("inbox cursor: gave up waiting for event ids %d-%d", self.low + 1, lowest - 1)
            self.skip_to(lowest)

    def encode(self) -> str:
        if not self.seen:
            return str(self.low)
        return f"{self.low}+" + ",".join(str(i - self.low) for i in sorted(self.seen))

    @classmethod
    def parse(cls, text: str) -> Position:
        """The position a cursor string names; :class:`CursorError` for anything else."""
        if len(text) > MAX_CURSOR_CHARS:
            raise CursorError(f"cursor longer than {MAX_CURSOR_CHARS} characters")
        match = _CURSOR.fullmatch(text)
        if match is None:
            raise CursorError('cursor must look like "120" or "120+2,5"')
        low = int(match.group(1))
        offsets = [int(d) for d in match.group(2).split(",")] if match.group(2) else []
        if len(offsets) > MAX_SEEN or any(d < 1 for d in offsets):
            raise CursorError(f"a cursor lists 1 to {MAX_SEEN} positive offsets")
        position = cls(low, {low + d for d in offsets})
        position._compact()
        return position


# --- reading events --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """A queue-relevant event with its ticket as it is now (``row``: the queue row's fields)."""

    event_id: int
    kind: str
    ticket: Ticket
    row: dict[str, Any]


@dataclass(frozen=True)
class Batch:
    """One read: every event id read (in order), the relevant ones, and the reader's position after."""

    ids: tuple[int, ...]
    changes: dict[int, Change]
    after: Position


def change_kind(kind: str, payload: dict[str, Any] | None) -> str | None:
    """What an event means for the queue (``escalated``, ``claimed``, ``customer_message``...), or
    None for events the queue does not show (bot turns, notes, verifications)."""
    p = payload or {}
    if kind == "transition":
        src, dst = p.get("from"), p.get("to")
        if dst == "escalated":
            return "escalated"
        if src not in inbox.QUEUE_STATES and dst not in inbox.QUEUE_STATES:
            return None
        if dst == "human":
            # escalated -> human comes with its own claimed / agent_reply / assigned event
            return None if src == "escalated" else "reopened"
        if dst == "bot":
            return "handed_back" if p.get("reason") == "handed_back" else "returned_to_bot"
        return str(dst)  # resolved, closed, awaiting_customer
    if kind in ("claimed", "assigned", "priority", "agent_reply", "sla_breached"):
        return kind
    if kind == "turn" and p.get("reason") == "human_owns_ticket":
        return "customer_message"
    return None


async def read_changes(db: Database, where: ColumnElement[bool], limit: int = PAGE) -> tuple[list[int], dict[int, Change]]:
    """The first ``limit`` events matching ``where`` by id: ``(every id read, relevant changes by
    event id)``. Two queries for the tickets, whatever the number of events."""
    from helpline.inbox import bidi_safe  # not at import time: helpline.inbox imports this module

    async with db.sessions() as session:
        events = (await session.execute(
            select(Event.id, Event.ticket_id, Event.kind, Event.payload).where(where).order_by(Event.id).limit(limit)
        )).all()
        kinds = {e.id: (e.ticket_id, change_kind(e.kind, e.payload)) for e in events}
        ticket_ids = {t for t, k in kinds.values() if k is not None and t is not None}
        rows: dict[int, tuple[Ticket, dict[str, Any]]] = {}
        if ticket_ids:
            found = (await session.execute(
                select(Ticket, Customer, Agent)
                .join(Customer, Customer.id == Ticket.customer_id)
                .outerjoin(Agent, Agent.id == Ticket.assignee_id)
                .where(Ticket.id.in_(ticket_ids))
            )).all()
            previews = await _previews(session, list(ticket_ids))
            for t, c, a in found:
                rank = inbox.PRIORITIES.index(t.priority) if t.priority in inbox.PRIORITIES else len(inbox.PRIORITIES)
                rows[t.id] = (t, {
                    "id": t.id, "state": t.state, "priority": t.priority, "rank": rank, "channel": t.channel,
                    "customer": bidi_safe(c.display_name or c.email or f"customer {c.id}"),
                    "assignee": bidi_safe(a.display_name or a.email) if a is not None else None,
                    "reason": t.escalation_reason, "intent": t.intent,
                    "preview": bidi_safe(previews.get(t.id, "")), "updated_at": t.updated_at.isoformat(),
                    "sla_due_at": t.sla_due_at.isoformat() if t.sla_due_at else None,
                    "sla_breached": t.sla_breached_at is not None, "language": t.language,
                })
    changes = {}
    for event_id, (ticket_id, kind) in kinds.items():
        if kind is not None and ticket_id in rows:
            ticket, row = rows[ticket_id]
            changes[event_id] = Change(event_id, kind, ticket, row)
    return [e.id for e in events], changes


async def _previews(session: Any, ticket_ids: list[int]) -> dict[int, str]:
    # The same preview the queue page shows (the customer's last message, whitespace folded).
    last = (
        select(func.max(Message.id))
        .where(Message.ticket_id.in_(ticket_ids), Message.author == "customer")
        .group_by(Message.ticket_id)
    )
    rows = await session.execute(select(Message.ticket_id, Message.text).where(Message.id.in_(last)))
    limit = inbox.PREVIEW_CHARS
    return {t: " ".join(text[: limit * 2].split())[:limit] for t, text in rows}


# --- the feed: one reader per process ------------------------------------------------------------


@dataclass(eq=False)
class Subscription:
    """A socket's place in the feed: read batches wait in ``queue``; when it is full the socket is
    too slow and ``on_drop`` cuts it."""

    queue: asyncio.Queue[Batch]
    on_drop: Callable[[], None]
    dropped: bool = False


class InboxFeed:
    """Wake-ups and the shared reader of the events table, for one process.

    ``notify()`` is all that code changing the queue needs (after its commit). The reader starts
    with the first socket (:meth:`start`), re-reads on every wake-up and every ``poll_s``, and hands
    each batch to every subscribed socket. Cheap to construct: nothing runs until :meth:`start`.
    """

    def __init__(self, db: Database, hot: HotState, *, poll_s: float = POLL_S, grace_s: float = GRACE_S) -> None:
        self.db = db
        self.hot = hot
        self.poll_s = poll_s
        self.grace_s = grace_s
        self._position: Position | None = None
        self._gap_seen: dict[int, float] = {}  # missing id -> when this process first noticed it
        self._subscribers: set[Subscription] = set()
        self._reading = asyncio.Lock()
        self._wake = asyncio.Event()
        self._wakeups: contextlib.ExitStack | None = None
        self._task: asyncio.Task[None] | None = None

    async def notify(self) -> None:
        """Wake every process's live sockets to re-read the events table. Call it after the commit
        that changed the queue. Never raises (a hot-state outage is logged; the 5 s re-read brings
        the change anyway)."""
        self._wake.set()  # this process at once, whatever happens to the publish
        try:
            async with asyncio.timeout(1.0):
                await self.hot.delivery.publish(WAKE_KEY, {"type": "inbox"})
        except Exception as exc:  # any failure: a wake-up is a hint, the data is in the database
            log.warning("inbox wake-up not published (sockets catch up within %.0f s): %s", self.poll_s, exc)

    async def start(self) -> None:
        """Read the starting position and start the reader (idempotent). Raises database errors."""
        async with self._reading:
            if self._position is None:
                self._position = await self._initial_position()
        if self._task is None:
            self._wakeups = contextlib.ExitStack()
            wakeups = self._wakeups.enter_context(self.hot.delivery.subscribe(WAKE_KEY))
            self._task = asyncio.create_task(self._run(wakeups), name="inbox-feed")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self._wakeups is not None:
            self._wakeups.close()
            self._wakeups = None

    async def position(self) -> Position:
        """This process's position after reading what is committed now: every event in it is
        visible to a query made after this returns (the queue page embeds it as its cursor)."""
        await self.start()
        await self.refresh()
        assert self._position is not None
        return self._position.copy()

    @contextlib.contextmanager
    def subscribe(self, size: int, on_drop: Callable[[], None]) -> Iterator[tuple[Subscription, Position]]:
        """Receive every batch read from now on; yields the subscription and the position it
        starts after (taken at the same instant, so no batch is in both or in neither)."""
        assert self._position is not None, "start() first"
        sub = Subscription(asyncio.Queue(size), on_drop)
        self._subscribers.add(sub)
        try:
            yield sub, self._position.copy()
        finally:
            self._subscribers.discard(sub)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    async def _initial_position(self) -> Position:
        # The last PAGE events as read now; anything older is taken as committed, and the missing
        # ids among them as gaps noticed now.
        async with self.db.sessions() as session:
            ids = list(await session.scalars(select(Event.id).order_by(Event.id.desc()).limit(PAGE)))
        if not ids:
            return Position()
        position = Position(min(ids) - 1, set(ids))
        position._compact()
        return position

    async def _run(self, wakeups: asyncio.Queue[Any]) -> None:
        published: asyncio.Task[Any] | None = None
        try:
            while True:
                if published is None:
                    published = asyncio.create_task(wakeups.get())
                local = asyncio.create_task(self._wake.wait())
                done, _ = await asyncio.wait(
                    {published, local}, timeout=self.poll_s, return_when=asyncio.FIRST_COMPLETED
                )
                local.cancel()
                if published in done:
                    published = None
                    while not wakeups.empty():  # wake-ups that arrived together: one read
                        wakeups.get_nowait()
                self._wake.clear()
                try:
                    await self.refresh()
                except Exception as exc:  # the database may be away for a moment: next time
                    log.warning("inbox feed: reading events failed: %s", exc)
                    await asyncio.sleep(1.0)
        finally:
            if published is not None:
                published.cancel()

    async def refresh(self) -> None:
        """Read every event not in the position (new ones and late commits into gaps), in pages,
        and hand each page to the subscribers. Raises database errors."""
        async with self._reading:
            position = self._position
            assert position is not None
            for _ in range(MAX_REPLAY // PAGE):  # a burst beyond this is read at the next wake-up
                gaps = position.gaps()
                where = Event.id > position.top()
                if gaps:
                    where = or_(where, Event.id.in_(gaps))
                ids, changes = await read_changes(self.db, where)
                for event_id in ids:
                    position.add(event_id)
                aged = self._age_gaps(position)
                if ids or aged:
                    self._fan_out(Batch(tuple(ids), changes, position.copy()))
                if len(ids) < PAGE:
                    return

    def _age_gaps(self, position: Position) -> bool:
        now = time.monotonic()
        missing = position.top() - position.low - len(position.seen)
        if missing > MAX_GAPS:  # the sequence jumped (setval, a restore): not transactions in flight
            log.warning("inbox feed: %d event ids missing below %d; not waiting for them", missing, position.top())
            position.skip_to(position.top() - MAX_GAPS)
        gaps = position.gaps()
        self._gap_seen = {g: self._gap_seen.get(g, now) for g in gaps}
        expired = [g for g in gaps if now - self._gap_seen[g] >= self.grace_s]
        if not expired:
            return False
        # A gap is noticed when a higher id is read, so older gaps are lower: a prefix expires.
        log.info("inbox feed: event ids %s never committed within %.0f s; skipped", expired[:10], self.grace_s)
        position.skip_to(max(expired))
        return True

    def _fan_out(self, batch: Batch) -> None:
        for sub in list(self._subscribers):
            if sub.dropped:
                continue
            try:
                sub.queue.put_nowait(batch)
            except asyncio.QueueFull:
                sub.dropped = True
                sub.on_drop()


# --- the socket ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class View:
    """The page's view and filters (as ``state.inbox.queue`` takes them)."""

    view: str = "all"
    channel: str | None = None
    priority: str | None = None
    language: str | None = None

    @classmethod
    def parse(cls, frame: dict[str, Any]) -> View:
        view = frame.get("view") or "all"
        channel = frame.get("channel") or None
        priority = frame.get("priority") or None
        language = frame.get("language") or None
        if language is not None and (not isinstance(language, str) or len(language) > 8):
            raise _FrameError("language must be an ISO 639-1 code")
        if view not in inbox.QUEUE_VIEWS:
            raise _FrameError(f"view must be one of {', '.join(inbox.QUEUE_VIEWS)}")
        if priority is not None and priority not in inbox.PRIORITIES:
            raise _FrameError(f"priority must be one of {', '.join(inbox.PRIORITIES)}")
        if channel is not None and (not isinstance(channel, str) or len(channel) > 32):
            raise _FrameError("channel must be a channel name")
        return cls(view, channel, priority, language)

    def shows(self, ticket: Ticket, agent: AgentView) -> bool:
        """The filter of ``state.inbox.queue`` for one ticket, plus the reading rule."""
        if ticket.state not in inbox.QUEUE_STATES or not inbox.may_read(ticket, agent):
            return False
        if self.view == "mine" and ticket.assignee_id != agent.id:
            return False
        if self.view == "unassigned" and ticket.assignee_id is not None:
            return False
        if self.channel and ticket.channel != self.channel:
            return False
        if self.language and ticket.language != self.language:
            return False
        return not (self.priority and ticket.priority != self.priority)


def ticket_frame(change: Change, agent: AgentView, view: View) -> dict[str, Any] | None:
    """The frame ``agent`` gets for ``change`` (None: nothing at all, e.g. replayed traffic)."""
    if change.ticket.channel in inbox.HIDDEN_CHANNELS:
        return None
    # Every relevant event happens while its ticket is in the shared queue, which every agent may
    # read; a bare removal says no more than that.
    row = change.row if view.shows(change.ticket, agent) else None
    return {"type": "ticket", "event_id": change.event_id, "kind": change.kind, "ticket_id": change.ticket.id,
            "row": row}


class _FrameError(ValueError):
    pass


class _SlowReader(Exception):
    pass


class _Closed(Exception):
    """The socket was closed by us (session ended, bad frame...): stop quietly."""


class _Connection:
    """One socket: a single writer, the client's frame budget."""

    def __init__(self, ws: web.WebSocketResponse, transport: asyncio.BaseTransport | None, send_timeout_s: float) -> None:
        self.ws = ws
        self.transport = transport
        self.send_timeout_s = send_timeout_s
        self._lock = asyncio.Lock()
        self._window_start = 0.0
        self._frames = 0

    async def send(self, frame: dict[str, Any]) -> None:
        async with self._lock:
            if self.ws.closed:
                raise _Closed()
            try:
                async with asyncio.timeout(self.send_timeout_s):
                    await self.ws.send_str(json.dumps(frame, separators=(",", ":")))
            except TimeoutError:
                raise _SlowReader() from None
            except ConnectionError:
                raise _Closed() from None

    async def close(self, code: int, reason: str) -> None:
        with contextlib.suppress(ConnectionError):
            await self.ws.close(code=code, message=reason.encode()[:120])

    async def refuse(self, code: int, error: str, message: str) -> _Closed:
        with contextlib.suppress(_Closed, _SlowReader):
            await self.send({"type": "error", "code": error, "message": message})
        await self.close(code, message)
        return _Closed()

    def drop(self) -> None:
        """Cut a client that does not read (no close handshake: it would wait on the same full
        buffer); it resumes from its cursor when it reconnects."""
        if self.transport is not None:
            self.transport.abort()

    def frame_allowed(self, now: float) -> bool:
        if now - self._window_start >= FRAME_WINDOW_S:
            self._window_start, self._frames = now, 0
        self._frames += 1
        return self._frames <= FRAMES_PER_WINDOW


SessionCheck = Callable[[web.Request], Awaitable[LoginSession | None]]


class LiveQueue:
    """The ``GET /agent/live`` handler (registered by :class:`helpline.inbox.InboxRoutes`, behind its
    session check). ``check_session(request)``: the live session of the request's cookie or None;
    ``same_origin(request)``: the Origin check of every ``/agent`` POST; ``feed()``: this process's
    :class:`InboxFeed`. Limits are attributes, so tests can lower them."""

    def __init__(self, check_session: SessionCheck, same_origin: Callable[[web.Request], bool],
                 feed: Callable[[], InboxFeed]) -> None:
        self._check_session = check_session
        self._same_origin = same_origin
        self._feed = feed
        self.sockets_per_agent = SOCKETS_PER_AGENT
        self.queue_batches = QUEUE_BATCHES
        self.send_timeout_s = SEND_TIMEOUT_S
        self.max_replay = MAX_REPLAY
        self._sockets: set[web.WebSocketResponse] = set()
        self._per_agent: Counter[int] = Counter()

    @property
    def feed(self) -> InboxFeed:
        return self._feed()

    @property
    def open_sockets(self) -> int:
        return len(self._sockets)

    async def close_all(self, app: web.Application | None = None) -> None:
        """At shutdown: close every socket with 1001 (the page reconnects elsewhere) and stop the
        feed's reader."""
        for ws in list(self._sockets):
            with contextlib.suppress(ConnectionError):
                await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down")
        with contextlib.suppress(Exception):  # no runtime (start-up failed): nothing to stop
            await self._feed().close()

    async def handle(self, request: web.Request, login: LoginSession) -> web.StreamResponse:
        if not self._same_origin(request):
            raise web.HTTPForbidden(text="request from another site refused")
        ws = web.WebSocketResponse(heartbeat=HEARTBEAT_S, max_msg_size=MAX_FRAME_BYTES)
        if not ws.can_prepare(request).ok:
            raise web.HTTPBadRequest(text="a websocket upgrade is expected here")
        agent_id = login.agent.id
        if self._per_agent[agent_id] >= self.sockets_per_agent:
            raise web.HTTPTooManyRequests(text="too many live inbox tabs open; close some",
                                          headers={"Retry-After": "30"})
        self._per_agent[agent_id] += 1
        try:
            await ws.prepare(request)
            self._sockets.add(ws)
            conn = _Connection(ws, request.transport, self.send_timeout_s)
            try:
                await self._serve(request, conn)
            except _SlowReader:
                log.info("live inbox socket of agent %s did not read; disconnected", agent_id)
                conn.drop()
            except _Closed:
                pass
            except self._outage_errors() as exc:  # the page reconnects later, from its cursor
                log.warning("live inbox socket of agent %s stopped, storage unavailable: %s", agent_id, exc)
                await conn.close(WSCloseCode.TRY_AGAIN_LATER, "unavailable, reconnect later")
            except Exception:
                log.exception("live inbox socket of agent %s failed", agent_id)
                await conn.close(WSCloseCode.INTERNAL_ERROR, "internal error")
        finally:
            self._sockets.discard(ws)
            self._per_agent[agent_id] -= 1
            if self._per_agent[agent_id] <= 0:
                del self._per_agent[agent_id]
        return ws

    def _overflow(self, conn: _Connection, login: LoginSession) -> None:
        log.info("live inbox socket of agent %s fell %d batches behind; disconnected", login.agent.id,
                 self.queue_batches)
        conn.drop()

    def _outage_errors(self) -> tuple[type[BaseException], ...]:
        try:
            hot = self._feed().hot.outage_errors
        except Exception:
            hot = ()
        return (*hot, *DATABASE_OUTAGE_ERRORS)

    async def _session(self, request: web.Request, conn: _Connection) -> LoginSession:
        login = await self._check_session(request)
        if login is None:
            raise await conn.refuse(CLOSE_SESSION, "session_expired", "session expired: log in again")
        return login

    async def _serve(self, request: web.Request, conn: _Connection) -> None:
        try:
            raw = await conn.ws.receive(timeout=HELLO_TIMEOUT_S)
        except asyncio.TimeoutError:
            raise await conn.refuse(CLOSE_BAD_FRAME, "bad_frame", "no hello within 10 s") from None
        if raw.type != WSMsgType.TEXT:
            if raw.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                raise _Closed()
            raise await conn.refuse(CLOSE_BAD_FRAME, "bad_frame", "the first frame must be a JSON hello")
        try:
            hello = _parse(raw.data)
            if hello.get("type") != "hello":
                raise _FrameError('the first frame must be {"type": "hello", ...}')
            token = hello.get("csrf_token")
            cursor_text = hello.get("cursor")
            if cursor_text is not None and not isinstance(cursor_text, str):
                raise _FrameError("cursor must be a string or null")
            cursor = Position.parse(cursor_text) if cursor_text else None
            view = View.parse(hello)
        except (_FrameError, CursorError) as exc:
            raise await conn.refuse(CLOSE_BAD_FRAME, "bad_frame", str(exc)) from None
        login = await self._session(request, conn)
        if not isinstance(token, str) or not hmac.compare_digest(token.encode(), login.csrf_token.encode()):
            raise await conn.refuse(CLOSE_FORBIDDEN, "forbidden", "missing or wrong CSRF token: reload the page")
        feed = self._feed()
        await feed.start()
        await feed.refresh()  # the replay then reaches everything committed before this hello
        with feed.subscribe(self.queue_batches, lambda: self._overflow(conn, login)) as (sub, start):
            known = cursor if cursor is not None else start.copy()
            await conn.send({"type": "welcome", "agent": login.agent.label, "view": view.view})
            if cursor is not None:
                await self._replay(conn, feed.db, known, start, login.agent, view)
            known.merge(start)
            await conn.send({"type": "synced", "cursor": known.encode()})
            reader = asyncio.create_task(self._read(request, conn))
            pusher = asyncio.create_task(self._push(request, conn, sub, known, view))
            try:
                await asyncio.wait({reader, pusher}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (reader, pusher):
                    task.cancel()
                results = await asyncio.gather(reader, pusher, return_exceptions=True)
            for result in results:
                if isinstance(result, (_SlowReader, _Closed)):
                    raise result
                if isinstance(result, Exception):
                    raise result

    async def _replay(self, conn: _Connection, db: Database, known: Position, upto: Position, agent: AgentView,
                      view: View) -> None:
        """Send every event in ``upto`` that ``known`` lacks, by id; ``known`` grows as frames go."""
        if known.top() > upto.top():
            # A cursor from a process further ahead, or from before a database restore.
            async with db.sessions() as session:
                head = await session.scalar(select(func.max(Event.id))) or 0
            if known.top() > head:
                raise await conn.refuse(CLOSE_RESYNC, "resync", "cursor ahead of the server: reload the page")
        in_upto: ColumnElement[bool] = Event.id <= upto.low
        if upto.seen:
            in_upto = or_(in_upto, Event.id.in_(sorted(upto.seen)))
        where = and_(Event.id > known.low, in_upto)
        async with db.sessions() as session:
            behind = await session.scalar(
                select(func.count()).select_from(select(Event.id).where(where).limit(self.max_replay + 1).subquery())
            ) or 0
        if behind > self.max_replay:
            raise await conn.refuse(CLOSE_RESYNC, "resync", "too far behind: reload the page")
        last = known.low
        while True:
            ids, changes = await read_changes(db, and_(where, Event.id > last))
            for event_id in ids:
                if event_id in known:
                    continue
                if event_id <= upto.low:
                    known.skip_to(event_id)  # read in id order: everything below is done too
                else:
                    known.add(event_id)
                change = changes.get(event_id)
                frame = ticket_frame(change, agent, view) if change is not None else None
                if frame is not None:
                    await conn.send({**frame, "cursor": known.encode()})
            if len(ids) < PAGE:
                return
            last = ids[-1]

    async def _push(self, request: web.Request, conn: _Connection, sub: Subscription, known: Position,
                    view: View) -> None:
        while True:
            batch = await sub.queue.get()
            login = await self._session(request, conn)  # before every push
            for event_id in batch.ids:
                if event_id in known:
                    continue  # already sent by the replay, or in the client's cursor
                known.add(event_id)
                change = batch.changes.get(event_id)
                frame = ticket_frame(change, login.agent, view) if change is not None else None
                if frame is not None:
                    await conn.send({**frame, "cursor": known.encode()})
            before = known.encode()
            known.merge(batch.after)
            if known.encode() != before:
                await conn.send({"type": "cursor", "cursor": known.encode()})

    async def _read(self, request: web.Request, conn: _Connection) -> None:
        loop = asyncio.get_running_loop()
        while True:
            msg = await conn.ws.receive()
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                return
            if not conn.frame_allowed(loop.time()):
                raise await conn.refuse(WSCloseCode.POLICY_VIOLATION, "too_many_frames", "too many frames")
            await self._session(request, conn)  # on every client frame
            if msg.type != WSMsgType.TEXT:
                raise await conn.refuse(CLOSE_BAD_FRAME, "bad_frame", "only JSON text frames are accepted")
            try:
                frame = _parse(msg.data)
            except _FrameError as exc:
                raise await conn.refuse(CLOSE_BAD_FRAME, "bad_frame", str(exc)) from None
            if frame.get("type") == "ping":
                await conn.send({"type": "pong"})
            else:
                raise await conn.refuse(CLOSE_BAD_FRAME, "bad_frame", f"unknown frame type {frame.get('type')!r}")


def _parse(raw: str) -> dict[str, Any]:
    try:
        frame = json.loads(raw)
    except (ValueError, RecursionError):
        raise _FrameError("frame is not JSON") from None
    if not isinstance(frame, dict):
        raise _FrameError("frame must be a JSON object")
    return frame
