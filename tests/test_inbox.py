"""The agent inbox at /agent: login, sessions, CSRF, the queue, the ticket page, every action, and
who may see and do what. On the real application (aiohttp test client) with real sockets for the
customer's side, on both database backends."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest
from app_fixtures import ChatSocket, idle, runtime
from sqlalchemy import func, select

from helpline.conversation import Inbound
from helpline.inbox import AGENT_CSP, COOKIE, InboxRoutes, bidi_safe
from helpline.server import RUNTIME
from state import agents as accounts
from state import inbox
from state.models import Event, Message, Ticket

PASSWORD = "correct horse battery staple"
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


async def _agent(client: Any, email: str, role: str = "agent") -> accounts.AgentView:
    return await accounts.add_agent(runtime(client).db, email, PASSWORD, role=role)


async def _login(client: Any, email: str, password: str = PASSWORD, **extra: str) -> Any:
    return await client.post(
        "/agent/login", data={"email": email, "password": password, **extra}, allow_redirects=False
    )


async def _logged_in(client: Any, email: str) -> str:
    """Log in on ``client``'s cookie jar; returns the CSRF token from the queue page."""
    response = await _login(client, email)
    assert response.status == 303, await response.text()
    page = await client.get("/agent")
    assert page.status == 200
    return CSRF.search(await page.text()).group(1)


async def _escalated(client: Any, address: str, text: str = "I want to talk to a real person") -> int:
    rt = runtime(client)
    accepted = await rt.conversations.receive(Inbound("webchat", address, text))
    await idle(rt)
    async with rt.db.sessions() as session:
        ticket = await session.get(Ticket, accepted.ticket.id)
        assert ticket.state == "escalated", ticket.state
    return accepted.ticket.id


# --- unit ---------------------------------------------------------------------------------------


def test_bidi_controls_are_shown_not_applied() -> None:
    assert bidi_safe("abc\u202egpj.exe") == "abc[U+202E]gpj.exe"
    assert bidi_safe("\u2066x\u2069\u200f") == "[U+2066]x[U+2069][U+200F]"
    assert bidi_safe("plain <b>") == "plain <b>"  # escaping is the template's job


@pytest.mark.parametrize(("given", "expected"), [
    ("/agent/tickets/4", "/agent/tickets/4"),
    ("/agent?view=mine", "/agent?view=mine"),
    ("//evil.example/agent", "/agent"),
    ("https://evil.example/agent", "/agent"),
    ("/agent\\@evil.example", "/agent"),
    ("/elsewhere", "/agent"),
    ("/agent\r\nSet-Cookie: x=1", "/agent"),
    (None, "/agent"),
])
def test_login_redirects_only_to_inbox_paths(given: Any, expected: str) -> None:
    assert InboxRoutes._next(given) == expected


# --- access --------------------------------------------------------------------------------------


async def test_every_agent_route_refuses_anonymous_callers_and_posts_without_csrf(helpline_client) -> None:
    client = helpline_client
    ticket_id = await _escalated(client, "route-walk")
    routes = [
        (r.method, r.resource.canonical) for r in client.server.app.router.routes()
        if r.resource is not None and r.resource.canonical.startswith("/agent")
        and not r.resource.canonical.startswith("/agent/api/")  # token auth: walked in tests/test_inbox_api.py
        and r.method in ("GET", "POST")
    ]
    open_routes = {("GET", "/agent/login"), ("POST", "/agent/login"), ("GET", "/agent/static")}
    walked = 0
    for method, path in routes:
        if (method, path) in open_routes:
            continue
        url = path.replace("{ticket_id}", str(ticket_id)).replace("{action}", "claim")
        response = await client.request(method, url, data={"text": "x"}, allow_redirects=False)
        if method == "GET":
            assert response.status == 303 and response.headers["Location"].startswith("/agent/login?next="), url
        else:
            assert response.status == 403, url
        walked += 1
    assert walked >= 4
    # Logged in, but without (or with a wrong) CSRF token, or from another site: refused, nothing done.
    await _agent(client, "walker@example.com")
    token = await _logged_in(client, "walker@example.com")
    for data, headers in (
        ({}, {}),
        ({"csrf_token": "x" * len(token)}, {}),
        ({"csrf_token": token}, {"Origin": "https://evil.example"}),
        ({"csrf_token": token}, {"Sec-Fetch-Site": "cross-site"}),
    ):
        response = await client.post(f"/agent/tickets/{ticket_id}/claim", data=data, headers=headers,
                                     allow_redirects=False)
        assert response.status == 403
    async with runtime(client).db.sessions() as session:
        assert (await session.get(Ticket, ticket_id)).assignee_id is None
    # The real token from the same origin works.
    response = await client.post(f"/agent/tickets/{ticket_id}/claim", data={"csrf_token": token},
                                 allow_redirects=False)
    assert response.status == 303


