"""Knowledge-base benchmark: retrieval and grounded answers on two public policy sources.

Each source is ingested the way a support team would ingest it, into a throw-away SQLite data dir:

- ``tau_retail``: ``../shared/data/tau_bench_retail/wiki.md``, one long Markdown policy wiki, split into
  documents by its headings (:func:`bot.knowledge.split_markdown_file`);
- ``abcd``: ``../shared/data/abcd/guidelines_chunks.jsonl``, exported guideline chunks
  (:func:`bot.knowledge.load_jsonl_chunks`).

Golden sets (``bench/golden/tau_retail_kb.jsonl``, ``bench/golden/abcd_kb.jsonl``, the format of
:mod:`bot.eval.golden`): customer-style questions written for this benchmark with the doc ids that
answer them (``relevant_docs``), plus *uncovered* questions (intent ``out_of_scope``, no
``relevant_docs``): in-domain questions the source does not answer, where any answer is a false one.
Split, fixed before any tuning: odd case numbers are ``tune``, even ones ``test``.

**Retrieval tier.** Every question goes through what :class:`bot.router.Router` runs for a retrieval
turn: one query embedding, :meth:`bot.knowledge.KnowledgeBase.search` at depth 5 (hybrid: with the
question's text), then :func:`bot.answers.compose_answer` over the top ``retrieval_top_k`` passages
with the configured threshold. Per source and split:

- ``hit_at_1``, ``hit_at_5``, ``mrr``: over the distinct doc ids of the 5 ranked passages
  (:func:`bot.eval.metrics.ranking_scores`, as ``helpline eval``), answerable questions only;
- ``answer_rate``: answerable questions that got an automated answer (the rest go to a person);
  ``cited_relevant``: answerable questions whose answer cites a relevant doc first;
- ``groundedness`` / ``unscored``: as ``helpline eval`` defines them, over every automated answer
  (:func:`bot.eval.groundedness.score_answer` against all chunks of the cited documents; an answer
  that cannot be scored counts 0 and is counted in ``unscored``);
- ``groundedness_all_questions``: stricter, over every answerable question, an unanswered one
  counting 0 (so it is at most ``answer_rate``); ``unanswered`` counts those;
- ``false_answer_rate``: uncovered questions that got an answer;
- ``latency_ms``: p50/p95 of one question (embed + search + compose), after a warm-up;
- ``threshold_curve``: answer rate, cited-relevant share and false-answer rate at other
  ``HELPLINE_RETRIEVAL_THRESHOLD`` values (0.20-0.60), from the same runs.

**Full router** (``--router``): ``helpline eval --golden FILE --json`` with ``HELPLINE_KB_DIR`` set to
the source, i.e. intake, the shipped intent model and the router's tiers, exactly as live traffic. The
intent model decides the tier first, so a policy question it reads as, say, ``cancel_order`` or
``complaint`` never reaches retrieval; its summary is stored as ``full_router``.

Run: ``.venv/bin/python bench/kb_bench.py [--source tau_retail|abcd] [--split tune|test] [--router]
[--dense-baseline]`` (about a minute on 2 cores, two with ``--router --dense-baseline``); results go to
``bench/results/kb_<source>.json``.
Nothing here is shipped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bot.answers import compose_answer  # noqa: E402
from bot.embeddings import CachedEmbedder, Embedder  # noqa: E402
from bot.eval.golden import GoldenCase, load_golden  # noqa: E402
from bot.eval.groundedness import score_answer  # noqa: E402
from bot.eval.metrics import ranking_scores  # noqa: E402
from bot.knowledge import KnowledgeBase  # noqa: E402
from config.settings import Settings  # noqa: E402
from state.db import open_database  # noqa: E402
from state.migrate import ensure_schema  # noqa: E402
from state.models import KbChunk  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
GOLDEN = ROOT / "bench" / "golden"
SOURCES: dict[str, tuple[Path, Path]] = {
    "tau_retail": (SHARED / "tau_bench_retail" / "wiki.md", GOLDEN / "tau_retail_kb.jsonl"),
    "abcd": (SHARED / "abcd" / "guidelines_chunks.jsonl", GOLDEN / "abcd_kb.jsonl"),
}
DEPTH = 5
"""Passages ranked per question (hit@5 needs 5), as the router records them."""


def split_of(case: GoldenCase) -> str:
    """``tune`` for odd case numbers (``tau-kb-007``), ``test`` for even ones."""
    return "tune" if int(case.id.rsplit("-", 1)[1]) % 2 else "test"


def _percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 2) if values else None


def distinct(doc_ids: list[str]) -> list[str]:
    """Doc ids in first-seen order: the ranking hit@k and MRR are computed over, as in
    ``helpline eval``."""
    return list(dict.fromkeys(doc_ids))


class Grader:
    """Groundedness of an answer against all chunks of the documents it cites, read from the database
    (what ``helpline eval`` does), with :func:`bot.eval.groundedness.score_answer`."""

    def __init__(self, database: Any, version: str, embedder: Embedder) -> None:
        self._db, self._version = database, version
        self._embedder = CachedEmbedder(embedder)
        self._texts: dict[str, list[str]] = {}

    async def texts(self, doc_id: str) -> list[str]:
        if doc_id not in self._texts:
            async with self._db.sessions() as session:
                rows = await session.scalars(
                    select(KbChunk.text)
                    .where(KbChunk.kb_version == self._version, KbChunk.doc_id == doc_id)
                    .order_by(KbChunk.ordinal)
                )
                self._texts[doc_id] = list(rows)
        return self._texts[doc_id]

    async def grade(self, answer: str | None, citations: list[str]) -> dict[str, Any]:
        if answer is None:
            return {"groundedness": 0.0, "unscored_reason": None}
        passages = [t for doc_id in citations for t in await self.texts(doc_id)]
        result = await asyncio.to_thread(score_answer, answer, passages, self._embedder)
        return {
            "groundedness": round(result.score, 4),
            "unscored_reason": result.unscored_reason,
            "unsupported": list(result.unsupported),
        }


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Retrieval, answer and groundedness figures over per-case rows (see the module docstring).

    Answerable rows are those with ``relevant_docs``; the others are questions the knowledge base
    does not cover, where any answer is a false answer.
    """
    answerable = [r for r in rows if r["relevant_docs"]]
    uncovered = [r for r in rows if not r["relevant_docs"]]
    n = len(answerable)
    out: dict[str, Any] = {"cases": n, "uncovered_cases": len(uncovered)}
    scores = ranking_scores(
        [distinct(r["ranked"])[:DEPTH] for r in answerable], [r["relevant_docs"] for r in answerable]
    )
    out.update({k: None if v is None else round(v, 4) for k, v in scores.items()})
    answered = [r for r in answerable if r["answer"] is not None]
    out["answer_rate"] = round(len(answered) / n, 4)
    out["cited_relevant"] = round(
        sum(bool(r["citations"]) and r["citations"][0] in r["relevant_docs"] for r in answerable) / n, 4
    )
    # The issue's (and `helpline eval`'s) groundedness: over every automated answer, an answer that
    # cannot be scored counts 0 and is counted in `unscored`.
    answers = [r for r in rows if r["answer"] is not None]
    out["answers"] = len(answers)
    out["groundedness"] = (
        round(sum(r["groundedness"] for r in answers) / len(answers), 4) if answers else None
    )
    out["unscored"] = sum(r["unscored_reason"] is not None for r in answers)
    # Stricter: over every answerable question, an unanswered one counting 0.
    out["groundedness_all_questions"] = round(sum(r["groundedness"] for r in answerable) / n, 4)
    out["unanswered"] = n - len(answered)
    out["false_answer_rate"] = (
        round(sum(r["answer"] is not None for r in uncovered) / len(uncovered), 4) if uncovered else None
    )
    latencies = [r["latency_ms"] for r in rows]
    out["latency_ms"] = {"p50": _percentile(latencies, 50), "p95": _percentile(latencies, 95)}
    return out


