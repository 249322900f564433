"""Hot state shared by every server process through one Redis: locks, delivery, limits, claims.

Each class implements an interface of the embedded default (``state.locks.Locks``,
``state.delivery.Delivery``, and ``RateLimiter``/``Idempotency`` of ``state.hot``), so the
code above never knows which it has. ``state.hot.open_hot_state`` picks one by configuration.

Nothing here is the system of record. Redis may lose everything (restart without persistence,
failover) and no accepted message is lost: messages, tickets and the ticket fence live in the
database. What Redis losing its data costs: locks free early (the database fence refuses the stale
holder's writes), idempotency keys forgotten (the database's unique client/provider message ids
still hold), a missed live frame (clients resume from ``last_seq``), a rate window restarted.

Errors: with Redis unreachable every operation raises ``redis.exceptions.ConnectionError`` (a
``redis.exceptions.RedisError``) after the client's short retry (see :func:`redis_client`); the same
client works again once Redis is back (redis-py reconnects on the next command). This module must
not swallow those errors on paths that accept work, so callers can refuse a turn with a clear error.

Keys (``ns`` = namespace, ``helpline`` by default; braces are Redis Cluster hash tags so a lock
and its fence land on one slot)::

    {ns}:lock:{KEY}         owner of a held lock (string), PX = lock TTL
    {ns}:fence:{KEY}        last fencing token issued for KEY (integer), expires after a day idle
    {ns}:deliver:CUSTOMER   pub/sub channel of a customer's outbound frames (JSON)
    {ns}:rate:KEY           fixed-window hit counter, EX = window
    {ns}:idem:KEY           idempotency claim, EX = its TTL
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AbstractContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from state.delivery import LIVE_QUEUE_FRAMES, Frame, InProcessDelivery
from state.locks import InProcessLocks, Lease

log = logging.getLogger(__name__)

DEFAULT_NAMESPACE = "helpline"

# One process id for owners and logs: host:pid. A uuid4 per acquisition makes each owner unique.
_PROCESS = f"{socket.gethostname()}:{os.getpid()}"


def redis_client(url: str) -> Redis:
    """A ``redis.asyncio.Redis`` client for ``url`` (``redis://[:password@]host:port/db``,
    ``rediss://`` for TLS), configured for hot state. Close it with ``await client.aclose()``.

    Short timeouts and a short retry (2 retries, 20-250 ms jittered backoff) on connection errors,
    instead of redis-py's default 10 retries: with Redis down an operation fails in well under a
    second with ``redis.exceptions.ConnectionError``, so a turn is refused quickly rather than hung.
    No connection is made here; the first command connects.
    """
    return Redis.from_url(
        url,
        socket_connect_timeout=2.0,
        socket_timeout=5.0,
        health_check_interval=15,
        retry=Retry(ExponentialWithJitterBackoff(cap=0.25, base=0.02), retries=2),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )


async def ping(client: Redis) -> float:
    """Round-trip time of one ``PING`` in seconds. Raises ``redis.exceptions.RedisError``
    (``ConnectionError`` when unreachable)."""
    started = time.perf_counter()
    await client.ping()
    return time.perf_counter() - started


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _jitter(delay: float) -> float:
    # "Full jitter" in its upper half: spreads waiters without ever sleeping ~0 (no busy loop).
    return delay * random.uniform(0.5, 1.0)


# --- locks ---------------------------------------------------------------------------------------

# KEYS[1] lock, KEYS[2] fence; ARGV[1] owner, ARGV[2] ttl ms, ARGV[3] fence idle expiry ms.
# Returns the new fencing token, or nil when the lock is taken by someone else.
# Idempotent for the same owner: a client retry after a lost reply gets its token back instead of
# waiting for its own lock to expire.
# The token is INCR of the fence counter, raised to the server clock in microseconds when that is
# larger: tokens keep increasing even if Redis lost the counter (restart without persistence, or
# the counter expired after a day idle). Microseconds since 1970 (~1.8e15) stay below 2^53, exact in
# Lua's doubles; they need a 64-bit column if ever stored.
_ACQUIRE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
    local token = redis.call('INCR', KEYS[2])
    local now = redis.call('TIME')
    -- Built as a string: Lua would print a number this large in exponent notation.
    local floor = now[1] .. string.sub('000000' .. now[2], -6)
    if token < tonumber(floor) then
        redis.call('SET', KEYS[2], floor)
        token = tonumber(floor)
    end
    redis.call('PEXPIRE', KEYS[2], ARGV[3])
    return token
end
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return tonumber(redis.call('GET', KEYS[2]))
end
return false
"""

# KEYS[1] lock; ARGV[1] owner, ARGV[2] ttl ms. 1 = extended, 0 = gone or someone else's.
_EXTEND = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# KEYS[1] lock; ARGV[1] owner. 1 = deleted, 0 = not ours any more (never delete a successor's lock).
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""

_FENCE_IDLE_MS = 24 * 3600 * 1000


class LockTimeout(TimeoutError):
    """``RedisLocks.hold`` waited ``wait_timeout_s`` for a lock another holder kept renewing."""

    def __init__(self, key: str, waited_s: float, owner: str | None) -> None:
        super().__init__(
            f"lock {key!r} still held after {waited_s:.1f} s"
            + (f" (owner {owner})" if owner else "")
        )
        self.key = key
        self.owner = owner


@dataclass
class RedisLease(Lease):
    """A :class:`Lease` on a Redis lock; ``owner`` is the value stored in the lock key
    (``host:pid:uuid4``), unique per acquisition."""

    owner: str = ""


class RedisLocks:
    """Per-key locks shared by every process: the single-instance Redis lock plus fencing tokens.

    - **Acquire**: ``SET {ns}:lock:{KEY} OWNER NX PX ttl`` and ``INCR {ns}:fence:{KEY}`` in one Lua
      script, so the fencing token comes with the lock atomically and tokens increase strictly per
      key across processes. Lock pattern: https://redis.io/docs/latest/commands/set/ ("Patterns") and
      https://redis.io/docs/latest/develop/use/patterns/distributed-locks/ (the single-instance part
      of Redlock); fencing tokens: Martin Kleppmann, "How to do distributed locking" (2016),
      https://martin.kleppmann.com/2016/02/08/how-to-do-distributed-locking.html. The token that
      guards ticket writes is the database's ``tickets.fence``; this one lets callers fence other
      resources the same way.
    - **Wait**: while taken, retry with exponential backoff and jitter (10 ms up to 200 ms);
      after ``wait_timeout_s`` (default 60 s) raise :class:`LockTimeout` naming the key.
      Within one process, waiters for a key first queue FIFO on a local lock, so only one of them
      polls Redis. Across processes there is no FIFO: per-ticket order comes from each holder
      processing the ticket's oldest pending message (the database), not from lock fairness.
    - **Renew**: while held, a task extends the expiry every ``ttl_s / 3`` with compare-and-pexpire
      (only if the value is still our owner). If the lock is gone or someone else's, or Redis stays
      unreachable for ``ttl_s`` since the last confirmed renewal, the lease is marked ``lost`` and
      renewal stops.
    - **Release**: compare-and-delete, so a holder whose lock expired never deletes its
      successor's lock. A holder that crashes (no release, no renewal) blocks the key for at most
      ``ttl_s``.

    ``ttl_s`` bounds how long a crashed process blocks a ticket; it must exceed the longest stall
    (GC, event-loop block) a live holder may suffer, or the lock passes while it still works (the
    database fence then refuses its writes). ``renew=False`` turns automatic renewal off: a test
    hook that makes a holder behave like a stalled or crashed one.
    """

    expires = True  # a lease: a stalled holder can lose it; writes are fenced (tickets.fence)

    def __init__(
        self,
        client: Redis,
        *,
        ttl_s: float = 30.0,
        wait_timeout_s: float = 60.0,
        namespace: str = DEFAULT_NAMESPACE,
        renew: bool = True,
    ) -> None:
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be positive, got {ttl_s}")
        self._client = client
        self._ttl_s = ttl_s
        self._ttl_ms = max(1, round(ttl_s * 1000))
        self._wait_timeout_s = wait_timeout_s
        self._ns = namespace
        self._auto_renew = renew
        self._local = InProcessLocks()
        self._acquire = client.register_script(_ACQUIRE)
        self._extend = client.register_script(_EXTEND)
        self._release = client.register_script(_RELEASE)

    def _lock_key(self, key: str) -> str:
        return f"{self._ns}:lock:{{{key}}}"

    def _fence_key(self, key: str) -> str:
        return f"{self._ns}:fence:{{{key}}}"

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[RedisLease]:
        """Hold the lock named ``key`` for the ``async with`` block; yields a :class:`RedisLease`.

        Raises :class:`LockTimeout` after ``wait_timeout_s`` of contention in Redis (time queued
        behind holders in this process does not count: those are alive and renewing), and
        ``redis.exceptions.RedisError`` when Redis cannot be reached. Inside the block, check
        ``lease.lost`` (or call :meth:`renew`) before a write that the lock alone must protect.
        """
        async with self._local.hold(key):
            lease = await self._acquire_shared(key)
            stop = asyncio.Event()
            renewal = asyncio.create_task(self._renew_loop(lease, stop)) if self._auto_renew else None
            try:
                yield lease
            finally:
                if renewal is not None:
                    # The event, not the cancel alone, ends the loop: redis-py can swallow a cancel
                    # that lands during a command, and the loop would then renew for ever.
                    stop.set()
                    renewal.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await renewal
                await self._release_quietly(lease)

    async def _acquire_shared(self, key: str) -> RedisLease:
        owner = f"{_PROCESS}:{uuid.uuid4().hex}"
        keys = [self._lock_key(key), self._fence_key(key)]
        args: list[Any] = [owner, self._ttl_ms, _FENCE_IDLE_MS]
        started = time.monotonic()
        delay = 0.01
        while True:
            try:
                token = await self._acquire(keys=keys, args=args)
            except asyncio.CancelledError:
                # The script may have run before the cancel arrived: don't leave the key blocked.
                await asyncio.shield(self._release_quietly(RedisLease(key=key, token=0, owner=owner)))
                raise
            if token is not None:
                return RedisLease(key=key, token=int(token), owner=owner)
            waited = time.monotonic() - started
            if waited >= self._wait_timeout_s:
                holder = await self._client.get(keys[0])
                raise LockTimeout(key, waited, _text(holder) if holder else None)
            await asyncio.sleep(min(_jitter(delay), self._wait_timeout_s - waited))
            delay = min(delay * 2, 0.2)

    async def renew(self, lease: RedisLease) -> bool:
        """Extend ``lease`` to a full ``ttl_s`` now if it is still ours. Returns False, and sets
        ``lease.lost``, when the lock expired or passed to another holder. Raises
        ``redis.exceptions.RedisError`` when Redis cannot be reached."""
        extended = await self._extend(keys=[self._lock_key(lease.key)], args=[lease.owner, self._ttl_ms])
        if not extended:
            lease.lost = True
        return bool(extended)

    async def _renew_loop(self, lease: RedisLease, stop: asyncio.Event) -> None:
        confirmed = time.monotonic()  # expiry is at least ttl after this
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._ttl_s / 3):
                    await stop.wait()
            if stop.is_set():
                return
            attempt = time.monotonic()
            try:
                if await self.renew(lease):
                    confirmed = attempt
                    continue
                log.warning("lock %r lost: it expired or passed to another holder", lease.key)
                return
            except RedisError as exc:
                if time.monotonic() - confirmed >= self._ttl_s:
                    lease.lost = True
                    log.warning("lock %r lost: Redis unreachable for a whole TTL (%s)", lease.key, exc)
                    return
                log.warning("lock %r renewal failed, retrying: %s", lease.key, exc)

    async def _release_quietly(self, lease: RedisLease) -> None:
        # Never raise from the end of a ``with`` block (it would mask the block's own error); a lock
        # we could not delete expires after ttl_s anyway.
        try:
            deleted = await self._release(keys=[self._lock_key(lease.key)], args=[lease.owner])
        except RedisError as exc:
            log.warning("lock %r not released (expires by itself): %s", lease.key, exc)
            return
        if not deleted and lease.token:
            lease.lost = True

    def __len__(self) -> int:
        """Keys held or waited for by this process (0 when idle: nothing leaks)."""
        return len(self._local)


