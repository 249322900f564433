"""What the costliest message one can send costs, against a typical one (target: at most 5x).

Opens the runtime ``helpline serve`` uses (``helpline.runtime.open_runtime``) on a throw-away SQLite
database and sends every message through the conversation service as a new customer of web chat,
exactly as the socket does, then reads the server turn time each turn recorded (``latency_ms``:
guard, models, escalation checks, lookups or retrieval, and the turn's database reads). Each message
is sent ``--repeat`` times with a different first word, so no cache helps.

Typical: ``--typical`` rows of the Bitext test split (placeholders filled) or, without the shared
data, a built-in list. Worst cases: texts built to hit each per-turn step's worst path, all within
the routing limit (4,000 characters), and a ticket whose history holds 19 such messages.

Run from the repository root:
    .venv/bin/python bench/turn_cost.py                 # writes bench/results/turn_cost.json

Exit status: 0 when every worst case is within ``--max-ratio`` of the typical median, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import statistics
import string
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sqlalchemy import select  # noqa: E402

from bot.placeholders import fill_placeholders  # noqa: E402
from config.files import read_message_rows  # noqa: E402
from config.settings import Settings  # noqa: E402
from helpline.conversation import Inbound  # noqa: E402
from helpline.runtime import Runtime, open_runtime  # noqa: E402
from state.models import Event  # noqa: E402
from bot.embeddings import CachedEmbedder  # noqa: E402
from bot.escalation import PriorTurn  # noqa: E402
from bot.router import TurnContext  # noqa: E402
from bot.understanding import MODEL_TOKENS  # noqa: E402

BITEXT = ROOT.parent / "shared" / "data" / "bitext" / "llm_27k_instructions_test.csv"
RESULTS = ROOT / "bench" / "results" / "turn_cost.json"
LIMIT = 4000
FALLBACK_TYPICAL = [
    "where is my order #W0000000?", "how long does a refund take?", "hi there", "I forgot my password",
    "do you ship to Canada?", "what payment methods do you accept", "thanks, bye", "can I change my address?",
    "I want to cancel my order", "the item arrived broken, what can I do?",
]


def _fit(unit: str) -> str:
    return (unit * (LIMIT // max(1, len(unit)) + 1))[:LIMIT]


ANSWERED = [
    "which payment methods do you accept? ", "do you ship to Canada? ", "how do I reset my password? ",
    "how can I change my delivery address? ", "how do I unsubscribe from the newsletter? ",
]
"""Questions the bot answers from the knowledge base; repeated to 4,000 characters they stay answered
(no handoff), so every one of them is routed in full, retrieval included."""


def answered_long(i: int) -> str:
    """The ``i``-th costly message that the bot answers rather than hands over: a question repeated to
    4,000 characters (cycling through five, so none repeats one of the customer's last three)."""
    return _fit(ANSWERED[i % len(ANSWERED)])


def worst_cases(seed: int = 0) -> dict[str, str]:
    """Messages of at most 4,000 characters aimed at each step's worst path."""
    rnd = random.Random(seed)
    near = "humen operater representitive agnet suprvisor managr sucide harrased laywer".split()
    return {
        "dots (a.a.a., 2,000 clauses)": _fit("a."),
        "percent runs (a%a%a%, the email pattern's old worst case)": _fit("a%"),
        "one 4,000-letter token": "a" * LIMIT,
        "random letter words": " ".join(
            "".join(rnd.choice(string.ascii_lowercase) for _ in range(rnd.randint(5, 9))) for _ in range(600)
        )[:LIMIT],
        "misspelt trigger words": " ".join(rnd.choice(near) + rnd.choice(string.ascii_lowercase) for _ in range(500))[:LIMIT],
        "order ids": " ".join(f"#W{rnd.randint(1000000, 9999999)}" for _ in range(500))[:LIMIT],
        "emails": " ".join(f"a{i}@ex{i}.com" for i in range(500))[:LIMIT],
        "emoji": "😡" * LIMIT,
        "Chinese, no spaces": _fit("我的订单在哪里"),
        "negative words": _fit("terrible awful horrible worst hate "),
        "chat spellings": _fit("u r 2 ur pls wanna "),
        "repeated request for a person": _fit("I want to talk to a person who is not a bot but my order is late. "),
        "negations and buts": _fit("not bad but not good, never so happy but no "),
        "knowledge-base question, padded": "how long does a refund take to reach my card? " + _fit("please ")[:LIMIT - 47],
        "answered question, repeated to 4,000": answered_long(seed),
    }


def typical_texts(n: int, seed: int) -> list[str]:
    if not BITEXT.is_file():
        return FALLBACK_TYPICAL
    rows, _ = read_message_rows(BITEXT, "instruction")
    rnd = random.Random(seed)
    rnd.shuffle(rows)
    return [fill_placeholders(r.text, rnd) for r in rows[:n]]


async def _turn_ms(rt: Runtime, address: str, text: str) -> float:
    accepted = await rt.conversations.receive(Inbound("webchat", address, text))
    while rt.conversations.in_flight:
        await asyncio.sleep(0.002)
    async with rt.db.sessions() as session:
        payloads = (await session.execute(
            select(Event.payload).where(Event.ticket_id == accepted.ticket.id, Event.kind == "turn")
            .order_by(Event.id.desc()).limit(1)
        )).scalars().all()
    return float(payloads[0]["latency_ms"])


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    data = Path(tempfile.mkdtemp(prefix="helpline-turn-cost-"))
    settings = Settings(data_dir=data, customer_rate_limit=10**6, address_rate_limit=10**6,
                        **({"intent_model_dir": args.model} if args.model else {}))
    counter = 0

    def address() -> str:
        nonlocal counter
        counter += 1
        return f"bench-{counter}"

    async with open_runtime(settings) as rt:
        await rt.conversations.resume_pending()
        for text in FALLBACK_TYPICAL:  # warm up models and caches of the code paths
            await _turn_ms(rt, address(), text)
        typical = [await _turn_ms(rt, address(), t) for t in typical_texts(args.typical, args.seed)]
        results: dict[str, Any] = {}
        for name, text in worst_cases(args.seed).items():
            times = [await _turn_ms(rt, address(), f"{i}{text}"[:LIMIT]) for i in range(args.repeat)]
            results[name] = {"chars": len(text), "median_ms": round(statistics.median(times), 2),
                             "max_ms": round(max(times), 2)}
        history = await _history_case(rt, args)
    base = statistics.median(typical)
    for row in results.values():
        row["ratio"] = round(row["median_ms"] / base, 2)
    worst = max(results.items(), key=lambda kv: kv[1]["ratio"])
    return {
        "benchmark": "turn_cost", "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, {platform.python_version()}",
        "typical": {"messages": len(typical), "median_ms": round(base, 2),
                    "p95_ms": round(sorted(typical)[int(0.95 * (len(typical) - 1))], 2)},
        "worst": results, "worst_case": {"name": worst[0], "ratio": worst[1]["ratio"]},
        "history": history,
        "max_ratio": args.max_ratio,
        "passed": worst[1]["ratio"] <= args.max_ratio and history["ratio"] <= args.max_ratio,
    }


async def _history_case(rt: Runtime, args: argparse.Namespace) -> dict[str, Any]:
    """The router alone (the part of a turn that reads the ticket's history): a worst-case message
    after 19 earlier 4,000-character messages, with the caches of a freshly started process, against
    a typical message with no history."""
    router = rt.router
    long = worst_cases(args.seed)["chat spellings"]
    prior = tuple(
        PriorTurn(text=f"{i} {long}"[:LIMIT], sentiment=0.1, tier="retrieval", reason="answered",
                  complaint=None, complaint_known=True)
        for i in range(19)
    )

    async def route_ms(text: str, earlier: tuple[PriorTurn, ...], cold: bool) -> float:
        if cold:
            router.message_embedder = CachedEmbedder(router.understander.embedder, 5_000, max_tokens=MODEL_TOKENS)
            router.escalation.embed = router.message_embedder.embed_recent
        started = time.perf_counter()
        await router.route(text, TurnContext(ticket_id=1, ticket_state="bot", prior=earlier))
        return (time.perf_counter() - started) * 1000

    typical = [await route_ms(f"{i} {t}", (), False) for i, t in enumerate(typical_texts(50, args.seed))]
    worst = [await route_ms(f"y{i} {long}"[:LIMIT], prior, True) for i in range(args.repeat)]
    base = statistics.median(typical)
    return {"what": "router only, 19 earlier 4,000-character messages, cold caches",
            "typical_median_ms": round(base, 2), "median_ms": round(statistics.median(worst), 2),
            "ratio": round(statistics.median(worst) / base, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--typical", type=int, default=200, help="typical messages (Bitext rows)")
    parser.add_argument("--repeat", type=int, default=7, help="runs of each worst case")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default=None, help="saved intent model (default: trained on first use)")
    parser.add_argument("--max-ratio", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    started = time.monotonic()
    result = asyncio.run(measure(args))
    result["seconds"] = round(time.monotonic() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(f"typical turn: median {result['typical']['median_ms']} ms over {result['typical']['messages']} messages")
    for name, row in sorted(result["worst"].items(), key=lambda kv: -kv[1]["ratio"]):
        print(f"  {row['ratio']:5.2f}x  {row['median_ms']:7.1f} ms  {name}")
    h = result["history"]
    print(f"  {h['ratio']:5.2f}x  {h['median_ms']:7.1f} ms  {h['what']} (typical {h['typical_median_ms']} ms)")
    verdict = "PASS" if result["passed"] else "FAIL"
    print(f"{verdict}: worst {result['worst_case']['ratio']}x ({result['worst_case']['name']}), target <= {args.max_ratio}x")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