async def _open_kb(source: Path, data_dir: Path, embedder: Embedder) -> tuple[KnowledgeBase, Any]:
    url = f"sqlite+aiosqlite:///{data_dir / 'helpline.db'}"
    await ensure_schema(url, "auto")
    database = open_database(url)
    knowledge = KnowledgeBase(database, embedder)
    await knowledge.ingest(source)
    return knowledge, database


async def run_retrieval_tier(
    knowledge: KnowledgeBase,
    embedder: Embedder,
    cases: list[GoldenCase],
    settings: Settings,
    *,
    hybrid: bool = True,
) -> list[dict[str, Any]]:
    """Each case through embed -> search (depth 5) -> compose_answer, as the router's retrieval tier;
    ``hybrid=False`` searches with the embedding only (the dense baseline)."""
    sentences = CachedEmbedder(embedder)  # the router caches sentence embeddings the same way
    rows = []
    for case in cases:
        started = time.perf_counter()
        vector = (await asyncio.to_thread(embedder.embed, [case.text]))[0]
        depth = max(settings.retrieval_top_k, DEPTH)
        ranked = await knowledge.search(vector, depth, query_text=case.text if hybrid else None)
        passages = ranked[: settings.retrieval_top_k]
        answer = await asyncio.to_thread(
            compose_answer, case.text, vector, passages, knowledge.version or "",
            settings.retrieval_threshold, sentences,
        )
        latency = (time.perf_counter() - started) * 1000
        rows.append(
            {
                "id": case.id,
                "text": case.text,
                "relevant_docs": list(case.relevant_docs),
                "ranked": [p.doc_id for p in ranked],
                "scores": [round(p.score, 4) for p in ranked],
                "answer": answer.text if answer else None,
                "citations": list(answer.citations) if answer else [],
                "latency_ms": round(latency, 2),
            }
        )
    return rows


