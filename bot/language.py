"""Which language a customer wrote in, so messages the bot cannot answer go to a person tagged with it.

Uses lingua (``lingua-language-detector``, Apache-2.0; its n-gram models ship inside the wheel, nothing
is downloaded). The detector is built once, over a configurable set of candidate languages, with all
models loaded up front so no turn pays for loading. Low-accuracy mode (trigrams only) is the default:
with the 27 default candidates it loads in about 0.1 s and adds about 60 MB, where high-accuracy
mode needs about 1.7 s and 650 MB. On its own it mistakes short English support messages
for Norwegian, Dutch or French ("I need to swap an item of order ..." -> Dutch), so when English is
supported a message whose words are mostly English words (:func:`english_words`) is never judged
foreign. Measured on the 5,332 English messages of the Bitext test set and 55 real support messages
in 12 other languages (``bench/escalation_bench.py``; numbers in the README).

A message only counts as written in an unsupported language when it is long enough to tell
(``min_words`` words of letters after order ids, emails, links and numbers are removed, or
``min_cjk_chars`` characters of a script written without spaces), its most likely language is not
supported, the supported languages together get at most ``max_supported_confidence``, and (with
English supported) under ``max_english_share`` of its words are English words. "ok", "merci",
"danke schön" and an order number never count.

Three guards keep English messages that lingua misreads from going to a person (measured in
``bench/escalation_bench.py``): a short message (under ``short_words`` words) needs a top
confidence of at least ``short_min_confidence`` ("Can I resent my passcode?" reads as German at
0.65, while 4-5 word German, Italian or Portuguese questions read at 0.86-1.0); a word made of two
English words of 4+ letters counts as English ("passcode", "giftwrap"); and names (a capitalised word
that does not open a sentence: "Tomomi Nishiyama lives at Rua do Arenque, Goiânia") are left out of
the English share, and a message needs ``min_common_words`` other words to be judged at all.

Must not: route, reply, or touch tickets; it only names a language.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from lingua import IsoCode639_1, LanguageDetector, LanguageDetectorBuilder

# A short line in the customer's language, placed before the English handoff reply. It says only what
# is true whatever the team speaks: the bot cannot answer in that language, a person has the message,
# and the answer comes here. Languages without a line get the English reply alone.
HANDOFF_NOTICES = {
    "de": "Unser digitaler Assistent kann leider nicht auf Deutsch antworten. Wir haben Ihre Nachricht "
    "an unser Support-Team weitergeleitet; die Antwort erhalten Sie hier.",
    "fr": "Notre assistant virtuel ne peut malheureusement pas répondre en français. Nous avons transmis "
    "votre message à notre équipe d'assistance ; vous recevrez la réponse ici.",
    "es": "Lamentablemente, nuestro asistente virtual no puede responder en español. Hemos enviado su "
    "mensaje a nuestro equipo de atención al cliente; recibirá la respuesta aquí.",
    "it": "Purtroppo il nostro assistente virtuale non può rispondere in italiano. Abbiamo inoltrato il "
    "suo messaggio al nostro team di assistenza; riceverà la risposta qui.",
    "pt": "Infelizmente, nosso assistente virtual não consegue responder em português. Encaminhamos sua "
    "mensagem para nossa equipe de suporte; você receberá a resposta aqui.",
    "nl": "Helaas kan onze virtuele assistent niet in het Nederlands antwoorden. We hebben uw bericht "
    "doorgestuurd naar ons supportteam; u krijgt het antwoord hier.",
}

# Removed before detection: they carry no language and would dilute short messages.
_NOISE = re.compile(
    r"\{\{[^}]*\}\}"  # template placeholders
    r"|https?://\S+|www\.\S+"  # links
    r"|[\w.+-]+@[\w-]+(?:\.[\w-]+)+"  # emails
    r"|#?\b[A-Za-z]{0,3}\d[\w-]*"  # order ids, numbers, codes
)
_WORD = re.compile(r"[^\W\d_]{2,}")
_SENTENCE_END = re.compile(r"[.!?]\s")
COMPOUND_PART = 4
"""Letters each half of a compound needs for the compound to count as an English word."""
SAMPLE_CHARS = 400
"""Characters of a message (after ids, emails and links are removed) the language is judged on."""
# Scripts written without spaces between words: Han, Hiragana, Katakana, Hangul, Thai.
_NO_SPACE_SCRIPT = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\u0e00-\u0e7f]")


@dataclass(frozen=True)
class LanguageGuess:
    """The detected language of one message: ``code`` ISO 639-1 lower case (``"de"``), ``confidence``
    lingua's relative confidence in it, in [0, 1] (the candidates' values sum to 1),
    ``supported_confidence`` the summed confidence of the supported languages, ``words`` the words of
    letters the decision was made on, ``english_share`` the share of those words, names left out, that
    are English words (:func:`is_english_word`), ``common_words`` how many words are not names."""

    code: str
    confidence: float
    supported_confidence: float
    words: int
    english_share: float
    common_words: int = 0


@lru_cache(maxsize=1)
def english_words() -> frozenset[str]:
    """Whole words of the embedding model's uncased WordPiece vocabulary: about 22,500 lower-case
    English words (plus some names and loanwords), read from the pinned ``tokenizer.json`` that
    :mod:`bot.embeddings` verifies. Raises ``ModelIntegrityError`` when that package is missing."""
    from bot.embeddings import default_tokenizer_path

    vocab = json.loads(default_tokenizer_path().read_text(encoding="utf-8"))["model"]["vocab"]
    return frozenset(w for w in vocab if w.isalpha() and w.isascii() and not w.startswith("##"))


def is_english_word(word: str, known: frozenset[str] | None = None) -> bool:
    """Whether ``word`` (any case) is in ``known`` (default :func:`english_words`) or is two such words
    of at least :data:`COMPOUND_PART` letters each written together ("passcode", "giftwrap")."""
    known = english_words() if known is None else known
    w = word.lower()
    if w in known:
        return True
    return any(w[:k] in known and w[k:] in known for k in range(COMPOUND_PART, len(w) - COMPOUND_PART + 1))


def _common_words(cleaned: str) -> list[str]:
    """The words of ``cleaned`` that are not names: a capitalised word (not all capitals) that does not
    open the text or a sentence is a name or a place, and says nothing of the writer's language."""
    out = []
    end = None  # where the previous word ended; None before the first word
    for m in _WORD.finditer(cleaned):
        w = m.group()
        opening = end is None or _SENTENCE_END.search(cleaned, end, m.start()) is not None
        end = m.end()
        if w[0].isupper() and not w.isupper() and not opening:
            continue
        out.append(w)
    return out


