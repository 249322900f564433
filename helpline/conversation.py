"""The conversation service: channel -> ticket -> router -> reply -> channel, one turn at a time.

Channels call :meth:`Conversations.receive` with a neutral inbound message. Intake commits it (the
durability boundary), then a background task runs the ticket's pending turns under the ticket's lock,
oldest first, so turns of one ticket never interleave and a burst is answered in arrival order.
Replies are stored, then published to the customer's open connections through :class:`Delivery`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.context import Focus
from bot.escalation import PriorTurn
from bot.playbook import Playbook
from bot.router import Decision, Router, TurnContext
from config.settings import AgentMode, Settings
from config.sla import SlaConfig, load_sla_config
from helpline import briefs
from helpline.outbox import Outbox
from helpline.webhooks import Webhooks
from state.conversations import (
    Accepted,
    FencedOut,
    accept_inbound,
    check_fence,
    claim_ticket,
    find_duplicate,
    get_or_create_customer,
    message_frame,
    next_pending_inbound,
    next_seq,
    recent_messages,
    return_kill_switch_ticket,
    return_kill_switch_tickets,
    tickets_with_pending_inbound,
)
from state.db import Database
from state.delivery import Delivery
from state.hot import Idempotency, RateLimiter
from state.locks import Locks
from state.models import Customer, Event, Message, Ticket, utcnow
from state import csat, sla_timers
from state import webhooks as webhook_events
from state.tickets import BOT_SILENT_STATES, TicketState, transition

log = logging.getLogger(__name__)

RATE_CHARS = 1000
"""Each full thousand characters of a message counts as one more message against the rate limits:
a 4,000-character message (up to ~3x the cost of a short one) counts five."""
LONG_MESSAGE_CHARS = 1000
"""Messages longer than this are routed one at a time per process (they cost up to ~3x a short one;
see bench/turn_cost.py), so a flood of them cannot starve ordinary turns."""


@dataclass
class Committed:
    """What a committed turn leaves to do: the reply to send (message, outbox entry id) and the
    handoff-webhook events (``WebhookEvent.id``) to hand to the job queue."""

    reply: tuple[Message, int] | None = None
    webhook_events: list[int] = field(default_factory=list)
    messages: list[tuple[Message, int]] = field(default_factory=list)
    """More messages to send after the reply, in order (message, outbox entry id): the CSAT prompt."""


@dataclass(frozen=True)
class Inbound:
    """A customer message in neutral form, as every channel adapter produces it.

    ``address`` identifies the customer on ``channel`` (web-chat session id, phone number, email
    address); ``provider_message_id`` (web-chat client message id, Twilio MessageSid, Message-ID)
    makes redelivery idempotent.
    """

    channel: str
    address: str
    text: str
    provider_message_id: str | None = None
    origin: str | None = None
    """Where the message came from on the network (web chat: the client's IP address), rate-limited
    besides the customer; None when the channel has no such address."""


class ServiceUnavailable(RuntimeError):
    """Intake refused: shared hot state (locks) is unreachable. Nothing was stored; the channel
    tells the sender to retry (web chat: an ``unavailable`` error frame, the message stays unacked)."""


class RateLimited(RuntimeError):
    """Intake refused: the customer sent more than ``customer_rate_limit`` messages in the window.
    Nothing was stored; the channel tells the sender to slow down."""


class Conversations:
    """Owns intake and turn processing. ``agent_mode`` is awaited on every turn (the kill switch)."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        router: Router,
        locks: Locks,
        delivery: Delivery,
        outbox: Outbox,
        agent_mode: Callable[[], Awaitable[AgentMode]] | None = None,
        outage_errors: tuple[type[BaseException], ...] = (),
        limiter: RateLimiter | None = None,
        idempotency: Idempotency | None = None,
        playbook: Playbook | None = None,
        webhooks: Webhooks | None = None,
        sla: SlaConfig | None = None,
        on_queue_change: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.settings = settings
        self.playbook = playbook or Playbook.load(settings.playbook_file)
        self.webhooks = webhooks
        self.sla = sla or load_sla_config(settings.sla_file)
        self.on_queue_change = on_queue_change  # wakes the inbox's live queue (helpline.inbox_live)
        self.db = db
        self.router = router
        self.locks = locks
        self.delivery = delivery
        self.outbox = outbox
        self.agent_mode = agent_mode or self._configured_mode
        self.outage_errors = outage_errors
        self.limiter = limiter
        self.idempotency = idempotency
        self._tasks: set[asyncio.Task[None]] = set()
        self._active: set[int] = set()  # tickets with a worker in this process
        self._again: set[int] = set()  # tickets whose worker must make one more pass
        self._reopen_window = timedelta(seconds=settings.reopen_window_s)
        # Long messages cost a few times a short one: one at a time per process, so a flood of
        # them (an attack, a customer pasting a document) queues among itself instead of taking
        # the CPU that everyone else's turns need.
        self._long_turns = asyncio.Semaphore(1)

    async def _configured_mode(self) -> AgentMode:
        return self.settings.agent_mode

    # --- intake -----------------------------------------------------------------------------------

    async def customer_id(self, channel: str, address: str) -> int:
        """Id of the customer known as ``address`` on ``channel``, created on first contact."""
        return (await get_or_create_customer(self.db, channel, address)).id

    async def receive(self, inbound: Inbound, customer_id: int | None = None) -> Accepted:
        """Store ``inbound`` (committed before this returns) and schedule its turn.

        A duplicate delivery (same provider message id on the same channel) returns the stored
        original with ``duplicate=True`` and schedules nothing.
        """
        if customer_id is None:  # a channel with a live connection passes the id it resolved
            customer_id = await self.customer_id(inbound.channel, inbound.address)
        # NUL cannot be stored in Postgres text and means nothing in a message: drop it.
        text = inbound.text.replace("\x00", "")
        # What is kept is bounded; the message records how long the original was.
        meta = None
        if len(text) > self.settings.max_stored_chars:
            meta = {"truncated_from": len(text)}
            text = text[: self.settings.max_stored_chars]
        try:
            # A re-send of a stored message (a lost ack) is answered with the original before the
            # rate limit: refusing it would tell the customer that a stored message failed.
            duplicate = await self._known_duplicate(inbound, customer_id)
            if duplicate is not None:
                return duplicate
            await self._rate_limit(customer_id, inbound.origin, weight=1 + len(text) // RATE_CHARS)
            async with self.locks.hold(f"intake:{customer_id}"):
                accepted = await accept_inbound(
                    self.db,
                    customer_id=customer_id,
                    channel=inbound.channel,
                    text=text,
                    provider_message_id=inbound.provider_message_id,
                    reopen_window=self._reopen_window,
                    meta=meta,
                )
        except self.outage_errors as exc:
            raise ServiceUnavailable(f"database or shared state unavailable, message not stored: {exc}") from exc
        if not accepted.duplicate:
            # Stored: from here on nothing may report a failure. The turn starts first; the echo
            # to the customer's other tabs is live delivery only (a reconnect reads the database).
            self.schedule(accepted.ticket.id)
            try:
                await self.delivery.publish(customer_id, message_frame(accepted.message))
            except self.outage_errors as exc:
                log.warning("message %s stored; its live echo was not published: %s", accepted.message.id, exc)
        return accepted

    async def _rate_limit(self, customer_id: int, origin: str | None, *, weight: int) -> None:
        """Raise :class:`RateLimited` when the customer, or the network address the message came
        from, sent more than its limit in the rate window (refused messages count too). A message
        weighs 1 plus 1 per :data:`RATE_CHARS` characters, so long (costly) messages use the limit
        up faster."""
        if self.limiter is None:
            return
        window = self.settings.customer_rate_window_s
        if not await self.limiter.hit(f"customer:{customer_id}", self.settings.customer_rate_limit, window, weight):
            raise RateLimited(f"more than {self.settings.customer_rate_limit} messages in {window} s")
        if origin is not None and not await self.limiter.hit(
            f"address:{origin}", self.settings.address_rate_limit, window, weight
        ):
            raise RateLimited(f"more than {self.settings.address_rate_limit} messages from your address in {window} s")

    async def _known_duplicate(self, inbound: Inbound, customer_id: int) -> Accepted | None:
        """Fast path for redeliveries (webhook retries, a widget re-sending after a reconnect): an
        idempotency claim on the provider message id (Redis ``SET NX EX`` when shared). A lost claim
        only skips the intake lock when the original is already stored; the database's unique key
        stays the authority, so a claim whose message never committed loses nothing."""
        if inbound.provider_message_id is None or self.idempotency is None:
            return None
        key = f"inbound:{inbound.channel}:{customer_id}:{inbound.provider_message_id}"
        if await self.idempotency.claim(key, self.settings.idempotency_ttl_s):
            return None
        async with self.db.sessions() as session:
            return await find_duplicate(session, customer_id, inbound.channel, inbound.provider_message_id)

    def schedule(self, ticket_id: int) -> None:
        """Run the ticket's pending turns in the background (tracked so shutdown can wait).

        One worker per ticket per process: while one runs, a new message only asks it for another
        pass, so a burst of messages costs one lock acquisition, not one per message.
        """
        if ticket_id in self._active:
            self._again.add(ticket_id)
            return
        self._active.add(ticket_id)
        task = asyncio.create_task(self._work(ticket_id), name=f"ticket-{ticket_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _work(self, ticket_id: int) -> None:
        try:
            while True:
                self._again.discard(ticket_id)
                await self.process_ticket(ticket_id)
                if ticket_id not in self._again:
                    return
        finally:
            self._active.discard(ticket_id)

    async def sweep(self, stale_after_s: float) -> int:
        """Schedule tickets whose oldest unanswered message waited longer than ``stale_after_s``.

        Picks up work whose worker died (a crashed process: its lock expires, then any process's
        sweep takes the ticket) or was never scheduled. Returns how many tickets were scheduled.
        """
        ticket_ids = await tickets_with_pending_inbound(self.db, older_than_s=stale_after_s)
        fresh = [t for t in ticket_ids if t not in self._active]
        if await self.agent_mode() is AgentMode.enabled:
            # Customers who wrote while the bot was switched off got the auto-reply; nobody took
            # their tickets meanwhile, so the bot answers those messages now.
            returned = await return_kill_switch_tickets(self.db)
            if returned:
                log.info("kill switch lifted: the bot answers %d ticket(s) handed over while it was off", len(returned))
            fresh += [t for t in returned if t not in fresh and t not in self._active]
        for ticket_id in fresh:
            self.schedule(ticket_id)
        return len(fresh)

    async def resume_pending(self) -> int:
        """Schedule tickets whose messages were stored but not answered (crash, shutdown)."""
        ticket_ids = await tickets_with_pending_inbound(self.db)
        for ticket_id in ticket_ids:
            self.schedule(ticket_id)
        return len(ticket_ids)

    @property
    def in_flight(self) -> int:
        """Tickets whose turns are running in this process now."""
        return len(self._tasks)

    async def drain(self, timeout: float = 30.0) -> None:
        """Wait for in-flight turns (graceful shutdown); unfinished ones resume at next start."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)

    # --- turns ------------------------------------------------------------------------------------

    async def process_ticket(self, ticket_id: int) -> None:
        """Run every pending turn of the ticket, oldest message first, one at a time."""
        async with self.locks.hold(f"ticket:{ticket_id}"):
            # Fencing matters only for locks that can expire under a live holder (Redis leases);
            # an in-process lock cannot, and skipping it saves a write per ticket and per turn.
            epoch = await claim_ticket(self.db, ticket_id) if self.locks.expires else None
            while True:
                async with self.db.sessions() as session:
                    message = await next_pending_inbound(session, ticket_id)
                if message is None:
                    return
                try:
                    await self._turn(message, epoch)
                except FencedOut:
                    log.warning("ticket %s taken over by another worker; stopping here", ticket_id)
                    return
                except Exception:
                    log.exception("turn failed for message %s on ticket %s", message.id, ticket_id)
                    try:
                        await self._fail_turn(message, epoch)
                    except FencedOut:
                        return

    async def _turn(self, message: Message, epoch: int | None) -> None:
        started = time.perf_counter()
        async with self.db.sessions() as session:
            ticket = await session.get(Ticket, message.ticket_id)
            customer = await session.get(Customer, message.customer_id)
            assert ticket is not None and customer is not None
            state = TicketState(ticket.state)
            history = await recent_messages(session, ticket.id, self.settings.history_turns)
            prior, focus = await self._prior_turns(session, ticket.id, history, message)
        disabled = (await self.agent_mode()) is AgentMode.disabled
        if (
            not disabled and state is TicketState.escalated and ticket.escalation_reason == "kill_switch"
            and await return_kill_switch_ticket(self.db, ticket.id)
        ):
            # The switch was lifted and the sweep has not come by yet: the bot takes the ticket
            # back now, and the caller's loop answers its messages oldest first, this one too
            # (it used to be marked handled by a person, who never saw it).
            return

        decision: Decision | None
        if state in BOT_SILENT_STATES and not (disabled and state is TicketState.escalated):
            decision = None  # a human owns the ticket: the bot stays silent
        elif disabled:
            decision = Decision(
                tier="human", reason="kill_switch", reply=self.settings.disabled_reply, escalate=True
            )
        else:
            await self._typing(customer.id, on=True)
            limit = self.settings.max_message_chars
            context = TurnContext(
                ticket_id=ticket.id,
                ticket_state=state.value,
                pending=ticket.pending,
                customer_email=customer.email,
                prior=prior,
                verified_owner=ticket.verified_owner,
                customer_id=customer.id,
                focus=focus,
            )
            text = message.text[:limit]  # routing cost is bounded by the limit, whatever was stored
            if len(text) > LONG_MESSAGE_CHARS:
                async with self._long_turns:
                    decision = await self.router.route(text, context)
            else:
                decision = await self.router.route(text, context)
            self._note_truncation(message, decision)
        latency_ms = round((time.perf_counter() - started) * 1000, 2)
        await self._send(await self._commit_turn(message, decision, latency_ms, history, epoch))
        if self.on_queue_change is not None and (
            decision is None or decision.escalate or decision.resolve or state in BOT_SILENT_STATES
        ):
            await self.on_queue_change()  # a handoff, or a new message on a ticket a person has
        self._log_turn(message, decision, latency_ms)
        if decision is not None and not disabled:
            await self._typing(customer.id, on=False)

    def _note_truncation(self, message: Message, decision: Decision) -> None:
        limit = self.settings.max_message_chars
        length = max(len(message.text), int((message.meta or {}).get("truncated_from") or 0))
        if length <= limit:
            return
        decision.data = {**decision.data, "routed_chars": limit, "message_chars": length}
        # A handoff's reply stays as it is: a person reads the whole message, and the bot, silent
        # from now on, must not ask for the question again.
        if decision.reply is not None and not decision.escalate:
            decision.reply += (
                f"\n\n(Your message is {length:,} characters long; I read the first {limit:,}. "
                "If your question comes later, please send it on its own. Nothing you sent was lost.)"
            )

    def _log_turn(self, message: Message, decision: Decision | None, latency_ms: float) -> None:
        # One line per turn for operators: no message text unless asked for (it is customer data).
        if decision is None:
            log.info("turn ticket=%s message=%s channel=%s tier=- reason=human_owns_ticket latency_ms=%.1f",
                     message.ticket_id, message.id, message.channel, latency_ms)
            return
        text = f" text={message.text[:200]!r}" if self.settings.log_message_text else ""
        log.info(
            "turn ticket=%s message=%s channel=%s tier=%s reason=%s intent=%s confidence=%s latency_ms=%.1f%s",
            message.ticket_id, message.id, message.channel, decision.tier, decision.reason, decision.intent,
            decision.confidence, latency_ms, text,
        )
        if decision.escalate:
            log.info("escalated ticket=%s reason=%s", message.ticket_id, decision.reason)

    async def _prior_turns(
        self, session: AsyncSession, ticket_id: int, history: list[Message], message: Message
    ) -> tuple[tuple[PriorTurn, ...], Focus | None]:
        """The customer's messages in ``history`` before ``message``, oldest first, each with the
        decision its turn event recorded (for the conversation-level escalation triggers), and the
        focus the latest of those turns left (:class:`bot.context.Focus`; None: none recorded, or
        a person answered since)."""
        earlier = [
            m for m in history
            if m.direction == "inbound" and m.author == "customer" and m.seq < message.seq
        ]
        if not earlier:
            return (), None
        rows = await session.execute(
            select(Event.payload)
            .where(Event.ticket_id == ticket_id, Event.kind == "turn")
            .order_by(Event.id.desc())
            .limit(self.settings.history_turns)
        )
        by_message: dict[Any, dict[str, Any]] = {}
        for payload in rows.scalars():  # newest first: a message answered again keeps its last turn
            if isinstance(payload, dict):
                by_message.setdefault(payload.get("message_id"), payload)
        limit = self.settings.max_message_chars  # an oversized message was never understood either
        last = by_message.get(earlier[-1].id) or {}
        focus = Focus.from_json((last.get("data") or {}).get("focus")) if isinstance(last.get("data"), dict) else None
        return tuple(PriorTurn.from_event(m.text[:limit], by_message.get(m.id)) for m in earlier), focus

    async def _commit_turn(
        self,
        message: Message,
        decision: Decision | None,
        latency_ms: float,
        history: list[Message],
        epoch: int | None,
    ) -> Committed:
        """Record the turn; returns what to send after the commit (the reply, webhook events)."""
        now = utcnow()
        done = Committed()
        async with self.db.write() as session:
            stored = await session.get(Message, message.id, populate_existing=True)
            assert stored is not None
            if stored.processed_at is not None:  # another worker finished it: do nothing twice
                return done
            # Row locks in one order everywhere: the customer (seq), then the ticket (fence). A
            # worker that finished this message meanwhile had a newer epoch: the fence stops us.
            seq = (
                await next_seq(session, message.customer_id)
                if decision is not None and decision.reply is not None
                else None
            )
            if epoch is not None:
                await check_fence(session, message.ticket_id, epoch)
            ticket = await session.get(Ticket, message.ticket_id, populate_existing=True)
            assert ticket is not None
            stored.processed_at = now
            if decision is not None and ticket.state == TicketState.human.value:
                # An agent took the ticket while this turn ran (a reopen, or a claim while the
                # kill switch answered): a person owns it now, so the bot's answer is not sent.
                decision = None
            if decision is None:
                session.add(
                    Event(
                        ticket_id=ticket.id,
                        kind="turn",
                        payload={"message_id": message.id, "tier": None, "reason": "human_owns_ticket",
                                 "reply": False, "latency_ms": latency_ms},
                        created_at=now,
                    )
                )
                if TicketState(ticket.state) in BOT_SILENT_STATES:
                    await briefs.refresh(session, ticket, self.settings, self.playbook)  # kept current
                    await sla_timers.on_customer_message(session, ticket, self.sla, now)
                return done

            state = TicketState(ticket.state)
            if state is TicketState.closed:
                # Defensive: intake never closes a ticket under pending messages, but a closed
                # ticket must still not strand one. Answer; no transition is legal from closed.
                decision.escalate = decision.resolve = False
                decision.pending = None
            elif state is TicketState.awaiting_customer:
                transition(session, ticket, TicketState.bot, reason="customer_replied", now=now)
            elif state is TicketState.resolved:
                transition(session, ticket, TicketState.bot, reason="reopened", now=now)
                ticket.assignee_id = None  # the bot has it again: a later handoff is anyone's to claim

            outbound: Message | None = None
            escalated_now = False
            if decision.reply is not None:
                assert seq is not None
                outbound = Message(
                    seq=seq,
                    ticket_id=ticket.id,
                    customer_id=ticket.customer_id,
                    direction="outbound",
                    author="bot",
                    channel=message.channel,
                    text=decision.reply,
                    meta={
                        "tier": decision.tier,
                        "intent": decision.intent,
                        "confidence": decision.confidence,
                        "escalated": decision.escalate,
                        "latency_ms": latency_ms,
                        "citations": list(decision.citations),
                        **({"quick_replies": list(decision.quick_replies)} if decision.quick_replies else {}),
                    },
                    created_at=now,
                )
                session.add(outbound)
                await session.flush()
                entry = self.outbox.add(session, outbound)
                await session.flush()

            if TicketState(ticket.state) is TicketState.closed:
                pass
            elif decision.escalate:
                if TicketState(ticket.state) not in BOT_SILENT_STATES:
                    transition(session, ticket, TicketState.escalated, reason=decision.reason, now=now)
                    escalated_now = True
                ticket.pending = None
            elif decision.resolve:
                transition(session, ticket, TicketState.resolved, reason=decision.reason, now=now)
                ticket.pending = None
                await self._webhook(session, done, webhook_events.RESOLVED, ticket, {"resolved_by": "bot"})
                # Asked once per ticket (state.csat). The goodbye carries a reply, so this turn already
                # holds the customer's seq row: the prompt's seq keeps the one lock order.
                asked = await csat.request(session, ticket, "bot", None, lease_s=self.outbox.lease_s,
                                           channel=message.channel, now=now)
                if asked is not None:
                    done.messages.append((asked.message, asked.entry_id))
            else:
                transition(session, ticket, TicketState.awaiting_customer, reason=decision.reason, now=now)
                ticket.pending = decision.pending
            if decision.intent:
                ticket.intent = decision.intent
            if decision.verified_owner and decision.verified_owner != ticket.verified_owner:
                ticket.verified_owner = decision.verified_owner
                session.add(
                    Event(ticket_id=ticket.id, kind="owner_verified",
                          payload={"message_id": message.id, "owner": decision.verified_owner,
                                   "by": decision.data.get("verification")},
                          created_at=now)
                )
            session.add(
                Event(
                    ticket_id=ticket.id,
                    kind="turn",
                    payload={
                        "message_id": message.id,
                        "reply_message_id": outbound.id if outbound is not None else None,
                        "latency_ms": latency_ms,
                        **decision.event_payload(),
                    },
                    created_at=now,
                )
            )
            if TicketState(ticket.state) in BOT_SILENT_STATES:
                # The brief reads the turn just recorded: built after its event, in this transaction.
                await briefs.refresh(session, ticket, self.settings, self.playbook)
            if escalated_now:  # the webhook carries the brief: after it
                await sla_timers.on_escalated(session, ticket, self.sla, now)
                await self._webhook(session, done, webhook_events.ESCALATED, ticket)
            if outbound is not None:
                done.reply = (outbound, entry.id)
        return done

    async def _webhook(
        self, session: AsyncSession, done: Committed, kind: str, ticket: Ticket, data: dict[str, Any] | None = None
    ) -> None:
        if self.webhooks is not None and self.webhooks.enabled:
            event = await webhook_events.add(session, kind, ticket, data, enabled=True)
            if event is not None:
                done.webhook_events.append(event.id)

    async def _typing(self, customer_id: int, *, on: bool) -> None:
        # A hint, not a message: a hot-state outage must not fail the turn over it.
        try:
            await self.delivery.publish(customer_id, {"type": "typing", "on": on})
        except self.outage_errors:
            pass

    async def _send(self, done: Committed) -> None:
        if done.reply is not None:
            message, entry_id = done.reply
            await self.outbox.send_now(entry_id, message)
        for message, entry_id in done.messages:  # after the reply: their seqs come after its seq
            await self.outbox.send_now(entry_id, message)
        for row_id in done.webhook_events:  # to the job queue: a slow receiver never holds a turn
            assert self.webhooks is not None
            await self.webhooks.queue(row_id)

    async def _fail_turn(self, message: Message, epoch: int | None) -> None:
        # A bug must not leave the customer stuck or loop forever: hand the ticket to a person.
        decision = Decision(tier="human", reason="internal_error", reply=self.router.handoff_reply(), escalate=True)
        try:
            async with self.db.sessions() as session:
                history = await recent_messages(session, message.ticket_id, self.settings.history_turns)
            reply = await self._commit_turn(message, decision, 0.0, history, epoch)
        except FencedOut:
            raise
        except Exception:
            log.exception("could not record the failed turn for message %s", message.id)
            raise
        await self._send(reply)

