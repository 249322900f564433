"""``helpline chat``: the terminal client over a real websocket against a running server.

A small TCP proxy between client and server cuts the connection on demand, so the reconnect test
works against any server: while the client is cut off, another device of the same session talks to
the server directly, and after the reconnect the client must print what it missed exactly once.

A new conversation opens with the server's greeting (one ``bot>`` line that is not a stored message,
printed once, never on a resumed session) and its suggested questions numbered; a bot message's
quick replies are printed numbered under it.
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import socket
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from app_fixtures import idle, runtime
from test_webchat_greeting import store_bot_reply

from config.replies import DEFAULT_REPLIES_FILE, load_replies
from helpline.chat_client import run_chat, ws_url

REPO = Path(__file__).resolve().parents[1]
REPLY = re.compile(r"^(bot|agent|system)> ", re.MULTILINE)
GREETING = 1
"""``bot>`` lines of a new conversation that are not replies: the greeting."""
SHIPPED = load_replies(DEFAULT_REPLIES_FILE)




def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class TcpProxy:
    """Forwards 127.0.0.1:port to the server; ``cut()`` drops every connection and refuses new ones
    until ``restore()``."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.cut_off = False
        self.writers: set[asyncio.StreamWriter] = set()
        self.server: asyncio.Server | None = None
        self.url = ""

    async def start(self) -> "TcpProxy":
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cut_off:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self.writers -= {writer, up_writer}

    def cut(self) -> None:
        self.cut_off = True
        for writer in list(self.writers):
            writer.transport.abort()

    def restore(self) -> None:
        self.cut_off = False

    async def close(self) -> None:
        self.cut()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def until(predicate: Any, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def server_transcript(server_url: str, session_id: str) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(server_url + "/ws/chat")
        await ws.send_json({"type": "hello", "session_id": session_id, "last_seq": 0})
        got = []
        while True:
            try:
                frame = await ws.receive_json(timeout=1.0)
            except (asyncio.TimeoutError, TimeoutError):
                break
            if frame["type"] == "message":
                got.append(frame)
        await ws.close()
        return got


# ------------------------------------------------------------------------------------------------


def test_ws_url_from_base_url() -> None:
    assert ws_url("http://127.0.0.1:8080") == "ws://127.0.0.1:8080/ws/chat"
    assert ws_url("https://help.example.com/") == "wss://help.example.com/ws/chat"
    assert ws_url("https://example.com/helpline") == "wss://example.com/helpline/ws/chat"
    assert ws_url("localhost:9000") == "ws://localhost:9000/ws/chat"
    assert ws_url("ws://h/ws/chat") == "ws://h/ws/chat"
    with pytest.raises(ValueError):
        ws_url("ftp://example.com")


async def test_prints_the_reply(server_url: str) -> None:
    out, err = io.StringIO(), io.StringIO()
    code = await run_chat(server_url, stdin=io.StringIO("hello\n"), stdout=out, stderr=err)
    text = out.getvalue()
    assert code == 0, err.getvalue()
    assert re.search(r"^session \S+, ", text, re.MULTILINE)
    assert text.count("you> hello\n") == 1  # piped input is shown once
    assert REPLY.search(text), text
    assert "meta" not in text and "confidence" not in text


async def test_quit_and_resume_session_shows_history_once(server_url: str) -> None:
    out = io.StringIO()
    assert await run_chat(server_url, stdin=io.StringIO("hello\n/quit\nnot sent\n"), stdout=out) == 0
    first = out.getvalue()
    assert "not sent" not in first
    session_id = re.search(r"^session (\S+),", first, re.MULTILINE).group(1)  # type: ignore[union-attr]

    again = io.StringIO()
    assert await run_chat(server_url, session_id=session_id, stdin=io.StringIO(""), stdout=again) == 0
    resumed = again.getvalue()
    assert f"session {session_id}," in resumed
    assert resumed.count("you> hello\n") == 1  # the history, once
    assert len(REPLY.findall(resumed)) == len(REPLY.findall(first)) - GREETING  # not greeted again
    assert first.count(SHIPPED.greeting_text()) == 1 and SHIPPED.greeting_text() not in resumed


async def test_unreachable_server_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    err = io.StringIO()
    assert await run_chat(url, stdin=io.StringIO("hello\n"), stdout=io.StringIO(), stderr=err) == 2
    assert err.getvalue().startswith(f"cannot reach Helpline at {url}: ")
    # Default streams are the process's at call time.
    assert await run_chat(url, stdin=io.StringIO("")) == 2
    assert f"cannot reach Helpline at {url}: " in capsys.readouterr().err


async def test_a_refused_session_id_is_reported_as_refused_not_unreachable(server_url: str) -> None:
    err = io.StringIO()
    for made_up in ("bad", "a-session-id-i-made-up"):  # malformed, and well-formed but never issued
        err = io.StringIO()
        code = await run_chat(server_url, session_id=made_up, stdin=io.StringIO("hi\n"), stdout=io.StringIO(), stderr=err)
        assert code == 2
        assert err.getvalue().startswith(f"Helpline at {server_url}: the server refused the session: ")
        assert "session" in err.getvalue().split("refused the session: ")[1]


async def test_not_a_helpline_server_exits_2(server_url: str) -> None:
    err = io.StringIO()
    code = await run_chat(server_url + "/nowhere", stdin=io.StringIO(""), stdout=io.StringIO(), stderr=err)
    assert code == 2 and "cannot reach Helpline at" in err.getvalue()


async def test_reconnect_prints_missed_messages_once_and_sends_queued_lines(server_url: str) -> None:
    host, port = re.match(r"http://([^:/]+):(\d+)", server_url).groups()  # type: ignore[union-attr]
    proxy = await TcpProxy(host, int(port)).start()
    read_fd, write_fd = os.pipe()
    stdin, feed = os.fdopen(read_fd, "r"), os.fdopen(write_fd, "w")
    out, err = io.StringIO(), io.StringIO()
    chat = asyncio.create_task(run_chat(proxy.url, stdin=stdin, stdout=out, stderr=err, drain_timeout=20))
    try:
        # Questions the real bot answers (an unclear one is handed to a human, who answers later).
        feed.write("hello\n")
        feed.flush()
        await until(lambda: len(REPLY.findall(out.getvalue())) >= GREETING + 1, what="the first reply")
        session_id = re.search(r"^session (\S+),", out.getvalue(), re.MULTILINE).group(1)  # type: ignore[union-attr]

        proxy.cut()
        await until(lambda: "(connection lost" in out.getvalue(), what="the drop to be noticed")
        feed.write("What is your return policy?\n")
        feed.flush()

        # Another device of the same customer talks to the server while this client is cut off.
        async with aiohttp.ClientSession() as http:
            other = await http.ws_connect(server_url + "/ws/chat")
            await other.send_json({"type": "hello", "session_id": session_id, "last_seq": 0})
            client_id = str(uuid.uuid4())
            await other.send_json({"type": "message", "text": "How long does shipping take?", "client_message_id": client_id})
            acked = None
            while True:
                frame = await other.receive_json(timeout=30)
                if frame["type"] == "ack" and frame["client_message_id"] == client_id:
                    acked = frame["seq"]
                if acked and frame["type"] == "message" and frame["direction"] == "outbound" and frame["seq"] > acked:
                    break
            await other.close()

        proxy.restore()
        await until(lambda: "(reconnected)" in out.getvalue(), what="the reconnect")
        await until(lambda: len(REPLY.findall(out.getvalue())) >= GREETING + 3, what="the replies after reconnecting")
        feed.close()  # EOF: exits once every sent line is answered
        assert await asyncio.wait_for(chat, 30) == 0, err.getvalue()
    finally:
        if not chat.done():
            chat.cancel()
        await proxy.close()

    text = out.getvalue()
    assert text.count("you> How long does shipping take?\n") == 1  # from the other device
    assert text.count("you> What is your return policy?\n") == 1  # typed while cut off
    stored = await server_transcript(server_url, session_id)
    assert [f["text"] for f in stored if f["direction"] == "inbound"] == [
        "hello", "How long does shipping take?", "What is your return policy?",
    ]  # the queued line was stored once although it may have been sent twice
    outbound = [f for f in stored if f["direction"] == "outbound"]
    assert len(REPLY.findall(text)) == GREETING + len(outbound)  # every reply printed, none twice


async def test_a_new_conversation_prints_the_greeting_and_a_number_picks_a_suggestion(server_url: str) -> None:
    out, err = io.StringIO(), io.StringIO()
    code = await run_chat(server_url, stdin=io.StringIO("2\n"), stdout=out, stderr=err)
    assert code == 0, err.getvalue()
    text = out.getvalue()
    numbered = "".join(f"     {n}) {label}\n" for n, label in enumerate(SHIPPED.suggestions, start=1))
    assert f"bot> {SHIPPED.greeting_text()}\n{numbered}" in text
    second = SHIPPED.suggestions[1]
    # The greeting is not stored, so the server could not map "2": the client sends the suggestion.
    assert text.count(f"you> {second}\n") == 1 and "you> 2\n" not in text
    session_id = re.search(r"^session (\S+),", text, re.MULTILINE).group(1)  # type: ignore[union-attr]
    stored = await server_transcript(server_url, session_id)
    assert [f["text"] for f in stored if f["direction"] == "inbound"] == [second]
    assert len([f for f in stored if f["direction"] == "outbound"]) >= 1  # and the bot answered it


async def test_quick_replies_are_numbered_and_a_number_is_sent_as_typed(helpline_client: Any) -> None:
    rt = runtime(helpline_client)
    url = str(helpline_client.make_url("/")).rstrip("/")
    read_fd, write_fd = os.pipe()
    stdin, feed = os.fdopen(read_fd, "r"), os.fdopen(write_fd, "w")
    out, err = io.StringIO(), io.StringIO()
    chat = asyncio.create_task(run_chat(url, stdin=stdin, stdout=out, stderr=err, drain_timeout=20))
    try:
        feed.write("hello\n")
        feed.flush()
        await until(lambda: len(REPLY.findall(out.getvalue())) >= GREETING + 1, what="the first reply")
        await idle(rt)
        session_id = re.search(r"^session (\S+),", out.getvalue(), re.MULTILINE).group(1)  # type: ignore[union-attr]
        await store_bot_reply(rt, session_id, "Which of these is it about?", {
            "tier": "deterministic", "confidence": 0.3, "quick_replies": ["Track my order", "Get a refund"],
        })
        await until(lambda: "2) Get a refund" in out.getvalue(), what="the quick replies")
        feed.write("2\n")
        feed.close()  # EOF: exits once the line is answered
        assert await asyncio.wait_for(chat, 40) == 0, err.getvalue()
    finally:
        if not chat.done():
            chat.cancel()
    text = out.getvalue()
    assert "bot> Which of these is it about?\n     1) Track my order\n     2) Get a refund\n" in text
    assert "0.3" not in text and "deterministic" not in text
    stored = await server_transcript(url, session_id)
    assert [f["text"] for f in stored if f["direction"] == "inbound"] == ["hello", "2"]  # as typed