async def test_login_sets_a_strict_cookie_rotates_it_and_logout_ends_it(helpline_client) -> None:
    client = helpline_client
    await _agent(client, "ann@example.com")
    wrong = await _login(client, "ann@example.com", "not the password at all")
    assert wrong.status == 401 and "Wrong email or password." in await wrong.text()
    unknown = await _login(client, "nobody@example.com")
    assert unknown.status == 401 and "Wrong email or password." in await unknown.text()
    first = await _login(client, "Ann@Example.com ", next="/agent/tickets/1")
    assert first.status == 303 and first.headers["Location"] == "/agent/tickets/1"
    cookie = first.cookies[COOKIE]
    assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["path"] == "/agent"
    assert not cookie["secure"]  # plain http here; https or a trusted proxy's X-Forwarded-Proto sets it
    old = cookie.value
    second = await _login(client, "ann@example.com", next="//evil.example/")
    assert second.status == 303 and second.headers["Location"] == "/agent"
    new = second.cookies[COOKIE].value
    assert new != old
    db = runtime(client).db
    assert await accounts.resume_session(db, old, idle_s=3600) is None  # rotated: the old one ended
    assert await accounts.resume_session(db, new, idle_s=3600) is not None
    page = await client.get("/agent")
    assert page.status == 200 and page.headers["Content-Security-Policy"] == AGENT_CSP
    assert page.headers["Cache-Control"] == "no-store"
    token = CSRF.search(await page.text()).group(1)
    out = await client.post("/agent/logout", data={"csrf_token": token}, allow_redirects=False)
    assert out.status == 303
    assert await accounts.resume_session(db, new, idle_s=3600) is None
    assert (await client.get("/agent", allow_redirects=False)).status == 303


async def test_sessions_expire_when_idle_or_old_and_when_the_agent_is_disabled(helpline_client) -> None:
    from datetime import timedelta

    from state.models import utcnow

    db = runtime(helpline_client).db
    agent = await _agent(helpline_client, "bo@example.com")
    token = await accounts.start_session(db, agent.id, absolute_s=3600)
    assert await accounts.resume_session(db, token, idle_s=600, now=utcnow() + timedelta(seconds=599))
    assert await accounts.resume_session(db, token, idle_s=600, now=utcnow() + timedelta(seconds=1300)) is None
    token = await accounts.start_session(db, agent.id, absolute_s=60)
    assert await accounts.resume_session(db, token, idle_s=600, now=utcnow() + timedelta(seconds=61)) is None
    token = await accounts.start_session(db, agent.id, absolute_s=3600)
    await accounts.set_disabled(db, "bo@example.com")
    assert await accounts.resume_session(db, token, idle_s=600) is None
    assert (await _login(helpline_client, "bo@example.com")).status == 401


async def test_login_attempts_for_one_email_lock_it_for_the_window(helpline_client) -> None:
    client = helpline_client
    await _agent(client, "cy@example.com")
    limit = client.server.app[RUNTIME].settings.login_attempts_per_email
    for _ in range(limit):
        assert (await _login(client, "cy@example.com", "guess guess guess")).status == 401
    locked = await _login(client, "cy@example.com")  # the right password, too late
    assert locked.status == 429 and "Too many login attempts for this account" in await locked.text()
    assert COOKIE not in locked.cookies


