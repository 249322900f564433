"""Deterministic handlers: order status and refund status over the demo and tau-bench stores."""

from __future__ import annotations

import re

import pytest

from bot.actions import HANDLERS, ActionContext, ActionResult, run_handler
from bot.entities import Entities, extract_entities
from bot.ownership import AttemptLimits, Proof
from config.settings import CONFIG_DIR
from state.orders import JsonOrderStore, Order, OrderItem, OrderStore, normalise_order_id

from shared_data import shared_data_dir  # tests/ is on sys.path (rootdir conftest)


@pytest.fixture(scope="module")
def demo() -> JsonOrderStore:
    return JsonOrderStore.from_files(CONFIG_DIR / "orders.json")


@pytest.fixture(scope="module")
def tau() -> JsonOrderStore:
    retail = shared_data_dir() / "tau_bench_retail"
    return JsonOrderStore.from_files(retail / "orders.json", retail / "users.json")


async def ask(store: OrderStore, handler: str, text: str, email: str | None = None) -> ActionResult:
    """The handler's answer to a customer who has proved they own the orders they name (the email
    on each named order is offered as proof; ownership itself is tested further down)."""
    entities = extract_entities(text)
    found = [await store.get(i) for i in entities.order_ids]
    emails = tuple(o.email for o in found if o is not None and o.email)
    return await run_handler(
        handler, ActionContext(entities, store, email, proof=Proof(emails=emails or ("nobody@example.com",)))
    )


def assert_plain(reply: str) -> None:
    """Short, no markdown."""
    assert not re.search(r"\*\*|__|`|^\s*[-*] |^#+ |\[.+\]\(", reply, re.MULTILINE), reply
    assert len(reply) < 700, reply


# --- order_status ------------------------------------------------------------------------------


async def test_order_status_demo_shipped_in_two_parcels(demo: JsonOrderStore) -> None:
    result = await ask(demo, "order_status", "hi, where's my order w5976205?")
    assert result.resolved is True and result.missing_slot is None
    assert result.reply == (
        "Your order #W5976205 has shipped and is on its way. "
        "Items: Stoneware Mug (color cream, capacity 300ml), Wool Throw Blanket (color oat, size 150x200cm). "
        "Tracking numbers: 612096739455, 523786092812."
    )
    assert result.data == {
        "handler": "order_status",
        "order_ids": ["#W5976205"],
        "orders": [{"order_id": "#W5976205", "status": "processed",
                    "tracking_ids": ["612096739455", "523786092812"]}],
        "verification": {"#W5976205": "email"},
        "awaiting_proof": [],
        "not_found": [],
    }
    assert_plain(result.reply)


async def test_order_status_never_mentions_the_customers_other_orders(demo: JsonOrderStore) -> None:
    asked = await demo.get("#W5976205")
    assert asked is not None and asked.email is not None
    others = [o for o in await demo.find_by_email(asked.email) if o.order_id != asked.order_id]
    assert len(others) == 4
    result = await ask(demo, "order_status", "status of #W5976205 please", email=asked.email)
    for other in others:
        assert other.order_id not in result.reply
        assert other.order_id[1:] not in result.reply
        for tracking in other.tracking_ids:
            assert tracking not in result.reply
    assert "612096739455" in result.reply


async def test_order_status_tau_bench(tau: JsonOrderStore) -> None:
    result = await ask(tau, "order_status", "Where is order #W2611340")
    assert result.resolved is True
    assert "Your order #W2611340 has shipped and is on its way." in result.reply
    assert "Tracking number: 357962501027." in result.reply
    assert "Water Bottle (capacity 1000ml, material glass, color blue)" in result.reply
    assert "Office Chair (material fabric, color black, armrest fixed, backrest height standard)" in result.reply
    # james_li_5688's other orders stay out of the reply.
    for other in ("#W3632959", "#W4435622", "#W3638028"):
        assert other not in result.reply
    assert_plain(result.reply)


async def test_order_status_pending_has_no_tracking(demo: JsonOrderStore) -> None:
    result = await ask(demo, "order_status", "order W1571486")
    assert result.reply.startswith("Your order #W1571486 has not shipped yet: ")
    assert "Tracking" not in result.reply
    assert result.data["orders"] == [{"order_id": "#W1571486", "status": "pending", "tracking_ids": []}]