# --- delivery ------------------------------------------------------------------------------------


def _glob_escape(text: str) -> str:
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)


class RedisDelivery:
    """Outbound frames to whichever process holds the customer's sockets, over Redis pub/sub.

    ``publish`` sends ``PUBLISH {ns}:deliver:{customer_id} <frame as JSON>``. Each process holds ONE
    pattern subscription, ``PSUBSCRIBE {ns}:deliver:*``, on one connection, made by :meth:`start`,
    and a listener task fans frames out to its local queues. Why one pattern and not one
    ``SUBSCRIBE`` per customer:

    - ``subscribe()`` is synchronous and purely local, so a socket is live the instant it
      subscribes. A per-customer ``SUBSCRIBE`` would only take effect a round trip later; a reply
      committed and published inside that window (after the socket read its backlog) would be lost.
    - Thousands of sockets per process cost no Redis commands and no server-side state; a process
      restart or Redis reconnect re-subscribes one pattern, not thousands of channels.
    - The cost: every process receives every frame and drops those without a local subscriber, so
      pub/sub traffic grows with (frames x processes); ``PUBLISH`` itself is O(patterns), one per
      process. Fine for tens of processes; beyond, switch to per-customer channels on the same one
      connection (the channel names already allow it) or sharded pub/sub.

    Redis pub/sub is at most once: a frame published while a process is disconnected from Redis is
    gone. The durable copy is the ``messages`` table, and a client that reconnects sends its
    ``last_seq`` and receives what it missed (how web chat already works).
    """

    def __init__(
        self, client: Redis, *, namespace: str = DEFAULT_NAMESPACE, queue_size: int = LIVE_QUEUE_FRAMES
    ) -> None:
        self._client = client
        self._prefix = f"{namespace}:deliver:"
        self._pattern = _glob_escape(self._prefix) + "*"
        self._local = InProcessDelivery(queue_size)  # this process's sockets
        self._pubsub: PubSub | None = None
        self._listener: asyncio.Task[None] | None = None
        self._connected = False

    async def start(self) -> None:
        """Subscribe (one ``PSUBSCRIBE``) and start the listener task. Raises
        ``redis.exceptions.RedisError`` when Redis cannot be reached. Idempotent."""
        if self._listener is not None:
            return
        pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.psubscribe(self._pattern)
        except BaseException:
            await pubsub.aclose()  # type: ignore[no-untyped-call]
            raise
        self._pubsub = pubsub
        self._connected = True
        self._listener = asyncio.create_task(self._listen(pubsub), name="helpline-redis-delivery")

    async def close(self) -> None:
        """Stop the listener and close the subscription connection; local queues stay registered
        but receive nothing more. Idempotent."""
        listener, self._listener = self._listener, None
        pubsub, self._pubsub = self._pubsub, None
        self._connected = False
        if listener is not None:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
        if pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                await pubsub.punsubscribe()
            await pubsub.aclose()  # type: ignore[no-untyped-call]

    @property
    def connected(self) -> bool:
        """True while the listener is started and its last read from Redis succeeded."""
        return self._listener is not None and self._connected

    def subscribe(self, customer_id: int) -> AbstractContextManager[asyncio.Queue[Frame]]:
        """A queue receiving every frame published for ``customer_id`` by any process, from now
        until the block ends. A full queue (a stalled socket) drops frames, as in process."""
        return self._local.subscribe(customer_id)

    async def publish(self, customer_id: int, frame: Frame) -> None:
        """``PUBLISH`` ``frame`` (a JSON-able dict) to the customer's channel. Raises ``TypeError``
        for a frame JSON cannot encode and ``redis.exceptions.RedisError`` when Redis cannot be
        reached (the message itself is already stored; the client gets it on resume)."""
        await self._client.publish(f"{self._prefix}{customer_id}", json.dumps(frame, separators=(",", ":")))

    def subscriber_count(self, customer_id: int) -> int:
        return self._local.subscriber_count(customer_id)

    async def _listen(self, pubsub: PubSub) -> None:
        delay = 0.05
        while True:
            try:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            except (RedisError, OSError) as exc:
                # redis-py reconnects and re-issues the PSUBSCRIBE on the next read; frames published
                # meanwhile are lost (at most once) and reach clients through last_seq on resume.
                if self._connected:
                    log.warning("delivery subscription lost, reconnecting: %s", exc)
                self._connected = False
                await asyncio.sleep(_jitter(delay))
                delay = min(delay * 2, 2.0)
                continue
            if not self._connected:
                log.info("delivery subscription restored")
            self._connected = True
            delay = 0.05
            if message is not None and message.get("type") == "pmessage":
                self._dispatch(message["channel"], message["data"])

    def _dispatch(self, channel: bytes | str, data: bytes | str) -> None:
        name = _text(channel)
        try:
            customer_id = int(name[len(self._prefix):])
        except ValueError:
            log.warning("delivery: ignoring malformed channel %r", name)
            return
        if not self._local.subscriber_count(customer_id):
            return  # every process sees every frame: decode only those someone here waits for
        try:
            frame = json.loads(data)
        except ValueError:
            log.warning("delivery: ignoring malformed message on %r", name)
            return
        self._local.deliver(customer_id, frame)


