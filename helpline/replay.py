"""``helpline replay``: real customer messages through a running Helpline server.

Reads a CSV or JSONL file of customer texts, sends each row as a new customer over its own websocket
to ``/ws/chat`` and reports what customers got: tier shares, escalations, intent accuracy against the
file's labels, and latency from send to reply; per row, the reply itself (:class:`ReplayRow`, for
``--show`` and ``--out``). Failed turns (connection refused, error frames, timeouts, a socket closed
before the reply) are counted and reported, never dropped.

The reply's text is the outbound ``message`` frame's ``text``. Tier, intent, confidence and
escalation come from the frame's ``meta`` when the server sends them; a server may leave them out of
customer frames (they are internal), and then they are None and the report says they are not
available instead of counting them as wrong.

This module is a client only. It must not import the router, the store or the settings: what it
measures is what goes over the wire, so it works the same against a local or a deployed server.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
import uuid
from collections import Counter
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import numpy as np
import yaml
from tqdm import tqdm

from bot.placeholders import fill_placeholders
from config.files import DataFileError, MessageRow, read_message_rows

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_TIMEOUT_S = 30.0
CHAT_PATH = "/ws/chat"
PERCENTILES = (50, 95, 99)
_CLOSE_TIMEOUT_S = 5.0
_SHOWN_PROBLEMS = 5
INTENTS_NOT_SENT = "not available (the server does not send intents)"


class ReplayInputError(ValueError):
    """The input file, the columns or the options cannot be replayed; the message says why.
    The CLI turns it into a usage error (exit code 2)."""


@dataclass(frozen=True)
class TurnResult:
    """One customer's turn: either a reply (``error`` is None) or an error kind with its detail.

    ``reply`` is the bot's text. ``tier``, ``intent``, ``confidence`` and ``escalated`` are None when
    the reply's meta does not carry them; ``intent_sent`` says whether the meta had an ``intent`` key
    at all (a null intent is "no intent", a missing key is "not sent").
    """

    latency_ms: float | None = None  # send -> reply, as the customer waits
    server_ms: float | None = None  # the server's own turn time (reply meta.latency_ms), no queueing
    tier: str | None = None
    intent: str | None = None
    escalated: bool | None = None
    confidence: float | None = None
    reply: str | None = None
    intent_sent: bool = False
    error: str | None = None  # connect | timeout | closed | protocol | error:<code>
    detail: str = ""


@dataclass(frozen=True)
class ReplayRow:
    """One replayed row as ``--show`` prints it and ``--out`` writes it: ``line`` of the file,
    ``text`` as sent (placeholders filled), the file's ``label``, and the reply with what its meta
    said (None when not sent), or ``error`` (``"kind: detail"``). ``latency_ms``: send -> reply."""

    line: int
    text: str
    label: str | None
    reply: str | None
    tier: str | None
    intent: str | None
    confidence: float | None
    escalated: bool | None
    latency_ms: float | None
    error: str | None

    def to_json(self) -> dict[str, Any]:
        """The ``--out`` object, keys in this order."""
        row = asdict(self)
        if self.latency_ms is not None:
            row["latency_ms"] = round(self.latency_ms, 3)
        return row


@dataclass
class ReplayReport:
    """What a replay measured. ``tiers`` counts answered turns by the tier their reply carried;
    ``escalated`` counts the escalated ones among the ``escalation_known`` replies that said."""

    turns: int
    errors: int
    tiers: dict[str, int]
    escalated: int
    intent_accuracy: float | None
    latency_ms: dict[str, float | None]  # p50 p95 p99 over answered turns; None when none answered
    # Context for the human summary; not part of the JSON line.
    server_latency_ms: dict[str, float | None] = field(default_factory=dict)
    url: str = ""
    intent_scored: int = 0  # answered, labelled turns that returned an intent (accuracy denominator)
    labelled_without_intent: int = 0  # answered, labelled turns whose reply carried a null intent
    intents_sent: bool = True  # some answered reply's meta had an intent key (else: not available)
    tier_missing: int = 0  # answered turns whose reply carried no tier
    escalation_known: int = 0  # answered turns whose reply said whether it escalated
    labelled_answered: int = 0  # answered turns of rows with a label
    error_kinds: dict[str, int] = field(default_factory=dict)
    error_samples: list[str] = field(default_factory=list)
    bad_rows: list[str] = field(default_factory=list)
    rows: list[ReplayRow] = field(default_factory=list)  # every replayed row, in file order

    @property
    def answered(self) -> int:
        return self.turns - self.errors

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` line. ``tiers`` holds the tiers replies carried (empty when the server
        sends none); ``escalated`` is None when answered replies never said whether they escalated."""
        return {
            "turns": self.turns,
            "errors": self.errors,
            "tiers": dict(self.tiers),
            "escalated": self.escalated if self.escalation_known or not self.answered else None,
            "intent_accuracy": self.intent_accuracy,
            "latency_ms": {f"p{p}": self.latency_ms.get(f"p{p}") for p in PERCENTILES},
        }