def run_eval_command(name: str, golden: Path, source: Path) -> dict[str, Any]:
    """``helpline eval --golden GOLDEN --json`` with ``HELPLINE_KB_DIR=SOURCE``: every case through the
    live code path (intake, the shipped intent model, the router's tiers). Returns its JSON summary."""
    env = {**os.environ, "HELPLINE_KB_DIR": str(source)}
    command = [str(ROOT / ".venv" / "bin" / "helpline"), "eval", "--golden", str(golden), "--json"]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    if done.returncode not in (0, 1):
        raise RuntimeError(
            f"helpline eval failed for {name} ({done.returncode}): {done.stderr[-2000:]}"
        )
    summary: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    summary.pop("confused_pairs", None)
    return summary


CURVE_THRESHOLDS = tuple(round(0.20 + 0.05 * i, 2) for i in range(9))
"""Retrieval thresholds of the answer-rate / false-answer curve: 0.20 to 0.60."""


def threshold_curve(rows: list[dict[str, Any]]) -> list[dict[str, float | None]]:
    """What other ``HELPLINE_RETRIEVAL_THRESHOLD`` values would give on these rows: the retrieval tier
    answers exactly when the best passage's score reaches the threshold, and cites its document
    first. Per threshold: answer rate and cited-relevant share on the answerable rows, false-answer
    rate on the uncovered ones."""
    answerable = [r for r in rows if r["relevant_docs"]]
    uncovered = [r for r in rows if not r["relevant_docs"]]
    curve = []
    for threshold in CURVE_THRESHOLDS:
        hits = [r for r in answerable if r["scores"] and r["scores"][0] >= threshold]
        false = [r for r in uncovered if r["scores"] and r["scores"][0] >= threshold]
        curve.append({
            "threshold": threshold,
            "answer_rate": round(len(hits) / len(answerable), 4),
            "cited_relevant": round(
                sum(r["ranked"][0] in r["relevant_docs"] for r in hits) / len(answerable), 4
            ),
            "false_answer_rate": round(len(false) / len(uncovered), 4) if uncovered else None,
        })
    return curve


async def bench_source(
    name: str, split: str, with_router: bool, embedder: Embedder, *, dense_baseline: bool = False
) -> dict[str, Any]:
    """Ingest source ``name``, run its golden cases of ``split`` through the retrieval tier (and, with
    ``dense_baseline``, once more with dense-only search); with ``with_router`` also ``helpline eval``."""
    source, golden = SOURCES[name]
    cases = [c for c in load_golden(golden).cases if split == "all" or split_of(c) == split]
    with tempfile.TemporaryDirectory(prefix=f"kb-bench-{name}-") as tmp:
        data_dir = Path(tmp)
        settings = Settings(data_dir=data_dir, kb_dir=source)
        started = time.perf_counter()
        knowledge, database = await _open_kb(source, data_dir, embedder)
        ingest_s = time.perf_counter() - started
        try:
            grader = Grader(database, knowledge.version or "", embedder)
            warm = embedder.embed(["warm-up question about an order"])[0]
            await knowledge.search(warm, DEPTH, query_text="warm-up question about an order")
            rows = await run_retrieval_tier(knowledge, embedder, cases, settings)
            for row in rows:
                row.update(await grader.grade(row["answer"], row["citations"]))
            parts = ("all", "tune", "test") if split == "all" else (split,)
            by_part = {
                part: [r for r, c in zip(rows, cases, strict=True) if part == "all" or split_of(c) == part]
                for part in parts
            }
            result: dict[str, Any] = {
                "source": str(source.relative_to(ROOT.parent)),
                "golden": str(golden.relative_to(ROOT)),
                "kb_version": knowledge.version,
                "documents": knowledge.documents,
                "chunks": knowledge.chunks,
                "ingest_s": round(ingest_s, 2),
                "settings": {
                    "retrieval_threshold": settings.retrieval_threshold,
                    "retrieval_top_k": settings.retrieval_top_k,
                },
                "retrieval_tier": {part: summarise(part_rows) for part, part_rows in by_part.items()},
                "threshold_curve": {part: threshold_curve(part_rows) for part, part_rows in by_part.items()},
                "cases": rows,
            }
            if dense_baseline:
                dense = await run_retrieval_tier(knowledge, embedder, cases, settings, hybrid=False)
                for row in dense:
                    row.update(await grader.grade(row["answer"], row["citations"]))
                result["retrieval_tier_dense_only"] = {
                    part: summarise([r for r, c in zip(dense, cases, strict=True)
                                     if part == "all" or split_of(c) == part])
                    for part in parts
                }
        finally:
            await database.dispose()
    if with_router:
        result["full_router"] = run_eval_command(name, golden, source)
    return result


