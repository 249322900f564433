"""Context rules (bot.context): slots named, follow-up cues, a message read in context, focus carried."""

from __future__ import annotations

import pytest

from bot.context import MAX_REQUEST_CHARS, Focus, find_slots, follow_up_cue, in_context, next_focus


@pytest.mark.parametrize(
    "text,country,payment",
    [
        ("do you ship to Canada?", "Canada", None),
        ("and to the UK?", "United Kingdom", None),
        ("shipping to the US please", "United States", None),
        ("can you help us with this", None, None),  # "us" is a pronoun unless written "US"
        ("what about PayPal?", None, "PayPal"),
        ("can I pay with american express in germany", "Germany", "American Express"),
        ("check my order", None, None),  # "check" the verb is not the payment method
        ("pay by cheque from france", "France", "check"),
        ("I live in New Zealand", "New Zealand", None),
        ("ship to canada or the uk?", "United Kingdom", None),  # the last named wins
    ],
)
def test_slots_are_found_as_whole_words(text: str, country: str | None, payment: str | None) -> None:
    slots = find_slots(text)
    assert (slots.country, slots.payment) == (country, payment)


def test_a_country_inside_another_word_is_not_a_slot() -> None:
    assert find_slots("I need a peruser for my canadaexpress order").country is None


@pytest.mark.parametrize(
    "text,cue",
    [
        ("and to the UK?", "opener"),
        ("what about PayPal?", "opener"),
        ("how about express shipping", "opener"),
        ("and if I paid with PayPal?", "opener"),
        ("how much does that cost?", "anaphora"),
        ("can I return it?", "anaphora"),
        ("do those ship together", "anaphora"),
        ("I forgot my password", None),
        ("it says my card was declined when I tried to pay for the blue shoes twice today", None),  # long
    ],
)
def test_follow_up_cues(text: str, cue: str | None) -> None:
    assert follow_up_cue(text) == cue


def test_a_short_fragment_without_a_request_leans_on_the_last_turn() -> None:
    assert follow_up_cue("PayPal?", has_request_words=False) == "fragment"
    assert follow_up_cue("PayPal?", has_request_words=True) is None


def test_a_new_slot_value_replaces_the_old_one_in_the_carried_request() -> None:
    read = in_context("and to the UK?", Focus(request="do you ship to Canada?"), "opener")
    assert read is not None and (read.kind, read.text) == ("slot_replaced", "do you ship to United Kingdom?")
    paid = in_context("what about Klarna?", Focus(request="can I pay with PayPal?"), "opener")
    assert paid is not None and paid.text == "can I pay with Klarna?"


def test_an_anaphoric_message_is_combined_with_the_carried_request() -> None:
    read = in_context("how much does that cost?", Focus(request="do you ship to Canada?"), "anaphora")
    assert read is not None and (read.kind, read.text) == ("combined", "do you ship to Canada? how much does that cost?")
    record = read.record(Focus(request="do you ship to Canada?", country="Canada"))
    assert record == {"follow_up": "anaphora", "kind": "combined", "text": read.text,
                      "focus": {"request": "do you ship to Canada?", "country": "Canada"}}


def test_no_carried_request_means_no_context() -> None:
    assert in_context("how much is it?", Focus(country="Canada"), "anaphora") is None


def test_the_same_value_again_is_combined_not_replaced() -> None:
    read = in_context("and Canada?", Focus(request="do you ship to Canada?"), "opener")
    assert read is not None and read.kind == "combined"


def test_focus_after_an_answer_takes_the_request_intent_article_and_order() -> None:
    focus = next_focus(None, text="where is #W1 (zip 12345)", understood="where is #W1 (zip 12345)",
                       intent="track_order", doc_id=None, order_id="#W5976205", acted=True)
    assert focus == Focus(intent="track_order", order_id="#W5976205", request="where is #W1 (zip 12345)")
    later = next_focus(focus, text="do you ship to France?", understood="do you ship to France?",
                       intent="delivery_options", doc_id="shipping", order_id=None, acted=True)
    assert later.order_id == "#W5976205"  # the order stays in focus across other questions
    assert (later.intent, later.doc_id, later.country) == ("delivery_options", "shipping", "France")


def test_a_turn_the_bot_did_not_act_on_keeps_the_earlier_request() -> None:
    focus = Focus(intent="delivery_options", request="do you ship to Canada?")
    after = next_focus(focus, text="?", understood="?", intent="greeting", doc_id=None, order_id=None, acted=False)
    assert after.request == "do you ship to Canada?" and after.intent == "delivery_options"


def test_focus_round_trips_through_the_event_and_drops_what_it_does_not_know() -> None:
    focus = Focus(intent="x", country="Canada", request="r" * (MAX_REQUEST_CHARS + 50))
    stored = focus.to_json()
    assert Focus.from_json(stored) == Focus(intent="x", country="Canada", request="r" * MAX_REQUEST_CHARS)
    assert Focus.from_json({"order_id": 5, "bogus": "x"}) is None
    assert Focus.from_json("not a mapping") is None and Focus.from_json(None) is None


def test_it_is_the_order_in_focus() -> None:
    from bot.context import resolve_pronoun

    read = resolve_pronoun("can I return it?", Focus(order_id="#W5976205"))
    assert read is not None and (read.kind, read.text) == ("pronoun_resolved", "can I return my order?")
    assert resolve_pronoun("can I return it?", Focus(request="do you ship to Canada?")) is None
    assert resolve_pronoun("how do I reset my password", Focus(order_id="#W1")) is None


@pytest.mark.parametrize("text", ["how long do I have?", "how long is the wait usually?", "how much then?", "when?"])
def test_a_short_question_that_names_no_topic_is_about_the_one_in_focus(text: str) -> None:
    assert follow_up_cue(text) == "elliptical"


@pytest.mark.parametrize("text", ["how long does delivery take", "how do I reset my password"])
def test_a_question_that_names_its_topic_is_not_elliptical(text: str) -> None:
    assert follow_up_cue(text) is None


def test_many_slot_mentions_are_found_in_one_pass() -> None:
    """Break-test finding: overlapping matches were compared with every earlier one (quadratic on
    "eu eu eu ...")."""
    text = "eu " * 3000 + "and Canada"
    assert find_slots(text).country == "Canada"
    assert find_slots("UK " * 3000).country == "United Kingdom"
