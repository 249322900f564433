"""Load run: many concurrent web-chat customers against one or more Helpline server processes.

Each customer is one websocket to ``/ws/chat`` (customers are spread round-robin over ``--urls``,
as a load balancer would): ``hello``, then a loop of send a message -> wait for the bot's reply ->
think -> send the next. Texts are rows of the Bitext 27K test split with their ``{{placeholders}}``
filled (seeded, like ``helpline replay``). Think time is uniform in ``[--think-min, --think-max]``
seconds and each customer's first message is delayed by a uniform ``[0, --think-max]`` so 200
customers do not all send at t=0. A reply with ``meta.escalated`` ends the session (an escalated
ticket is silent by design until a person answers); the customer then starts a new session.

A dropped connection (server killed, restarted, or a network error) is handled the way the widget
does it: reconnect with the same session id and the last seq seen (to the same URL first, then
the next ones in the list, as a load balancer would skip a dead backend), read the backlog, and
re-send the message in flight with the same ``client_message_id`` if it was not acked (the server
stores it once). A turn that waits longer than ``--reply-timeout`` is counted as timed out and the
customer starts a new session; whether its reply came later is settled by the final check.

Per turn it records the latency from the first send to the reply (ms) and the server's own turn
time (``meta.latency_ms``). After ``--duration`` seconds no new turns start; turns in flight get up
to ``--drain`` seconds. Then every session is read back once (``hello`` with ``last_seq=0``) and
its transcript checked: each inbound message followed by exactly one bot reply, no seq twice, no
client message stored twice. From that:

- lost: a message we sent that has no reply in the final transcript (or was never stored although
  the customer kept sending it), other than silence by design after an escalation;
- duplicated: a seq delivered twice on one connection, a second live reply to one message, a
  message with two replies in the transcript, or a client message id stored twice.

``--start-servers K`` starts K ``helpline serve`` processes on free ports itself (one shared
``HELPLINE_DATA_DIR`` in a temp dir, ``--database-url`` and ``--redis-url`` passed as
``HELPLINE_DATABASE_URL`` / ``HELPLINE_REDIS_URL``); the first is started alone so it trains the
intent model and ingests the knowledge base once, then the others. ``--kill-one-at S`` SIGKILLs
server 0 at S seconds into the load and restarts it on the same port ``--restart-after`` seconds
later. Turns whose ticket lock the killed process held wait for the lock to expire
(``HELPLINE_LOCK_TTL_S``, 30 s): give such a run a ``--reply-timeout`` above that plus the restart
time (60 s), or they are counted as timed out (and, when the final check finds their reply, as
``late_but_delivered``, not lost). CPU time of each server (``/proc/PID/stat``; for ``--watch-pid``
also its children, e.g. the Postgres postmaster), of this load generator and of the whole machine
is recorded over the load window. ``--profile`` samples server 0 with py-spy during the load and
reports where its CPU goes: by the package of the innermost Python frame, and by the innermost
frame in Helpline's own code.

Run from the repository root, e.g.:
    .venv/bin/python bench/load.py --start-servers 2 --database-url postgresql+asyncpg://... \\
        --redis-url redis://127.0.0.1:6379/0 --json bench/results/load-2proc.json
    .venv/bin/python bench/load.py --urls http://127.0.0.1:8080 http://127.0.0.1:8081

Exit status: 0 when the run completed with nothing lost or duplicated, 1 when something was lost
or duplicated or no turn was answered or a server did not come up, 2 on bad options. This script
only measures: it is a client of the public websocket protocol; of Helpline it imports only the
client-side helpers (placeholder filling, the chat URL) and ``replay_latency``'s process helpers.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import random
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / "bench"):  # run as a script: the checkout and the sibling bench scripts
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from replay_latency import (
    free_port,
    git_commit,
    machine_info,
    read_memory_mb,
    server_command,
    wait_healthy,
    write_result,
)

from bot.placeholders import fill_placeholders
from helpline.replay import chat_url

DEFAULT_DATASET = ROOT.parent / "shared" / "data" / "bitext" / "llm_27k_instructions_test.csv"
PERCENTILES = (50, 95, 99)
CLK_TCK = os.sysconf("SC_CLK_TCK")
_RECONNECT_MAX_S = 2.0
_VERIFY_CONCURRENCY = 32
_SAMPLES = 5


# --- what each customer records ---------------------------------------------------------------------


@dataclass
class Turn:
    client_message_id: str
    started: float  # perf_counter at the first send
    sends: int = 0
    acked: bool = False
    replied: bool = False
    latency_ms: float | None = None
    server_ms: float | None = None
    escalated: bool = False
    timed_out: bool = False
    error: str | None = None


@dataclass
class Session:
    session_id: str | None = None
    last_seq: int = 0
    connections: int = 0
    turns: list[Turn] = field(default_factory=list)


@dataclass
class Stats:
    """Counters shared by all customers (one event loop: no locking needed)."""

    duplicate_seq_live: int = 0  # a seq received twice on one connection
    extra_replies_live: int = 0  # a bot reply with no message in flight (a second reply)
    connects: int = 0
    reconnects: int = 0
    connect_failures: int = 0
    resends: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    error_samples: list[str] = field(default_factory=list)

    def error(self, kind: str, detail: str) -> None:
        self.errors[kind] += 1
        if len(self.error_samples) < _SAMPLES:
            self.error_samples.append(f"{kind}: {detail[:200]}")


class _Dropped(Exception):
    """The socket closed or failed; the customer reconnects."""


class _Resend(Exception):
    """The server refused to store the message for now; send it again."""


# --- one customer -----------------------------------------------------------------------------------


class Customer:
    def __init__(
        self, index: int, urls: list[str], texts: list[str], args: argparse.Namespace,
        stats: Stats, http: aiohttp.ClientSession, window: tuple[float, float],
    ) -> None:
        self.index = index
        self.urls = urls
        self.home = index % len(urls)  # round-robin, like a load balancer
        self.texts = texts
        self.args = args
        self.stats = stats
        self.http = http
        self.start_at, self.stop_at = window
        self.rng = random.Random(f"{args.seed}:{index}")
        self.sessions: list[Session] = []
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.seen: set[int] = set()  # seqs received on the current connection
        self.pending: Turn | None = None

    @property
    def session(self) -> Session:
        return self.sessions[-1]

    async def run(self, hard_stop: float) -> None:
        try:
            await asyncio.sleep(self.rng.uniform(0, self.args.think_max))
            self.sessions.append(Session())
            while time.perf_counter() < self.stop_at:
                turn = Turn(client_message_id=str(uuid.uuid4()), started=0.0)
                text = self.rng.choice(self.texts)
                try:
                    await self._turn(turn, text, hard_stop)
                except TimeoutError:
                    turn.timed_out = True
                if turn.timed_out or turn.escalated or turn.error:
                    # Escalated: the ticket is silent by design. Timed out or failed: leave it to
                    # the final check and carry on as a new customer.
                    await self._close()
                    self.sessions.append(Session())
                await asyncio.sleep(self.rng.uniform(self.args.think_min, self.args.think_max))
        finally:
            await self._close()

    async def _turn(self, turn: Turn, text: str, hard_stop: float) -> None:
        self.pending = turn
        self.session.turns.append(turn)
        deadline = min(time.perf_counter() + self.args.reply_timeout, hard_stop)
        try:
            async with asyncio.timeout_at(_loop_time(deadline)):
                while not turn.replied and turn.error is None:
                    try:
                        if self.ws is None or self.ws.closed:
                            await self._connect()
                        if turn.replied:
                            break  # the reply came in the backlog
                        if not turn.acked:
                            if turn.sends == 0:
                                turn.started = time.perf_counter()
                            else:
                                self.stats.resends += 1
                            turn.sends += 1
                            await self._send(
                                {"type": "message", "text": text, "client_message_id": turn.client_message_id}
                            )
                        while not turn.replied and turn.error is None:
                            await self._handle(await self._receive())
                    except _Resend:
                        continue
                    except _Dropped:
                        await self._close()
        finally:
            self.pending = None

    async def _connect(self) -> None:
        """Connect and say hello with the session's last seq; process the backlog up to ``synced``.
        Retries (own URL first, then the others) until the enclosing timeout."""
        attempt = 0
        while True:
            url = self.urls[(self.home + attempt) % len(self.urls)]
            try:
                self.ws = await self.http.ws_connect(chat_url(url), heartbeat=None)
                break
            except (aiohttp.ClientError, OSError):
                self.stats.connect_failures += 1
                attempt += 1
                await asyncio.sleep(min(_RECONNECT_MAX_S, 0.1 * 2 ** min(attempt, 5)) * self.rng.uniform(0.5, 1))
        self.stats.connects += 1
        if self.session.connections:
            self.stats.reconnects += 1
        self.session.connections += 1
        self.seen = set()
        await self._send(
            {"type": "hello", "session_id": self.session.session_id, "last_seq": self.session.last_seq}
        )
        while True:
            frame = await self._receive()
            if frame.get("type") == "welcome":
                self.session.session_id = frame.get("session_id")
            elif frame.get("type") == "synced":
                return
            else:
                await self._handle(frame)

    async def _send(self, frame: dict[str, Any]) -> None:
        assert self.ws is not None
        try:
            await self.ws.send_json(frame)
        except (aiohttp.ClientError, OSError) as exc:  # writing to a socket the server dropped
            raise _Dropped(str(exc) or type(exc).__name__) from None

    async def _receive(self) -> dict[str, Any]:
        assert self.ws is not None
        try:
            msg = await self.ws.receive()
        except (aiohttp.ClientError, OSError) as exc:
            raise _Dropped(str(exc)) from None
        if msg.type == aiohttp.WSMsgType.TEXT:
            try:
                frame = json.loads(msg.data)
            except ValueError:
                self.stats.error("protocol", f"not JSON: {msg.data[:80]!r}")
                return {}
            return frame if isinstance(frame, dict) else {}
        if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED,
                        aiohttp.WSMsgType.ERROR):
            raise _Dropped(f"closed ({self.ws.close_code})")
        return {}

    async def _handle(self, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        turn = self.pending
        if kind == "message":
            seq = frame.get("seq")
            if isinstance(seq, int):
                if seq in self.seen:
                    self.stats.duplicate_seq_live += 1
                    return
                self.seen.add(seq)
                self.session.last_seq = max(self.session.last_seq, seq)
            if frame.get("direction") == "inbound":
                if turn is not None and frame.get("client_message_id") == turn.client_message_id:
                    turn.acked = True  # the echo of our own stored message
                return
            if frame.get("author") != "bot":
                return
            if turn is None or not turn.sends:
                self.stats.extra_replies_live += 1
                return
            if turn.replied:
                self.stats.extra_replies_live += 1
                return
            meta = frame.get("meta") if isinstance(frame.get("meta"), dict) else {}
            turn.replied = True
            turn.acked = True
            turn.latency_ms = (time.perf_counter() - turn.started) * 1000
            server_ms = meta.get("latency_ms")
            turn.server_ms = float(server_ms) if isinstance(server_ms, (int, float)) else None
            turn.escalated = meta.get("escalated") is True
        elif kind == "ack":
            if turn is not None and frame.get("client_message_id") == turn.client_message_id:
                turn.acked = True
        elif kind == "error":
            code = str(frame.get("code") or "unknown")
            self.stats.error(f"error:{code}", str(frame.get("message", "")))
            if turn is not None and frame.get("client_message_id") == turn.client_message_id:
                if code == "unavailable":
                    # Not stored: the server asks for the same message again (same client id).
                    await asyncio.sleep(0.5)
                    raise _Resend()
                turn.error = code

    async def _close(self) -> None:
        if self.ws is not None:
            with suppress(Exception):
                await asyncio.wait_for(self.ws.close(), 5)
        self.ws = None


def _loop_time(perf_deadline: float) -> float:
    """A ``time.perf_counter`` deadline on the event loop's clock."""
    return asyncio.get_running_loop().time() + (perf_deadline - time.perf_counter())


