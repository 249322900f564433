"""Router decisions on fixed utterances, one group per tier, with the real local models, the real
knowledge base and the shipped demo order store."""

from __future__ import annotations

import pytest

from bot.escalation import PriorTurn
from bot.router import TurnContext
from helpline.server import RUNTIME

CTX = TurnContext(ticket_id=1, ticket_state="bot")


@pytest.fixture
async def router(helpline_client):
    return helpline_client.server.app[RUNTIME].router


@pytest.fixture
async def demo_order(helpline_client):
    orders = helpline_client.server.app[RUNTIME].orders
    return next(o for o in orders._orders.values() if o.status == "delivered" and o.tracking_ids)


@pytest.mark.parametrize(
    "text,intent",
    [("hi there!", "greeting"), ("thanks a lot, that helped", "thanks"), ("bye for now", "goodbye")],
)
async def test_small_talk_is_deterministic(router, text: str, intent: str) -> None:
    decision = await router.route(text, CTX)
    assert (decision.tier, decision.intent, decision.escalate) == ("deterministic", intent, False)
    assert decision.reply == router.replies.fill(router.intents[intent].reply)
    assert decision.resolve is (intent == "goodbye")


async def test_order_status_is_a_lookup_and_only_for_the_order_asked(router, demo_order) -> None:
    decision = await router.route(f"where is my order {demo_order.order_id}? my email is {demo_order.email}", CTX)
    assert decision.tier == "deterministic" and decision.intent == "track_order"
    assert decision.verified_owner == demo_order.user_id
    assert demo_order.order_id in decision.reply
    assert demo_order.tracking_ids[0] in decision.reply
    assert decision.data["order_ids"] == [demo_order.order_id] or demo_order.order_id in str(decision.data)
    others = [o.order_id for o in router.orders._orders.values() if o.user_id == demo_order.user_id and o.order_id != demo_order.order_id]
    assert not any(other in decision.reply for other in others)


async def test_order_status_asks_for_the_missing_slot_then_fills_it(router, demo_order) -> None:
    ask = await router.route("can you tell me where my package is?", CTX)
    assert ask.tier == "deterministic" and ask.intent == "track_order" and ask.reason == "asked_slot"
    assert ask.pending == {"intent": "track_order", "slot": "order_id"}
    fill = await router.route(
        demo_order.order_id, TurnContext(ticket_id=1, ticket_state="bot", pending=ask.pending)
    )
    # The number alone is not proof of ownership: the bot asks for the email or postcode on it.
    assert fill.tier == "deterministic" and fill.reason == "asked_proof" and fill.intent == "track_order"
    assert fill.pending == {"intent": "track_order", "slot": "proof", "order_ids": [demo_order.order_id]}
    assert demo_order.tracking_ids[0] not in fill.reply
    proof = await router.route(
        f"it's {demo_order.postcode}", TurnContext(ticket_id=1, ticket_state="bot", pending=fill.pending)
    )
    assert proof.reason == "slot_filled" and proof.pending is None and proof.verified_owner == demo_order.user_id
    assert demo_order.tracking_ids[0] in proof.reply
    # Later in the conversation, the ticket's verified owner needs no proof for their orders.
    later = await router.route(
        f"and where is {demo_order.order_id} now?",
        TurnContext(ticket_id=1, ticket_state="bot", verified_owner=demo_order.user_id),
    )
    assert later.reason == "answered" and demo_order.tracking_ids[0] in later.reply


@pytest.mark.parametrize(
    "text,intent,doc,title",
    [
        ("what is your refund policy?", "check_refund_policy", "refunds", "Refunds"),
        ("which payment methods do you accept", "check_payment_methods", "payments", "Payments"),
        ("I forgot my password and can't log in", "recover_password", "sign-in-help", "Sign-in and registration help"),
        ("how do I unsubscribe from your newsletter emails", "newsletter_subscription", "newsletter", "Newsletter"),
    ],
)
async def test_faq_is_answered_from_the_knowledge_base(router, text: str, intent: str, doc: str, title: str) -> None:
    decision = await router.route(text, CTX)
    assert decision.tier == "retrieval", decision
    assert decision.intent == intent
    assert doc in decision.citations
    assert f"Source: {title}" in decision.reply or f"Sources: {title}" in decision.reply, decision.reply
    assert router.knowledge.version not in decision.reply  # recorded, not shown to the customer
    assert decision.kb_version == router.knowledge.version


