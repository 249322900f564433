"""Two attacks on a real ``helpline serve``, measured (docs/public-exposure.md, docs/benchmarks.md).

1. **Costly messages.** An ordinary customer sends typical questions one after another and times
   send -> reply, first alone, then while three attackers (each its own address, as behind the shipped
   proxy) send costly 4,000-character messages (``bench/turn_cost.py``) as fast as the server lets
   them. Target: the customer's p95 at most 2x the unloaded p95. Run twice: attackers within the
   server's per-address limits, and a "botnet" that uses a new address for every message.
2. **Clients that never read.** One session stores sixty 200 KB messages (the server keeps
   ``max_stored_chars`` of each), then each round opens twenty sockets that say hello with
   ``last_seq`` 0 and never read. The server's RSS is read after every round. Target: bounded.

The server runs with ``HELPLINE_TRUSTED_PROXIES=127.0.0.1`` so that ``X-Forwarded-For`` gives each
client its own address (the per-address limits apply per client, as in production behind a proxy);
every other setting is the default.

Run from the repository root:
    .venv/bin/python bench/attack.py            # writes bench/results/attack.json

Exit status: 0 when the latency target (three attackers) holds and the memory stays bounded (under
10 MB for all the rounds of non-reading sockets together), 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
# Attackers come from many addresses (10.x.y.z, forwarded by "the proxy", this machine).
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from replay_latency import free_port, machine_info, read_memory_mb, stop_server, wait_healthy  # noqa: E402
from turn_cost import FALLBACK_TYPICAL, answered_long, worst_cases  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "attack.json"


async def _chat(http: aiohttp.ClientSession, url: str, address: str) -> aiohttp.ClientWebSocketResponse:
    ws = await http.ws_connect(url + "/ws/chat", headers={"X-Forwarded-For": address})
    await ws.send_json({"type": "hello", "session_id": None, "last_seq": 0})
    welcome = await ws.receive_json(timeout=30)
    if welcome.get("type") != "welcome":
        raise RuntimeError(f"no welcome: {welcome}")
    return ws


async def _ask(ws: aiohttp.ClientWebSocketResponse, text: str) -> float | None:
    """Send ``text``; ms until the bot's reply, or None when refused (rate limit)."""
    started = time.perf_counter()
    await ws.send_json({"type": "message", "text": text, "client_message_id": uuid.uuid4().hex})
    while True:
        frame = await ws.receive_json(timeout=30)
        if frame.get("type") == "error":
            return None
        if frame.get("type") == "message" and frame.get("direction") == "outbound":
            return (time.perf_counter() - started) * 1000


async def customer_latencies(url: str, n: int) -> list[float]:
    async with aiohttp.ClientSession() as http:
        times: list[float] = []
        for i in range(n):
            ws = await _chat(http, url, f"198.51.100.{i % 200 + 1}")  # a fresh ordinary customer each time
            took = await _ask(ws, FALLBACK_TYPICAL[i % len(FALLBACK_TYPICAL)])
            await ws.close()
            if took is not None:
                times.append(took)
        return times


async def attacker(url: str, index: int, stop: asyncio.Event, sent: list[int], botnet: bool) -> None:
    """Send costly 4,000-character messages back to back.

    ``botnet=False``: one client address per attacker, the server's limits as configured: the
    attacker sends costly messages that the bot answers without handing over (questions repeated to
    4,000 characters, so every one is routed in full and the session stays open) on one session,
    and waits a second whenever it is refused. ``botnet=True``: every message from a new session
    and a new address, cycling through the worst cases (per-address limits cannot slow it down).
    """
    texts = list(worst_cases(index).values()) if botnet else [answered_long(k) for k in range(5)]
    async with aiohttp.ClientSession() as http:
        ws: aiohttp.ClientWebSocketResponse | None = None
        i = 0
        while not stop.is_set():
            address = f"10.{index}.{i // 250 % 250}.{i % 250 + 1}" if botnet else f"203.0.113.{index + 1}"
            try:
                if ws is None or botnet:
                    ws = await _chat(http, url, address)
                took = await _ask(ws, f"{i} {texts[i % len(texts)]}"[:4000])
                if took is not None:
                    sent[0] += 1
                else:
                    await asyncio.sleep(1.0)  # refused: over a rate limit
                if botnet:
                    await ws.close()
            except (RuntimeError, asyncio.TimeoutError, TimeoutError, aiohttp.ClientError):
                ws = None
                await asyncio.sleep(1.0)
            i += 1
        if ws is not None:
            await ws.close()


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, int(round(0.95 * (len(ordered) - 1))))]


async def costly_messages(url: str, n: int, botnet: bool) -> dict[str, Any]:
    alone = await customer_latencies(url, n)
    stop = asyncio.Event()
    sent = [0]
    attackers = [asyncio.create_task(attacker(url, i, stop, sent, botnet)) for i in range(3)]
    await asyncio.sleep(2.0)
    started = time.perf_counter()
    loaded = await customer_latencies(url, n)
    seconds = time.perf_counter() - started
    stop.set()
    await asyncio.gather(*attackers, return_exceptions=True)
    return {
        "customer_messages": n,
        "unloaded_ms": {"p50": round(statistics.median(alone), 1), "p95": round(_p95(alone), 1)},
        "under_attack_ms": {"p50": round(statistics.median(loaded), 1), "p95": round(_p95(loaded), 1)},
        "attack_messages_answered": sent[0],
        "attack_messages_per_s": round(sent[0] / seconds, 1),
        "p95_ratio": round(_p95(loaded) / _p95(alone), 2),
    }