@pytest.mark.parametrize(
    ("order_id", "phrase"),
    [
        ("#W4629443", "has a return in progress"),
        ("#W3958749", "was cancelled."),
        ("#W3722796", "was delivered"),
    ],
)
async def test_order_status_words(demo: JsonOrderStore, order_id: str, phrase: str) -> None:
    result = await ask(demo, "order_status", f"status {order_id}")
    assert f"Your order {order_id} {phrase}" in result.reply


async def test_order_status_several_ids(tau: JsonOrderStore) -> None:
    result = await ask(tau, "order_status", "what about #W2611340 and w4817420?")
    first, second = result.reply.split("\n")
    assert first.startswith("Your order #W2611340 has shipped") and "357962501027" in first
    assert second.startswith("Your order #W4817420 was delivered") and "490313116609" in second
    assert result.resolved is True
    assert [o["status"] for o in result.data["orders"]] == ["processed", "delivered"]


async def test_order_status_missing_slot(demo: JsonOrderStore) -> None:
    result = await ask(demo, "order_status", "where is my parcel??", email="mateo.moreau27@example.com")
    assert result.resolved is False
    assert result.missing_slot == "order_id"
    assert "order number" in result.reply
    # Knowing the email does not make the bot list that customer's orders.
    assert "#W1981191" not in result.reply
    assert result.data["order_ids"] == []


async def test_order_status_unknown_order(demo: JsonOrderStore) -> None:
    result = await ask(demo, "order_status", "order #W0000001 is late")
    assert result.resolved is False
    assert result.missing_slot == "proof" and result.pending_order_ids == ("#W0000001",)
    assert result.reply == (
        "I couldn't match those details to order #W0000001. Please check the order number and the "
        "email address or postcode on the order, and send them again."
    )
    assert result.data["not_found"] == ["#W0000001"]


async def test_order_status_known_and_unknown(demo: JsonOrderStore) -> None:
    result = await ask(demo, "order_status", "orders 99999 and #W5976205")
    assert result.resolved is False
    assert "couldn't match those details to order #99999" in result.reply
    assert "#W5976205 has shipped" in result.reply
    assert result.data["not_found"] == ["#99999"]


# --- refund_status -----------------------------------------------------------------------------


async def test_refund_cancelled_tau_order(tau: JsonOrderStore) -> None:
    result = await ask(tau, "refund_status", "did I get my refund for W3220387")
    assert result.resolved is True
    assert result.reply == "A refund was issued for order #W3220387: $608.91 to your PayPal account."
    assert result.data["orders"] == [{"order_id": "#W3220387", "status": "cancelled",
                                      "refunds": [{"amount": 608.91, "payment_method_id": "paypal_5716091"}]}]


async def test_refund_partial_on_delivered_demo_order(demo: JsonOrderStore) -> None:
    result = await ask(demo, "refund_status", "refund on order #W3722796?")
    assert result.reply == "A refund was issued for order #W3722796: $121.74 to your credit card."


async def test_refund_return_requested(demo: JsonOrderStore) -> None:
    result = await ask(demo, "refund_status", "where's the refund for W4629443")
    assert result.resolved is True
    assert result.reply.startswith("Your return for order #W4629443 is being processed")
    assert "no refund has been issued yet" in result.reply


async def test_refund_none(tau: JsonOrderStore) -> None:
    result = await ask(tau, "refund_status", "refund #W2611340")
    assert result.reply == "There is no refund on order #W2611340: it has shipped and is on its way."
    assert result.data["orders"][0]["refunds"] == []


async def test_refund_missing_and_unknown(demo: JsonOrderStore) -> None:
    missing = await ask(demo, "refund_status", "where is my money")
    assert missing.missing_slot == "order_id" and missing.resolved is False
    unknown = await ask(demo, "refund_status", "refund for #W0000001")
    assert "#W0000001" in unknown.reply and unknown.resolved is False


# --- plumbing ----------------------------------------------------------------------------------


def test_handler_names() -> None:
    assert set(HANDLERS) == {"order_status", "refund_status"}
    with pytest.raises(TypeError):
        HANDLERS["x"] = HANDLERS["order_status"]  # type: ignore[index]


async def test_unknown_handler_is_value_error(demo: JsonOrderStore) -> None:
    with pytest.raises(ValueError, match="unknown handler 'track'; known handlers: order_status, refund_status"):
        await run_handler("track", ActionContext(Entities(), demo, None))