@pytest.mark.parametrize(
    "text,reason",
    [
        ("I want to talk to a real person", "explicit_request"),
        ("get me a human agent NOW", "explicit_request"),
        ("I'm going to sue your company, my lawyer will contact you", "sensitive_intent"),
        ("I'm filing a chargeback with my bank for this", "sensitive_intent"),
        ("why was my account suspended??", "sensitive_intent"),
        ("This is absolutely terrible, worst disgusting useless service, I hate you", "negative_sentiment"),
    ],
)
async def test_escalation_triggers_go_to_a_human(router, text: str, reason: str) -> None:
    decision = await router.route(text, CTX)
    assert (decision.tier, decision.reason, decision.escalate) == ("human", reason, True)


async def test_gibberish_gets_a_clarifying_question_then_a_person(router) -> None:
    """Nothing to act on: a question back with topics to pick, not a handoff; after
    ``clarify_limit`` clarifications in a row, a person."""
    decision = await router.route("blorp zintak vemmo quillax", CTX)
    assert (decision.tier, decision.reason, decision.escalate) == ("deterministic", "clarify", False)
    assert decision.data["clarify"] == "gibberish"
    assert decision.reply == router.replies.clarify_text()
    assert decision.quick_replies[-1] == "Talk to a person" and len(decision.quick_replies) == 3
    assert decision.pending == {"slot": "choice", "options": list(decision.quick_replies),
                                "intents": decision.pending["intents"]}
    prior = tuple(
        PriorTurn.from_event("blorp", decision.event_payload()) for _ in range(router.settings.clarify_limit)
    )
    again = await router.route("zintak?", TurnContext(ticket_id=1, ticket_state="bot", prior=prior))
    assert again.escalate and again.reason == "not_understood_gibberish_no_reasoning_tier"


async def test_retrieval_does_not_guess_below_the_similarity_threshold(router) -> None:
    router.settings = router.settings.model_copy(update={"retrieval_threshold": 0.99})
    decision = await router.route("which payment methods do you accept", CTX)
    assert decision.tier == "human" and decision.reason == "no_kb_match_no_reasoning_tier"
    assert decision.retrieval_score is not None and decision.retrieval_score < 0.99
    # Before giving up, the bot searched again with what the (clear) intent is about.
    assert decision.data["search"] == "intent_description"


async def test_guard_runs_before_any_model(router) -> None:
    calls = router.understander.calls
    empty = await router.route("  \n ", CTX)
    long = await router.route("a" * (router.settings.max_message_chars + 1), CTX)
    assert (empty.tier, empty.reason) == ("guard", "empty_message")
    assert (long.tier, long.reason) == ("guard", "message_too_long")
    assert router.understander.calls == calls


async def test_invisible_only_text_is_treated_as_empty(router) -> None:
    decision = await router.route("\u200b\u200b\ufeff", CTX)
    assert (decision.tier, decision.reason) == ("guard", "empty_message")


async def test_order_lookups_are_capped_per_message(router) -> None:
    first = list(router.orders._orders.values())[0]
    ids = [o.order_id for o in router.orders._orders.values() if o.user_id == first.user_id][:6]
    assert len(ids) >= 4
    decision = await router.route(
        "status of orders " + " ".join(ids), TurnContext(ticket_id=1, ticket_state="bot", verified_owner=first.user_id)
    )
    assert decision.tier == "deterministic"
    assert all(i in decision.reply for i in ids[:3])
    assert not any(i in decision.reply for i in ids[3:])
    assert "3 orders per message" in decision.reply


async def test_a_message_far_from_every_training_example_goes_to_a_person(router, demo_order) -> None:
    """The density score flags a message unlike anything the model was trained on, even when an
    in-scope intent wins the vote (teams whose data has no out_of_scope label rely on this)."""
    model = router.understander.intent_model
    confident = await router.route("what is your refund policy?", CTX)
    assert confident.tier == "retrieval"
    saved = model.oos_threshold
    model.oos_threshold = -1.0  # every message now counts as far from the training data
    try:
        flagged = await router.route("what is your refund policy?", CTX)
        # No intent to act on: only an article that answers it near-verbatim could; this one
        # does not (combined score below the threshold), so the bot says what it can help with.
        assert (flagged.tier, flagged.reason, flagged.escalate) == ("deterministic", "off_topic", False)
        assert flagged.reply == router.replies.off_topic_text()
        assert flagged.intent == "check_refund_policy"  # the nearest intent stays on record
        assert flagged.data["intent_confidence"] > 0.9 and flagged.confidence < router.settings.confidence_threshold
        # A value the bot asked for is not judged by its distance to the training data.
        filled = await router.route(
            demo_order.order_id,
            TurnContext(ticket_id=1, ticket_state="bot", pending={"intent": "track_order", "slot": "order_id"},
                        verified_owner=demo_order.user_id),
        )
        assert filled.reason == "slot_filled"
    finally:
        model.oos_threshold = saved


