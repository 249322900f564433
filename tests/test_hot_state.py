"""Hot state (``state.hot``, ``state.redis_hot``) against a real redis-server.

Redis tests need ``HELPLINE_TEST_REDIS_URL`` (``./dev test`` starts a throw-away redis-server and
sets it); without it they skip, which ``HELPLINE_REQUIRE_ALL=1`` turns into failures. Two clients on
one server stand for two server processes. Each test uses its own key namespace (a uuid), deleted
afterwards. Behaviour tests run on both backends: ``in-process`` (one process: A and B are the same
object) and ``redis`` (A and B are separate clients). The outage test runs its own redis-server,
which it stops and restarts.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis
import redis.exceptions

from state.hot import HotState, HotStateUnavailable, close_hot_state, open_hot_state, ready
from state.redis_hot import LockTimeout, RedisDelivery, RedisLocks, redis_client

REDIS_URL_ENV = "HELPLINE_TEST_REDIS_URL"
BACKENDS = ["in-process", "redis"]


def _redis_url() -> str:
    url = os.environ.get(REDIS_URL_ENV, "").strip()
    if not url:
        pytest.skip(f"{REDIS_URL_ENV} is not set (./dev test starts a redis-server and sets it)")
    return url


@pytest.fixture
def redis_url() -> str:
    return _redis_url()


@pytest.fixture
async def namespace() -> AsyncIterator[str]:
    """A key namespace of this test alone; its keys are deleted afterwards (if Redis is in use)."""
    ns = f"test-{uuid.uuid4().hex}"
    yield ns
    url = os.environ.get(REDIS_URL_ENV, "").strip()
    if url:
        client = redis_client(url)
        try:
            keys = [key async for key in client.scan_iter(match=f"{ns}:*")]
            if keys:
                await client.delete(*keys)
        finally:
            await client.aclose()


@pytest.fixture(params=BACKENDS)
async def pair(request: pytest.FixtureRequest, namespace: str) -> AsyncIterator[tuple[HotState, HotState]]:
    """Hot state as seen by two processes A and B (the same object in process)."""
    if request.param == "in-process":
        one = await open_hot_state(None)
        yield one, one
        await close_hot_state(one)
        return
    url = _redis_url()
    a = await open_hot_state(url, namespace=namespace)
    b = await open_hot_state(url, namespace=namespace)
    try:
        yield a, b
    finally:
        await close_hot_state(a)
        await close_hot_state(b)


@pytest.fixture
async def clients(redis_url: str) -> AsyncIterator[tuple[redis.asyncio.Redis, redis.asyncio.Redis]]:
    """Two Redis clients: two processes."""
    a, b = redis_client(redis_url), redis_client(redis_url)
    try:
        yield a, b
    finally:
        await a.aclose()
        await b.aclose()


# --- locks ---------------------------------------------------------------------------------------


async def test_mutual_exclusion_and_increasing_tokens(pair: tuple[HotState, HotState]) -> None:
    a, b = pair
    key = f"ticket:{uuid.uuid4().hex[:8]}"
    active = 0
    max_active = 0
    tokens: list[int] = []

    async def worker(i: int) -> None:
        nonlocal active, max_active
        locks = a.locks if i % 2 == 0 else b.locks
        async with locks.hold(key) as lease:
            active += 1
            max_active = max(max_active, active)
            tokens.append(lease.token)  # appended under the lock: acquisition order
            await asyncio.sleep(random.uniform(0.001, 0.01))
            assert not lease.lost
            active -= 1

    await asyncio.wait_for(asyncio.gather(*(worker(i) for i in range(20))), 30)
    assert max_active == 1
    assert len(tokens) == 20
    assert all(x < y for x, y in itertools.pairwise(tokens)), tokens
    assert len(a.locks) == 0 and len(b.locks) == 0  # type: ignore[arg-type]  # nothing left held


async def test_crashed_holder_blocks_at_most_ttl(
    clients: tuple[redis.asyncio.Redis, redis.asyncio.Redis], namespace: str
) -> None:
    client_a, client_b = clients
    crashed = RedisLocks(client_a, ttl_s=0.5, namespace=namespace, renew=False)  # never renews
    other = RedisLocks(client_b, ttl_s=10, namespace=namespace)
    key = "ticket:1"

    held = crashed.hold(key)
    first = await held.__aenter__()  # acquired, then the holder "crashes": no renewal, no release
    started = time.monotonic()
    async with other.hold(key) as second:
        waited = time.monotonic() - started
        assert 0.3 <= waited < 3.0, waited
        assert second.token > first.token
        assert not second.lost
        # The stalled holder wakes up: its renewal finds the lock someone else's.
        assert await crashed.renew(first) is False
        assert first.lost
        # Its release must not delete the successor's lock.
        await held.__aexit__(None, None, None)
        assert (await client_b.get(other._lock_key(key))) == second.owner.encode()
        assert await other.renew(second) is True
    assert await client_b.get(other._lock_key(key)) is None  # released on exit


async def test_renewal_keeps_the_lock_for_many_ttls(
    clients: tuple[redis.asyncio.Redis, redis.asyncio.Redis], namespace: str
) -> None:
    client_a, client_b = clients
    holder = RedisLocks(client_a, ttl_s=0.3, namespace=namespace)
    waiter = RedisLocks(client_b, ttl_s=0.3, wait_timeout_s=1.2, namespace=namespace)
    key = "ticket:2"
    async with holder.hold(key) as lease:
        with pytest.raises(LockTimeout, match="ticket:2") as caught:
            await waiter.hold(key).__aenter__()  # waits 1.2 s = 4 TTLs, the lock stays held
        assert caught.value.key == key and caught.value.owner == lease.owner
        assert not lease.lost
        assert await client_b.pttl(holder._lock_key(key)) > 0
    started = time.monotonic()
    async with waiter.hold(key) as after:
        assert time.monotonic() - started < 0.5  # released, not expired
        assert after.token > lease.token


async def test_renewal_marks_a_taken_over_lease_lost(
    clients: tuple[redis.asyncio.Redis, redis.asyncio.Redis], namespace: str
) -> None:
    client_a, client_b = clients
    locks = RedisLocks(client_a, ttl_s=0.3, namespace=namespace)
    key = "ticket:4"
    async with locks.hold(key) as lease:
        # Another holder took over (as after an expiry): the next renewal, within ttl/3, notices.
        await client_b.set(locks._lock_key(key), b"someone-else", px=5000)
        deadline = time.monotonic() + 2
        while not lease.lost:
            assert time.monotonic() < deadline, "renewal did not mark the lease lost"
            await asyncio.sleep(0.02)
    assert await client_b.get(locks._lock_key(key)) == b"someone-else"  # not deleted on release


async def test_every_hold_ends_even_when_its_renewal_is_mid_command(
    clients: tuple[redis.asyncio.Redis, redis.asyncio.Redis], namespace: str
) -> None:
    """Short TTLs make renewals (every ttl/3) overlap the end of the block. redis-py can swallow a
    cancel that lands during a command; a renewal loop stopped by cancel alone then renewed the lock
    for ever and the block never exited (seen about once per 20-80 holds at a 30 ms TTL)."""
    client_a, _ = clients
    locks = RedisLocks(client_a, ttl_s=0.03, namespace=namespace)
    rng = random.Random(7)

    async def hold(i: int) -> None:
        async with locks.hold(f"ticket:{i % 4}"):
            await asyncio.sleep(rng.uniform(0, 0.03))

    for i in range(400):
        task = asyncio.create_task(hold(i))
        # asyncio.wait, not wait_for: wait_for would cancel the stuck block and report success.
        done, _ = await asyncio.wait({task}, timeout=5)
        assert done, f"hold {i} did not end within 5 s: {task}"
        task.result()
    assert len(locks) == 0
    assert [k async for k in client_a.scan_iter(match=f"{namespace}:lock:*")] == []


async def test_cancelled_waiter_leaves_nothing_behind(
    clients: tuple[redis.asyncio.Redis, redis.asyncio.Redis], namespace: str
) -> None:
    client_a, client_b = clients
    a = RedisLocks(client_a, ttl_s=5, namespace=namespace)
    b = RedisLocks(client_b, ttl_s=5, namespace=namespace)
    key = "ticket:3"

    async def wait_for_lock() -> None:
        async with b.hold(key):
            pass

    async with a.hold(key):
        waiter = asyncio.create_task(wait_for_lock())
        await asyncio.sleep(0.2)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
    assert len(a) == 0 and len(b) == 0
    async with b.hold(key):  # not blocked by the cancelled attempt
        pass


# --- delivery ------------------------------------------------------------------------------------


async def _no_more(queue: asyncio.Queue[dict[str, object]], quiet: float = 0.3) -> bool:
    await asyncio.sleep(quiet)
    return queue.empty()


async def test_delivery_reaches_subscribers_once(pair: tuple[HotState, HotState]) -> None:
    a, b = pair
    frame = {"type": "message", "seq": 7, "text": "Your order shipped.", "meta": {"tier": "x"}}
    with a.delivery.subscribe(1) as first, a.delivery.subscribe(1) as second, a.delivery.subscribe(2) as other:
        await b.delivery.publish(1, frame)
        await b.delivery.publish(3, {"type": "typing", "on": True})  # nobody listens: dropped
        assert await asyncio.wait_for(first.get(), 5) == frame
        assert await asyncio.wait_for(second.get(), 5) == frame
        assert await _no_more(first) and await _no_more(second)  # exactly once
        assert other.empty()  # another customer gets nothing
    await b.delivery.publish(1, frame)  # after unsubscribing: nothing to deliver to, no error
    assert await _no_more(first)
    for h in (a, b):
        assert h.delivery.subscriber_count(1) == 0  # type: ignore[attr-defined]


async def test_redis_delivery_close_leaks_no_task(
    clients: tuple[redis.asyncio.Redis, redis.asyncio.Redis], namespace: str
) -> None:
    client_a, client_b = clients
    before = asyncio.all_tasks()
    delivery = RedisDelivery(client_a, namespace=namespace)
    await delivery.start()
    await delivery.start()  # idempotent: still one listener
    assert len(asyncio.all_tasks() - before) == 1
    assert delivery.connected
    publisher = RedisDelivery(client_b, namespace=namespace)
    with delivery.subscribe(5) as queue:
        assert await client_b.publish(f"{namespace}:deliver:5", "{}") == 1  # our one pattern
        assert await asyncio.wait_for(queue.get(), 5) == {}
        await publisher.publish(5, {"type": "ping"})
        assert await asyncio.wait_for(queue.get(), 5) == {"type": "ping"}
    await delivery.close()
    await delivery.close()
    assert asyncio.all_tasks() - before == set()
    assert not delivery.connected
    # The pattern subscription is gone from the server: a PUBLISH reaches no one.
    assert await client_b.publish(f"{namespace}:deliver:5", "{}") == 0


# --- rate limits, idempotency -------------------------------------------------------------


async def test_rate_limit_is_shared_and_resets(pair: tuple[HotState, HotState]) -> None:
    a, b = pair
    key = "reply:+14155550100"
    allowed = [await (a if i % 2 == 0 else b).limiter.hit(key, 3, 1) for i in range(6)]
    assert allowed == [True, True, True, False, False, False]
    assert await a.limiter.hit("reply:someone-else", 3, 1)  # per key
    await asyncio.sleep(1.3)
    assert await b.limiter.hit(key, 3, 1)  # a new window
    with pytest.raises(ValueError):
        await a.limiter.hit(key, 3, 0)


async def test_idempotency_claims_once_then_after_ttl(pair: tuple[HotState, HotState]) -> None:
    a, b = pair
    key = "twilio:SM0123456789abcdef"
    assert await a.idempotency.claim(key, 1) is True
    assert await b.idempotency.claim(key, 1) is False
    assert await a.idempotency.claim(key, 1) is False
    assert await b.idempotency.claim("twilio:another", 1) is True
    await asyncio.sleep(1.3)
    assert await b.idempotency.claim(key, 1) is True


async def test_concurrent_claims_across_processes_admit_one(pair: tuple[HotState, HotState]) -> None:
    a, b = pair
    results = await asyncio.gather(
        *((a if i % 2 else b).idempotency.claim("webchat:cm-1", 60) for i in range(20))
    )
    assert results.count(True) == 1


# --- selection and readiness ---------------------------------------------------------------------


async def test_in_process_hot_state_is_always_ready() -> None:
    h = await open_hot_state(None)
    assert h.backend == "in-process" and h.client is None
    assert await ready(h) == (True, "in-process")
    await close_hot_state(h)


async def test_open_fails_clearly_when_redis_is_unreachable(redis_url: str) -> None:
    port = _free_port()
    with pytest.raises(HotStateUnavailable) as caught:
        await open_hot_state(f"redis://:s3cret@127.0.0.1:{port}/0")
    message = str(caught.value)
    assert f"127.0.0.1:{port}" in message and "s3cret" not in message and "***" in message


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A redis-server of this test alone (foreground child process, stopped by PID)."""

    def __init__(self, binary: str, workdir: Path) -> None:
        self.binary = binary
        self.workdir = workdir
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.workdir / "redis.log", "ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(self.workdir)],
                stdout=log, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with redis.Redis(port=self.port, socket_connect_timeout=0.5) as probe:
                    if probe.ping():
                        return
            except redis.exceptions.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None


