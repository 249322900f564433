"""Deterministic handlers: questions a lookup answers exactly (order status, refund status).

A handler takes the message's entities and an order store and returns the reply text plus the facts it
used; no model is involved, so the same order always gets the same answer. A handler only describes the
orders the customer named, and only once the customer has proved they own each one in this
conversation (:mod:`bot.ownership`: order number plus the email or postcode on the order); until then
it asks for that proof, with the same words whether or not the order exists. It never lists the
customer's other orders. It must not send messages, change tickets or write orders; the router decides
what to do with an :class:`ActionResult`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from bot.entities import Entities
from bot.ownership import AttemptLimits, Proof, verify
from state.orders import Order, OrderItem, OrderStore

__all__ = ["HANDLERS", "ActionContext", "ActionResult", "run_handler"]


@dataclass(frozen=True)
class ActionResult:
    """A handler's answer.

    ``reply``: plain text for the customer (no markdown). ``resolved``: True when every asked order was
    described. ``missing_slot``: ``"order_id"`` when the message named no order, ``"proof"`` when an
    order awaits the customer's email or postcode (``pending_order_ids`` lists them); None otherwise.
    ``verified_owner``: the order-store user id the customer just proved to be (the ticket keeps it).
    ``escalate``: too many failed proofs: a person must take over. ``data``: JSON-ready facts for
    the turn event, e.g. ``{"handler": "order_status", "order_ids": ["#W2611340"], "orders":
    [{"order_id": "#W2611340", "status": "processed", "tracking_ids": ["357962501027"]}],
    "verification": {"#W2611340": "email"}, "awaiting_proof": [], "not_found": []}``; ``not_found``
    lists orders whose proof did not match (or that do not exist: the customer is not told which).
    """

    reply: str
    resolved: bool
    missing_slot: str | None
    data: Mapping[str, Any] = field(default_factory=dict, hash=False)
    pending_order_ids: tuple[str, ...] = ()
    verified_owner: str | None = None
    escalate: bool = False


@dataclass(frozen=True)
class ActionContext:
    """What a handler may use.

    ``entities``: the message's order ids, emails and postcodes; ``proof``: the emails and postcodes
    offered as proof of ownership (the message's, plus a bare postcode when the bot had asked for
    one); ``orders``: the order store; ``verified_owner``: the owner this ticket has already proved
    to be (None: nobody yet); ``pending_order_ids``: orders named earlier that await proof;
    ``customer_id`` and ``attempts``: who is asking and the failed-attempt limits
    (:class:`bot.ownership.AttemptLimits`, None: unlimited, for tests and the eval harness);
    ``customer_email``: the channel's verified address when it has one (not used to pick orders).
    """

    entities: Entities
    orders: OrderStore
    customer_email: str | None = None
    proof: Proof = Proof()
    verified_owner: str | None = None
    pending_order_ids: tuple[str, ...] = ()
    customer_id: int | None = None
    attempts: AttemptLimits | None = None


EXAMPLE_ORDER_ID = "#W0000000"
"""The order number shown in examples: it belongs to no one, and the demo generator never issues it."""

_ASK_ORDER_ID = (
    "I can check that for you. What is your order number? You will find it in your order "
    f"confirmation email, for example {EXAMPLE_ORDER_ID}. Please also tell me the email address or "
    "the postcode (ZIP) the order was placed with, so I know it's yours."
)

_STATUS_WORDS = {
    # What each order-store status means for the customer, as a clause after "Your order #W..." and
    # after "it" (so "processed" reads "has shipped and is on its way", never "is processed").
    "pending": "has not shipped yet: we have received it and are preparing it",
    "processed": "has shipped and is on its way",
    "delivered": "was delivered: the carrier marked it as delivered",
    "cancelled": "was cancelled",
    "return requested": "has a return in progress: we have your return request and are processing it",
    "exchange requested": "has an exchange in progress: we have your exchange request and are processing it",
}


def _status_clause(status: str) -> str:
    return _STATUS_WORDS.get(status, f"has the status {status}")


_METHOD_WORDS = {"credit_card": "credit card", "paypal": "PayPal account", "gift_card": "gift card"}


def _money(amount: float) -> str:
    return f"${amount:,.2f}"


def _method(payment_method_id: str) -> str:
    kind = payment_method_id.rsplit("_", 1)[0] if "_" in payment_method_id else payment_method_id
    return _METHOD_WORDS.get(kind, "original payment method")


def _option(key: str, value: str) -> str:
    low = value.strip().lower()
    if low in ("yes", "true"):
        return key
    if low in ("no", "false", "none"):
        return f"no {key}"
    return f"{key} {value}"


def _items(items: tuple[OrderItem, ...]) -> str:
    counts: dict[tuple[str, str], int] = {}
    first: dict[tuple[str, str], OrderItem] = {}
    for item in items:
        key = (item.item_id, item.name)
        counts[key] = counts.get(key, 0) + 1
        first.setdefault(key, item)
    parts = []
    for key, n in counts.items():
        item = first[key]
        opts = ", ".join(_option(k, v) for k, v in item.options.items())
        text = f"{item.name} ({opts})" if opts else item.name
        parts.append(f"{n} x {text}" if n > 1 else text)
    return ", ".join(parts)


def _ask_proof(order_ids: list[str]) -> str:
    which = " and ".join(order_ids)
    return (
        f"I can help with order {which}. To protect your privacy, please tell me the email address "
        f"or the postcode (ZIP) the order was placed with."
    )


def _no_match(order_id: str) -> str:
    # The same words whether the order does not exist or the details are wrong.
    return (
        f"I couldn't match those details to order {order_id}. Please check the order number and the "
        "email address or postcode on the order, and send them again."
    )


_LOCKED = (
    "I can't confirm that order here right now, so I'm passing you to a member of our support team, "
    "who can help. They'll reply right here."
)


def _describe_status(order: Order) -> str:
    lines = [f"Your order {order.order_id} {_status_clause(order.status)}."]
    if order.items:
        lines.append(f"Items: {_items(order.items)}.")
    tracking = order.tracking_ids
    if tracking:
        label = "Tracking number" if len(tracking) == 1 else "Tracking numbers"
        lines.append(f"{label}: {', '.join(tracking)}.")
    return " ".join(lines)


def _describe_refund(order: Order) -> str:
    refunds = order.refunds
    if refunds:
        parts = [f"{_money(r.amount)} to your {_method(r.payment_method_id)}" for r in refunds]
        noun = "A refund" if len(refunds) == 1 else f"{len(refunds)} refunds"
        verb = "was" if len(refunds) == 1 else "were"
        total = sum(r.amount for r in refunds)
        text = f"{noun} {verb} issued for order {order.order_id}: {'; '.join(parts)}."
        if len(refunds) > 1:
            text += f" Total refunded: {_money(total)}."
        return text
    if order.status == "return requested":
        return (
            f"Your return for order {order.order_id} is being processed; no refund has been issued "
            "yet. The refund is issued once we receive and check the returned items."
        )
    return f"There is no refund on order {order.order_id}: it {_status_clause(order.status)}."


MAX_ORDERS_PER_MESSAGE = 3
"""Orders described per message. A customer asks about one order or a few."""


async def _per_order(
    ctx: ActionContext, handler: str, describe: Callable[[Order], str], extra: Callable[[Order], dict[str, Any]]
) -> ActionResult:
    named = ctx.entities.order_ids or (ctx.pending_order_ids if ctx.proof else ())
    ids = list(named[:MAX_ORDERS_PER_MESSAGE])
    skipped = named[MAX_ORDERS_PER_MESSAGE:]
    facts: list[dict[str, Any]] = []
    data: dict[str, Any] = {
        "handler": handler, "order_ids": ids, "orders": facts, "verification": {},
        "awaiting_proof": [], "not_found": [],
    }
    if not ids:
        return ActionResult(reply=_ASK_ORDER_ID, resolved=False, missing_slot="order_id", data=data)
    paragraphs: list[str] = []
    owner = ctx.verified_owner
    for order_id in ids:
        order = await ctx.orders.get(order_id) if owner is not None else None
        if order is not None and order.user_id == owner:
            data["verification"][order_id] = "owner"
        elif not ctx.proof:
            data["awaiting_proof"].append(order_id)
            continue
        else:
            verdict = await verify(order_id, ctx.proof, ctx.orders, ctx.attempts, ctx.customer_id)
            if verdict.kind == "locked":
                data["verification"][order_id] = "locked"
                return ActionResult(reply=_LOCKED, resolved=False, missing_slot=None, data=data, escalate=True)
            if verdict.kind == "mismatch" or verdict.order is None:
                data["not_found"].append(order_id)
                paragraphs.append(_no_match(order_id))
                continue
            order, owner = verdict.order, verdict.order.user_id
            data["verification"][order_id] = verdict.by
        paragraphs.append(describe(order))
        facts.append({"order_id": order.order_id, "status": order.status, **extra(order)})
    waiting = tuple(data["awaiting_proof"]) or tuple(data["not_found"])
    if data["awaiting_proof"]:
        paragraphs.append(_ask_proof(data["awaiting_proof"]))
    if skipped:
        paragraphs.append(
            f"I can look up {MAX_ORDERS_PER_MESSAGE} orders per message; please send the others "
            "separately."
        )
    return ActionResult(
        reply="\n".join(paragraphs),
        resolved=not waiting,
        missing_slot="proof" if waiting else None,
        data=data,
        pending_order_ids=waiting,
        verified_owner=owner if owner != ctx.verified_owner else None,
    )


async def order_status(ctx: ActionContext) -> ActionResult:
    """Status, items and tracking ids of each order named in the message (only those).

    No order id: asks for it (``missing_slot="order_id"``). An order the customer has not proved to
    own: asks for the email or postcode on it (``missing_slot="proof"``); a proof that does not match
    (or an order that does not exist) says so in the same words either way. ``data["orders"]``:
    ``[{"order_id", "status", "tracking_ids"}]``, only for described orders.
    """
    return await _per_order(
        ctx, "order_status", _describe_status, lambda o: {"tracking_ids": list(o.tracking_ids)}
    )


async def refund_status(ctx: ActionContext) -> ActionResult:
    """Refunds in each named order's payment history (amount and method), else the return status when
    a return was requested, else that there is no refund. Missing ids and ownership as in
    :func:`order_status`. ``data["orders"]``: ``[{"order_id", "status", "refunds": [{"amount",
    "payment_method_id"}]}]``.
    """
    return await _per_order(
        ctx,
        "refund_status",
        _describe_refund,
        lambda o: {
            "refunds": [{"amount": r.amount, "payment_method_id": r.payment_method_id} for r in o.refunds]
        },
    )


HANDLERS: Mapping[str, Callable[[ActionContext], Awaitable[ActionResult]]] = MappingProxyType(
    {"order_status": order_status, "refund_status": refund_status}
)
"""Handler name (the intent that triggers it) -> handler."""


async def run_handler(name: str, ctx: ActionContext) -> ActionResult:
    """Run the handler called ``name``. Raises ``ValueError`` naming the known handlers when there is
    no such handler (never ``KeyError``); errors of the order store propagate."""
    handler = HANDLERS.get(name)
    if handler is None:
        raise ValueError(f"unknown handler {name!r}; known handlers: {', '.join(sorted(HANDLERS))}")
    return await handler(ctx)