# --- the final check --------------------------------------------------------------------------------


@dataclass
class Transcript:
    ok: bool
    frames: list[dict[str, Any]] = field(default_factory=list)
    error: str = ""


async def read_transcript(http: aiohttp.ClientSession, urls: list[str], session_id: str) -> Transcript:
    """Every message of the session, read with ``last_seq=0`` (any URL that answers)."""
    last_error = ""
    for url in urls:
        try:
            async with asyncio.timeout(20):
                async with http.ws_connect(chat_url(url), heartbeat=None) as ws:
                    await ws.send_json({"type": "hello", "session_id": session_id, "last_seq": 0})
                    frames: list[dict[str, Any]] = []
                    async for msg in ws:
                        if msg.type != aiohttp.WSMsgType.TEXT:
                            break
                        frame = json.loads(msg.data)
                        if frame.get("type") == "message":
                            frames.append(frame)
                        elif frame.get("type") == "synced":
                            return Transcript(True, frames)
                    last_error = "closed before synced"
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            last_error = str(exc) or type(exc).__name__
    return Transcript(False, error=last_error)


@dataclass
class Verdict:
    inbound: int = 0
    replies: int = 0
    lost: int = 0
    never_stored: int = 0
    silent_by_design: int = 0
    duplicate_seqs: int = 0
    duplicate_inbound: int = 0
    double_replies: int = 0
    unreadable_sessions: int = 0
    late_but_delivered: int = 0  # timed out live, but the reply is in the transcript
    late_delays_s: list[float] = field(default_factory=list)  # store -> reply, of those
    answer_delay_s: dict[str, float] = field(default_factory=dict)  # client id -> store -> reply
    samples: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        if len(self.samples) < _SAMPLES:
            self.samples.append(text)


