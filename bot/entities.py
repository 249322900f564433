"""Entity extraction: order ids and email addresses found in a customer's message.

Pure regular expressions, no model and no I/O, so it is cheap to run on every turn. It finds
candidates only; whether an order exists is the order store's business (:mod:`state.orders`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from state.orders import normalise_order_id

__all__ = ["Entities", "extract_entities"]


@dataclass(frozen=True)
class Entities:
    """What :func:`extract_entities` found, each in order of first appearance without repeats.

    ``order_ids``: normalised (``"#W2611340"``, ``"#12345"``); ``emails``: lower-cased;
    ``postcodes``: as written after "zip", "zip code", "postcode" or "postal code" (``"28110"``,
    ``"SW1A 1AA"``), upper-cased.
    """

    order_ids: tuple[str, ...] = ()
    emails: tuple[str, ...] = ()
    postcodes: tuple[str, ...] = ()


# Linear in the text: a match starts only where a run of local-part characters starts (the
# look-behind excludes every one of them, "%" included), and a local part is at most 64 characters
# (RFC 5321, 4.5.3.1.1). Without both, "a%a%a%..." made every "a" a start that scanned the rest of
# the run: 4,000 characters cost 0.2-0.5 s.
_EMAIL = re.compile(
    r"(?<![\w.%+-])[A-Za-z0-9](?:[A-Za-z0-9._%+-]{0,62}[A-Za-z0-9_%+-])?@"
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,}(?![\w-])"
)

# An id ends where a word, a hyphenated run (phone numbers, dates) or a decimal (prices) does not go on.
_END = r"(?![\w-]|[.,][0-9])"

# tau-bench style "W" + 7 digits is an order id on its own, with or without "#", in any case.
_W_ID = re.compile(r"(?<![\w#$£€-])#?\s?[Ww][0-9]{7}" + _END)

# After "#": up to 3 letters then 4-12 digits ("#12345", "#NW48213").
_HASH_ID = re.compile(r"(?<![\w&])#\s?[A-Za-z]{0,3}[0-9]{4,12}" + _END)

# After "order", "order number", "order no.", "order #", "order id", "orders": a list of ids
# ("order numbers 12345 and 67890"). Plain numbers count only here, so prices, years and phone
# numbers elsewhere in the message are left alone.
_ONE = r"#?\s?[A-Za-z]{0,3}[0-9]{4,12}" + _END
_KEYWORD_IDS = re.compile(
    r"\border(?:s|'s)?"
    r"(?:\s*(?:number|num|no|nr|id|ref|reference)(?:s|'s)?\.?)?"
    r"(?:\s+(?:is|are|was|were))?"
    r"\s*[:=]?\s*"
    rf"(?P<ids>{_ONE}(?:\s*(?:,|&|/|\band\b|\bor\b|,\s*and\b)\s*{_ONE})*)",
    re.IGNORECASE,
)
_ID_IN_LIST = re.compile(r"#?\s?[A-Za-z]{0,3}[0-9]{4,12}" + _END)


# Postcodes: US ZIP (ZIP+4), UK, Canadian, Dutch, and plain 3-10 digit codes (most of Europe),
# ASCII only. Read only after a postcode word, or when a whole reply to "what is your postcode?" is one.
_POSTCODE = (
    r"(?:[0-9]{5}-[0-9]{4}|[A-Z]{1,2}[0-9][A-Z0-9]? ?[0-9][A-Z]{2}|[A-Z][0-9][A-Z] ?[0-9][A-Z][0-9]"
    r"|[0-9]{4} ?[A-Z]{2}|[0-9]{3,10})"
)
_POSTCODE_WORD = r"(?:zip|zip ?code|zipcode|post ?code|postal ?code)"
_KEYWORD_POSTCODE = re.compile(
    rf"\b{_POSTCODE_WORD}(?:\s+(?:is|was))?\s*[:=]?\s*(?P<code>{_POSTCODE})(?![A-Za-z0-9])",
    re.IGNORECASE | re.ASCII,
)
_BARE_POSTCODE = re.compile(
    rf"\s*(?:(?:it'?s|it is|that'?s|my|the|its|is|{_POSTCODE_WORD})\s*[:=]?\s*)*(?P<code>{_POSTCODE})\s*[.!]?\s*",
    re.IGNORECASE | re.ASCII,
)


def bare_postcode(text: str) -> str | None:
    """The postcode when the whole message is one (``"28110"``, ``"it's SW1A 1AA"``, ``"zip:
    28110."``), upper-cased; else None. For a reply to "what is the postcode on the order?"."""
    if len(text) > 64:
        return None
    match = _BARE_POSTCODE.fullmatch(text)
    return match.group("code").upper() if match else None


def extract_entities(text: str) -> Entities:
    """Order ids and emails in ``text`` (any length; "" gives empty tuples). Never raises.

    Order ids: ``W`` + 7 digits anywhere (``"#W2611340"``, ``"w2611340"``); ``"#"`` + optional
    1-3 letters + 4-12 digits; and plain numbers of 4-12 digits only when introduced by "order",
    "order number", "order no", "order #", "order id" (``"order 48213"`` -> ``"#48213"``). Digits
    inside emails, phone numbers (``555-123-4567``), prices (``$1234.50``) and bare years are not ids.
    Digits are ASCII only. Postcodes: only after a postcode word ("my zip is 28110").
    """
    if not text:
        return Entities()
    emails = tuple(dict.fromkeys(m.group(0).lower() for m in _EMAIL.finditer(text)))
    # Blank the emails out so "w1234567@example.com" does not also read as an order id.
    masked = _EMAIL.sub(lambda m: " " * len(m.group(0)), text)
    found: list[tuple[int, str]] = []
    for pattern in (_W_ID, _HASH_ID):
        found.extend((m.start(), m.group(0)) for m in pattern.finditer(masked))
    for m in _KEYWORD_IDS.finditer(masked):
        base = m.start("ids")
        found.extend((base + s.start(), s.group(0)) for s in _ID_IN_LIST.finditer(m.group("ids")))
    ids: dict[str, None] = {}
    for _, raw in sorted(found, key=lambda pair: pair[0]):
        normal = normalise_order_id(raw.replace(" ", ""))
        if normal is not None:
            ids.setdefault(normal, None)
    postcodes = tuple(dict.fromkeys(m.group("code").upper() for m in _KEYWORD_POSTCODE.finditer(masked)))
    return Entities(order_ids=tuple(ids), emails=emails, postcodes=postcodes)
