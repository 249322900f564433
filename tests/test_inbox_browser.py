"""The agent inbox in a real browser (Debian's Chromium driven by Playwright) against a real server,
with the customer in the real widget or on a real web-chat socket, on both database backends.

What is checked:
- the whole loop: an agent already on the queue page sees a customer's escalation appear without a
  reload, opens it, reads the brief, claims and replies; the widget shows the reply as an agent's
  while the bot stays silent; the agent hands back and the bot answers the next message (no second
  handoff message); the customer asks for a person again, the agent claims and resolves; the widget
  asks for a rating, the customer clicks one and it is stored with the agent who resolved;
- hostile customer text (script, an HTML image, a markdown image, a bidi override) in every inbox
  view, server-rendered and live-inserted: no dialog, no request to any other origin, text shown as
  text, and the page's ``img-src 'self'`` honoured by the browser;
- two agents in two browsers clicking Claim at once: exactly one owns the ticket, the other is told;
- a browser notification for a new escalation once the agent enabled them, with the customer's
  text as plain text.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from app_fixtures import ChatSocket
from sqlalchemy import func, select

from helpline.inbox import bidi_safe
from state import agents as accounts
from state import csat
from state.db import Database, open_database
from state.models import CsatRating, Event, Message, Ticket

async_api = pytest.importorskip("playwright.async_api")

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run",
]
TIMEOUT_MS = 30_000
PASSWORD = "correct horse battery staple"
HANDOFF_START = "I'm passing this to a member of our support team"

# Headless Chromium shows no notifications, so the page's Notification is wrapped to record what
# the page creates. The wrapper also answers "default" until the page asks, as a browser does for
# an agent who has not been asked yet; the answer then comes from the context's real permission.
RECORD_NOTIFICATIONS = """(() => {
  const Real = window.Notification;
  const made = [];
  let asked = false;
  function Recorded(title, options) {
    made.push({title: String(title), body: options && options.body, tag: options && options.tag});
    return new Real(title, options);
  }
  Object.defineProperty(Recorded, "permission", {get: () => (asked ? Real.permission : "default")});
  Recorded.requestPermission = function (callback) { asked = true; return Real.requestPermission(callback); };
  Recorded.prototype = Real.prototype;
  window.Notification = Recorded;
  window.__notifications = made;
})();"""


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip(
            f"Chromium not found at {CHROMIUM}: install Debian's package (apt-get install chromium); "
            "Playwright's own browser download is not used"
        )
    async with async_api.async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


@asynccontextmanager
async def database(url: str) -> AsyncIterator[Database]:
    """The server's own database, opened from the test for set-up and for checking what it stored."""
    db = open_database(url)
    try:
        yield db
    finally:
        await db.dispose()


class Guard:
    """Records every dialog (``alert`` from injected script) and every request a page makes to an
    origin other than the server's, and every page error; ``check`` fails the test on any."""

    def __init__(self, server_url: str) -> None:
        self.netloc = urlsplit(server_url).netloc
        self.dialogs: list[str] = []
        self.outside: list[str] = []
        self.errors: list[str] = []
        self.probes: dict[str, str | None] = {}  # deliberate CSP probes: url -> failure

    def watch(self, page: Any) -> Any:
        async def on_dialog(dialog: Any) -> None:
            self.dialogs.append(f"{dialog.type}: {dialog.message}")
            await dialog.dismiss()

        page.on("dialog", on_dialog)
        page.on("request", lambda request: self._request(request.url))
        page.on("websocket", lambda ws: self._request(ws.url))
        page.on("requestfailed", self._failed)
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        return page

    def _request(self, url: str) -> None:
        if url in self.probes:
            return
        parts = urlsplit(url)
        if parts.scheme not in ("http", "ws") or parts.netloc != self.netloc:
            self.outside.append(url)

    def _failed(self, request: Any) -> None:
        if request.url in self.probes:
            self.probes[request.url] = request.failure

    def check(self) -> None:
        assert self.dialogs == [], f"a dialog opened: {self.dialogs}"
        assert self.outside == [], f"requests left the server's origin: {self.outside}"
        assert self.errors == [], f"page errors: {self.errors}"


async def new_page(browser: Any, guard: Guard, **context_options: Any) -> Any:
    context = await browser.new_context(viewport={"width": 1200, "height": 800}, **context_options)
    context.set_default_timeout(TIMEOUT_MS)
    return guard.watch(await context.new_page())