# --- input ------------------------------------------------------------------------------------------


def load_label_map(path: Path) -> dict[str, str]:
    """YAML mapping of file label -> Helpline intent. Labels not in the map are compared as they are."""
    try:
        with Path(path).open(encoding="utf-8") as fh:
            loaded = yaml.safe_load(fh)
    except OSError as exc:
        raise ReplayInputError(f"{path}: cannot read the label map ({exc.strerror})") from exc
    except yaml.YAMLError as exc:
        raise ReplayInputError(f"{path}: the label map is not valid YAML ({exc})") from exc
    if loaded is None:
        return {}
    if not isinstance(loaded, dict) or not all(isinstance(v, str) for v in loaded.values()):
        raise ReplayInputError(f"{path}: the label map must be a YAML mapping of label -> intent name")
    return {str(label): intent for label, intent in loaded.items()}


def chat_url(url: str) -> str:
    """``http://host:port`` (or ``ws://...``, with or without ``/ws/chat``) -> the chat websocket URL."""
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme)
    if scheme is None or not parts.netloc:
        raise ReplayInputError(f"--url {url!r}: expected http://HOST:PORT (or ws://, https://, wss://)")
    path = parts.path.rstrip("/")
    if not path.endswith(CHAT_PATH):
        path += CHAT_PATH
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))


# --- one turn ---------------------------------------------------------------------------------------


class _TurnFailed(Exception):
    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


