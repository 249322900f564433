"""Per-key mutual exclusion for hot paths (one customer's intake, one ticket's turns).

This is the embedded, in-process implementation. A shared implementation (Redis, with owners, expiry
and fencing tokens) plugs in behind the same :class:`Locks` protocol so that callers never know which
one they have.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Protocol


class Locks(Protocol):
    def hold(self, key: str) -> AbstractAsyncContextManager[None]:
        """Hold the lock named ``key`` for the ``async with`` block; waiters are served FIFO."""
        ...


class InProcessLocks:
    """``asyncio.Lock`` per key, created on demand and dropped when nobody holds or waits for it.

    FIFO fairness of ``asyncio.Lock`` is what keeps turns of one ticket in arrival order.
    """

    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}
        self._users: dict[str, int] = {}

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock = self._locks.setdefault(key, asyncio.Lock())
        self._users[key] = self._users.get(key, 0) + 1
        try:
            async with lock:
                yield
        finally:
            self._users[key] -= 1
            if self._users[key] == 0:
                del self._users[key]
                del self._locks[key]

    def __len__(self) -> int:
        """Number of keys currently held or waited for (0 when idle: nothing leaks)."""
        return len(self._locks)
