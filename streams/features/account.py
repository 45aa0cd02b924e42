"""Per-account feature set of the risk pipeline (seed set; the full library builds on it)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from streams.features.base import FeatureError, FeatureOperator
from streams.features.windows import TimeSinceLast, WindowedCount, WindowedDistinct, WindowedSum
from streams.schemas import Transaction

__all__ = ["FeatureSpec", "FeatureSet", "SEED_FEATURES", "SEED_FEATURES_VERSION", "SMALL_AMOUNT"]

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
GRACE_MS = HOUR_MS  # out-of-order tolerance of event times within one account
SMALL_AMOUNT = 1000.0  # "small" for the frequent_small rule, in the transaction's currency


@dataclass(frozen=True)
class FeatureSpec:
    """A named feature: how to build its operator and what of a transaction it folds in."""

    name: str
    make: Callable[[], FeatureOperator]
    extract: Callable[[Transaction], Any] = lambda tx: None
    when: Callable[[Transaction], bool] = lambda tx: True  # events the operator sees


SEED_FEATURES_VERSION = "seed-1"
SEED_FEATURES: tuple[FeatureSpec, ...] = (
    FeatureSpec("count_1h", lambda: WindowedCount(HOUR_MS, GRACE_MS)),
    FeatureSpec("sum_1h", lambda: WindowedSum(HOUR_MS, GRACE_MS), lambda tx: tx.amount),
    FeatureSpec("count_24h", lambda: WindowedCount(DAY_MS, GRACE_MS)),
    FeatureSpec("sum_24h", lambda: WindowedSum(DAY_MS, GRACE_MS), lambda tx: tx.amount),
    FeatureSpec(
        "small_count_24h",
        lambda: WindowedCount(DAY_MS, GRACE_MS),
        when=lambda tx: tx.amount < SMALL_AMOUNT,
    ),
    FeatureSpec(
        "distinct_counterparties_24h",
        lambda: WindowedDistinct(DAY_MS, GRACE_MS),
        lambda tx: tx.counterparty_id,
    ),
    FeatureSpec("time_since_prev_ms", TimeSinceLast),
)


class FeatureSet:
    """An ordered set of feature operators over one entity's transactions.

    >>> fs = FeatureSet()
    >>> tx = dict(ts_ms=1_700_000_000_000, account_id="a", counterparty_id="b", amount=10.0,
    ...           currency="EUR", channel="card", country="DE")
    >>> fs.update(Transaction(tx_id="t1", **tx))["count_1h"]
    1.0
    >>> fs.update(Transaction(tx_id="t2", **tx))["sum_1h"]
    20.0
    """

    def __init__(self, specs: tuple[FeatureSpec, ...] = SEED_FEATURES) -> None:
        self.specs = specs
        self.names = tuple(s.name for s in specs)
        self._ops = [s.make() for s in specs]

    def update(self, tx: Transaction) -> dict[str, float | None]:
        """Fold one transaction in and return every feature as of its event time."""
        for spec, op in zip(self.specs, self._ops, strict=True):
            if spec.when(tx):
                op.update(tx.ts_ms, spec.extract(tx))
        return {name: op.value(tx.ts_ms) for name, op in zip(self.names, self._ops, strict=True)}

    def snapshot(self) -> dict[str, Any]:
        return {name: op.snapshot() for name, op in zip(self.names, self._ops, strict=True)}

    def restore(self, state: dict[str, Any]) -> None:
        missing = set(self.names) - set(state)
        if missing:
            raise FeatureError(f"feature snapshot lacks {sorted(missing)}")
        for name, op in zip(self.names, self._ops, strict=True):
            op.restore(state[name])

    @classmethod
    def from_snapshot(
        cls, state: dict[str, Any], specs: tuple[FeatureSpec, ...] = SEED_FEATURES
    ) -> FeatureSet:
        fs = cls(specs)
        fs.restore(state)
        return fs
