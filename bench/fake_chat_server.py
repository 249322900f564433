"""Throwaway dev server for the web-chat widget and the terminal client: the ``/ws/chat`` protocol with
an echo bot, everything in memory.

It serves ``channels/static/`` at ``/static/`` and ``index.html`` at ``/`` like the real server, so
the widget can be developed and tested before (and without) the real server. It is not Helpline: no
tickets beyond a fake id, no router, no persistence. Do not import it from the package.

Test-only controls (the real server has none of these):
- ``POST /_test/push?session_id=S&author=bot|agent|system&text=T``: store and deliver a message.
- ``POST /_test/drop?session_id=S``: close that session's sockets from the server side (all if no S).
- ``GET /_test/hellos``: the hello frames received so far, as JSON.

Run: ``python bench/fake_chat_server.py --port 0`` prints ``listening on http://127.0.0.1:PORT``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

STATIC_DIR = Path(__file__).resolve().parent.parent / "channels" / "static"
MAX_MESSAGE_CHARS = 4000
BOT_DELAY_S = 0.3


@dataclass(eq=False)  # identity-hashed: kept in a set
class _Connection:
    ws: web.WebSocketResponse
    queue: asyncio.Queue[dict[str, Any] | None] = field(default_factory=asyncio.Queue)


@dataclass
class _Session:
    session_id: str
    ticket_id: int
    messages: list[dict[str, Any]] = field(default_factory=list)
    by_client_id: dict[str, int] = field(default_factory=dict)
    connections: set[_Connection] = field(default_factory=set)
    # One bot turn at a time per customer, in arrival order, like the real ticket lock.
    turn_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def store(
        self, direction: str, author: str, text: str, client_message_id: str | None = None
    ) -> dict[str, Any]:
        frame: dict[str, Any] = {
            "type": "message",
            "seq": len(self.messages) + 1,
            "direction": direction,
            "author": author,
            "text": text,
            "ticket_id": self.ticket_id,
            "created_at": datetime.now(timezone.utc).isoformat(),
            "client_message_id": client_message_id,
            "meta": {"tier": "echo", "intent": "echo", "confidence": 1.0}
            if author == "bot"
            else None,
        }
        self.messages.append(frame)
        if client_message_id:
            self.by_client_id[client_message_id] = frame["seq"]
        self.broadcast(frame)
        return frame

    def broadcast(self, frame: dict[str, Any]) -> None:
        for conn in self.connections:
            conn.queue.put_nowait(frame)


SESSIONS = web.AppKey("sessions", dict[str, _Session])
HELLOS = web.AppKey("hellos", list[dict[str, Any]])


def _session_for(app: web.Application, session_id: Any) -> _Session:
    sessions = app[SESSIONS]
    if isinstance(session_id, str) and session_id in sessions:
        return sessions[session_id]
    new = _Session(session_id=uuid.uuid4().hex, ticket_id=len(sessions) + 1)
    sessions[new.session_id] = new
    return new


async def _writer(conn: _Connection) -> None:
    # A single writer per socket keeps frames in order: backlog first, then live ones.
    while True:
        frame = await conn.queue.get()
        if frame is None or conn.ws.closed:
            return
        await conn.ws.send_json(frame)


async def _bot_turn(session: _Session, text: str) -> None:
    async with session.turn_lock:
        session.broadcast({"type": "typing", "on": True})
        await asyncio.sleep(BOT_DELAY_S)
        if text.startswith("/agent "):
            session.store("outbound", "agent", text.removeprefix("/agent "))
        else:
            session.store("outbound", "bot", f"Echo: {text}")
        session.broadcast({"type": "typing", "on": False})


async def ws_chat(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(heartbeat=None)
    await ws.prepare(request)
    app = request.app
    session: _Session | None = None
    conn = _Connection(ws)
    writer: asyncio.Task[None] | None = None
    try:
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            try:
                frame = json.loads(msg.data)
                kind = frame["type"]
            except (ValueError, KeyError, TypeError):
                await ws.send_json({"type": "error", "code": "bad_frame", "message": "Not JSON."})
                continue
            if session is None:
                if kind != "hello":
                    await ws.send_json(
                        {"type": "error", "code": "bad_frame", "message": "Send hello first."}
                    )
                    continue
                app[HELLOS].append(frame)
                session = _session_for(app, frame.get("session_id"))
                last_seq = frame.get("last_seq") or 0
                # No await between registering and snapshotting the backlog: nothing is lost or doubled.
                session.connections.add(conn)
                conn.queue.put_nowait(
                    {
                        "type": "welcome",
                        "session_id": session.session_id,
                        "ticket_id": session.ticket_id,
                        "ticket_state": "open" if session.messages else None,
                    }
                )
                for stored in session.messages:
                    if stored["seq"] > last_seq:
                        conn.queue.put_nowait(stored)
                writer = asyncio.create_task(_writer(conn))
            elif kind == "ping":
                conn.queue.put_nowait({"type": "pong"})
            elif kind == "message":
                text = frame.get("text")
                client_id = frame.get("client_message_id")
                if not isinstance(text, str) or not text.strip():
                    conn.queue.put_nowait(
                        {"type": "error", "code": "empty_message", "message": "Empty message."}
                    )
                elif len(text) > MAX_MESSAGE_CHARS:
                    conn.queue.put_nowait(
                        {
                            "type": "error",
                            "code": "message_too_long",
                            "message": f"Messages are limited to {MAX_MESSAGE_CHARS} characters.",
                        }
                    )
                elif isinstance(client_id, str) and client_id in session.by_client_id:
                    conn.queue.put_nowait(
                        {
                            "type": "ack",
                            "client_message_id": client_id,
                            "seq": session.by_client_id[client_id],
                        }
                    )
                else:
                    stored = session.store("inbound", "customer", text, client_id)
                    conn.queue.put_nowait(
                        {"type": "ack", "client_message_id": client_id, "seq": stored["seq"]}
                    )
                    asyncio.create_task(_bot_turn(session, text))
            else:
                conn.queue.put_nowait(
                    {"type": "error", "code": "bad_frame", "message": f"Unknown type {kind!r}."}
                )
    finally:
        if session is not None:
            session.connections.discard(conn)
        conn.queue.put_nowait(None)
        if writer is not None:
            await asyncio.gather(writer, return_exceptions=True)
    return ws


async def test_push(request: web.Request) -> web.Response:
    session = request.app[SESSIONS].get(request.query.get("session_id", ""))
    if session is None:
        raise web.HTTPNotFound(text="unknown session")
    frame = session.store("outbound", request.query.get("author", "agent"), request.query["text"])
    return web.json_response({"seq": frame["seq"]})


async def test_drop(request: web.Request) -> web.Response:
    wanted = request.query.get("session_id")
    closing = [
        conn.ws
        for session in request.app[SESSIONS].values()
        if wanted is None or session.session_id == wanted
        for conn in list(session.connections)
    ]
    await asyncio.gather(*(ws.close() for ws in closing), return_exceptions=True)
    return web.json_response({"closed": len(closing)})


async def test_hellos(request: web.Request) -> web.Response:
    return web.json_response(request.app[HELLOS])


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html")


def make_app() -> web.Application:
    app = web.Application()
    app[SESSIONS] = {}
    app[HELLOS] = []
    app.router.add_get("/", index)
    app.router.add_get("/ws/chat", ws_chat)
    app.router.add_static("/static/", STATIC_DIR)
    app.router.add_post("/_test/push", test_push)
    app.router.add_post("/_test/drop", test_drop)
    app.router.add_get("/_test/hellos", test_hellos)
    return app


async def _serve(host: str, port: int) -> None:
    runner = web.AppRunner(make_app())
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    server = site._server  # the bound port is only known here when --port 0
    assert server is not None
    bound = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    print(f"listening on http://{host}:{bound}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args()
    try:
        asyncio.run(_serve(args.host, args.port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