async def test_guesses_sent_at_once_cannot_pass_the_email_limit(helpline_client) -> None:
    """Break test: 11 wrong guesses and the right password sent together all passed a limit of 5
    that was checked before any of them was counted."""
    client = helpline_client
    await _agent(client, "cal@example.com")
    limit = client.server.app[RUNTIME].settings.login_attempts_per_email
    guesses = [f"wrong guess number {n}" for n in range(limit + 1)] + [PASSWORD]
    responses = await asyncio.gather(*(_login(client, "cal@example.com", g) for g in guesses))
    statuses = [r.status for r in responses]
    assert statuses.count(429) == len(guesses) - limit, statuses
    assert sum(s != 429 for s in statuses) == limit


# --- the loop -----------------------------------------------------------------------------------


async def test_an_agent_claims_replies_notes_and_hands_back_while_the_bot_stays_silent(helpline_client) -> None:
    client = helpline_client
    rt = runtime(client)
    chat = await ChatSocket.open(client.session, str(client.make_url("/")))
    await chat.send("I want to talk to a real person about order #W0000000", "m-1")
    handoff = await chat.bot_reply()
    assert handoff["author"] == "bot"
    await idle(rt)
    await _agent(client, "dee@example.com")
    token = await _logged_in(client, "dee@example.com")
    queue = await (await client.get("/agent?view=unassigned")).text()
    ticket_id = handoff["ticket_id"]
    assert f'href="/agent/tickets/{ticket_id}"' in queue and "explicit_request" in queue
    page = await (await client.get(f"/agent/tickets/{ticket_id}")).text()
    assert "the customer asked for a person" in page and 'data-brief-version="1"' in page
    assert "I want to talk to a real person about order #W0000000" in page
    assert "Send reply" not in page  # not owned yet

    claimed = await client.post(f"/agent/tickets/{ticket_id}/claim", data={"csrf_token": token}, allow_redirects=False)
    assert claimed.status == 303
    replied = await client.post(
        f"/agent/tickets/{ticket_id}/reply", data={"csrf_token": token, "text": "Hi, Dee here. Let me look."},
        allow_redirects=False,
    )
    assert replied.status == 303
    frame = await chat.until(lambda f: f["type"] == "message" and f["author"] == "agent")
    assert frame["text"] == "Hi, Dee here. Let me look." and frame["meta"] is None  # no agent id reaches the customer

    await client.post(f"/agent/tickets/{ticket_id}/note", data={"csrf_token": token, "text": "VIP, be kind"},
                      allow_redirects=False)
    await chat.send("thanks, how long will it take?", "m-2")
    await chat.until(lambda f: f["type"] == "message" and f["client_message_id"] == "m-2")
    await idle(rt)
    quiet = await chat.drain(0.7)
    assert not [f for f in quiet if f["type"] == "message" and f["direction"] == "outbound"]
    assert "VIP, be kind" not in str(chat.frames)
    async with rt.db.sessions() as session:
        texts = list(await session.scalars(select(Message.text).where(Message.ticket_id == ticket_id)))
        assert "VIP, be kind" not in texts
        ticket = await session.get(Ticket, ticket_id)
        assert ticket.state == "human" and ticket.assignee_id is not None

    back = await client.post(f"/agent/tickets/{ticket_id}/hand-back", data={"csrf_token": token},
                             allow_redirects=False)
    assert back.status == 303 and back.headers["Location"] == "/agent?done=hand-back"
    await chat.send("how long does a refund take?", "m-3")
    answer = await chat.bot_reply()
    assert answer["author"] == "bot" and "refund" in answer["text"].lower()
    async with rt.db.sessions() as session:
        kinds = list(await session.scalars(select(Event.kind).where(Event.ticket_id == ticket_id).order_by(Event.id)))
        assert {"claimed", "agent_reply", "note"} <= set(kinds)
        reasons = [e.payload.get("reason") for e in await session.scalars(
            select(Event).where(Event.ticket_id == ticket_id, Event.kind == "transition"))]
        assert "claimed" in reasons and "handed_back" in reasons
        handoffs = await session.scalar(select(func.count()).select_from(Message).where(
            Message.ticket_id == ticket_id, Message.author == "bot"))
        assert handoffs == 2  # the first handoff message and the refund answer: no second handoff
    await chat.close()


