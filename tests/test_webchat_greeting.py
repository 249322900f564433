"""The web-chat protocol's greeting and quick replies (issue 12): the welcome frame carries the
replies file's greeting and suggested questions; a bot message's ``meta.quick_replies`` reaches the
customer's socket (live and from the backlog) while every internal label stays inside; what a
customer frame may carry is filtered by :func:`channels.webchat.public_meta`. Real application, real
websockets, both database backends.

:func:`store_bot_reply` stores a bot message the way a turn does (message and outbox entry in one
transaction, then the outbox sends it); the widget and terminal-client tests use it too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from app_fixtures import ChatSocket, idle, runtime

from channels.sessions import REPLAY, WEBCHAT
from channels.webchat import WebChatChannel, public_meta, quick_replies
from config.replies import DEFAULT_REPLIES_FILE, RepliesError, load_replies
from config.settings import Settings
from helpline.server import build_app
from state.conversations import find_customer_id, next_seq, open_ticket
from state.models import Message, utcnow

SHIPPED = load_replies(DEFAULT_REPLIES_FILE)


async def store_bot_reply(
    rt: Any, session_id: str, text: str, meta: dict[str, Any] | None, channel: str = WEBCHAT
) -> Message:
    """Store a bot message for ``session_id``'s customer on ``channel`` (who must have an open
    ticket) with its outbox entry in one transaction, as a turn does, then send it through the
    outbox: it reaches the customer's open sockets live and later connections from the backlog."""
    customer_id = await find_customer_id(rt.db, channel, session_id)
    assert customer_id is not None, "the session has sent no message yet"
    async with rt.db.write() as session:
        seq = await next_seq(session, customer_id)
        ticket = await open_ticket(session, customer_id)
        assert ticket is not None, "the customer has no open ticket"
        message = Message(
            seq=seq, ticket_id=ticket.id, customer_id=customer_id, direction="outbound", author="bot",
            channel=channel, text=text, meta=meta, created_at=utcnow(),
        )
        session.add(message)
        await session.flush()
        entry = rt.outbox.add(session, message)
        await session.flush()
    assert await rt.outbox.send_now(entry.id, message), "the outbox did not send the message"
    return message


async def _chat(client: Any, session_id: str | None = None, last_seq: int = 0, **options: Any) -> ChatSocket:
    return await ChatSocket.open(client.session, str(client.make_url("/")), session_id, last_seq, **options)


# --- what a customer frame may carry ---------------------------------------------------------------


def test_quick_replies_pass_as_labels_and_internal_labels_stay_inside() -> None:
    meta = {"tier": "deterministic", "intent": "track_order", "confidence": 0.4, "citations": ["kb-1"],
            "quick_replies": ["Track my order", "Get a refund"]}
    assert public_meta(meta) == {"quick_replies": ["Track my order", "Get a refund"]}
    assert public_meta({"tier": "retrieval", "intent": "x"}) is None
    assert public_meta(None) is None
    # A rating prompt and quick replies together: both, and nothing else.
    both = {"csat": {"ticket": 7, "scale": [1, 5], "extra": 1}, "resolved_by": "bot", "quick_replies": ["Yes"]}
    assert public_meta(both) == {"csat": {"ticket": 7, "scale": [1, 5]}, "quick_replies": ["Yes"]}


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (["a", "b", "c", "d", "e"], ["a", "b", "c", "d"]),  # at most four
        (["ok", "", "   ", 3, None, {"label": "x"}, "fine"], ["ok", "fine"]),  # blanks and non-text dropped
        (["x" * 80, "y" * 81], ["x" * 80]),  # a label over 80 characters is dropped, not cut
        ("Track my order", None),  # not a list
        ([], None),
        ([1, 2], None),
    ],
)
def test_quick_replies_are_filtered_to_what_a_client_may_show(value: Any, shown: list[str] | None) -> None:
    assert quick_replies({"quick_replies": value}) == shown
    assert public_meta({"quick_replies": value}) == (None if shown is None else {"quick_replies": shown})


def test_the_channel_reads_the_configured_replies_file_or_takes_the_object(tmp_path: Path) -> None:
    custom = tmp_path / "replies.yaml"
    custom.write_text(DEFAULT_REPLIES_FILE.read_text(encoding="utf-8").replace(
        "assistant_name: Nora", "assistant_name: Ada"
    ), encoding="utf-8")
    settings = Settings(data_dir=tmp_path / "var", replies_file=custom)
    # Nothing else is touched while the channel is built: the other parts may be absent here.
    channel = WebChatChannel(None, None, None, settings, None)  # type: ignore[arg-type]
    assert channel.greeting["text"].startswith("Hi, I'm Ada, the Northwind Goods assistant.")
    assert channel.greeting["suggestions"] == list(SHIPPED.suggestions)
    given = WebChatChannel(None, None, None, settings, None, replies=SHIPPED)  # type: ignore[arg-type]
    assert given.greeting == {"text": SHIPPED.greeting_text(), "suggestions": list(SHIPPED.suggestions)}

    custom.write_text("greeting: [not, a, text]\n", encoding="utf-8")
    with pytest.raises(RepliesError, match=r"replies\.yaml: "):
        WebChatChannel(None, None, None, settings, None)  # type: ignore[arg-type]


