"""The web-chat widget in a real browser (Debian's Chromium driven by Playwright) against a real server.

What is checked: the demo page loads with the widget open; a message round-trips (customer bubble, then
a reply bubble); a reload keeps the session and shows the history once; after the connection drops,
messages that were missed and messages typed while offline each appear exactly once; markup in
message text stays text; agent replies look different from bot replies; bot meta is never shown; a
new conversation opens with the configured greeting and suggested questions (a click sends one and
the bot answers; a reload with history does not greet again); a bot message's quick replies are
buttons under it while it is the latest message, usable from the keyboard, markup in a label stays
text, long labels wrap inside the panel, and they go once used or once a newer message arrives.

"Exactly once" is checked against the server itself: the widget's bubbles must equal the session's
transcript as a fresh ``hello(last_seq=0)`` returns it.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from app_fixtures import idle, runtime
from test_webchat_greeting import store_bot_reply

from config.replies import DEFAULT_REPLIES_FILE, load_replies

async_api = pytest.importorskip("playwright.async_api")

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run",
]
TIMEOUT_MS = 30_000
REPO = Path(__file__).resolve().parents[1]




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


async def new_page(browser: Any, server_url: str, **context_options: Any) -> Any:
    context = await browser.new_context(viewport={"width": 1100, "height": 760}, **context_options)
    context.set_default_timeout(TIMEOUT_MS)
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.js_errors = errors  # checked by the tests: the widget must not throw
    await page.goto(server_url + "/")
    await page.locator(".hl-status[data-state=online]").wait_for()
    return page


def bubbles(page: Any) -> Any:
    return page.locator(".hl-messages .hl-msg")


async def transcript(page: Any) -> list[tuple[int, str]]:
    """(seq, text) of every bubble, in page order."""
    return [
        (int(float(seq)), text)
        for seq, text in await page.eval_on_selector_all(
            ".hl-messages .hl-msg",
            "els => els.map(e => [e.getAttribute('data-seq'), e.querySelector('.hl-text').textContent])",
        )
    ]


async def stored_state(page: Any) -> dict[str, Any]:
    raw = await page.evaluate(
        "() => { for (let i = 0; i < localStorage.length; i++) {"
        " const k = localStorage.key(i); if (k.startsWith('helpline:')) return localStorage.getItem(k); }"
        " return null; }"
    )
    assert raw, "the widget stored nothing in localStorage"
    return json.loads(raw)


async def send(page: Any, text: str) -> None:
    box = page.get_by_label("Type your message")
    await box.fill(text)
    await box.press("Enter")


async def wait_replies(page: Any, count: int) -> None:
    await page.wait_for_function(
        "n => document.querySelectorAll('.hl-msg--bot, .hl-msg--agent, .hl-msg--system').length >= n",
        arg=count,
    )


async def server_transcript(server_url: str, session_id: str) -> list[tuple[int, str]]:
    """The session's messages as the server has them: hello with last_seq 0, read until quiet."""
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(server_url + "/ws/chat")
        await ws.send_json({"type": "hello", "session_id": session_id, "last_seq": 0})
        got: list[tuple[int, str]] = []
        while True:
            try:
                frame = await ws.receive_json(timeout=1.0)
            except (asyncio.TimeoutError, TimeoutError):
                break
            if frame["type"] == "welcome":
                assert frame["session_id"] == session_id
            elif frame["type"] == "message":
                got.append((frame["seq"], frame["text"]))
        await ws.close()
        return got


async def settles_to_server(page: Any, server_url: str, timeout: float = 30.0) -> list[tuple[int, str]]:
    """Wait until the page shows exactly the server's transcript; returns it."""
    session_id = (await stored_state(page))["session_id"]
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        expected = await server_transcript(server_url, session_id)
        shown = await transcript(page)
        if shown == expected:
            return shown
        if asyncio.get_running_loop().time() > deadline:
            assert shown == expected, "the widget does not show the server's transcript exactly once"
        await asyncio.sleep(0.3)


def assert_unique(rows: list[tuple[int, str]]) -> None:
    seqs = [seq for seq, _ in rows]
    assert len(seqs) == len(set(seqs)), f"a message is shown twice: {rows}"


# ------------------------------------------------------------------------------------------------