def _answer_delays(frames: list[dict[str, Any]]) -> dict[str, float]:
    """client id -> seconds from the message being stored to its first reply (server clocks)."""
    delays: dict[str, float] = {}
    current: tuple[str, datetime] | None = None
    for frame in frames:
        try:
            at = datetime.fromisoformat(str(frame.get("created_at")))
        except ValueError:
            continue
        if frame.get("direction") == "inbound":
            current = (str(frame.get("client_message_id")), at)
        elif frame.get("author") == "bot" and current is not None and current[0] not in delays:
            delays[current[0]] = (at - current[1]).total_seconds()
    return delays


def check_session(session: Session, transcript: Transcript, verdict: Verdict) -> set[str]:
    """Add the session's findings to ``verdict``; returns the client ids that have no reply yet."""
    frames = sorted(transcript.frames, key=lambda f: f.get("seq", 0))
    seqs = Counter(f.get("seq") for f in frames)
    verdict.duplicate_seqs += sum(n - 1 for n in seqs.values() if n > 1)
    replies: dict[str, int] = {}
    stored: Counter[str] = Counter()
    current: str | None = None
    escalated_before: dict[str, bool] = {}
    escalated = False
    for frame in frames:
        if frame.get("direction") == "inbound":
            current = str(frame.get("client_message_id"))
            stored[current] += 1
            replies.setdefault(current, 0)
            escalated_before[current] = escalated
        elif frame.get("author") == "bot" and current is not None:
            replies[current] += 1
            meta = frame.get("meta") if isinstance(frame.get("meta"), dict) else {}
            escalated = escalated or meta.get("escalated") is True
    verdict.duplicate_inbound += sum(n - 1 for n in stored.values() if n > 1)
    verdict.answer_delay_s.update(_answer_delays(frames))
    missing: set[str] = set()
    for turn in session.turns:
        cid = turn.client_message_id
        if cid not in stored:
            missing.add(cid)
            continue
        verdict.inbound += 1
        n = replies.get(cid, 0)
        verdict.replies += min(n, 1)
        if n > 1:
            verdict.double_replies += n - 1
            verdict.note(f"session {session.session_id}: message {cid} has {n} replies")
        elif n == 0:
            if escalated_before.get(cid):
                verdict.silent_by_design += 1
            else:
                missing.add(cid)
    return missing