async def agent_page(browser: Any, server_url: str, guard: Guard, email: str, *, init_script: str | None = None,
                     permissions: list[str] | None = None) -> Any:
    """A fresh browser context logged in as ``email`` through the login form, on the live queue."""
    page = await new_page(browser, guard)
    if permissions:
        await page.context.grant_permissions(permissions, origin=server_url)
    if init_script:
        await page.context.add_init_script(init_script)
    await page.goto(server_url + "/agent")
    assert "/agent/login" in page.url
    await page.get_by_label("Email").fill(email)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Log in").click()
    await page.wait_for_url(re.compile(r"/agent$"))
    await live(page)
    return page


async def live(page: Any) -> None:
    await page.locator("#live-status[data-state=live]").wait_for()


async def widget_page(browser: Any, server_url: str, guard: Guard) -> Any:
    page = await new_page(browser, guard)
    await page.goto(server_url + "/")
    await page.locator(".hl-status[data-state=online]").wait_for()
    return page


async def say(page: Any, text: str) -> None:
    box = page.get_by_label("Type your message")
    await box.fill(text)
    await box.press("Enter")


async def outbound_count(page: Any) -> int:
    return await page.locator(".hl-msg--bot, .hl-msg--agent, .hl-msg--system").count()


async def wait_outbound(page: Any, count: int) -> None:
    await page.wait_for_function(
        "n => document.querySelectorAll('.hl-msg--bot, .hl-msg--agent, .hl-msg--system').length >= n", arg=count
    )


async def bubble_kinds(page: Any) -> list[tuple[str, str]]:
    """(author kind, text) of every widget bubble, in page order."""
    return [
        (kind, text) for kind, text in await page.eval_on_selector_all(
            ".hl-messages .hl-msg",
            "els => els.map(e => [e.className.match(/hl-msg--(\\w+)/)[1], e.querySelector('.hl-text').textContent])",
        )
    ]


async def escalate(chat: ChatSocket, text: str, client_id: str) -> int:
    """Send ``text`` on a real web-chat socket; the ticket id of the handoff reply."""
    await chat.send(text, client_id)
    reply = await chat.bot_reply()
    assert reply["author"] == "bot" and reply["text"].startswith(HANDOFF_START), reply
    return int(reply["ticket_id"])


