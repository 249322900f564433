"""The inbox's admin pages (/agent/admin): the kill switch from the inbox (recorded with who and why,
obeyed by every process within a second), agent management with its guards, and the settings page
with every secret masked. On the real application (aiohttp test client), both database backends."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from typing import Any

import pytest
from app_fixtures import REPO, free_port, idle, runtime
from pydantic import SecretStr
from sqlalchemy import select
from sqlalchemy.engine import make_url

from config.redact import HIDDEN, mask_url, redacted_settings, show
from config.settings import Settings
from helpline.conversation import Inbound
from helpline.server import build_app
from state import agent_admin
from state import agents as accounts
from state.flags import AGENT_MODE, get_flag
from state.models import Event, Message

PASSWORD = "correct horse battery staple"
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
ADMIN_GETS = {"/agent/admin", "/agent/admin/kill-switch", "/agent/admin/agents", "/agent/admin/settings"}
ADMIN_POSTS = {"/agent/admin/kill-switch"} | {
    f"/agent/admin/agents/{a}" for a in ("add", "disable", "enable", "password", "role")
}
BANNER = 'id="bot-off"'


async def _logged_in(client: Any, email: str, password: str = PASSWORD) -> str:
    """Log in on ``client``'s cookie jar; the CSRF token from the queue page."""
    response = await client.post("/agent/login", data={"email": email, "password": password}, allow_redirects=False)
    assert response.status == 303, await response.text()
    page = await client.get("/agent")
    assert page.status == 200
    return CSRF.search(await page.text()).group(1)


async def _can_log_in(client: Any, email: str, password: str = PASSWORD) -> bool:
    response = await client.post("/agent/login", data={"email": email, "password": password}, allow_redirects=False)
    return response.status == 303


async def _customer_says(rt: Any, address: str, text: str) -> str:
    """A customer message through the real intake and turn; the reply the customer got."""
    accepted = await rt.conversations.receive(Inbound("webchat", address, text))
    await idle(rt)
    async with rt.db.sessions() as session:
        replies = (await session.scalars(
            select(Message.text).where(Message.ticket_id == accepted.ticket.id, Message.direction == "outbound")
            .order_by(Message.seq)
        )).all()
    assert replies, "the customer got no reply"
    return replies[-1]


async def _switch(client: Any, token: str, mode: str, reason: str) -> Any:
    return await client.post("/agent/admin/kill-switch", data={"csrf_token": token, "mode": mode, "reason": reason},
                             allow_redirects=False)


async def _events(db: Any, kind: str) -> list[dict[str, Any]]:
    async with db.sessions() as session:
        return list((await session.scalars(
            select(Event.payload).where(Event.ticket_id.is_(None), Event.kind == kind).order_by(Event.id)
        )).all())


# --- access ----------------------------------------------------------------------------------------