def _silent_socket(port: int, session_id: str) -> socket.socket:
    """A websocket that says hello with last_seq 0 and then never reads (4 KB receive buffer)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET /ws/chat HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"X-Forwarded-For: 192.0.2.{os.getpid() % 200 + 1}\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    payload = json.dumps({"type": "hello", "session_id": session_id, "last_seq": 0}).encode()
    mask = os.urandom(4)
    header = bytes([0x81, 0x80 | 126]) + struct.pack("!H", len(payload))
    sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
    return sock


async def non_reading_clients(url: str, port: int, pid: int, rounds: int) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(url + "/ws/chat", headers={"X-Forwarded-For": "192.0.2.251"})
        await ws.send_json({"type": "hello", "session_id": None, "last_seq": 0})
        session_id = (await ws.receive_json(timeout=30))["session_id"]
        for i in range(60):
            await ws.send_json({"type": "message", "text": f"{i} " + "z" * 200_000, "client_message_id": f"big-{i}"})
            while (await ws.receive_json(timeout=60)).get("type") != "ack":
                pass
        await ws.close()
    before = read_memory_mb(pid)["rss_mb"]
    per_round = []
    for _ in range(rounds):
        sockets = [_silent_socket(port, session_id) for _ in range(20)]
        await asyncio.sleep(3.0)
        per_round.append(read_memory_mb(pid)["rss_mb"])
        for sock in sockets:
            sock.close()
        await asyncio.sleep(1.0)
    return {"stored_messages": 60, "message_chars": 200_000, "sockets_per_round": 20,
            "rss_before_mb": before, "rss_after_each_round_mb": per_round,
            "growth_mb": round(max(per_round) - before, 1) if before is not None else None,
            # from the end of the first half of the rounds to the end: does it level off?
            "late_growth_mb": round(per_round[-1] - per_round[len(per_round) // 2 - 1], 1) if len(per_round) >= 2 else None}


async def _with_server(args: argparse.Namespace, extra: dict[str, str], work: Any) -> Any:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="helpline-attack-") as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HELPLINE_")}
        env.update(HELPLINE_DATA_DIR=str(Path(tmp) / "data"), HELPLINE_PORT=str(port),
                   HELPLINE_TRUSTED_PROXIES="127.0.0.1", **extra)
        if args.model:
            env["HELPLINE_INTENT_MODEL_DIR"] = args.model
        with open(Path(tmp) / "server.log", "wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "helpline.cli", "serve"], cwd=ROOT, env=env,
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            await wait_healthy(url, proc, 600)
            return await work(url, port, proc.pid)
        finally:
            stop_server(proc)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    async def attacks(url: str, port: int, pid: int) -> tuple[dict[str, Any], dict[str, Any]]:
        return (await costly_messages(url, args.messages, botnet=False),
                await costly_messages(url, args.messages, botnet=True))

    costly, botnet = await _with_server(args, {}, attacks)
    # Staging sixty 200 KB messages takes a while under the default limits (a long message weighs
    # more): this server lets the one attacking session store them at once.
    memory = await _with_server(
        args,
        {"HELPLINE_CUSTOMER_RATE_LIMIT": "1000000", "HELPLINE_ADDRESS_RATE_LIMIT": "1000000",
         "HELPLINE_CHAT_SEND_TIMEOUT_S": str(args.send_timeout)},
        lambda url, port, pid: non_reading_clients(url, port, pid, args.rounds),
    )
    return {"benchmark": "attack", "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": machine_info(), "costly_messages": costly, "costly_messages_botnet": botnet,
            "non_reading_clients": memory,
            # Bounded: after the first rounds, more rounds of non-reading sockets add (next to) nothing.
            "passed": costly["p95_ratio"] <= 2.0 and memory["late_growth_mb"] is not None
            and memory["late_growth_mb"] < 10}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=60, help="ordinary customer messages per phase")
    parser.add_argument("--rounds", type=int, default=10, help="rounds of 20 sockets that never read")
    parser.add_argument("--send-timeout", type=float, default=15.0, help="HELPLINE_CHAT_SEND_TIMEOUT_S")
    parser.add_argument("--model", default=None, help="saved intent model (default: trained at start)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    result = asyncio.run(main_async(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    m = result["non_reading_clients"]
    for label, c in (("three attackers", result["costly_messages"]), ("botnet", result["costly_messages_botnet"])):
        print(f"{label}: ordinary customer p95 {c['unloaded_ms']['p95']} ms alone, {c['under_attack_ms']['p95']} ms "
              f"under attack ({c['p95_ratio']}x; attackers got {c['attack_messages_answered']} answers, "
              f"{c['attack_messages_per_s']}/s)")
    print(f"non-reading clients: RSS {m['rss_before_mb']} MB before, after each round {m['rss_after_each_round_mb']}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
