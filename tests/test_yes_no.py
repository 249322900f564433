"""Reading answer sentences without a model: stems, polarity of the asked thing, yes/no questions."""

from __future__ import annotations

import pytest

from bot.order_policy import default_policy
from bot.yes_no import asked_part, is_yes_no_question, overlap, polarity, read_sentence, stem, yes_no_answer

VOCAB = default_policy().answers


@pytest.mark.parametrize(
    ("word", "key"),
    [("cancelled", "cancel"), ("cancelling", "cancel"), ("cancellation", "cancel"), ("cancel", "cancel"),
     ("shipping", "ship"), ("shipped", "ship"), ("ship", "ship"), ("returns", "return"), ("fees", "fee"),
     ("address", "addres"), ("addresses", "addres"), ("delivers", "delive"), ("delivery", "delive"),
     ("countries", "countr"), ("canada", "canada")],
)
def test_stem(word: str, key: str) -> None:
    assert stem(word) == key


@pytest.mark.parametrize(
    ("sentence", "answer"),
    [
        ("Northwind Goods delivers to the United States, Canada and the United Kingdom.", "yes"),
        ("We do not yet ship outside the United States, Canada and the European Union.", "yes"),  # flipped
        ("Orders to the United States and Canada never carry extra customs charges.", "no"),
        ("We ship everywhere except Canada.", "no"),
        ("Canada is not excluded from anything, and we never refuse it.", "yes"),  # two negations cancel
        ("Returns from Canada are sent at your own cost, unless the item is faulty.", None),  # conditional
        ("Delivery to Mexico takes 5 days.", None),  # does not name it
        ("Express Shipping is not for the US; Canada gets International Tracked.", "yes"),  # its clause counts
    ],
)
def test_polarity_of_the_asked_thing(sentence: str, answer: str | None) -> None:
    asked = frozenset({"canada"})
    assert polarity(sentence, asked, asked, VOCAB) == answer


@pytest.mark.parametrize(
    ("question", "expected"),
    [
        ("do you ship to Canada?", True),
        ("ok so can I pay with PayPal", True),
        ("Is there a fee?", True),
        ("how much does shipping cost?", False),
        ("can't I return it?", False),  # a negation makes a bare yes/no ambiguous
        ("can I return it if I opened it?", False),  # a condition
        ("can I return it after 45 days?", False),  # a number
        ("do you ship to Canada? how much is it", False),  # the last sentence is what is asked now
        ("", False),
    ],
)
def test_yes_no_questions(question: str, expected: bool) -> None:
    assert is_yes_no_question(question, VOCAB) is expected


def test_asked_part_is_the_last_sentence() -> None:
    assert asked_part("do you ship to Canada? and how much is it") == "and how much is it"
    assert asked_part("  ") == ""


def test_overlap_weighs_rare_words_more() -> None:
    sentences = ["We ship to Canada.", "We ship to every address.", "Shipping is fast."]
    readings = [read_sentence(s, VOCAB) for s in sentences]
    scores = overlap(read_sentence("do you ship to Canada?", VOCAB).stems, readings)
    assert scores[0] == pytest.approx(1.0)
    assert scores[1] == scores[2] < 0.5  # "ship" alone: the common word weighs less than "canada"
    assert overlap(frozenset({"mexico"}), readings) == [0.0, 0.0, 0.0]


def test_the_voters_decide_and_the_direct_sentence_leads() -> None:
    sentences = [
        "Northwind Goods delivers to the United States, Canada and the United Kingdom.",
        "We do not yet ship outside the United States, Canada and the United Kingdom.",
        "In the United States we ship to every address.",
        "Shipping is free on orders of $50.",
    ]
    readings = [read_sentence(s, VOCAB) for s in sentences]
    preference = [(0.0, 0.4), (0.0, 0.6), (0.0, 0.5), (0.0, 0.3)]
    # Sentence 1 names "ship" and "canada" (the rarer word) and affirms Canada (flipped); sentence 0
    # says it directly, so it leads.
    assert yes_no_answer("do you ship to Canada?", sentences, readings, preference, VOCAB) == ("yes", 0)
    # Nothing names Mexico: no verdict.
    assert yes_no_answer("do you ship to Mexico?", sentences, readings, preference, VOCAB) is None
    # Voters that disagree: no verdict.
    clash = [*sentences, "We do not ship to Canada."]
    clash_readings = [read_sentence(s, VOCAB) for s in clash]
    assert yes_no_answer("do you ship to Canada?", clash, clash_readings, [*preference, (0.0, 0.1)], VOCAB) is None
    # Equally rare words: the lead must name both, and only the flipped sentence does.
    assert yes_no_answer("do you ship to Canada?", sentences[:3], readings[:3], preference[:3], VOCAB) == ("yes", 1)


def test_an_unnamed_payment_method_and_opposite_words_are_not_a_yes() -> None:
    """"can I pay with bitcoin?" against the list of accepted methods, "are you open on Sundays?"
    against "we are closed on Sunday" and "is Plus free?" against "a paid membership that adds free
    shipping" all said "Yes"."""
    vocab = default_policy().answers
    sentences = ["Northwind Goods accepts Visa, Mastercard and PayPal.", "We are closed on Sunday.",
                 "Northwind Plus is a paid membership that adds free Express Shipping."]
    readings = [read_sentence(s, vocab) for s in sentences]
    preference = [(0.0,)] * 3

    def verdict(question: str) -> tuple[str, int] | None:
        return yes_no_answer(question, sentences, readings, preference, vocab)

    assert verdict("can I pay with bitcoin?") is None
    assert verdict("can I pay with paypal?") == ("yes", 0)
    assert verdict("are you open on sundays?") == ("no", 1)  # "closed" answers "open"
    assert verdict("is northwind plus free?") is None  # "paid" and "free" in one sentence
    assert verdict("can I add a phone case to my order?") is None  # "order by phone" is no answer