def _iso(code: str, setting: str) -> IsoCode639_1:
    try:
        return IsoCode639_1.from_str(code.strip().lower())
    except ValueError:
        raise ValueError(
            f"{setting}: {code!r} is not an ISO 639-1 language code lingua knows (e.g. en, de, fr)"
        ) from None


class LanguageGate:
    """Names the language of a customer message when it is one the bot does not support.

    Build once (the constructor loads every candidate's models); :meth:`unsupported` is then
    thread-safe and takes about 0.06 ms per message (low accuracy; 0.17 ms high).

    A message is in an unsupported language when it is long enough to tell (see :meth:`guess`), the
    most likely candidate is unsupported, the supported languages together get a relative
    confidence of at most ``max_supported_confidence``, and (when English is supported) fewer than
    ``max_english_share`` of its words are English words, with the guards of the module docstring
    (``short_words``, ``short_min_confidence``, ``min_common_words``). Asking "how sure are we it is not ours?"
    rather than "how sure are we it is German?" matters: for a short French sentence lingua spreads
    its confidence over French, Italian and Spanish, yet gives English almost nothing.

    Raises ``ValueError`` naming the setting when a code is unknown to lingua, when fewer than two
    candidates are given, or when a supported language is not among the candidates.
    """

    def __init__(
        self,
        supported: Sequence[str],
        candidates: Sequence[str],
        *,
        low_accuracy: bool = True,
        min_words: int = 4,
        min_cjk_chars: int = 6,
        max_supported_confidence: float = 0.05,
        max_english_share: float = 0.6,
        short_words: int = 6,
        short_min_confidence: float = 0.8,
        min_common_words: int = 3,
    ) -> None:
        self.supported = frozenset(c.strip().lower() for c in supported)
        self.candidates = tuple(dict.fromkeys(c.strip().lower() for c in candidates))
        if not self.supported:
            raise ValueError("supported_languages: name at least one language (e.g. en)")
        isos = [_iso(c, "language_candidates") for c in self.candidates]
        for code in self.supported:
            _iso(code, "supported_languages")
        missing = sorted(self.supported - set(self.candidates))
        if missing:
            raise ValueError(
                f"language_candidates must include every supported language; missing: {', '.join(missing)}"
            )
        if len(isos) < 2:
            raise ValueError("language_candidates: name at least two languages to choose between")
        self.min_words = min_words
        self.min_cjk_chars = min_cjk_chars
        self.max_supported_confidence = max_supported_confidence
        self.max_english_share = max_english_share
        self.short_words = short_words
        self.short_min_confidence = short_min_confidence
        self.min_common_words = min_common_words
        self._english = english_words() if "en" in self.supported else frozenset()
        self.low_accuracy = low_accuracy
        builder = LanguageDetectorBuilder.from_iso_codes_639_1(*isos).with_preloaded_language_models()
        if low_accuracy:
            builder = builder.with_low_accuracy_mode()
        self._detector: LanguageDetector = builder.build()
        self._lock = threading.Lock()

    def guess(self, text: str) -> LanguageGuess | None:
        """The most likely language of ``text``, or None when the text is too short to tell (fewer
        than ``min_words`` words of two or more letters once ids, emails, links and numbers are
        removed, and fewer than ``min_cjk_chars`` characters of a script written without spaces)."""
        # A sample is enough to tell a language, and lingua's cost grows with the text.
        cleaned = _NOISE.sub(" ", text[: SAMPLE_CHARS * 2])[:SAMPLE_CHARS]
        found = _WORD.findall(cleaned)
        words = len(found)
        cjk = len(_NO_SPACE_SCRIPT.findall(cleaned))
        if words < self.min_words and cjk < self.min_cjk_chars:
            return None
        with self._lock:  # the detector is shared by the server's worker threads
            values = self._detector.compute_language_confidence_values(cleaned)
        if not values:
            return None
        supported = sum(
            float(v.value) for v in values if v.language.iso_code_639_1.name.lower() in self.supported
        )
        top = values[0]
        common = _common_words(cleaned)
        return LanguageGuess(
            code=top.language.iso_code_639_1.name.lower(),
            confidence=float(top.value),
            supported_confidence=supported,
            words=words,
            english_share=(
                sum(is_english_word(w, self._english) for w in common) / max(1, len(common)) if self._english else 0.0
            ),
            common_words=len(common),
        )

    def unsupported(self, text: str) -> LanguageGuess | None:
        """The guess for ``text`` when it is in an unsupported language (rule in the class docstring);
        None for supported languages, unsure guesses and short texts."""
        found = self.guess(text)
        if (
            found is None
            or found.code in self.supported
            or found.supported_confidence > self.max_supported_confidence
            or (self._english and found.english_share >= self.max_english_share)
        ):
            return None
        if found.words >= self.min_words and found.common_words < self.min_common_words:
            return None  # mostly names: an address, a signature
        if found.words < self.short_words and found.confidence < self.short_min_confidence:
            return None
        return found


def handoff_notice(code: str) -> str | None:
    """A one-line notice in language ``code`` (ISO 639-1) saying the bot cannot answer in it and a
    person has the message; None when no notice is written for that language."""
    return HANDOFF_NOTICES.get(code)