async def test_demo_page_opens_the_widget_and_it_is_keyboard_operable(browser: Any, server_url: str) -> None:
    page = await new_page(browser, server_url)
    assert "Northwind Goods" in await page.title()
    panel = page.get_by_role("dialog", name="Support")
    await panel.wait_for(state="visible")  # opened by default on the demo page
    launcher = page.locator(".hl-launcher")
    assert await launcher.get_attribute("aria-expanded") == "true"
    assert await page.locator(".hl-messages").get_attribute("aria-live") == "polite"

    await page.get_by_role("button", name="Close support chat").first.click()
    await panel.wait_for(state="hidden")
    assert await launcher.get_attribute("aria-expanded") == "false"
    assert await page.evaluate("document.activeElement.classList.contains('hl-launcher')")

    await page.keyboard.press("Enter")  # the launcher has focus: Enter opens the panel again
    await panel.wait_for(state="visible")
    assert await page.evaluate("document.activeElement.classList.contains('hl-input')")
    await page.keyboard.press("Escape")
    await panel.wait_for(state="hidden")
    assert page.js_errors == []


async def test_message_round_trip(browser: Any, server_url: str) -> None:
    page = await new_page(browser, server_url)
    await send(page, "hello")
    mine = page.locator(".hl-msg--customer")
    await mine.first.wait_for()
    assert await mine.count() == 1 and await mine.first.locator(".hl-text").text_content() == "hello"
    await wait_replies(page, 1)
    await page.locator(".hl-msg--customer[data-delivery=sent]").wait_for()

    # Shift+Enter is a new line inside one message, shown as a line break.
    box = page.get_by_label("Type your message")
    await box.type("How long does shipping take?")
    await box.press("Shift+Enter")
    await box.type("I need it by Friday.")
    await box.press("Enter")
    await wait_replies(page, 2)
    assert await mine.nth(1).locator(".hl-text").text_content() == (
        "How long does shipping take?\nI need it by Friday."
    )

    rows = await settles_to_server(page, server_url)
    assert_unique(rows)
    # Bot meta (tier, intent, confidence) is internal: neither shown nor stored in the browser.
    panel_text = await page.locator(".hl-panel").inner_text()
    assert "confidence" not in panel_text and "tier" not in panel_text
    assert all("meta" not in m for m in (await stored_state(page))["messages"])
    assert page.js_errors == []


async def test_reload_keeps_the_session_and_shows_history_once(browser: Any, server_url: str) -> None:
    page = await new_page(browser, server_url)
    await send(page, "hello")
    await wait_replies(page, 1)
    before = await settles_to_server(page, server_url)
    session_id = (await stored_state(page))["session_id"]

    await page.reload()
    await page.locator(".hl-status[data-state=online]").wait_for()
    await page.wait_for_timeout(1000)  # let any (wrong) backlog arrive before counting
    assert (await stored_state(page))["session_id"] == session_id
    after = await transcript(page)
    assert after == before
    assert_unique(after)

    # And the conversation goes on in the same session.
    await send(page, "What is your return policy?")
    await wait_replies(page, 2)
    rows = await settles_to_server(page, server_url)
    assert rows[: len(before)] == before and len(rows) > len(before)
    assert page.js_errors == []


async def test_reload_restores_the_transcript_scrolled_to_the_latest_message(browser: Any, server_url: str) -> None:
    page = await new_page(browser, server_url)
    questions = ["What is your return policy?", "How long does a refund take?", "Which payment methods do you accept?"]
    for n, question in enumerate(questions, start=1):
        await send(page, question)
        await wait_replies(page, n)
    await settles_to_server(page, server_url)
    gap = "() => { const l = document.querySelector('.hl-messages'); return [l.scrollHeight - l.clientHeight, l.scrollHeight - l.scrollTop - l.clientHeight]; }"
    overflow, _ = await page.evaluate(gap)
    assert overflow > 100, "the transcript must overflow the panel for this test to mean anything"

    await page.reload()
    await page.locator(".hl-status[data-state=online]").wait_for()
    await page.wait_for_function("n => document.querySelectorAll('.hl-msg--bot').length >= n", arg=len(questions))
    await page.wait_for_timeout(500)
    _, below = await page.evaluate(gap)
    assert below < 5, f"after a reload the transcript is {below}px above its latest message"
    assert page.js_errors == []