async def test_two_agents_claiming_at_once_exactly_one_wins(helpline_client) -> None:
    rt = runtime(helpline_client)
    first = await _agent(helpline_client, "eve@example.com")
    second = await _agent(helpline_client, "fay@example.com")
    for n in range(5):
        ticket_id = await _escalated(helpline_client, f"race-{n}")
        results = await asyncio.gather(
            inbox.claim(rt.db, ticket_id, first), inbox.claim(rt.db, ticket_id, second), return_exceptions=True
        )
        assert sorted(type(r).__name__ for r in results) == ["Conflict", "NoneType"], results
        async with rt.db.sessions() as session:
            ticket = await session.get(Ticket, ticket_id)
            winner = first if results[0] is None else second
            assert ticket.assignee_id == winner.id and ticket.state == "human"
            claims = await session.scalar(select(func.count()).select_from(Event).where(
                Event.ticket_id == ticket_id, Event.kind == "claimed"))
            assert claims == 1


async def test_agents_see_only_the_queue_and_their_own_tickets(helpline_client) -> None:
    client = helpline_client
    rt = runtime(client)
    owner = await _agent(client, "gus@example.com")
    other = await _agent(client, "hal@example.com")
    admin = await _agent(client, "ida@example.com", role="admin")
    ticket_id = await _escalated(client, "owned")
    bot_only = (await rt.conversations.receive(Inbound("webchat", "bot-only", "how long does a refund take?"))).ticket.id
    await idle(rt)
    await inbox.claim(rt.db, ticket_id, owner)
    with pytest.raises(inbox.NotAllowed):
        await inbox.reply(rt.db, ticket_id, other, "I'll take it", lease_s=30)
    with pytest.raises(inbox.NotFound):
        await inbox.ticket_view(rt.db, bot_only, other)  # never handed off: not the inbox's
    with pytest.raises(inbox.NotFound):
        await inbox.ticket_view(rt.db, 10**9, other)
    await inbox.resolve(rt.db, ticket_id, owner)
    with pytest.raises(inbox.NotFound):
        await inbox.ticket_view(rt.db, ticket_id, other)  # resolved by someone else: gone from view
    assert (await inbox.ticket_view(rt.db, ticket_id, owner)).state == "resolved"
    assert (await inbox.ticket_view(rt.db, bot_only, admin)).state == "awaiting_customer"

    token = await _logged_in(client, "hal@example.com")
    for path in (f"/agent/tickets/{ticket_id}", f"/agent/tickets/{bot_only}", "/agent/tickets/999999999"):
        assert (await client.get(path)).status == 404
    refused = await client.post(f"/agent/tickets/{ticket_id}/reopen", data={"csrf_token": token},
                                allow_redirects=False)
    assert refused.status == 404
    # Reopened by its owner, it is back in the queue, owned: others read it but cannot write.
    await inbox.reopen(rt.db, ticket_id, owner)
    page = await client.get(f"/agent/tickets/{ticket_id}")
    assert page.status == 200 and "Send reply" not in await page.text()
    refused = await client.post(f"/agent/tickets/{ticket_id}/reply", data={"csrf_token": token, "text": "hi"},
                                allow_redirects=False)
    assert refused.status == 403 and "another agent owns this ticket" in await refused.text()
    await inbox.transfer(rt.db, ticket_id, owner, other.id)
    assert (await client.post(f"/agent/tickets/{ticket_id}/priority",
                              data={"csrf_token": token, "priority": "urgent"}, allow_redirects=False)).status == 303
    mine = await (await client.get("/agent?view=mine")).text()
    assert f'href="/agent/tickets/{ticket_id}"' in mine and "urgent" in mine


