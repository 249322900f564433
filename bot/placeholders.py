"""Fill Bitext ``{{Placeholder}}`` slots with realistic random values.

Bitext texts say ``cancel order {{Order Number}}`` where a customer would write ``cancel order
#W2611340``. A model trained or evaluated on the raw braces loses 5-9 points on real text
(``shared/docs/stack-notes.md``), so the benchmark and any data tooling replace every slot first.
Covered: every placeholder name that occurs in ``shared/data/bitext/*.csv`` (Order Number, Account
Type, Person Name, Account Category, Refund Amount, Currency Symbol, Delivery City, Delivery Country,
Invoice Number) plus the common ones of the 4.5K responses (support phone/email/hours, website, live
chat, ...). Unknown names get a plausible generic value (a UI label made from the name itself, or a
number for id-like names); braces are never left in the output.

Must not: read files or global random state; all randomness comes from the ``rng`` argument.
"""

from __future__ import annotations

import random
import re
import string
from collections.abc import Callable

_SLOT = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")

_FIRST = (
    "Emma", "Liam", "Olivia", "Noah", "Ava", "Mateo", "Sofia", "Lucas", "Mia", "Ethan", "Yuki",
    "Aisha", "Omar", "Chloe", "Daniel", "Priya", "Jonas", "Fatima", "Carlos", "Grace", "Wei",
    "Hannah", "Ivan", "Lena", "Kwame", "Zoe", "Raj", "Ingrid", "Diego", "Amara",
)
_LAST = (
    "Smith", "Garcia", "Müller", "Kim", "Johnson", "Rossi", "Nguyen", "Brown", "Patel", "Silva",
    "Kowalski", "Martin", "Okafor", "Tanaka", "Lopez", "Andersen", "Cohen", "Dubois", "Walker",
    "Hernandez", "Novak", "Ahmed", "Schmidt", "Wilson", "Murphy",
)
_CITIES = (
    "Chicago", "Houston", "Seattle", "Denver", "Boston", "Atlanta", "Phoenix", "Toronto",
    "Vancouver", "London", "Manchester", "Dublin", "Berlin", "Munich", "Paris", "Lyon", "Madrid",
    "Barcelona", "Rome", "Milan", "Amsterdam", "Vienna", "Zurich", "Sydney", "Melbourne", "Auckland",
    "Tokyo", "Singapore", "Mexico City", "São Paulo", "Austin", "San Diego", "Portland",
)
_COUNTRIES = (
    "Canada", "Mexico", "the UK", "United Kingdom", "Ireland", "Germany", "France", "Spain", "Italy",
    "the Netherlands", "Austria", "Switzerland", "Australia", "New Zealand", "Japan", "Singapore",
    "Brazil", "India", "Poland", "Sweden", "Norway", "Denmark", "Portugal", "South Africa", "USA",
)
_ACCOUNT_TYPES = (
    "Premium", "Standard", "Free", "Freemium", "Basic", "Pro", "Gold", "Platinum", "Business",
    "Personal", "Family", "Student", "Enterprise", "premium", "pro", "gold",
)
_CURRENCY = ("$", "$", "$", "€", "£")
_HOURS = (
    "Monday to Friday, 9am to 5pm", "8:00-20:00 on weekdays", "24/7", "Mon-Sat 9 AM - 6 PM EST",
    "weekdays from 8am to 6pm",
)


def _digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(string.digits) for _ in range(n))


def _order_number(rng: random.Random) -> str:
    style = rng.random()
    if style < 0.45:
        return "#W" + _digits(rng, 7)  # tau-bench style
    if style < 0.7:
        return str(rng.randint(1000, 99999))
    if style < 0.85:
        return "#" + str(rng.randint(10000, 9999999))
    return _digits(rng, 12)


def _amount(rng: random.Random) -> str:
    value = rng.choice((rng.randint(5, 400), round(rng.uniform(5, 900), 2)))
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def _money(rng: random.Random) -> str:
    return rng.choice(_CURRENCY) + _amount(rng)


def _person(rng: random.Random) -> str:
    first = rng.choice(_FIRST)
    return first if rng.random() < 0.2 else f"{first} {rng.choice(_LAST)}"


def _invoice(rng: random.Random) -> str:
    style = rng.random()
    if style < 0.5:
        return "#" + _digits(rng, 5)
    if style < 0.75:
        return f"INV-{rng.randint(2021, 2026)}-{_digits(rng, 4)}"
    return _digits(rng, 8)


def _email(rng: random.Random) -> str:
    return rng.choice(("support", "help", "care", "service")) + "@" + rng.choice(
        ("shopmail.com", "example-store.com", "acme-shop.co")
    )


def _phone(rng: random.Random) -> str:
    return f"1-800-{_digits(rng, 3)}-{_digits(rng, 4)}"


def _website(rng: random.Random) -> str:
    return rng.choice(("ShopNow", "Acme Store", "example-store.com", "BuyRight", "MegaMart"))


