"""deploy/nginx.conf, the example reverse proxy, in front of two real ``helpline serve`` processes
sharing one database and one Redis: the websocket upgrade works through it, ``/readyz`` answers
through it, new sockets are spread over the processes, and when one process is SIGKILLed its
customer reconnects through the same address to the other one and carries on."""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from app_fixtures import REPO, ChatSocket, free_port

NGINX = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
_UPSTREAM = re.compile(r"^(\s*server 127\.0\.0\.1:)(\d+)( .*;)$", re.MULTILINE)


def proxy_config(directory: Path, listen_port: int, upstream_ports: list[int]) -> Path:
    """The shipped example with only its addresses and file paths changed: one ``server`` line per
    upstream port (each keeping the example's options), ``listen`` on ``listen_port``, pid and temp
    files under ``directory``."""
    text = (REPO / "deploy" / "nginx.conf").read_text(encoding="utf-8")
    lines = list(_UPSTREAM.finditer(text))
    assert lines, "deploy/nginx.conf has no `server 127.0.0.1:PORT ...;` upstream lines"
    first = lines[0]
    servers = "\n".join(f"{first[1]}{port}{first[3]}" for port in upstream_ports)
    text = text[: first.start()] + servers + text[lines[-1].end():]
    assert "listen 8080;" in text
    text = text.replace("listen 8080;", f"listen 127.0.0.1:{listen_port};")
    text = text.replace("/tmp/helpline-nginx", str(directory / "nginx"))
    path = directory / "nginx.conf"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def start_proxy(tmp_path: Path) -> Iterator:
    if NGINX is None:
        pytest.skip("nginx is not installed (./dev test installs Debian's nginx-light when root)")
    procs: list[subprocess.Popen[bytes]] = []

    def start(upstream_ports: list[int]) -> str:
        port = free_port()
        config = proxy_config(tmp_path, port, upstream_ports)
        check = subprocess.run([NGINX, "-t", "-c", str(config)], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
        log = open(tmp_path / "nginx.log", "wb")
        procs.append(subprocess.Popen([NGINX, "-c", str(config), "-g", "daemon off;"], stdout=log, stderr=log))
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return f"http://127.0.0.1:{port}"
            except OSError:
                assert procs[-1].poll() is None, (tmp_path / "nginx.log").read_text()
                assert time.monotonic() < deadline, "nginx did not listen within 10 s"
                time.sleep(0.05)

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=10)


async def _kb_rows(database_url: str) -> tuple[int, int, int]:
    """(knowledge-base versions, documents, chunks) stored in the database."""
    from state.db import open_database

    db = open_database(database_url, pool_size=1)
    try:
        async with db.engine.connect() as conn:
            versions = (await conn.exec_driver_sql("SELECT count(DISTINCT kb_version) FROM kb_chunks")).scalar_one()
            documents = (await conn.exec_driver_sql("SELECT count(*) FROM kb_documents")).scalar_one()
            chunks = (await conn.exec_driver_sql("SELECT count(*) FROM kb_chunks")).scalar_one()
    finally:
        await db.dispose()
    return versions, documents, chunks


async def _closed_within(chat: ChatSocket, seconds: float) -> bool:
    """Whether the socket closes within ``seconds`` (frames still arriving are read and kept)."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            msg = await chat.ws.receive(timeout=left)
        except TimeoutError:
            return False
        if msg.type != aiohttp.WSMsgType.TEXT:
            return msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)
        chat.frames.append(msg.json())
    return False


@pytest.mark.fresh_database
async def test_the_example_proxy_spreads_sockets_and_survives_a_killed_process(
    server_factory, redis_url: str, start_proxy, http: aiohttp.ClientSession, database_url: str
) -> None:
    # As deploy/README.md says: the processes trust the proxy's X-Forwarded-For (and only its).
    behind_proxy = {"HELPLINE_REDIS_URL": redis_url, "HELPLINE_TRUSTED_PROXIES": "127.0.0.1"}
    a = server_factory(behind_proxy)
    b = server_factory(behind_proxy)
    # Started together on a new database: one migrates and ingests, the other waits or finds it done.
    await asyncio.gather(asyncio.to_thread(a.start), asyncio.to_thread(b.start))
    kb = a.health()["knowledge_base"]
    assert b.health()["knowledge_base"] == kb
    assert await _kb_rows(database_url) == (1, kb["documents"], kb["chunks"])
    url = await asyncio.to_thread(start_proxy, [a.port, b.port])

    with urllib.request.urlopen(url + "/readyz", timeout=5) as resp:
        assert resp.status == 200
    # The demo page served through the proxy may open the chat: its Origin is the proxy's own host
    # and port (the example used to pass Host without the port, and the widget was refused).
    page = await http.ws_connect(url + "/ws/chat", headers={"Origin": url})
    await page.send_json({"type": "hello", "session_id": None, "last_seq": 0})
    assert (await page.receive_json(timeout=10))["type"] == "welcome"
    await page.close()
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect(url + "/ws/chat", headers={"Origin": "http://127.0.0.1:1"})
    assert refused.value.status == 403
    # Two customers through the proxy: least_conn puts the second socket on the other process.
    chats = [await ChatSocket.open(http, url, labels=True) for _ in range(2)]
    for i, chat in enumerate(chats):
        await chat.send("hi", f"hello-{i}")
        assert (await chat.bot_reply())["meta"]["intent"] == "greeting"

    a.stop("kill")
    closed = await asyncio.gather(*(_closed_within(chat, 5.0) for chat in chats))
    assert sorted(closed) == [False, True], f"expected exactly one socket on the killed process: {closed}"
    victim, survivor = (chats[0], chats[1]) if closed[0] else (chats[1], chats[0])

    # The victim reconnects through the same address, resumes its session and is answered by b.
    last_seq = max(f["seq"] for f in victim.frames if f["type"] == "message")
    back = await ChatSocket.open(http, url, victim.session_id, last_seq=last_seq, labels=True)
    assert back.welcome["session_id"] == victim.session_id
    for chat in (back, survivor):
        await chat.send("what payment methods do you accept?", f"pay-{id(chat)}")
        assert (await chat.bot_reply())["meta"]["intent"] == "check_payment_methods"
    missed = [f for f in back.frames if f["type"] == "message" and f["seq"] <= last_seq]
    assert missed == [], f"frames the customer already had were sent again: {missed}"
    await back.close()
    await survivor.close()
