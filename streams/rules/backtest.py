"""Backtest: what a ruleset would have flagged on a labelled history.

Runs the same pipeline as the worker (same features, same combination), in-process, on
JSONL transactions in arrival order, and scores each rule and the whole ruleset against
the labels: hits, precision, recall, F1 and alert rate.

Micro-batches default to 100 records: a replayed history compresses time (a synthetic day
of 3,000 payments is 30 batches), and a transfer's inflow reaches its payee from the next
batch on, as it would a live worker's, whose batches span seconds.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import orjson

from vigil.streams.schemas import record_batches

__all__ = ["RuleStats", "BacktestReport", "backtest"]


@dataclass(frozen=True)
class RuleStats:
    name: str
    hits: int
    true_positives: int
    precision: float | None  # None: the rule never fired
    recall: float | None  # None: no positive label at all
    f1: float | None
    alert_rate: float

    @classmethod
    def of(cls, name: str, hits: int, tp: int, positives: int, total: int) -> RuleStats:
        precision = tp / hits if hits else None
        recall = tp / positives if positives else None
        if precision is None or recall is None:
            f1 = None
        elif precision + recall == 0:
            f1 = 0.0
        else:
            f1 = 2 * precision * recall / (precision + recall)
        return cls(name, hits, tp, precision, recall, f1, hits / total if total else 0.0)


@dataclass(frozen=True)
class BacktestReport:
    ruleset: str
    transactions: int
    invalid: int
    positives: int
    unlabelled: int
    rules: list[RuleStats]
    overall: RuleStats  # a transaction counts as flagged when its decision is not "allow"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def backtest(
    pipeline: Any,  # streams.pipeline.RiskPipeline, with the ruleset under test installed
    lines: Iterable[bytes],
    labels: Mapping[str, int],
    batch_size: int = 100,
    progress: Callable[[int], None] | None = None,
) -> BacktestReport:
    """``lines``: raw transaction JSON in arrival order; ``labels``: tx_id -> 0/1."""
    state: dict[str, dict[str, Any]] = {}
    hits: Counter[str] = Counter()
    tps: Counter[str] = Counter()
    total = invalid = positives = unlabelled = 0
    for batch in record_batches(lines, "backtest", batch_size):
        result = pipeline.process_local(batch, state)
        invalid += len(result.dead)
        for _key, value in result.scores:
            record = orjson.loads(value)
            total += 1
            label = labels.get(record["tx_id"])
            if label is None:
                unlabelled += 1
            positives += label == 1
            fired = {h["rule"] for h in record["rule_hits"]}
            if record["decision"] != "allow":
                fired.add("*")
            for name in fired:
                hits[name] += 1
                tps[name] += label == 1
        if progress:
            progress(len(batch))
    ruleset = pipeline.ruleset
    rules = [
        RuleStats.of(r.name, hits[r.name], tps[r.name], positives, total) for r in ruleset.rules
    ]
    overall = RuleStats.of("(any alert)", hits["*"], tps["*"], positives, total)
    return BacktestReport(ruleset.label, total, invalid, positives, unlabelled, rules, overall)
