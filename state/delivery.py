"""Delivery of outbound frames to whichever connections a customer has open (web-chat sockets).

In-process fan-out for the embedded default. A shared implementation (Redis pub/sub or streams) plugs
in behind the same :class:`Delivery` protocol so that a reply produced by any process reaches the
process that holds the customer's socket. Frames are plain JSON-able dicts; delivery is best effort
and at most once per subscriber: the durable copy is the ``messages`` table, which a reconnecting
client reads from its last seen ``seq``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Protocol

Frame = dict[str, Any]


class Delivery(Protocol):
    def subscribe(self, customer_id: int) -> AbstractContextManager[asyncio.Queue[Frame]]:
        """Context manager yielding a queue that receives every frame published for the customer."""
        ...

    async def publish(self, customer_id: int, frame: Frame) -> None:
        """Send ``frame`` to every current subscriber of ``customer_id``; no subscriber: dropped."""
        ...


LIVE_QUEUE_FRAMES = 100
"""Frames one subscriber (an open socket) may have waiting; more are dropped for that subscriber,
which refills the gap from the database (frames are numbered), so a socket that does not read holds
at most this many."""


class InProcessDelivery:
    """Subscribers are ``asyncio.Queue`` objects keyed by customer id, in this process only."""

    def __init__(self, queue_size: int = LIVE_QUEUE_FRAMES) -> None:
        self._subscribers: dict[int, set[asyncio.Queue[Frame]]] = {}
        self._queue_size = queue_size

    @contextmanager
    def subscribe(self, customer_id: int) -> Iterator[asyncio.Queue[Frame]]:
        queue: asyncio.Queue[Frame] = asyncio.Queue(self._queue_size)
        self._subscribers.setdefault(customer_id, set()).add(queue)
        try:
            yield queue
        finally:
            subscribers = self._subscribers.get(customer_id)
            if subscribers is not None:
                subscribers.discard(queue)
                if not subscribers:
                    del self._subscribers[customer_id]

    async def publish(self, customer_id: int, frame: Frame) -> None:
        self.deliver(customer_id, frame)

    def deliver(self, customer_id: int, frame: Frame) -> None:
        """Put ``frame`` on every local subscriber's queue now (no await)."""
        for queue in list(self._subscribers.get(customer_id, ())):
            try:
                queue.put_nowait(frame)
            except asyncio.QueueFull:
                # A stalled socket must not stall turns; that client re-reads the backlog on reconnect.
                pass

    def subscriber_count(self, customer_id: int) -> int:
        return len(self._subscribers.get(customer_id, ()))
