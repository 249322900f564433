"""What one message can cost: every per-turn step linear in the message's length with a bounded
constant, the models reading a bounded prefix, and no CPU work on the event loop.

Costs are counted, not timed: Python function calls (``sys.setprofile``) grow with the work done and
do not depend on the machine. Timings of the whole turn live in ``bench/turn_cost.py``.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from bot.escalation import PriorTurn
from bot.router import TurnContext
from bot.sentiment import Sentiment
from helpline.server import RUNTIME


def calls(fn: Callable[[], Any], *, c_calls: bool = False) -> int:
    """Function calls made by ``fn()``: Python functions, and with ``c_calls`` also built-ins
    (``str.lower`` inside a comprehension is work a Python-call count would not see)."""
    count = 0
    events = ("call", "c_call") if c_calls else ("call",)

    def profile(frame: Any, event: str, arg: Any) -> None:
        nonlocal count
        if event in events:
            count += 1

    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return count


WORST = {
    # The message that cost a second before: phrase matching was tokens x phrases.
    "dots": lambda n: "a." * (n // 2),
    "words": lambda n: ("please help me with the delivery of my parcel today " * n)[:n],
    "slang": lambda n: ("u r 2 ur pls wanna not bad " * n)[:n],
    "near-misses": lambda n: ("sucidee harrassd laywr operatr " * n)[:n],
}


@pytest.fixture
def router(helpline_client):
    return helpline_client.server.app[RUNTIME].router


@pytest.mark.parametrize("kind", sorted(WORST))
def test_escalation_checks_are_linear_with_a_small_constant(router, kind: str) -> None:
    escalation = router.escalation
    u = router.understander.understand("hello")  # the checks' own cost is measured, not the models'

    def check(text: str) -> Callable[[], Any]:
        def run() -> None:
            escalation.check(text, u, (), reasoning_available=False)
            escalation.reply_instead(text, u)
            escalation.after_tiers(text, PriorTurn(text), ())
        return run

    half = calls(check(WORST[kind](2000) + " x1"))
    full = calls(check(WORST[kind](4000) + " x2"))
    tokens = len(escalation.speller.tokens(WORST[kind](4000) + " x2"))
    assert full <= 2.3 * half, (kind, half, full)
    assert full <= 30 * tokens, f"{kind}: {full} calls for {tokens} tokens"


def test_sentiment_is_linear_and_keeps_vaders_scores_on_sentences() -> None:
    sentiment = Sentiment()
    text = "I am not happy with this at all, but thanks. " * 100
    full = calls(lambda: sentiment.compound(text[:4000]), c_calls=True)
    assert full <= 2.3 * calls(lambda: sentiment.compound(text[:2000]), c_calls=True)
    assert full <= 60 * len(text[:4000].split()), full
    stock = SentimentIntensityAnalyzer()
    for sentence in ("this is not so bad", "I am kind of upset", "never so happy", "the worst, but ok",
                     "NOT GOOD AT ALL!!!", "no no no, this is bad", "I hate waiting :("):
        assert sentiment.compound(sentence) == stock.polarity_scores(sentence)["compound"], sentence


def test_the_models_read_a_bounded_prefix(router) -> None:
    understand = router.understander.understand
    head = "where is my order, it was supposed to arrive last week and I still have nothing " * 8
    a = understand(head + " and the rest says one thing")
    b = understand(head + " and the rest says something else entirely, about refunds")
    assert np.array_equal(a.embedding, b.embedding) and a.intent == b.intent and a.confidence == b.confidence


async def test_no_cpu_step_of_a_turn_runs_on_the_event_loop(router, monkeypatch) -> None:
    loop_thread = threading.get_ident()
    ran_on: dict[str, set[int]] = {}

    def spy(owner: Any, name: str) -> None:
        real = getattr(owner, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            ran_on.setdefault(name, set()).add(threading.get_ident())
            return real(*args, **kwargs)

        monkeypatch.setattr(owner, name, wrapper)

    spy(router.understander, "understand")
    spy(router.escalation, "check")
    spy(router.escalation, "reply_instead")
    spy(router.escalation, "after_tiers")
    spy(router.understander.embedder, "embed")
    ctx = TurnContext(ticket_id=1, ticket_state="bot")
    long = "how long does a refund take to reach my card? " * 80
    for text in ("how long does a refund take?", long, "where is my order #W5976205?", "I want a person"):
        await router.route(text, ctx)
    assert set(ran_on) == {"understand", "check", "reply_instead", "after_tiers", "embed"}, ran_on
    assert all(loop_thread not in threads for threads in ran_on.values()), ran_on
    await asyncio.sleep(0)