async def _next_frame(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    while True:
        msg = await ws.receive()
        if msg.type == aiohttp.WSMsgType.TEXT:
            try:
                frame = json.loads(msg.data)
            except ValueError:
                raise _TurnFailed("protocol", f"server sent a frame that is not JSON: {msg.data[:80]!r}")
            if not isinstance(frame, dict):
                raise _TurnFailed("protocol", f"server sent a frame that is not an object: {msg.data[:80]!r}")
            if frame.get("type") == "error":
                code = str(frame.get("code") or "unknown")
                raise _TurnFailed(f"error:{code}", str(frame.get("message") or code))
            return frame
        if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
            raise _TurnFailed("closed", f"server closed the connection (code {ws.close_code})")
        if msg.type == aiohttp.WSMsgType.ERROR:
            raise _TurnFailed("closed", f"connection failed: {ws.exception()}")
        # binary frames are not part of the protocol; skip them


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _reply_result(frame: dict[str, Any], latency_ms: float) -> TurnResult:
    """The bot's outbound message frame as a result. Every meta field is optional: a server that
    keeps its internals (tier, intent, confidence) out of customer frames gives None for them."""
    sent = frame.get("meta")
    meta: dict[str, Any] = sent if isinstance(sent, dict) else {}
    tier = str(meta["tier"]) if meta.get("tier") else None
    escalated = meta.get("escalated")
    if tier == "human":
        escalated = True  # a handoff is an escalation, whatever the flag says
    elif not isinstance(escalated, bool):
        escalated = None
    text = frame.get("text")
    return TurnResult(
        latency_ms=latency_ms,
        server_ms=_number(meta.get("latency_ms")),
        tier=tier,
        intent=str(meta["intent"]) if meta.get("intent") else None,
        escalated=escalated,
        confidence=_number(meta.get("confidence")),
        reply=text if isinstance(text, str) else None,
        intent_sent="intent" in meta,
    )


async def replay_turn(
    session: aiohttp.ClientSession, ws_url: str, text: str, *, timeout: float = DEFAULT_TIMEOUT_S,
    token: str | None = None,
) -> TurnResult:
    """One new customer of replayed traffic: connect, hello (``"replay": true``, so the server keeps
    the ticket out of the queue and reports and sends the bot's labels), send ``text``, wait for the
    bot's outbound reply. The server accepts replay sessions from its own machine, or with the admin
    ``token`` (``Authorization: Bearer``); otherwise the turn fails with ``error:forbidden``."""
    ws: aiohttp.ClientWebSocketResponse | None = None
    step = "connect"
    try:
        async with asyncio.timeout(timeout):
            try:
                headers = {"Authorization": f"Bearer {token}"} if token else None
                ws = await session.ws_connect(ws_url, headers=headers)
            except (aiohttp.ClientError, OSError) as exc:
                return TurnResult(error="connect", detail=f"cannot connect to {ws_url}: {_describe(exc)}")
            step = "welcome"
            await ws.send_json({"type": "hello", "session_id": None, "last_seq": 0, "replay": True})
            frame = await _next_frame(ws)
            if frame.get("type") != "welcome":
                raise _TurnFailed("protocol", f"expected a welcome frame, got {frame.get('type')!r}")
            step = "reply"
            sent_at = time.perf_counter()
            await ws.send_json({"type": "message", "text": text, "client_message_id": str(uuid.uuid4())})
            while True:
                frame = await _next_frame(ws)
                # ack, the inbound echo and typing frames come first: wait on for the bot's reply
                if frame.get("type") == "message" and frame.get("direction") == "outbound":
                    latency_ms = (time.perf_counter() - sent_at) * 1000
                    break
        return _reply_result(frame, latency_ms)
    except TimeoutError:
        waited_for = {"connect": "connection", "welcome": "welcome frame", "reply": "reply"}[step]
        return TurnResult(error="timeout", detail=f"no {waited_for} within {timeout:g} s")
    except _TurnFailed as exc:
        return TurnResult(error=exc.kind, detail=exc.detail)
    except (aiohttp.ClientError, OSError) as exc:
        return TurnResult(error="closed", detail=f"connection failed while waiting for the {step}: {_describe(exc)}")
    finally:
        if ws is not None:
            with suppress(Exception):
                await asyncio.wait_for(ws.close(), _CLOSE_TIMEOUT_S)


# --- the run ----------------------------------------------------------------------------------------


async def run_replay(
    path: Path,
    *,
    text_column: str,
    label_column: str | None = None,
    label_map: Path | None = None,
    limit: int | None = None,
    concurrency: int = 8,
    url: str = DEFAULT_URL,
    seed: int = 0,
    progress: bool = True,
    timeout: float = DEFAULT_TIMEOUT_S,
    token: str | None = None,
) -> ReplayReport:
    """Replay the file's rows (all of them, or the first ``limit`` after a shuffle seeded by ``seed``)
    through the server at ``url``, ``concurrency`` customers at a time (``token``: the server's
    admin token, needed when the server is not on this machine)."""
    if limit is not None and limit < 1:
        raise ReplayInputError("--limit must be at least 1")
    if concurrency < 1:
        raise ReplayInputError("--concurrency must be at least 1")
    if label_map is not None and label_column is None:
        raise ReplayInputError("--label-map needs --label-column")
    ws_url = chat_url(url)
    # File reading is blocking: keep it off the event loop.
    try:
        rows, bad_rows = await asyncio.to_thread(
            read_message_rows, Path(path), text_column, label_column, purpose="replay"
        )
    except DataFileError as exc:
        raise ReplayInputError(str(exc)) from None
    mapping = await asyncio.to_thread(load_label_map, label_map) if label_map is not None else {}

    # Shuffle always (source files are often sorted by intent) and fill placeholders in that order
    # from the same generator: a given seed and limit send the same texts every run, and a smaller
    # limit sends a prefix of a larger one.
    rng = random.Random(seed)
    rng.shuffle(rows)
    if limit is not None:
        rows = rows[:limit]
    texts = [fill_placeholders(row.text, rng) for row in rows]

    semaphore = asyncio.Semaphore(concurrency)
    with tqdm(total=len(rows), file=sys.stderr, disable=not progress, unit="turn", desc="replay") as bar:
        failed = 0

        async def one(text: str) -> TurnResult:
            nonlocal failed
            async with semaphore:
                result = await replay_turn(session, ws_url, text, timeout=timeout, token=token)
            failed += result.error is not None
            bar.update(1)
            if failed:
                bar.set_postfix(errors=failed, refresh=False)
            return result

        # limit=0: the semaphore bounds connections; the pool limit would only queue them unseen.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            results = await asyncio.gather(*(one(text) for text in texts))
    return summarise(rows, results, mapping, bad_rows=bad_rows, url=url, texts=texts)


def _percentiles(values: list[float]) -> dict[str, float | None]:
    """p50/p95/p99 in ms (numpy, linear interpolation); None for each when there are no values."""
    if not values:
        return {f"p{p}": None for p in PERCENTILES}
    found = np.percentile(np.asarray(values), PERCENTILES)
    return {f"p{p}": round(float(v), 3) for p, v in zip(PERCENTILES, found, strict=True)}


def summarise(
    rows: list[MessageRow],
    results: list[TurnResult],
    label_map: dict[str, str] | None = None,
    *,
    bad_rows: list[str] | None = None,
    url: str = "",
    texts: list[str] | None = None,
) -> ReplayReport:
    """The report of replayed ``rows`` and their ``results`` (same order). ``texts``: what was sent
    for each row (placeholders filled; default the rows' text). Intent accuracy compares labels
    (through ``label_map``) with the intents replies carried; it is None without labels, and when no
    reply carried an ``intent`` in its meta (``intents_sent`` False: the server does not send them)."""
    label_map = label_map or {}
    texts = texts if texts is not None else [row.text for row in rows]
    tiers: Counter[str] = Counter()
    error_kinds: Counter[str] = Counter()
    error_samples: list[str] = []
    latencies: list[float] = []
    server_times: list[float] = []
    escalated = escalation_known = tier_missing = 0
    scored = correct = labelled_without_intent = labelled_answered = 0
    intents_sent = False
    for row, result in zip(rows, results, strict=True):
        if result.error is not None:
            error_kinds[result.error] += 1
            if len(error_samples) < _SHOWN_PROBLEMS:
                error_samples.append(f"line {row.line}: {result.detail}")
            continue
        if result.tier is None:
            tier_missing += 1
        else:
            tiers[result.tier] += 1
        if result.escalated is not None:
            escalation_known += 1
            escalated += result.escalated
        if result.latency_ms is not None:
            latencies.append(result.latency_ms)
        if result.server_ms is not None:
            server_times.append(result.server_ms)
        intents_sent |= result.intent_sent
        if row.label is None:
            continue
        labelled_answered += 1
        if not result.intent_sent:
            continue
        if result.intent is None:
            labelled_without_intent += 1
            continue
        scored += 1
        correct += result.intent == label_map.get(row.label, row.label)
    has_labels = any(row.label is not None for row in rows)
    return ReplayReport(
        turns=len(results),
        errors=sum(error_kinds.values()),
        tiers=dict(sorted(tiers.items())),
        escalated=escalated,
        intent_accuracy=round(correct / scored, 4) if has_labels and scored else None,
        latency_ms=_percentiles(latencies),
        server_latency_ms=_percentiles(server_times),
        url=url,
        intent_scored=scored,
        labelled_without_intent=labelled_without_intent,
        intents_sent=intents_sent,
        tier_missing=tier_missing,
        escalation_known=escalation_known,
        labelled_answered=labelled_answered,
        error_kinds=dict(error_kinds.most_common()),
        error_samples=error_samples,
        bad_rows=list(bad_rows or []),
        rows=sorted(
            (_row(row, text, result) for row, text, result in zip(rows, texts, results, strict=True)),
            key=lambda r: r.line,
        ),
    )


def _row(row: MessageRow, text: str, result: TurnResult) -> ReplayRow:
    return ReplayRow(
        line=row.line, text=text, label=row.label, reply=result.reply, tier=result.tier,
        intent=result.intent, confidence=result.confidence, escalated=result.escalated,
        latency_ms=result.latency_ms,
        error=f"{result.error}: {result.detail}" if result.error is not None else None,
    )


# --- output -----------------------------------------------------------------------------------------


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "n/a"


def _tier_shares(report: ReplayReport) -> str:
    if not report.tiers:
        return "not available (the server does not send tiers)"
    answered = report.answered
    shares = [f"{tier} {_pct(n, answered)} ({n:,})" for tier, n in report.tiers.items()]
    if report.tier_missing:
        shares.append(f"not sent {_pct(report.tier_missing, answered)} ({report.tier_missing:,})")
    return ", ".join(shares)


def print_report(report: ReplayReport, *, json_line: bool, file: TextIO | None = None) -> None:
    """Human summary; with ``json_line`` the last line printed is ``report.to_json()`` as one line."""
    out = file if file is not None else sys.stdout
    answered = report.answered
    where = f" against {report.url}" if report.url else ""
    lines = [f"Replayed {report.turns:,} turns{where}: {answered:,} answered, {report.errors:,} errors"]
    if report.turns and not answered:
        if set(report.error_kinds) == {"error:forbidden"}:
            lines.append("  ALL turns were refused: the server accepts replayed traffic from its own machine, "
                         "or with its admin token (--token or HELPLINE_ADMIN_TOKEN)")
        else:
            lines.append(f"  ALL {report.turns:,} turns failed; is the server running{where}?")
    if answered:
        lines.append(f"Tiers:           {_tier_shares(report)}")
        known = report.escalation_known
        lines.append(
            f"Escalated:       {_pct(report.escalated, known)} ({report.escalated:,} of {known:,})"
            if known else "Escalated:       not available (the server does not say)"
        )
    if report.intent_accuracy is not None:
        lines.append(
            f"Intent accuracy: {100 * report.intent_accuracy:.1f}% over {report.intent_scored:,} labelled "
            f"turns that returned an intent ({report.labelled_without_intent:,} labelled turns had none)"
        )
    elif report.labelled_answered and not report.intents_sent:
        lines.append(f"Intent accuracy: {INTENTS_NOT_SENT}")
    elif report.labelled_without_intent:
        lines.append("Intent accuracy: n/a, no labelled reply carried an intent")
    lat = report.latency_ms
    if lat.get("p50") is not None:
        lines.append(
            f"Latency (ms):    p50 {lat['p50']:.1f}  p95 {lat['p95']:.1f}  p99 {lat['p99']:.1f}"
            "  (send -> reply, answered turns)"
        )
    srv = report.server_latency_ms
    if srv.get("p50") is not None:
        lines.append(
            f"Server turn (ms): p50 {srv['p50']:.1f}  p95 {srv['p95']:.1f}  p99 {srv['p99']:.1f}"
            "  (the server's own turn time, from the reply's meta)"
        )
    if report.errors:
        kinds = ", ".join(f"{kind} {n:,}" for kind, n in report.error_kinds.items())
        lines.append(f"Errors:          {report.errors:,} ({kinds})")
        lines.extend(f"  {sample}" for sample in report.error_samples)
    if report.bad_rows:
        lines.append(f"Skipped rows:    {len(report.bad_rows):,} bad rows in the file")
        lines.extend(f"  {bad}" for bad in report.bad_rows[:_SHOWN_PROBLEMS])
        if len(report.bad_rows) > _SHOWN_PROBLEMS:
            lines.append(f"  ... and {len(report.bad_rows) - _SHOWN_PROBLEMS:,} more")
    if json_line:
        lines.append(json.dumps(report.to_json(), sort_keys=False))
    print("\n".join(lines), file=out, flush=True)


def _indented(label: str, text: str) -> list[str]:
    """``label`` then ``text``, its continuation lines aligned under the first."""
    first, *rest = text.splitlines() or [""]
    pad = " " * len(label)
    return [f"{label}{first}", *(f"{pad}{line}" for line in rest)]


def _row_lines(row: ReplayRow) -> list[str]:
    lines = [f"line {row.line}", *_indented("  customer: ", row.text)]
    if row.error is not None:
        return [*lines, *_indented("  error:    ", row.error)]
    lines.extend(_indented("  bot:      ", row.reply if row.reply is not None else "(no text)"))
    confidence = f" ({row.confidence:.2f})" if row.confidence is not None else ""
    lines.append(f"  tier {row.tier or 'not sent'}, intent {row.intent or 'not sent'}{confidence}")
    return lines


def print_rows(report: ReplayReport, file: TextIO | None = None) -> None:
    """``--show``: every replayed row in file order, as::

        line 3
          customer: where is my order #W2611340
          bot:      Your order #W2611340 has shipped and is on its way.
          tier deterministic, intent track_order (0.97)

    or ``error: <kind>: <detail>`` in place of the reply. A tier or intent the server did not send
    reads ``not sent``."""
    out = file if file is not None else sys.stdout
    for row in report.rows:
        print("\n".join(_row_lines(row)), file=out)
    print(file=out, flush=True)


def write_rows(report: ReplayReport, file: TextIO) -> None:
    """``--out``: one JSON object per replayed row (:meth:`ReplayRow.to_json`), in file order."""
    for row in report.rows:
        file.write(json.dumps(row.to_json(), ensure_ascii=False) + "\n")
    file.flush()
