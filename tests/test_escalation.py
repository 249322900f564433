"""Escalation triggers (bot/escalation.py, bot/language.py): each trigger on many phrasings, including
misspelt, angry and non-native ones, and on messages that must not fire; the language detector on real
sentences; then the conversation-level triggers end to end through the real application."""

from __future__ import annotations

import asyncio
import csv
import json
from pathlib import Path

import pytest
from pydantic import ValidationError
from shared_data import shared_data_dir
from sqlalchemy import select

from bot.embeddings import Embedder
from bot.entities import extract_entities
from bot.escalation import (
    ASKED_IF_BOT_REPLY,
    NOT_HELPED_REPLY,
    REASONS,
    REPLY_REASONS,
    Escalation,
    PriorTurn,
    TopicConfigError,
    Topics,
    asks_if_bot,
    conversation_sentiment,
    explicit_request,
    repeated_message,
    says_not_helped,
    since_last_handoff,
)
from bot.language import HANDOFF_NOTICES, LanguageGate
from bot.router import HANDOFF_REPLY, TurnContext
from bot.sentiment import Sentiment
from bot.understanding import Understanding
from config.settings import Settings
from helpline.conversation import Inbound
from helpline.server import RUNTIME
from state.models import Event, Message, Ticket
from state.tickets import TicketState, transition

SETTINGS = Settings()


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder.load()


@pytest.fixture(scope="module")
def sentiment() -> Sentiment:
    return Sentiment()


@pytest.fixture(scope="module")
def escalation(embedder: Embedder, sentiment: Sentiment) -> Escalation:
    """The policy exactly as the router builds it from the default settings."""
    return Escalation.from_settings(SETTINGS, embedder.embed, sentiment.compound)


def understood(text: str, embedder: Embedder, sentiment: Sentiment, intent: str = "track_order",
               confidence: float = 0.9) -> Understanding:
    """An :class:`Understanding` with the real embedding, entities and sentiment of ``text`` and a
    given intent (the intent model is tested elsewhere; these tests fix it to isolate each trigger)."""
    return Understanding(
        intent=intent, confidence=confidence, alternatives=((intent, confidence),),
        entities=extract_entities(text), sentiment=sentiment.compound(text),
        embedding=embedder.embed([text])[0],
    )


def request(escalation: Escalation, text: str) -> str | None:
    return explicit_request(escalation.speller.tokens(text))


# --- explicit request ------------------------------------------------------------------------------

ASKS_FOR_A_PERSON = [
    # plain
    "I want to talk to a real person", "can I speak to a human please", "let me speak to a human being",
    "connect me to a live agent", "put me through to an operator", "I want a supervisor",
    "is there a human I can talk to", "can someone call me back", "please escalate this",
    "transfer me", "I need a human to look at this", "I'd like to speak with your manager",
    # angry, shouting, elongated
    "REAL PERSON NOW", "HUMAN!!!!", "humaaaan please", "get me a human agent NOW",
    "I cannot speak to a goddamn live agent", "you aren't helpful at all, how could I contact someone?",
    "i dont want a bot, i want a human", "I want a human not a bot", "no more bots", "i demand a manager",
    # misspelt
    "get me a humen", "operater", "I want a representitive", "speek to an agent", "i need to speak to somone",
    "manger please", "supervisr now", "can i talk to a persn", "connect me to an agnet", "hooman",
    "I need help to chat with a live avent", "can i speak with a humanagent", "talk to a reprasentative",
    # chat spellings
    "can i talk 2 someone", "speak to ur manager", "i wanna talk to sum1", "plz let me talk to an actual human",
    "can u get me a live person", "lemme talk to a rep",
    # non-native
    "i want speak with human", "please give me human", "need talk to operator", "me want person",
    "pass me to a agent", "can I have a person", "i need human help", "human support pls",
    "let me contact with your staff", "is there a human?", "can ya direct to me an agent",
    "I don't want to chat with a bot, transfer to me someone", "a person please", "agent",
]

NOT_A_REQUEST = [
    "my human resources department ordered this", "the person who delivered it was rude",
    "I want the person who delivered it fired", "I need a person to sign for the delivery?",
    "are you a real person?", "am i talking to a real human?", "are you a bot?", "is this a real person or a bot",
    "I don't want to talk to a human, just tell me the status", "the agent I was speaking to was rude",
    "I spoke to a person yesterday", "I talked to an agent last week and they said it would ship",
    "how can I contact customer service", "what is your phone number", "I want to manage my subscription",
    "i want to use a password manager", "the delivery person left it outside", "can I pick it up in person",
    "how much per person", "my manager told me to order this", "is it humane?", "prison break dvd",
    "where is my order", "I want a refund now", "I need someone to explain the refund policy",
    "the manager approved the purchase", "we need 4 people to carry it", "human error on my part, sorry",
    "my order is for a person with allergies", "I'm a travel agent, do you offer group discounts?",
    "does a person need to be home for delivery", "the shipping agent lost it", "I want to change my order",
    "how do i reach your warehouse", "when will my order reach me", "Call me when it ships",
    "I need to contact my bank", "can you connect my account to paypal", "I can't make a transfer, help",
    "how do I transfer my subscription to another account", "thanks, you are a real help",
]


