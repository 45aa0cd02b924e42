"""The two seed rules of the skeleton; the rule language replaces them with documents."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from streams.features import SMALL_AMOUNT
from streams.rules.base import Firing, RuleError, Ruleset
from streams.schemas import Transaction

__all__ = ["LargeTransfer", "FrequentSmall", "seed_ruleset"]


@dataclass(frozen=True)
class LargeTransfer:
    """Fires when one transaction's amount exceeds a threshold (no FX: per currency unit)."""

    threshold: float = 500_000.0
    score: float = 0.8
    name: str = "large_transfer"
    typology: str = "large_value"

    def evaluate(self, tx: Transaction, features: Mapping[str, float | None]) -> Firing | None:
        if tx.amount <= self.threshold:
            return None
        return Firing(
            self.name,
            self.typology,
            self.score,
            "LARGE_TRANSFER",
            f"amount {tx.amount:,.2f} {tx.currency} exceeds {self.threshold:,.0f}",
        )


@dataclass(frozen=True)
class FrequentSmall:
    """Fires when the account made more than ``max_count`` transactions under
    ``SMALL_AMOUNT`` within 24 h, this one included (feature ``small_count_24h``)."""

    max_count: int = 10
    score: float = 0.5
    name: str = "frequent_small"
    typology: str = "structuring"

    def evaluate(self, tx: Transaction, features: Mapping[str, float | None]) -> Firing | None:
        try:
            count = features["small_count_24h"]
        except KeyError as exc:
            raise RuleError(f"rule {self.name!r}: feature 'small_count_24h' missing") from exc
        if count is None or count <= self.max_count:
            return None
        return Firing(
            self.name,
            self.typology,
            self.score,
            "FREQUENT_SMALL",
            f"{int(count)} transactions under {SMALL_AMOUNT:,.0f} within 24 h "
            f"(more than {self.max_count})",
        )


def seed_ruleset() -> Ruleset:
    return Ruleset("seed", "1", (LargeTransfer(), FrequentSmall()))