async def test_customer_text_is_escaped_and_bidi_shown_in_every_inbox_view(helpline_client) -> None:
    client = helpline_client
    payloads = [
        "<script>alert(1)</script> I want to talk to a real person",
        '<img src=x onerror="alert(2)"> ![x](https://evil.example/x.png) speak to an agent please',
        "invoice_\u202eFDP.exe is attached, I want a human",
    ]
    ids = [await _escalated(client, f"xss-{n}", text) for n, text in enumerate(payloads)]
    await _agent(client, "jo@example.com", role="admin")
    await _logged_in(client, "jo@example.com")
    pages = [await (await client.get("/agent")).text()]
    pages += [await (await client.get(f"/agent/tickets/{i}")).text() for i in ids]
    for page in pages:
        assert "<script>alert" not in page and "<img src=x" not in page and "\u202e" not in page
        assert "<img" not in page
        # The only script is the inbox's own file (no inline script; the CSP allows 'self' only).
        assert re.findall(r"<script[^>]*>", page) in ([], ['<script src="/agent/static/agent.js" defer>'])
    joined = "\n".join(pages)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in joined
    assert "&lt;img src=x onerror=&#34;alert(2)&#34;&gt;" in joined
    assert "invoice_[U+202E]FDP.exe" in joined


# --- helpline agents ------------------------------------------------------------------------------


