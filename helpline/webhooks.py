"""The handoff webhook: signing and sending events to ``HELPLINE_HANDOFF_WEBHOOK_URL``.

Events are rows of :mod:`state.webhooks`, written in the transaction that caused them. Right after
that commit the caller sends one with :meth:`Webhooks.send_now`; a failed send is released to
``pending`` and handed to the job queue (``deliver_webhook`` in :mod:`helpline.jobs`), which retries
with exponential backoff and jitter (:func:`retry_delay_s`) until ``webhook_max_attempts``. A 2xx
answer is success; ``410 Gone`` means "stop" (the event is ``failed`` at once); any other status, a
timeout or a connection error is retried. Redirects are not followed and at most
:data:`MAX_RESPONSE_BYTES` of a response are read (kept in ``last_error``).

Signature: Stripe's scheme (https://docs.stripe.com/webhooks#verify-manually; the reference code is
``WebhookSignature`` in stripe-python's ``stripe/_webhook.py``). Header
``Helpline-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>``, signed afresh
at every attempt, so a receiver can refuse replays older than a few minutes while still accepting
retries. :func:`verify` is the receiver's side, copied verbatim into docs/handoff-webhook.md (a test
keeps the two identical). Every request also carries ``Helpline-Event-Id`` (the UUID receivers
de-duplicate on; the same on every attempt) and ``Helpline-Event-Type``.

This module never logs the secret or the body (the body holds customer data); a failure's log line
names the event, its attempt and the error (which may name the receiver's host).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import procrastinate
from procrastinate.jobs import Job

from config.settings import Settings
from helpline import __version__
from state import webhooks as store
from state.db import Database

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "Helpline-Signature"
EVENT_ID_HEADER = "Helpline-Event-Id"
EVENT_TYPE_HEADER = "Helpline-Event-Type"
MAX_RESPONSE_BYTES = 1024
"""Most bytes of a receiver's response read (for ``last_error``); the rest is never downloaded."""
LEASE_MARGIN_S = 30.0
"""A claim outlives the request's timeout by this much, so a slow send is never taken over."""
GONE = 410


def encode_body(payload: dict[str, Any]) -> bytes:
    """The request body for an event's stored ``payload``: compact UTF-8 JSON with sorted keys, so
    every attempt sends (and signs) the same bytes whatever the database did to key order."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``Helpline-Signature`` value for ``body`` sent at ``timestamp`` (Unix seconds):
    ``t=<timestamp>,v1=<hex HMAC-SHA256 of b"<timestamp>." + body, keyed with secret (UTF-8)>``."""
    signed = str(timestamp).encode() + b"." + body
    return f"t={timestamp},v1={hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()}"


# --- the receiver's check: docs/handoff-webhook.md shows this function verbatim ------------------
def verify(secret: str, header: str, body: bytes, tolerance_s: int = 300) -> bool:
    """True when ``header`` (the Helpline-Signature value) signs ``body`` (the raw request body, as
    received, before any JSON parsing) with ``secret``, and was made within ``tolerance_s`` seconds
    of now (refuses replays; keep your clock in sync). Any one ``v1`` entry must match."""
    pairs = [item.strip().partition("=") for item in header.split(",")]
    timestamps = [value for key, _, value in pairs if key == "t"]
    if len(timestamps) != 1 or not (timestamps[0].isascii() and timestamps[0].isdigit()):
        return False
    if abs(time.time() - int(timestamps[0])) > tolerance_s:
        return False
    signed = timestamps[0].encode() + b"." + body
    expected = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest().encode()
    return any(hmac.compare_digest(expected, value.encode()) for key, _, value in pairs if key == "v1")
# --- end of the receiver's check -----------------------------------------------------------------


