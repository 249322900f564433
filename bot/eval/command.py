"""``helpline eval``: load a golden set, run it, print the summary, report, gate, calibrate.

The CLI (:mod:`helpline.cli`) only parses options into an :class:`EvalOptions` and calls
:func:`run_command`, which returns the exit status: 0 done (gate passed), 1 a gate failed.
Bad input (golden file, gates file, price file, settings) raises :class:`EvalInputError`.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

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
    max_wrong: float = 0.02
    config_file: Path | None = None  # HELPLINE_CONFIG_FILE, where --calibrate writes
    env_threshold: bool = False  # HELPLINE_CONFIDENCE_THRESHOLD is set (it wins over the file)
    concurrency: int = DEFAULT_CONCURRENCY
    database_url: str | None = None
    prices_file: Path = DEFAULT_PRICES


def _load_inputs(settings: Settings, options: EvalOptions) -> tuple[GoldenSet, list[Gate], PriceTable]:
    from bot.intent_model import IntentConfigError, load_intents

    try:
        known = load_intents(settings.intents_file)
    except (IntentConfigError, OSError) as exc:
        raise EvalInputError(str(exc)) from None
    try:
        golden = load_golden(options.golden, known_intents=known)
        gates = load_gates(options.gates_file) if options.gate else []
        prices = load_prices(options.prices_file)
    except (GoldenError, GateError, PriceError, OSError) as exc:
        raise EvalInputError(str(exc)) from None
    if options.calibrate and not 0 <= options.max_wrong <= 1:
        raise EvalInputError(f"--max-wrong must be in [0, 1], got {options.max_wrong}")
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
    points = calibrate.curve(calibrate.from_outcomes(zero.outcomes)) if zero is not None else []
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
    points = calibrate.curve(cases)
    picked = calibrate.pick_threshold(points, options.max_wrong)
    threshold = calibrate.live_threshold(picked.threshold)
    echo(f"Calibration on {len(cases)} cases from {source} (each run once at confidence threshold 0):")
    for line in curve_lines(points, picked):
        echo(line)
    echo(f"picked threshold {threshold} (lowest kept confidence {picked.threshold}): deflection "
         f"{picked.deflection:.3f}, wrong-answer rate {picked.wrong_answer_rate:.4f} "
         f"(target <= {options.max_wrong})")
    if picked.deflection == 0:
        echo("warning: no threshold deflects anything at this target: every case would go to a person")

    # Confirm on the live path at the picked threshold: the replayed curve must match a real run.
    check = asyncio.run(_pass(golden, settings, options, threshold, "eval (picked threshold)"))
    summary = summarise(check, prices)
    echo(f"measured at {threshold}: deflection {summary['deflection']}, wrong-answer rate "
         f"{summary['wrong_answer_rate']}")
    if (summary["deflection"], summary["wrong_answer_rate"]) != (
        round(picked.deflection, 4), round(picked.wrong_answer_rate, 4)
    ):
        # Only a router check that depends on the threshold other than the low-confidence one
        # (or a nondeterministic turn) can cause this; the measured run is the one to trust.
        echo("warning: the run at the picked threshold differs from the replayed curve")

    target = options.config_file or DEFAULT_CONFIG_OUT
    calibrate.write_threshold(target, threshold)
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
                "deflection": round(picked.deflection, 4),
                "wrong_answer_rate": round(picked.wrong_answer_rate, 4),
                "max_wrong": options.max_wrong, "config_file": str(target),
                "curve": [[p.threshold, round(p.deflection, 4), round(p.wrong_answer_rate, 4)]
                          for p in points],
            },
        }, separators=(",", ":")))
    return 0