async def test_every_admin_route_refuses_anonymous_callers_agents_and_posts_without_csrf(
    helpline_client, aiohttp_client
) -> None:
    client = helpline_client
    db = runtime(client).db
    registered = {
        (r.method, r.resource.canonical) for r in client.server.app.router.routes()
        if r.resource is not None and r.resource.canonical.startswith("/agent/admin") and r.method != "HEAD"
    }
    assert registered == {("GET", p) for p in ADMIN_GETS} | {("POST", p) for p in ADMIN_POSTS}
    admin = await accounts.add_agent(db, "lead@example.com", PASSWORD, role="admin")
    agent = await accounts.add_agent(db, "sam@example.com", PASSWORD)
    # What each POST would do for an admin: switch off, add, disable the admin, promote oneself, ...
    forms = {
        "/agent/admin/kill-switch": {"mode": "disabled", "reason": "testing"},
        "/agent/admin/agents/add": {"email": "new@example.com", "role": "admin", "password": PASSWORD * 2,
                                    "password_again": PASSWORD * 2},
        "/agent/admin/agents/disable": {"agent_id": str(admin.id)},
        "/agent/admin/agents/enable": {"agent_id": str(admin.id)},
        "/agent/admin/agents/password": {"agent_id": str(admin.id), "password": PASSWORD * 2,
                                         "password_again": PASSWORD * 2},
        "/agent/admin/agents/role": {"agent_id": str(agent.id), "role": "admin"},
    }
    for path in sorted(ADMIN_GETS):  # anonymous
        response = await client.get(path, allow_redirects=False)
        assert response.status == 303 and response.headers["Location"].startswith("/agent/login?next="), path
    for path in sorted(ADMIN_POSTS):
        assert (await client.post(path, data=forms[path], allow_redirects=False)).status == 403, path

    token = await _logged_in(client, "sam@example.com")  # an agent, with a valid CSRF token
    queue = await (await client.get("/agent")).text()
    assert 'href="/agent/admin"' not in queue  # no Admin link for agents
    for path in sorted(ADMIN_GETS):
        response = await client.get(path, allow_redirects=False)
        assert response.status == 403 and await response.text() == "admins only", path
    for path in sorted(ADMIN_POSTS):
        response = await client.post(path, data={"csrf_token": token, **forms[path]}, allow_redirects=False)
        assert response.status == 403 and await response.text() == "admins only", path

    lead = await aiohttp_client(client.server)  # the admin, in a browser of their own
    token = await _logged_in(lead, "lead@example.com")
    assert 'href="/agent/admin"' in await (await lead.get("/agent")).text()
    for path in sorted(ADMIN_POSTS):
        for data, headers in (
            (forms[path], {}),  # no token
            ({"csrf_token": "x" * len(token), **forms[path]}, {}),
            ({"csrf_token": token, **forms[path]}, {"Origin": "https://evil.example"}),
            ({"csrf_token": token, **forms[path]}, {"Sec-Fetch-Site": "cross-site"}),
        ):
            response = await lead.post(path, data=data, headers=headers, allow_redirects=False)
            assert response.status == 403, (path, headers)
    # Nothing happened.
    assert await get_flag(db, AGENT_MODE) is None
    assert [(a.email, a.role, a.disabled) for a in await accounts.list_agents(db)] == [
        ("lead@example.com", "admin", False), ("sam@example.com", "agent", False)]
    assert await _can_log_in(client, "lead@example.com")
    assert await _events(db, "agent_mode") == [] and await _events(db, "agent_admin") == []


# --- the kill switch ----------------------------------------------------------------------------------


async def test_an_admin_switches_the_bot_off_and_on_from_the_inbox(helpline_client, aiohttp_client) -> None:
    client = helpline_client
    rt = runtime(client)
    admin = await accounts.add_agent(rt.db, "lead@example.com", PASSWORD, role="admin")
    await accounts.add_agent(rt.db, "sam@example.com", PASSWORD)
    token = await _logged_in(client, "lead@example.com")
    page = await client.get("/agent/admin")
    assert page.url.path == "/agent/admin/kill-switch"
    text = await page.text()
    assert 'data-mode="enabled"' in text and "No switch is set" in text and "Never switched." in text

    # Refused input changes nothing and says why.
    for form, status, message in (
        ({"mode": "disabled", "reason": "  "}, 400, "say why"),
        ({"mode": "off", "reason": "x"}, 400, "mode must be one of enabled, disabled"),
        ({"mode": "disabled", "reason": "y" * 501}, 400, "the reason has 501 characters; at most 500"),
    ):
        response = await client.post("/agent/admin/kill-switch", data={"csrf_token": token, **form},
                                     allow_redirects=False)
        assert response.status == status and message in await response.text()
    assert await get_flag(rt.db, AGENT_MODE) is None and await _events(rt.db, "agent_mode") == []

    calls = rt.understander.calls
    assert "Source: Refunds" in await _customer_says(rt, "before", "how long does a refund take?")
    assert rt.understander.calls == calls + 1

    done = await _switch(client, token, "disabled", "model provider outage <b>#42</b>")
    assert done.status == 303 and done.headers["Location"] == "/agent/admin/kill-switch?done=switch"
    events = await _events(rt.db, "agent_mode")
    assert events == [{"mode": "disabled", "actor": f"agent:{admin.id} lead@example.com",
                       "reason": "model provider outage <b>#42</b>"}]
    state = await agent_admin.switch_state(rt.db)
    assert (state.mode, state.updated_by) == ("disabled", f"agent:{admin.id} lead@example.com")
    text = await (await client.get("/agent/admin/kill-switch?done=switch")).text()
    assert 'data-mode="disabled"' in text and "Switch the bot on" in text and BANNER in text
    assert f"agent:{admin.id} lead@example.com" in text
    assert "model provider outage &lt;b&gt;#42&lt;/b&gt;" in text and "<b>#42" not in text
    assert "Every process obeys it within a second." in text

    await asyncio.sleep(1.0)  # this process's cached read of the switch has expired
    calls = rt.understander.calls
    assert await _customer_says(rt, "during", "how long does a refund take?") == rt.settings.disabled_reply
    assert rt.understander.calls == calls  # no model ran
    sam = await aiohttp_client(client.server)
    await _logged_in(sam, "sam@example.com")
    queue = await (await sam.get("/agent")).text()
    assert BANNER in queue and "kill switch</a>" not in queue  # everyone sees it; only admins get the link

    assert (await _switch(client, token, "enabled", "provider back")).status == 303
    await asyncio.sleep(1.0)
    assert "Source: Refunds" in await _customer_says(rt, "after", "how long does a refund take?")
    assert BANNER not in await (await sam.get("/agent")).text()
    history = await (await client.get("/agent/admin/kill-switch")).text()
    rows = re.findall(r"<tr><td><time[^>]*>[^<]+</time></td><td>(\w+)</td>", history)
    assert rows == ["enabled", "disabled"]  # newest first
    assert [e["mode"] for e in await _events(rt.db, "agent_mode")] == ["disabled", "enabled"]


