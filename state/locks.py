"""Per-key mutual exclusion for hot paths (one customer's intake, one ticket's turns).

``hold(key)`` yields a :class:`Lease`. Its ``token`` is a fencing token: strictly increasing per key
across holders, so a write guarded by it (see ``tickets.fence``) is refused once a later holder has
written, even if an earlier holder still believes it holds the lock (it stalled past the expiry).

This module is the embedded, in-process implementation. A shared one (Redis: owner, expiry,
renewal) plugs in behind the same :class:`Locks` protocol; callers never know which they have.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Protocol


@dataclass
class Lease:
    """A held lock. ``token``: fencing token (int, increasing per key). ``lost``: True once the
    lock may have passed to another holder (expired, not renewed); writes must then be fenced."""

    key: str
    token: int
    lost: bool = False


class Locks(Protocol):
    expires: bool
    """True when a lock can pass to another holder while the first still runs (a lease with an
    expiry, as in Redis); then writes must be fenced. False for locks that live as long as the
    holder's process."""

    def hold(self, key: str) -> AbstractAsyncContextManager[Lease]:
        """Hold the lock named ``key`` for the ``async with`` block; waiters are served FIFO."""
        ...


class InProcessLocks:
    """``asyncio.Lock`` per key, created on demand and dropped when nobody holds or waits for it.

    FIFO fairness of ``asyncio.Lock`` is what keeps turns of one ticket in arrival order. Tokens come
    from one process-wide counter, so they increase per key too.
    """

    expires = False  # held until released; gone only with the whole process

    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}
        self._users: dict[str, int] = {}
        self._tokens = itertools.count(1)

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[Lease]:
        lock = self._locks.setdefault(key, asyncio.Lock())
        self._users[key] = self._users.get(key, 0) + 1
        try:
            async with lock:
                yield Lease(key=key, token=next(self._tokens))
        finally:
            self._users[key] -= 1
            if self._users[key] == 0:
                del self._users[key]
                del self._locks[key]

    def __len__(self) -> int:
        """Number of keys currently held or waited for (0 when idle: nothing leaks)."""
        return len(self._locks)
