"""The order-state lead of a policy answer and the order-policy file (config/order_policy.yaml)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bot.order_policy import (
    DEFAULT_ORDER_POLICY_FILE,
    TOPICS,
    OrderFacts,
    OrderPolicyError,
    default_policy,
    load_order_policy,
    order_lead,
)
from config.settings import CONFIG_DIR
from state.orders import JsonOrderStore

DEMO = CONFIG_DIR / "orders.json"


@pytest.fixture(scope="module")
def store() -> JsonOrderStore:
    return JsonOrderStore.from_files(DEMO)


@pytest.mark.parametrize(
    ("question", "topic"),
    [
        ("can I still cancel it?", "cancel"),
        ("I'd like to cancel and get a refund", "cancel"),  # the first topic listed wins
        ("can I change the size on it", "change"),
        ("how do I send it back?", "return"),
        ("is it returnable", "return"),
        ("I want my money back", "refund"),
        ("where is my refund", "refund"),
        ("where is my parcel?", None),
        ("how do I cancel my Northwind Plus membership?", None),  # another subject than the order
        ("", None),
    ],
)
def test_topic_of_a_question(question: str, topic: str | None) -> None:
    assert default_policy().topic(question) == topic


def test_lead_from_the_real_state_of_a_demo_order(store: JsonOrderStore) -> None:
    order = asyncio.run(store.get("W5976205"))
    assert order is not None and order.status == "processed"
    facts = OrderFacts.from_order(order)
    assert facts == OrderFacts("#W5976205", "processed")
    assert order_lead("cancel", facts) == (
        "Order #W5976205 has already shipped, so it can no longer be cancelled; you can return it once it arrives."
    )
    assert order_lead("return", facts) == "Order #W5976205 is on its way; you can return it once it arrives."


@pytest.mark.parametrize(
    ("topic", "status", "lead"),
    [
        ("cancel", "pending", "Order #W1234567 is still being prepared, so you can still cancel it."),
        ("cancel", "delivered", "Order #W1234567 was delivered, so it can no longer be cancelled, but you can return it."),
        ("change", "processed", "Order #W1234567 has already shipped, so it can no longer be changed; you can return it once it arrives and place a new order."),
        ("return", "pending", "Order #W1234567 has not shipped yet, so there is nothing to return: you can cancel it instead."),
        ("refund", "return requested", "Order #W1234567 has a return in progress: the refund is issued once we receive and check the returned items."),
        ("refund", "cancelled", "Order #W1234567 was cancelled; any charge for it is refunded to the original payment method."),
    ],
)
def test_leads_by_topic_and_status(topic: str, status: str, lead: str) -> None:
    assert order_lead(topic, OrderFacts("#W1234567", status)) == lead


def test_every_demo_status_has_a_lead_for_every_topic(store: JsonOrderStore) -> None:
    import json

    statuses = {o["status"] for o in json.loads(DEMO.read_text(encoding="utf-8")).values()}
    assert statuses == {"pending", "processed", "delivered", "cancelled", "return requested"}
    for topic in TOPICS:
        for status in statuses:
            assert order_lead(topic, OrderFacts("#W1", status)), (topic, status)


def test_a_lead_reveals_only_the_order_number_and_its_state(store: JsonOrderStore) -> None:
    # The order-status reply tells a verified owner the status, items and tracking; the lead says less.
    order = asyncio.run(store.get("#W5976205"))
    assert order is not None
    for topic in TOPICS:
        text = order_lead(topic, OrderFacts.from_order(order)) or ""
        secrets = [order.email, order.postcode, order.user_id, *order.tracking_ids, *(i.name for i in order.items)]
        assert not [s for s in secrets if s and s in text], (topic, text)


def test_no_lead_without_a_topic_an_order_or_a_known_status() -> None:
    facts = OrderFacts("#W1", "processed")
    assert order_lead(None, facts) is None
    assert order_lead("cancel", None) is None
    assert order_lead("cancel", OrderFacts("#W1", "on hold")) is None  # a status your system adds
    with pytest.raises(ValueError, match="unknown order topic 'exchange'"):
        order_lead("exchange", facts)
    with pytest.raises(ValueError, match="order id and a status"):
        OrderFacts("#W1", " ")


def test_the_shipped_file_loads() -> None:
    policy = load_order_policy(DEFAULT_ORDER_POLICY_FILE)
    assert policy.answers.yes == "Yes," and policy.answers.no == "No,"
    assert "not" in policy.answers.negations and "outside" in policy.answers.exceptions
    assert set(policy.orders.leads) == set(TOPICS)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "order_policy.yaml"
    path.write_text(text, encoding="utf-8")
    return path


_ANSWERS = """answers:
  "yes": "Yes,"
  "no": "No,"
  yes_no_openers: [do]
  negations: [not]
"""


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("answers: [", "not valid YAML"),
        ("- a\n- b\n", "expected a mapping with 'answers' and 'orders'"),
        (_ANSWERS, "orders: Field required"),
        (_ANSWERS.replace("[not]", "[not, no]") + "orders: {topics: {}, leads: {}}\n",
         "answers.negations: False is not a word (quote it"),
        (_ANSWERS.replace("[not]", '["no longer"]') + "orders: {topics: {}, leads: {}}\n",
         "answers.negations: 'no longer' must be one word"),
        (_ANSWERS + "orders:\n  topics: {cancel: [cancel*]}\n  leads: {cancel: {pending: 'Order {order} ok'}}\n",
         "orders.leads: cancel.pending: unknown placeholder {order} (allowed: order_id)"),
        (_ANSWERS + "orders:\n  topics: {exchange: [swap]}\n  leads: {}\n",
         "orders.topics: unknown topic 'exchange'"),
        (_ANSWERS + "orders:\n  topics: {cancel: [cancel*]}\n  leads: {return: {pending: 'x'}}\n",
         "orders: leads.return: no phrases under topics.return"),
        (_ANSWERS + "orders:\n  topics: {cancel: [cancel*], refund: [cancel*]}\n  leads: {}\n",
         "orders.topics: refund: phrase 'cancel*' is also listed under cancel"),
    ],
)
def test_a_bad_file_is_one_line_naming_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(OrderPolicyError) as error:
        load_order_policy(path)
    assert str(error.value).startswith(f"{path}: ")
    assert message in str(error.value)
    assert "\n" not in str(error.value)