async def test_a_switch_from_the_command_line_is_shown_with_who_did_it(helpline_client, app_settings) -> None:
    client = helpline_client
    await accounts.add_agent(runtime(client).db, "lead@example.com", PASSWORD, role="admin")
    await _logged_in(client, "lead@example.com")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HELPLINE_", "AGENT_MODE"))}
    env.update(HELPLINE_DATA_DIR=str(app_settings.data_dir), HELPLINE_DATABASE_URL=app_settings.database_url)
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "helpline.cli", "agent-mode", "disabled"], cwd=REPO, env=env,
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    events = await _events(runtime(client).db, "agent_mode")
    assert len(events) == 1 and events[0]["mode"] == "disabled" and events[0]["actor"].startswith("cli:")
    assert events[0]["reason"] is None
    text = await (await client.get("/agent/admin/kill-switch")).text()
    assert 'data-mode="disabled"' in text and "Set for every process by <bdi>cli:" in text


async def _two_instances_obey_a_switch_within_a_second(aiohttp_client: Any, settings: Settings) -> None:
    a = await aiohttp_client(build_app(settings))
    b = await aiohttp_client(build_app(settings))
    rt_b = runtime(b)
    await accounts.add_agent(runtime(a).db, "lead@example.com", PASSWORD, role="admin")
    token = await _logged_in(a, "lead@example.com")
    assert "Source: Refunds" in await _customer_says(rt_b, "b-before", "how long does a refund take?")
    for mode, reason in (("disabled", "incident 7"), ("enabled", "incident 7 over")):
        # Worst case: B read the switch just before it changed, so its cached read is as fresh as can be.
        assert (await rt_b.conversations.agent_mode()).value != mode
        assert (await _switch(a, token, mode, reason)).status == 303  # committed when this returns
        await asyncio.sleep(1.0)
        calls = rt_b.understander.calls
        reply = await _customer_says(rt_b, f"b-{mode}", "how long does a refund take?")
        if mode == "disabled":
            assert reply == settings.disabled_reply and rt_b.understander.calls == calls
        else:  # (no call count here: the sweep may re-answer "b-disabled" on B meanwhile)
            assert "Source: Refunds" in reply


async def test_a_switch_on_one_instance_reaches_another_within_a_second(app_settings, aiohttp_client) -> None:
    await _two_instances_obey_a_switch_within_a_second(aiohttp_client, app_settings)


async def test_a_switch_reaches_another_instance_sharing_redis_within_a_second(
    app_settings, aiohttp_client, redis_url
) -> None:
    settings = app_settings.model_copy(
        update={"redis_url": redis_url, "redis_namespace": f"helpline-test-{uuid.uuid4().hex[:12]}"}
    )
    await _two_instances_obey_a_switch_within_a_second(aiohttp_client, settings)


# --- agents -----------------------------------------------------------------------------------------


