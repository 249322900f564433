"""CSAT and reports: the customer is asked once when a ticket is resolved (by the bot or a person),
never after an automatic close; ratings arrive over the real widget socket and are checked (another
customer's ticket answers like a missing one, a second rating is refused, bad values change
nothing); the reports (``state.reports``, ``helpline report --json``, ``/agent/reports``) equal
hand-computed numbers on a seeded set of tickets. Real application, both database backends."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from app_fixtures import ChatSocket, idle, runtime
from sqlalchemy import func, select, update

from state import agents as accounts
from state import csat
from state import inbox
from state.models import CsatRating, Customer, Event, Message, Ticket

PASSWORD = "correct horse battery staple"
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


async def _chat(client: Any, session_id: str | None = None) -> ChatSocket:
    return await ChatSocket.open(client.session, str(client.make_url("/")), session_id)


def _is_prompt(frame: dict[str, Any]) -> bool:
    return frame["type"] == "message" and isinstance(frame.get("meta"), dict) and "csat" in frame["meta"]


async def _prompts(rt: Any, ticket_id: int) -> list[Message]:
    async with rt.db.sessions() as session:
        return list(await session.scalars(
            select(Message).where(Message.ticket_id == ticket_id, Message.author == "system").order_by(Message.seq)
        ))


async def _ratings(rt: Any) -> list[CsatRating]:
    async with rt.db.sessions() as session:
        return list(await session.scalars(select(CsatRating).order_by(CsatRating.id)))


async def _rate(chat: ChatSocket, ticket: Any, rating: Any, comment: Any = None, **extra: Any) -> dict[str, Any]:
    frame = {"type": "csat", "ticket": ticket, "rating": rating, **extra}
    if comment is not None:
        frame["comment"] = comment
    await chat.ws.send_json(frame)
    return await chat.until(lambda f: f["type"] in ("csat_result", "error"))


async def _logged_in(client: Any, email: str, role: str = "agent") -> tuple[accounts.AgentView, str]:
    agent = await accounts.add_agent(runtime(client).db, email, PASSWORD, role=role)
    response = await client.post("/agent/login", data={"email": email, "password": PASSWORD}, allow_redirects=False)
    assert response.status == 303
    page = await client.get("/agent")
    return agent, CSRF.search(await page.text()).group(1)


# --- asking --------------------------------------------------------------------------------------


async def test_a_bot_resolved_ticket_asks_once_and_the_rating_is_stored_as_the_bots(helpline_client) -> None:
    rt = runtime(helpline_client)
    chat = await _chat(helpline_client)
    await chat.send("ok bye, have a nice day", "m-1")
    prompt = await chat.until(_is_prompt)
    ticket_id = prompt["ticket_id"]
    assert prompt["author"] == "system" and prompt["text"] == csat.PROMPT_TEXT
    assert prompt["meta"] == {"csat": {"ticket": ticket_id, "scale": [1, 5]}}  # no resolver, no labels
    goodbye = [f for f in chat.frames if f["type"] == "message" and f["author"] == "bot"]
    assert len(goodbye) == 1 and goodbye[0]["seq"] < prompt["seq"]  # the goodbye first, then the prompt
    await idle(rt)
    async with rt.db.sessions() as session:
        ticket = await session.get(Ticket, ticket_id)
        assert ticket.state == "resolved" and ticket.csat_requested_at is not None
    assert len(await _prompts(rt, ticket_id)) == 1

    # Saying goodbye again on the resolved ticket reopens and resolves it again: not asked twice.
    await chat.send("bye!", "m-2")
    await chat.until(lambda f: f["type"] == "message" and f["author"] == "bot" and f["seq"] > prompt["seq"])
    await idle(rt)
    assert not [f for f in await chat.drain(0.5) if _is_prompt(f)]
    assert len(await _prompts(rt, ticket_id)) == 1

    result = await _rate(chat, ticket_id, 5, "  Quick\x00 and\x07 kind.\n  ")
    assert result == {"type": "csat_result", "ticket": ticket_id, "status": "stored"}
    [row] = await _ratings(rt)
    assert (row.ticket_id, row.rating, row.comment, row.resolved_by, row.agent_id, row.channel) == (
        ticket_id, 5, "Quick and kind.", "bot", None, "webchat")
    assert row.intent == "goodbye"
    await chat.close()


async def test_an_agent_resolved_ticket_asks_once_and_credits_the_agent(helpline_client) -> None:
    client = helpline_client
    rt = runtime(client)
    chat = await _chat(client)
    await chat.send("I want to talk to a real person", "m-1")
    handoff = await chat.bot_reply()
    ticket_id = handoff["ticket_id"]
    await idle(rt)
    agent, token = await _logged_in(client, "res@example.com")
    assert (await client.post(f"/agent/tickets/{ticket_id}/claim", data={"csrf_token": token},
                              allow_redirects=False)).status == 303
    assert not [f for f in await chat.drain(0.3) if _is_prompt(f)]  # claiming asks nothing
    resolved = await client.post(f"/agent/tickets/{ticket_id}/resolve", data={"csrf_token": token},
                                 allow_redirects=False)
    assert resolved.status == 303
    prompt = await chat.until(_is_prompt, timeout=10)
    assert prompt["ticket_id"] == ticket_id and prompt["meta"]["csat"]["ticket"] == ticket_id

    # Reopened by the customer, escalated again, resolved again by the agent: still one prompt.
    await chat.send("actually, one more thing: I want to talk to a real person", "m-2")
    await chat.until(lambda f: f["type"] == "message" and f["author"] == "bot" and f["seq"] > prompt["seq"])
    await idle(rt)
    await inbox.claim(rt.db, ticket_id, agent)
    done = await inbox.resolve(rt.db, ticket_id, agent)
    assert done.csat_prompt is None and done.webhook_event is None
    assert not [f for f in await chat.drain(0.5) if _is_prompt(f)]
    assert len(await _prompts(rt, ticket_id)) == 1

    assert (await _rate(chat, ticket_id, 2))["status"] == "stored"
    [row] = await _ratings(rt)
    assert (row.rating, row.comment, row.resolved_by, row.agent_id) == (2, None, "agent", agent.id)
    await chat.close()


async def test_an_automatic_close_never_asks(helpline_client) -> None:
    rt = runtime(helpline_client)
    chat = await _chat(helpline_client)
    await chat.send("how long does a refund take?", "m-1")
    first = await chat.bot_reply()
    await idle(rt)
    old_ticket = first["ticket_id"]
    # The ticket sits resolved past the reopen window without ever being asked (as a ticket
    # resolved before this release would): the next message closes it automatically.
    async with rt.db.write() as session:
        await session.execute(update(Ticket).where(Ticket.id == old_ticket).values(
            state="resolved", resolved_at=datetime.now(timezone.utc) - timedelta(days=30)))
    await chat.send("how long does a refund take?", "m-2")
    second = await chat.bot_reply()
    await idle(rt)
    assert second["ticket_id"] != old_ticket
    async with rt.db.sessions() as session:
        closed = await session.get(Ticket, old_ticket)
        assert closed.state == "closed" and closed.csat_requested_at is None
        assert (await session.get(Ticket, second["ticket_id"])).csat_requested_at is None
        asked = await session.scalar(select(func.count()).select_from(Message).where(
            Message.customer_id == closed.customer_id, Message.author == "system"))
        assert asked == 0
    assert not [f for f in chat.frames + await chat.drain(0.3) if _is_prompt(f)]
    # Never asked: a rating for it is refused, and says why.
    refused = await _rate(chat, old_ticket, 4)
    assert refused["type"] == "error" and refused["code"] == "not_asked"
    assert await _ratings(rt) == []
    await chat.close()


# --- rating ---------------------------------------------------------------------------------------


async def _bot_resolved(client: Any) -> tuple[ChatSocket, int]:
    chat = await _chat(client)
    await chat.send("ok bye, have a nice day", "bye-1")
    prompt = await chat.until(_is_prompt)
    await idle(runtime(client))
    return chat, prompt["ticket_id"]


async def test_another_customers_ticket_answers_exactly_like_a_missing_one(helpline_client) -> None:
    rt = runtime(helpline_client)
    owner, ticket_id = await _bot_resolved(helpline_client)
    other, other_ticket = await _bot_resolved(helpline_client)
    theirs = await _rate(other, ticket_id, 1, "ha")
    missing = await _rate(other, 999_999, 1, "ha")
    assert theirs["type"] == missing["type"] == "error"
    assert (theirs["code"], theirs["message"]) == (missing["code"], missing["message"]) == (
        "no_such_ticket", "There is no conversation with that number to rate.")
    # A session that never wrote has no customer: the same answer.
    fresh = await _chat(helpline_client)
    nobody = await _rate(fresh, ticket_id, 1)
    assert (nobody["code"], nobody["message"]) == (missing["code"], missing["message"])
    assert await _ratings(rt) == []
    assert (await _rate(owner, ticket_id, 4))["status"] == "stored"
    for chat in (owner, other, fresh):
        await chat.close()


async def test_a_second_rating_is_refused_and_concurrent_submits_store_one(helpline_client) -> None:
    rt = runtime(helpline_client)
    chat, ticket_id = await _bot_resolved(helpline_client)
    assert (await _rate(chat, ticket_id, 4, "good"))["status"] == "stored"
    again = await _rate(chat, ticket_id, 1, "changed my mind")
    assert again == {"type": "csat_result", "ticket": ticket_id, "status": "already_rated"}
    [row] = await _ratings(rt)
    assert (row.rating, row.comment) == (4, "good")  # kept, not overwritten

    # Ten submits at once for another ticket, through the store: exactly one row.
    chat2, ticket2 = await _bot_resolved(helpline_client)
    async with rt.db.sessions() as session:
        customer_id = (await session.get(Ticket, ticket2)).customer_id
    results = await asyncio.gather(
        *(csat.rate(rt.db, customer_id, ticket2, 1 + n % 5, f"try {n}") for n in range(10)), return_exceptions=True
    )
    stored = [r for r in results if isinstance(r, CsatRating)]
    assert len(stored) == 1 and all(isinstance(r, csat.AlreadyRated) for r in results if r not in stored)
    async with rt.db.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(CsatRating).where(
            CsatRating.ticket_id == ticket2)) == 1
    # The reconnecting widget is told the prompt was answered.
    replay = await _chat(helpline_client, chat2.session_id)
    prompt = await replay.until(_is_prompt)
    assert prompt["meta"] == {"csat": {"ticket": ticket2, "scale": [1, 5], "rated": True}}
    for c in (chat, chat2, replay):
        await c.close()


@pytest.mark.parametrize(("rating", "comment", "code", "words"), [
    (0, None, "bad_csat", "whole number from 1 to 5"),
    (6, None, "bad_csat", "whole number from 1 to 5"),
    ("5", None, "bad_csat", "whole number from 1 to 5"),
    (2.5, None, "bad_csat", "whole number from 1 to 5"),
    (True, None, "bad_csat", "whole number from 1 to 5"),
    (None, None, "bad_csat", "whole number from 1 to 5"),
    (4, "x" * 1001, "bad_csat", "too long (1,001 characters): at most 1,000"),
    (4, "y" * 100_000, "bad_csat", "too long: at most 1,000"),
    (4, ["not", "text"], "bad_csat", "must be text"),
])
async def test_bad_ratings_get_clear_errors_and_store_nothing(
    helpline_client: Any, rating: Any, comment: Any, code: str, words: str
) -> None:
    rt = runtime(helpline_client)
    chat, ticket_id = await _bot_resolved(helpline_client)
    frame = {"type": "csat", "ticket": ticket_id, "rating": rating}
    if comment is not None:
        frame["comment"] = comment
    await chat.ws.send_json(frame)
    error = await chat.until(lambda f: f["type"] in ("csat_result", "error"))
    assert error["type"] == "error" and error["code"] == code and words in error["message"], error
    assert error["ticket"] == ticket_id
    assert await _ratings(rt) == []
    # The socket stays usable and the ticket can still be rated.
    assert (await _rate(chat, ticket_id, 3))["status"] == "stored"
    await chat.close()


async def test_malformed_csat_frames_and_floods_are_refused(helpline_client) -> None:
    rt = runtime(helpline_client)
    chat, ticket_id = await _bot_resolved(helpline_client)
    for ticket in ("1", None, -1, 2**60, 1.0):
        got = await _rate(chat, ticket, 5)
        assert got["code"] == "no_such_ticket" and got["ticket"] == (ticket if isinstance(ticket, int) else None)
    extra = await _rate(chat, ticket_id, 5, evil="x")
    assert extra["code"] == "bad_csat" and "unknown field(s) in a csat frame: evil" in extra["message"]
    # Ten rating frames per minute per customer: the eleventh is refused without a database write.
    for _ in range(5):  # five above, five here: ten
        assert (await _rate(chat, ticket_id, 0))["code"] == "bad_csat"
    limited = await _rate(chat, ticket_id, 5)
    assert limited["code"] == "rate_limited"
    assert await _ratings(rt) == []
    await chat.close()


# --- reports --------------------------------------------------------------------------------------

UTC = timezone.utc
SINCE, UNTIL = datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC)


def _at(day: int, hour: int, minute: int = 0, second: int = 0, month: int = 11) -> datetime:
    return datetime(2026, month, day, hour, minute, second, tzinfo=UTC)


async def _seed_report(db: Any) -> None:
    """Eight tickets with known times: six opened in November (the window), one just before it and
    one of replayed traffic, which the report must leave out. Expected numbers: EXPECTED."""
    from state.models import Agent

    async with db.write() as session:
        agent = Agent(email="seed-agent@example.com", password_hash="x", role="agent")
        session.add(agent)
        await session.flush()

        async def ticket(opened: datetime, state: str, *, channel: str = "webchat", intent: str | None = None,
                         resolved: datetime | None = None, first_response: datetime | None = None,
                         escalations: tuple[tuple[datetime, str], ...] = (), breaches: int = 0,
                         rating: tuple[int, str | None] | None = None) -> None:
            customer = Customer(created_at=opened)
            session.add(customer)
            await session.flush()
            row = Ticket(customer_id=customer.id, channel=channel, state=state, intent=intent, created_at=opened,
                         updated_at=opened, resolved_at=resolved, first_response_at=first_response,
                         csat_requested_at=resolved if rating else None)
            session.add(row)
            await session.flush()
            for at, reason in escalations:
                session.add(Event(ticket_id=row.id, kind="transition", created_at=at,
                                  payload={"from": "bot", "to": "escalated", "reason": reason}))
            for n in range(breaches):
                session.add(Event(ticket_id=row.id, kind="sla_breached", created_at=opened + timedelta(hours=n + 1),
                                  payload={"target": "first_response"}))
            if rating is not None:
                score, resolver = rating
                session.add(CsatRating(
                    ticket_id=row.id, customer_id=customer.id, rating=score, resolved_by=resolver,
                    agent_id=agent.id if resolver == "agent" else None, channel=channel, intent=intent,
                    created_at=resolved or opened,
                ))

        await ticket(_at(2, 10), "resolved", intent="goodbye", resolved=_at(2, 10, 10), rating=(5, "bot"))
        await ticket(_at(3, 9), "resolved", intent="track_order", resolved=_at(3, 11), first_response=_at(3, 9, 15),
                     escalations=((_at(3, 9, 5), "explicit_request"),), rating=(2, "agent"))
        await ticket(_at(4, 12), "closed", channel="sms", intent="get_refund", resolved=_at(4, 13),
                     first_response=_at(4, 12, 31), escalations=((_at(4, 12, 1), "negative_sentiment"),),
                     breaches=2, rating=(4, "agent"))
        await ticket(_at(5, 8), "awaiting_customer")
        await ticket(_at(6, 8), "human", escalations=((_at(6, 8, 0, 30), "explicit_request"),
                                                      (_at(6, 9), "negative_sentiment")), breaches=1)
        await ticket(_at(7, 8), "closed", resolved=_at(7, 8, 20), rating=(3, "bot"))
        # Outside the report: opened the minute before the window, and replayed traffic inside it.
        await ticket(_at(31, 23, 59, month=10), "resolved", intent="goodbye", resolved=_at(1, 0, 30),
                     escalations=((_at(31, 23, 59, 30, month=10), "explicit_request"),), breaches=1,
                     rating=(1, "bot"))
        await ticket(_at(8, 8), "resolved", channel="replay", resolved=_at(8, 9), rating=(1, "bot"))


def _c(count: int, mean: float | None, satisfied: float | None) -> dict[str, Any]:
    return {"count": count, "mean": mean, "satisfied": satisfied}


EXPECTED = {
    "since": "2026-11-01T00:00:00+00:00", "until": "2026-12-01T00:00:00+00:00",
    "tickets": 6,
    "csat": _c(4, 3.5, 0.5),  # 5, 2, 4, 3
    "csat_by_resolver": {"bot": _c(2, 4.0, 0.5), "human": _c(2, 3.0, 0.5)},
    "csat_by_intent": {"goodbye": _c(1, 5.0, 1.0), "track_order": _c(1, 2.0, 0.0), "get_refund": _c(1, 4.0, 1.0),
                       "(none)": _c(1, 3.0, 0.0)},
    "csat_by_channel": {"webchat": _c(3, 3.333, 0.3333), "sms": _c(1, 4.0, 1.0)},
    "deflected": 2, "deflection": 0.3333,  # tickets 1 and 6
    "escalated": 3, "escalation_rate": 0.5,  # tickets 2, 3 and 5
    "escalations_by_reason": {"explicit_request": {"tickets": 2, "rate": 0.3333},
                              "negative_sentiment": {"tickets": 2, "rate": 0.3333}},
    "first_response": {"count": 2, "seconds": 1200.0},  # 600 s and 1,800 s
    "first_response_waiting": 1,  # ticket 5
    "resolution": {"count": 4, "seconds": 2400.0},  # 600, 1,200, 3,600, 7,200 s
    "sla_breaches": 3, "sla_breached_tickets": 2,
}


async def test_the_report_equals_hand_computed_numbers(migrated_database_url: str) -> None:
    from state.db import open_database
    from state.reports import compute

    db = open_database(migrated_database_url)
    try:
        await _seed_report(db)
        assert (await compute(db, SINCE, UNTIL)).as_dict() == EXPECTED
        # An empty window: zeros and no means, not errors.
        empty = (await compute(db, _at(1, 0, month=12), _at(2, 0, month=12))).as_dict()
        assert empty["tickets"] == 0 and empty["csat"] == _c(0, None, None) and empty["deflection"] is None
        assert empty["first_response"] == {"count": 0, "seconds": None} and empty["sla_breaches"] == 0
        # The default window: the 30 days up to now.
        default = await compute(db)
        assert default.until - default.since == timedelta(days=30)
        assert abs((default.until - datetime.now(UTC)).total_seconds()) < 60
        with pytest.raises(ValueError, match="must be before"):
            await compute(db, UNTIL, SINCE)
    finally:
        await db.dispose()


def test_helpline_report_prints_the_same_numbers(migrated_database_url: str, tmp_path: Any, monkeypatch: Any) -> None:
    from click.testing import CliRunner

    from helpline.cli import main as cli
    from state.db import open_database

    async def seed() -> None:
        db = open_database(migrated_database_url)
        try:
            await _seed_report(db)
        finally:
            await db.dispose()

    asyncio.run(seed())
    monkeypatch.setenv("HELPLINE_DATA_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("HELPLINE_DATABASE_URL", migrated_database_url)
    runner = CliRunner()
    done = runner.invoke(cli, ["report", "--since", "2026-11-01", "--until", "2026-11-30", "--json"])
    assert done.exit_code == 0, done.output
    assert json.loads(done.output) == EXPECTED
    text = runner.invoke(cli, ["report", "--since", "2026-11-01", "--until", "2026-11-30"])
    assert text.exit_code == 0
    lines = text.output.splitlines()
    assert lines[0] == "tickets opened 2026-11-01 00:00 to 2026-12-01 00:00 UTC: 6"
    assert "CSAT: 3.50 of 5 from 4 rating(s), 50% rated 4-5" in lines
    assert "  by resolver human: 3.00 of 5 from 2 rating(s), 50% rated 4-5" in lines
    assert "deflection: 33.3% (2 resolved without a person)" in lines
    assert "  explicit_request: 33.3% (2)" in lines
    assert "median first response: 20.0 min over 2 ticket(s); 1 escalated without a reply yet" in lines
    assert "median resolution: 40.0 min over 4 ticket(s)" in lines
    assert "SLA breaches: 3 on 2 ticket(s)" in lines
    for args, words in ((["--since", "2026-13-01"], "--since must be a date written YYYY-MM-DD"),
                        (["--since", "2026-11-30", "--until", "2026-11-01"], "must be before")):
        bad = runner.invoke(cli, ["report", *args])
        assert bad.exit_code == 2 and words in bad.output, bad.output


async def test_the_reports_page_is_for_admins_only(helpline_client) -> None:
    client = helpline_client
    rt = runtime(client)
    await _seed_report(rt.db)
    anonymous = await client.get("/agent/reports", allow_redirects=False)
    assert anonymous.status == 303 and anonymous.headers["Location"].startswith("/agent/login?next=")
    await _logged_in(client, "plain@example.com")
    page = await client.get("/agent")
    assert 'href="/agent/reports"' not in await page.text()  # no link for agents
    refused = await client.get("/agent/reports", allow_redirects=False)
    assert refused.status == 403 and "admins only" in await refused.text()
    await client.post("/agent/logout", data={"csrf_token": CSRF.search(await page.text()).group(1)})

    await _logged_in(client, "boss@example.com", role="admin")
    assert 'href="/agent/reports"' in await (await client.get("/agent")).text()
    shown = await client.get("/agent/reports?since=2026-11-01&until=2026-11-30")
    assert shown.status == 200 and shown.headers["Content-Security-Policy"].startswith("default-src 'none'")
    html = await shown.text()
    for metric, value in (("tickets", "6"), ("deflection", "33.3%"), ("escalation-rate", "50.0%"),
                          ("first-response", "20.0 min"), ("resolution", "40.0 min"), ("sla-breaches", "3")):
        assert f'data-metric="{metric}">{value}<' in html or f'data-metric="{metric}"><strong' in html, metric
    assert '<tr data-csat="resolved by human"><td>resolved by human</td><td>2</td><td>3.00</td><td>50.0%</td></tr>' in html
    assert '<tr data-reason="negative_sentiment">' in html
    default = await client.get("/agent/reports")
    thirty = (datetime.now(UTC) - timedelta(days=30)).strftime("%Y-%m-%d")
    assert default.status == 200 and f'name="since" value="{thirty}"' in await default.text()
    bad = await client.get("/agent/reports?since=yesterday")
    assert bad.status == 400 and "since must be a date written YYYY-MM-DD" in await bad.text()


# --- the widget in a real browser ------------------------------------------------------------------


@pytest.fixture
async def browser() -> Any:
    from pathlib import Path

    async_api = pytest.importorskip("playwright.async_api")
    chromium = Path("/usr/bin/chromium")
    if not chromium.exists():
        pytest.skip(f"Chromium not found at {chromium}: install Debian's package (apt-get install chromium)")
    async with async_api.async_playwright() as pw:
        launched = await pw.chromium.launch(executable_path=str(chromium), args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--no-first-run"])
        try:
            yield launched
        finally:
            await launched.close()


async def test_the_widget_shows_the_prompt_sends_a_rating_and_shows_it_done_after_reloads(
    browser: Any, server_url: str, database_url: str
) -> None:
    from state.db import open_database

    context = await browser.new_context(viewport={"width": 1100, "height": 760})
    context.set_default_timeout(30_000)
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(server_url + "/")
    await page.locator(".hl-status[data-state=online]").wait_for()
    box = page.get_by_label("Type your message")
    await box.fill("ok bye, have a nice day")
    await box.press("Enter")

    prompt = page.locator(".hl-msg--system .hl-csat")
    await prompt.wait_for()
    assert await page.locator(".hl-msg--system .hl-text").last.text_content() == csat.PROMPT_TEXT
    send = prompt.get_by_role("button", name="Send")
    assert await send.is_disabled()  # nothing chosen yet
    await prompt.get_by_role("button", name="4 out of 5").click()
    assert await prompt.get_by_role("button", name="4 out of 5").get_attribute("aria-pressed") == "true"
    await prompt.get_by_label("Comment (optional)").fill("<b>Fast</b> and friendly")
    await send.click()
    await page.locator(".hl-csat[data-state=done]").wait_for()
    assert await prompt.locator(".hl-csat-status").text_content() == "Thanks for your feedback"
    assert all([await b.is_disabled() for b in await prompt.locator("button").all()])
    assert await prompt.locator("b").count() == 0  # text stays text

    db = open_database(database_url)
    try:
        async with db.sessions() as session:
            [row] = list(await session.scalars(select(CsatRating)))
        assert (row.rating, row.comment, row.resolved_by) == (4, "<b>Fast</b> and friendly", "bot")
    finally:
        await db.dispose()

    # A reload shows the prompt answered (kept with the message).
    await page.reload()
    await page.locator(".hl-status[data-state=online]").wait_for()
    await page.locator(".hl-csat[data-state=done]").wait_for()
    # A widget that lost its transcript gets the prompt again from the server, marked answered.
    await page.evaluate(
        "() => { for (let i = 0; i < localStorage.length; i++) { const k = localStorage.key(i);"
        " if (k.startsWith('helpline:')) { const s = JSON.parse(localStorage.getItem(k));"
        " s.messages = []; s.last_seq = 0; localStorage.setItem(k, JSON.stringify(s)); } } }"
    )
    await page.reload()
    await page.locator(".hl-status[data-state=online]").wait_for()
    await page.locator(".hl-csat[data-state=done]").wait_for()
    assert await page.locator(".hl-csat").count() == 1
    assert errors == []
    await context.close()
