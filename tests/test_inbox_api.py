"""The inbox's JSON API at /agent/api: API tokens, every route refusing callers without a good token,
who may see and do what, the claim race, a reply reaching the customer's widget, hand back, bad
bodies, and the OpenAPI document checked against the served routes and real responses. On the real
application (aiohttp test client) with a real widget socket, on both database backends."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import jsonschema
import pytest
from app_fixtures import ChatSocket, idle, runtime
from openapi_spec_validator import validate as validate_spec
from sqlalchemy import func, select

from helpline.conversation import Inbound
from helpline.inbox_api import MAX_BODY_BYTES, openapi_document
from state import agents as accounts
from state import api_tokens
from state.models import AgentApiToken, Message, OutboxEntry, Ticket

PASSWORD = "correct horse battery staple"
API = "/agent/api"


async def _token(client: Any, email: str, role: str = "agent") -> str:
    db = runtime(client).db
    await accounts.add_agent(db, email, PASSWORD, role=role)
    secret, _ = await api_tokens.issue(db, email, label="tests")
    return secret


async def _escalated(client: Any, address: str, text: str = "I want to talk to a real person") -> int:
    rt = runtime(client)
    accepted = await rt.conversations.receive(Inbound("webchat", address, text))
    await idle(rt)
    async with rt.db.sessions() as session:
        assert (await session.get(Ticket, accepted.ticket.id)).state == "escalated"
    return accepted.ticket.id


async def call(client: Any, method: str, path: str, token: str | None = None, body: Any = None,
               **kwargs: Any) -> tuple[int, Any]:
    """One API request; ``(status, decoded JSON)``. ``path`` is under /agent/api."""
    headers = dict(kwargs.pop("headers", {}))
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if body is not None:
        kwargs["json"] = body
    response = await client.request(method, API + path, headers=headers, **kwargs)
    assert response.content_type == "application/json", (response.status, await response.text())
    assert response.headers["Cache-Control"] == "no-store"
    return response.status, await response.json()


def conforms(method: str, template: str, status: int, payload: Any) -> None:
    """``payload`` validates against the document's response schema for that operation and status."""
    doc = openapi_document()
    schema = doc["paths"][API + template][method.lower()]["responses"][str(status)]["content"]["application/json"]
    validator = jsonschema.Draft202012Validator(
        {**schema["schema"], "components": doc["components"]},
        format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER,
    )
    validator.validate(payload)


# --- tokens ---------------------------------------------------------------------------------------


async def test_tokens_are_issued_once_stored_hashed_used_and_revoked(migrated_database_url: str) -> None:
    from state.db import open_database

    db = open_database(migrated_database_url)
    try:
        agent = await accounts.add_agent(db, "Tia@Example.com", PASSWORD)
        secret, info = await api_tokens.issue(db, "tia@example.com", label="  nightly\nsync ")
        assert secret.startswith("hlp_") and len(secret) == 4 + 43
        assert info.id == api_tokens.digest(secret)[:12] and info.label == "nightly sync"
        async with db.sessions() as session:
            rows = list(await session.scalars(select(AgentApiToken)))
        assert [r.token_sha256 for r in rows] == [api_tokens.digest(secret)]  # never the secret itself
        assert rows[0].last_used_at is None

        login = await api_tokens.authenticate(db, secret)
        assert login is not None and login.agent.id == agent.id and login.token_id == info.id
        first_use = (await api_tokens.list_tokens(db, "tia@example.com"))[0].last_used_at
        assert first_use is not None
        # Used again within the minute: no write; a minute later: written.
        await api_tokens.authenticate(db, secret, now=first_use + timedelta(seconds=30))
        assert (await api_tokens.list_tokens(db, "tia@example.com"))[0].last_used_at == first_use
        later = first_use + timedelta(seconds=61)
        await api_tokens.authenticate(db, secret, now=later)
        assert (await api_tokens.list_tokens(db, "tia@example.com"))[0].last_used_at == later

        for wrong in ("", "hlp_", secret[:-1], secret + "x", "Bearer " + secret, "hlp_" + "a" * 200, "x" * 40):
            assert await api_tokens.authenticate(db, wrong) is None

        # Disabled agent: refused, and no new token; enabled again: the token works again.
        await accounts.set_disabled(db, "tia@example.com")
        assert await api_tokens.authenticate(db, secret) is None
        with pytest.raises(accounts.AgentError, match="is disabled"):
            await api_tokens.issue(db, "tia@example.com")
        await accounts.set_disabled(db, "tia@example.com", False)
        assert await api_tokens.authenticate(db, secret) is not None

        other, other_info = await api_tokens.issue(db, "tia@example.com")
        with pytest.raises(accounts.AgentError, match="hex characters"):
            await api_tokens.revoke(db, info.id[:7])
        with pytest.raises(accounts.AgentError, match="no API token"):
            await api_tokens.revoke(db, "0" * 12 if not info.id.startswith("0" * 12) else "f" * 12)
        revoked = await api_tokens.revoke(db, info.id.upper())
        assert revoked.id == info.id and revoked.revoked_at is not None
        assert await api_tokens.authenticate(db, secret) is None
        assert await api_tokens.authenticate(db, other) is not None
        await api_tokens.revoke(db, other)  # by the whole secret
        assert await api_tokens.authenticate(db, other) is None
        listed = await api_tokens.list_tokens(db, "TIA@example.com")
        assert {t.id for t in listed} == {info.id, other_info.id} and not any(t.active for t in listed)

        with pytest.raises(accounts.AgentError, match="no agent with email"):
            await api_tokens.issue(db, "nobody@example.com")
        with pytest.raises(accounts.AgentError, match="at most 200 characters"):
            await api_tokens.issue(db, "tia@example.com", label="x" * 201)
    finally:
        await db.dispose()