# --- rate limits, idempotency -------------------------------------------------------------


# KEYS[1] counter; ARGV[1] window seconds, ARGV[2] weight of this hit. Returns the count in the
# current window. The TTL check also repairs a counter left without expiry (it can't happen through
# this script, but a manual INCR would otherwise block the key forever).
_HIT = """
local count = redis.call('INCRBY', KEYS[1], ARGV[2])
if count == tonumber(ARGV[2]) or redis.call('TTL', KEYS[1]) < 0 then
    redis.call('EXPIRE', KEYS[1], ARGV[1])
end
return count
"""


class RedisRateLimiter:
    """Fixed-window counters shared by all processes (key ``{ns}:rate:KEY``): the window starts at
    the first hit and lasts ``window_s``; INCR + EXPIRE run in one Lua script, so they are atomic.
    A fixed window admits up to 2x ``limit`` across a window boundary; that is accepted for abuse
    and loop protection. Pattern: https://redis.io/docs/latest/commands/incr/ ("Pattern: Rate
    limiter")."""

    def __init__(self, client: Redis, *, namespace: str = DEFAULT_NAMESPACE) -> None:
        self._client = client
        self._prefix = f"{namespace}:rate:"
        self._hit = client.register_script(_HIT)

    async def hit(self, key: str, limit: int, window_s: int, weight: int = 1) -> bool:
        """Count a hit of ``weight`` on ``key``; True when the window's total is within ``limit``
        per ``window_s`` seconds (refused hits count too). Raises ``redis.exceptions.RedisError``."""
        if window_s < 1 or weight < 1:
            raise ValueError(f"window_s and weight must be at least 1, got {window_s}, {weight}")
        count = await self._hit(keys=[self._prefix + key], args=[int(window_s), int(weight)])
        return int(count) <= limit

    async def count(self, key: str) -> int:
        """Hits on ``key`` in its current window (0 when none). Raises ``redis.exceptions.RedisError``."""
        value = await self._client.get(self._prefix + key)
        return int(value) if value is not None else 0


class RedisIdempotency:
    """Claims for ids that must be processed once (provider message ids, client message ids):
    ``SET {ns}:idem:KEY 1 NX EX ttl`` (https://redis.io/docs/latest/commands/set/)."""

    def __init__(self, client: Redis, *, namespace: str = DEFAULT_NAMESPACE) -> None:
        self._client = client
        self._prefix = f"{namespace}:idem:"

    async def claim(self, key: str, ttl_s: int) -> bool:
        """True the first time ``key`` is claimed within ``ttl_s`` seconds, False while an earlier
        claim lives. Raises ``redis.exceptions.RedisError``."""
        if ttl_s < 1:
            raise ValueError(f"ttl_s must be at least 1 s, got {ttl_s}")
        return bool(await self._client.set(self._prefix + key, b"1", nx=True, ex=int(ttl_s)))
