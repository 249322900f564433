"""A cap on open TCP connections, per process and per client address, in front of aiohttp.

aiohttp accepts every connection and holds it until its keep-alive timer ends, so a client that
opens connections and sends nothing (or half a request) can use up the process's file descriptors,
after which nobody can connect. :class:`ConnectionGuard` wraps aiohttp's protocol factory: a
connection over ``max_total`` open ones, or over ``max_per_address`` from one peer address, is
answered ``503`` and closed at once, before any request is read; every other connection goes to
aiohttp unchanged. Peers in ``exempt`` (the trusted reverse proxies, which carry many customers on
their connections) are counted only against the total.

Half-sent requests are bounded by aiohttp's keep-alive timer, which also runs before the first
request: ``HELPLINE_HTTP_IDLE_TIMEOUT_S`` is both the header timeout and the idle keep-alive timeout.
Per-address limits for chat sockets and new sessions, which need the client address behind a
proxy, are applied by the web-chat channel.

:class:`GuardedSite` is aiohttp's TCP site with the guard in front.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from ipaddress import ip_address

from aiohttp import web

from helpline.clients import Network

log = logging.getLogger(__name__)

_REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Type: text/plain\r\n"
    b"Retry-After: 5\r\nContent-Length: 41\r\n\r\nToo many connections; try again shortly.\n"
)


class ConnectionGuard:
    """Protocol factory: counts open connections and refuses those over the limits.

    ``open``: connections open now; ``refused``: connections refused since start.
    """

    def __init__(
        self,
        factory: Callable[[], asyncio.Protocol],
        *,
        max_total: int,
        max_per_address: int,
        exempt: Sequence[Network] = (),
    ) -> None:
        self._factory = factory
        self.max_total = max_total
        self.max_per_address = max_per_address
        self._exempt = tuple(exempt)
        self.open = 0
        self.refused = 0
        self._by_address: Counter[str] = Counter()

    def __call__(self) -> asyncio.Protocol:
        return _Guarded(self)

    def _exempted(self, address: str) -> bool:
        try:
            ip = ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self._exempt)

    def admit(self, address: str) -> bool:
        if self.open >= self.max_total or (
            self._by_address[address] >= self.max_per_address and not self._exempted(address)
        ):
            self.refused += 1
            if self.refused == 1 or self.refused % 100 == 0:
                log.warning(
                    "refused a connection from %s (%d open, %d from that address; %d refused so far)",
                    address, self.open, self._by_address[address], self.refused,
                )
            return False
        self.open += 1
        self._by_address[address] += 1
        return True

    def release(self, address: str) -> None:
        self.open -= 1
        self._by_address[address] -= 1
        if self._by_address[address] <= 0:
            del self._by_address[address]


class _Guarded(asyncio.Protocol):
    """One connection: admitted (delegates every callback to aiohttp's handler) or refused."""

    def __init__(self, guard: ConnectionGuard) -> None:
        self._guard = guard
        self._inner: asyncio.Protocol | None = None
        self._address = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        self._address = str(peer[0]) if isinstance(peer, (tuple, list)) and peer else "unknown"
        if not self._guard.admit(self._address):
            assert isinstance(transport, asyncio.WriteTransport)
            transport.write(_REFUSAL)
            transport.close()
            return
        self._inner = self._guard._factory()
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._inner is not None:
            self._guard.release(self._address)
            inner, self._inner = self._inner, None
            inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()


class GuardedSite(web.BaseSite):
    """aiohttp's TCP site (``host``, ``port``) with a :class:`ConnectionGuard` in front."""

    def __init__(
        self, runner: web.BaseRunner, host: str, port: int, *, guard_options: dict[str, object],
        backlog: int = 128,
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self._host_name = host
        self._port_number = port
        self._guard_options = guard_options
        self.guard: ConnectionGuard | None = None

    @property
    def name(self) -> str:
        return f"http://{self._host_name}:{self._port_number}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        self.guard = ConnectionGuard(server, **self._guard_options)  # type: ignore[arg-type]
        self._server = await asyncio.get_running_loop().create_server(
            self.guard, self._host_name, self._port_number, backlog=self._backlog, reuse_address=True
        )