def test_token_commands_make_list_and_revoke(database_url: str, tmp_path, monkeypatch) -> None:
    from click.testing import CliRunner

    from helpline.cli import main as cli

    monkeypatch.setenv("HELPLINE_DATA_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("HELPLINE_DATABASE_URL", database_url)

    def run(*args: str, stdin: str | None = None) -> Any:
        return CliRunner().invoke(cli, ["agents", *args], input=stdin)

    assert run("add", "desk@example.com", "--password-stdin", stdin=PASSWORD + "\n").exit_code == 0
    assert run("tokens", "desk@example.com").output.strip() == "no API tokens: helpline agents token desk@example.com"
    made = run("token", "Desk@example.com", "--label", "help desk")
    assert made.exit_code == 0, made.output
    secret = made.stdout.strip()
    assert secret.startswith("hlp_") and "\n" not in secret  # stdout: the token alone, for TOKEN=$(...)
    token_id = api_tokens.digest(secret)[:12]
    assert f"token {token_id} for desk@example.com made" in made.stderr
    listed = run("tokens", "desk@example.com").output.splitlines()
    assert len(listed) == 1
    fields = listed[0].split("\t")
    assert fields[0] == token_id and fields[1] == "active" and fields[3] == "never" and fields[4] == "help desk"
    assert run("token", "nobody@example.com").exit_code == 2
    assert run("token", "desk@example.com", "--label", "x" * 201).exit_code == 2
    assert run("revoke-token", "abc").exit_code == 2
    revoked = run("revoke-token", token_id[:8])
    assert revoked.exit_code == 0 and revoked.output.strip() == f"token {token_id} of desk@example.com revoked"
    assert run("tokens", "desk@example.com").output.split("\t")[1].startswith("revoked ")


# --- access ----------------------------------------------------------------------------------------


async def _client(app_settings: Any, aiohttp_client: Any, **settings: Any) -> Any:
    from helpline.server import build_app

    return await aiohttp_client(build_app(app_settings.model_copy(update=settings)))


async def test_every_api_route_refuses_a_missing_wrong_or_revoked_token(app_settings, aiohttp_client) -> None:
    # 4 kinds of wrong token on each of 11 routes: over the default per-address limit of failures.
    client = await _client(app_settings, aiohttp_client, login_attempts_per_address=100)
    ticket_id = await _escalated(client, "api-walk")
    good = await _token(client, "walk@example.com")
    revoked = await _token(client, "gone@example.com")
    await api_tokens.revoke(runtime(client).db, revoked)
    disabled = await _token(client, "off@example.com")
    await accounts.set_disabled(runtime(client).db, "off@example.com")
    routes = sorted({
        (r.method, r.resource.canonical) for r in client.server.app.router.routes()
        if r.resource is not None and r.resource.canonical.startswith(API + "/")
    })
    walked = 0
    for method, path in routes:
        url = path.replace(API, "").replace("{ticket_id}", str(ticket_id))
        if path == API + "/openapi.json":
            status, _ = await call(client, method, url)
            assert status == 200  # the document is public
            continue
        for token, headers in ((None, {}), ("hlp_wrong", {}), (revoked, {}), (disabled, {}),
                               (None, {"Authorization": f"Basic {good}"}), (None, {"Cookie": f"helpline_agent={good}"})):
            response = await client.request(method, API + url, headers={
                **headers, **({"Authorization": f"Bearer {token}"} if token else {})}, json={"text": "x"})
            body = await response.json()
            assert response.status == 401, (method, url, token, body)
            assert body["error"]["code"] == "unauthorized" and response.headers["WWW-Authenticate"].startswith("Bearer")
            conforms(method, path.replace(API, ""), 401, body)
        walked += 1
    assert walked == 11
    async with runtime(client).db.sessions() as session:
        ticket = await session.get(Ticket, ticket_id)
        assert ticket.assignee_id is None and ticket.state == "escalated"  # nothing was done
    status, me = await call(client, "GET", "/me", good)
    assert status == 200 and me["email"] == "walk@example.com" and me["token"]["label"] == "tests"
    conforms("GET", "/me", 200, me)


async def test_unknown_routes_methods_and_ids_answer_json(helpline_client) -> None:
    client = helpline_client
    token = await _token(client, "lost@example.com")
    for method, path, status in (("GET", "/nope", 404), ("GET", "/tickets/abc", 404), ("DELETE", "/tickets", 405),
                                 ("GET", "/tickets/1/claim", 405), ("POST", "/tickets/1/explode", 404),
                                 ("GET", "/tickets/999999999", 404)):
        got, body = await call(client, method, path, token)
        assert got == status, (method, path, body)
        assert set(body) == {"error"} and body["error"]["code"] in ("not_found", "method_not_allowed")


async def test_wrong_tokens_from_one_address_are_limited(app_settings, aiohttp_client) -> None:
    client = await _client(app_settings, aiohttp_client, login_attempts_per_address=3)
    good = await _token(client, "lim@example.com")
    for _ in range(3):
        assert (await call(client, "GET", "/me"))[0] == 401  # no token at all: not counted
    assert (await call(client, "GET", "/me", good))[0] == 200
    for _ in range(3):
        assert (await call(client, "GET", "/me", "hlp_guess"))[0] == 401
    status, body = await call(client, "GET", "/me", "hlp_guess")
    assert status == 429 and body["error"]["code"] == "rate_limited"
    assert (await call(client, "GET", "/me", good))[0] == 429  # the address waits out the window
    conforms("GET", "/me", 429, body)


async def test_agents_see_only_the_queue_and_their_own_tickets_and_write_only_what_they_own(helpline_client) -> None:
    client = helpline_client
    rt = runtime(client)
    owner = await _token(client, "own@example.com")
    other = await _token(client, "oth@example.com")
    admin = await _token(client, "adm@example.com", role="admin")
    ticket_id = await _escalated(client, "api-owned")
    bot_only = (await rt.conversations.receive(Inbound("webchat", "api-bot", "how long does a refund take?"))).ticket.id
    await idle(rt)
    assert (await call(client, "POST", f"/tickets/{ticket_id}/claim", owner))[0] == 200
    # Readable (in the queue) but owned by someone else: 403 for writes.
    status, body = await call(client, "POST", f"/tickets/{ticket_id}/reply", other, {"text": "mine now"})
    assert status == 403 and body["error"] == {"code": "forbidden", "message": "another agent owns this ticket"}
    conforms("POST", "/tickets/{ticket_id}/reply", 403, body)
    # Never handed off, or resolved by someone else: 404, like an id that does not exist.
    assert (await call(client, "GET", f"/tickets/{bot_only}", other))[0] == 404
    assert (await call(client, "POST", f"/tickets/{bot_only}/claim", other))[0] == 404
    assert (await call(client, "POST", f"/tickets/{ticket_id}/resolve", owner))[0] == 200
    for method, path in (("GET", ""), ("POST", "/reopen"), ("POST", "/note")):
        status, body = await call(client, method, f"/tickets/{ticket_id}{path}", other,
                                  {"text": "x"} if path == "/note" else None)
        assert status == 404 and body["error"]["message"] == "no such ticket", (path, body)
    conforms("GET", "/tickets/{ticket_id}", 404, body)
    status, view = await call(client, "GET", f"/tickets/{bot_only}", admin)
    assert status == 200 and view["state"] == "awaiting_customer"
    conforms("GET", "/tickets/{ticket_id}", 200, view)
    status, body = await call(client, "POST", f"/tickets/{ticket_id}/reopen", owner)
    assert status == 200 and body["ticket"]["state"] == "human"
    # Transfer by email, priority by the new owner, a 409 for a second claim.
    status, body = await call(client, "POST", f"/tickets/{ticket_id}/transfer", owner, {"agent_email": "OTH@example.com"})
    assert status == 200 and body["ticket"]["assignee"]["name"] == "oth@example.com"
    conforms("POST", "/tickets/{ticket_id}/transfer", 200, body)
    status, body = await call(client, "POST", f"/tickets/{ticket_id}/priority", other, {"priority": "urgent"})
    assert status == 200 and body["ticket"]["priority"] == "urgent"
    status, body = await call(client, "POST", f"/tickets/{ticket_id}/claim", owner)
    assert status == 409 and body["error"]["code"] == "conflict"
    status, body = await call(client, "POST", f"/tickets/{ticket_id}/transfer", other, {"agent_email": "no@example.com"})
    assert status == 400 and body["error"]["message"] == "no active agent with that email"
    status, page = await call(client, "GET", "/tickets?view=mine&priority=urgent", other)
    assert status == 200 and [t["id"] for t in page["tickets"]] == [ticket_id]
    conforms("GET", "/tickets", 200, page)
    assert (await call(client, "GET", "/tickets?view=mine", owner))[1] == {"tickets": []}


async def test_two_tokens_claiming_at_once_exactly_one_wins(helpline_client) -> None:
    client = helpline_client
    rt = runtime(client)
    first = await _token(client, "one@example.com")
    second = await _token(client, "two@example.com")
    for n in range(4):
        ticket_id = await _escalated(client, f"api-race-{n}")
        results = await asyncio.gather(
            call(client, "POST", f"/tickets/{ticket_id}/claim", first),
            call(client, "POST", f"/tickets/{ticket_id}/claim", second),
        )
        assert sorted(status for status, _ in results) == [200, 409], results
        winner = next(body for status, body in results if status == 200)
        loser = next(body for status, body in results if status == 409)
        assert winner["ticket"]["state"] == "human"
        assert loser["error"]["message"] == "another agent claimed this ticket first"
        async with rt.db.sessions() as session:
            ticket = await session.get(Ticket, ticket_id)
            assert ticket.assignee_id == winner["ticket"]["assignee"]["id"]


# --- the loop -------------------------------------------------------------------------------------


async def test_a_help_desk_reads_claims_replies_to_the_widget_and_hands_back(helpline_client) -> None:
    client = helpline_client
    rt = runtime(client)
    chat = await ChatSocket.open(client.session, str(client.make_url("/")))
    await chat.send("I want to talk to a real person about order #W0000000", "m-1")
    handoff = await chat.bot_reply()
    ticket_id = handoff["ticket_id"]
    await idle(rt)
    token = await _token(client, "desk@example.com")

    status, page = await call(client, "GET", "/tickets?view=unassigned&channel=webchat&limit=10", token)
    assert status == 200 and [t["id"] for t in page["tickets"]] == [ticket_id]
    entry = page["tickets"][0]
    assert entry["state"] == "escalated" and entry["reason"] == "explicit_request" and entry["assignee"] is None
    assert entry["preview"] == "I want to talk to a real person about order #W0000000"
    conforms("GET", "/tickets", 200, page)

    status, view = await call(client, "GET", f"/tickets/{ticket_id}", token)
    assert status == 200
    conforms("GET", "/tickets/{ticket_id}", 200, view)
    assert view["summary"] and "asked for a person" in view["summary"]
    assert [(m["author"], m["direction"]) for m in view["transcript"]] == [("customer", "inbound"), ("bot", "outbound")]
    assert view["transcript"][1]["tier"] is not None and view["customer"]["identities"][0]["channel"] == "webchat"
    assert "brief" in view  # null until the ticket has a structured brief

    status, body = await call(client, "POST", f"/tickets/{ticket_id}/claim", token, headers={"Content-Length": "0"})
    assert status == 200 and body["ticket"]["assignee"]["name"] == "desk@example.com"
    conforms("POST", "/tickets/{ticket_id}/claim", 200, body)

    status, sent = await call(client, "POST", f"/tickets/{ticket_id}/reply", token, {"text": "Hi, the desk here. \u00e9"})
    assert status == 200 and sent["message"]["delivered"] is True and sent["message"]["channel"] == "webchat"
    conforms("POST", "/tickets/{ticket_id}/reply", 200, sent)
    frame = await chat.until(lambda f: f["type"] == "message" and f["author"] == "agent")
    assert frame["text"] == "Hi, the desk here. \u00e9" and frame["meta"] is None
    async with rt.db.sessions() as session:
        message = await session.get(Message, sent["message"]["id"])
        assert message.author == "agent" and message.meta == {"agent_id": (await call(client, "GET", "/me", token))[1]["id"]}
        entry_row = await session.scalar(select(OutboxEntry).where(OutboxEntry.message_id == message.id))
        assert entry_row is not None and entry_row.status == "sent"

    status, body = await call(client, "POST", f"/tickets/{ticket_id}/note", token, {"text": "VIP via API"})
    assert status == 200
    await chat.send("thanks, how long will it take?", "m-2")
    await chat.until(lambda f: f["type"] == "message" and f["client_message_id"] == "m-2")
    await idle(rt)
    assert not [f for f in await chat.drain(0.7) if f["type"] == "message" and f["direction"] == "outbound"]
    assert "VIP via API" not in str(chat.frames)

    status, body = await call(client, "POST", f"/tickets/{ticket_id}/hand-back", token, {})
    assert status == 200 and body["ticket"] == {"id": ticket_id, "state": "bot", "priority": "normal", "assignee": None}
    conforms("POST", "/tickets/{ticket_id}/hand-back", 200, body)
    await chat.send("how long does a refund take?", "m-3")
    answer = await chat.bot_reply()
    assert answer["author"] == "bot" and "refund" in answer["text"].lower()
    async with rt.db.sessions() as session:
        bot_messages = await session.scalar(select(func.count()).select_from(Message).where(
            Message.ticket_id == ticket_id, Message.author == "bot"))
        assert bot_messages == 2  # the handoff and the refund answer: no second handoff
    await chat.close()


# --- bad input ------------------------------------------------------------------------------------


async def test_bad_bodies_and_queries_get_4xx_and_change_nothing(helpline_client) -> None:
    client = helpline_client
    token = await _token(client, "bad@example.com")
    ticket_id = await _escalated(client, "api-bad")
    assert (await call(client, "POST", f"/tickets/{ticket_id}/claim", token))[0] == 200
    reply = f"/tickets/{ticket_id}/reply"
    auth = {"Authorization": f"Bearer {token}"}
    cases = [
        (dict(data=b'{"text": "hi"}', headers={**auth, "Content-Type": "text/plain"}), 415, "unsupported_media_type"),
        (dict(data=b"text=hi", headers={**auth, "Content-Type": "application/x-www-form-urlencoded"}), 415, None),
        (dict(data='{"text": "hi"}'.encode("utf-16"), headers={**auth, "Content-Type": "application/json; charset=utf-16"}),
         415, None),
        (dict(data=b'{"text": "hi"', headers={**auth, "Content-Type": "application/json"}), 400, "invalid_json"),
        (dict(data=b'{"text": "\xff"}', headers={**auth, "Content-Type": "application/json"}), 400, "invalid_json"),
        (dict(data=b"[" * 50_000, headers={**auth, "Content-Type": "application/json"}), 400, "invalid_json"),
        # A repeated key (found by a break test: the last one was stored, a proxy may read the first).
        (dict(data=b'{"text": "x", "text": "y"}', headers={**auth, "Content-Type": "application/json"}), 400,
         "invalid_json"),
        (dict(json={"text": "hi", "cc": "boss@example.com"}, headers=auth), 400, "invalid_body"),
        (dict(json={"text": 5}, headers=auth), 400, "invalid_body"),
        (dict(json=["hi"], headers=auth), 400, "invalid_body"),
        (dict(json={"text": ""}, headers=auth), 400, "invalid_body"),
        (dict(json={"text": "x" * 4001}, headers=auth), 400, "invalid_body"),
        (dict(json={"text": "   "}, headers=auth), 400, "bad_request"),
        (dict(headers=auth), 400, "invalid_body"),
        (dict(data=b"{" + b" " * MAX_BODY_BYTES + b"}", headers={**auth, "Content-Type": "application/json"}),
         413, "too_large"),
    ]
    for kwargs, status, code in cases:
        response = await client.post(API + reply, **kwargs)
        body = await response.json()
        assert response.status == status, (kwargs.get("json"), body)
        if code:
            assert body["error"]["code"] == code, body
        conforms("POST", "/tickets/{ticket_id}/reply", status, body)
    refused = await client.post(API + reply, json={"text": "hi", "extra": 1}, headers=auth)
    assert (await refused.json())["error"]["details"] == [{"field": "extra", "message": "Extra inputs are not permitted"}]

    async def chunks() -> Any:  # no Content-Length: the limit still holds while reading
        for _ in range(MAX_BODY_BYTES // 1024 + 2):
            yield b" " * 1024

    chunked = await client.post(API + reply, data=chunks(), headers={**auth, "Content-Type": "application/json"})
    assert chunked.status == 413

    for path, body in (("transfer", {"agent_id": 1, "agent_email": "a@example.com"}), ("transfer", {}),
                       ("transfer", {"agent_id": "1"}), ("priority", {"priority": "asap"}), ("claim", {"force": True}),
                       ("resolve", [])):
        status, answer = await call(client, "POST", f"/tickets/{ticket_id}/{path}", token, body)
        assert status == 400 and answer["error"]["code"] == "invalid_body", (path, answer)
    for query in ("view=everything", "limit=0", "limit=201", "limit=x", "priority=asap", "sort=id", "view=all&view=mine"):
        status, answer = await call(client, "GET", f"/tickets?{query}", token)
        assert status == 400 and answer["error"]["code"] == "invalid_query", (query, answer)

    async with runtime(client).db.sessions() as session:
        authors = list(await session.scalars(select(Message.author).where(Message.ticket_id == ticket_id)))
        ticket = await session.get(Ticket, ticket_id)
    assert "agent" not in authors and ticket.priority == "normal" and ticket.state == "human"


# --- the OpenAPI document ---------------------------------------------------------------------------


async def test_the_openapi_document_is_valid_and_matches_the_served_routes(helpline_client) -> None:
    client = helpline_client
    response = await client.get(API + "/openapi.json")
    assert response.status == 200 and response.content_type == "application/json"
    doc = await response.json()
    assert doc == openapi_document()
    validate_spec(doc)  # raises OpenAPIValidationError
    assert doc["openapi"].startswith("3.1")
    served = {
        (r.method.lower(), r.resource.canonical) for r in client.server.app.router.routes()
        if r.resource is not None and r.resource.canonical.startswith(API + "/")
    }
    documented = {(method, path) for path, ops in doc["paths"].items() for method in ops}
    assert served == documented
    assert len(served) == 12
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            assert "200" in op["responses"], (method, path)
            if op.get("security") != []:
                assert {"401", "429"} <= set(op["responses"]), (method, path)
            if method == "post":
                assert {"400", "413", "415"} <= set(op["responses"]), (method, path)
    # Request bodies refuse unknown fields in the document too (extra="forbid").
    for name in ("TextBody", "TransferBody", "PriorityBody", "EmptyBody"):
        assert doc["components"]["schemas"][name]["additionalProperties"] is False
    assert doc["components"]["schemas"]["TextBody"]["properties"]["text"]["maxLength"] == 4000


def test_the_document_leaves_no_schema_reference_dangling() -> None:
    doc = openapi_document()
    names = set(doc["components"]["schemas"])

    def refs(node: Any) -> set[str]:
        if isinstance(node, dict):
            found = {node["$ref"].rsplit("/", 1)[-1]} if isinstance(node.get("$ref"), str) else set()
            return found.union(*(refs(v) for v in node.values()))
        if isinstance(node, list):
            return set().union(*(refs(v) for v in node))
        return set()

    assert refs(doc) <= names