@pytest.fixture
def own_redis(redis_url: str, tmp_path: Path) -> Iterator[RedisServer]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    server = RedisServer(binary, tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_redis_outage_then_recovery_with_the_same_client(own_redis: RedisServer) -> None:
    h = await open_hot_state(own_redis.url, lock_ttl_s=2.0)
    try:
        ok, reason = await ready(h)
        assert ok and reason.startswith("redis: PING"), reason
        with h.delivery.subscribe(9) as queue:
            own_redis.stop()

            # Every operation fails with redis-py's ConnectionError, quickly.
            started = time.monotonic()
            with pytest.raises(redis.exceptions.ConnectionError):
                await h.limiter.count("k")
            assert time.monotonic() - started < 2.0
            with pytest.raises(redis.exceptions.ConnectionError):
                async with h.locks.hold("ticket:9"):
                    pass
            with pytest.raises(redis.exceptions.ConnectionError):
                await h.delivery.publish(9, {"type": "typing", "on": True})
            with pytest.raises(redis.exceptions.ConnectionError):
                await h.idempotency.claim("webchat:x", 60)
            with pytest.raises(redis.exceptions.ConnectionError):
                await h.limiter.hit("k", 1, 1)
            ok, reason = await ready(h)
            assert not ok and "redis" in reason, reason
            assert len(h.locks) == 0  # type: ignore[arg-type]

            own_redis.start()  # same port, empty data

            # The same client (and delivery listener) recover by themselves.
            assert await h.limiter.hit("k", 5, 60) and await h.limiter.count("k") == 1
            deadline = time.monotonic() + 10
            while not (await ready(h))[0]:
                assert time.monotonic() < deadline, await ready(h)
                await asyncio.sleep(0.1)
            async with h.locks.hold("ticket:9") as lease:
                assert lease.token > 0 and not lease.lost
            assert await h.idempotency.claim("webchat:x", 60)
            await h.delivery.publish(9, {"type": "message", "seq": 1})
            assert await asyncio.wait_for(queue.get(), 5) == {"type": "message", "seq": 1}
    finally:
        await close_hot_state(h)
