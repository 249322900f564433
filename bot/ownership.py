"""Proof that a customer owns an order, before the bot says anything about it.

The convention of order-status pages (WISMO, "where is my order"): the order number plus the email
address or the postcode on the order. Both are checked here, server-side, against the order store,
compared normalised (email: trimmed and case-folded; postcode: upper case without spaces or dashes,
and a 5-digit US ZIP also matches its ZIP+4 form). A proof that does not match and an order that does
not exist give the same answer (:attr:`Verdict.kind` ``mismatch``), so an unverified visitor learns
nothing, not even whether an order number exists.

Failed attempts are bounded per customer and per order number in a window (hot-state counters shared
by every process): past either limit the verdict is ``locked`` without looking at the proof, and the
bot hands the customer to a person.

Must not: describe orders, send messages or touch tickets (:mod:`bot.actions` does the talking, the
conversation service records the verified owner on the ticket).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from state.hot import RateLimiter
from state.orders import Order, OrderStore

__all__ = ["AttemptLimits", "Proof", "Verdict", "normalise_email", "normalise_postcode", "verify"]


@dataclass(frozen=True)
class Proof:
    """What the customer offered as proof: emails and postcodes as they wrote them."""

    emails: tuple[str, ...] = ()
    postcodes: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.emails or self.postcodes)

    def guesses(self) -> int:
        """Distinct emails and postcodes offered (normalised): each is one guess at the order's."""
        return len({normalise_email(e) for e in self.emails}) + len(
            {normalise_postcode(p) for p in self.postcodes}
        )


@dataclass(frozen=True)
class Verdict:
    """``kind``: ``verified`` (``order`` is set; ``by`` is ``email`` or ``postcode``), ``mismatch``
    (wrong details or no such order: the same to the customer) or ``locked`` (too many failures)."""

    kind: str
    order: Order | None = None
    by: str | None = None


def normalise_email(value: str) -> str:
    """``" Ana@Example.COM "`` -> ``"ana@example.com"``."""
    return value.strip().casefold()


_POSTCODE_JUNK = re.compile(r"[\s\-]+")


def normalise_postcode(value: str) -> str:
    """``"sw1a 1aa"`` -> ``"SW1A1AA"``, ``"28110-1234"`` -> ``"281101234"``."""
    return _POSTCODE_JUNK.sub("", value).upper()


def _postcode_matches(stored: str, offered: str) -> bool:
    a, b = normalise_postcode(stored), normalise_postcode(offered)
    if not a or not b:
        return False
    if a == b:
        return True
    # US: "28110" on the order and "28110-1234" offered, or the other way round.
    short, long_ = sorted((a, b), key=len)
    return len(short) == 5 and len(long_) == 9 and short.isdigit() and long_.isdigit() and long_.startswith(short)


def matches(order: Order, proof: Proof) -> str | None:
    """``"email"`` or ``"postcode"`` when ``proof`` holds the order's email or postcode, else None."""
    if order.email and normalise_email(order.email) in {normalise_email(e) for e in proof.emails}:
        return "email"
    if order.postcode and any(_postcode_matches(order.postcode, p) for p in proof.postcodes):
        return "postcode"
    return None


MAX_GUESSES_PER_MESSAGE = 2
"""A customer proves ownership with their email or their postcode (or both): a message offering
more candidates than this is a guessing list and is not checked."""


@dataclass(frozen=True)
class AttemptLimits:
    """Failed ownership checks allowed per customer and per order number in ``window_s`` seconds,
    counted in ``limiter`` (keys ``verify-customer:ID`` and ``verify-order:#W...``)."""

    limiter: RateLimiter
    per_customer: int
    per_order: int
    window_s: int

    async def left(self, customer_id: int | None, order_id: str) -> int:
        """Wrong guesses still allowed on ``order_id`` for this customer (0: locked)."""
        left = self.per_order - await self.limiter.count(f"verify-order:{order_id}")
        if customer_id is not None:
            left = min(left, self.per_customer - await self.limiter.count(f"verify-customer:{customer_id}"))
        return max(0, left)

    async def failed(self, customer_id: int | None, order_id: str, guesses: int = 1) -> None:
        """Count ``guesses`` wrong guesses (one per email or postcode offered)."""
        await self.limiter.hit(f"verify-order:{order_id}", self.per_order, self.window_s, guesses)
        if customer_id is not None:
            await self.limiter.hit(f"verify-customer:{customer_id}", self.per_customer, self.window_s, guesses)


async def verify(
    order_id: str, proof: Proof, orders: OrderStore, limits: AttemptLimits | None, customer_id: int | None
) -> Verdict:
    """Check ``proof`` for ``order_id`` (normalised). Every email and postcode offered is one
    guess: a mismatch counts them all as failures, and a message offering more than
    :data:`MAX_GUESSES_PER_MESSAGE`, or more than the limits have left, is not checked at all (and
    counted), so that a limit of N means N guesses, not N messages of many. Answers ``locked``
    without checking once a limit is reached. Raises the order store's and the hot state's errors."""
    guesses = proof.guesses()
    if limits is not None:
        left = await limits.left(customer_id, order_id)
        if left == 0:
            return Verdict("locked")
        if guesses > min(left, MAX_GUESSES_PER_MESSAGE):
            await limits.failed(customer_id, order_id, guesses)
            return Verdict("mismatch")
    elif guesses > MAX_GUESSES_PER_MESSAGE:
        return Verdict("mismatch")
    order = await orders.get(order_id)
    by = matches(order, proof) if order is not None else None
    if order is None or by is None:
        if limits is not None:
            await limits.failed(customer_id, order_id, guesses)
        return Verdict("mismatch")
    return Verdict("verified", order, by)
