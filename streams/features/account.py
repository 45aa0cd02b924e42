"""Per-account feature set of the risk pipeline (seed set; the full library builds on it)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from streams.features.base import FeatureError
from streams.features.windows import (
    EventLog,
    TimeSinceLast,
    WindowCount,
    WindowDistinct,
    WindowSum,
)
from streams.schemas import Transaction

__all__ = [
    "FeatureSet",
    "SEED_FEATURES_VERSION",
    "SMALL_AMOUNT",
    "SEED_COLUMNS",
    "HOUR_MS",
    "DAY_MS",
    "GRACE_MS",
]

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
GRACE_MS = HOUR_MS  # out-of-order tolerance of event times within one account
SMALL_AMOUNT = 1000.0  # "small" for the frequent_small rule, in the transaction's currency

# Columns of the account's event log: what each windowed feature reads from a transaction.
SEED_COLUMNS: dict[str, Callable[[Transaction], Any]] = {
    "amount": lambda tx: tx.amount,
    "small": lambda tx: 1 if tx.amount < SMALL_AMOUNT else 0,
    "counterparty": lambda tx: tx.counterparty_id,
}
SEED_FEATURES_VERSION = "seed-2"
SEED_WINDOWED = {
    "count_1h": WindowCount(HOUR_MS),
    "sum_1h": WindowSum("amount", HOUR_MS),
    "count_24h": WindowCount(DAY_MS),
    "sum_24h": WindowSum("amount", DAY_MS),
    "small_count_24h": WindowSum("small", DAY_MS),
    "distinct_counterparties_24h": WindowDistinct("counterparty", DAY_MS),
}


class FeatureSet:
    """The seed features of one account: windowed aggregates over its event log plus the
    time since its previous transaction.

    >>> fs = FeatureSet()
    >>> tx = dict(ts_ms=1_700_000_000_000, account_id="a", counterparty_id="b", amount=10.0,
    ...           currency="EUR", channel="card", country="DE")
    >>> fs.update(Transaction(tx_id="t1", **tx))["count_1h"]
    1.0
    >>> fs.update(Transaction(tx_id="t2", **tx))["sum_1h"]
    20.0
    """

    version = SEED_FEATURES_VERSION
    names = (*SEED_WINDOWED, "time_since_prev_ms")

    def __init__(self) -> None:
        horizon = max(w.window_ms for w in SEED_WINDOWED.values())
        self.log = EventLog(tuple(SEED_COLUMNS), horizon, GRACE_MS)
        self.since_prev = TimeSinceLast()

    def update(self, tx: Transaction) -> dict[str, float | None]:
        """Fold one transaction in and return every feature as of its event time."""
        ts = tx.ts_ms
        self.log.update(ts, {c: get(tx) for c, get in SEED_COLUMNS.items()})
        self.since_prev.update(ts)
        values: dict[str, float | None] = {
            n: w.value(self.log, ts) for n, w in SEED_WINDOWED.items()
        }
        values["time_since_prev_ms"] = self.since_prev.value(ts)
        return values

    def snapshot(self) -> dict[str, Any]:
        return {"log": self.log.snapshot(), "since_prev": self.since_prev.snapshot()}

    def restore(self, state: dict[str, Any]) -> None:
        try:
            self.log.restore(state["log"])
            self.since_prev.restore(state["since_prev"])
        except (KeyError, TypeError) as exc:
            raise FeatureError(f"feature snapshot malformed: {exc!r}") from exc

    @classmethod
    def from_snapshot(cls, state: dict[str, Any]) -> FeatureSet:
        fs = cls()
        fs.restore(state)
        return fs