async def test_missed_and_queued_messages_arrive_exactly_once_after_a_drop(
    browser: Any, server_url: str
) -> None:
    page = await new_page(browser, server_url)
    # Questions the real bot answers (an unclear one is handed to a human, who answers later).
    await send(page, "hello")
    await wait_replies(page, 1)
    await settles_to_server(page, server_url)

    # The network goes away: the widget says so, and keeps what is typed meanwhile.
    await page.context.set_offline(True)
    await page.locator(".hl-status[data-state=offline], .hl-status[data-state=reconnecting]").wait_for()
    await send(page, "What is your return policy?")
    await page.locator(".hl-msg--customer[data-delivery=sending]").wait_for()

    # Meanwhile the conversation moves on from another device with the same session.
    other = await new_page(browser, server_url, storage_state=await page.context.storage_state())
    await send(other, "How long does shipping take?")
    await wait_replies(other, 2)
    await settles_to_server(other, server_url)

    await page.context.set_offline(False)
    await page.locator(".hl-status[data-state=online]").wait_for()
    await page.locator(".hl-msg--customer[data-delivery=sending]").wait_for(state="detached")
    await wait_replies(page, 3)
    rows = await settles_to_server(page, server_url)
    assert_unique(rows)
    texts = [text for _, text in rows]
    for text in ("hello", "What is your return policy?", "How long does shipping take?"):
        assert texts.count(text) == 1, texts
    assert page.js_errors == [] and other.js_errors == []


async def test_markup_in_messages_stays_text(browser: Any, server_url: str) -> None:
    page = await new_page(browser, server_url)
    payload = '<img src=x onerror="window.__hlXss=1"><b>bold</b>'
    await send(page, payload)
    await wait_replies(page, 1)
    await settles_to_server(page, server_url)
    assert await page.locator(".hl-msg--customer .hl-text").first.text_content() == payload
    assert await page.locator(".hl-root img, .hl-root b").count() == 0
    await page.wait_for_timeout(300)
    assert await page.evaluate("window.__hlXss") is None
    assert page.js_errors == []


async def test_agent_replies_look_different_and_server_errors_show_inline(
    browser: Any, server_url: str
) -> None:
    # A proxy in the page's own websocket lets the test speak as the server, whatever server runs:
    # an agent reply with meta and markup, and an error frame.
    context = await browser.new_context(viewport={"width": 1100, "height": 760})
    context.set_default_timeout(TIMEOUT_MS)
    page = await context.new_page()
    routes: list[Any] = []

    def proxy(ws: Any) -> None:
        ws.connect_to_server()
        routes.append(ws)

    await page.route_web_socket(re.compile(r".*/ws/chat$"), proxy)
    await page.goto(server_url + "/")
    await page.locator(".hl-status[data-state=online]").wait_for()
    await send(page, "hello")
    await wait_replies(page, 1)
    last_seq = (await settles_to_server(page, server_url))[-1][0]

    routes[-1].send(json.dumps({
        "type": "message", "seq": last_seq + 10_000, "direction": "outbound", "author": "agent",
        "text": "Hi, I'm Dana. <img src=x onerror=\"window.__hlXss=1\">", "ticket_id": 1,
        "created_at": "2026-11-29T10:00:00+00:00", "client_message_id": None,
        "meta": {"tier": "secret-tier", "intent": "secret-intent", "confidence": 0.93},
    }))
    agent = page.locator(".hl-msg--agent")
    await agent.wait_for()
    assert await agent.locator(".hl-author").text_content() == "Support agent"
    assert await page.locator(".hl-msg--bot .hl-author").first.text_content() == "Assistant"
    background = "el => getComputedStyle(el).backgroundColor"
    assert await agent.evaluate(background) != await page.locator(".hl-msg--bot").first.evaluate(background)
    assert await page.locator(".hl-root img").count() == 0
    panel_text = await page.locator(".hl-panel").inner_text()
    assert "secret-tier" not in panel_text and "secret-intent" not in panel_text and "0.93" not in panel_text

    routes[-1].send(json.dumps({"type": "error", "code": "rate_limited", "message": "Please slow down."}))
    notice = page.locator(".hl-notice--error")
    await notice.wait_for()
    assert await notice.text_content() == "Please slow down."
    assert await notice.get_attribute("role") == "alert"
    await context.close()


async def _set_stored(page: Any, update: str) -> None:
    """Edit the widget's localStorage record with a JS expression over ``s`` (the parsed state)."""
    await page.evaluate(
        "update => { for (let i = 0; i < localStorage.length; i++) { const k = localStorage.key(i);"
        " if (k.startsWith('helpline:')) { const s = JSON.parse(localStorage.getItem(k));"
        " (new Function('s', update))(s); localStorage.setItem(k, JSON.stringify(s)); } } }",
        update,
    )