async def test_an_admin_adds_disables_enables_and_resets_agents(helpline_client, aiohttp_client) -> None:
    client = helpline_client
    db = runtime(client).db
    admin = await accounts.add_agent(db, "lead@example.com", PASSWORD, role="admin", display_name="Lead")
    token = await _logged_in(client, "lead@example.com")
    listing = await (await client.get("/agent/admin/agents")).text()
    assert 'data-email="lead@example.com" data-role="admin" data-status="active"' in listing
    assert "lead@example.com</bdi> (you)" in listing

    def add(**form: str) -> Any:
        base = {"csrf_token": token, "email": "kim@example.com", "name": "Kim <i>K</i>", "role": "agent",
                "password": "kims first password", "password_again": "kims first password"}
        return client.post("/agent/admin/agents/add", data={**base, **form}, allow_redirects=False)

    for form, message in (
        ({"password": "short", "password_again": "short"}, "a password needs 12 to 1024 characters, got 5"),
        ({"password_again": "something else entirely"}, "the two passwords differ"),
        ({"email": "not-an-email"}, "not an email address"),
        ({"role": "owner"}, "role must be one of agent, admin"),
        ({"email": "k" * 400 + "@example.com"}, "not an email address"),  # refused, never cut to fit
        ({"name": "Kim <i>K</i>" + "x" * 200}, "the name has 212 characters; at most 200"),
    ):
        response = await add(**form)
        text = await response.text()
        assert response.status == 400 and message in text, (form, text)
        assert 'value="Kim &lt;i&gt;K&lt;/i&gt;' in text  # what was typed stays, escaped; never the password
        assert "kims first password" not in text
    assert [a.email for a in await accounts.list_agents(db)] == ["lead@example.com"]
    response = await add()
    assert response.status == 303 and response.headers["Location"] == "/agent/admin/agents?done=add"
    duplicate = await add()
    assert duplicate.status == 400 and "already exists" in await duplicate.text()
    kim = next(a for a in await accounts.list_agents(db) if a.email == "kim@example.com")
    assert (kim.role, kim.display_name, kim.disabled) == ("agent", "Kim <i>K</i>", False)
    listing = await (await client.get("/agent/admin/agents?done=add")).text()
    assert "Agent added" in listing and "Kim &lt;i&gt;K&lt;/i&gt;" in listing and "no live session" in listing

    kims = await aiohttp_client(client.server)
    await _logged_in(kims, "kim@example.com", "kims first password")
    assert "ago</time>" in await (await client.get("/agent/admin/agents")).text()  # Kim's session is live

    async def act(action: str, **form: str) -> Any:
        return await client.post(f"/agent/admin/agents/{action}", data={"csrf_token": token, **form},
                                 allow_redirects=False)

    assert (await act("disable", agent_id=str(kim.id))).status == 303
    assert (await kims.get("/agent", allow_redirects=False)).status == 303  # her session ended at once
    assert not await _can_log_in(kims, "kim@example.com", "kims first password")
    assert 'data-email="kim@example.com" data-role="agent" data-status="disabled"' in await (
        await client.get("/agent/admin/agents")).text()
    assert (await act("enable", agent_id=str(kim.id))).status == 303
    assert await _can_log_in(kims, "kim@example.com", "kims first password")

    mismatch = await act("password", agent_id=str(kim.id), password="kims new password", password_again="nope")
    assert mismatch.status == 400 and "the two passwords differ" in await mismatch.text()
    assert (await act("password", agent_id=str(kim.id), password="kims new password",
                      password_again="kims new password")).status == 303
    assert (await kims.get("/agent", allow_redirects=False)).status == 303  # sessions end with a new password
    assert not await _can_log_in(kims, "kim@example.com", "kims first password")
    assert await _can_log_in(kims, "kim@example.com", "kims new password")

    for action, form, status, message in (
        ("disable", {"agent_id": "99999"}, 404, "no agent with id 99999"),
        ("disable", {"agent_id": "1 OR 1=1"}, 400, "choose an agent"),
        ("role", {"agent_id": str(kim.id), "role": "root"}, 400, "role must be one of agent, admin"),
        ("password", {"agent_id": "99999", "password": PASSWORD, "password_again": PASSWORD}, 404, "no agent"),
    ):
        response = await act(action, **form)
        assert response.status == status and message in await response.text(), (action, form)

    by = f"agent:{admin.id} lead@example.com"
    assert [(e["action"], e["email"], e["by"]) for e in await _events(db, "agent_admin")] == [
        ("add", "kim@example.com", by), ("disable", "kim@example.com", by), ("enable", "kim@example.com", by),
        ("password", "kim@example.com", by)]
    # A new password of your own ends your sessions too: off to the login form.
    own = await act("password", agent_id=str(admin.id), password="leads new password",
                    password_again="leads new password")
    assert own.status == 303 and own.headers["Location"] == "/agent/login"
    assert (await client.get("/agent/admin/agents", allow_redirects=False)).status == 303
    assert await _can_log_in(client, "lead@example.com", "leads new password")