# --- the welcome frame ------------------------------------------------------------------------------


async def test_every_welcome_carries_the_greeting_and_suggestions(helpline_client: Any) -> None:
    expected = {"text": SHIPPED.greeting_text(), "suggestions": list(SHIPPED.suggestions)}
    assert expected["text"].startswith("Hi, I'm Nora, the Northwind Goods assistant.") and expected["suggestions"]
    chat = await _chat(helpline_client)
    assert chat.welcome["greeting"] == expected
    assert chat.welcome["last_seq"] == 0  # a new conversation: a client shows the greeting
    await chat.send("hello", "g-1")
    await chat.bot_reply()
    await chat.close()
    await idle(runtime(helpline_client))

    # An existing conversation's welcome carries it too; last_seq > 0 tells the client not to show it,
    # and nothing of it was stored: the transcript is the customer's message and the bot's reply.
    again = await _chat(helpline_client, chat.session_id)
    assert again.welcome["greeting"] == expected and again.welcome["last_seq"] == 2
    backlog = [f for f in await again.drain() if f["type"] == "message"]
    assert [(f["author"], f["text"]) for f in backlog][0] == ("customer", "hello")
    assert len(backlog) == 2 and expected["text"] not in [f["text"] for f in backlog]
    await again.close()


async def test_the_greeting_comes_from_the_configured_replies_file(
    app_settings: Settings, aiohttp_client: Any, tmp_path: Path
) -> None:
    custom = tmp_path / "replies.yaml"
    text = DEFAULT_REPLIES_FILE.read_text(encoding="utf-8")
    start = text.index("suggestions:")
    end = text.index("\n\n", start)
    custom.write_text(
        text[:start] + 'suggestions:\n  - "Où est ma commande ?"\n  - "<b>Bold</b> & co"' + text[end:],
        encoding="utf-8",
    )
    client = await aiohttp_client(build_app(app_settings.model_copy(update={"replies_file": custom})))
    chat = await _chat(client)
    assert chat.welcome["greeting"]["suggestions"] == ["Où est ma commande ?", "<b>Bold</b> & co"]
    await chat.close()


# --- quick replies on a stored bot message ---------------------------------------------------------------


async def test_quick_replies_reach_the_customer_live_and_from_the_backlog(helpline_client: Any) -> None:
    rt = runtime(helpline_client)
    chat = await _chat(helpline_client)
    await chat.send("hello", "q-1")
    await chat.bot_reply()
    await idle(rt)
    labels = ["Track my order", "Get a refund", '<img src=x onerror="alert(1)">']
    stored = await store_bot_reply(rt, chat.session_id, "Which of these is it about?", {
        "tier": "deterministic", "intent": None, "confidence": 0.31, "quick_replies": labels,
    })
    live = await chat.bot_reply()
    assert (live["seq"], live["text"]) == (stored.seq, "Which of these is it about?")
    assert live["meta"] == {"quick_replies": labels}  # as text, unchanged; no tier, intent, confidence
    await chat.close()

    back = await _chat(helpline_client, chat.session_id, last_seq=stored.seq - 1)
    [again] = [f for f in await back.drain() if f["type"] == "message"]
    assert (again["seq"], again["meta"]) == (stored.seq, {"quick_replies": labels})
    await back.close()
    # An ordinary bot reply carries no meta at all on a customer's socket.
    full = await _chat(helpline_client, chat.session_id)
    metas = [f["meta"] for f in await full.drain() if f["type"] == "message"]
    assert metas == [None, None, {"quick_replies": labels}]
    await full.close()


async def test_a_replay_session_still_gets_every_label(helpline_client: Any) -> None:
    rt = runtime(helpline_client)
    chat = await _chat(helpline_client, labels=True)
    await chat.send("hello", "r-1")
    await chat.bot_reply()
    await idle(rt)
    meta = {"tier": "deterministic", "intent": None, "confidence": 0.2, "quick_replies": ["Yes", "No"]}
    await store_bot_reply(rt, chat.session_id, "Is it about an order?", meta, channel=REPLAY)
    reply = await chat.bot_reply()
    assert reply["meta"] == meta
    await chat.close()



async def test_a_vague_message_gets_quick_replies_and_a_number_picks_one(helpline_client: Any) -> None:
    # The router's clarifying question offers the likeliest topics as quick replies; the customer's
    # socket gets the labels and nothing else of the bot's meta. "1" picks the first option: the
    # answer is the one its label gets when typed in full.
    chat = await _chat(helpline_client)
    await chat.send("?", "v-1")
    question = await chat.bot_reply()
    assert question["text"] == SHIPPED.clarify_text()
    options = (question["meta"] or {}).get("quick_replies")
    assert isinstance(options, list) and 1 <= len(options) <= 4, question
    assert set(question["meta"]) == {"quick_replies"}
    assert set(options) <= set(SHIPPED.topics.values())
    await chat.send("1", "v-2")
    by_number = await chat.bot_reply()
    await chat.close()

    other = await _chat(helpline_client)
    await other.send(options[0], "v-3")
    by_label = await other.bot_reply()
    await other.close()
    assert by_number["text"] == by_label["text"] != question["text"]