@pytest.mark.parametrize("text", ASKS_FOR_A_PERSON)
def test_an_explicit_request_for_a_person_is_recognised(escalation: Escalation, text: str) -> None:
    assert request(escalation, text), (text, escalation.speller.tokens(text))


@pytest.mark.parametrize("text", NOT_A_REQUEST)
def test_mentions_of_people_that_are_not_requests_do_not_fire(escalation: Escalation, text: str) -> None:
    assert request(escalation, text) is None, (text, escalation.speller.tokens(text))


def test_misspellings_are_corrected_only_when_not_english_words(escalation: Escalation) -> None:
    fix = escalation.speller.correct
    assert [fix(w) for w in ("humen", "operater", "representitive", "agnet", "sucide", "laywer")] == [
        "human", "operator", "representative", "agent", "suicide", "lawyer"
    ]
    # Real words stay as they are, however close to a trigger word.
    assert [fix(w) for w in ("manage", "prison", "humane", "agency", "poison", "person")] == [
        "manage", "prison", "humane", "agency", "poison", "person"
    ]
    # A typo of a common word is not pulled into a sensitive topic ("chceking" is checking).
    assert escalation.topics.find(escalation.speller.tokens("want help chceking invoice #85632")) is None
    assert escalation.speller.tokens("can i speak with a humanagent") == ["can", "i", "speak", "with", "a", "human", "agent"]


def _bitext_rows() -> list[dict[str, str]]:
    path = shared_data_dir() / "bitext" / "llm_27k_instructions_test.csv"
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_explicit_request_on_the_bitext_test_set(escalation: Escalation) -> None:
    """Measured on text nobody here wrote: Bitext's 202 contact_human_agent test messages (many with
    typos) and its 5,130 messages of the 26 other intents, including contact_customer_service."""
    rows = _bitext_rows()
    human = [r["instruction"] for r in rows if r["intent"] == "contact_human_agent"]
    other = [r["instruction"] for r in rows if r["intent"] != "contact_human_agent"]
    recall = sum(bool(request(escalation, t)) for t in human) / len(human)
    fired = [t for t in other if request(escalation, t)]
    assert len(human) == 202 and recall >= 0.98, recall
    assert fired == []


def test_the_intent_model_backs_up_the_rules(escalation: Escalation, embedder, sentiment) -> None:
    u = understood("blah blah", embedder, sentiment, intent="contact_human_agent", confidence=0.95)
    trigger = escalation.check("blah blah", u, (), reasoning_available=False)
    assert trigger is not None and trigger.reason == "explicit_request"
    assert trigger.data == {"matched": None, "intent_confidence": 0.95}
    unsure = understood("blah blah", embedder, sentiment, intent="contact_human_agent", confidence=0.4)
    assert escalation.check("blah blah", unsure, (), reasoning_available=False) is None


# --- sensitive topics ------------------------------------------------------------------------------

TOPIC_CASES = [
    ("I want to kill myself", "self_harm"), ("honestly thinking about sucide", "self_harm"),
    ("i dont want to live anymore", "self_harm"), ("I'll be better off dead", "self_harm"),
    ("my laywer will be in touch", "legal"), ("I will sue u", "legal"), ("see you in court", "legal"),
    ("I'm reporting you to the Better Business Bureau", "legal"), ("this is a GDPR request", "privacy"),
    ("Please delete all my data", "privacy"), ("was there a data breach?", "privacy"),
    ("I want to exercise my right to be forgotten", "privacy"), ("someone used my stollen card", "fraud"),
    ("there's an unauthorized charge on my statement", "fraud"), ("I didn't authorise this payment", "fraud"),
    ("someone hacked my acount", "fraud"), ("this is FRAUD", "fraud"), ("i was harrassed by the driver", "harassment"),
    ("your courier made racist comments", "harassment"), ("I had an alergic reaction to the cream", "medical"),
    ("my son is in the hospital after eating it", "medical"), ("I can't breathe properly since using it", "medical"),
    ("the charger exploded", "product_safety"), ("the heater caught fire last night", "product_safety"),
]

NOT_A_TOPIC = [
    "where is my order #W2611340?", "I want to delete my account", "can I pay with a credit card",
    "this delivery is killing me lol", "I want to cancel my subscription", "my data plan is fine",
    "do you ship to hospitals?", "the courier was late", "I'd like to change my email address",
    "want help chceking invoice #85632", "what is your privacy policy", "the lawn mower works fine",
    # ordinary questions that share a word with a topic (issue 12): phrases, not single words
    "my card was stolen, can I still pay?", "my card was stollen, how do I change it?",
    "do you have fraud protection on card payments?", "are you GDPR compliant?",
    "what is your data protection policy?", "is there a choking hazard for small children?",
    "my mum is in hospital, can I change the delivery address?", "do you sell ambulance toys?",
    "my lawyer's office ordered this, can I get an invoice in their name?",
]


@pytest.mark.parametrize("text,topic", TOPIC_CASES)
def test_sensitive_topics_are_named(escalation: Escalation, embedder, sentiment, text: str, topic: str) -> None:
    u = understood(text, embedder, sentiment, intent="complaint", confidence=0.2)
    u = Understanding(u.intent, u.confidence, u.alternatives, u.entities, 0.0, u.embedding)  # isolate from anger
    trigger = escalation.check(text, u, (), reasoning_available=False)
    assert trigger is not None and trigger.reason == "sensitive_topic", (text, trigger)
    assert trigger.data["topic"] == topic