def retry_delay_s(attempt: int, base_s: float, max_s: float, rand: Callable[[], float] = random.random) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1 = the first): the ceiling
    ``min(max_s, base_s * 2**(attempt-1))`` less a random part of up to half of it ("equal jitter"),
    so receivers coming back from an outage are not hit by every event at once. With the defaults
    (5 s, 1800 s): 2.5-5, 5-10, 10-20, ... 900-1800 s."""
    ceiling = min(max_s, base_s * 2.0 ** min(attempt - 1, 64))
    return ceiling / 2 + rand() * ceiling / 2


@dataclass(frozen=True)
class Outcome:
    """One attempt's result: ``sent``; ``retry_in_s`` is the wait before the next attempt when one
    is due (None: sent, given up, or nothing to do because another worker holds the event)."""

    sent: bool
    retry_in_s: float | None = None


class RetryLater(Exception):
    """A webhook attempt failed and another is due in ``delay_s`` seconds (the job queue retries)."""

    def __init__(self, message: str, delay_s: float) -> None:
        super().__init__(message)
        self.delay_s = delay_s


@dataclass(frozen=True)
class BackoffRetry(procrastinate.BaseRetryStrategy):
    """procrastinate retry strategy for ``deliver_webhook``: retry a :class:`RetryLater` after the
    delay it carries (computed from the event's own attempt count, jittered), at most
    ``max_attempts`` runs of one job. The event row's attempt count is what stops retries; this
    bound is a backstop."""

    max_attempts: int

    def get_retry_decision(
        self, *, exception: BaseException, job: Job
    ) -> procrastinate.RetryDecision | None:
        if not isinstance(exception, RetryLater) or job.attempts + 1 >= self.max_attempts:
            return None
        return procrastinate.RetryDecision(retry_in={"seconds": exception.delay_s})


class Webhooks:
    """Sends handoff-webhook events (rows of :mod:`state.webhooks`) to the configured URL.

    Holds no connection: each attempt opens its own HTTP client (events are rare, and a failed
    receiver must leave nothing behind). ``retry`` is set by the runtime: ``await retry(row_id,
    delay_s)`` schedules another attempt; until one is set a failed event waits for the sweep.
    """

    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.url = str(settings.handoff_webhook_url) if settings.handoff_webhook_url is not None else None
        secret = settings.handoff_webhook_secret
        self._secret = secret.get_secret_value() if secret is not None else ""
        self.timeout_s = settings.webhook_timeout_s
        self.max_attempts = settings.webhook_max_attempts
        self.retry_base_s = settings.webhook_retry_base_s
        self.retry_max_s = settings.webhook_retry_max_s
        self.lease_s = settings.webhook_timeout_s + LEASE_MARGIN_S
        self.retry: Callable[[int, float], Awaitable[None]] | None = None

    @property
    def enabled(self) -> bool:
        """Whether a webhook URL is configured: pass it as ``enabled`` to :func:`state.webhooks.add`."""
        return self.url is not None

    async def send_now(self, row_id: int) -> bool:
        """First attempt for event row ``row_id`` (``WebhookEvent.id``), right after the commit that
        recorded it. True when sent. Never raises: on failure (the receiver's or the database's) the
        event is retried by the job queue, or found by the sweep."""
        try:
            outcome = await self.attempt(row_id)
        except Exception:  # the database is down: the pending row waits for the sweep
            log.exception("webhook event %s: first attempt failed", row_id)
            return False
        if outcome.retry_in_s is not None and self.retry is not None:
            try:
                await self.retry(row_id, outcome.retry_in_s)
            except Exception:  # the sweep finds the pending event later
                log.exception("could not schedule a retry for webhook event %s", row_id)
        return outcome.sent

    async def queue(self, row_id: int) -> bool:
        """Hand event row ``row_id`` to the job queue at once instead of sending it here (for a
        caller that must not wait up to ``webhook_timeout_s``). False when no queue is set or it
        could not be reached: the sweep sends the event later. Never raises."""
        if self.retry is None:
            return False
        try:
            await self.retry(row_id, 0.0)
        except Exception:
            log.exception("could not queue webhook event %s", row_id)
            return False
        return True

    async def due(self, stale_after_s: float) -> list[int]:
        """Event rows the sweep should queue (:func:`state.webhooks.due`). A tried event counts as
        abandoned only once its last attempt is older than a whole lease too: an attempt may take
        up to ``webhook_timeout_s``, and queueing a second job while the first still runs would
        clash with the first one's retry (one queued job per event)."""
        return await store.due(self.db, older_than_s=stale_after_s, attempt_s=self.lease_s)

    async def attempt(self, row_id: int) -> Outcome:
        """One send attempt under a claim (the job queue and :meth:`send_now` call this)."""
        claim = await store.claim(self.db, row_id, self.lease_s)
        if claim is None:
            return Outcome(sent=False)
        final = claim.attempt >= self.max_attempts
        if self.url is None:
            await store.release(self.db, row_id, "no webhook URL is configured (HELPLINE_HANDOFF_WEBHOOK_URL)",
                                final=True)
            return Outcome(sent=False)
        status: int | None = None
        try:
            status, answer = await self._post(claim)
        except Exception as exc:  # timeouts, refused connections, TLS and DNS errors: all retried
            error = f"{type(exc).__name__}: {exc}".rstrip(": ")
        else:
            if 200 <= status < 300:
                await store.mark_sent(self.db, row_id, status)
                return Outcome(sent=True)
            final = final or status == GONE
            error = f"HTTP {status}" + (" (redirects are not followed)" if 300 <= status < 400 else "")
            if answer:
                error += f": {answer}"
        log.warning(
            "webhook event %s (%s, %s, attempt %d) failed%s: %s", row_id, claim.event_type, claim.event_id,
            claim.attempt, "; giving up" if final else "", error[:200],
        )
        await store.release(self.db, row_id, error, final=final, response_status=status)
        if final:
            return Outcome(sent=False)
        return Outcome(sent=False, retry_in_s=retry_delay_s(claim.attempt, self.retry_base_s, self.retry_max_s))

    async def _post(self, claim: store.Claim) -> tuple[int, str]:
        """POST the event; (status, up to MAX_RESPONSE_BYTES of the response as text)."""
        assert self.url is not None
        body = encode_body(claim.payload)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"Helpline-Webhook/{__version__}",
            SIGNATURE_HEADER: sign(self._secret, int(time.time()), body),
            EVENT_ID_HEADER: claim.event_id,
            EVENT_TYPE_HEADER: claim.event_type,
        }
        timeout = aiohttp.ClientTimeout(total=self.timeout_s, connect=self.timeout_s)
        # No cookies kept, no proxy settings read from the environment, no redirects followed.
        async with aiohttp.ClientSession(timeout=timeout, cookie_jar=aiohttp.DummyCookieJar()) as http:
            async with http.post(self.url, data=body, headers=headers, allow_redirects=False) as response:
                answer = await response.content.read(MAX_RESPONSE_BYTES)
                return response.status, answer.decode("utf-8", "replace")