class DictStore:
    """A team's own order system: anything with the three OrderStore methods."""

    def __init__(self, *orders: Order) -> None:
        self.orders = {o.order_id: o for o in orders}
        self.asked: list[str] = []

    async def get(self, order_id: str) -> Order | None:
        self.asked.append(order_id)
        key = normalise_order_id(order_id)
        return self.orders.get(key) if key else None

    async def find_by_email(self, email: str) -> list[Order]:
        raise AssertionError("handlers must not list a customer's orders")

    async def count(self) -> int:
        return len(self.orders)


async def test_handlers_work_over_any_order_store() -> None:
    mug = OrderItem(name="Mug", item_id="1", price=9.0, options={"color": "red"})
    boots = OrderItem(name="Boots", item_id="2", price=80.0, options={"size": "42", "waterproof": "yes"})
    order = Order(order_id="#48213", user_id="u1", status="shipped to pickup point", items=(mug, mug, boots),
                  fulfillments=(), payments=(), email="u1@example.com")
    store = DictStore(order)
    assert isinstance(store, OrderStore)
    result = await ask(store, "order_status", "order number 48213", email="u1@example.com")
    assert result.reply == (
        "Your order #48213 has the status shipped to pickup point. "
        "Items: 2 x Mug (color red), Boots (size 42, waterproof)."
    )
    assert set(store.asked) == {"#48213"}


# --- ownership: order number plus the email or postcode on the order ------------------------------


async def proved(store: OrderStore, text: str, *, owner: str | None = None, pending: tuple[str, ...] = (),
                 attempts: AttemptLimits | None = None, customer_id: int | None = 1,
                 proof: Proof | None = None) -> ActionResult:
    entities = extract_entities(text)
    return await run_handler("order_status", ActionContext(
        entities, store, proof=proof if proof is not None else Proof(entities.emails, entities.postcodes),
        verified_owner=owner, pending_order_ids=pending, customer_id=customer_id, attempts=attempts,
    ))


async def test_an_unverified_customer_gets_the_same_answer_for_real_and_made_up_orders(demo: JsonOrderStore) -> None:
    real = await proved(demo, "where is my order #W5976205?")
    made_up = await proved(demo, "where is my order #W0000000?")
    assert real.reply == made_up.reply.replace("#W0000000", "#W5976205")
    assert real.reply == ("I can help with order #W5976205. To protect your privacy, please tell me the email "
                          "address or the postcode (ZIP) the order was placed with.")
    assert real.missing_slot == "proof" and real.pending_order_ids == ("#W5976205",)
    assert real.data["orders"] == [] and "processed" not in real.reply and "612096739455" not in real.reply
    # A wrong email and a made-up order read the same too.
    wrong = await proved(demo, "#W5976205 my email is someone.else@example.com")
    nobody = await proved(demo, "#W0000000 my email is someone.else@example.com")
    assert wrong.reply == nobody.reply.replace("#W0000000", "#W5976205")
    assert wrong.data["orders"] == [] and wrong.data["not_found"] == ["#W5976205"]


@pytest.mark.parametrize("text", [
    "#W5976205 email LUCAS.Rahman97@Example.com",        # case does not matter
    "#W5976205, my zip is 28110",
    "#W5976205 zip code 28110-4417",                     # ZIP+4 of the order's ZIP
    "#W5976205 postcode: 28110.",
])
async def test_the_email_or_the_postcode_on_the_order_proves_ownership(demo: JsonOrderStore, text: str) -> None:
    result = await proved(demo, text)
    assert result.reply.startswith("Your order #W5976205 has shipped"), result.reply
    assert result.verified_owner == "lucas_rahman_9742" and result.resolved is True
    assert result.data["verification"]["#W5976205"] in ("email", "postcode")


async def test_a_verified_owner_needs_no_second_proof_but_another_owners_order_does(demo: JsonOrderStore) -> None:
    asked = await demo.get("#W5976205")
    assert asked is not None and asked.email is not None
    own = [o for o in await demo.find_by_email(asked.email) if o.order_id != asked.order_id][0]
    again = await proved(demo, f"and {own.order_id}?", owner=asked.user_id)
    assert again.reply.startswith(f"Your order {own.order_id} ") and again.verified_owner is None
    assert again.data["verification"] == {own.order_id: "owner"}
    candidates = [await demo.get(i) for i in ("#W1571486", "#W3722796")]
    stranger = next(o for o in candidates if o is not None and o.user_id != asked.user_id)
    other = await proved(demo, f"and {stranger.order_id}?", owner=asked.user_id)
    assert other.missing_slot == "proof" and other.data["orders"] == []