@pytest.mark.parametrize("text", NOT_A_TOPIC)
def test_ordinary_messages_are_not_sensitive_topics(escalation: Escalation, text: str) -> None:
    assert escalation.topics.find(escalation.speller.tokens(text)) is None


def test_no_bitext_message_hits_a_sensitive_topic(escalation: Escalation) -> None:
    hits = [r["instruction"] for r in _bitext_rows() if escalation.topics.find(escalation.speller.tokens(r["instruction"]))]
    assert hits == []


def test_topic_file_errors_name_the_line_and_topic(tmp_path: Path) -> None:
    cases = {
        "Self Harm:\n  - kill myself\n": ":1: topic name 'Self Harm'",
        "legal:\n  - lawyer\nfraud: stolen card\n": ":3: topic 'fraud' must be a non-empty list",
        "legal:\n  - lawyer\n  - ''\n": ":3: topic 'legal': a phrase must be non-empty text",
        "legal:\n  - lawyer\n  - '*sue'\n": ":3: topic 'legal': phrase '*sue': '*' may only end a word",
        "legal:\n  - lawyer\nlegal:\n  - sue\n": ":3: topic 'legal' appears twice",
        "- lawyer\n": ":1: expected a mapping",
    }
    for i, (text, expected) in enumerate(cases.items()):
        path = tmp_path / f"topics-{i}.yaml"
        path.write_text(text)
        with pytest.raises(TopicConfigError) as info:
            Topics.load(path)
        assert str(info.value).startswith(str(path)) and expected in str(info.value), str(info.value)


def test_a_topic_file_of_your_own(tmp_path: Path, embedder, sentiment) -> None:
    path = tmp_path / "topics.yaml"
    path.write_text("recall:\n  - product recall\n  - recalled\nwarranty_claim:\n  - warranty claim*\n")
    settings = SETTINGS.model_copy(update={"sensitive_topics_file": path})
    esc = Escalation.from_settings(settings, embedder.embed, sentiment.compound)
    assert esc.topics.find(esc.speller.tokens("Was this kettle recalled?")) == ("recall", "recalled")
    assert esc.topics.find(esc.speller.tokens("how do I file a warranty claims form")) == (
        "warranty_claim", "warranty claim*"
    )
    assert esc.topics.find(esc.speller.tokens("I want to kill myself")) is None  # only this file's topics


# --- sentiment over the conversation ---------------------------------------------------------------


def test_conversation_sentiment_rule_values() -> None:
    rule = {"threshold": -0.35, "alpha": 0.5, "negative_turns": 3, "negative_turn_threshold": -0.25}
    # One message alone never fires (the single-message anger threshold covers it).
    assert conversation_sentiment([-0.9], **rule) is None
    # m = 0.5 * -0.4 + 0.5 * -0.31 = -0.355 <= -0.35
    assert conversation_sentiment([-0.31, -0.4], **rule) == {"rule": "ewma", "ewma": -0.355, "turns": 2}
    # A neutral opening pulls the mean up: m = 0.5 * -0.45 + 0.5 * 0 = -0.225.
    assert conversation_sentiment([0.0, -0.45], **rule) is None
    # Three mildly negative turns in a row: m = 0.5 * -0.25 + 0.5 * -0.3 = -0.275 (above -0.35), but
    # each turn is <= -0.25.
    assert conversation_sentiment([-0.3, -0.3, -0.25], **rule) == {"rule": "consecutive", "ewma": -0.275, "turns": 3}
    # Recovery: the latest turn is positive.
    assert conversation_sentiment([-0.5, -0.5, 0.6], **rule) is None
    assert conversation_sentiment([-0.3, -0.3, -0.25], **{**rule, "negative_turns": 0}) is None


def test_upset_over_several_messages_escalates(escalation: Escalation, embedder, sentiment) -> None:
    neutral = PriorTurn("where is my package", 0.0, "deterministic", "asked_slot")
    annoyed = PriorTurn("this is ridiculous", None, "retrieval", "answered")  # sentiment recomputed: -0.36
    text = "I'm not happy with this at all"
    u = understood(text, embedder, sentiment, intent="complaint", confidence=0.3)
    assert SETTINGS.anger_threshold < u.sentiment < 0  # not angry enough alone
    trigger = escalation.check(text, u, (annoyed,), reasoning_available=False)
    assert trigger is not None and trigger.reason == "conversation_sentiment"
    assert trigger.data["rule"] == "ewma" and trigger.data["turns"] == 2
    # The same two messages after a neutral opening: the mean is only half as negative.
    assert escalation.check(text, u, (neutral, annoyed), reasoning_available=False) is None
    assert trigger.data["ewma"] <= SETTINGS.conversation_sentiment_threshold


def test_one_strongly_negative_message_still_escalates(escalation: Escalation, embedder, sentiment) -> None:
    text = "This is absolutely terrible, worst disgusting useless service, I hate you"
    trigger = escalation.check(text, understood(text, embedder, sentiment), (), reasoning_available=False)
    assert trigger is not None and trigger.reason == "negative_sentiment" and trigger.data["sentiment"] <= -0.6


