"""``helpline eval``: load a golden set, run it, print the summary, report, gate, calibrate.

The CLI (:mod:`helpline.cli`) only parses options into an :class:`EvalOptions` and calls
:func:`run_command`, which returns the exit status: 0 done (gate passed, threshold written), 1 a
gate failed, or ``--calibrate`` found no threshold meeting ``--max-wrong`` or measured the picked one
missing it on the re-run (nothing written). Bad input (golden file, gates file, price file, label
map, settings, an option) raises :class:`EvalInputError`.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bot.eval import calibrate
from bot.eval.gates import DEFAULT_GATES, Gate, GateError, check_gates, load_gates
from bot.eval.golden import GoldenError, GoldenSet, load_golden
from bot.eval.metrics import summarise
from bot.eval.prices import DEFAULT_PRICES, PriceError, PriceTable, load_prices
from bot.eval.report import (
    curve_lines,
    failure_lines,
    gate_lines,
    summary_lines,
    write_report,
)
from bot.eval.runner import DEFAULT_CONCURRENCY, EvalRun, eval_settings, evaluate
from config.settings import Settings

DEFAULT_CONFIG_OUT = Path("helpline.yaml")
"""Where ``--calibrate`` writes the threshold when no ``HELPLINE_CONFIG_FILE`` is set."""


class EvalInputError(ValueError):
    """A golden, gates or price file, or an option, is invalid; the message says where."""


@dataclass(frozen=True)
class EvalOptions:
    golden: Path
    model_dir: Path | None = None
    report_dir: Path | None = None
    gate: bool = False
    gates_file: Path = DEFAULT_GATES
    json_line: bool = False
    calibrate: bool = False
    max_wrong: float = 0.02  # wrong answers among answered (automated) cases
    oos_share: float | None = None  # out-of-scope share --calibrate weighs cases to; None: the set's own
    label_map: Path | None = None  # file label -> intent (YAML or JSON), as helpline replay reads it
    config_file: Path | None = None  # HELPLINE_CONFIG_FILE, where --calibrate writes
    env_threshold: bool = False  # HELPLINE_CONFIDENCE_THRESHOLD is set (it wins over the file)
    concurrency: int = DEFAULT_CONCURRENCY
    database_url: str | None = None
    prices_file: Path = DEFAULT_PRICES


def _load_inputs(settings: Settings, options: EvalOptions) -> tuple[GoldenSet, list[Gate], PriceTable]:
    from bot.intent_model import IntentConfigError, load_intents
    from helpline.replay import ReplayInputError, load_label_map

    try:
        known = load_intents(settings.intents_file, min_examples=0)
        label_map = load_label_map(options.label_map) if options.label_map is not None else None
    except (IntentConfigError, ReplayInputError, OSError) as exc:
        raise EvalInputError(str(exc)) from None
    try:
        golden = load_golden(options.golden, known_intents=known, label_map=label_map)
        gates = load_gates(options.gates_file) if options.gate else []
        prices = load_prices(options.prices_file)
    except (GoldenError, GateError, PriceError, OSError) as exc:
        raise EvalInputError(str(exc)) from None
    if options.calibrate and not 0 <= options.max_wrong <= 1:
        raise EvalInputError(f"--max-wrong must be in [0, 1], got {options.max_wrong}")
    if options.oos_share is not None:
        try:
            calibrate.check_oos_share(sum(c.out_of_scope for c in golden.cases), len(golden.cases),
                                      options.oos_share)
        except ValueError as exc:
            raise EvalInputError(f"--oos-share: {exc} ({options.golden})") from None
    if options.concurrency < 1:
        raise EvalInputError(f"--concurrency must be at least 1, got {options.concurrency}")
    return golden, gates, prices


async def _pass(golden: GoldenSet, settings: Settings, options: EvalOptions,
                threshold: float | None, label: str) -> EvalRun:
    from tqdm import tqdm

    from bot.intent_model import IntentConfigError, IntentModelError

    try:
        with (
            eval_settings(settings, model_dir=options.model_dir, database_url=options.database_url,
                          threshold=threshold) as run_settings,
            tqdm(total=len(golden.cases), desc=label, unit="case", file=sys.stderr, disable=None,
                 leave=False) as bar,
        ):
            return await evaluate(golden.cases, run_settings, concurrency=options.concurrency,
                                  progress=bar.update)
    except (IntentConfigError, IntentModelError) as exc:  # the configuration under test is unusable
        raise EvalInputError(str(exc)) from None


def run_command(settings: Settings, options: EvalOptions, echo: Callable[[str], None]) -> int:
    """Run ``helpline eval`` with ``options``; ``echo`` prints a line to stdout. Returns the exit
    status (1 when ``--gate`` found a failed threshold, else 0).

    Raises:
        EvalInputError: invalid golden/gates/price file or option.
    """
    golden, gates, prices = _load_inputs(settings, options)
    warning = golden.warning()
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    source = str(options.golden)

    async def run() -> tuple[EvalRun, EvalRun | None]:
        if options.calibrate:
            zero = await _pass(golden, settings, options, 0.0, "eval (threshold 0)")
            return zero, None
        main = await _pass(golden, settings, options, None, "eval")
        zero = None
        if options.report_dir is not None:
            zero = main if main.threshold == 0 else await _pass(
                golden, settings, options, 0.0, "eval (threshold 0, for the curve)"
            )
        return main, zero

    first, zero = asyncio.run(run())
    if options.calibrate:
        return _calibrate(golden, settings, options, first, prices, echo, source)

    summary = summarise(first, prices)
    points = (calibrate.curve(calibrate.from_outcomes(zero.outcomes), oos_share=options.oos_share)
              if zero is not None else [])
    results = check_gates(summary, gates) if options.gate else []
    for line in summary_lines(summary, source):
        echo(line)
    failures = failure_lines(first.outcomes)
    if failures:
        echo("failed cases:")
        for line in failures:
            echo(line)
    if options.report_dir is not None:
        path = write_report(options.report_dir, source=source, summary=summary,
                            outcomes=first.outcomes, points=points, gates=results)
        echo(f"report: {path}")
    if options.gate:
        for line in gate_lines(results):
            echo(line)
    failed = [r for r in results if not r.passed]
    if options.json_line:
        if options.gate:
            summary = {**summary, "gate": {"passed": not failed,
                                           "failed": [r.describe() for r in failed]}}
        echo(json.dumps(summary, separators=(",", ":")))
    return 1 if failed else 0


def _calibrate(golden: GoldenSet, settings: Settings, options: EvalOptions, zero: EvalRun,
               prices: PriceTable, echo: Callable[[str], None], source: str) -> int:
    cases = calibrate.from_outcomes(zero.outcomes)
    share = options.oos_share
    own = calibrate.own_oos_share(cases)
    points = calibrate.curve(cases, oos_share=share)
    echo(f"Calibration on {len(cases)} cases from {source} (each run once at confidence threshold 0), "
         f"weighted to out-of-scope share {own if share is None else share:.3f} (the set's own: {own:.3f}):")
    try:
        picked = calibrate.pick_threshold(points, options.max_wrong)
    except ValueError:
        for line in curve_lines(points):
            echo(line)
        print(f"Error: no confidence threshold keeps wrong answers among answered at or under "
              f"{options.max_wrong}; nothing written", file=sys.stderr)
        return 1
    threshold = calibrate.live_threshold(picked.threshold)
    for line in curve_lines(points, picked):
        echo(line)
    echo(f"picked threshold {threshold} (lowest kept confidence {picked.threshold}): deflection "
         f"{picked.deflection:.3f}, wrong among answered {picked.wrong_among_answered:.4f} "
         f"(target <= {options.max_wrong})")
    others = calibrate.at_shares(cases, picked.threshold, calibrate.DEFAULT_OTHER_SHARES)
    for other in others:
        echo(f"  at out-of-scope share {other.oos_share:.2f}: deflection {other.deflection:.3f}, "
             f"wrong among answered {other.wrong_among_answered:.4f}")
    if picked.deflection == 0:
        echo("warning: no threshold deflects anything at this target: every case would go to a person")

    # Confirm on the live path at the picked threshold: other rules may read the threshold too.
    check = asyncio.run(_pass(golden, settings, options, threshold, "eval (picked threshold)"))
    summary = summarise(check, prices)
    measured = replace(calibrate.point(calibrate.from_outcomes(check.outcomes), 0.0, share),
                       threshold=threshold)
    echo(f"measured at {threshold}: deflection {measured.deflection:.3f}, wrong among answered "
         f"{measured.wrong_among_answered:.4f}")
    if (abs(measured.deflection - picked.deflection) > 1e-9
            or abs(measured.wrong_among_answered - picked.wrong_among_answered) > 1e-9):
        # The router asks a clarifying question below the threshold instead of handing over, or
        # another rule reads the threshold: the measured run is the one to trust.
        echo("note: the re-run differs from the replayed curve (a router rule other than the "
             "low-confidence handoff reads the threshold); the re-run's numbers decide")
    target = options.config_file or DEFAULT_CONFIG_OUT
    try:
        calibrate.write_confirmed(target, threshold, measured, options.max_wrong)
        written = True
    except calibrate.TargetMissed as exc:
        print(f"Error: {exc}", file=sys.stderr)
        written = False
    if written:
        echo(f"wrote confidence_threshold: {threshold} to {target}")
        if options.config_file is None:
            echo(f"  to use it: export HELPLINE_CONFIG_FILE={target.resolve()}")
        if options.env_threshold:
            echo("  note: HELPLINE_CONFIDENCE_THRESHOLD is set in the environment and wins over the file")

    if options.report_dir is not None:
        path = write_report(options.report_dir, source=source, summary=summary,
                            outcomes=check.outcomes, points=points, max_wrong=options.max_wrong)
        echo(f"report: {path}")
    if options.json_line:
        echo(json.dumps({
            **summary,
            "calibration": {
                "threshold": threshold, "lowest_kept_confidence": picked.threshold,
                "oos_share": own if share is None else share, "own_oos_share": round(own, 4),
                "deflection": round(picked.deflection, 4),
                "wrong_among_answered": round(picked.wrong_among_answered, 4),
                "measured": _point_json(measured),
                "at_shares": [_point_json(p) for p in others],
                "max_wrong": options.max_wrong, "config_file": str(target), "written": written,
                "curve": [[p.threshold, round(p.deflection, 4), round(p.wrong_among_answered, 4)]
                          for p in points],
            },
        }, separators=(",", ":")))
    return 0 if written else 1


def _point_json(p: calibrate.CurvePoint) -> dict[str, Any]:
    return {"oos_share": p.oos_share, "deflection": round(p.deflection, 4),
            "wrong_among_answered": round(p.wrong_among_answered, 4)}