async def wait_until(check: Any, what: str, timeout: float = 15.0) -> Any:
    """Poll the async ``check`` until it returns something truthy."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        got = await check()
        if got:
            return got
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def messages(db: Database, ticket_id: int) -> list[Message]:
    async with db.sessions() as session:
        return list(await session.scalars(select(Message).where(Message.ticket_id == ticket_id).order_by(Message.seq)))


# --- the whole loop --------------------------------------------------------------------------------


async def test_the_whole_loop_from_widget_to_inbox_to_rating(browser: Any, server_url: str, database_url: str) -> None:
    guard = Guard(server_url)
    async with database(database_url) as db:
        dana = await accounts.add_agent(db, "dana@example.com", PASSWORD, display_name="Dana")

        # The agent is on the queue before anything happens; the marker proves no reload later.
        inbox_tab = await agent_page(browser, server_url, guard, "dana@example.com")
        assert await inbox_tab.locator("tr[data-ticket-id]").count() == 0
        await inbox_tab.evaluate("window.__sameDocument = true")

        customer = await widget_page(browser, server_url, guard)
        await say(customer, "where is my order #W5976205?")
        await wait_outbound(customer, 1)
        await say(customer, "I want to talk to a real person")
        await wait_outbound(customer, 2)
        assert (await bubble_kinds(customer))[-1][0] == "bot"
        assert (await bubble_kinds(customer))[-1][1].startswith(HANDOFF_START)

        row = inbox_tab.locator("tr[data-ticket-id]")
        await row.wait_for()
        assert await inbox_tab.evaluate("window.__sameDocument") is True, "the queue reloaded instead of updating"
        assert await row.count() == 1
        ticket_id = int(await row.get_attribute("data-ticket-id"))
        assert await row.locator(".preview").text_content() == "I want to talk to a real person"
        assert "unassigned" in await row.inner_text()

        # The ticket page: the brief an agent reads before answering.
        await row.get_by_role("link", name=str(ticket_id)).click()
        await inbox_tab.wait_for_url(re.compile(rf"/agent/tickets/{ticket_id}$"))
        async with db.sessions() as session:
            brief = (await session.get(Ticket, ticket_id)).brief
        brief_box = inbox_tab.locator(".brief-body")
        await brief_box.wait_for()
        shown = await brief_box.inner_text()
        assert "Wants:" in shown and "W5976205" in shown
        assert await brief_box.locator(".want").is_visible()
        assert "W5976205" in await brief_box.locator(".want").inner_text()
        assert "ownership NOT verified" in shown  # the customer never proved the order is theirs
        next_step = brief["next_step"]["text"]
        assert next_step and await brief_box.locator(".next-step").is_visible()
        assert f"Suggested next step: {next_step}" in await brief_box.locator(".next-step").inner_text()
        assert "where is my order #W5976205?" in await inbox_tab.locator(".transcript").inner_text()

        await inbox_tab.get_by_role("button", name="Claim").click()
        await inbox_tab.get_by_text("You own this ticket now.").wait_for()
        reply_text = "Hi, Dana here. I'm looking at order W5976205 now."
        await inbox_tab.get_by_label("Reply to the customer").fill(reply_text)
        await inbox_tab.get_by_role("button", name="Send reply").click()
        await inbox_tab.get_by_text("Reply sent to the customer.").wait_for()

        # The widget shows it as an agent's message.
        agent_bubble = customer.locator(".hl-msg--agent")
        await agent_bubble.wait_for()
        assert await agent_bubble.locator(".hl-text").text_content() == reply_text
        assert await agent_bubble.locator(".hl-author").text_content() == "Support agent"

        # The customer answers while the agent owns the ticket: handled, and the bot says nothing.
        await say(customer, "thanks, how long will it take?")

        async def handled() -> bool:
            rows = await messages(db, ticket_id)
            return any(m.text == "thanks, how long will it take?" and m.processed_at for m in rows)

        await wait_until(handled, "the customer's message to be handled")
        await customer.wait_for_timeout(1000)  # a (wrong) bot reply would arrive within this
        kinds = await bubble_kinds(customer)
        after_agent = kinds[[k for k, _ in kinds].index("agent") + 1:]
        assert after_agent == [("customer", "thanks, how long will it take?")], kinds
        assert [m.author for m in await messages(db, ticket_id)][-2:] == ["agent", "customer"]

        # Hand back: the bot answers the next message, without a second handoff message.
        await inbox_tab.get_by_role("button", name="Hand back to the bot").click()
        await inbox_tab.wait_for_url(re.compile(r"/agent\?done=hand-back$"))
        await live(inbox_tab)
        assert await inbox_tab.locator(f"tr[data-ticket-id='{ticket_id}']").count() == 0
        before = await outbound_count(customer)
        await say(customer, "how long does a refund take?")
        await wait_outbound(customer, before + 1)
        await customer.wait_for_timeout(500)
        kinds = await bubble_kinds(customer)
        assert kinds[-2] == ("customer", "how long does a refund take?")
        assert kinds[-1][0] == "bot" and "refund" in kinds[-1][1].lower()
        assert sum(text.startswith(HANDOFF_START) for _, text in kinds) == 1
        stored = await messages(db, ticket_id)
        assert sum(m.author == "bot" and m.text.startswith(HANDOFF_START) for m in stored) == 1

        # Asked for a person again: the ticket appears live in the queue the agent is on, and the
        # agent claims and resolves it.
        await inbox_tab.evaluate("window.__sameDocument = true")  # the queue page the hand-back led to
        before = await outbound_count(customer)
        await say(customer, "I want to talk to a real person again please")
        await wait_outbound(customer, before + 1)
        again = inbox_tab.locator(f"tr[data-ticket-id='{ticket_id}']")
        await again.wait_for()
        assert await inbox_tab.evaluate("window.__sameDocument") is True, "the queue reloaded instead of updating"
        await again.get_by_role("link", name=str(ticket_id)).click()
        await inbox_tab.get_by_role("button", name="Claim").click()
        await inbox_tab.get_by_text("You own this ticket now.").wait_for()
        await inbox_tab.get_by_role("button", name="Resolve").click()
        await inbox_tab.wait_for_url(re.compile(r"/agent\?done=resolve$"))

        # The widget asks for a rating; the customer clicks one; it is stored with the resolver.
        prompt = customer.locator(".hl-msg--system .hl-csat")
        await prompt.wait_for()
        assert await customer.locator(".hl-msg--system .hl-text").last.text_content() == csat.PROMPT_TEXT
        await prompt.get_by_role("button", name="5 out of 5").click()
        await prompt.get_by_role("button", name="Send").click()
        await customer.locator(".hl-csat[data-state=done]").wait_for()

        async with db.sessions() as session:
            [rating] = list(await session.scalars(select(CsatRating)))
            ticket = await session.get(Ticket, ticket_id)
        assert (rating.ticket_id, rating.rating, rating.resolved_by, rating.agent_id, rating.channel) == (
            ticket_id, 5, "agent", dana.id, "webchat")
        assert ticket.state == "resolved"
        guard.check()


# --- hostile customer text in every view ------------------------------------------------------------

PAYLOADS = [
    "<script>alert(1)</script> I want to talk to a real person",
    "<img src=x onerror=alert(2)> I want to talk to a real person",
    "![x](http://127.0.0.1:9/evil.png) I want to talk to a real person",
    "refund for invoice_\u202egpj.exe I want to talk to a real person",
]
BIDI = re.compile("[\u202a-\u202e\u2066-\u2069\u200e\u200f\u061c]")
CSP_PROBE = "http://127.0.0.1:9/csp-probe.png"


async def assert_inert(page: Any, origin: str) -> str:
    """Nothing from the customer became markup; the page's visible text, for further checks."""
    scripts = await page.eval_on_selector_all("script", "els => els.map(e => e.src || e.textContent)")
    assert all(src == origin + "/agent/static/agent.js" for src in scripts), scripts
    assert await page.locator("img, iframe, object, embed, svg, math").count() == 0
    text = await page.locator("body").inner_text()
    assert not BIDI.search(text), "a bidi control reached the page"
    return text