def test_earlier_anger_does_not_count_after_a_handoff(escalation: Escalation, embedder, sentiment) -> None:
    angry = PriorTurn("this is useless", -0.42, "retrieval", "answered")
    handed_back = PriorTurn("I want a person", -0.1, "human", "explicit_request", escalated=True)
    text = "still not happy, where is my order"
    u = understood(text, embedder, sentiment)
    assert escalation.check(text, u, (angry, angry), reasoning_available=False) is not None
    assert escalation.check(text, u, (angry, angry, handed_back), reasoning_available=False) is None
    assert since_last_handoff((angry, handed_back, angry)) == [angry]
    human_owned = PriorTurn("hello?", None, None, "human_owns_ticket")
    assert since_last_handoff((angry, human_owned)) == []


# --- repeated failure and repeated messages --------------------------------------------------------

NOT_HELPED_PHRASES = ["that didn't help", "you're not understanding", "That is not what I asked!!",
                      "this doesnt answer my question", "I already told you", "you dont understand me",
                      "still not working", "ur not helping"]


@pytest.mark.parametrize("text", NOT_HELPED_PHRASES)
def test_customers_saying_the_bot_did_not_help(escalation: Escalation, text: str) -> None:
    assert says_not_helped(escalation.speller.tokens(text)), text


@pytest.mark.parametrize("text", ["that helped, thanks", "this is helpful", "I understand now", "not yet"])
def test_satisfied_customers_are_not_failures(escalation: Escalation, text: str) -> None:
    assert says_not_helped(escalation.speller.tokens(text)) is None


def test_two_failures_escalate(escalation: Escalation, embedder, sentiment) -> None:
    not_found = PriorTurn("where is order #W1234567", 0.0, "deterministic", "answered", not_found=("#W1234567",))
    answered = PriorTurn("what is your refund policy", 0.0, "retrieval", "answered")
    # Before the tiers: the customer says the last answer did not help, after one failure.
    text = "that didn't help, my order still hasn't come"
    u = understood(text, embedder, sentiment)
    u = Understanding(u.intent, u.confidence, u.alternatives, u.entities, 0.0, u.embedding)
    trigger = escalation.check(text, u, (not_found, answered), reasoning_available=False)
    assert trigger is not None and trigger.reason == "repeated_failure"
    assert trigger.data == {"failures": 2, "why": ["order_not_found", "customer_said_not_helped"]}
    # One failure is not enough.
    assert escalation.check(text, u, (answered,), reasoning_available=False) is None
    # After the tiers: a second order that is not found.
    outcome = PriorTurn("and #W7654321?", 0.0, "deterministic", "answered", not_found=("#W7654321",))
    after = escalation.after_tiers("and #W7654321?", outcome, (not_found,))
    assert after is not None and after.data == {"failures": 2, "why": ["order_not_found", "order_not_found"]}
    assert escalation.after_tiers("and #W7654321?", outcome, ()) is None
    # The bot asking for the same slot twice is a failure too; asking once is not.
    ask = PriorTurn("where is my package", 0.0, "deterministic", "asked_slot")
    again = PriorTurn("i dont know it", 0.0, "deterministic", "asked_slot")
    assert escalation.after_tiers("i dont know it", again, (ask,)) is None
    assert escalation.after_tiers("no idea", again, (not_found, ask)).data["why"] == ["order_not_found", "asked_slot_again"]
    # A failure reason (when a reasoning tier answers instead of escalating) counts.
    unsure = PriorTurn("blorp", 0.0, "reasoning", "low_confidence")
    assert escalation.after_tiers("blorp again", unsure, (unsure,)).data["why"] == ["low_confidence", "low_confidence"]
    # Switched off, or this kind of failure not listed.
    off = Escalation.from_settings(SETTINGS.model_copy(update={"repeated_failure_limit": 0}), embedder.embed, sentiment.compound)
    assert off.after_tiers("and #W7654321?", outcome, (not_found,)) is None
    unlisted = SETTINGS.model_copy(update={"failure_reasons": ["customer_said_not_helped", "low_confidence"]})
    esc = Escalation.from_settings(unlisted, embedder.embed, sentiment.compound)
    assert esc.after_tiers("and #W7654321?", outcome, (not_found,)) is None
    assert esc.after_tiers("that didn't help", outcome, (unsure,)).data["why"] == ["low_confidence", "customer_said_not_helped"]


# --- replies instead of the tiers: "that didn't help", "are you a bot?" ---------------------------

ANSWERED = PriorTurn("how long does a refund take?", 0.0, "retrieval", "answered")


@pytest.fixture
async def router(helpline_client):
    """The real application's router (real intent model, knowledge base and demo order store)."""
    return helpline_client.server.app[RUNTIME].router


def after(*prior: PriorTurn) -> TurnContext:
    return TurnContext(ticket_id=1, ticket_state="bot", prior=prior)


@pytest.mark.parametrize("text,intent,confidence,replied", [
    ("that didn't help", "thanks", 0.81, True),  # small talk: "You're welcome!" would be wrong
    ("that's not it", "goodbye", 0.9, True),  # a goodbye would resolve the ticket
    ("I already told you", "out_of_scope", 0.68, True),
    ("still not working", "registration_problems", 0.4, True),  # unsure: ask, do not guess
    ("that didn't help, where is my order", "track_order", 0.95, False),  # a new request: the tiers
    ("that didn't help, my email is ann@example.com", "thanks", 0.81, False),  # names an email
    ("thanks, that helped", "thanks", 0.99, False),  # not a complaint
])
def test_a_complaint_without_a_new_request_gets_an_apology(
    escalation: Escalation, embedder, sentiment, text: str, intent: str, confidence: float, replied: bool
) -> None:
    reply = escalation.reply_instead(text, understood(text, embedder, sentiment, intent, confidence))
    if replied:
        assert reply is not None and reply.reason == "customer_said_not_helped" and reply.text == NOT_HELPED_REPLY
        assert reply.data["matched"]
    else:
        assert reply is None


