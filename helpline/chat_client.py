"""Terminal client for the web-chat channel: ``helpline chat [URL]``.

Speaks the same ``/ws/chat`` websocket protocol as the browser widget, so it exercises the real channel
end to end. It prints the conversation (``bot> ``, ``agent> ``, ``you> ``), sends each stdin line as a
customer message, and reconnects with ``last_seq`` when the socket drops so nothing is missed or shown
twice. It persists nothing; to resume a conversation pass the session id it printed.

Quick replies (a bot message's ``meta.quick_replies``) are printed numbered under the message
(``1) Track my order``); typing the number sends the number as is, and the server maps it to the
option. A new conversation opens with the server's greeting and its suggested questions, numbered
too; those are not stored on the server, so while they are the latest options the client sends the
suggestion's text for its number.

It is a client only: it must not import the server, the router or the database.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any, TextIO
from urllib.parse import urlsplit, urlunsplit

import aiohttp

DEFAULT_URL = "http://127.0.0.1:8080"
CONNECT_TIMEOUT_S = 10.0
DRAIN_TIMEOUT_S = 5.0
"""After /quit or EOF, the most to wait for replies still owed to what was sent."""
QUIET_S = 1.0
"""No frame for this long, nothing unacked and the bot not typing: the conversation has settled
(the backlog is in, or the bot will not answer, e.g. after a handoff to a human)."""
RECONNECT_GIVE_UP_S = 60.0
PING_EVERY_S = 25.0
MAX_SEND_CHARS = 10_000
"""Longer lines are refused here: the server closes the socket on frames over 256 KB, and an
unsendable message would be resent on every reconnect."""

_PREFIXES = {"bot": "bot> ", "agent": "agent> ", "customer": "you> ", "system": "system> "}
_QUIT = "/quit"
MAX_OPTIONS = 4
"""Quick replies shown under one message (the server sends at most this many)."""


class _Unreachable(Exception):
    """The server could not be reached, or is not a Helpline server."""


class _Refused(Exception):
    """The server answered and refused the hello (e.g. a malformed --session id)."""


def ws_url(base_url: str) -> str:
    """``http(s)://HOST[/prefix]`` -> ``ws(s)://HOST[/prefix]/ws/chat`` (ws URLs pass through)."""
    raw = base_url.strip() or DEFAULT_URL
    if "://" not in raw:
        raw = "http://" + raw
    parts = urlsplit(raw)
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme.lower())
    if scheme is None or not parts.netloc:
        raise ValueError(f"not an http(s) URL: {base_url!r}")
    path = parts.path.rstrip("/")
    if not path.endswith("/ws/chat"):
        path += "/ws/chat"
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))


@dataclass
class _Pending:
    client_message_id: str
    text: str
    seq: int | None = None  # set by the ack


@dataclass
class _Conversation:
    """What survives a reconnect, in memory only."""

    session_id: str | None
    last_seq: int = 0
    sent: dict[str, _Pending] = field(default_factory=dict)  # by client_message_id, in send order
    last_reply_seq: int = 0
    typing: bool = False
    last_frame_at: float = 0.0

    def unacked(self) -> list[_Pending]:
        return [p for p in self.sent.values() if p.seq is None]

    def settled(self, now: float) -> bool:
        """Nothing more is owed: every line is stored, and either a reply came after the last one or
        the server has been quiet (the protocol has no end-of-backlog or no-reply-coming frame)."""
        if self.unacked() or self.typing:
            return False
        quiet_for = now - self.last_frame_at
        last_sent = max((p.seq or 0 for p in self.sent.values()), default=0)
        if self.sent and self.last_reply_seq > last_sent:
            return quiet_for >= 0.2  # a second reply may follow right behind the first
        return quiet_for >= QUIET_S


class _Printer:
    def __init__(self, out: TextIO) -> None:
        self._out = out

    def line(self, text: str) -> None:
        self._out.write(text + "\n")
        self._out.flush()

    def message(self, author: str, text: str, options: list[str] | None = None) -> None:
        """One message; ``options`` (quick replies) numbered under it, indented like its text."""
        prefix = _PREFIXES.get(author, f"{author}> ")
        # Continuation lines are indented under the text so a multi-line reply reads as one message.
        indent = "\n" + " " * len(prefix)
        self.line(prefix + text.replace("\n", indent))
        for number, option in enumerate(options or (), start=1):
            self.line(f"{' ' * len(prefix)}{number}) {option.replace(chr(10), ' ')}")