async def final_check(
    http: aiohttp.ClientSession, urls: list[str], customers: list[Customer], deadline: float
) -> Verdict:
    """Read every session back; re-read the ones with unanswered messages until ``deadline`` (a
    reply held up by a crashed process's lock arrives once the lock expires)."""
    sessions = [s for c in customers for s in c.sessions if s.turns]
    semaphore = asyncio.Semaphore(_VERIFY_CONCURRENCY)

    async def one(session: Session) -> tuple[Session, Transcript]:
        async with semaphore:
            return session, await read_transcript(http, urls, session.session_id or "")

    todo = [s for s in sessions if s.session_id]
    verdict = Verdict()
    for session in sessions:
        if not session.session_id:  # never got a welcome: nothing of it was stored
            verdict.never_stored += sum(1 for t in session.turns if t.sends)
            verdict.note(f"a session never connected; {len(session.turns)} message(s) not stored")
    final: dict[int, tuple[Session, Transcript]] = {}
    while True:
        retry: list[Session] = []
        for session, transcript in await asyncio.gather(*(one(s) for s in todo)):
            final[id(session)] = (session, transcript)
            if not transcript.ok or check_session(session, transcript, Verdict()):
                retry.append(session)
        if not retry or time.perf_counter() >= deadline:
            break
        await asyncio.sleep(2.0)
        todo = retry
    for session, transcript in final.values():
        if not transcript.ok:
            verdict.unreadable_sessions += 1
            verdict.note(f"session {session.session_id}: transcript unreadable ({transcript.error})")
            continue
        missing = check_session(session, transcript, verdict)
        for turn in session.turns:
            cid = turn.client_message_id
            if cid not in missing:
                if turn.timed_out:
                    verdict.late_but_delivered += 1
                    if cid in verdict.answer_delay_s:
                        verdict.late_delays_s.append(verdict.answer_delay_s[cid])
                continue
            if not turn.sends:
                continue
            if turn.acked:
                verdict.lost += 1
                verdict.note(f"session {session.session_id}: acked message {cid} has no reply")
            else:
                verdict.never_stored += 1
                verdict.note(f"session {session.session_id}: message {cid} sent {turn.sends}x, never stored")
    verdict.lost += verdict.never_stored
    return verdict


# --- processes and CPU ------------------------------------------------------------------------------


