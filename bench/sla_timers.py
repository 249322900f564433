"""10,000 SLA timers on Postgres: each breached exactly once by several racing processes, and how late.

    python bench/sla_timers.py --database-url postgresql+asyncpg://postgres@127.0.0.1:5477/bench \
        [--timers 10000] [--processes 2] [--spread-s 30] [--tick-s 1] [--out bench/results/sla-timers.json]

The database must be empty or a throw-away one (the schema is migrated to head and tickets added).
``--timers`` tickets are created, each with one running ``first_response`` timer falling due at a
random moment in the next ``--spread-s`` seconds. ``--processes`` separate OS processes then run
:meth:`helpline.sla.SlaClock.tick` every ``--tick-s`` seconds (what the ``sla_tick`` job does in
``helpline serve``; here without the job queue, so the numbers are the clock's own) until every timer
is breached. Reported: breaches recorded (must equal ``--timers``), timers breached more than once
(must be 0: the ``sla_breached`` events per timer), lateness (event time - due time) p50/p95/max in
seconds, and the wall time. Lateness includes up to one tick by design.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import random
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sqlalchemy import func, insert, select  # noqa: E402

from config.settings import Settings  # noqa: E402
from config.sla import load_sla_config  # noqa: E402
from helpline.sla import SlaClock  # noqa: E402
from helpline.webhooks import Webhooks  # noqa: E402
from state.db import open_database  # noqa: E402
from state.migrate import upgrade  # noqa: E402
from state.models import Customer, Event, SlaTimer, Ticket, utcnow  # noqa: E402


async def seed(url: str, timers: int, spread_s: float, lead_s: float) -> None:
    await upgrade(url)
    db = open_database(url)
    start = utcnow() + timedelta(seconds=lead_s)
    rng = random.Random(7)
    try:
        async with db.write() as session:
            customers = (await session.execute(
                insert(Customer).returning(Customer.id), [{"display_name": f"bench {n}"} for n in range(timers)]
            )).scalars().all()
            tickets = (await session.execute(
                insert(Ticket).returning(Ticket.id),
                [{"customer_id": c, "channel": "webchat", "state": "escalated", "priority": "normal"} for c in customers],
            )).scalars().all()
            await session.execute(insert(SlaTimer), [
                {"ticket_id": t, "target": "first_response", "priority": "normal", "budget_s": 3600,
                 "started_at": utcnow(), "status": "running",
                 "due_at": start + timedelta(seconds=rng.uniform(0, spread_s))}
                for t in tickets
            ])
    finally:
        await db.dispose()


def ticker(url: str, tick_s: float, stop_after_s: float) -> None:
    async def run() -> None:
        settings = Settings(database_url=url)
        db = open_database(url)
        clock = SlaClock(db, load_sla_config(settings.sla_file), Webhooks(db, settings))
        deadline = time.monotonic() + stop_after_s
        try:
            while time.monotonic() < deadline:
                began = time.monotonic()
                await clock.tick()
                async with db.sessions() as session:
                    left = await session.scalar(
                        select(func.count()).select_from(SlaTimer).where(SlaTimer.status == "running")
                    )
                if not left:
                    return
                await asyncio.sleep(max(0.0, tick_s - (time.monotonic() - began)))
        finally:
            await db.dispose()

    asyncio.run(run())


async def measure(url: str) -> dict[str, object]:
    db = open_database(url)
    try:
        async with db.sessions() as session:
            rows = (await session.execute(
                select(Event.payload, Event.created_at).where(Event.kind == "sla_breached")
            )).all()
            running = await session.scalar(select(func.count()).select_from(SlaTimer).where(SlaTimer.status == "running"))
    finally:
        await db.dispose()
    per_timer: dict[int, int] = {}
    lateness = []
    for payload, created in rows:
        per_timer[payload["timer_id"]] = per_timer.get(payload["timer_id"], 0) + 1
        from datetime import datetime

        lateness.append((created - datetime.fromisoformat(payload["due_at"])).total_seconds())
    lateness.sort()
    return {
        "breaches": len(rows),
        "timers_breached": len(per_timer),
        "timers_breached_twice": sum(1 for n in per_timer.values() if n > 1),
        "still_running": running,
        "lateness_s": {
            "p50": round(statistics.median(lateness), 3) if lateness else None,
            "p95": round(lateness[int(0.95 * (len(lateness) - 1))], 3) if lateness else None,
            "max": round(lateness[-1], 3) if lateness else None,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--timers", type=int, default=10_000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--spread-s", type=float, default=30.0)
    parser.add_argument("--tick-s", type=float, default=1.0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if not args.database_url.startswith("postgresql"):
        parser.error("--database-url must be a Postgres URL (the benchmark is about racing processes)")

    lead_s = 5.0
    asyncio.run(seed(args.database_url, args.timers, args.spread_s, lead_s))
    began = time.monotonic()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=ticker, args=(args.database_url, args.tick_s, lead_s + args.spread_s + 300))
             for _ in range(args.processes)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join()
    wall = time.monotonic() - began
    result = {
        "benchmark": "sla_timers",
        "timers": args.timers, "processes": args.processes, "tick_s": args.tick_s, "spread_s": args.spread_s,
        **asyncio.run(measure(args.database_url)),
        "wall_s": round(wall, 1),
        "machine": {"nproc": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
    }
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
