"""Clarifying questions (bot.clarify): what has nothing to act on, topics offered, options picked."""

from __future__ import annotations

import pytest

from bot.clarify import PERSON, chosen_option, suggestions, vagueness


@pytest.mark.parametrize(
    "text,kind",
    [
        ("?", "empty"), ("🙂", "empty"), ("...!!", "empty"), ("👍👍👍", "empty"),
        ("asdfgh", "gibberish"), ("qwerty uiop", "gibberish"), ("jjjj kkkk", "gibberish"),
        ("I have a question about something", "vague"), ("help please", "vague"), ("hello? anyone?", "vague"),
        ("where is my order", None), ("can I return it?", None), ("what's the weather", None),
        ("#W5976205", None), ("and where is W2611340 now?", None), ("me@example.com", None),
        ("2", None),
    ],
)
def test_vagueness(text: str, kind: str | None) -> None:
    assert vagueness(text) == kind


LABELS = {"track_order": "Track my order", "get_refund": "Get a refund", "delivery_options": "Shipping options",
          "check_refund_policy": "Returns and refunds", PERSON: "Talk to a person", "greeting": "Say hi"}


def test_suggestions_follow_the_model_then_defaults_and_end_with_a_person() -> None:
    offered = suggestions([("get_refund", 0.4), ("greeting", 0.3), ("unknown", 0.2)], LABELS.get)
    assert offered == [("get_refund", "Get a refund"), ("track_order", "Track my order"), (PERSON, "Talk to a person")]


def test_suggestions_only_offer_configured_intents() -> None:
    offered = suggestions([("get_refund", 0.9)], LABELS.get, known={"delivery_options": 1, "track_order": 1})
    assert offered == [("track_order", "Track my order"), ("delivery_options", "Shipping options")]


@pytest.mark.parametrize(
    "text,index",
    [("1", 0), ("2.", 1), ("option 3", 2), (" 3) ", 2), ("4", None), ("0", None),
     ("track my order", 0), ("Track my order!", 0), ("track", None), ("", None)],
)
def test_chosen_option(text: str, index: int | None) -> None:
    assert chosen_option(text, ["Track my order", "Get a refund", "Talk to a person"]) == index


def test_only_short_answers_are_read_as_option_numbers() -> None:
    """Break-test finding: "1" + spaces + "x" made the option pattern backtrack (quadratic)."""
    from bot.clarify import option_number

    assert option_number("1" + " " * 4000 + "x") is None
    assert option_number("  option 2  ") == 2 and option_number("#3") == 3 and option_number("2!") == 2
    assert option_number("twelve") is None and option_number("123") is None
