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
from app_fixtures import ChatSocket
from sqlalchemy import func, select, update

from helpline.server import RUNTIME
from state import agents as accounts
from state import csat
from state import inbox
from state.models import CsatRating, Customer, Event, Message, Ticket

PASSWORD = "correct horse battery staple"
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def runtime(client: Any) -> Any:
    return client.server.app[RUNTIME]


async def _idle(rt: Any) -> None:
    for _ in range(400):
        if not rt.conversations.in_flight:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("turns still running")


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
    await _idle(rt)
    async with rt.db.sessions() as session:
        ticket = await session.get(Ticket, ticket_id)
        assert ticket.state == "resolved" and ticket.csat_requested_at is not None
    assert len(await _prompts(rt, ticket_id)) == 1

    # Saying goodbye again on the resolved ticket reopens and resolves it again: not asked twice.
    await chat.send("bye!", "m-2")
    await chat.until(lambda f: f["type"] == "message" and f["author"] == "bot" and f["seq"] > prompt["seq"])
    await _idle(rt)
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
    await _idle(rt)
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
    await _idle(rt)
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
    await _idle(rt)
    old_ticket = first["ticket_id"]
    # The ticket sits resolved past the reopen window without ever being asked (as a ticket
    # resolved before this release would): the next message closes it automatically.
    async with rt.db.write() as session:
        await session.execute(update(Ticket).where(Ticket.id == old_ticket).values(
            state="resolved", resolved_at=datetime.now(timezone.utc) - timedelta(days=30)))
    await chat.send("how long does a refund take?", "m-2")
    second = await chat.bot_reply()
    await _idle(rt)
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
    await _idle(runtime(client))
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