async def test_admins_cannot_disable_themselves_or_remove_the_last_admin(helpline_client, aiohttp_client) -> None:
    client = helpline_client
    db = runtime(client).db
    lead = await accounts.add_agent(db, "lead@example.com", PASSWORD, role="admin")
    kim = await accounts.add_agent(db, "kim@example.com", PASSWORD)
    token = await _logged_in(client, "lead@example.com")

    async def act(action: str, **form: str) -> Any:
        return await client.post(f"/agent/admin/agents/{action}", data={"csrf_token": token, **form},
                                 allow_redirects=False)

    refused = await act("disable", agent_id=str(lead.id))
    assert refused.status == 409 and "you cannot disable your own account" in await refused.text()
    refused = await act("role", agent_id=str(lead.id), role="agent")
    assert refused.status == 409 and "lead@example.com is the last active admin" in await refused.text()
    assert [(a.role, a.disabled) for a in await accounts.list_agents(db)] == [("admin", False), ("agent", False)]

    # Promote Kim: she can use the admin pages; then either admin may demote the other, not both.
    assert (await act("role", agent_id=str(kim.id), role="admin")).status == 303
    kims = await aiohttp_client(client.server)
    await _logged_in(kims, "kim@example.com")
    assert (await kims.get("/agent/admin/agents")).status == 200
    assert (await act("role", agent_id=str(lead.id), role="agent")).status == 303  # lead demotes themselves
    assert (await client.get("/agent/admin/agents", allow_redirects=False)).status == 403
    kim_token = CSRF.search(await (await kims.get("/agent")).text()).group(1)
    refused = await kims.post("/agent/admin/agents/role", data={"csrf_token": kim_token, "agent_id": str(kim.id),
                                                                "role": "agent"}, allow_redirects=False)
    assert refused.status == 409 and "kim@example.com is the last active admin" in await refused.text()
    # A disabled admin does not count as one.
    assert (await kims.post("/agent/admin/agents/role", data={"csrf_token": kim_token, "agent_id": str(lead.id),
                                                              "role": "admin"}, allow_redirects=False)).status == 303
    assert (await kims.post("/agent/admin/agents/disable", data={"csrf_token": kim_token, "agent_id": str(lead.id)},
                            allow_redirects=False)).status == 303
    refused = await kims.post("/agent/admin/agents/role", data={"csrf_token": kim_token, "agent_id": str(kim.id),
                                                                "role": "agent"}, allow_redirects=False)
    assert refused.status == 409


async def test_two_admins_demoting_each_other_at_once_leave_one_admin(helpline_client) -> None:
    db = runtime(helpline_client).db
    a = await accounts.add_agent(db, "a@example.com", PASSWORD, role="admin")
    b = await accounts.add_agent(db, "b@example.com", PASSWORD, role="admin")
    results = await asyncio.gather(
        agent_admin.set_role(db, a.id, "agent", by=b), agent_admin.set_role(db, b.id, "agent", by=a),
        return_exceptions=True,
    )
    assert sum(isinstance(r, agent_admin.GuardError) for r in results) == 1, results
    assert [x.role for x in await accounts.list_agents(db)].count("admin") == 1


# --- settings ------------------------------------------------------------------------------------------


class PasswordRedis:
    """A redis-server of this test that requires a password (a child process on a free port)."""

    def __init__(self, password: str) -> None:
        self.port = free_port()
        self.url = f"redis://:{password}@127.0.0.1:{self.port}/0"
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--requirepass", password], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


