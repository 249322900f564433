"""Confidence-threshold calibration: the deflection / wrong-answer curve and the threshold it picks.

How the curve is measured (no guessing): the golden set is run once through the live code path with
``confidence_threshold = 0``, so every case gets the automated outcome the bot would give it if the
router's low-confidence check never fired. The threshold only acts at that check, which sends a turn
to a person when its intent confidence is below it. So at a threshold ``t``:

- a case automated at ``t = 0`` stays automated (with the same answer, right or wrong) when every
  turn that went through the check had confidence ``>= t`` (its *threshold confidence*, the lowest
  of them, is ``>= t``; see :mod:`bot.eval.outcome`); otherwise a person takes it;
- a case escalated at ``t = 0`` (a trigger, a human-tier intent, no knowledge-base match) stays
  escalated: raising the threshold only adds escalations.

``deflection(t)`` is the share of cases kept automated, and ``wrong_among_answered(t)`` the share of
wrong answers among the kept cases that were *answered* (:attr:`CaseOutcome.answered`: not a
clarifying question or a polite decline). The target ``--max-wrong`` is about what customers are
told, so it is not diluted by the cases handed to a person or asked to clarify.

The replay treats a case whose confidence falls below ``t`` as handed to a person. A router that
instead asks a clarifying question below the threshold keeps such a case automated: the replayed
deflection is then lower than the real one and the replayed wrong-answer share the same (neither
answers), which is why the picked threshold is re-run before it is written.

**Out-of-scope share.** Both are weighted so that out-of-scope cases (:attr:`GoldenCase.out_of_scope`)
carry ``oos_share`` of the total weight and the others ``1 - oos_share``: a golden set with 10%
out-of-scope cases can be calibrated for traffic with 30%. ``oos_share`` None weighs every case
alike (the golden set's own share, :func:`own_oos_share`). A threshold picked at one share
overshoots its target when traffic has more out-of-scope messages, so :func:`at_shares` reports the
picked threshold at other shares too.

:func:`pick_threshold` takes the threshold with the most deflection whose wrong-answer rate is at or
under the target; :func:`write_threshold` stores it in the YAML settings file (``helpline eval``
first re-runs the set at that threshold and refuses to write it when the measured rate misses the
target).

Must not: run cases (the caller passes outcomes) or read the environment.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bot.eval.outcome import CaseOutcome

ROUNDING = 4
"""Confidences are recorded rounded to 4 decimals (see the router's event payload)."""


DEFAULT_OTHER_SHARES = (0.1, 0.25, 0.5)
"""Out-of-scope shares at which ``helpline eval --calibrate`` reports the picked threshold."""


@dataclass(frozen=True)
class CurvePoint:
    """Outcome at one threshold: ``deflection`` (weighted share of cases kept automated) and
    ``wrong_among_answered`` (weighted share of wrong answers among the kept answered ones; 0 when
    none is), at
    out-of-scope share ``oos_share`` (None: the set's own). ``automated``, ``wrong`` and ``cases``
    are unweighted counts."""

    threshold: float
    deflection: float
    wrong_among_answered: float
    automated: int
    wrong: int
    cases: int
    oos_share: float | None = None


@dataclass(frozen=True)
class CaseAtZero:
    """What calibration needs of one case run at threshold 0."""

    automated: bool
    wrong: bool
    threshold_confidence: float | None  # None: no turn consulted the threshold (always kept)
    out_of_scope: bool = False
    answered: bool = True  # when automated: the last message got an answer or a question


def from_outcomes(outcomes: Iterable[CaseOutcome]) -> list[CaseAtZero]:
    """The calibration view of outcomes of a run at ``confidence_threshold = 0``."""
    return [CaseAtZero(o.automated, o.wrong, o.threshold_confidence, o.case.out_of_scope, o.answered)
            for o in outcomes]


def own_oos_share(cases: Sequence[CaseAtZero]) -> float:
    """Share of out-of-scope cases in ``cases`` (0 for none)."""
    return sum(c.out_of_scope for c in cases) / len(cases) if cases else 0.0


def weights(cases: Sequence[CaseAtZero], oos_share: float | None) -> list[float]:
    """One weight per case, summing to ``len(cases)``: out-of-scope cases share ``oos_share`` of it
    and the others ``1 - oos_share``; all 1 when ``oos_share`` is None.

    Raises:
        ValueError: ``oos_share`` outside [0, 1], or a positive share for a set with no
            out-of-scope case (or a share below 1 for a set with only out-of-scope cases).
    """
    n = len(cases)
    if oos_share is None:
        return [1.0] * n
    n_oos = sum(c.out_of_scope for c in cases)
    check_oos_share(n_oos, n, oos_share)
    return [n * oos_share / n_oos if c.out_of_scope else n * (1 - oos_share) / (n - n_oos) for c in cases]


def check_oos_share(out_of_scope: int, cases: int, oos_share: float) -> None:
    """Raise ``ValueError`` (naming the problem) unless a set of ``cases`` cases, ``out_of_scope``
    of them out of scope, can be weighted to ``oos_share``."""
    if not 0.0 <= oos_share <= 1.0:
        raise ValueError(f"the out-of-scope share must be in [0, 1], got {oos_share}")
    if oos_share > 0 and out_of_scope == 0:
        raise ValueError(f"out-of-scope share {oos_share}: the golden set has no out-of-scope case to weight")
    if oos_share < 1 and out_of_scope == cases:
        raise ValueError(f"out-of-scope share {oos_share}: the golden set has only out-of-scope cases")


def point(cases: Sequence[CaseAtZero], threshold: float, oos_share: float | None = None) -> CurvePoint:
    """Deflection and wrong answers among answered at ``threshold`` (see the module docstring).
    Raises ``ValueError`` as :func:`weights` does."""
    w = weights(cases, oos_share)
    kept = [
        i for i, c in enumerate(cases)
        if c.automated and (c.threshold_confidence is None or c.threshold_confidence >= threshold)
    ]
    answered_weight = sum(w[i] for i in kept if cases[i].answered)
    wrong_weight = sum(w[i] for i in kept if cases[i].wrong)
    total = sum(w)
    return CurvePoint(
        threshold=threshold,
        deflection=sum(w[i] for i in kept) / total if total else 0.0,
        wrong_among_answered=wrong_weight / answered_weight if answered_weight else 0.0,
        automated=len(kept),
        wrong=sum(cases[i].wrong for i in kept),
        cases=len(cases),
        oos_share=oos_share,
    )


def at_shares(cases: Sequence[CaseAtZero], threshold: float, shares: Iterable[float]) -> list[CurvePoint]:
    """The outcome at ``threshold`` for each out-of-scope share (empty when the set has no
    out-of-scope or no in-scope case: nothing to re-weight)."""
    n_oos = sum(c.out_of_scope for c in cases)
    if n_oos == 0 or n_oos == len(cases):
        return []
    return [point(cases, threshold, share) for share in shares]


def candidate_thresholds(cases: Sequence[CaseAtZero]) -> list[float]:
    """0, every distinct threshold confidence of an automated case, and 1: between two
    neighbours the outcome cannot change, so these are all the thresholds worth comparing."""
    values = {0.0, 1.0}
    values.update(c.threshold_confidence for c in cases if c.automated and c.threshold_confidence is not None)
    return sorted(values)


def curve(cases: Sequence[CaseAtZero], thresholds: Iterable[float] | None = None,
          oos_share: float | None = None) -> list[CurvePoint]:
    """Points at ``thresholds`` (default: :func:`candidate_thresholds`), ascending, at
    ``oos_share``."""
    grid = sorted(set(thresholds)) if thresholds is not None else candidate_thresholds(cases)
    return [point(cases, t, oos_share) for t in grid]


def pick_threshold(points: Sequence[CurvePoint], max_wrong: float) -> CurvePoint:
    """The point with the highest deflection among those with ``wrong_among_answered <= max_wrong``;
    on a tie the highest threshold: the golden set cannot tell the tied thresholds apart, and the
    higher one hands more of the unseen, less confident traffic to a person. Raises ``ValueError``
    when no point meets the target (a curve that includes threshold 1 always has one unless some
    answer is wrong at every threshold)."""
    allowed = [p for p in points if p.wrong_among_answered <= max_wrong + 1e-12]
    if not allowed:
        raise ValueError(f"no threshold keeps the wrong-answer rate at or under {max_wrong}")
    return max(allowed, key=lambda p: (p.deflection, p.threshold))


def live_threshold(picked: float) -> float:
    """The value to configure for a picked (recorded, 4-decimal) confidence: half a rounding step
    below it, so the case whose rounded confidence set it is still kept in live traffic (the
    router compares the unrounded value). 0 stays 0."""
    if picked <= 0:
        return 0.0
    return round(max(0.0, picked - 0.5 * 10**-ROUNDING), ROUNDING + 1)


def ensure_config_file(path: Path) -> None:
    """Create an empty settings file at ``path`` when there is none, so that settings (which refuse
    a ``HELPLINE_CONFIG_FILE`` that does not exist) load before calibration writes into it."""
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("", encoding="utf-8")


_KEY = re.compile(r"^confidence_threshold\s*:")


class TargetMissed(ValueError):
    """The run at a picked threshold measured more wrong answers among answered than the target;
    nothing was written. The message gives both numbers and the file left unchanged."""


def write_confirmed(path: Path, threshold: float, measured: CurvePoint, max_wrong: float) -> None:
    """Write ``threshold`` to ``path`` (:func:`write_threshold`) only when ``measured`` (the outcome
    of a real run at that threshold) keeps wrong answers among answered at or under ``max_wrong``.

    Raises:
        TargetMissed: the measured share is over ``max_wrong``; ``path`` is not touched.
    """
    if measured.wrong_among_answered > max_wrong + 1e-12:
        raise TargetMissed(
            f"at the picked threshold {threshold} the re-run measured wrong answers among answered "
            f"{measured.wrong_among_answered:.4f}, over the target {max_wrong}; {path} not changed"
        )
    write_threshold(path, threshold)


def write_threshold(path: Path, threshold: float) -> None:
    """Set ``confidence_threshold: <threshold>`` in the YAML settings file ``path``.

    The file is created when missing; an existing ``confidence_threshold`` line is replaced in
    place and every other line (other settings, comments) is kept as it was. Raises ``ValueError``
    for a threshold outside [0, 1].
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"a confidence threshold must be in [0, 1], got {threshold}")
    path = Path(path)
    line = f"confidence_threshold: {threshold}\n"
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True) if path.exists() else []
    for i, existing in enumerate(lines):
        if _KEY.match(existing):
            lines[i] = line
            break
    else:
        if lines and not lines[-1].endswith("\n"):
            lines[-1] += "\n"
        lines.append(line)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(lines), encoding="utf-8")