async def test_a_pending_order_is_verified_by_the_next_message(demo: JsonOrderStore) -> None:
    result = await proved(demo, "28110", pending=("#W5976205",), proof=Proof(postcodes=("28110",)))
    assert result.reply.startswith("Your order #W5976205 has shipped")


async def test_failed_proofs_are_limited_per_customer_and_per_order(demo: JsonOrderStore) -> None:
    from state.hot import InProcessRateLimiter

    limits = AttemptLimits(InProcessRateLimiter(), per_customer=3, per_order=5, window_s=3600)
    for _ in range(3):
        assert (await proved(demo, "#W5976205 zip 11111", attempts=limits, customer_id=7)).data["not_found"]
    # Customer 7 is locked out, even with the right postcode; the bot hands over.
    locked = await proved(demo, "#W5976205 zip 28110", attempts=limits, customer_id=7)
    assert locked.escalate is True and locked.data["orders"] == [] and "28110" not in locked.reply
    # Another customer may still try that order, until the order's own limit.
    assert (await proved(demo, "#W5976205 zip 28110", attempts=limits, customer_id=8)).resolved is True
    for customer in (8, 9):
        await proved(demo, "#W5976205 zip 22222", attempts=limits, customer_id=customer)
    assert (await proved(demo, "#W5976205 zip 28110", attempts=limits, customer_id=10)).escalate is True
    # Other orders are not affected.
    assert (await proved(demo, "#W3722796 " + "email " + (await demo.get("#W3722796")).email,  # type: ignore[union-attr]
                         attempts=limits, customer_id=10)).resolved is True


async def test_every_postcode_or_email_offered_is_one_guess(demo: JsonOrderStore) -> None:
    """A break test guessed 440 postcodes per message and found an order after 3,960 wrong guesses
    under a limit of 10 per order: the limit counted messages, not guesses."""
    from state.hot import InProcessRateLimiter

    limiter = InProcessRateLimiter()
    limits = AttemptLimits(limiter, per_customer=100, per_order=10, window_s=3600)
    right = (await demo.get("#W5976205")).postcode  # type: ignore[union-attr]
    guesses = " ".join(f"zip {n:05d}" for n in range(27000, 27200)) + f" zip {right}"
    listed = await proved(demo, f"#W5976205 {guesses}", attempts=limits, customer_id=1)
    # A list is not checked, even though it holds the right postcode, and counts every guess.
    assert listed.data["orders"] == [] and listed.data["not_found"] == ["#W5976205"]
    assert await limiter.count("verify-order:#W5976205") == 201
    # The order is now locked for everyone, the right postcode alone included.
    assert (await proved(demo, f"#W5976205 zip {right}", attempts=limits, customer_id=2)).escalate is True

    # Two candidates (an email and a postcode) are a normal proof; a wrong pair counts 2.
    fresh = AttemptLimits(InProcessRateLimiter(), per_customer=100, per_order=10, window_s=3600)
    two = await proved(demo, "#W5976205 zip 11111 email nobody@example.com", attempts=fresh, customer_id=3)
    assert two.data["not_found"] == ["#W5976205"]
    assert await fresh.limiter.count("verify-order:#W5976205") == 2
    both = await proved(demo, f"#W5976205 zip {right} email nobody@example.com", attempts=fresh, customer_id=3)
    assert both.resolved is True


async def test_order_ids_with_non_ascii_digits_are_not_order_ids() -> None:
    assert extract_entities("order #W\u0665\u0669\u0667\u0666\u0662\u0660\u0665").order_ids == ()
    assert extract_entities("order #W\uff15\uff19\uff17\uff16\uff12\uff10\uff15").order_ids == ()
    assert normalise_order_id("W\u0665\u0669\u0667\u0666\u0662\u0660\u0665") is None


def test_the_example_order_number_belongs_to_no_one(demo: JsonOrderStore, tau: JsonOrderStore) -> None:
    """Examples shown to customers (the bot's questions, the knowledge base) must not be someone's order."""
    from bot.actions import EXAMPLE_ORDER_ID

    kb = "\n".join(p.read_text(encoding="utf-8") for p in (CONFIG_DIR / "kb").glob("*.md"))
    named = set(extract_entities(kb).order_ids)
    assert named == {EXAMPLE_ORDER_ID}, named
    for store in (demo, tau):
        assert store._orders.get(EXAMPLE_ORDER_ID) is None