async def test_a_bare_email_answering_the_proof_question_is_not_read_as_a_request_for_a_person(router) -> None:
    """Owners answering "what is the email on the order?" with just their address were handed to a
    person: the intent model reads a bare email as anything (often contact_human_agent)."""
    orders = list(router.orders._orders.values())[:20]
    for order in orders:
        ask = await router.route(f"where is my order {order.order_id}?", CTX)
        assert ask.reason == "asked_proof", ask
        answer = await router.route(order.email, TurnContext(ticket_id=1, ticket_state="bot", pending=ask.pending))
        assert (answer.tier, answer.reason, answer.escalate) == ("deterministic", "slot_filled", False), (order.email, answer)
        assert answer.verified_owner == order.user_id
    # Words still count: asking for a person while answering is a request for a person.
    ask = await router.route(f"where is my order {orders[0].order_id}?", CTX)
    words = await router.route(f"{orders[0].email} and I want to talk to a real person",
                               TurnContext(ticket_id=1, ticket_state="bot", pending=ask.pending))
    assert words.reason == "explicit_request" and words.escalate


def _after(decision) -> TurnContext:
    """The context of the next turn after ``decision`` on the same ticket (its focus carried)."""
    from bot.context import Focus

    return TurnContext(
        ticket_id=1, ticket_state="bot", pending=decision.pending,
        prior=(PriorTurn.from_event("earlier", decision.event_payload()),),
        focus=Focus.from_json(decision.data.get("focus")),
    )


async def test_a_follow_up_is_read_with_the_request_before_it(router) -> None:
    first = await router.route("do you ship to Canada?", CTX)
    assert first.tier == "retrieval" and first.citations[0] == "shipping"
    assert first.data["focus"]["country"] == "Canada" and first.data["focus"]["request"] == "do you ship to Canada?"
    cost = await router.route("how much does that cost?", _after(first))
    # Alone, "how much does that cost?" is no request the bot knows; with the question before it, it is.
    assert cost.tier == "retrieval" and cost.citations[0] == "shipping" and "$14.95" in cost.reply
    assert cost.data["context"]["kind"] == "combined" and cost.data["context"]["follow_up"] == "anaphora"
    assert cost.data["context"]["text"] == "do you ship to Canada? how much does that cost?"
    uk = await router.route("and to the UK?", _after(cost))
    assert uk.data["context"]["kind"] == "slot_replaced" and "United Kingdom" in uk.data["context"]["text"]
    assert "Canada" not in uk.data["context"]["text"] and uk.citations[0] == "shipping"
    assert "United Kingdom" in uk.reply


async def test_a_message_that_says_what_it_wants_is_not_read_as_a_follow_up(router) -> None:
    first = await router.route("do you ship to Canada?", CTX)
    fresh = await router.route("I forgot my password", _after(first))
    assert "context" not in fresh.data and fresh.citations[0] == "sign-in-help"
    assert fresh.data["focus"]["country"] == "Canada"  # slots stay in focus for later turns


async def test_a_vague_message_gets_topics_and_a_picked_topic_is_acted_on(router) -> None:
    vague = await router.route("I have a question about something", CTX)
    assert (vague.reason, vague.data["clarify"], vague.escalate) == ("clarify", "vague", False)
    index = vague.pending["intents"].index("track_order") if "track_order" in vague.pending["intents"] else None
    assert index is not None, vague.pending
    picked = await router.route(str(index + 1), _after(vague))
    assert (picked.intent, picked.reason, picked.data["choice"]) == ("track_order", "asked_slot", "track_order")
    by_label = await router.route("track my order", _after(vague))
    assert by_label.intent == "track_order" and by_label.data["choice"] == "track_order"


@pytest.mark.parametrize("text", ["?", "🙂🙂", "...", "asdfgh jkl", "I have a question about something"])
async def test_messages_with_nothing_to_act_on_get_a_clarifying_question(router, text: str) -> None:
    decision = await router.route(text, CTX)
    assert (decision.tier, decision.reason, decision.escalate) == ("deterministic", "clarify", False), decision
    assert 2 <= len(decision.quick_replies) <= 3


