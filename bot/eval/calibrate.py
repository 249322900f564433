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

``deflection(t)`` and ``wrong_answer_rate(t)`` are then shares of all cases, as in the eval summary.
:func:`pick_threshold` takes the threshold with the most deflection whose wrong-answer rate is at or
under the target; :func:`write_threshold` stores it in the YAML settings file.

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


@dataclass(frozen=True)
class CurvePoint:
    """Outcome shares at one threshold: ``deflection`` and ``wrong_answer_rate`` over ``cases``."""

    threshold: float
    deflection: float
    wrong_answer_rate: float
    automated: int
    wrong: int
    cases: int


@dataclass(frozen=True)
class CaseAtZero:
    """What calibration needs of one case run at threshold 0."""

    automated: bool
    wrong: bool
    threshold_confidence: float | None  # None: no turn consulted the threshold (always kept)


def from_outcomes(outcomes: Iterable[CaseOutcome]) -> list[CaseAtZero]:
    """The calibration view of outcomes of a run at ``confidence_threshold = 0``."""
    return [CaseAtZero(o.automated, o.wrong, o.threshold_confidence) for o in outcomes]


def point(cases: Sequence[CaseAtZero], threshold: float) -> CurvePoint:
    """Deflection and wrong-answer rate at ``threshold`` (see the module docstring)."""
    kept = [
        c for c in cases
        if c.automated and (c.threshold_confidence is None or c.threshold_confidence >= threshold)
    ]
    wrong = sum(c.wrong for c in kept)
    n = len(cases)
    return CurvePoint(
        threshold=threshold,
        deflection=len(kept) / n if n else 0.0,
        wrong_answer_rate=wrong / n if n else 0.0,
        automated=len(kept),
        wrong=wrong,
        cases=n,
    )


def candidate_thresholds(cases: Sequence[CaseAtZero]) -> list[float]:
    """0, every distinct threshold confidence of an automated case, and 1: between two
    neighbours the outcome cannot change, so these are all the thresholds worth comparing."""
    values = {0.0, 1.0}
    values.update(c.threshold_confidence for c in cases if c.automated and c.threshold_confidence is not None)
    return sorted(values)


def curve(cases: Sequence[CaseAtZero], thresholds: Iterable[float] | None = None) -> list[CurvePoint]:
    """Points at ``thresholds`` (default: :func:`candidate_thresholds`), ascending."""
    grid = sorted(set(thresholds)) if thresholds is not None else candidate_thresholds(cases)
    return [point(cases, t) for t in grid]


def pick_threshold(points: Sequence[CurvePoint], max_wrong: float) -> CurvePoint:
    """The point with the highest deflection among those with ``wrong_answer_rate <= max_wrong``;
    on a tie the highest threshold: the golden set cannot tell the tied thresholds apart, and the
    higher one hands more of the unseen, less confident traffic to a person. Raises ``ValueError`` when no point meets the target (a curve
    that includes threshold 1 always has one unless some answer is wrong at every threshold)."""
    allowed = [p for p in points if p.wrong_answer_rate <= max_wrong + 1e-12]
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