@pytest.mark.parametrize("text", ["that didn't help", "I already told you", "you're not understanding",
                                  "no help at all", "ur not helping", "wrong answer"])
async def test_after_an_answer_a_complaint_gets_an_apology_not_small_talk(router, text: str) -> None:
    decision = await router.route(text, after(ANSWERED))
    assert (decision.tier, decision.reason, decision.reply) == ("deterministic", "customer_said_not_helped", NOT_HELPED_REPLY), decision
    assert decision.escalate is False and decision.resolve is False
    # The second failure goes to a person, as before.
    apologised = PriorTurn.from_event(text, decision.event_payload())
    second = await router.route("still not working", after(ANSWERED, apologised))
    assert (second.tier, second.reason, second.escalate) == ("human", "repeated_failure", True)
    assert second.data["why"] == ["customer_said_not_helped", "customer_said_not_helped"]


async def test_a_complaint_with_a_new_request_is_answered_by_the_tiers(router, helpline_client) -> None:
    orders = helpline_client.server.app[RUNTIME].orders
    order = next(o for o in orders._orders.values() if o.tracking_ids)
    decision = await router.route(
        f"that didn't help, where is my order {order.order_id}? my email is {order.email}", after(ANSWERED)
    )
    assert (decision.tier, decision.intent, decision.reason, decision.escalate) == (
        "deterministic", "track_order", "answered", False
    ), decision
    assert order.order_id in decision.reply
    thanks = await router.route("thanks, that helped", after(ANSWERED))
    assert (thanks.reason, thanks.intent, thanks.reply) == ("answered", "thanks", router.intents["thanks"].reply)


ASKS_IF_BOT = [
    "are you a real person?", "am I talking to a bot?", "is this a human?", "are you human", "r u a bot",
    "ARE YOU A BOT???", "are you a robot?", "is this an automated reply?", "am i chatting with a real human?",
    "are you real?", "is this a real person or a bot", "hi, are you a bot?", "am i speaking to a human",
    "are you an AI?", "are u a human being", "so am i talking to a real person or not", "is that a bot",
    "is this a real person I'm talking to?", "are you a bot? just curious", "am I talking to chatgpt?",
]
NOT_ASKING_IF_BOT = [
    "I want a real person", "is there a human?", "is this a human error?", "is this product made by a machine",
    "are you a bot? where is my order", "is it a human who packs the orders", "is this real?",
    "are you open on sunday", "is this the right email", "are you sure", "is this a real leather bag",
    "are you a bot? agent please", "are you a real person? let me talk to a human", "am i eligible for a refund",
]


@pytest.mark.parametrize("text", ASKS_IF_BOT)
def test_questions_whether_it_is_a_bot_are_recognised(escalation: Escalation, text: str) -> None:
    tokens = escalation.speller.tokens(text)
    assert asks_if_bot(tokens) and explicit_request(tokens) is None, (text, tokens)


@pytest.mark.parametrize("text", NOT_ASKING_IF_BOT)
def test_what_is_not_a_question_whether_it_is_a_bot(escalation: Escalation, text: str) -> None:
    assert asks_if_bot(escalation.speller.tokens(text)) is None, text


def test_the_intent_model_does_not_turn_a_question_about_the_bot_into_a_handoff(
    escalation: Escalation, embedder, sentiment
) -> None:
    u = understood("are you a real person?", embedder, sentiment, intent="contact_human_agent", confidence=0.99)
    assert escalation.check("are you a real person?", u, (), reasoning_available=False) is None
    reply = escalation.reply_instead("are you a real person?", u)
    assert (reply.reason, reply.text, dict(reply.data)) == ("asked_if_bot", ASKED_IF_BOT_REPLY, {"matched": "are you a real person"})
    # Next to a request the model still decides; a request the rules read always escalates.
    u = understood("are you a bot? agent please", embedder, sentiment, intent="contact_human_agent", confidence=0.99)
    assert escalation.check("are you a bot? agent please", u, (), reasoning_available=False).reason == "explicit_request"
    assert set(REPLY_REASONS).isdisjoint(REASONS)


@pytest.mark.parametrize("text", ASKS_IF_BOT)
async def test_asked_if_it_is_a_bot_it_says_so_and_does_not_escalate(router, text: str) -> None:
    decision = await router.route(text, after())
    assert (decision.tier, decision.reason, decision.reply, decision.escalate) == (
        "deterministic", "asked_if_bot", router.replies.fill(ASKED_IF_BOT_REPLY), False
    ), decision


@pytest.mark.parametrize("text", ["I want a real person", "are you a real person? let me talk to a human"])
async def test_asking_for_a_real_person_still_escalates(router, text: str) -> None:
    decision = await router.route(text, after())
    assert (decision.tier, decision.reason, decision.escalate) == ("human", "explicit_request", True), decision