@pytest.mark.parametrize("text", ["what's the weather like today?", "who won the football last night?"])
async def test_off_topic_questions_get_a_polite_scope_reply(router, text: str) -> None:
    decision = await router.route(text, CTX)
    assert (decision.tier, decision.reason, decision.escalate) == ("deterministic", "off_topic", False)
    assert "Northwind Goods" in decision.reply and "shipping" in decision.reply


async def test_an_angry_customer_hears_an_apology_that_fits_the_topic(router) -> None:
    decision = await router.route("I'm furious, my refund never arrived, this is the worst service ever!!", CTX)
    assert decision.escalate and decision.reason in ("negative_sentiment", "conversation_sentiment")
    assert decision.reply.startswith(router.replies.apology("refund"))
    assert router.replies.apology("refund") != router.replies.apology(None)


async def test_an_article_added_to_the_knowledge_base_answers_at_once_without_an_intent(router) -> None:
    from bot.knowledge import Document

    knowledge = router.knowledge
    markdown = (
        "# Gift wrapping\n\n## Can I get my order gift wrapped?\n"
        "Yes, we gift wrap any order for $4.95: choose Gift wrap at checkout and add a message for "
        "the card. Gift-wrapped orders ship without a price on the packing slip.\n"
    )
    before = await router.route("can you gift wrap my order?", CTX)
    assert before.data.get("answered_by") != "article" or "gift-wrapping" not in before.citations
    await knowledge.add_documents([Document("gift-wrapping", "Gift wrapping", markdown, "test")])
    try:
        after = await router.route("can you gift wrap my order?", CTX)
        assert after.tier == "retrieval" and after.citations[0] == "gift-wrapping", after
        assert "$4.95" in after.reply
        assert after.confidence >= router.settings.confidence_threshold
    finally:
        await knowledge.remove_documents(["gift-wrapping"])


async def test_a_vague_message_after_an_answer_gets_a_question_not_the_answer_again(router) -> None:
    """Trial finding: "I have a question" after a refund answer repeated the refund answer."""
    first = await router.route("how long does a refund take?", CTX)
    for text in ("I have a question", "help please", "?"):
        again = await router.route(text, _after(first))
        assert again.reason == "clarify" and "context" not in again.data, (text, again)
        assert again.reply != first.reply


async def test_a_topic_picked_by_number_is_the_request_in_focus(router) -> None:
    """Trial finding: after picking "2", the focus request was "2", so "how long does that take?"
    was read as "2. how long does that take?" and answered about delivery."""
    vague = await router.route("I have a question about something", CTX)
    index = vague.pending["intents"].index("check_refund_policy") if "check_refund_policy" in vague.pending["intents"] else None
    if index is None:  # the model's alternatives decide the offered topics; the default set has it
        vague.pending["intents"][0], vague.pending["options"][0] = "check_refund_policy", "Returns and refunds"
        index = 0
    picked = await router.route(str(index + 1), _after(vague))
    assert picked.data["focus"]["request"] == "Returns and refunds"
    follow = await router.route("how long does that take?", _after(picked))
    assert follow.citations and follow.citations[0] in ("refunds", "returns"), follow


async def test_a_shipped_order_gets_no_cancelling_steps(router, demo_order) -> None:
    """Trial finding: "has already shipped, so it can no longer be cancelled; ... You can cancel
    the whole order or only some items." The answer must not contradict its own lead."""
    from bot.context import Focus

    shipped = next(o for o in router.orders._orders.values() if o.status == "processed")
    ctx = TurnContext(ticket_id=1, ticket_state="bot", verified_owner=shipped.user_id,
                      focus=Focus(order_id=shipped.order_id, intent="track_order", request="where is my order"))
    decision = await router.route("can I cancel it?", ctx)
    assert decision.reply.startswith(f"Order {shipped.order_id} has already shipped")
    assert "You can cancel" not in decision.reply and "choose Cancel order" not in decision.reply


async def test_a_number_that_is_no_option_gets_the_options_again(router) -> None:
    """Break-test finding: "99" to a three-option question got the off-topic reply and lost the
    options, so the next pick counted as a third unhelped turn and went to a person."""
    vague = await router.route("?", CTX)
    again = await router.route("99", _after(vague))
    assert (again.reason, again.data["clarify"]) == ("clarify", "no_such_option")
    assert again.quick_replies == vague.quick_replies and again.pending == vague.pending
