"""The token price table (``config/prices.yaml``) and the cost of one recorded turn.

Must not: call providers or estimate tokens; it prices what a turn recorded.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from config.settings import CONFIG_DIR

DEFAULT_PRICES = CONFIG_DIR / "prices.yaml"


class PriceError(ValueError):
    """The price file is invalid; the message names the file and the entry."""


@dataclass(frozen=True)
class Price:
    """USD per 1,000 input and output tokens."""

    input_per_1k: float
    output_per_1k: float


@dataclass(frozen=True)
class PriceTable:
    """``local_tiers`` cost 0; ``prices[(provider, model)]`` prices recorded token usage."""

    local_tiers: frozenset[str] = frozenset({"guard", "deterministic", "retrieval", "human"})
    prices: Mapping[tuple[str, str], Price] = field(default_factory=dict)

    def turn_cost(self, payload: Mapping[str, Any]) -> float:
        """USD cost of one turn from its event payload.

        0 on a local tier; else ``input_tokens``/``output_tokens`` of its ``usage`` (or
        ``data.usage``) times the price of ``(provider, model)``; else the recorded ``cost_usd``
        (also when the model has no price here). Non-negative.
        """
        tier = payload.get("tier")
        if tier is None or tier in self.local_tiers:
            return 0.0
        usage = payload.get("usage") or (payload.get("data") or {}).get("usage")
        if isinstance(usage, Mapping):
            price = self.prices.get((str(usage.get("provider")), str(usage.get("model"))))
            if price is not None:
                tokens_in = float(usage.get("input_tokens") or 0)
                tokens_out = float(usage.get("output_tokens") or 0)
                return tokens_in / 1000 * price.input_per_1k + tokens_out / 1000 * price.output_per_1k
        return max(0.0, float(payload.get("cost_usd") or 0.0))


def load_prices(path: Path = DEFAULT_PRICES) -> PriceTable:
    """Read a price file (format: see ``config/prices.yaml``).

    Raises:
        PriceError: not a mapping, or a price that is missing or negative (names provider/model).
        FileNotFoundError: no such file.
    """
    path = Path(path)
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise PriceError(f"{path}: expected a mapping with 'local_tiers' and 'providers'")
    tiers = data.get("local_tiers", ["guard", "deterministic", "retrieval", "human"])
    if not isinstance(tiers, list) or not all(isinstance(t, str) for t in tiers):
        raise PriceError(f"{path}: 'local_tiers' must be a list of tier names")
    prices: dict[tuple[str, str], Price] = {}
    for provider, models in (data.get("providers") or {}).items():
        if not isinstance(models, dict):
            raise PriceError(f"{path}: provider {provider!r}: expected a mapping of model -> prices")
        for model, entry in models.items():
            where = f"{path}: {provider}/{model}"
            if not isinstance(entry, dict):
                raise PriceError(f"{where}: expected {{input_per_1k, output_per_1k}}")
            values = []
            for key in ("input_per_1k", "output_per_1k"):
                value = entry.get(key)
                if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                    raise PriceError(f"{where}: field '{key}' must be a number >= 0, got {value!r}")
                values.append(float(value))
            prices[(str(provider), str(model))] = Price(*values)
    return PriceTable(local_tiers=frozenset(tiers), prices=prices)
