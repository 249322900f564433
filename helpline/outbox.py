"""Sending outbound messages through their channel, with retries: the outbox service.

Every outbound message gets an outbox entry in the transaction that stores it
(:func:`state.outbox.add`). Right after commit the turn sends it (:meth:`Outbox.send_now`); a failed
send is released to ``pending`` and handed to the job queue (:mod:`helpline.jobs`), which retries with
exponential backoff until ``outbox_max_attempts`` is reached (then the entry is ``failed``, with the
last error). Senders are the channel adapters: anything with ``async send(message) -> provider id``,
registered by channel name. The outbox knows nothing of any provider.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from state import outbox as store
from state.db import Database
from state.models import Message, OutboxEntry

log = logging.getLogger(__name__)


class Sender(Protocol):
    async def send(self, message: Message) -> str | None:
        """Send ``message`` to its customer; return the provider's message id (None if it has none).
        Raise on failure (any exception): the outbox records it and retries."""
        ...


class Outbox:
    """Sends outbox entries through the registered channel senders.

    ``retry`` is set by the job queue: ``await retry(entry_id)`` schedules another attempt. Until one
    is set, a failed entry waits for the outbox sweep.
    """

    def __init__(
        self, db: Database, senders: Mapping[str, Sender], *, lease_s: float, max_attempts: int
    ) -> None:
        self.db = db
        self.senders = dict(senders)
        self.lease_s = lease_s
        self.max_attempts = max_attempts
        self.retry: Callable[[int], Awaitable[None]] | None = None

    def register(self, channel: str, sender: Sender) -> None:
        """Send messages of ``channel`` through ``sender`` (one per channel; the last one wins)."""
        self.senders[channel] = sender

    def add(self, session: AsyncSession, message: Message) -> OutboxEntry:
        """Queue ``message`` in the caller's transaction, claimed for the caller's ``send_now``."""
        return store.add(session, message, self.lease_s)

    async def send_now(self, entry_id: int, message: Message) -> bool:
        """First attempt, right after the commit that queued the entry. True when sent; on failure
        the entry is released and a retry is scheduled."""
        sent = await self._send(entry_id, message, attempt=1)
        if not sent and self.retry is not None:
            try:
                await self.retry(entry_id)
            except Exception:  # the sweep finds the pending entry later
                log.exception("could not schedule a retry for outbox entry %s", entry_id)
        return sent

    async def attempt(self, entry_id: int) -> bool | None:
        """One retry attempt (the job queue calls this). True: sent. False: failed, will retry.
        None: nothing to do (already sent, given up, or another worker holds it)."""
        claim = await store.claim(self.db, entry_id, self.lease_s)
        if claim is None:
            return None
        sent = await self._send(entry_id, claim.message, attempt=claim.attempt)
        return True if sent else (False if claim.attempt < self.max_attempts else None)

    async def _send(self, entry_id: int, message: Message, *, attempt: int) -> bool:
        sender = self.senders.get(message.channel)
        try:
            if sender is None:
                raise LookupError(f"no sender registered for channel {message.channel!r}")
            provider_id = await sender.send(message)
        except Exception as exc:
            final = sender is None or attempt >= self.max_attempts
            log.warning(
                "send of message %s (outbox %s, attempt %d) failed%s: %s",
                message.id, entry_id, attempt, "; giving up" if final else "", exc,
            )
            await store.release(self.db, entry_id, f"{type(exc).__name__}: {exc}", final=final)
            return False
        await store.mark_sent(self.db, entry_id, provider_id)
        return True