async def test_hostile_customer_text_stays_text_in_every_inbox_view(
    browser: Any, server_url: str, database_url: str, http: Any
) -> None:
    guard = Guard(server_url)
    async with database(database_url) as db:
        await accounts.add_agent(db, "lee@example.com", PASSWORD, role="admin")
    chats = [await ChatSocket.open(http, server_url) for _ in range(2 * len(PAYLOADS))]
    # Half escalate before the queue loads (server-rendered rows), half while it is open (live rows).
    rendered = [await escalate(chat, text, "x-1") for chat, text in zip(chats, PAYLOADS)]
    admin = await agent_page(browser, server_url, guard, "lee@example.com")
    await admin.evaluate("window.__sameDocument = true")
    inserted = [await escalate(chat, text, "x-1") for chat, text in zip(chats[len(PAYLOADS):], PAYLOADS)]
    for ticket_id in inserted:
        await admin.locator(f"tr[data-ticket-id='{ticket_id}']").wait_for()
    assert await admin.evaluate("window.__sameDocument") is True

    text = await assert_inert(admin, server_url)
    for ticket_id, payload in [*zip(rendered, PAYLOADS), *zip(inserted, PAYLOADS)]:
        preview = admin.locator(f"tr[data-ticket-id='{ticket_id}'] .preview")
        assert await preview.text_content() == bidi_safe(payload), ticket_id
    assert "<script>alert(1)</script>" in text and "invoice_[U+202E]gpj.exe" in text
    assert await admin.locator("#queue-rows tr").count() == 2 * len(PAYLOADS)

    # Every ticket page: transcript, brief (the customer's key sentences and trigger words), customer.
    response = await admin.goto(f"{server_url}/agent/tickets/{rendered[0]}")
    assert "img-src 'self'" in response.headers["content-security-policy"]
    for ticket_id, payload in [*zip(rendered, PAYLOADS), *zip(inserted, PAYLOADS)]:
        await admin.goto(f"{server_url}/agent/tickets/{ticket_id}")
        text = await assert_inert(admin, server_url)
        transcript = await admin.locator(".transcript .author-customer .text").all_text_contents()
        assert transcript == [bidi_safe(payload)], ticket_id
        brief = await admin.locator(".brief-body").inner_text()
        assert "Wants:" in brief
        assert bidi_safe(payload) in await admin.locator(".brief-body .key-sentences").inner_text()

    # The browser honours img-src 'self': an image from elsewhere, added to the page, is blocked.
    guard.probes[CSP_PROBE] = None
    violation = await admin.evaluate(
        """url => new Promise(resolve => {
          document.addEventListener("securitypolicyviolation",
            e => resolve({directive: e.effectiveDirective, blocked: e.blockedURI}), {once: true});
          const img = document.createElement("img"); img.src = url; document.body.appendChild(img);
          setTimeout(() => resolve(null), 5000);
        })""",
        CSP_PROBE,
    )
    assert violation == {"directive": "img-src", "blocked": CSP_PROBE}
    await admin.wait_for_timeout(200)
    assert guard.probes[CSP_PROBE] in (None, "csp")  # never sent: no request, or one blocked by the CSP

    await admin.goto(server_url + "/agent/reports")
    await assert_inert(admin, server_url)
    assert await admin.locator("[data-metric=tickets]").text_content() == str(2 * len(PAYLOADS))
    await admin.wait_for_timeout(300)  # let any (wrong) late script or image fire before checking
    guard.check()
    for chat in chats:
        await chat.close()


