"""Hot state: the short-lived, shared coordination state of the server, chosen by configuration.

Four pieces: per-key locks (``state.locks``), delivery of outbound frames to open sockets
(``state.delivery``), rate-limit counters and idempotency claims. (The kill switch is not hot state:
it lives in the database, see ``state.flags``, so a Redis restart cannot switch the bot back on.)
Embedded default: all in this process (one server process). With a Redis URL: all in Redis
(``state.redis_hot``), shared by every server process. The code above gets a :class:`HotState` and
never knows which it has. This module also holds the interfaces and in-process implementations of
rate limits and idempotency; it imports ``redis`` only when a Redis URL is given.

Hot state is never the system of record: losing it loses no accepted message (see ``redis_hot``).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from state.delivery import Delivery, InProcessDelivery
from state.locks import InProcessLocks, Locks

if TYPE_CHECKING:
    from redis.asyncio import Redis

# --- interfaces ----------------------------------------------------------------------------------


class RateLimiter(Protocol):
    async def hit(self, key: str, limit: int, window_s: int, weight: int = 1) -> bool:
        """Count a hit of ``weight`` (default 1) on ``key``; True (allowed) while the hits in
        ``window_s`` s total at most ``limit``."""
        ...

    async def count(self, key: str) -> int:
        """Hits on ``key`` in its current window, without counting one (0 when none)."""
        ...


class Idempotency(Protocol):
    async def claim(self, key: str, ttl_s: int) -> bool:
        """True the first time ``key`` is claimed within ``ttl_s`` seconds; False after."""
        ...


# --- in-process implementations --------------------------------------------------------------


class _Expiring:
    """``key -> (expires_at, value)`` on the monotonic clock; expired entries are swept at most
    once per second, so memory stays bounded by what is live."""

    def __init__(self) -> None:
        self.entries: dict[str, tuple[float, int]] = {}
        self._swept = time.monotonic()

    def live(self, key: str, now: float) -> tuple[float, int] | None:
        if now - self._swept >= 1.0:
            self.entries = {k: v for k, v in self.entries.items() if v[0] > now}
            self._swept = now
        entry = self.entries.get(key)
        return entry if entry is not None and entry[0] > now else None


class InProcessRateLimiter:
    """Fixed-window counters in this process, same semantics as ``RedisRateLimiter``: the window
    starts at the first hit, refused hits count too."""

    def __init__(self) -> None:
        self._counters = _Expiring()

    async def hit(self, key: str, limit: int, window_s: int, weight: int = 1) -> bool:
        if window_s < 1 or weight < 1:
            raise ValueError(f"window_s and weight must be at least 1, got {window_s}, {weight}")
        now = time.monotonic()
        entry = self._counters.live(key, now)
        expires, count = entry if entry is not None else (now + window_s, 0)
        self._counters.entries[key] = (expires, count + weight)
        return count + weight <= limit

    async def count(self, key: str) -> int:
        entry = self._counters.live(key, time.monotonic())
        return entry[1] if entry is not None else 0


class InProcessIdempotency:
    """Claims in this process, same semantics as ``RedisIdempotency``."""

    def __init__(self) -> None:
        self._claims = _Expiring()

    async def claim(self, key: str, ttl_s: int) -> bool:
        if ttl_s < 1:
            raise ValueError(f"ttl_s must be at least 1 s, got {ttl_s}")
        now = time.monotonic()
        if self._claims.live(key, now) is not None:
            return False
        self._claims.entries[key] = (now + ttl_s, 1)
        return True


# --- selection -------------------------------------------------------------------------------


@dataclass
class HotState:
    """The hot state in use. ``backend``: ``"in-process"`` or ``"redis"``; ``client``: the Redis
    client (None in process), owned by this object: close it with :func:`close_hot_state`."""

    backend: str
    locks: Locks
    delivery: Delivery
    limiter: RateLimiter
    idempotency: Idempotency
    client: Redis | None = None

    @property
    def outage_errors(self) -> tuple[type[BaseException], ...]:
        """Exceptions that mean the shared hot state is unreachable (empty in process), so callers
        can refuse work with a clear error without knowing which backend they have."""
        if self.client is None:
            return ()
        from redis.exceptions import RedisError

        return (RedisError, OSError, TimeoutError)


class HotStateUnavailable(RuntimeError):
    """Redis could not be reached at start-up."""


def _safe_url(url: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


async def open_hot_state(
    redis_url: str | None, *, lock_ttl_s: float = 30.0, namespace: str = "helpline"
) -> HotState:
    """Hot state for a Redis URL (``redis://[:password@]host:port/db``, ``rediss://`` for TLS), or
    in process when ``redis_url`` is None or empty.

    With Redis: checks it answers ``PING`` (5 s) and starts the delivery listener; raises
    :class:`HotStateUnavailable` (naming the URL, password hidden) when it does not, so a
    misconfigured server fails at start instead of serving with no shared state. After start-up,
    Redis outages do not close anything: operations raise ``redis.exceptions.ConnectionError``,
    :func:`ready` reports False, and everything resumes by itself when Redis is back.
    """
    if not redis_url:
        return HotState(
            backend="in-process",
            locks=InProcessLocks(),
            delivery=InProcessDelivery(),
            limiter=InProcessRateLimiter(),
            idempotency=InProcessIdempotency(),
        )
    from redis.exceptions import RedisError

    from state.redis_hot import (
        RedisDelivery,
        RedisIdempotency,
        RedisLocks,
        RedisRateLimiter,
        ping,
        redis_client,
    )

    client = redis_client(redis_url)
    delivery = RedisDelivery(client, namespace=namespace)
    try:
        async with asyncio.timeout(5.0):
            await ping(client)
        await delivery.start()
    except (TimeoutError, RedisError, OSError) as exc:
        await delivery.close()
        await client.aclose()
        raise HotStateUnavailable(f"cannot reach Redis at {_safe_url(redis_url)}: {exc}") from exc
    return HotState(
        backend="redis",
        locks=RedisLocks(client, ttl_s=lock_ttl_s, namespace=namespace),
        delivery=delivery,
        limiter=RedisRateLimiter(client, namespace=namespace),
        idempotency=RedisIdempotency(client, namespace=namespace),
        client=client,
    )


async def close_hot_state(h: HotState) -> None:
    """Stop the delivery listener and close the Redis client (no-op in process)."""
    close = getattr(h.delivery, "close", None)
    if close is not None:
        await close()
    if h.client is not None:
        await h.client.aclose()


async def ready(h: HotState) -> tuple[bool, str]:
    """Readiness of the hot state: ``(ok, reason)``. In process: always ``(True, "in-process")``.
    Redis: ``PING`` answered within 1 s and the delivery subscription connected."""
    if h.client is None:
        return True, "in-process"
    from redis.exceptions import RedisError

    from state.redis_hot import RedisDelivery, ping

    try:
        async with asyncio.timeout(1.0):
            rtt = await ping(h.client)
    except TimeoutError:
        return False, "redis: no answer to PING within 1 s"
    except (RedisError, OSError) as exc:
        return False, f"redis unreachable: {exc}"
    if isinstance(h.delivery, RedisDelivery) and not h.delivery.connected:
        return False, "redis: delivery subscription reconnecting"
    return True, f"redis: PING {rtt * 1000:.1f} ms"
