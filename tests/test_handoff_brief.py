"""The handoff brief (bot/handoff.py), the playbook (bot/playbook.py), and the brief kept on an
escalated ticket and shown in the inbox (helpline/briefs.py). Unit tests on hand-made tickets, then
the real application on both database backends."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from app_fixtures import idle

from bot.handoff import (
    BRIEF_VERSION, BriefCustomer, BriefInput, BriefTurn, EarlierTicket, build_brief, render_text,
)
from bot.intent_model import load_intents
from bot.playbook import Playbook, PlaybookError
from config.settings import Settings
from helpline.conversation import Inbound
from helpline.server import RUNTIME
from state import agents as accounts
from state.models import Ticket

PLAYBOOK = Playbook.load(Settings().playbook_file)
CUSTOMER = BriefCustomer(
    id=7, name="Ana", email=None, identities=(("webchat", "s-1"), ("sms", "+15550100")),
    earlier_tickets=(EarlierTicket(3, "closed", "track_order", datetime(2026, 11, 1, tzinfo=timezone.utc)),),
)


def turn(text: str, **decision: Any) -> BriefTurn:
    reply = decision.pop("reply", None)
    return BriefTurn(text=text, channel="webchat", decision=decision or None, reply=reply)


def brief_of(turns: list[BriefTurn], reason: str | None, **kw: Any) -> dict[str, Any]:
    return build_brief(BriefInput(ticket_id=12, customer=CUSTOMER, turns=turns, reason=reason, **kw), PLAYBOOK)


# --- the brief ----------------------------------------------------------------------------------


def test_an_angry_refund_conversation_is_briefed_field_by_field() -> None:
    turns = [
        turn("hi", tier="deterministic", reason="answered", intent="greeting", confidence=1.0, sentiment=0.0,
             reply="Hello! How can I help?"),
        turn("Where is my refund of $89.99 for order #W4629443? I sent it back on May 2.",
             tier="deterministic", reason="asked_proof", intent="track_refund", confidence=0.98, sentiment=-0.1,
             entities={"order_ids": ["#W4629443"]}, data={"awaiting_proof": ["#W4629443"]},
             reply="What is the email on the order?"),
        turn("This is ridiculous. You are useless and I am furious!", tier="human", reason="negative_sentiment",
             intent="complaint", confidence=0.64, sentiment=-0.85, escalated=True, data={"sentiment": -0.85}),
    ]
    b = brief_of(turns, "negative_sentiment", evidence={"sentiment": -0.85})
    assert b["version"] == BRIEF_VERSION == 1 and b["ticket_id"] == 12
    assert b["customer"] == {
        "id": 7, "name": "Ana", "email": None,
        "identities": [{"channel": "webchat", "address": "s-1"}, {"channel": "sms", "address": "+15550100"}],
        "channels": ["webchat", "sms"],
        "earlier_tickets": [{"id": 3, "state": "closed", "intent": "track_order",
                             "created_at": "2026-11-01T00:00:00+00:00"}],
    }
    # The request behind the anger, not "complaint"; the facts as the customer wrote them.
    assert b["want"] == {
        "summary": "Track refund; order #W4629443; amount $89.99",
        "intent": "track_refund", "order_ids": ["#W4629443"], "amounts": ["$89.99"], "emails": [],
        "key_sentences": ["Where is my refund of $89.99 for order #W4629443?",
                          "This is ridiculous.", "You are useless and I am furious!"],
    }
    why = b["escalation"]
    assert why["reason"] == "negative_sentiment" and why["description"] == "the customer is upset"
    assert why["evidence"] == ["This is ridiculous. You are useless and I am furious!"]
    assert why["confidence"] == 0.98 and why["sentiment"] == [0.0, -0.1, -0.85]
    assert why["sentiment_trend"] == "worsening" and why["language"] == "en"
    assert b["bot_did"] == {
        "answers": [{"tier": "deterministic", "intent": "greeting", "text": "Hello! How can I help?", "articles": []}],
        "lookups": [{"order_id": "#W4629443", "result": "ownership not proved"}],
        "unanswered_slots": [{"intent": "track_refund", "slot": "proof",
                              "asked_for": "the email or postcode on the order"}],
    }
    assert b["open_questions"] == [
        "Ownership not verified: ask for the email or postcode on the order before sharing any order detail.",
        "The assistant asked for the email or postcode on the order and got no answer.",
    ]
    assert b["next_step"] == {"rule": "refund-upset", "text": PLAYBOOK.next_step("track_refund", "negative_sentiment").text}
    text = render_text(b)
    assert text.splitlines()[:3] == [
        "Escalated because the customer is upset.",
        "Wants: Track refund; order #W4629443; amount $89.99.",
        'Trigger: "This is ridiculous. You are useless and I am furious!".',
    ]
    assert "Ownership NOT verified" in text and "Next step: Apologise" in text


def test_lookups_answers_with_articles_and_a_filled_slot() -> None:
    turns = [
        turn("how long do refunds take?", tier="retrieval", reason="answered", intent="check_refund_policy",
             confidence=0.99, sentiment=0.0, citations=["refunds"], reply="Refunds take 5-7 business days."),
        turn("where is my order", tier="deterministic", reason="asked_slot", intent="track_order", confidence=0.9,
             sentiment=0.0, reply="What is the order number?"),
        turn("#W5976205 and lucas.rahman97@example.com", tier="deterministic", reason="slot_filled",
             intent="track_order", confidence=0.5, sentiment=0.0,
             entities={"order_ids": ["#W5976205"], "emails": ["lucas.rahman97@example.com"]},
             data={"orders": [{"order_id": "#W5976205", "status": "processed"}], "not_found": ["#W0000001"]},
             reply="Order #W5976205 is processed."),
        turn("I want a real person now", tier="human", reason="explicit_request", intent="contact_human_agent",
             confidence=0.99, sentiment=0.0, escalated=True, data={"matched": "real person"}),
    ]
    b = brief_of(turns, "explicit_request", evidence={"matched": "real person"}, verified_owner="lucas_rahman_9742")
    assert b["want"]["intent"] == "track_order" and b["escalation"]["confidence"] == 0.9
    assert b["escalation"]["evidence"] == ["real person"]
    assert b["bot_did"]["lookups"] == [{"order_id": "#W5976205", "result": "processed"},
                                       {"order_id": "#W0000001", "result": "not found"}]
    assert b["bot_did"]["unanswered_slots"] == []  # the order number came in the next message
    assert [a["articles"] for a in b["bot_did"]["answers"]] == [["refunds"], []]
    assert b["ownership"] == {"verified_owner": "lucas_rahman_9742", "orders_mentioned": True}
    assert b["open_questions"] == ["Order #W0000001 was not found: check the number with the customer."]
    assert b["next_step"]["rule"] == "tracking"
    assert "Verified owner of order-store account lucas_rahman_9742" in render_text(b)


def test_key_sentences_are_quoted_never_invented_and_bounded() -> None:
    long = "word " * 5000 + "order #W1234567 is late."
    turns = [turn("thanks", tier="deterministic", reason="answered", intent="thanks", confidence=1.0),
             turn(long, tier="human", reason="low_confidence_no_reasoning_tier", intent="track_order",
                  confidence=0.4, escalated=True)]
    b = brief_of(turns, "low_confidence_no_reasoning_tier", max_message_chars=4000)
    # The order id sits past the routed limit: what the bot never read is not in the brief either.
    assert b["want"]["order_ids"] == []
    assert all(len(s) <= 240 for s in b["want"]["key_sentences"])
    assert all(s.rstrip("…").split()[0] in long for s in b["want"]["key_sentences"])
    assert b["open_questions"] == ["What does the customer want (best guess: track_order)?"]
    assert b["next_step"]["rule"] == "unclear"


def test_an_unsupported_language_names_it_in_the_text_form() -> None:
    turns = [turn("Wo ist meine Bestellung? Ich warte seit zwei Wochen.", tier="human",
                  reason="unsupported_language", intent="out_of_scope", confidence=0.9, escalated=True,
                  data={"language": "de", "confidence": 0.99})]
    b = brief_of(turns, "unsupported_language", evidence={"language": "de", "confidence": 0.99})
    assert b["escalation"]["language"] == "de" and b["next_step"]["rule"] == "language"
    assert render_text(b).splitlines()[1] == "Language: de (ISO 639-1)."


def test_a_ticket_with_no_routed_turn_still_gets_a_brief() -> None:
    b = brief_of([turn("hello?")], "kill_switch")
    assert b["want"]["intent"] is None and b["want"]["summary"] == "Unclear request"
    assert b["escalation"]["sentiment_trend"] == "unknown" and b["next_step"]["rule"] == "switched-off"


# --- the playbook -------------------------------------------------------------------------------


def test_playbook_precedence_and_prefixes(tmp_path: Path) -> None:
    path = tmp_path / "playbook.yaml"
    path.write_text(
        "default: fallback\n"
        "rules:\n"
        "  - {id: reason-only, reasons: [low_confidence], next_step: r}\n"
        "  - {id: intent-only, intents: [cancel_order], next_step: i}\n"
        "  - {id: both, intents: [cancel_order], reasons: [negative_sentiment], next_step: b}\n"
    )
    pb = Playbook.load(path)
    assert pb.next_step("cancel_order", "negative_sentiment").rule == "both"
    assert pb.next_step("cancel_order", "low_confidence_no_reasoning_tier").rule == "intent-only"
    assert pb.next_step("track_order", "low_confidence_no_reasoning_tier").rule == "reason-only"
    assert pb.next_step("track_order", "explicit_request").rule == "default"
    assert pb.next_step(None, None).text == "fallback"


@pytest.mark.parametrize(("body", "message"), [
    ("rules: []\n", "default: Field required"),
    ("default: x\nrules:\n  - {id: a, intents: [], next_step: s}\n", "rules.0.intents: Value error"),
    ("default: x\nrules:\n  - {id: a, next_step: s, colour: red}\n", "rules.0.colour: Extra inputs"),
    ("default: x\nrules:\n  - {id: a, next_step: s}\n  - {id: a, next_step: t}\n", "rule id 'a' appears twice"),
    ("default: [unclosed\n", "not valid YAML"),
])
def test_a_bad_playbook_is_refused_naming_the_field(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "playbook.yaml"
    path.write_text(body)
    with pytest.raises(PlaybookError, match=re.escape(message)):
        Playbook.load(path)


def test_the_shipped_playbook_names_only_configured_intents() -> None:
    known = set(load_intents(Settings().intents_file))
    assert PLAYBOOK.intents() and PLAYBOOK.intents() <= known, PLAYBOOK.intents() - known


# --- on the application ---------------------------------------------------------------------------


async def _say(rt: Any, address: str, text: str) -> int:
    accepted = await rt.conversations.receive(Inbound("webchat", address, text))
    await idle(rt)
    return accepted.ticket.id


async def _ticket(rt: Any, ticket_id: int) -> Ticket:
    async with rt.db.sessions() as session:
        ticket = await session.get(Ticket, ticket_id)
        assert ticket is not None
        return ticket


async def test_an_escalation_stores_the_brief_keeps_it_current_and_the_inbox_shows_it(helpline_client) -> None:
    rt = helpline_client.server.app[RUNTIME]
    address = "brief-1"
    await _say(rt, address, "where is my order #W5976205? my email is lucas.rahman97@example.com")
    ticket_id = await _say(rt, address, "that doesn't help, let me talk to a real person <img src=x onerror=alert(1)>")
    ticket = await _ticket(rt, ticket_id)
    assert ticket.state == "escalated" and ticket.brief is not None
    b = ticket.brief
    assert b["version"] == 1 and b["escalation"]["reason"] == "explicit_request"
    assert b["want"]["intent"] == "track_order" and b["want"]["order_ids"] == ["#W5976205"]
    assert b["bot_did"]["lookups"] == [{"order_id": "#W5976205", "result": "processed"}]
    assert b["ownership"]["verified_owner"] == "lucas_rahman_9742"
    assert ticket.handoff_summary == render_text(b)
    # The ticket's intent is the topic, not "get me a person" (found by a support lead: every
    # escalated ticket read contact_human_agent in the reports and the webhook).
    assert ticket.intent == "track_order" and ticket.language == "en"

    # Kept current: what the customer adds while waiting joins the brief, no bot reply.
    await _say(rt, address, "also my refund of $45.90 for #W3655159 never arrived")
    ticket = await _ticket(rt, ticket_id)
    assert ticket.brief["want"]["order_ids"] == ["#W5976205", "#W3655159"]
    assert ticket.brief["want"]["amounts"] == ["$45.90"]
    assert any("$45.90" in s for s in ticket.brief["want"]["key_sentences"])

    await accounts.add_agent(rt.db, "brief-agent@example.com", "correct horse battery staple")
    login = await helpline_client.post("/agent/login", data={"email": "brief-agent@example.com",
                                                             "password": "correct horse battery staple"},
                                       allow_redirects=False)
    assert login.status == 303
    page = await (await helpline_client.get(f"/agent/tickets/{ticket_id}")).text()
    assert 'data-brief-version="1"' in page
    assert "Wants:</strong> <bdi>Track order; order #W5976205, #W3655159; amount $45.90" in page
    assert "playbook: tracking" in page and "Looked up #W5976205: processed" in page
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page


def test_a_rebuild_reads_only_the_new_message(monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by a break test: the brief is rebuilt at every customer message while a person owns
    the ticket, and each rebuild re-read every earlier message (over a second of CPU per message on
    a long ticket). Each message's text is now read once."""
    import bot.handoff as handoff

    calls: list[int] = []
    real = handoff.extract_entities
    monkeypatch.setattr(handoff, "extract_entities", lambda text: calls.append(len(text)) or real(text))
    handoff.message_facts.cache_clear()
    turns = [turn(f"message {n}: my order #W{1000000 + n} is late, I paid ${n}.50") for n in range(30)]
    first = brief_of(turns, "explicit_request")
    assert len(calls) == 30 and len(first["want"]["order_ids"]) == 30
    calls.clear()
    second = brief_of([*turns, turn("one more thing about #W7777777")], "explicit_request")
    assert len(calls) == 1 and second["want"]["order_ids"][-1] == "#W7777777"
    # Over MAX_TURNS messages only the last ones count: a pasted flood costs a bounded amount.
    many = [turn(f"note {n} about my order") for n in range(handoff.MAX_TURNS + 40)]
    calls.clear()
    brief_of(many, "explicit_request")
    assert len(calls) == handoff.MAX_TURNS
