"""The server's numpy TF-IDF gives scikit-learn's numbers, and the server runs without importing
scikit-learn (it costs ~65 MB per process; training still uses it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.feature_extraction.text import TfidfVectorizer

from bot.knowledge import chunk_article, embedding_text, load_documents
from bot.lexical import LexicalIndex
from bot.tfidf import char_wb_analyzer, english_stop_words, word_analyzer
from config.settings import CONFIG_DIR

REPO = Path(__file__).resolve().parents[1]
QUESTIONS = [
    "how long does a refund take?", "gift card balance", "Two-Factor authentication!!", "refnd my ordr",
    "the and of", "", "über café naïve", "我的订单在哪里", "do you ship to Canada", "a",
    "PROMO CODE not working, code SAVE10", "   spaces\tand\ttabs  ",
]


@pytest.fixture(scope="module")
def kb_texts() -> list[str]:
    docs = load_documents(CONFIG_DIR / "kb")
    return [embedding_text(c) for d in docs for c in chunk_article(d.doc_id, d.title, d.markdown)]


def test_the_analyzers_produce_scikit_learns_terms(kb_texts: list[str]) -> None:
    word = TfidfVectorizer(stop_words="english", ngram_range=(1, 2)).build_analyzer()
    char = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5)).build_analyzer()
    ours_word = word_analyzer((1, 2), english_stop_words())
    ours_char = char_wb_analyzer((3, 5))
    for text in kb_texts + QUESTIONS:
        assert ours_word(text) == word(text), text
        assert ours_char(text) == char(text), text


def test_scores_match_scikit_learn(kb_texts: list[str]) -> None:
    views = []
    for vectorizer in (
        TfidfVectorizer(sublinear_tf=True, stop_words="english", ngram_range=(1, 2)),
        TfidfVectorizer(sublinear_tf=True, analyzer="char_wb", ngram_range=(3, 5)),
    ):
        views.append((vectorizer, vectorizer.fit_transform(kb_texts)))
    index = LexicalIndex(kb_texts)
    for question in QUESTIONS:
        expected = sum((m @ v.transform([question]).T).toarray().ravel() for v, m in views) / len(views)
        assert np.allclose(index.scores(question), expected, atol=1e-6), question


def test_the_server_does_not_import_scikit_learn() -> None:
    code = (
        "import sys, helpline.server, helpline.runtime, channels.webchat, bot.router, bot.lexical; "
        "from bot.tfidf import english_stop_words; english_stop_words(); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'sklearn'))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
