"""The shipped seed ruleset (large_transfer, frequent_small) and the score combination."""

import numpy as np
import pytest

from vigil.streams.pipeline import RULE_NAMES
from vigil.streams.rules import (
    Firing,
    RuleError,
    Thresholds,
    alert_id,
    combine,
    decide,
    default_ruleset,
)


def evaluate(amount: float, small_count: float | None, currency: str = "EUR") -> list[Firing]:
    ruleset = default_ruleset(RULE_NAMES, "seed")
    cols = {
        "amount": np.array([amount]),
        "currency": np.array([currency], dtype=object),
        "reporting_currency": np.array(["EUR"], dtype=object),
        "paid": np.array([f"{amount:,.2f} {currency}"], dtype=object),
        "small_count_24h": np.array([np.nan if small_count is None else small_count]),
    }
    return ruleset.evaluate_batch(cols, 1)[0]


@pytest.mark.parametrize(
    ("amount", "fires"), [(500_000, False), (500_000.01, True), (1e7, True), (10, False)]
)
def test_large_transfer_fires_strictly_above_500k(amount, fires):
    hits = [f for f in evaluate(amount, 0) if f.rule == "large_transfer"]
    assert bool(hits) == fires
    if fires:
        [hit] = hits
        assert (hit.typology, hit.score, hit.code) == ("large_value", 0.8, "LARGE_TRANSFER")
        assert hit.detail == f"amount {amount:,.2f} EUR exceeds 500,000 (paid {amount:,.2f} EUR)"


@pytest.mark.parametrize(("count", "fires"), [(None, False), (0, False), (10, False), (11, True)])
def test_frequent_small_fires_on_more_than_ten(count, fires):
    hits = [f for f in evaluate(50, count) if f.rule == "frequent_small"]
    assert bool(hits) == fires
    if fires:
        assert (hits[0].score, hits[0].typology, hits[0].code) == (
            0.5,
            "structuring",
            "FREQUENT_SMALL",
        )
        assert hits[0].detail.startswith("11 transactions under 1,000 within 24 h")


def test_both_rules_fire_in_document_order():
    assert [f.rule for f in evaluate(600_000, 12)] == ["large_transfer", "frequent_small"]
    assert default_ruleset(RULE_NAMES, "seed").version == "2"


def test_combination_and_decisions():
    big = Firing("large_transfer", "large_value", 0.8, "X", "")
    small = Firing("frequent_small", "structuring", 0.5, "Y", "")
    t = Thresholds()
    assert combine([]) == 0.0 and decide(0.0, t) == "allow"
    assert combine([small]) == 0.5 and decide(0.5, t) == "review"
    assert combine([big]) == 0.8 and decide(0.8, t) == "review"
    both = combine([big, small])
    assert both == pytest.approx(0.9) and decide(both, t) == "block"
    assert combine([small], model_score=0.5) == pytest.approx(0.75)


def test_alert_id_is_deterministic_and_depends_on_decision_inputs():
    f = [Firing("large_transfer", "large_value", 0.8, "X", "detail ignored")]
    a = alert_id("t1", "review", f, "rules-only")
    assert a == alert_id("t1", "review", list(f), "rules-only")
    others = {
        alert_id("t2", "review", f, "rules-only"),
        alert_id("t1", "block", f, "rules-only"),
        alert_id("t1", "review", f, "m2"),
    }
    assert a not in others and len(others) == 3


def test_invalid_thresholds_are_rejected():
    with pytest.raises(RuleError, match="review <= block"):
        Thresholds(review=0.9, block=0.5)