def test_a_repeated_message_escalates(escalation: Escalation, embedder, sentiment) -> None:
    first = PriorTurn("how long does a refund take?", 0.0, "retrieval", "answered")
    for text in ("how long does a refund take", "HOW LONG DOES A REFUND TAKE??", "i said how long does a refund take"):
        u = understood(text, embedder, sentiment, intent="check_refund_policy")
        u = Understanding(u.intent, u.confidence, u.alternatives, u.entities, 0.0, u.embedding)
        trigger = escalation.check(text, u, (first,), reasoning_available=False)
        assert trigger is not None and trigger.reason in ("repeated_message", "repeated_failure"), text
    u = understood("how long does a refund take", embedder, sentiment, intent="check_refund_policy")
    trigger = escalation.check("how long does a refund take", u, (first,), reasoning_available=False)
    assert trigger.reason == "repeated_message" and trigger.data["similarity"] >= 0.95


def test_what_is_not_a_repeat(embedder) -> None:
    def rep(text: str, earlier: list[str]) -> dict | None:
        return repeated_message(embedder.embed([text])[0], text, earlier, embedder.embed,
                                similarity=SETTINGS.repeat_similarity, min_words=SETTINGS.repeat_min_words)

    assert rep("where is my order #W2611340?", ["where is my order #W2611340"])["similarity"] > 0.95
    # Same words, another order: a new question (cosine 0.9 without the entity check).
    assert rep("where is my order #W9999999?", ["where is my order #W2611340?"]) is None
    assert rep("I want to change my order", ["I want to cancel my order"]) is None
    assert rep("how do I change my email address", ["how do i reset my password"]) is None
    assert rep("ok thanks", ["ok thanks"]) is None  # too short to count
    assert rep("where is my order", []) is None


def test_repeat_similarity_above_1_switches_the_trigger_off(escalation: Escalation, embedder, sentiment) -> None:
    text = "how long does a refund take?"
    u = understood(text, embedder, sentiment, intent="check_refund_policy")
    assert escalation.repeated_message(text, u, (ANSWERED,)).data["similarity"] >= 0.99
    for off in (1.01, 1.5, 2.0):
        esc = Escalation.from_settings(SETTINGS.model_copy(update={"repeat_similarity": off}), embedder.embed, sentiment.compound)
        assert esc.repeated_message(text, u, (ANSWERED,)) is None, off
    assert Settings(repeat_similarity=1.5).repeat_similarity == 1.5
    with pytest.raises(ValidationError, match="repeat_similarity"):
        Settings(repeat_similarity=2.5)


def test_small_talk_may_repeat(escalation: Escalation, embedder, sentiment) -> None:
    first = PriorTurn("thank you so much", 0.6, "deterministic", "answered")
    u = understood("thank you so much", embedder, sentiment, intent="thanks")
    assert escalation.check("thank you so much", u, (first,), reasoning_available=False) is None


# --- unsupported language ---------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]
LANGUAGES_FILE = REPO / "bench" / "data" / "languages.jsonl"
"""Real support messages: 55 in 12 other languages (``language`` set) and 47 that must never count as
foreign (``language`` null: short greetings and thanks in any language, order ids, short English)."""


def _language_cases() -> list[tuple[str | None, str]]:
    with open(LANGUAGES_FILE, encoding="utf-8") as fh:
        return [(row["language"], row["text"]) for row in map(json.loads, fh)]


FOREIGN_CASES = [(code, text) for code, text in _language_cases() if code]
NEVER_FOREIGN = [text for code, text in _language_cases() if code is None]


@pytest.fixture(scope="module")
def gate() -> LanguageGate:
    return LanguageGate(
        SETTINGS.supported_languages, SETTINGS.language_candidates, low_accuracy=SETTINGS.language_low_accuracy,
        min_words=SETTINGS.language_min_words, max_supported_confidence=SETTINGS.language_max_supported_confidence,
        max_english_share=SETTINGS.language_max_english_share,
    )


def test_real_sentences_in_other_languages_are_detected(gate: LanguageGate) -> None:
    found = {text: gate.unsupported(text) for _, text in FOREIGN_CASES}
    right = [text for code, text in FOREIGN_CASES if found[text] is not None and found[text].code == code]
    wrong = [(text, found[text].code) for code, text in FOREIGN_CASES if found[text] and found[text].code != code]
    # Misses (a short French question that is mostly English-looking words, a 3-word Spanish one)
    # go down the English path, where the intent model is unsure and hands over anyway.
    assert len(FOREIGN_CASES) == 55 and len(right) >= 50, [t for _, t in FOREIGN_CASES if t not in right]
    assert wrong == []
    assert {code for code, text in FOREIGN_CASES if text in right} == {
        "de", "fr", "es", "it", "pt", "nl", "pl", "tr", "sv", "ru", "zh", "ja", "ar"
    }


@pytest.mark.parametrize("text", NEVER_FOREIGN)
def test_short_and_english_messages_are_never_foreign(gate: LanguageGate, text: str) -> None:
    assert gate.unsupported(text) is None, (text, gate.guess(text))


def test_no_bitext_english_message_is_judged_foreign(gate: LanguageGate) -> None:
    flagged = [r["instruction"] for r in _bitext_rows() if gate.unsupported(r["instruction"])]
    assert flagged == []