def test_agents_commands_add_list_disable_and_change_passwords(database_url: str, tmp_path, monkeypatch) -> None:
    from click.testing import CliRunner

    from helpline.cli import main as cli

    monkeypatch.setenv("HELPLINE_DATA_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("HELPLINE_DATABASE_URL", database_url)

    def run(*args: str, stdin: str | None = None) -> Any:
        return CliRunner().invoke(cli, ["agents", *args], input=stdin)

    assert run("list").output.strip() == "no agents yet: helpline agents add EMAIL"
    made = run("add", "Lead@Example.com", "--role", "admin", "--name", "Lee", "--password-stdin", stdin=PASSWORD + "\n")
    assert made.exit_code == 0 and "agent 1 lead@example.com (admin) created" in made.output
    prompted = run("add", "kim@example.com", stdin=f"{PASSWORD}\n{PASSWORD}\n")
    assert prompted.exit_code == 0, prompted.output
    short = run("add", "max@example.com", "--password-stdin", stdin="hunter2\n")
    assert short.exit_code == 2 and "a password needs 12 to 1024 characters, got 7" in short.output
    twice = run("add", "KIM@example.com", "--password-stdin", stdin=PASSWORD + "\n")
    assert twice.exit_code == 2 and "already exists" in twice.output
    bad = run("add", "not-an-email", "--password-stdin", stdin=PASSWORD + "\n")
    assert bad.exit_code == 2 and "not an email address" in bad.output
    assert run("disable", "kim@example.com").output.strip() == "agent kim@example.com disabled"
    listed = run("list").output.splitlines()
    assert listed == ["1\tlead@example.com\tadmin\tactive\tLee", "2\tkim@example.com\tagent\tdisabled\t"]
    assert run("disable", "kim@example.com", "--enable").output.strip() == "agent kim@example.com enabled"
    assert run("disable", "nobody@example.com").exit_code == 2
    changed = run("password", "kim@example.com", "--password-stdin", stdin="another long password\n")
    assert changed.exit_code == 0

    async def check() -> None:
        from state.db import open_database

        db = open_database(database_url)
        try:
            _, hashed, _ = await accounts.find_login(db, "kim@example.com")
            assert hashed.startswith("$argon2id$")
            assert accounts.verify_password(hashed, "another long password")
            assert not accounts.verify_password(hashed, PASSWORD)
        finally:
            await db.dispose()

    asyncio.run(check())



# --- break-test regressions -------------------------------------------------------------------------


async def test_a_turn_running_when_an_agent_reopens_the_ticket_sends_nothing(helpline_client) -> None:
    """Break test: the customer wrote to a resolved ticket and the agent reopened it while the turn
    ran; the bot's answer went out to a ticket a person owned, which then left the queue."""
    rt = runtime(helpline_client)
    agent = await _agent(helpline_client, "kai@example.com")
    ticket_id = await _escalated(helpline_client, "reopen-race")
    await inbox.claim(rt.db, ticket_id, agent)
    await inbox.resolve(rt.db, ticket_id, agent)
    entered, release = asyncio.Event(), asyncio.Event()
    route = rt.router.route

    async def slow_route(text: str, context: Any) -> Any:
        entered.set()
        await release.wait()
        return await route(text, context)

    rt.router.route = slow_route
    try:
        await rt.conversations.receive(Inbound("webchat", "reopen-race", "how long does a refund take?"))
        await asyncio.wait_for(entered.wait(), 10)
        await inbox.reopen(rt.db, ticket_id, agent)
        release.set()
        await idle(rt)
    finally:
        rt.router.route = route
    async with rt.db.sessions() as session:
        ticket = await session.get(Ticket, ticket_id)
        assert ticket.state == "human" and ticket.assignee_id == agent.id
        last = await session.scalar(select(Message).where(Message.ticket_id == ticket_id).order_by(Message.id.desc()).limit(1))
        assert last.author == "customer" and last.processed_at is not None
        turn = await session.scalar(select(Event).where(Event.ticket_id == ticket_id, Event.kind == "turn")
                                    .order_by(Event.id.desc()).limit(1))
        assert turn.payload["reason"] == "human_owns_ticket"


async def test_a_ticket_the_bot_took_back_is_anyones_to_claim_when_it_escalates_again(helpline_client) -> None:
    """Break test: after resolve and a customer's new question the ticket kept its old owner, so its
    next handoff was missing from 'unassigned' and nobody else could claim it."""
    rt = runtime(helpline_client)
    first = await _agent(helpline_client, "lin@example.com")
    second = await _agent(helpline_client, "mo@example.com")
    ticket_id = await _escalated(helpline_client, "comes-back")
    await inbox.claim(rt.db, ticket_id, first)
    await inbox.resolve(rt.db, ticket_id, first)
    await rt.conversations.receive(Inbound("webchat", "comes-back", "how long does a refund take?"))
    await idle(rt)
    async with rt.db.sessions() as session:
        ticket = await session.get(Ticket, ticket_id)
        assert ticket.state == "awaiting_customer" and ticket.assignee_id is None
    with pytest.raises(inbox.NotFound):
        await inbox.ticket_view(rt.db, ticket_id, first)
    await rt.conversations.receive(Inbound("webchat", "comes-back", "I want to talk to a real person"))
    await idle(rt)
    assert [i.ticket_id for i in await inbox.queue(rt.db, second, view="unassigned")] == [ticket_id]
    await inbox.claim(rt.db, ticket_id, second)
    with pytest.raises(inbox.Conflict, match="you already own this ticket"):
        await inbox.claim(rt.db, ticket_id, second)


async def test_malformed_posts_get_400_and_change_nothing(helpline_client) -> None:
    client = helpline_client
    form = "application/x-www-form-urlencoded"
    for body, content_type in ((b"email=\xff&password=x", form), (b"email=a&password=b", form + "; charset=nope")):
        response = await client.post("/agent/login", data=body, headers={"Content-Type": content_type})
        assert response.status == 400
    await _agent(client, "ned@example.com")
    token = await _logged_in(client, "ned@example.com")
    ticket_id = await _escalated(client, "malformed")
    await client.post(f"/agent/tickets/{ticket_id}/claim", data={"csrf_token": token}, allow_redirects=False)
    superscript = await client.post(f"/agent/tickets/{ticket_id}/transfer",
                                    data={"csrf_token": token, "agent_id": "\u00b2"}, allow_redirects=False)
    assert superscript.status == 400 and "choose an agent" in await superscript.text()
    import aiohttp

    upload = aiohttp.FormData()
    upload.add_field("csrf_token", token)
    upload.add_field("text", b"evil", filename="evil.txt", content_type="text/plain")
    refused = await client.post(f"/agent/tickets/{ticket_id}/reply", data=upload, allow_redirects=False)
    assert refused.status == 400 and "must be text, not a file" in await refused.text()
    async with runtime(client).db.sessions() as session:
        authors = list(await session.scalars(select(Message.author).where(Message.ticket_id == ticket_id)))
        assert "agent" not in authors


async def test_replayed_tickets_are_nobodys_even_by_id(helpline_client) -> None:
    rt = runtime(helpline_client)
    admin = await _agent(helpline_client, "oz@example.com", role="admin")
    accepted = await rt.conversations.receive(Inbound("replay", "replayed", "I want to talk to a real person"))
    await idle(rt)
    with pytest.raises(inbox.NotFound):
        await inbox.ticket_view(rt.db, accepted.ticket.id, admin)
    with pytest.raises(inbox.NotFound):
        await inbox.claim(rt.db, accepted.ticket.id, admin)


async def test_the_queue_puts_the_most_urgent_first_whatever_its_length(helpline_client) -> None:
    """The queue used to fetch 4 x limit tickets by waiting time and sort those by priority, so an
    urgent ticket behind them was left out."""
    rt = runtime(helpline_client)
    admin = await _agent(helpline_client, "pia@example.com", role="admin")
    ids = [await _escalated(helpline_client, f"queue-{n}") for n in range(6)]
    await inbox.claim(rt.db, ids[-1], admin)
    await inbox.set_priority(rt.db, ids[-1], admin, "urgent", sla=rt.sla.config)
    await inbox.claim(rt.db, ids[-2], admin)
    await inbox.set_priority(rt.db, ids[-2], admin, "low", sla=rt.sla.config)
    assert [i.ticket_id for i in await inbox.queue(rt.db, admin, limit=1)] == [ids[-1]]
    assert [i.ticket_id for i in await inbox.queue(rt.db, admin)] == [ids[-1], *ids[:4], ids[-2]]


async def test_the_queue_filters_by_the_customers_language(helpline_client) -> None:
    client = helpline_client
    rt = runtime(client)
    german = await _escalated(client, "lang-de", "Wo ist meine Bestellung? Ich warte schon seit zwei Wochen auf das Paket.")
    english = await _escalated(client, "lang-en")
    admin = await _agent(client, "lin@example.com", role="admin")
    assert [i.ticket_id for i in await inbox.queue(rt.db, admin, language="de")] == [german]
    assert [(i.ticket_id, i.language) for i in await inbox.queue(rt.db, admin, language="en")] == [(english, "en")]
    await _logged_in(client, "lin@example.com")
    page = await (await client.get("/agent?language=de")).text()
    assert f'data-ticket-id="{german}"' in page and f'data-ticket-id="{english}"' not in page
    assert '<option selected>de</option>' in page and 'data-language="de"' in page


async def test_the_bot_stays_silent_on_a_persons_ticket_whichever_process_gets_the_message(
    app_settings, aiohttp_client
) -> None:
    """Two servers on one database (each with its own in-process locks, as two processes without
    Redis): while an agent owns the ticket, customer messages reaching either server get no bot
    reply; after the hand-back, either server's bot answers."""
    from helpline.server import build_app

    first = await aiohttp_client(build_app(app_settings))
    second = await aiohttp_client(build_app(app_settings))
    rt_a, rt_b = runtime(first), runtime(second)
    ticket_id = await _escalated(first, "two-procs")
    agent = await accounts.add_agent(rt_a.db, "two@example.com", PASSWORD)
    await inbox.claim(rt_a.db, ticket_id, agent)
    for n, rt in enumerate((rt_a, rt_b, rt_a, rt_b)):
        await rt.conversations.receive(Inbound("webchat", "two-procs", f"are you there? ({n})"))
    await asyncio.gather(idle(rt_a), idle(rt_b))
    for rt in (rt_a, rt_b):
        await rt.conversations.sweep(0)  # whatever one process left, the other would pick up
    await asyncio.gather(idle(rt_a), idle(rt_b))
    async with rt_a.db.sessions() as session:
        claimed_at = await session.scalar(
            select(func.max(Event.id)).where(Event.ticket_id == ticket_id, Event.kind == "claimed")
        )
        bot_after = await session.scalar(select(func.count()).select_from(Message).where(
            Message.ticket_id == ticket_id, Message.author == "bot",
            Message.created_at > (await session.get(Event, claimed_at)).created_at,
        ))
        pending = await session.scalar(select(func.count()).select_from(Message).where(
            Message.ticket_id == ticket_id, Message.direction == "inbound", Message.processed_at.is_(None)))
        ticket = await session.get(Ticket, ticket_id)
    assert (bot_after, pending, ticket.state) == (0, 0, "human")
    await inbox.hand_back(rt_a.db, ticket_id, agent)
    await rt_b.conversations.receive(Inbound("webchat", "two-procs", "how long does a refund take?"))
    await idle(rt_b)
    async with rt_b.db.sessions() as session:
        last = (await session.scalars(select(Message).where(Message.ticket_id == ticket_id)
                                      .order_by(Message.id.desc()).limit(1))).one()
    assert last.author == "bot" and "refund" in last.text.lower()


async def test_web_chat_session_ids_never_reach_agents_the_api_or_the_brief(helpline_client) -> None:
    """Found by a break test: the customer's identity address on web chat is the session id, a
    credential that resumes the customer's chat; the API and the brief (and so the webhook) carried it."""
    import hashlib
    import json

    from state import api_tokens

    client = helpline_client
    rt = runtime(client)
    secret = "wFn42VTu14I7BTUbzzHxCwhQi.sKvcpJVxTic1Q_secret-session"
    ticket_id = await _escalated(client, secret)
    shown = "session " + hashlib.sha256(secret.encode()).hexdigest()[:8]
    admin = await _agent(client, "mask@example.com", role="admin")
    view = await inbox.ticket_view(rt.db, ticket_id, admin)
    assert view.identities == [("webchat", shown)]
    assert view.brief["customer"]["identities"] == [{"channel": "webchat", "address": shown}]
    token, _ = await api_tokens.issue(rt.db, "mask@example.com")
    response = await client.get(f"/agent/api/tickets/{ticket_id}", headers={"Authorization": f"Bearer {token}"})
    body = await response.text()
    assert response.status == 200 and shown in body and "secret-session" not in body
    async with rt.db.sessions() as session:
        stored = await session.get(Ticket, ticket_id)
    assert "secret-session" not in json.dumps(stored.brief) + stored.handoff_summary


async def test_the_ticket_page_warns_before_a_hand_back_leaves_a_message_unanswered(helpline_client) -> None:
    """Found by a support lead: a question the customer asked while an agent owned the ticket was
    answered by nobody after the hand-back, and nothing said so."""
    client = helpline_client
    rt = runtime(client)
    ticket_id = await _escalated(client, "unanswered")
    await _agent(client, "una@example.com")
    csrf = await _logged_in(client, "una@example.com")
    assert (await client.post(f"/agent/tickets/{ticket_id}/claim", data={"csrf_token": csrf},
                              allow_redirects=False)).status == 303
    assert 'id="unanswered"' in await (await client.get(f"/agent/tickets/{ticket_id}")).text()
    assert (await client.post(f"/agent/tickets/{ticket_id}/reply", data={"csrf_token": csrf, "text": "On it."},
                              allow_redirects=False)).status == 303
    assert 'id="unanswered"' not in await (await client.get(f"/agent/tickets/{ticket_id}")).text()
    await rt.conversations.receive(Inbound("webchat", "unanswered", "could it arrive before Friday?"))
    await idle(rt)
    assert 'id="unanswered"' in await (await client.get(f"/agent/tickets/{ticket_id}")).text()
