"""Independent brute-force references the tests compare the streaming code against.

Nothing here imports the code under test: windows, rules and decisions are recomputed
from the whole history with plain loops, straight from the definitions in the issue.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS


def account_features(history: list[dict[str, Any]]) -> list[dict[str, float | None]]:
    """Seed features of each transaction of ONE account, in arrival order: aggregates over
    the earlier-or-same arrivals whose time lies in (ts - window, ts]."""
    out = []
    for i, tx in enumerate(history):
        ts = tx["ts_ms"]
        seen = history[: i + 1]

        def within(w: int, ts: int = ts, seen: list = seen) -> list[dict[str, Any]]:
            return [t for t in seen if ts - w < t["ts_ms"] <= ts]

        h1, d1 = within(HOUR_MS), within(DAY_MS)
        earlier = [t["ts_ms"] for t in history[:i]]
        out.append(
            {
                "count_1h": float(len(h1)),
                "sum_1h": float(sum(t["amount"] for t in h1)),
                "count_24h": float(len(d1)),
                "sum_24h": float(sum(t["amount"] for t in d1)),
                "small_count_24h": float(sum(1 for t in d1 if t["amount"] < 1000)),
                "distinct_counterparties_24h": float(len({t["counterparty_id"] for t in d1})),
                "time_since_prev_ms": float(max(0, ts - max(earlier))) if earlier else None,
            }
        )
    return out


def features_by_tx(transactions: Iterable[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Seed features of every transaction, per account in the given (arrival) order."""
    per_account: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for tx in transactions:
        per_account[tx["account_id"]].append(tx)
    result = {}
    for history in per_account.values():
        for tx, feats in zip(history, account_features(history), strict=True):
            result[tx["tx_id"]] = feats
    return result


def expected_decision(tx: dict[str, Any], feats: dict[str, float | None]) -> tuple[str, list[str]]:
    """Seed rules (large_transfer 0.8, frequent_small 0.5), noisy-or, review >= 0.5,
    block >= 0.9."""
    rules = []
    keep = 1.0
    if tx["amount"] > 500_000:
        rules.append("large_transfer")
        keep *= 0.2
    if (feats["small_count_24h"] or 0) > 10:
        rules.append("frequent_small")
        keep *= 0.5
    score = 1 - keep
    decision = "block" if score >= 0.9 - 1e-9 else "review" if score >= 0.5 else "allow"
    return decision, rules