async def test_a_session_id_the_server_never_issued_is_replaced_by_a_new_session(browser: Any, server_url: str) -> None:
    page = await new_page(browser, server_url)
    await send(page, "hello")
    await wait_replies(page, 1)
    await _set_stored(page, "s.session_id = 'a-session-id-i-made-up-myself'")
    await page.reload()
    await page.locator(".hl-status[data-state=online]").wait_for()
    state = await stored_state(page)
    assert state["session_id"] != "a-session-id-i-made-up-myself" and len(state["session_id"]) > 40
    await send(page, "What is your return policy?")
    await wait_replies(page, 1)
    rows = await settles_to_server(page, server_url)
    assert [text for _, text in rows][0] == "What is your return policy?"
    assert page.js_errors == []


async def test_a_widget_ahead_of_the_server_shows_the_servers_transcript(browser: Any, server_url: str) -> None:
    """E.g. the database was restored from a backup: the widget remembers seq 40 and old bubbles."""
    page = await new_page(browser, server_url)
    await send(page, "hello")
    await wait_replies(page, 1)
    await settles_to_server(page, server_url)
    await _set_stored(page, "s.last_seq = 40; s.messages.push({seq: 40, direction: 'outbound', author: 'bot', "
                            "text: 'an answer the server no longer has', created_at: null, client_message_id: null})")
    await page.reload()
    await page.locator(".hl-status[data-state=online]").wait_for()
    rows = await settles_to_server(page, server_url)
    assert "an answer the server no longer has" not in [text for _, text in rows]
    await send(page, "Which payment methods do you accept?")
    await wait_replies(page, 2)
    rows = await settles_to_server(page, server_url)
    assert [text for _, text in rows][-2] == "Which payment methods do you accept?"
    assert page.js_errors == []


async def test_a_socket_closed_for_inactivity_waits_for_the_customer(browser: Any, server_factory) -> None:
    server = server_factory({"HELPLINE_CHAT_IDLE_TIMEOUT_S": "2"})
    server.start()
    page = await new_page(browser, server.url)
    await send(page, "hello")
    await wait_replies(page, 1)
    await page.locator(".hl-status[data-state=paused]").wait_for()
    await page.wait_for_timeout(1500)
    assert await page.locator(".hl-status").get_attribute("data-state") == "paused"  # no reconnect loop
    await send(page, "Which payment methods do you accept?")
    await wait_replies(page, 2)
    await settles_to_server(page, server.url)
    assert page.js_errors == []


# --- greeting and quick replies (issue 12) ----------------------------------------------------------


SHIPPED_REPLIES = load_replies(DEFAULT_REPLIES_FILE)


def quick_buttons(page: Any) -> Any:
    return page.locator(".hl-quick .hl-quick-reply")


async def quick_labels(page: Any) -> list[str]:
    return await quick_buttons(page).all_text_contents()


async def test_a_new_conversation_opens_with_the_greeting_and_a_suggestion_is_a_message(
    browser: Any, server_url: str
) -> None:
    page = await new_page(browser, server_url)
    greeting = page.locator(".hl-messages .hl-greeting")
    await greeting.wait_for()
    assert await greeting.locator(".hl-text").text_content() == SHIPPED_REPLIES.greeting_text()
    assert await greeting.locator(".hl-author").text_content() == "Assistant"
    assert await page.locator(".hl-messages > li").first.get_attribute("class") == "hl-greeting"
    group = page.get_by_role("group", name="Suggested questions")
    assert await group.get_by_role("button").all_text_contents() == SHIPPED_REPLIES.suggestions
    assert await transcript(page) == []  # shown, not a message of the conversation
    assert (await stored_state(page))["messages"] == []

    suggestion = "Do you ship to Canada?"
    assert suggestion in SHIPPED_REPLIES.suggestions
    await group.get_by_role("button", name=suggestion).click()
    assert await quick_buttons(page).count() == 0  # used: gone at once
    mine = page.locator(".hl-msg--customer")
    await mine.first.wait_for()
    assert await mine.first.locator(".hl-text").text_content() == suggestion
    assert await page.evaluate("document.activeElement.classList.contains('hl-input')")
    await wait_replies(page, 1)
    rows = await settles_to_server(page, server_url)
    assert [text for _, text in rows][0] == suggestion  # sent as the customer's message, stored once
    assert "Canada" in rows[1][1] or "ship" in rows[1][1].lower()  # and the bot answered it
    assert await greeting.count() == 1  # still at the top of this page
    assert (await page.locator(".hl-messages > li").all_inner_texts())[0].endswith(SHIPPED_REPLIES.greeting_text())

    # A reload with history does not greet again, nor offer the suggestions.
    await page.reload()
    await page.locator(".hl-status[data-state=online]").wait_for()
    await wait_replies(page, 1)
    await page.wait_for_timeout(500)
    assert await page.locator(".hl-greeting").count() == 0
    assert await quick_buttons(page).count() == 0
    assert await transcript(page) == rows
    assert page.js_errors == []