def cpu_seconds(pid: int, children: bool = False) -> float | None:
    """utime+stime of ``pid`` (``/proc/PID/stat``), with ``children``: plus its waited-for children
    (cutime+cstime) and the live descendants."""
    def own(p: int) -> tuple[float, int] | None:
        try:
            with open(f"/proc/{p}/stat", encoding="ascii") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            return None
        ticks = int(fields[11]) + int(fields[12])  # utime stime (fields 14, 15 of the man page)
        if children:
            ticks += int(fields[13]) + int(fields[14])
        return ticks / CLK_TCK, int(fields[1])  # ppid

    mine = own(pid)
    if mine is None:
        return None
    total = mine[0]
    if children:
        parents = {pid}
        kids: list[tuple[int, int]] = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                found = own(int(entry))
                if found is not None:
                    kids.append((int(entry), found[1]))
        changed = True
        while changed:  # descendants at any depth
            changed = False
            for p, ppid in kids:
                if ppid in parents and p not in parents:
                    parents.add(p)
                    changed = True
        for p in parents - {pid}:
            found = own(p)
            if found is not None:
                total += found[0]
    return total


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    with open("/proc/stat", encoding="ascii") as fh:
        values = [int(v) for v in fh.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


class ServerSlot:
    """One ``helpline serve`` on a fixed port; can be killed and restarted in place."""

    def __init__(self, index: int, env: dict[str, str], log_dir: Path) -> None:
        self.index = index
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**env, "HELPLINE_PORT": str(self.port)}
        self.log_path = log_dir / f"server-{index}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.cpu_s = 0.0  # accumulated over every process that ran in this slot during the window
        self._last: tuple[int, float] | None = None
        self.restarts: list[dict[str, float]] = []

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                server_command(None, self.port), cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )

    def sample_cpu(self) -> None:
        if self.proc is None:
            return
        now = cpu_seconds(self.proc.pid)
        if now is None:
            return
        if self._last is not None and self._last[0] == self.proc.pid:
            self.cpu_s += now - self._last[1]
        self._last = (self.proc.pid, now)

    def rebase_cpu(self) -> None:
        """Keep what was counted; go on counting from the new process (its start-up excluded)."""
        self._last = None
        self.sample_cpu()

    def reset_cpu(self) -> None:
        self.cpu_s = 0.0
        self._last = None
        self.sample_cpu()

    def kill(self) -> None:
        self.sample_cpu()
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self, grace_s: float = 30.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def server_env(data_dir: Path, database_url: str | None, redis_url: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HELPLINE_")}
    env.update(HELPLINE_DATA_DIR=str(data_dir), HELPLINE_HOST="127.0.0.1", PYTHONUNBUFFERED="1")
    if database_url:
        env["HELPLINE_DATABASE_URL"] = database_url
    if redis_url:
        env["HELPLINE_REDIS_URL"] = redis_url
    return env


async def start_slot(slot: ServerSlot, timeout: float) -> float:
    slot.start()
    assert slot.proc is not None
    try:
        return await wait_healthy(slot.url, slot.proc, timeout)
    except RuntimeError as exc:
        raise RuntimeError(f"server {slot.index} ({slot.url}): {exc}\n{slot.log_tail()}") from None


async def kill_and_restart(
    slot: ServerSlot, start: float, at: float, restart_after: float, timeout: float
) -> None:
    await asyncio.sleep(max(0.0, start + at - time.perf_counter()))
    killed = time.perf_counter()
    slot.kill()
    print(f"load: SIGKILLed server {slot.index} (pid {slot.proc.pid if slot.proc else '?'})", file=sys.stderr)
    await asyncio.sleep(restart_after)
    restarted = time.perf_counter()
    healthy_s = await start_slot(slot, timeout)
    slot.rebase_cpu()
    slot.restarts.append({
        "killed_at_s": round(killed - start, 2),
        "restarted_after_s": round(restarted - killed, 2),
        "healthy_after_restart_s": round(healthy_s, 2),
    })
    print(f"load: server {slot.index} back after {time.perf_counter() - killed:.1f} s", file=sys.stderr)


async def sample_cpu_forever(slots: list[ServerSlot]) -> None:
    while True:
        for slot in slots:
            slot.sample_cpu()
        await asyncio.sleep(0.5)


# --- profile ----------------------------------------------------------------------------------------

_CATEGORIES = (
    ("selectors.py", "idle (epoll wait)"),
    ("onnxruntime", "embedding (onnxruntime)"),
    ("tokenizers", "embedding (tokenizer)"),
    ("bot/embeddings", "embedding (tokenizer)"),
    ("sklearn", "intent classifier"),
    ("scipy", "intent classifier"),
    ("bot/intent_model", "intent classifier"),
    ("vaderSentiment", "sentiment (VADER)"),
    ("bot/", "router and understanding"),
    ("numpy", "numpy"),
    ("asyncpg", "database driver (asyncpg)"),
    ("sqlalchemy", "ORM (SQLAlchemy)"),
    ("state/", "Helpline state code"),
    ("redis", "Redis client"),
    ("aiohttp", "HTTP/websocket (aiohttp)"),
    ("json", "JSON"),
    ("asyncio", "asyncio event loop"),
    ("helpline/", "Helpline conversation code"),
    ("channels/", "web-chat channel"),
)


_OURS = re.compile(r"\((?:[^()]*/)?(?:helpline|bot|state|channels|config)/[^/()]+\.py:\d+\)$")


def summarise_profile(raw: str) -> dict[str, Any]:
    """py-spy ``--format raw`` (collapsed stacks) -> share of samples by the innermost frame's package
    and the top innermost functions."""
    by_category: Counter[str] = Counter()
    by_leaf: Counter[str] = Counter()
    by_entry: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        leaf = stack.split(";")[-1]
        by_leaf[leaf] += n
        where = leaf.replace("\\", "/")
        category = next((name for key, name in _CATEGORIES if key in where), "other")
        by_category[category] += n
        # The innermost frame in Helpline's own code: which of our functions the time is spent under.
        ours = [f for f in stack.split(";") if _OURS.search(f.replace("\\", "/"))]
        by_entry[ours[-1] if ours else f"(outside Helpline) {category}"] += n
    busy = total - by_category.get("idle (epoll wait)", 0)
    share = {k: round(v / total, 3) for k, v in by_category.most_common()} if total else {}
    busy_share = {
        k: round(v / busy, 3) for k, v in by_category.most_common() if k != "idle (epoll wait)"
    } if busy else {}
    top = [{"frame": k, "share": round(v / total, 3)} for k, v in by_leaf.most_common(15)] if total else []
    entries = [{"frame": k, "share": round(v / total, 3)} for k, v in by_entry.most_common(15)] if total else []
    return {"samples": total, "by_innermost_package": share, "busy_by_innermost_package": busy_share,
            "top_innermost_frames": top, "top_innermost_helpline_frames": entries}


async def profile(pid: int, start_in: float, seconds: float, out: Path) -> dict[str, Any] | None:
    await asyncio.sleep(start_in)
    spy = Path(sys.executable).parent / "py-spy"
    cmd = [str(spy), "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "50",
           "--nonblocking", "--format", "raw", "--output", str(out)]
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.DEVNULL,
                                                stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    if proc.returncode != 0 or not out.is_file():
        print(f"load: py-spy failed: {err.decode(errors='replace')[-500:]}", file=sys.stderr)
        return None
    return {"command": shlex.join(cmd), "seconds": seconds, **summarise_profile(out.read_text())}


# --- the run ----------------------------------------------------------------------------------------


def load_texts(path: Path, column: str, seed: int) -> list[str]:
    with path.open(newline="", encoding="utf-8-sig") as fh:
        rows = [r[column] for r in csv.DictReader(fh) if (r.get(column) or "").strip()]
    rng = random.Random(seed)
    rng.shuffle(rows)
    return [fill_placeholders(text, rng) for text in rows]


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {f"p{p}": None for p in PERCENTILES}
    found = np.percentile(np.asarray(values), PERCENTILES)
    return {f"p{p}": round(float(v), 1) for p, v in zip(PERCENTILES, found, strict=True)}


async def drive(args: argparse.Namespace, urls: list[str], slots: list[ServerSlot], tmp: Path) -> dict[str, Any]:
    texts = await asyncio.to_thread(load_texts, args.dataset, args.text_column, args.seed)
    stats = Stats()
    start = time.perf_counter()
    stop_at = start + args.duration
    hard_stop = stop_at + args.drain
    background: list[asyncio.Task[Any]] = []
    profile_task: asyncio.Task[dict[str, Any] | None] | None = None
    for slot in slots:
        slot.reset_cpu()
    background.append(asyncio.create_task(sample_cpu_forever(slots)))
    if args.kill_one_at is not None and slots:
        background.append(asyncio.create_task(
            kill_and_restart(slots[0], start, args.kill_one_at, args.restart_after, args.startup_timeout)
        ))
    if args.profile and slots and slots[0].proc is not None:
        seconds = max(5.0, min(30.0, args.duration - 10))
        profile_task = asyncio.create_task(profile(slots[0].proc.pid, 5.0, seconds, tmp / "profile.txt"))
    watched = {name: (pid, cpu_seconds(pid, children=True)) for name, pid in args.watch_pid}
    own_before = cpu_seconds(os.getpid()) or 0.0
    busy_before = machine_busy()

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        customers = [
            Customer(i, urls, texts, args, stats, http, (start, stop_at)) for i in range(args.customers)
        ]
        tasks = [asyncio.create_task(c.run(hard_stop)) for c in customers]
        print(f"load: {args.customers} customers for {args.duration:g} s against {', '.join(urls)}", file=sys.stderr)
        await asyncio.sleep(max(0.0, stop_at - time.perf_counter()))
        # The load window ends here: CPU figures cover it exactly.
        for slot in slots:
            slot.sample_cpu()
        window_s = time.perf_counter() - start
        busy_after = machine_busy()
        own_cpu = (cpu_seconds(os.getpid()) or 0.0) - own_before
        watched_cpu: dict[str, float | None] = {}
        for name, (pid, before) in watched.items():
            after = cpu_seconds(pid, children=True)
            watched_cpu[name] = round(after - before, 2) if before is not None and after is not None else None
        server_cpu = [round(slot.cpu_s, 2) for slot in slots]
        for outcome in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(outcome, BaseException):  # a bug in this script: count it, never hide it
                stats.error("customer_crashed", repr(outcome))
        drained_s = time.perf_counter() - stop_at
        for task in background:
            if task.done() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        verdict = await final_check(http, urls, customers, hard_stop)
    for task in background:
        task.cancel()
    await asyncio.gather(*background, return_exceptions=True)
    profiled = await profile_task if profile_task is not None else None

    turns = [t for c in customers for s in c.sessions for t in s.turns if t.sends]
    answered = [t for t in turns if t.replied]
    in_window = [t for t in answered if t.started + (t.latency_ms or 0) / 1000 <= stop_at]
    latencies = [t.latency_ms for t in answered if t.latency_ms is not None]
    server_ms = [t.server_ms for t in answered if t.server_ms is not None]
    busy = (busy_after[0] - busy_before[0]) / max(1, busy_after[1] - busy_before[1])
    duplicated = (
        stats.duplicate_seq_live + stats.extra_replies_live + verdict.duplicate_seqs
        + verdict.duplicate_inbound + verdict.double_replies
    )
    nproc = machine_info()["nproc"] or 1
    return {
        "turns": len(turns),
        "answered": len(answered),
        "turns_per_s": round(len(in_window) / window_s, 1),
        "latency_ms": _percentiles(latencies),
        "server_turn_ms": _percentiles(server_ms),
        "escalated": sum(t.escalated for t in answered),
        "timed_out": sum(t.timed_out for t in turns),
        "late_but_delivered": verdict.late_but_delivered,
        "lost": verdict.lost,
        "duplicated": duplicated,
        "errors": sum(stats.errors.values()),
        "error_kinds": dict(stats.errors),
        "error_samples": stats.error_samples,
        "sessions": sum(len(c.sessions) for c in customers),
        "connects": stats.connects,
        "reconnects": stats.reconnects,
        "connect_failures": stats.connect_failures,
        "resends": stats.resends,
        "verify": {
            "inbound_checked": verdict.inbound,
            "with_one_reply": verdict.replies,
            "silent_by_design": verdict.silent_by_design,
            "never_stored": verdict.never_stored,
            "duplicate_seqs": verdict.duplicate_seqs,
            "duplicate_inbound": verdict.duplicate_inbound,
            "double_replies": verdict.double_replies,
            "unreadable_sessions": verdict.unreadable_sessions,
            "late_store_to_reply_s": {
                "n": len(verdict.late_delays_s),
                "p50": round(float(np.median(verdict.late_delays_s)), 1) if verdict.late_delays_s else None,
                "max": round(max(verdict.late_delays_s), 1) if verdict.late_delays_s else None,
            },
            "samples": verdict.samples,
        },
        "duplicated_live": {"seq_twice": stats.duplicate_seq_live, "extra_replies": stats.extra_replies_live},
        "window_s": round(window_s, 2),
        "drain_s": round(drained_s, 2),
        "cpu": {
            "machine_busy_share": round(busy, 3),
            "machine_busy_cores": round(busy * nproc, 2),
            "servers_s": server_cpu,
            "servers_cores": [round(s / window_s, 2) for s in server_cpu],
            "load_generator_s": round(own_cpu, 2),
            "load_generator_cores": round(own_cpu / window_s, 2),
            "watched_s": watched_cpu,
            "watched_cores": {k: (round(v / window_s, 2) if v is not None else None) for k, v in watched_cpu.items()},
            # Busy CPU that none of the above explains: other programs on the machine.
            "other_cores": round(
                busy * nproc - (sum(server_cpu) + own_cpu + sum(v or 0 for v in watched_cpu.values())) / window_s, 2
            ),
        },
        "profile_server0": profiled,
    }


async def run(args: argparse.Namespace) -> int:
    slots: list[ServerSlot] = []
    with tempfile.TemporaryDirectory(prefix="helpline-load-") as tmpdir:
        tmp = Path(tmpdir)
        try:
            if args.start_servers:
                env = server_env(tmp / "data", args.database_url, args.redis_url)
                slots = [ServerSlot(i, env, tmp) for i in range(args.start_servers)]
                # The first alone: it trains the intent model into the shared data dir and ingests
                # the knowledge base once; the others load both.
                startup = [await start_slot(slots[0], args.startup_timeout)]
                startup += await asyncio.gather(*(start_slot(s, args.startup_timeout) for s in slots[1:]))
                urls = [s.url for s in slots]
                print(f"load: {len(slots)} server(s) healthy: {', '.join(urls)}", file=sys.stderr)
            else:
                urls = args.urls
                startup = []
            uptime_before = os.getloadavg()
            result = await drive(args, urls, slots, tmp)
            memory = [read_memory_mb(s.proc.pid) for s in slots if s.proc is not None]
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        finally:
            exits = [s.stop() for s in slots]

    output: dict[str, Any] = {
        "benchmark": "load",
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "options": {
            "customers": args.customers, "duration_s": args.duration, "think_s": [args.think_min, args.think_max],
            "reply_timeout_s": args.reply_timeout, "drain_s": args.drain, "seed": args.seed,
            "dataset": str(args.dataset), "kill_one_at_s": args.kill_one_at,
            "restart_after_s": args.restart_after if args.kill_one_at is not None else None,
        },
        "processes": len(urls),
        "urls": urls,
        "servers": {
            "started_by_load": bool(slots),
            "startup_s": [round(s, 2) for s in startup],
            "memory": memory,
            "restarts": [r for s in slots for r in s.restarts],
            "exit_status": exits,
            "backends": {"database": _scheme(args.database_url), "redis": bool(args.redis_url)} if slots else None,
        },
        **result,
        "load_average_before": [round(v, 2) for v in uptime_before],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "machine": machine_info(),
    }
    print(json.dumps(output, indent=2))
    if args.json:
        write_result(output, args.json)
        print(f"wrote {args.json}", file=sys.stderr)
    print(_summary(output), file=sys.stderr)
    bad = output["lost"] or output["duplicated"] or not output["answered"]
    return 1 if bad else 0


def _scheme(url: str | None) -> str | None:
    return url.split(":", 1)[0].split("+", 1)[0] if url else None


def _summary(r: dict[str, Any]) -> str:
    lat = r["latency_ms"]
    cpu = r["cpu"]
    return (
        f"{r['processes']} process(es), {r['options']['customers']} customers, {r['window_s']:.0f} s: "
        f"{r['turns_per_s']} turns/s, latency p50 {lat['p50']} p95 {lat['p95']} p99 {lat['p99']} ms, "
        f"lost {r['lost']}, duplicated {r['duplicated']}, errors {r['errors']}, timed out {r['timed_out']}; "
        f"CPU: machine {cpu['machine_busy_cores']} cores, servers {cpu['servers_cores']}, "
        f"load generator {cpu['load_generator_cores']}, watched {cpu['watched_cores']}, other {cpu['other_cores']}"
    )


def _watch(value: str) -> tuple[str, int]:
    name, sep, pid = value.partition("=")
    if not sep or not pid.isdigit():
        raise argparse.ArgumentTypeError("expected NAME=PID")
    return name, int(pid)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--urls", nargs="+", default=["http://127.0.0.1:8080"], help="server base URLs")
    parser.add_argument("--customers", type=int, default=200)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument("--think-min", type=float, default=0.5, help="seconds between reply and next message")
    parser.add_argument("--think-max", type=float, default=2.0)
    parser.add_argument("--reply-timeout", type=float, default=30.0, help="seconds a turn waits for its reply (above the lock TTL for --kill-one-at)")
    parser.add_argument("--drain", type=float, default=60.0,
                        help="seconds after --duration for turns in flight and the final check")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET)
    parser.add_argument("--text-column", default="instruction")
    parser.add_argument("--json", type=Path, default=None, help="write the result here")
    parser.add_argument("--start-servers", type=int, default=0, metavar="K",
                        help="start K `helpline serve` processes (ignores --urls)")
    parser.add_argument("--database-url", default=None, help="HELPLINE_DATABASE_URL for --start-servers")
    parser.add_argument("--redis-url", default=None, help="HELPLINE_REDIS_URL for --start-servers")
    parser.add_argument("--startup-timeout", type=float, default=300.0)
    parser.add_argument("--kill-one-at", type=float, default=None, metavar="S",
                        help="SIGKILL server 0 S seconds into the load and restart it (needs --start-servers)")
    parser.add_argument("--restart-after", type=float, default=3.0, help="seconds between the kill and the restart")
    parser.add_argument("--watch-pid", type=_watch, action="append", default=[], metavar="NAME=PID",
                        help="also record CPU of PID and its children (e.g. postgres=PID, redis=PID)")
    parser.add_argument("--profile", action="store_true", help="py-spy server 0 during the load")
    args = parser.parse_args(argv)
    if args.customers < 1 or args.duration <= 0 or args.reply_timeout <= 0 or args.drain < 0:
        parser.error("--customers, --duration and --reply-timeout must be positive, --drain not negative")
    if not 0 <= args.think_min <= args.think_max:
        parser.error("need 0 <= --think-min <= --think-max")
    if args.start_servers < 0:
        parser.error("--start-servers must not be negative")
    if args.start_servers > 1 and not args.redis_url:
        parser.error("several processes need --redis-url (shared hot state)")
    if args.kill_one_at is not None and not args.start_servers:
        parser.error("--kill-one-at needs --start-servers")
    if args.kill_one_at is not None and not 0 <= args.kill_one_at < args.duration:
        parser.error("--kill-one-at must fall inside --duration")
    if args.profile and not args.start_servers:
        parser.error("--profile needs --start-servers")
    if not args.dataset.is_file():
        parser.error(f"{args.dataset}: no such file")
    if any(not re.match(r"^(https?|wss?)://", u) for u in args.urls):
        parser.error("--urls must be http(s):// or ws(s):// URLs")
    return args


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(run(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