def quick_replies(value: Any) -> list[str]:
    """The labels of a frame's ``meta.quick_replies`` (or a greeting's ``suggestions``) to print:
    the non-blank strings, at most :data:`MAX_OPTIONS`; ``[]`` for anything else."""
    if not isinstance(value, list):
        return []
    return [v for v in value if isinstance(v, str) and v.strip()][:MAX_OPTIONS]


def _start_stdin_reader(stdin: TextIO, loop: asyncio.AbstractEventLoop) -> asyncio.Queue[str | None]:
    """Lines from stdin through a daemon thread, so a blocking terminal read never holds the event
    loop nor the interpreter's exit. None marks EOF."""
    queue: asyncio.Queue[str | None] = asyncio.Queue()

    def pump() -> None:
        try:
            for line in iter(stdin.readline, ""):
                loop.call_soon_threadsafe(queue.put_nowait, line.rstrip("\r\n"))
        except (OSError, ValueError):
            pass  # stdin closed under us: same as EOF
        finally:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, None)
            except RuntimeError:
                pass  # loop already closed: nobody is waiting

    threading.Thread(target=pump, name="helpline-chat-stdin", daemon=True).start()
    return queue


class _Client:
    def __init__(
        self,
        url: str,
        session_id: str | None,
        stdin: TextIO,
        stdout: TextIO,
        stderr: TextIO,
        drain_timeout: float,
    ) -> None:
        self.url = url
        self.endpoint = ws_url(url)
        self.conv = _Conversation(session_id=session_id)
        self.out = _Printer(stdout)
        self.err = _Printer(stderr)
        self.stdin = stdin
        # Piped input arrives all at once: pace it like a person would, one line per reply, and show
        # the lines (a terminal already shows what the user typed).
        self.scripted = not _isatty(stdin)
        self.drain_timeout = drain_timeout
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.welcomed = 0
        self.greeted = False
        # The greeting's suggestions while they are the latest options: a number typed then is
        # sent as the suggestion's text (the server never stored the greeting, so cannot map it).
        self.suggestions: list[str] = []

    async def run(self) -> int:
        async with aiohttp.ClientSession() as http:
            try:
                await self._connect(http)
            except _Unreachable as exc:
                self.err.line(f"cannot reach Helpline at {self.url}: {exc}")
                return 2
            except _Refused as exc:
                self.err.line(f"Helpline at {self.url}: {exc}")
                return 2
            lines = _start_stdin_reader(self.stdin, asyncio.get_running_loop())
            receiver = asyncio.create_task(self._receive_forever(http))
            try:
                code = await self._send_lines(lines, receiver)
            finally:
                receiver.cancel()
                await asyncio.gather(receiver, return_exceptions=True)
                if self.ws is not None:
                    await self.ws.close()
            return code

    # ------------------------------------------------------------------ connection

    async def _connect(self, http: aiohttp.ClientSession) -> None:
        try:
            ws = await asyncio.wait_for(
                http.ws_connect(self.endpoint, timeout=aiohttp.ClientWSTimeout(ws_close=5.0)),
                CONNECT_TIMEOUT_S,
            )
        except aiohttp.WSServerHandshakeError as exc:
            raise _Unreachable(f"no web-chat endpoint at {self.endpoint} (HTTP {exc.status})") from exc
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
            raise _Unreachable(str(exc) or type(exc).__name__) from exc
        try:
            await ws.send_json(
                {"type": "hello", "session_id": self.conv.session_id, "last_seq": self.conv.last_seq}
            )
            welcome = await asyncio.wait_for(self._next_frame(ws), CONNECT_TIMEOUT_S)
        except (asyncio.TimeoutError, aiohttp.ClientError, ConnectionError) as exc:
            await ws.close()
            raise _Unreachable("no welcome from the server") from exc
        if welcome is not None and welcome.get("type") == "error":
            await ws.close()
            raise _Refused(f"the server refused the session: {welcome.get('message') or welcome.get('code')}")
        if welcome is None or welcome.get("type") != "welcome":
            await ws.close()
            raise _Unreachable(f"unexpected first frame {welcome!r}")
        self._on_welcome(welcome)
        self.conv.last_frame_at = asyncio.get_running_loop().time()
        self.ws = ws
        # Anything typed while the socket was down goes out now; the ids make it idempotent.
        for pending in self.conv.unacked():
            await self._send_message(pending)

    @staticmethod
    async def _next_frame(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any] | None:
        while True:
            msg = await ws.receive()
            if msg.type == aiohttp.WSMsgType.TEXT:
                try:
                    frame = json.loads(msg.data)
                except ValueError:
                    continue
                if isinstance(frame, dict):
                    return frame
            elif msg.type in (
                aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED,
                aiohttp.WSMsgType.ERROR,
            ):
                return None

    def _on_welcome(self, frame: dict[str, Any]) -> None:
        session_id = frame.get("session_id")
        if self.conv.session_id is not None and session_id != self.conv.session_id:
            # The server does not know our session any more: what we saw belongs to the old one.
            self.out.line(f"(the server started a new conversation; session {session_id})")
            self.conv.last_seq = 0
            self.conv.last_reply_seq = 0
        self.conv.session_id = session_id if isinstance(session_id, str) else None
        if frame.get("resync"):
            # We remembered messages the server does not have (a restored database): what follows
            # is the server's transcript, shown again from its position.
            self.out.line("(the conversation was resynchronised with the server)")
            self.conv.last_seq = self.conv.last_reply_seq = 0
        self.welcomed += 1
        if self.welcomed == 1:
            ticket = frame.get("ticket_id")
            state = frame.get("ticket_state")
            ticket_text = "no ticket yet" if ticket is None else f"ticket #{ticket}"
            if ticket is not None and state:
                ticket_text += f" ({state})"
            self.out.line(f"Connected to Helpline at {self.url}")
            self.out.line(f"session {self.conv.session_id}, {ticket_text}. Type /quit to leave.")
        else:
            self.out.line("(reconnected)")
        self._greet(frame)

    def _greet(self, frame: dict[str, Any]) -> None:
        """Print the welcome's greeting once, while the conversation has no messages."""
        greeting = frame.get("greeting")
        if self.greeted or frame.get("last_seq") != 0 or self.conv.last_seq or self.conv.sent:
            return
        if not isinstance(greeting, dict) or not isinstance(greeting.get("text"), str):
            return
        self.greeted = True
        self.suggestions = quick_replies(greeting.get("suggestions"))
        self.out.message("bot", greeting["text"], self.suggestions)

    async def _receive_forever(self, http: aiohttp.ClientSession) -> None:
        while True:
            ws = self.ws
            if ws is not None:
                pinger = asyncio.create_task(self._ping(ws))
                try:
                    while (frame := await self._next_frame(ws)) is not None:
                        self._on_frame(frame)
                finally:
                    pinger.cancel()
                self.ws = None
                self.conv.typing = False
            await self._reconnect(http)

    async def _ping(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        while not ws.closed:
            await asyncio.sleep(PING_EVERY_S)
            try:
                await ws.send_json({"type": "ping"})
            except (ConnectionError, RuntimeError):
                return

    async def _reconnect(self, http: aiohttp.ClientSession) -> None:
        self.out.line("(connection lost, reconnecting...)")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RECONNECT_GIVE_UP_S
        attempt = 0
        while True:
            cap = min(10.0, 0.5 * 2**attempt)
            await asyncio.sleep(cap / 2 + random.random() * cap / 2)  # backoff with jitter
            attempt += 1
            try:
                await self._connect(http)
                return
            except _Unreachable as exc:
                if loop.time() > deadline:
                    raise _Lost(str(exc)) from exc

    def _on_frame(self, frame: dict[str, Any]) -> None:
        self.conv.last_frame_at = asyncio.get_running_loop().time()
        kind = frame.get("type")
        if kind == "message":
            seq = frame.get("seq")
            if not isinstance(seq, int) or seq <= self.conv.last_seq:
                return  # already shown
            self.conv.last_seq = seq
            self.suggestions = []  # the conversation has begun: the greeting's options are gone
            author = str(frame.get("author") or "system")
            client_id = frame.get("client_message_id")
            mine = self.conv.sent.get(client_id) if isinstance(client_id, str) else None
            if mine is not None:
                mine.seq = seq  # typed here: already on screen
            else:
                meta = frame.get("meta")
                options = quick_replies(meta.get("quick_replies")) if isinstance(meta, dict) else []
                self.out.message(author, str(frame.get("text") or ""), options)
            if frame.get("direction") == "outbound":
                self.conv.last_reply_seq = seq
                self.conv.typing = False
        elif kind == "typing":
            self.conv.typing = bool(frame.get("on"))
        elif kind == "ack":
            pending = self.conv.sent.get(str(frame.get("client_message_id")))
            if pending is not None and isinstance(frame.get("seq"), int):
                pending.seq = frame["seq"]
        elif kind == "error":
            self.conv.typing = False
            self.out.line(f"error: {frame.get('message') or frame.get('code')}")
            unacked = self.conv.unacked()
            target = self.conv.sent.get(str(frame.get("client_message_id")))
            if target is None and frame.get("code") in ("message_too_long", "empty_message") and unacked:
                target = unacked[0]
            if target is not None:
                # Not stored and never will be: stop waiting for it and don't resend it.
                del self.conv.sent[target.client_message_id]

    # ------------------------------------------------------------------ sending

    async def _send_message(self, pending: _Pending) -> None:
        ws = self.ws
        if ws is None or ws.closed:
            return  # resent by _connect once the socket is back
        try:
            await ws.send_json(
                {"type": "message", "text": pending.text, "client_message_id": pending.client_message_id}
            )
        except (ConnectionError, RuntimeError):
            pass

    async def _wait_settled(self, receiver: asyncio.Task[None], timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.conv.settled(loop.time()) and not receiver.done() and loop.time() < deadline:
            await asyncio.sleep(0.05)

    async def _send_lines(self, lines: asyncio.Queue[str | None], receiver: asyncio.Task[None]) -> int:
        while True:
            next_line = asyncio.ensure_future(lines.get())
            await asyncio.wait({next_line, receiver}, return_when=asyncio.FIRST_COMPLETED)
            if receiver.done():
                next_line.cancel()
                return self._receiver_result(receiver)
            line = next_line.result()
            if line is None or line.strip() == _QUIT:
                await self._wait_settled(receiver, self.drain_timeout)
                return self._receiver_result(receiver) if receiver.done() else 0
            if not line.strip():
                continue
            if len(line) > MAX_SEND_CHARS:
                self.out.line(f"error: that line is too long to send ({len(line)} characters, limit {MAX_SEND_CHARS})")
                continue
            if self.scripted:
                await self._wait_settled(receiver, self.drain_timeout)
            line = self._pick_suggestion(line)
            if self.scripted:
                self.out.message("customer", line)
            pending = _Pending(client_message_id=str(uuid.uuid4()), text=line)
            self.conv.sent[pending.client_message_id] = pending
            await self._send_message(pending)

    def _pick_suggestion(self, line: str) -> str:
        """``line``, or the greeting's suggestion it numbers (``"2"`` while the greeting's options
        are the latest). Numbers answering a stored message's quick replies go as typed."""
        suggestions, self.suggestions = self.suggestions, []
        number = line.strip()
        if number.isdecimal() and 1 <= int(number) <= len(suggestions):
            return suggestions[int(number) - 1]
        return line

    def _receiver_result(self, receiver: asyncio.Task[None]) -> int:
        exc = receiver.exception() if not receiver.cancelled() else None
        if isinstance(exc, _Lost):
            self.err.line(f"lost the connection to Helpline at {self.url}: {exc}")
            return 1
        if exc is not None:
            raise exc
        return 1


class _Lost(Exception):
    """The connection dropped and could not be re-established."""


def _isatty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


async def run_chat(
    url: str = DEFAULT_URL,
    *,
    session_id: str | None = None,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    drain_timeout: float = DRAIN_TIMEOUT_S,
) -> int:
    """Chat with a Helpline server from the terminal. Returns the process exit code:
    0 after /quit or EOF, 1 when the connection is lost for good, 2 when the server is unreachable.

    Streams default to ``sys.stdin``/``sys.stdout``/``sys.stderr`` at call time (not import time),
    so captured or redirected streams are honoured.
    """
    try:
        client = _Client(
            url,
            session_id,
            stdin if stdin is not None else sys.stdin,
            stdout if stdout is not None else sys.stdout,
            stderr if stderr is not None else sys.stderr,
            drain_timeout,
        )
    except ValueError as exc:
        (stderr or sys.stderr).write(f"cannot reach Helpline at {url}: {exc}\n")
        return 2
    return await client.run()