def test_a_supported_second_language_is_answered(embedder, sentiment) -> None:
    settings = SETTINGS.model_copy(update={"supported_languages": ["en", "de"]})
    esc = Escalation.from_settings(settings, embedder.embed, sentiment.compound)
    text = "Wo ist meine Bestellung? Ich warte schon seit zwei Wochen."
    u = understood(text, embedder, sentiment)
    u = Understanding(u.intent, u.confidence, u.alternatives, u.entities, 0.0, u.embedding)
    assert esc.unsupported_language(text, reasoning_available=False) is None
    french = "Je n'ai pas reçu mon colis depuis deux semaines"
    assert esc.unsupported_language(french, reasoning_available=False).data["language"] == "fr"


def test_the_handoff_reply_opens_in_the_customers_language(escalation: Escalation) -> None:
    trigger = escalation.unsupported_language("Ich möchte meine Bestellung stornieren, bitte helfen Sie mir.",
                                              reasoning_available=False)
    assert trigger is not None and trigger.reason == "unsupported_language"
    assert trigger.data["language"] == "de" and trigger.data["confidence"] > 0.5
    assert trigger.reply(HANDOFF_REPLY) == HANDOFF_NOTICES["de"] + "\n\n" + HANDOFF_REPLY
    # A language without a written notice gets the English reply alone.
    polish = escalation.unsupported_language("Gdzie jest moje zamówienie? Czekam już dwa tygodnie.",
                                             reasoning_available=False)
    assert polish.data["language"] == "pl" and polish.reply(HANDOFF_REPLY) == HANDOFF_REPLY
    # With a reasoning tier the LLM can answer in the customer's language: no handoff for language.
    assert escalation.unsupported_language("Ich möchte meine Bestellung stornieren, bitte helfen Sie mir.",
                                           reasoning_available=True) is None


def test_language_settings_errors_name_the_setting() -> None:
    with pytest.raises(ValueError, match="language_candidates: 'xx'"):
        LanguageGate(["en"], ["en", "xx"])
    with pytest.raises(ValueError, match="must include every supported language; missing: de"):
        LanguageGate(["en", "de"], ["en", "fr"])
    with pytest.raises(ValueError, match="supported_languages: 'english'"):
        LanguageGate(["english"], ["en", "fr"])


def test_list_settings_read_comma_separated_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HELPLINE_SUPPORTED_LANGUAGES", "en, de")
    monkeypatch.setenv("HELPLINE_FAILURE_REASONS", "low_confidence,no_kb_match")
    settings = Settings()
    assert settings.supported_languages == ["en", "de"]
    assert settings.failure_reasons == ["low_confidence", "no_kb_match"]


def test_every_reason_is_a_stable_name() -> None:
    assert REASONS == (
        "unsupported_language", "explicit_request", "sensitive_intent", "sensitive_topic",
        "negative_sentiment", "conversation_sentiment", "repeated_message", "repeated_failure",
    )


# --- end to end through the real application -----------------------------------------------------


async def _converse(rt, address: str, texts: list[str]) -> tuple[Ticket, list[dict]]:
    for text in texts:
        await rt.conversations.receive(Inbound("webchat", address, text))
        await asyncio.wait_for(rt.conversations.drain(60), 60)
        while rt.conversations._tasks:
            await asyncio.sleep(0.05)
    async with rt.db.sessions() as session:
        ticket = (await session.execute(select(Ticket).order_by(Ticket.id.desc()))).scalars().first()
        rows = await session.execute(
            select(Event).where(Event.ticket_id == ticket.id, Event.kind == "turn").order_by(Event.id)
        )
        return ticket, [e.payload for e in rows.scalars()]


async def test_two_orders_not_found_escalate_the_ticket(helpline_client) -> None:
    rt = helpline_client.server.app[RUNTIME]
    ticket, turns = await _converse(rt, "esc-e2e-failure", [
        "where is my order #W1234567? my email is ana@example.com",
        "sorry, I meant order #W7654321, where is it? ana@example.com",
    ])
    assert [t["reason"] for t in turns] == ["answered", "repeated_failure"], turns
    assert turns[0]["escalated"] is False and turns[0]["data"]["not_found"] == ["#W1234567"]
    assert turns[1]["escalated"] is True and turns[1]["tier"] == "human"
    assert turns[1]["data"]["why"] == ["order_not_found", "order_not_found"]
    assert turns[1]["data"]["not_found"] == ["#W7654321"]  # the lookup's facts stay on record
    assert ticket.state == "escalated" and ticket.escalation_reason == "repeated_failure"
    # The agent must not give a guesser what the bot refused.
    assert "Ownership NOT verified" in ticket.handoff_summary, ticket.handoff_summary
    assert "Verified owner" not in ticket.handoff_summary


async def test_the_handoff_summary_names_the_verified_owner(helpline_client) -> None:
    rt = helpline_client.server.app[RUNTIME]
    order = next(iter(rt.orders._orders.values()))
    ticket, turns = await _converse(rt, "esc-e2e-verified", [
        f"where is my order {order.order_id}? my email is {order.email}",
        "I want to talk to a real person",
    ])
    assert [t["reason"] for t in turns] == ["answered", "explicit_request"], turns
    summary = ticket.handoff_summary
    assert f"Verified owner of order-store account {order.user_id}" in summary, summary
    assert "NOT verified" not in summary


