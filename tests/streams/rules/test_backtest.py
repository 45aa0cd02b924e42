"""Backtest numbers against an independent count over the reference features."""

import pytest

from tests.reference import expected_decision, features_by_tx
from vigil.streams.pipeline import RULE_NAMES, RiskPipeline
from vigil.streams.rules import default_ruleset
from vigil.streams.rules.backtest import RuleStats, backtest
from vigil.streams.sources import GeneratorConfig, TransactionGenerator

SEED = default_ruleset(RULE_NAMES, "seed")  # the decisions tests.reference recomputes


def test_backtest_counts_match_an_independent_reference():
    gen = TransactionGenerator(
        GeneratorConfig(seed=8, accounts=200, burst_rate=0.004, malformed_rate=0.01)
    ).take(8000)
    labels = {g.tx["tx_id"]: g.label for g in gen if g.tx}
    seen = []
    report = backtest(
        RiskPipeline(SEED), (g.value for g in gen), labels, batch_size=700, progress=seen.append
    )
    assert sum(seen) == len(gen)

    txs = [g.tx for g in gen if g.tx]
    ref = features_by_tx(txs)
    decided = {t["tx_id"]: expected_decision(t, ref[t["tx_id"]]) for t in txs}
    positives = sum(labels.values())
    assert (report.transactions, report.invalid, report.positives, report.unlabelled) == (
        len(txs),
        len(gen) - len(txs),
        positives,
        0,
    )
    for stats in report.rules:
        fired = [t for t, (_, rules) in decided.items() if stats.name in rules]
        tp = sum(labels[t] for t in fired)
        assert (stats.hits, stats.true_positives) == (len(fired), tp), stats.name
        assert stats.precision == pytest.approx(tp / len(fired))
        assert stats.recall == pytest.approx(tp / positives)
        assert stats.alert_rate == pytest.approx(len(fired) / len(txs))
    flagged = [t for t, (d, _) in decided.items() if d != "allow"]
    assert report.overall.hits == len(flagged)
    assert report.overall.true_positives == sum(labels[t] for t in flagged)


def test_f1_and_empty_cases():
    assert RuleStats.of("r", hits=0, tp=0, positives=5, total=10).precision is None
    assert RuleStats.of("r", hits=0, tp=0, positives=5, total=10).f1 is None
    assert RuleStats.of("r", hits=4, tp=0, positives=5, total=10).f1 == 0.0
    s = RuleStats.of("r", hits=4, tp=2, positives=8, total=10)
    assert (s.precision, s.recall, s.f1, s.alert_rate) == (0.5, 0.25, pytest.approx(1 / 3), 0.4)