# --- the claim race ---------------------------------------------------------------------------------


async def test_two_agents_clicking_claim_at_once_exactly_one_wins(
    browser: Any, server_url: str, database_url: str, http: Any
) -> None:
    guard = Guard(server_url)
    async with database(database_url) as db:
        agents = [await accounts.add_agent(db, f"{name}@example.com", PASSWORD) for name in ("ana", "ben")]
        chat = await ChatSocket.open(http, server_url)
        ticket_id = await escalate(chat, "I want to talk to a real person", "c-1")
        pages = [await agent_page(browser, server_url, guard, a.email) for a in agents]
        for page in pages:
            await page.goto(f"{server_url}/agent/tickets/{ticket_id}")
        buttons = [page.get_by_role("button", name="Claim") for page in pages]
        for button in buttons:
            await button.wait_for()
        statuses: list[int] = []
        for page in pages:
            page.on("response", lambda r: statuses.append(r.status) if r.url.endswith("/claim") else None)
        await asyncio.gather(*(button.click() for button in buttons))
        for page in pages:
            await page.wait_for_load_state()
        for _ in range(100):
            if len(statuses) == 2:
                break
            await asyncio.sleep(0.05)

        won = [await page.get_by_text("You own this ticket now.").count() for page in pages]
        lost = [await page.get_by_role("alert").filter(has_text="another agent claimed this ticket first").count()
                for page in pages]
        assert sorted(won) == [0, 1] and sorted(lost) == [0, 1] and won != lost, (won, lost)
        assert sorted(statuses) == [303, 409], statuses
        winner = agents[won.index(1)]
        async with db.sessions() as session:
            ticket = await session.get(Ticket, ticket_id)
            claims = await session.scalar(select(func.count()).select_from(Event).where(
                Event.ticket_id == ticket_id, Event.kind == "claimed"))
        assert (ticket.state, ticket.assignee_id, claims) == ("human", winner.id, 1)
        # The loser's page offers nothing that writes: the ticket is someone else's now.
        loser = pages[won.index(0)]
        assert await loser.get_by_role("button", name="Send reply").count() == 0
        assert await loser.get_by_role("button", name="Claim").count() == 0
        guard.check()
        await chat.close()


# --- browser notifications ----------------------------------------------------------------------------


async def test_a_new_escalation_raises_a_plain_text_notification_once_enabled(
    browser: Any, server_url: str, database_url: str, http: Any
) -> None:
    guard = Guard(server_url)
    async with database(database_url) as db:
        await accounts.add_agent(db, "noa@example.com", PASSWORD)
    page = await agent_page(browser, server_url, guard, "noa@example.com", init_script=RECORD_NOTIFICATIONS,
                            permissions=["notifications"])
    chats = [await ChatSocket.open(http, server_url) for _ in range(2)]

    # Not enabled yet: the row appears, no notification.
    first = await escalate(chats[0], "I want to talk to a real person", "n-1")
    await page.locator(f"tr[data-ticket-id='{first}']").wait_for()
    assert await page.evaluate("window.__notifications.length") == 0

    enable = page.get_by_role("button", name="Enable notifications")
    await enable.click()
    await enable.wait_for(state="hidden")  # answered: the button goes away
    assert await page.evaluate("Notification.permission") == "granted"

    text = '<b>Bold</b> & "quoted" <img src=x onerror=alert(3)> I want to talk to a real person'
    second = await escalate(chats[1], text, "n-1")
    await page.wait_for_function("() => window.__notifications.length >= 1")
    await page.locator(f"tr[data-ticket-id='{second}']").wait_for()
    made = await page.evaluate("window.__notifications")
    row = page.locator(f"tr[data-ticket-id='{second}']")
    customer = await row.locator("td").nth(2).text_content()
    assert made == [{
        "title": f"New escalation #{second}",
        "body": f"{customer}: {text}",  # the customer's words as they wrote them: plain text, not markup
        "tag": f"helpline-ticket-{second}",
    }]
    assert customer  # the row names the customer
    await page.wait_for_timeout(300)
    guard.check()
    for chat in chats:
        await chat.close()
