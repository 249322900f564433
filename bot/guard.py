"""Input guard: the first step of every turn, before any model runs.

Rejects what no tier should see (empty or oversized text) with a clear reply. The message itself has
already been stored by intake; the guard only decides that it is not routed. The conversation
service passes at most ``max_message_chars`` characters (a longer message is routed on its start),
so on the live path only empty messages stop here; the length check protects other callers.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass


@dataclass(frozen=True)
class GuardResult:
    """``code`` is ``"empty_message"`` or ``"message_too_long"``; ``reply`` is shown to the customer."""

    code: str
    reply: str


def check_input(text: str, max_chars: int) -> GuardResult | None:
    """None when ``text`` may be routed; otherwise why not. ``max_chars`` counts Unicode code points."""
    if not any(ch.strip() and unicodedata.category(ch) not in ("Cf", "Cc") for ch in text):
        # Only whitespace, control or format characters (zero-width spaces, BOMs): nothing to read.
        return GuardResult("empty_message", "It looks like that message was empty. What can I help you with?")
    if len(text) > max_chars:
        return GuardResult(
            "message_too_long",
            f"Your message is {len(text):,} characters long; I can read up to {max_chars:,}. "
            "Could you send the key details in a shorter message? Nothing you sent was lost.",
        )
    return None