# Exact names (lower-cased) seen in shared/data/bitext. Order matters only for readability.
_EXACT: dict[str, Callable[[random.Random], str]] = {
    "order number": _order_number,
    "order id": _order_number,
    "order number anonymized": _order_number,
    "order id anonymized": _order_number,
    "purchase id anonymized": _order_number,
    "purchase number anonymized": _order_number,
    "tracking number": lambda r: "1Z" + _digits(r, 16),
    "person name": _person,
    "name field anonymized": _person,
    "refund amount": _amount,  # Bitext writes "{{Currency Symbol}}{{Refund Amount}}" or "... dollars"
    "currency symbol": lambda r: r.choice(_CURRENCY),
    "account type": lambda r: r.choice(_ACCOUNT_TYPES),
    "account category": lambda r: r.choice(_ACCOUNT_TYPES),
    "delivery city": lambda r: r.choice(_CITIES),
    "delivery country": lambda r: r.choice(_COUNTRIES),
    "invoice number": _invoice,
    "invoice number anonymized": _invoice,
    "bill number anonymized": _invoice,
    "customer support phone number": _phone,
    "customer service phone number": _phone,
    "support phone number": _phone,
    "phone number": _phone,
    "customer support email": _email,
    "customer support email address": _email,
    "customer service email": _email,
    "support email": _email,
    "email": _email,
    "email address": _email,
    "customer support availability": lambda r: r.choice(_HOURS),
    "customer support hours": lambda r: r.choice(_HOURS),
    "customer service hours": lambda r: r.choice(_HOURS),
    "operating hours": lambda r: r.choice(_HOURS),
    "website name": _website,
    "website": _website,
    "company name": _website,
    "website url": lambda r: "https://www." + r.choice(("example-store.com", "acme-shop.co")),
    "live chat": lambda r: r.choice(("Live Chat", "live chat", "the chat")),
    "number of days": lambda r: str(r.choice((7, 14, 30, 60))),
    "payment method anonymized": lambda r: r.choice(("Visa ending 4242", "PayPal", "Mastercard")),
    "purchase date anonymized": lambda r: f"{r.randint(1, 28)}/{r.randint(1, 12)}/2025",
    "business hours start time": lambda r: r.choice(("8am", "9:00", "9 AM")),
    "business hours end time": lambda r: r.choice(("5pm", "18:00", "6 PM")),
}

# Keyword rules for names not listed above (checked in order).
_KEYWORD_RULES: tuple[tuple[tuple[str, ...], Callable[[random.Random], str]], ...] = (
    (("phone",), _phone),
    (("email", "mail address"), _email),
    (("hours", "availability", "time"), lambda r: r.choice(_HOURS)),
    (("order", "purchase", "tracking"), _order_number),
    (("invoice", "bill"), _invoice),
    (("amount", "price", "fee", "charge"), _money),
    (("city",), lambda r: r.choice(_CITIES)),
    (("country",), lambda r: r.choice(_COUNTRIES)),
    (("name",), _person),
    (("website", "url", "site"), _website),
)


def _generic(name: str, rng: random.Random) -> str:
    lowered = name.lower()
    if lowered.replace(" ", "").isalnum() and any(c.isdigit() for c in lowered) and not any(
        c.isalpha() for c in lowered
    ):
        return name  # Bitext sometimes wraps a literal number in braces: keep the number
    if re.fullmatch(r"[0-9a-f]{16,}", lowered):
        return _digits(rng, 12)
    for keywords, make in _KEYWORD_RULES:
        if any(k in lowered for k in keywords):
            return make(rng)
    # Everything else in Bitext is a UI label ("{{Edit}}", "{{Account Settings}}"): say it plainly.
    return name.strip() or "it"


def fill_placeholders(text: str, rng: random.Random) -> str:
    """Replace every ``{{Name}}`` in ``text`` with a realistic random value.

    Args:
        text: a Bitext instruction or response.
        rng: the only source of randomness (pass ``random.Random(seed)`` for reproducible output).
    Returns:
        ``text`` with no ``{{...}}`` left. Order numbers come as ``#W`` + 7 digits (tau-bench style),
        plain digits or ``#`` + digits; ``{{Refund Amount}}`` is a bare number (Bitext writes the
        currency around it) unless nothing money-like surrounds it, then it gets a currency symbol;
        names, cities, countries, account types ("Premium", "Gold"...) come from fixed lists.
    """

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        key = name.lower()
        make = _EXACT.get(key)
        value = make(rng) if make is not None else _generic(name, rng)
        if key == "refund amount":
            before = text[: match.start()].rstrip()
            after = text[match.end() :].lstrip().lower()
            money_around = before.lower().endswith(("{{currency symbol}}", "$", "€", "£")) or after.startswith(
                ("dollar", "euro", "pound", "usd", "eur", "gbp", "bucks")
            )
            if not money_around:
                value = rng.choice(_CURRENCY) + value
        return value

    return _SLOT.sub(replace, text)