def _print(name: str, result: dict[str, Any]) -> None:
    print(f"\n{name}: {result['documents']} documents, {result['chunks']} chunks, {result['kb_version']}")
    print(
        f"{'':16}{'cases':>6}{'hit@1':>7}{'hit@5':>7}{'MRR':>7}{'answer':>8}{'cited ok':>9}"
        f"{'ground.':>8}{'unscored':>9}{'g.all':>7}{'false':>7}{'p50 ms':>8}{'p95 ms':>8}"
    )
    parts = [(f"retrieval/{k}", v) for k, v in result["retrieval_tier"].items()]
    parts += [(f"dense only/{k}", v) for k, v in result.get("retrieval_tier_dense_only", {}).items()]
    for label, m in parts:
        grounded = "n/a" if m["groundedness"] is None else f"{m['groundedness']:.3f}"
        false = "n/a" if m["false_answer_rate"] is None else f"{m['false_answer_rate']:.3f}"
        print(
            f"{label:16}{m['cases']:>6}{m['hit_at_1']:>7.3f}{m['hit_at_5']:>7.3f}{m['mrr']:>7.3f}"
            f"{m['answer_rate']:>8.3f}{m['cited_relevant']:>9.3f}{grounded:>8}{m['unscored']:>9}"
            f"{m['groundedness_all_questions']:>7.3f}{false:>7}"
            f"{m['latency_ms']['p50']:>8}{m['latency_ms']['p95']:>8}"
        )
    for part, curve in result["threshold_curve"].items():
        points = ", ".join(
            f"{p['threshold']:.2f}: {p['answer_rate']:.2f}/{p['false_answer_rate']}" for p in curve
        )
        print(f"threshold -> answer rate/false-answer rate ({part}): {points}")
    if "full_router" in result:
        f = result["full_router"]
        print(
            f"helpline eval (full router): deflection {f['deflection']}, retrieval hit@1 "
            f"{f['retrieval_hit_at_1']} hit@5 {f['retrieval_hit_at_5']} MRR {f['retrieval_mrr']} "
            f"({f['retrieval_searched']} of {f['retrieval_cases']} ranked by a search after the turn, "
            f"not by the router), groundedness {f['groundedness']} over {f['claim_answers']} answers, "
            f"unscored {f['unscored']}; turns per tier "
            f"{({tier: v['turns'] for tier, v in f['latency_ms']['by_tier'].items()})}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", choices=[*SOURCES, "all"], default="all")
    parser.add_argument("--split", choices=["all", "tune", "test"], default="all")
    parser.add_argument(
        "--router", action="store_true",
        help="also run `helpline eval` on each golden set (the full live path, shipped intent model)",
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results", help="folder for kb_<source>.json"
    )
    parser.add_argument(
        "--dense-baseline", action="store_true", help="also run the retrieval tier with dense-only search"
    )
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()

    embedder = Embedder.load()
    names = list(SOURCES) if args.source == "all" else [args.source]
    for name in names:
        result = asyncio.run(bench_source(name, args.split, args.router, embedder, dense_baseline=args.dense_baseline))
        result["machine"] = {"python": platform.python_version(), "platform": platform.platform()}
        result["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        _print(name, result)
        if not args.no_write:
            args.out.mkdir(parents=True, exist_ok=True)
            path = args.out / f"kb_{name}.json"
            path.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
            print(f"wrote {path}")


if __name__ == "__main__":
    main()
