"""Find configured phrases in a tokenised message in one pass: an Aho-Corasick automaton.

Escalation phrases (sensitive topics, "that didn't help") are sequences of normalised tokens; a
phrase word ending in ``*`` matches any token it begins ("harass*": harassed, harassment). Checking
every phrase at every position costs tokens x phrases; here the phrases are compiled once into an
automaton (``pyahocorasick``) over the message's tokens joined by single spaces, so a message costs
one pass over its characters plus a bounded check per hit (at most the phrase's length in tokens).

Phrases keep their configured order: :meth:`PhraseMatcher.first` returns the earliest-listed phrase
that occurs, whatever its position in the message.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass

import ahocorasick


def _token_matches(pattern: str, token: str) -> bool:
    return token.startswith(pattern[:-1]) if pattern.endswith("*") else token == pattern


@dataclass(frozen=True)
class _Entry:
    rank: int  # position in the configured order
    phrase: tuple[str, ...]
    key_tokens: int  # how many leading phrase tokens the automaton key covers


class PhraseMatcher:
    """Phrases (tuples of tokens, in priority order) compiled for linear-time search.

    Tokens never contain spaces (they come from the escalation tokenizer), which is what makes the
    space-joined text a faithful image of the token sequence.
    """

    def __init__(self, phrases: Sequence[tuple[str, ...]]) -> None:
        self.phrases = tuple(tuple(p) for p in phrases)
        self._automaton = ahocorasick.Automaton()
        keys: dict[str, list[_Entry]] = {}
        for rank, phrase in enumerate(self.phrases):
            if not phrase or any(" " in t or not t.rstrip("*") for t in phrase):
                raise ValueError(f"phrase {phrase!r}: tokens must be non-empty and hold no spaces")
            # The key is the phrase up to its first prefix word (inclusive); the rest, if any, is
            # checked token by token at each hit.
            cut = next((i + 1 for i, t in enumerate(phrase) if t.endswith("*")), len(phrase))
            head = phrase[:cut]
            key = " " + " ".join(head)
            key = key[:-1] if key.endswith("*") else key + " "
            keys.setdefault(key, []).append(_Entry(rank, phrase, cut))
        for key, entries in keys.items():
            self._automaton.add_word(key, tuple(entries))
        if keys:
            self._automaton.make_automaton()
        self._empty = not keys

    def first(self, tokens: Sequence[str]) -> tuple[str, ...] | None:
        """The earliest-listed phrase occurring in ``tokens`` as consecutive tokens, or None."""
        hit = self._first_rank(tokens)
        return None if hit is None else self.phrases[hit]

    def first_rank(self, tokens: Sequence[str]) -> int | None:
        """Position (in the configured order) of the earliest-listed phrase found, or None."""
        return self._first_rank(tokens)

    def _first_rank(self, tokens: Sequence[str]) -> int | None:
        if self._empty or not tokens:
            return None
        text = " " + " ".join(tokens) + " "
        starts: list[int] = []
        offset = 1
        for token in tokens:
            starts.append(offset)
            offset += len(token) + 1
        best: int | None = None
        for end, entries in self._automaton.iter(text):
            for entry in entries:
                if best is not None and entry.rank >= best:
                    continue
                # The key began with the space before the phrase's first token.
                start_char = end - self._key_length(entry) + 2
                index = bisect_right(starts, start_char) - 1
                if index < 0 or starts[index] != start_char:
                    continue
                if self._rest_matches(entry, tokens, index):
                    best = entry.rank
                    if best == 0:
                        return 0
        return best

    @staticmethod
    def _key_length(entry: _Entry) -> int:
        head = entry.phrase[: entry.key_tokens]
        length = 1 + sum(len(t) for t in head) + len(head) - 1  # " " + tokens joined by spaces
        return length - 1 if head[-1].endswith("*") else length + 1

    @staticmethod
    def _rest_matches(entry: _Entry, tokens: Sequence[str], index: int) -> bool:
        phrase = entry.phrase
        if index + len(phrase) > len(tokens):
            return False
        # The key matched the head as text; a prefix word must still be checked as a token (and
        # the rest of the phrase, after the first prefix word, token by token).
        return all(_token_matches(p, tokens[index + k]) for k, p in enumerate(phrase))