async def test_a_german_message_goes_to_a_person_tagged_with_the_language(helpline_client) -> None:
    rt = helpline_client.server.app[RUNTIME]
    ticket, turns = await _converse(rt, "esc-e2e-german", ["Wo ist meine Bestellung? Ich warte schon seit zwei Wochen."])
    assert len(turns) == 1 and turns[0]["reason"] == "unsupported_language" and turns[0]["escalated"] is True
    assert turns[0]["data"]["language"] == "de"
    assert ticket.state == "escalated" and ticket.escalation_reason == "unsupported_language"
    summary = ticket.handoff_summary.splitlines()
    assert summary[:2] == [
        "Escalated because the customer wrote in a language the assistant does not answer in.",
        "Language: de (ISO 639-1).",
    ]
    async with rt.db.sessions() as session:
        sent = (await session.execute(
            select(Message).where(Message.ticket_id == ticket.id, Message.direction == "outbound")
        )).scalars().all()
    assert [m.text for m in sent] == [HANDOFF_NOTICES["de"] + "\n\n" + rt.router.handoff_reply()]


async def test_upset_across_turns_escalates_the_ticket(helpline_client) -> None:
    rt = helpline_client.server.app[RUNTIME]
    order = next(o for o in rt.orders._orders.values() if o.tracking_ids)
    ticket, turns = await _converse(rt, "esc-e2e-mood", [
        f"I'm annoyed, where is my order {order.order_id}?",  # VADER -0.38: answered
        "not happy. what is your refund policy?",  # -0.46 alone; the mean of the two is -0.42
    ])
    assert turns[0]["escalated"] is False, turns[0]
    assert turns[1]["reason"] == "conversation_sentiment" and turns[1]["escalated"] is True, turns[1]
    assert turns[1]["data"]["rule"] == "ewma" and turns[1]["data"]["turns"] == 2
    assert ticket.state == "escalated"


async def test_a_ticket_handed_back_by_a_person_starts_a_fresh_count(helpline_client) -> None:
    rt = helpline_client.server.app[RUNTIME]
    ticket, turns = await _converse(rt, "esc-e2e-reset", [
        "where is my order #W1234567? email ana@example.com", "I want to talk to a real person",
    ])
    assert [t["reason"] for t in turns] == ["answered", "explicit_request"]
    async with rt.db.write() as session:
        stored = await session.get(Ticket, ticket.id)
        transition(session, stored, TicketState.bot, reason="agent_handback")
    ticket, turns = await _converse(rt, "esc-e2e-reset", ["and where is order #W7654321? email ana@example.com"])
    assert turns[-1]["reason"] == "answered" and turns[-1]["escalated"] is False, turns[-1]
    assert turns[-1]["data"]["not_found"] == ["#W7654321"]


async def _outbound(rt, ticket: Ticket) -> list[str]:
    async with rt.db.sessions() as session:
        sent = (await session.execute(
            select(Message).where(Message.ticket_id == ticket.id, Message.direction == "outbound").order_by(Message.id)
        )).scalars().all()
    return [m.text for m in sent]


async def test_that_didnt_help_gets_an_apology_then_a_person(helpline_client) -> None:
    rt = helpline_client.server.app[RUNTIME]
    ticket, turns = await _converse(rt, "esc-e2e-not-helped", [
        "how long does a refund take?", "that didn't help", "still not working",
    ])
    assert [(t["tier"], t["reason"], t["escalated"]) for t in turns] == [
        ("retrieval", "answered", False),
        ("deterministic", "customer_said_not_helped", False),
        ("human", "repeated_failure", True),
    ], turns
    assert turns[1]["resolved"] is False and turns[1]["data"]["matched"] == "didnt help"
    assert turns[2]["data"]["why"] == ["customer_said_not_helped", "customer_said_not_helped"]
    sent = await _outbound(rt, ticket)
    # A customer the bot failed twice hears the apology that fits the topic, then the handoff.
    assert sent[1] == NOT_HELPED_REPLY
    assert sent[2] == f"{rt.router.replies.apology('refund')} {rt.router.handoff_reply()}"
    assert ticket.state == "escalated" and ticket.escalation_reason == "repeated_failure"


async def test_thanks_after_an_answer_still_gets_the_thanks_reply(helpline_client) -> None:
    rt = helpline_client.server.app[RUNTIME]
    ticket, turns = await _converse(rt, "esc-e2e-thanks", ["how long does a refund take?", "thanks, that helped"])
    assert [(t["reason"], t["intent"], t["escalated"]) for t in turns[1:]] == [("answered", "thanks", False)], turns
    assert (await _outbound(rt, ticket))[1] == rt.router.intents["thanks"].reply
    assert ticket.state != "escalated"


async def test_are_you_a_real_person_gets_an_honest_answer(helpline_client) -> None:
    rt = helpline_client.server.app[RUNTIME]
    ticket, turns = await _converse(rt, "esc-e2e-bot", ["are you a real person?", "ok, I want a real person"])
    assert [(t["reason"], t["escalated"]) for t in turns] == [("asked_if_bot", False), ("explicit_request", True)], turns
    assert turns[0]["intent"] == "contact_human_agent"  # what the model said stays on record
    assert (await _outbound(rt, ticket))[:2] == [rt.router.replies.fill(ASKED_IF_BOT_REPLY), rt.router.handoff_reply()]
    assert "Nora" in rt.router.replies.fill(ASKED_IF_BOT_REPLY)
    assert ticket.state == "escalated" and ticket.escalation_reason == "explicit_request"