async def test_quick_replies_show_under_the_latest_bot_message_and_go_once_used(
    browser: Any, helpline_client: Any
) -> None:
    rt = runtime(helpline_client)
    url = str(helpline_client.make_url("/")).rstrip("/")
    page = await new_page(browser, url)
    await send(page, "hello")
    await wait_replies(page, 1)
    await settles_to_server(page, url)
    session_id = (await stored_state(page))["session_id"]

    xss = '<img src=x onerror="window.__hlXss=1"><b>bold</b>'
    long_label = "I ordered two things and only one of them arrived in the parcel yesterday afternoon"[:80]
    labels = ["Track my order", xss, long_label]
    await store_bot_reply(rt, session_id, "Which of these is it about?", {
        "tier": "deterministic", "intent": None, "confidence": 0.31, "quick_replies": labels,
    })
    group = page.get_by_role("group", name="Quick replies")
    await group.wait_for()
    assert await quick_labels(page) == labels
    # Under that message: the row right after its bubble.
    assert await page.evaluate(
        "() => document.querySelector('.hl-quick').previousElementSibling.querySelector('.hl-text').textContent"
    ) == "Which of these is it about?"
    # Markup in a label stays text; the bot's labels never reach the page.
    assert await page.locator(".hl-root img, .hl-root b").count() == 0
    assert await page.evaluate("window.__hlXss") is None
    panel_text = await page.locator(".hl-panel").inner_text()
    assert "0.31" not in panel_text and "deterministic" not in panel_text
    # A long label wraps inside the conversation: no overflow, several lines.
    box = await quick_buttons(page).nth(2).bounding_box()
    pane = await page.locator(".hl-messages").bounding_box()
    assert box["x"] + box["width"] <= pane["x"] + pane["width"]
    assert box["height"] > 2 * (await quick_buttons(page).first.bounding_box())["height"] * 0.8
    assert await quick_buttons(page).nth(2).evaluate("b => b.scrollWidth <= b.clientWidth")

    # Kept with the message: a reload shows them again while it is still the latest.
    await page.reload()
    await page.locator(".hl-status[data-state=online]").wait_for()
    await group.wait_for()
    assert await quick_labels(page) == labels and await page.locator(".hl-greeting").count() == 0

    # Keyboard: Tab from the conversation reaches the first button; Enter sends its label.
    await page.locator(".hl-messages").focus()
    await page.keyboard.press("Tab")
    assert await page.evaluate("document.activeElement.textContent") == "Track my order"
    await page.keyboard.press("Enter")
    assert await quick_buttons(page).count() == 0
    assert await page.evaluate("document.activeElement.classList.contains('hl-input')")
    await wait_replies(page, 3)
    rows = await settles_to_server(page, url)
    assert [text for _, text in rows].count("Track my order") == 1
    assert [text for _, text in rows].index("Track my order") == len(rows) - 2  # then the bot's answer
    assert await quick_buttons(page).count() == 0  # the latest message is the bot's answer

    # A newer message replaces them: options on one bot message, then another message.
    await idle(rt)
    await store_bot_reply(rt, session_id, "Is it about an order?", {"quick_replies": ["Yes", "No"]})
    await page.get_by_role("button", name="Yes").wait_for()
    await store_bot_reply(rt, session_id, "A member of the team will read this.", None)
    await page.get_by_role("button", name="Yes").wait_for(state="detached")
    assert await quick_buttons(page).count() == 0
    await page.wait_for_timeout(300)
    assert await page.evaluate("window.__hlXss") is None
    assert page.js_errors == []


async def test_the_bots_clarifying_question_offers_buttons_and_a_click_answers_it(browser: Any, server_url: str) -> None:
    page = await new_page(browser, server_url)
    await send(page, "?")
    group = page.get_by_role("group", name="Quick replies")
    await group.wait_for()
    labels = await quick_labels(page)
    assert 1 <= len(labels) <= 4 and set(labels) <= set(SHIPPED_REPLIES.topics.values())
    assert (await transcript(page))[-1][1] == SHIPPED_REPLIES.clarify_text()
    await group.get_by_role("button", name=labels[0]).click()
    await wait_replies(page, 2)
    rows = await settles_to_server(page, server_url)
    assert [text for _, text in rows][-2] == labels[0]  # the label, sent as the customer's message
    assert rows[-1][1] != SHIPPED_REPLIES.clarify_text()
    assert await quick_buttons(page).count() == 0 or await quick_labels(page) != labels
    assert page.js_errors == []
