"""Two ``helpline serve`` processes sharing one database and one Redis: any process serves any
request, and a reply produced on one reaches the customer's socket on the other exactly once."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from app_fixtures import ChatSocket



async def test_reply_produced_on_b_reaches_the_socket_on_a_exactly_once(
    server_factory, redis_url: str, http: aiohttp.ClientSession
) -> None:
    a = server_factory({"HELPLINE_REDIS_URL": redis_url})
    b = server_factory({"HELPLINE_REDIS_URL": redis_url})
    await asyncio.to_thread(a.start)
    await asyncio.to_thread(b.start)
    assert a.health()["hot_state"] == b.health()["hot_state"] == "redis"

    on_a = await ChatSocket.open(http, a.url, labels=True)
    on_b = await ChatSocket.open(http, b.url, on_a.session_id, labels=True)  # the same customer, another tab
    for i, text in enumerate(["hi", "what payment methods do you accept?", "thanks!"]):
        await on_b.send(text, f"x-{i}")
        reply = await on_a.bot_reply()
        assert reply["ticket_id"] == on_b.welcome["ticket_id"] or on_b.welcome["ticket_id"] is None
    await asyncio.sleep(1.0)
    frames = [f for f in on_a.frames + await on_a.drain() if f["type"] == "message"]
    seqs = [f["seq"] for f in frames]
    assert seqs == sorted(set(seqs)), f"duplicate or out-of-order delivery on A: {seqs}"
    assert [f["direction"] for f in frames] == ["inbound", "outbound"] * 3
    assert [f["meta"]["intent"] for f in frames if f["direction"] == "outbound"] == [
        "greeting", "check_payment_methods", "thanks"
    ]
    await on_a.close()
    await on_b.close()


async def test_readyz_reports_the_hot_state(server_factory, redis_url: str) -> None:
    import json
    import urllib.request

    server = server_factory({"HELPLINE_REDIS_URL": redis_url})
    await asyncio.to_thread(server.start)
    with urllib.request.urlopen(server.url + "/readyz", timeout=5) as resp:
        body = json.loads(resp.read())
    assert resp.status == 200 and body["ready"] is True and body["hot_state"] == "redis"
    assert body["detail"].startswith("redis: PING")  # details: this test calls from the same machine


def test_server_refuses_to_start_when_redis_is_unreachable(server_factory) -> None:
    from app_fixtures import free_port

    server = server_factory({"HELPLINE_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})
    with pytest.raises(RuntimeError) as err:
        server.start(timeout=60)
    assert "cannot reach Redis at redis://127.0.0.1:" in str(err.value)
