"""Escalation triggers on ordinary questions (issue 12): what a person need not see stays with the bot,
and what a person must see still escalates. The three cases the issue names, the support-domain
sentiment lexicon, anger aimed at us, and the whole bench sets (``bench/escalation_bench.py``): ordinary
chat messages and Bitext's ordinary intents fire nothing, angry and sensitive messages all fire."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from shared_data import shared_data_dir

from bot.entities import extract_entities
from bot.escalation import AIMED_ANGER_THRESHOLD, Escalation, PriorTurn, aimed_at_us
from bot.language import LanguageGate, is_english_word
from bot.sentiment import Sentiment
from bot.understanding import Understanding
from config.settings import Settings
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

SETTINGS = Settings()
DATA = Path(__file__).resolve().parents[1] / "bench" / "data"


@pytest.fixture(scope="module")
def sentiment() -> Sentiment:
    return Sentiment()


@pytest.fixture(scope="module")
def escalation(sentiment: Sentiment) -> Escalation:
    """The policy as the router builds it from the default settings (no embeddings needed here)."""
    return Escalation.from_settings(SETTINGS, lambda texts: np.zeros((len(texts), 384), np.float32),
                                    sentiment.compound)


def understood(text: str, sentiment: Sentiment) -> Understanding:
    # An unsure, unknown intent: only the words and the sentiment can fire a trigger.
    return Understanding(intent="unknown", confidence=0.0, alternatives=(), entities=extract_entities(text),
                         sentiment=sentiment.compound(text), embedding=np.zeros(384, np.float32))


def check(escalation: Escalation, sentiment: Sentiment, text: str, prior: tuple[PriorTurn, ...] = ()):
    return escalation.check(text, understood(text, sentiment), prior, reasoning_available=False)


def _jsonl(name: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / name).read_text(encoding="utf-8").splitlines() if line.strip()]


# --- the three cases of the issue ------------------------------------------------------------------


def test_the_exchange_rate_looks_wrong_is_not_anger(escalation: Escalation, sentiment: Sentiment) -> None:
    text = "the exchange rate looks wrong"
    assert SentimentIntensityAnalyzer().polarity_scores(text)["compound"] == -0.4767  # VADER's own reading
    assert sentiment.compound(text) == 0.0
    assert check(escalation, sentiment, text) is None
    # Twice in a row, still a question about a rate (the conversation rule used to add them up).
    earlier = PriorTurn("the total looks wrong too, there is a problem with the price", tier="retrieval",
                        reason="answered")
    assert check(escalation, sentiment, text, (earlier, earlier)) is None


def test_a_stolen_card_question_is_not_a_sensitive_topic(escalation: Escalation, sentiment: Sentiment) -> None:
    for text in ("my card was stolen, can I still pay?", "I think my card has been stolen, how do I remove it?"):
        assert escalation.topics.find(escalation.speller.tokens(text)) is None, text
        assert check(escalation, sentiment, text) is None, text
    # Someone using the stolen card is fraud, and goes to a person.
    trigger = check(escalation, sentiment, "someone used my stolen card to order from you")
    assert trigger is not None and trigger.reason == "sensitive_topic"
    assert trigger.data == {"topic": "fraud", "matched": "used my stolen card"}


def test_can_i_resent_my_passcode_is_english(escalation: Escalation) -> None:
    gate = escalation.language
    assert gate is not None
    guess = gate.guess("Can I resent my passcode?")
    assert guess is not None and guess.code == "de" and guess.confidence < gate.short_min_confidence
    assert gate.unsupported("Can I resent my passcode?") is None
    assert escalation.unsupported_language("Can I resent my passcode?", reasoning_available=False) is None


# --- sentiment ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [
    "I need to see the goddamn early exit penalty", "there is a problem with my payment",
    "my payment failed and the order is missing", "no problem, I can wait", "worst case I'll just return it",
])
def test_problem_words_and_swearing_for_emphasis_carry_no_anger(sentiment: Sentiment, text: str) -> None:
    assert sentiment.compound(text) >= 0.0, text
    assert SentimentIntensityAnalyzer().polarity_scores(text)["compound"] != sentiment.compound(text)


def test_the_support_lexicon_can_be_switched_off() -> None:
    text = "the exchange rate looks wrong"
    assert Sentiment(support_lexicon=False).compound(text) == -0.4767
    # Words of anger keep VADER's values; words VADER lacks get one.
    assert Sentiment().compound("this is a nightmare") < Sentiment(support_lexicon=False).compound("this is a nightmare")


def test_anger_aimed_at_us_escalates_below_the_lower_bar(escalation: Escalation, sentiment: Sentiment) -> None:
    text = "your service is shit"
    assert SETTINGS.anger_threshold < sentiment.compound(text) <= AIMED_ANGER_THRESHOLD
    trigger = check(escalation, sentiment, text)
    assert trigger is not None and trigger.reason == "negative_sentiment"
    assert trigger.data["aimed"] == "your service"
    # As negative, but aimed at a colour or at waiting: answered.
    for calm in ("I hate the colour, can I swap it for the blue one?", "I'm sick of waiting, any update?"):
        assert SETTINGS.anger_threshold < sentiment.compound(calm) <= AIMED_ANGER_THRESHOLD, calm
        assert aimed_at_us(escalation.speller.tokens(calm)) is None
        assert check(escalation, sentiment, calm) is None, calm


# --- language ----------------------------------------------------------------------------------------


def test_compounds_of_english_words_are_english() -> None:
    assert is_english_word("passcode") and is_english_word("Giftwrap")
    assert not is_english_word("bestellung") and not is_english_word("wachtwoord")


def test_names_and_addresses_are_not_a_foreign_language(escalation: Escalation) -> None:
    gate: LanguageGate = escalation.language  # type: ignore[assignment]
    text = "Tomomi Nishiyama lives at 86036 Rua do Arenque 1634, Goiânia"
    guess = gate.guess(text)
    assert guess is not None and guess.code not in gate.supported and guess.english_share >= 0.6
    assert gate.unsupported(text) is None
    # German nouns are capitalised too; German sentences are still German.
    assert gate.unsupported("Kann ich mit Kreditkarte bezahlen?").code == "de"
    assert gate.unsupported("Mein Paket ist beschädigt angekommen.").code == "de"


# --- the bench sets ------------------------------------------------------------------------------------


def test_ordinary_chat_messages_fire_no_trigger(escalation: Escalation, sentiment: Sentiment) -> None:
    rows = [r["text"] for r in _jsonl("escalation_ordinary.jsonl")]
    assert len(rows) == 172
    fired = {t: check(escalation, sentiment, t) for t in rows}
    assert {t: f.reason for t, f in fired.items() if f} == {}


def test_messages_that_need_a_person_still_escalate(escalation: Escalation, sentiment: Sentiment) -> None:
    rows = _jsonl("escalation_should.jsonl")
    assert len(rows) == 52
    missed = {}
    for row in rows:
        trigger = check(escalation, sentiment, row["text"])
        if trigger is None or trigger.reason != row["trigger"]:
            missed[row["text"]] = trigger and trigger.reason
    assert missed == {}


def test_ordinary_bitext_messages_fire_no_trigger(escalation: Escalation, sentiment: Sentiment) -> None:
    """Bitext's 27k test file without complaint and contact_human_agent: 4,930 messages nobody here wrote."""
    path = shared_data_dir() / "bitext" / "llm_27k_instructions_test.csv"
    with open(path, newline="", encoding="utf-8") as fh:
        rows = [r["instruction"] for r in csv.DictReader(fh) if r["intent"] not in ("complaint", "contact_human_agent")]
    assert len(rows) == 4930
    fired = {t: check(escalation, sentiment, t) for t in rows}
    assert {t: f.reason for t, f in fired.items() if f} == {}
