"""A throwaway stand-in for ``helpline serve``: just enough of ``GET /ws/chat`` and ``GET /healthz``
to test ``helpline replay`` and ``bench/replay_latency.py`` before the real server lands.

It speaks the chat protocol frame for frame (hello/welcome, ack, inbound echo, typing, outbound reply
with ``meta``) but answers from a fixed keyword table instead of a router. It must not grow into a
second server: once the real one exists, tests use that and this file goes.

Run: ``python bench/fake_replay_server.py --port 8099 [--mode reply|silent|error|close] [--delay-ms 5]``
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import uuid
from datetime import UTC, datetime
from typing import Any

from aiohttp import WSMsgType, web

MODES = ("reply", "silent", "error", "close")
"""reply: answer every message; silent: ack but never answer; error: answer with an error frame;
close: close the socket after the ack."""

# keyword -> (intent, tier, escalated); first match wins, no match -> no intent, human tier.
RULES: tuple[tuple[str, str, str, bool], ...] = (
    ("refund", "get_refund", "retrieval", False),
    ("track", "track_order", "deterministic", False),
    ("cancel", "cancel_order", "deterministic", False),
    ("invoice", "get_invoice", "reasoning", False),
    ("agent", "contact_human_agent", "human", True),
)

MODE_KEY = web.AppKey("mode", str)
DELAY_KEY = web.AppKey("delay_s", float)
SEQ_KEY = web.AppKey("seq", itertools.count)
TEXTS_KEY = web.AppKey("texts", list)  # every customer text received, for tests to inspect


def classify(text: str) -> dict[str, Any]:
    lowered = text.lower()
    for keyword, intent, tier, escalated in RULES:
        if keyword in lowered:
            return {"tier": tier, "intent": intent, "confidence": 0.9, "escalated": escalated}
    return {"tier": "human", "intent": None, "confidence": 0.2, "escalated": True}


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def chat(request: web.Request) -> web.WebSocketResponse:
    app = request.app
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    ticket_id = next(app[SEQ_KEY])
    seq = 0
    async for msg in ws:
        if msg.type != WSMsgType.TEXT:
            continue
        try:
            frame = json.loads(msg.data)
        except ValueError:
            await ws.send_json({"type": "error", "code": "bad_frame", "message": "not JSON"})
            continue
        kind = frame.get("type")
        if kind == "hello":
            await ws.send_json(
                {"type": "welcome", "session_id": uuid.uuid4().hex, "ticket_id": None, "ticket_state": None}
            )
            continue
        if kind != "message":
            await ws.send_json({"type": "error", "code": "bad_frame", "message": f"unknown type {kind!r}"})
            continue
        text = str(frame.get("text") or "")
        if not text.strip():
            await ws.send_json({"type": "error", "code": "empty_message", "message": "empty message"})
            continue
        app[TEXTS_KEY].append(text)
        seq += 1
        await ws.send_json({"type": "ack", "client_message_id": frame.get("client_message_id"), "seq": seq})
        if app[MODE_KEY] == "close":
            await ws.close()
            break
        await ws.send_json(
            {"type": "message", "seq": seq, "direction": "inbound", "author": "customer", "text": text,
             "ticket_id": ticket_id, "created_at": datetime.now(UTC).isoformat(),
             "client_message_id": frame.get("client_message_id")}
        )
        if app[MODE_KEY] == "silent":
            continue
        if app[MODE_KEY] == "error":
            await ws.send_json({"type": "error", "code": "message_too_long", "message": "too long"})
            continue
        await ws.send_json({"type": "typing", "on": True})
        await asyncio.sleep(app[DELAY_KEY])
        seq += 1
        meta = classify(text) | {"latency_ms": app[DELAY_KEY] * 1000}
        await ws.send_json(
            {"type": "message", "seq": seq, "direction": "outbound", "author": "bot",
             "text": f"fake answer for {meta['intent']}", "ticket_id": ticket_id,
             "created_at": datetime.now(UTC).isoformat(), "client_message_id": None, "meta": meta}
        )
    return ws


def make_app(mode: str = "reply", delay_ms: float = 0.0) -> web.Application:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}")
    app = web.Application()
    app[MODE_KEY] = mode
    app[DELAY_KEY] = delay_ms / 1000
    app[SEQ_KEY] = itertools.count(1)
    app[TEXTS_KEY] = []
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/ws/chat", chat)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8099)
    parser.add_argument("--mode", choices=MODES, default="reply")
    parser.add_argument("--delay-ms", type=float, default=0.0)
    args = parser.parse_args()
    web.run_app(make_app(args.mode, args.delay_ms), host=args.host, port=args.port, print=None)


if __name__ == "__main__":
    main()