async def test_the_settings_page_shows_the_settings_with_every_secret_masked(
    database_url, intent_model_dir, tmp_path, aiohttp_client
) -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    secrets = {
        "redis": "Redis-Pw-7c1f0e",
        "secret_key": "sk-session-key-5d2b9a",
        "admin_token": "admin-token-e3a4c2",
        "webhook_secret": "whsec-" + "q" * 40,
        "webhook_path": "T0PATHSECRET",
        "webhook_query": "QUERYSECRET99",
        "database": "Pg-Pw-91b7d3",
    }
    url = make_url(database_url)
    if url.get_backend_name() == "postgresql":  # the test server trusts local connections: any password works
        database_url = url.set(password=secrets["database"]).render_as_string(hide_password=False)
    else:
        del secrets["database"]  # a SQLite URL has no password
    redis = await asyncio.to_thread(PasswordRedis, secrets["redis"])
    try:
        settings = Settings(
            data_dir=tmp_path / "var", database_url=database_url, intent_model_dir=intent_model_dir,
            redis_url=redis.url, redis_namespace=f"helpline-test-{uuid.uuid4().hex[:12]}",
            secret_key=secrets["secret_key"], admin_token=secrets["admin_token"],
            handoff_webhook_secret=secrets["webhook_secret"],
            handoff_webhook_url=f"http://127.0.0.1:9/hooks/{secrets['webhook_path']}?token={secrets['webhook_query']}",
        )
        client = await aiohttp_client(build_app(settings))
        await accounts.add_agent(runtime(client).db, "lead@example.com", PASSWORD, role="admin")
        await _logged_in(client, "lead@example.com")
        response = await client.get("/agent/admin/settings")
        assert response.status == 200
        page = await response.text()
        everything = page + "".join(f"{k}: {v}\n" for k, v in response.headers.items())
        for name, value in secrets.items():
            assert value not in everything, name
        rows = dict(re.findall(r'<tr data-setting="(\w+)"><td>\w+</td><td><code>[A-Z_]+</code></td>'
                               r'<td class="text">([^<]*)</td></tr>', page))
        assert rows["secret_key"] == rows["admin_token"] == rows["handoff_webhook_secret"] == HIDDEN
        assert rows["redis_url"] == f"redis://:***@127.0.0.1:{redis.port}/0"
        assert rows["handoff_webhook_url"] == "http://127.0.0.1:9/***?***"
        if "database" in secrets:
            assert rows["database_url"].startswith("postgresql+asyncpg://postgres:***@")
        else:
            assert rows["database_url"] == database_url  # nothing secret in a SQLite path
        assert rows["agent_mode"] == "enabled" and rows["port"] == "8080"
        assert 'data-setting="agent_mode"><td>agent_mode</td><td><code>AGENT_MODE</code>' in page
        assert len(rows) == len(Settings.model_fields)
    finally:
        await asyncio.to_thread(redis.stop)


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql+asyncpg://app:p@ss:w0rd@db.internal:5432/helpline?sslmode=require&password=x",
     "postgresql+asyncpg://app:***@db.internal:5432/helpline?***"),
    ("redis://:pw@127.0.0.1:6390/0", "redis://:***@127.0.0.1:6390/0"),
    ("redis://127.0.0.1:6390/0", "redis://127.0.0.1:6390/0"),
    ("rediss://ghp_tokenAsUser@cache.example:6380", "rediss://***@cache.example:6380"),
    ("https://hooks.example/T0/B0/SECRET?x=1#frag", "https://hooks.example/***?***#***"),
    ("https://desk.example/", "https://desk.example/"),
    ("sqlite+aiosqlite:////srv/helpline/helpline.db", "sqlite+aiosqlite:////srv/helpline/helpline.db"),
    ("http://h:99999999/x", HIDDEN),  # not parseable: hidden whole
])
def test_urls_lose_passwords_queries_and_webhook_paths(url: str, shown: str) -> None:
    assert mask_url(url) == shown


def test_every_secret_setting_is_masked_whatever_its_type() -> None:
    secret = "s3cr3t-" + "z" * 40
    settings = Settings(secret_key=secret, admin_token=secret, handoff_webhook_secret=secret)
    assert all(secret not in s.value for s in redacted_settings(settings))
    secret_fields = [n for n, f in Settings.model_fields.items() if "SecretStr" in str(f.annotation)]
    assert {"secret_key", "admin_token", "handoff_webhook_secret"} <= set(secret_fields)
    # A setting added later as a plain string with a secret's name is hidden by its name.
    from pydantic import BaseModel

    class Later(BaseModel):
        llm_api_key: str | None = "sk-live-123"
        reply_text: str = "see https://help.example/a?b=1"
        token_budget_words: SecretStr | None = None

    shown = {s.name: s.value for s in redacted_settings(Later())}
    assert shown == {"llm_api_key": HIDDEN, "reply_text": "see https://help.example/a?b=1",
                     "token_budget_words": "not set"}
    assert show(["a", SecretStr("x")]) == f"a, {HIDDEN}"
