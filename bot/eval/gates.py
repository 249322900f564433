"""Quality gates: bounds on eval metrics (``config/gates.yaml``) checked against a summary.

File format: a mapping ``gates: {metric: "<op> <number>"}`` with ``op`` one of ``>=``, ``<=``,
``==``, ``>``, ``<``; ``metric`` is a key of the eval summary (``helpline eval --json``), nested keys
joined with dots (``latency_ms.p95``). A metric that is None or missing in the summary (nothing to
measure) fails its gate as "not measured".

Must not: run the eval; it only compares numbers.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from config.settings import CONFIG_DIR

DEFAULT_GATES = CONFIG_DIR / "gates.yaml"

_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, "<=": operator.le, "==": operator.eq, ">": operator.gt, "<": operator.lt,
}
_BOUND = re.compile(r"^\s*(>=|<=|==|>|<)\s*(-?\d+(?:\.\d+)?(?:[eE]-?\d+)?)\s*$")


class GateError(ValueError):
    """The gates file is invalid; the message names the file and the metric."""


@dataclass(frozen=True)
class Gate:
    """``metric op bound``, e.g. ``groundedness >= 0.85``."""

    metric: str
    op: str
    bound: float

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.bound:g}"


@dataclass(frozen=True)
class GateResult:
    gate: Gate
    actual: float | None
    passed: bool

    def describe(self) -> str:
        """``groundedness: 0.81 (needs >= 0.85)``; "not measured" when the metric is None."""
        actual = "not measured" if self.actual is None else f"{self.actual:g}"
        return f"{self.gate.metric}: {actual} (needs {self.gate.op} {self.gate.bound:g})"


def load_gates(path: Path = DEFAULT_GATES) -> list[Gate]:
    """Read a gates file (format in the module docstring).

    Raises:
        GateError: not a ``gates:`` mapping, or a bound that is not ``<op> <number>`` (names the
            metric).
        FileNotFoundError: no such file.
    """
    path = Path(path)
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("gates"), dict) or not data["gates"]:
        raise GateError(f"{path}: expected a mapping 'gates: {{metric: \"<op> <number>\"}}'")
    gates = []
    for metric, bound in data["gates"].items():
        match = _BOUND.match(str(bound)) if isinstance(bound, (str, int, float)) else None
        if not isinstance(metric, str) or match is None:
            raise GateError(
                f"{path}: gate {metric!r}: expected '<op> <number>' with op one of "
                f"{', '.join(_OPS)}, got {bound!r}"
            )
        gates.append(Gate(metric=metric, op=match.group(1), bound=float(match.group(2))))
    return gates


def metric_value(summary: Mapping[str, Any], metric: str) -> float | None:
    """The number at ``metric`` (dotted path) in ``summary``; None when absent or not a number."""
    value: Any = summary
    for part in metric.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def check_gates(summary: Mapping[str, Any], gates: list[Gate]) -> list[GateResult]:
    """One result per gate, in file order."""
    results = []
    for gate in gates:
        actual = metric_value(summary, gate.metric)
        passed = actual is not None and _OPS[gate.op](actual, gate.bound)
        results.append(GateResult(gate=gate, actual=actual, passed=passed))
    return results
